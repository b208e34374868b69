"""In-memory datasets (generated data, decoded caches, tests) as grain datasets.

Training: an endless stream of examples, epoch after epoch, each epoch a seeded permutation cut to
whole global batches; every process takes the stream positions ``[process_index::process_count]``
and batches them, as the video pipelines do (:mod:`kd_jax.data.pipeline`), so a global batch is the
same block of the stream whatever the number of processes. grain batches, slices per process and
checkpoints the iterator. Evaluation: every example once, in order, padded to whole global
batches, ``mask`` 0 on padding.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import sys

import grain
import jax
import numpy as np


def _num_examples(arrays: Mapping[str, np.ndarray]) -> int:
  sizes = {len(v) for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f"arrays must share their leading axis, got sizes {sorted(sizes)}")
  return sizes.pop()


class _ShuffledEpochs:
  """Example index at each position of the endless training stream (a grain source)."""

  def __init__(self, num_examples: int, global_batch_size: int, seed: int):
    self._n, self._seed = num_examples, seed
    # The remainder of each epoch is dropped: every batch is full.
    self._per_epoch = (num_examples // global_batch_size) * global_batch_size

  def __len__(self) -> int:
    return sys.maxsize

  @functools.lru_cache(maxsize=2)
  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._seed, epoch]).permutation(self._n)

  def __getitem__(self, position: int) -> int:
    epoch, pos = divmod(position, self._per_epoch)
    return int(self._order(epoch)[pos])


def _process_slice(ds: grain.MapDataset, per_host_batch_size: int,
                   process: tuple[int, int] | None) -> grain.MapDataset:
  index, count = process or (jax.process_index(), jax.process_count())
  return ds[index::count].batch(per_host_batch_size, drop_remainder=True)


def train_batches(arrays: Mapping[str, np.ndarray], *, global_batch_size: int,
                  per_host_batch_size: int, seed: int,
                  process: tuple[int, int] | None = None) -> grain.DatasetIterator:
  """Endless shuffled training batches (this process's share); a checkpointable grain iterator.

  ``process``: ``(process_index, process_count)``, default this process's.
  """
  arrays = dict(arrays)
  n = _num_examples(arrays)
  if global_batch_size > n:
    raise ValueError(f"batch size {global_batch_size} exceeds the {n} examples")
  ds = grain.MapDataset.source(_ShuffledEpochs(n, global_batch_size, seed))
  ds = _process_slice(ds.map(lambda i: {k: v[i] for k, v in arrays.items()}),
                      per_host_batch_size, process)
  return iter(ds.to_iter_dataset())


def eval_batches(arrays: Mapping[str, np.ndarray], *, global_batch_size: int,
                 per_host_batch_size: int, process: tuple[int, int] | None = None
                 ) -> grain.MapDataset:
  """Every example once, in order, padded to whole global batches; ``mask`` is 0 on padding."""
  arrays = dict(arrays)
  n = _num_examples(arrays)
  total = -(-n // global_batch_size) * global_batch_size

  def example(i: int) -> dict[str, np.ndarray]:
    return {**{k: v[min(i, n - 1)] for k, v in arrays.items()}, "mask": np.float32(i < n)}

  return _process_slice(grain.MapDataset.range(total).map(example), per_host_batch_size, process)

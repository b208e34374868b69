"""In-memory datasets (generated data, decoded caches, tests) as grain datasets.

Training: an endless stream of examples, epoch after epoch, each epoch a seeded permutation cut to
whole global batches (or CoViAR's draws with replacement, ``order='with_replacement'``;
:class:`kd_jax.data.sampling.TrainOrder`); every process takes the stream positions ``[process_index::process_count]``
and batches them, as the video pipelines do (:mod:`kd_jax.data.pipeline`), so a global batch is the
same block of the stream whatever the number of processes. grain batches, slices per process and
checkpoints the iterator. Evaluation: every example once, in order, padded to whole global
batches, ``mask`` 0 on padding.
"""

from __future__ import annotations

from collections.abc import Mapping

import grain
import jax
import numpy as np

from kd_jax.data import sampling


def _num_examples(arrays: Mapping[str, np.ndarray]) -> int:
  sizes = {len(v) for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f"arrays must share their leading axis, got sizes {sorted(sizes)}")
  return sizes.pop()


def _process_slice(ds: grain.MapDataset, per_host_batch_size: int,
                   process: tuple[int, int] | None) -> grain.MapDataset:
  index, count = process or (jax.process_index(), jax.process_count())
  return ds[index::count].batch(per_host_batch_size, drop_remainder=True)


def train_batches(arrays: Mapping[str, np.ndarray], *, global_batch_size: int,
                  per_host_batch_size: int, seed: int, process: tuple[int, int] | None = None,
                  order: str = "permutation") -> grain.DatasetIterator:
  """Endless shuffled training batches (this process's share); a checkpointable grain iterator.

  ``process``: ``(process_index, process_count)``, default this process's. ``order``:
  ``permutation`` (each epoch a seeded permutation cut to whole global batches) or
  ``with_replacement`` (independent uniform draws, ``n`` an epoch, as CoViAR's ``dataset.py``);
  :class:`kd_jax.data.sampling.TrainOrder`.
  """
  arrays = dict(arrays)
  n = _num_examples(arrays)
  if global_batch_size > n:
    raise ValueError(f"batch size {global_batch_size} exceeds the {n} examples")
  if order not in sampling.TRAIN_ORDERS:
    raise ValueError(f"order must be one of {sampling.TRAIN_ORDERS}, got {order!r}")
  # A permutation drops each epoch's remainder, so every batch is full; draws need no cut.
  per_epoch = (n // global_batch_size) * global_batch_size if order == "permutation" else n
  ds = grain.MapDataset.source(sampling.TrainOrder(n, seed, order=order, epoch_size=per_epoch))
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

"""In-memory datasets as checkpointable batch iterators (generated data, cached logits, tests).

Each global batch is drawn from a seeded permutation of the examples; every process takes its own
contiguous slice of it, so the global batch is the same whatever the number of processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

import jax
import numpy as np


def _num_examples(arrays: Mapping[str, np.ndarray]) -> int:
  sizes = {len(v) for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f"arrays must share their leading axis, got sizes {sorted(sizes)}")
  return sizes.pop()


class ArrayIterator:
  """Endless shuffled training batches; ``get_state``/``set_state`` make it resumable."""

  def __init__(self, arrays: Mapping[str, np.ndarray], *, global_batch_size: int,
               per_host_batch_size: int, seed: int):
    self._arrays = dict(arrays)
    self._n = _num_examples(self._arrays)
    if global_batch_size > self._n:
      raise ValueError(f"batch size {global_batch_size} exceeds the {self._n} examples")
    self._global, self._local, self._seed = global_batch_size, per_host_batch_size, seed
    self._epoch, self._pos = 0, 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def _order(self) -> np.ndarray:
    return np.random.default_rng([self._seed, self._epoch]).permutation(self._n)

  def __next__(self) -> dict[str, np.ndarray]:
    if self._pos + self._global > self._n:  # Drop the remainder: every batch is full.
      self._epoch, self._pos = self._epoch + 1, 0
    idx = self._order()[self._pos:self._pos + self._global]
    self._pos += self._global
    first = jax.process_index() * self._local
    idx = idx[first:first + self._local]
    return {k: v[idx] for k, v in self._arrays.items()}

  def get_state(self) -> bytes:
    return json.dumps({"epoch": self._epoch, "pos": self._pos}).encode()

  def set_state(self, state: bytes) -> None:
    state = json.loads(state)
    self._epoch, self._pos = int(state["epoch"]), int(state["pos"])

  def start_prefetch(self) -> None:
    """Part of the interface grain's checkpoint handler calls after a restore; nothing to do."""


def eval_batches(arrays: Mapping[str, np.ndarray], *, global_batch_size: int,
                 per_host_batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, padded to whole global batches; ``mask`` is 0 on padding."""
  n = _num_examples(arrays)
  first = jax.process_index() * per_host_batch_size
  for start in range(0, n, global_batch_size):
    idx = np.arange(start, start + global_batch_size)[first:first + per_host_batch_size]
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    yield {**{k: v[idx] for k, v in arrays.items()}, "mask": mask}

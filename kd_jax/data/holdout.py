"""Held-out training videos for model selection (``config.selection = 'best_val'``).

A fixed share of a training split is set aside as a validation set, so that a run can pick its
weights without looking at the test split. The videos held out depend only on the split's size,
the fraction and ``seed`` (not on the run's seed): every seed of an experiment selects on the same
videos, and no video is ever in both parts.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Subset:
  """The records of ``source`` at ``indices``, as a random-access source (``len``, ``[i]``)."""

  def __init__(self, source: Any, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> Any:
    return self.source[int(self.indices[i])]

  def __getattr__(self, name: str) -> Any:  # dataset_info and the like: the source's
    if name in ("source", "indices"):
      raise AttributeError(name)
    return getattr(self.source, name)

  def __repr__(self) -> str:
    return f"Subset({self.source!r}, {len(self)} of {len(self.source)} records)"


def holdout_indices(num_examples: int, fraction: float, *, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """``(kept, held_out)`` record indices, each sorted: ``round(fraction * n)`` records (at least
  one, and at least one left to train on) drawn without replacement.

  Raises:
    ValueError: ``fraction`` outside (0, 1), or fewer than two records.
  """
  if not 0 < fraction < 1:
    raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
  if num_examples < 2:
    raise ValueError(f"cannot hold out part of a split of {num_examples} record(s)")
  count = min(max(1, int(round(fraction * num_examples))), num_examples - 1)
  held = np.sort(np.random.default_rng([seed, 0x5E1EC7]).permutation(num_examples)[:count])
  kept = np.setdiff1d(np.arange(num_examples), held)
  return kept, held


def split_holdout(source: Any, fraction: float, *, seed: int = 0) -> tuple[Subset, Subset]:
  """``source`` as ``(training part, held-out part)``; see :func:`holdout_indices`."""
  kept, held = holdout_indices(len(source), fraction, seed=seed)
  return Subset(source, kept), Subset(source, held)

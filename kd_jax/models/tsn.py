"""TSN segment handling: fold segments into the batch, average logits per video.

Every 2-D model in kd_jax accepts either frames `[B, H, W, C]` or segments of videos
`[B, S, H, W, C]`. For the latter the S segments are folded into the batch (`[B*S, H, W, C]`), the
network runs per frame, the logits are averaged over the segments (TSN's average consensus, used by
CoViAR / PKD for backbones, internal classifiers and teachers alike) and every tap gets its segment
axis back (`[B, S, h, w, c]`), which is the layout the temporal-spectrum loss reads.
"""

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def fold_segments(
    x: Array, *, model: str, require_segments: bool = False) -> tuple[Array, int | None]:
  """Folds `[B, S, H, W, C]` into `[B*S, H, W, C]`; `[B, H, W, C]` passes through with S = None.

  Args:
    x: the input.
    model: the model's name, for error messages.
    require_segments: if true, 4-D input is an error (temporal-shift models need the time axis).

  Returns:
    `(folded, segments)` with `segments` None for 4-D input.
  """
  if x.ndim == 5:
    b, s = x.shape[:2]
    return x.reshape((b * s,) + x.shape[2:]), s
  if x.ndim == 4 and not require_segments:
    return x, None
  want = "[B, T, H, W, C]" if require_segments else "[B, H, W, C] or [B, S, H, W, C]"
  raise ValueError(f"{model} takes {want} input, got shape {tuple(x.shape)}")


def unfold_segments(tree: Any, segments: int | None) -> Any:
  """Restores the segment axis of every array in `tree`: `[B*S, ...]` -> `[B, S, ...]`."""
  if segments is None:
    return tree
  return jax.tree.map(lambda a: a.reshape((a.shape[0] // segments, segments) + a.shape[1:]), tree)


def segment_consensus(logits: Array, segments: int | None) -> Array:
  """TSN average consensus: `[B*S, K]` -> `[B, K]`, the mean of the segment logits."""
  if segments is None:
    return logits
  return jnp.mean(logits.reshape((-1, segments) + logits.shape[1:]), axis=1)

"""AFSD's boundary max pooling in JAX: a per-channel max over each proposal's start and end regions.

Reference: Lin et al., "Learning Salient Boundary Feature for Anchor-free Temporal Action
Localization" (CVPR 2021); the official op is the CUDA kernel
``AFSD/prop_pooling/boundary_max_pooling_kernel.cu`` of TencentYoutuResearch/ActionDetection-AFSD.
For features ``x`` of shape ``[B, T, C]`` and segments ``s`` of shape ``[B, S, 4]`` it computes

.. math::
  y_{b,k,c} = \\max_{l \\le t \\le \\max(l, r)} x_{b,t,c},\\quad
  (l, r) = \\operatorname{clip}\\big(\\operatorname{trunc}(s_{b,k,2h}),
  \\operatorname{trunc}(s_{b,k,2h+1}), 0, T-1\\big),\\quad h = \\lfloor c / (C/2) \\rfloor

so the first half of the channels pools the start region ``s[..., 0:2]`` and the second half the
end region ``s[..., 2:4]``. As the kernel does:

* each bound is cast to ``int`` (truncation toward zero, so 2.9 -> 2 and -0.7 -> 0) and then clipped
  to ``[0, T-1]``; the caller rounds beforehand (AFSD's ``BDNet`` applies ``torch.round``, which,
  like ``jnp.round``, rounds halves to even);
* both bounds are inclusive; a range with ``r < l`` yields ``x[l]`` (the kernel's loop starts from
  ``x[l]`` and never runs);
* the gradient goes entirely to the first maximal element of each range (strict ``>`` in the
  kernel), and none to the segments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _bounds(segments: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
  """Inclusive integer bounds ``[B, S, 2]`` per region (start, end), as the CUDA kernel reads."""
  # The kernel casts with static_cast<int>, i.e. truncates, as jnp.trunc does.
  idx = jnp.clip(jnp.trunc(jax.lax.stop_gradient(segments)), 0, length - 1).astype(jnp.int32)
  lo = idx[..., 0::2]
  hi = jnp.maximum(idx[..., 1::2], lo)  # r < l: the kernel returns x[l]
  return lo, hi


def boundary_max_pooling(features: jax.Array, segments: jax.Array) -> jax.Array:
  """Max of ``features`` over each segment's start region (first half of the channels) and end
  region (second half), as AFSD's ``BoundaryMaxPooling``, channels-last.

  Args:
    features: ``[B, T, C]``, ``C`` even.
    segments: ``[B, S, 4]``, per proposal ``(start_lo, start_hi, end_lo, end_hi)`` in units of the
      ``T`` axis (float or int; truncated toward zero and clipped to ``[0, T-1]``).

  Returns:
    ``[B, S, C]`` in the dtype of ``features``. jit-, vmap- and grad-safe; the gradient flows to the
    first maximal element of each range only.
  """
  if features.ndim != 3:
    raise ValueError(f"features must be [B, T, C], got shape {tuple(features.shape)}")
  if segments.ndim != 3 or segments.shape[-1] != 4:
    raise ValueError(
        f"segments must be [B, S, 4] (start_lo, start_hi, end_lo, end_hi), got shape "
        f"{tuple(segments.shape)}"
    )
  batch, length, channels = features.shape
  if segments.shape[0] != batch:
    raise ValueError(
        f"features {tuple(features.shape)} and segments {tuple(segments.shape)} have different "
        "batch sizes"
    )
  if channels % 2:
    raise ValueError(
        f"features need an even channel count (start half, end half), got {channels}"
    )
  return _pool(features, segments)


@jax.jit
def _pool(features: jax.Array, segments: jax.Array) -> jax.Array:
  # Jitted on its own so that eager callers do not dispatch the table build op by op.
  length, channels = features.shape[1:]
  lo, hi = _bounds(segments, length)  # [B, S, 2]
  half = channels // 2
  table = _argmax_table(jax.lax.stop_gradient(features))
  idx = jnp.concatenate(
      [_range_argmax(table, lo[..., 0], hi[..., 0], slice(0, half)),
       _range_argmax(table, lo[..., 1], hi[..., 1], slice(half, channels))],
      axis=-1,
  )  # [B, S, C]
  # A gather at the argmax, not a max reduction: JAX's max splits the gradient among ties, the
  # kernel sends it all to the first maximum.
  return jnp.take_along_axis(features, idx, axis=1)


def _argmax_table(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sparse table of first-maximum positions: level ``j`` holds, for every ``t``, the value and the
  index of the first maximum of ``x[t : t + 2**j]`` (``-inf`` past the end), shape
  ``[levels, B, T, C]``. Building it is ``O(T log T)`` per channel; a range query is then two
  lookups, where a mask over ``[S, T]`` would cost ``O(S T)``."""
  batch, length, channels = x.shape
  values = [x]
  index = [jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None, :, None], x.shape)]
  width = 1
  while 2 * width <= length:
    v, i = values[-1], index[-1]
    pad_v = jnp.full((batch, width, channels), -jnp.inf, x.dtype)
    right_v = jnp.concatenate([v[:, width:], pad_v], axis=1)
    right_i = jnp.concatenate([i[:, width:], i[:, -width:]], axis=1)
    take_left = v >= right_v  # ties: the left half holds the earlier maximum
    values.append(jnp.where(take_left, v, right_v))
    index.append(jnp.where(take_left, i, right_i))
    width *= 2
  return jnp.stack(values), jnp.stack(index)


def _range_argmax(
    table: tuple[jax.Array, jax.Array], lo: jax.Array, hi: jax.Array, channels: slice
) -> jax.Array:
  """Index ``[B, S, C']`` of the first maximum of ``x[lo : hi + 1]`` per channel in ``channels``,
  from two overlapping power-of-two blocks ``[lo, lo + 2**k)`` and ``(hi - 2**k, hi]``."""
  values, index = table[0][..., channels], table[1][..., channels]
  size = hi - lo + 1  # >= 1
  level = 31 - jax.lax.clz(size.astype(jnp.int32))  # floor(log2(size))
  b = jnp.arange(lo.shape[0])[:, None]
  right = hi - (1 << level) + 1
  left_v, left_i = values[level, b, lo], index[level, b, lo]
  right_v, right_i = values[level, b, right], index[level, b, right]
  # The left block starts first, so it wins ties.
  return jnp.where(left_v >= right_v, left_i, right_i)

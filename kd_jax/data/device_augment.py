"""The ``compressed`` kind's crops, flips and normalisation on the accelerator, inside jit.

With ``ClipSpec.augment='device'`` (``config.data.augment``) the host only decodes: per modality
``m`` an element holds the uncropped segments and the geometry the host drew
(:func:`kd_jax.data.pipeline._compressed` draws the same random numbers in the same order as the
host path), and the engine turns them into network inputs on the devices
(:func:`kd_jax.train.mesh.host_to_global` calls :func:`augment`):

* ``<m>_raw``: ``[S, H, W, C]`` the decoded segments: uint8 I-frames (after any HLS jitter),
  int16 accumulated MVs and residuals (exact: ``|mv|`` is below the frame side, residuals lie in
  -255..255);
* ``<m>_box``: int32 ``[4]`` ``(top, left, height, width)``, the source window;
* ``<m>_view``: int32 ``[3]`` ``(scaled, offset, size)``: the window is resized to
  ``scaled x scaled`` and the output is its ``size x size`` window at ``(offset, offset)``
  (training: ``(crop, 0, crop)``; eval: ``(resize_size, (resize_size - crop) // 2, crop)`` over the
  whole frame, or ``(crop, 0, crop)`` over the centre window when frames are not resized);
* ``<m>_flip``: bool, mirror left-right (and negate MV x).

:func:`augment` replaces them by ``<m>`` float32 ``[S, size, size, C]``, what
``pipeline._compressed_input`` gives on the host:

* the bilinear resized crop of OpenCV ``INTER_LINEAR`` (half-pixel centres, clamped borders), as
  two interpolation matrices per sample, rows ``A [size, H]`` and columns ``B [size, W]`` with two
  non-zero taps a row (the column matrix reversed for a flip): ``y = A x B^T`` per frame and
  channel, two einsums at ``precision=HIGHEST`` (rows first, as the host). The taps are the host's:
  ``src = ((2 j + 1) h - scaled) / (2 scaled)`` in integers gives the same source samples, and the
  fraction is one float32 division of two small integers (the host rounds a float64 fraction:
  XLA's division may be an ulp or two away, so the weights agree within 2 ulps);
* I-frame: rounded half to even and clamped to 0..255 (``resize``'s uint8 result), then
  ``(x / 255 - mean) / std`` looked up in a table of ``transforms.normalize_rgb``'s values;
* MV: x negated when flipped, then ``clip(trunc(mv * 127.5 / 20) + 128, 0, 255) / 255 - 0.5``
  (``transforms.normalize_mv``). The truncation is exact: ``trunc`` counts the thresholds
  ``k * 20 / 127.5`` at or below ``|mv|``, each the smallest float32 not below it (a float32 product
  ``mv * 6.375`` could round up onto the integer the truncation must not reach);
* residual: ``clip(r, -128, 127) * (1 / (255 std)) + (128 / 255 - 0.5) / std``
  (``transforms.normalize_residual``'s float32 constants).

Only the weights' last bits and the matrix products (which may fuse the two taps' multiply-add)
can round differently from the host: the resized values are within a few float32 ulps of the
host's, so MV and I-frame levels agree except where that straddles a truncation threshold or a
rounding tie (one level, on under 0.1 % of the values in tests/test_device_augment.py).

Cost: one HIGHEST-precision matmul pair per frame, ``2 size H W C + 2 size^2 W C`` FLOPs (about
0.2 GFLOP for a 340 x 256 frame cropped to 224), far below a backbone step on an accelerator; on a
CPU the host path is cheaper (it reads only the window).
"""

from __future__ import annotations

import fractions
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.data import transforms

MODALITIES = ("iframe", "mv", "residual")
RAW, BOX, VIEW, FLIP = "_raw", "_box", "_view", "_flip"
SUFFIXES = (RAW, BOX, VIEW, FLIP)
# What the host hands over: exact for every value the codec gives.
RAW_DTYPES = {"iframe": np.uint8, "mv": np.int16, "residual": np.int16}

_HIGHEST = jax.lax.Precision.HIGHEST


def _rgb_table() -> np.ndarray:
  """float32 ``[256, 3]``: ``normalize_rgb`` of every uint8 level, per channel (the host's bits)."""
  levels = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1)
  return transforms.normalize_rgb(levels)


def _mv_thresholds(bound: float = transforms.MV_BOUND) -> np.ndarray:
  """float32 ``[130]``: ``c[0] = 0``, ``c[k]`` the smallest float32 ``>= k / (127.5 / bound)``
  (k = 1..128), ``c[129] = inf``; for float32 ``a >= 0``, ``trunc(a * 127.5 / bound)`` (capped
  at 128) is the largest ``k`` with ``c[k] <= a``.

  ``normalize_mv`` multiplies by the float64 ``127.5 / bound`` exactly (for ``bound = 20``, 6.375:
  a float32 times it is exact in float64), so the thresholds are exact rationals of that factor.
  """
  factor = fractions.Fraction(127.5 / bound)
  out = np.empty(130, np.float32)
  out[0], out[129] = 0.0, np.inf
  for k in range(1, 129):
    exact = k / factor
    c = np.float32(float(exact))
    while fractions.Fraction(float(c)) < exact:
      c = np.nextafter(c, np.float32(np.inf))
    while fractions.Fraction(float(np.nextafter(c, np.float32(-np.inf)))) >= exact:
      c = np.nextafter(c, np.float32(-np.inf))
    out[k] = c
  return out


_RGB_TABLE = _rgb_table()
_MV_THRESHOLDS = _mv_thresholds()
_MV_FACTOR = np.float32(127.5 / transforms.MV_BOUND)
# normalize_mv's float64 (u / 255 - 0.5) of every level u, in float32.
_MV_TABLE = (np.arange(256, dtype=np.float64) / 255.0 - 0.5).astype(np.float32)
_RES_STD = np.asarray(transforms.RESIDUAL_STD_RGB, np.float64)
_RES_SCALE = (1.0 / (255.0 * _RES_STD)).astype(np.float32)
_RES_SHIFT = ((128.0 / 255.0 - 0.5) / _RES_STD).astype(np.float32)


def keys(modality: str) -> tuple[str, ...]:
  """The element keys of ``modality``'s raw input: ``<m>_raw``, ``<m>_box``, ``<m>_view``,
  ``<m>_flip``."""
  return tuple(modality + s for s in SUFFIXES)


def raw_modalities(batch: Any) -> tuple[str, ...]:
  """The modalities whose raw input ``batch`` (a dict of arrays) carries; ``()`` for any other."""
  if not isinstance(batch, Mapping):
    return ()
  return tuple(m for m in MODALITIES if m + RAW in batch)


def output_sizes(batch: Mapping[str, Any]) -> dict[str, int]:
  """``{modality: output side}`` of a host batch (NumPy), read from ``<m>_view``: the static
  shapes of :func:`augment`.

  Raises:
    ValueError: a modality's raw input is incomplete, or its samples ask for different sides.
  """
  sizes = {}
  for m in raw_modalities(batch):
    missing = [k for k in keys(m) if k not in batch]
    if missing:
      raise ValueError(f"batch has {m + RAW} but lacks {', '.join(missing)}; pass all of "
                       f"{', '.join(keys(m))} (kd_jax.data.pipeline with augment='device')")
    side = np.unique(np.asarray(batch[m + VIEW])[..., 2])
    if side.size != 1:
      raise ValueError(f"{m + VIEW} asks for output sides {side.tolist()} in one batch; one "
                       "batch must have one crop size")
    sizes[m] = int(side[0])
  return sizes


def taps(start: jax.Array, length: jax.Array, scaled: jax.Array, offset: jax.Array,
         size: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """``(lo, hi, w0, w1)`` of output positions ``0 .. size - 1``: source indices (absolute, int32)
  and float32 weights of one axis.

  The window ``[start, start + length)`` resized to ``scaled`` (OpenCV ``INTER_LINEAR``:
  ``src = (j + 0.5) length / scaled - 0.5`` clamped to ``[0, length - 1]``), output positions
  ``j = offset .. offset + size - 1``. ``src`` is the rational ``((2 j + 1) length - scaled) /
  (2 scaled)``: integer floor division gives ``lo`` and ``hi`` exactly as
  ``transforms._linear_taps``, one float32 division the fraction ``f`` within 2 ulps of its
  (``w0 = 1 - f`` in float32, as there).
  """
  j = jnp.arange(size, dtype=jnp.int32) + offset
  num = (2 * j + 1) * length - scaled
  den = 2 * jnp.asarray(scaled, jnp.int32)
  q = jnp.floor_divide(num, den)
  inside = (q >= 0) & (q < length - 1)  # else src is clamped onto a border sample: f = 0
  lo = jnp.clip(q, 0, length - 1)
  f = jnp.where(inside, (num - q * den).astype(jnp.float32) / den.astype(jnp.float32),
                jnp.float32(0))
  hi = jnp.minimum(lo + 1, length - 1)
  return start + lo, start + hi, jnp.float32(1) - f, f


def interpolation_matrix(start: jax.Array, length: jax.Array, scaled: jax.Array,
                         offset: jax.Array, size: int, extent: int) -> jax.Array:
  """float32 ``[size, extent]``: row ``j`` holds output position ``j``'s two weights (:func:`taps`)
  at their source columns; ``y = M x`` resamples an axis of ``extent`` samples."""
  lo, hi, w0, w1 = taps(start, length, scaled, offset, size)
  k = jnp.arange(extent, dtype=jnp.int32)
  # Where lo == hi, w1 is 0 (a clamped border), so the sum adds an exact zero.
  return (w0[:, None] * (k == lo[:, None]).astype(jnp.float32)
          + w1[:, None] * (k == hi[:, None]).astype(jnp.float32))


def resized_crop(frames: jax.Array, box: jax.Array, view: jax.Array, flip: jax.Array,
                 size: int) -> jax.Array:
  """float32 ``[B, S, size, size, C]``: per sample, its window ``box`` of ``frames`` ``[B, S, H, W,
  C]`` resized and cropped as ``view`` says (see the module docstring), mirrored where ``flip``.

  ``transforms.resized_crop`` (and its centre crop at eval) before any rounding, within a float32
  ulp: ``y = A x B^T`` per frame and channel with ``A [size, H]`` and ``B [size, W]`` from
  :func:`interpolation_matrix` (``B``'s rows reversed for a flip), rows first as the host.
  """
  height, width = frames.shape[-3], frames.shape[-2]
  box, view = box.astype(jnp.int32), view.astype(jnp.int32)

  def matrices(b, v):
    rows = interpolation_matrix(b[0], b[2], v[0], v[1], size, height)
    cols = interpolation_matrix(b[1], b[3], v[0], v[1], size, width)
    return rows, cols

  rows, cols = jax.vmap(matrices)(box, view)
  cols = jnp.where(flip.astype(bool)[:, None, None], cols[:, ::-1], cols)
  x = frames.astype(jnp.float32)
  y = jnp.einsum("bik,bsklc->bsilc", rows, x, precision=_HIGHEST,
                 preferred_element_type=jnp.float32)
  return jnp.einsum("bjl,bsilc->bsijc", cols, y, precision=_HIGHEST,
                    preferred_element_type=jnp.float32)


def normalize_iframe(y: jax.Array) -> jax.Array:
  """Resized I-frame values to network input: ``resize``'s uint8 rounding (half to even, clamped),
  then ``normalize_rgb``'s float32 value of that level (a table, so the host's bits)."""
  level = jnp.clip(jnp.round(y), 0, 255).astype(jnp.int32)
  channel = jnp.arange(y.shape[-1], dtype=jnp.int32)
  return jnp.asarray(_RGB_TABLE.T.reshape(-1))[channel * 256 + level]


def normalize_mv(y: jax.Array, flip: jax.Array) -> jax.Array:
  """Resized MVs ``[B, ..., 2]`` to network input: x negated where ``flip`` (``[B]``), then
  ``normalize_mv`` with its truncation exact for every float32 value (see ``_mv_thresholds``)."""
  sign = jnp.where(flip.astype(bool), -1.0, 1.0).astype(jnp.float32)
  sign = sign.reshape((-1,) + (1,) * (y.ndim - 1))
  y = jnp.concatenate([y[..., :1] * sign, y[..., 1:]], axis=-1)
  a = jnp.abs(y)
  c = jnp.asarray(_MV_THRESHOLDS)
  # A first guess within one of trunc(a * 127.5 / 20), then set right against the thresholds.
  t = jnp.clip(jnp.floor(a * _MV_FACTOR), 0, 128).astype(jnp.int32)
  t = t - (a < c[t]).astype(jnp.int32)
  t = t + (a >= c[t + 1]).astype(jnp.int32)
  level = jnp.clip(jnp.where(y < 0, -t, t) + 128, 0, 255)
  return jnp.asarray(_MV_TABLE)[level]


def normalize_residual(y: jax.Array) -> jax.Array:
  """Resized residuals to network input with ``normalize_residual``'s float32 constants."""
  return jnp.clip(y, -128.0, 127.0) * jnp.asarray(_RES_SCALE) + jnp.asarray(_RES_SHIFT)


def augment(batch: Mapping[str, jax.Array], sizes: Mapping[str, int]) -> dict[str, jax.Array]:
  """Raw compressed-video inputs to network inputs; jit- and shard-friendly (per-sample work).

  Args:
    batch: a batch (leading axis) with, for each modality ``m`` of ``sizes``, ``<m>_raw``,
      ``<m>_box``, ``<m>_view`` and ``<m>_flip`` (the module docstring); other keys pass through.
    sizes: ``{modality: output side}``, static (:func:`output_sizes` of the host batch).

  Returns:
    The batch with ``<m>`` float32 ``[B, S, size, size, C]`` in place of the four raw keys.
  """
  out = {k: v for k, v in batch.items()
         if not any(k == m + s for m in sizes for s in SUFFIXES)}
  for m, size in sizes.items():
    if m not in MODALITIES:
      raise ValueError(f"unknown modality {m!r}; expected one of {MODALITIES}")
    flip = batch[m + FLIP]
    y = resized_crop(batch[m + RAW], batch[m + BOX], batch[m + VIEW], flip, int(size))
    if m == "iframe":
      out[m] = normalize_iframe(y)
    elif m == "mv":
      out[m] = normalize_mv(y, flip)
    else:
      out[m] = normalize_residual(y)
  return out

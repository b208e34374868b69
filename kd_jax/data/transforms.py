"""Spatial transforms and per-modality normalisation, in NumPy (CoViAR / TSN conventions).

Arrays are channels-last with any leading axes: an image ``[H, W, C]`` or a group of frames
``[T, H, W, C]`` (all frames of a group get the same crop and flip, as TSN's ``Group*``
transforms). Randomness comes only from the ``numpy.random.Generator`` passed in.

Recommended order (pkd_wise.md section 8.4): crop / resize / flip the raw representations (uint8
RGB, signed int MVs, signed int residuals), then normalise. CoViAR normalises MVs and residuals to
uint8 first and resizes those; resizing the raw values instead only moves results by rounding
(at most about 1/255 after normalisation).

* Train: :func:`multiscale_crop` (GroupMultiScaleCrop) then :func:`random_hflip`; the data
  pipeline does both (and the test-time resize) in one :func:`resized_crop`, the same values.
* Test: :func:`resize` to 256 x 256 (aspect not kept), :func:`center_crop` to 224.
* MV maps are resized per channel without rescaling the vector magnitudes; a flip negates x.
* I-frames (CoViAR's single-modality loader only): :func:`hls_jitter` with offsets from
  :func:`sample_hls_offsets`, on the full decoded frame, before any crop (CoViAR's ``color_aug``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CoViAR divides its BGR residual by IMAGENET_STD in channel order, i.e. blue by 0.229 and red by
# 0.225. kd_jax residuals are RGB; this order keeps the same divisor per colour.
RESIDUAL_STD_RGB = IMAGENET_STD[::-1]
MV_BOUND = 20.0  # CoViAR's clip_and_scale(mv, 20): +-20 px map to the ends of the uint8 range.

# CoViAR's color_aug(random_h=36, random_l=50, random_s=50), in OpenCV's 8-bit HLS units.
HLS_JITTER = (36.0, 50.0, 50.0)

IFRAME_SCALES = (1.0, 0.875, 0.75, 0.66)
MV_RESIDUAL_SCALES = (1.0, 0.875, 0.75)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def _check_frames(x: np.ndarray) -> None:
  if x.ndim < 3:
    raise ValueError(f"expected [..., H, W, C] frames, got shape {x.shape}")


# -- Geometry -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray]:
  """(lo, hi, 1 - f, f) of each output position: its two source positions and their weights.

  Half-pixel centres, source clamped at the borders: OpenCV INTER_LINEAR (no antialiasing),
  identical to torch's bilinear with align_corners=False. Cached (a handful of crop sides recur);
  read-only.
  """
  src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  src = np.clip(src, 0, in_size - 1)
  lo = np.floor(src).astype(np.intp)
  hi = np.minimum(lo + 1, in_size - 1)
  f = (src - lo).astype(np.float32)
  taps = (lo, hi, (1 - f).astype(np.float32), f)
  for t in taps:
    t.flags.writeable = False
  return taps


@functools.lru_cache(maxsize=256)
def _channel_taps(in_size: int, out_size: int, channels: int,
                  flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The width taps of ``_linear_taps`` per element of a row of ``channels``-channel pixels
  (flat ``x * channels + c``), mirrored when ``flip``: the width pass gathers single elements."""
  lo, hi, w0, w1 = _linear_taps(in_size, out_size)
  if flip:
    lo, hi, w0, w1 = lo[::-1], hi[::-1], w0[::-1], w1[::-1]
  c = np.arange(channels)
  taps = ((lo[:, None] * channels + c).reshape(-1), (hi[:, None] * channels + c).reshape(-1),
          np.repeat(w0, channels), np.repeat(w1, channels))
  for t in taps:
    t.flags.writeable = False
  return taps


def _frame_list(x: np.ndarray | Sequence[np.ndarray]) -> tuple[list[np.ndarray], tuple[int, ...]]:
  """Frames ``[H, W, C]`` of an array ``[..., H, W, C]`` or of a sequence of equal frames, and
  the leading shape."""
  if isinstance(x, np.ndarray):
    _check_frames(x)
    lead = x.shape[:-3]
    return list(x.reshape((-1,) + x.shape[-3:])), lead
  frames = [np.asarray(f) for f in x]
  if not frames or any(f.ndim != 3 or f.shape != frames[0].shape for f in frames):
    raise ValueError("expected a non-empty sequence of [H, W, C] frames of one shape, got shapes "
                     f"{[f.shape for f in frames]}")
  return frames, (len(frames),)


def resized_crop(x: np.ndarray | Sequence[np.ndarray], size: int | Sequence[int],
                 box: Sequence[int] | None = None, *, flip: bool = False) -> np.ndarray:
  """``resize(crop(x, *box), size)``, mirrored left-right when ``flip``, before any rounding.

  float32 ``[..., h, w, C]``: the bilinear values of :func:`resize` (OpenCV ``INTER_LINEAR``,
  half-pixel centres, clamped borders) in its arithmetic, rows first then columns, each pass
  ``a (1 - f) + b f`` in float32, so ``resize`` of uint8 frames is this rounded. ``x`` is an array
  ``[..., H, W, C]`` or a sequence of ``[H, W, C]`` frames of one shape (the segments of a clip,
  not stacked first); ``box`` is ``(top, left, height, width)`` (None: the whole frame).

  Faster than the composition: only the window is read, each pass gathers whole rows (rows) or
  single elements (columns) through cached taps into preallocated float32, and the flip is the
  column taps reversed (no copy).
  """
  frames, lead = _frame_list(x)
  in_h, in_w, channels = frames[0].shape
  out_h, out_w = _pair(size)
  if out_h < 1 or out_w < 1:
    raise ValueError(f"size must be positive, got {size}")
  top, left, h, w = (0, 0, in_h, in_w) if box is None else (int(v) for v in box)
  if top < 0 or left < 0 or h < 1 or w < 1 or top + h > in_h or left + w > in_w:
    raise ValueError(f"crop {h}x{w} at ({top}, {left}) exceeds frames of shape "
                     f"{frames[0].shape}")
  out = np.empty((len(frames), out_h, out_w, channels), np.float32)
  if (out_h, out_w) == (h, w):
    for k, f in enumerate(frames):
      out[k] = f[top:top + h, left:left + w][:, ::-1 if flip else 1]
    return out.reshape(lead + out.shape[1:])
  lo, hi, w0, w1 = _linear_taps(h, out_h)
  w0, w1 = w0[:, None, None], w1[:, None, None]
  clo, chi, v0, v1 = _channel_taps(w, out_w, channels, flip)
  rows = np.empty((out_h, w, channels), np.float32)
  tmp = np.empty_like(rows)
  flat = rows.reshape(out_h, w * channels)
  cols = np.empty((out_h, out_w * channels), np.float32)
  for k, f in enumerate(frames):
    win = f[top:top + h, left:left + w]
    # dtype=float32 casts the samples first, as resize's astype(float32) did.
    np.multiply(win[lo], w0, out=rows, dtype=np.float32)  # fancy rows: no contiguous copy
    np.multiply(win[hi], w1, out=tmp, dtype=np.float32)
    rows += tmp
    o = out[k].reshape(out_h, out_w * channels)
    np.take(flat, clo, axis=1, out=cols)
    cols *= v0
    np.take(flat, chi, axis=1, out=o)
    o *= v1
    o += cols
  return out.reshape(lead + out.shape[1:])


def round_uint8(y: np.ndarray) -> np.ndarray:
  """In place: float values rounded half to even and clamped to [0, 255], as :func:`resize`
  converts its uint8 results (the values of that uint8 array, kept in ``y``'s float dtype)."""
  np.rint(y, out=y)
  return np.clip(y, 0, 255, out=y)


def resize(x: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """Bilinear resize of ``[..., H, W, C]`` to ``size`` (``(h, w)`` or a square side).

  OpenCV ``INTER_LINEAR`` semantics (CoViAR's ``cv2.resize``). uint8 input gives uint8 (rounded);
  any other input gives float32. Channels are resized independently, so motion vectors keep their
  magnitudes (CoViAR's ``resize_mv``). :func:`resized_crop` is the same with a crop and a flip.
  """
  x = np.asarray(x)
  _check_frames(x)
  out_h, out_w = _pair(size)
  if out_h < 1 or out_w < 1:
    raise ValueError(f"size must be positive, got {size}")
  if 0 in x.shape[:-3]:
    y = np.zeros(x.shape[:-3] + (out_h, out_w, x.shape[-1]), np.float32)
  else:
    y = resized_crop(x, (out_h, out_w))
  if x.dtype == np.uint8:
    return round_uint8(y).astype(np.uint8)
  return y


def crop(x: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
  """The window ``[top:top + height, left:left + width]`` of ``[..., H, W, C]``."""
  x = np.asarray(x)
  _check_frames(x)
  if top < 0 or left < 0 or top + height > x.shape[-3] or left + width > x.shape[-2]:
    raise ValueError(f"crop {height}x{width} at ({top}, {left}) exceeds frames of shape {x.shape}")
  return x[..., top:top + height, left:left + width, :]


def center_crop(x: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """Central ``size`` window; the offset is ``(H - h) // 2`` as in CoViAR's GroupCenterCrop."""
  x = np.asarray(x)
  _check_frames(x)
  h, w = _pair(size)
  return crop(x, (x.shape[-3] - h) // 2, (x.shape[-2] - w) // 2, h, w)


def multiscale_crop_offsets(height: int, width: int, crop_h: int, crop_w: int,
                            more_fix_crop: bool = True) -> list[tuple[int, int]]:
  """TSN's fixed (top, left) crop positions: 4 corners and centre, plus 8 more (13 in all)."""
  hs, ws = (height - crop_h) // 4, (width - crop_w) // 4
  grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
  if more_fix_crop:
    grid += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
  return [(i * hs, j * ws) for i, j in grid]


def sample_multiscale_crop(rng: np.random.Generator, height: int, width: int,
                           output_size: int | Sequence[int], *,
                           scales: Sequence[float] = IFRAME_SCALES, max_distort: int = 1,
                           fix_crop: bool = False,
                           more_fix_crop: bool = True) -> tuple[int, int, int, int]:
  """Draws a GroupMultiScaleCrop window ``(top, left, crop_h, crop_w)``.

  Crop sides are ``int(min(H, W) * scale)`` for each scale, chosen independently for height and
  width with scale indices at most ``max_distort`` apart, uniformly over the allowed pairs; a side
  within 2 px of the output side snaps to it. The offset is uniform over all positions
  (``fix_crop=False``, CoViAR) or one of TSN's fixed positions (``fix_crop=True``, GenKD).
  """
  out_h, out_w = _pair(output_size)
  base = min(height, width)
  sides = [int(base * s) for s in scales]
  sides_h = [out_h if abs(s - out_h) < 3 else s for s in sides]
  sides_w = [out_w if abs(s - out_w) < 3 else s for s in sides]
  pairs = [(h, w) for i, h in enumerate(sides_h) for j, w in enumerate(sides_w)
           if abs(i - j) <= max_distort]
  crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
  if crop_h > height or crop_w > width or min(crop_h, crop_w) < 1:
    raise ValueError(f"crop {crop_h}x{crop_w} does not fit frames of {height}x{width}")
  if fix_crop:
    offsets = multiscale_crop_offsets(height, width, crop_h, crop_w, more_fix_crop)
    top, left = offsets[int(rng.integers(len(offsets)))]
  else:
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
  return top, left, crop_h, crop_w


def multiscale_crop(x: np.ndarray, rng: np.random.Generator, output_size: int | Sequence[int], *,
                    scales: Sequence[float] = IFRAME_SCALES, max_distort: int = 1,
                    fix_crop: bool = False, more_fix_crop: bool = True) -> np.ndarray:
  """GroupMultiScaleCrop: one random multi-scale window for all frames, resized to the output.

  CoViAR uses scales ``(1, .875, .75, .66)`` for I-frames and ``(1, .875, .75)`` for MV and
  residual (``MV_RESIDUAL_SCALES``), output 224 (256 in PKD's fused loader).
  """
  x = np.asarray(x)
  _check_frames(x)
  top, left, h, w = sample_multiscale_crop(
      rng, x.shape[-3], x.shape[-2], output_size, scales=scales, max_distort=max_distort,
      fix_crop=fix_crop, more_fix_crop=more_fix_crop)
  return resize(crop(x, top, left, h, w), output_size)


def hflip(x: np.ndarray, *, is_mv: bool = False) -> np.ndarray:
  """Mirrors left-right; for motion vectors (channel 0 = x) also negates the x component."""
  x = np.asarray(x)
  _check_frames(x)
  y = x[..., ::-1, :].copy()
  if is_mv:
    if y.shape[-1] != 2:
      raise ValueError(f"motion vectors have 2 channels, got shape {x.shape}")
    if y.dtype == np.uint8:
      raise ValueError("flip raw (signed) motion vectors, before normalize_mv")
    y[..., 0] = -y[..., 0]
  return y


def random_hflip(x: np.ndarray, rng: np.random.Generator, *, is_mv: bool = False,
                 p: float = 0.5) -> tuple[np.ndarray, bool]:
  """:func:`hflip` with probability ``p``; returns the frames and whether they were flipped."""
  flipped = bool(rng.random() < p)
  return (hflip(x, is_mv=is_mv) if flipped else np.asarray(x)), flipped


# -- Normalisation ------------------------------------------------------------------------------


def _finish(y: np.ndarray, out: np.ndarray | None) -> np.ndarray:
  if out is None:
    return y.astype(np.float32)
  np.copyto(out, y, casting="same_kind")
  return out


def _per_channel(x: np.ndarray, out: np.ndarray | None,
                 *consts: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
  """``x``, a float32 result array (``out`` or new) and per-channel float32 constants, as views
  whose rows hold whole frame rows (W * C values) and constants tiled to match: NumPy then runs
  its loops over long rows, where a broadcast ``[C]`` constant makes them ~10x slower."""
  x = np.asarray(x)
  y = np.empty(x.shape, np.float32) if out is None else out
  if x.ndim >= 2 and x.flags.c_contiguous and y.flags.c_contiguous and x.size:
    n = x.shape[-2] * x.shape[-1]
    tiled = tuple(np.tile(np.broadcast_to(c, x.shape[-1:]), x.shape[-2]) for c in consts)
    return x.reshape(-1, n), y.reshape(-1, n), tiled
  return x, y, consts


def normalize_rgb(x: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, *, out: np.ndarray | None = None
                  ) -> np.ndarray:
  """RGB in [0, 255] to ``(x / 255 - mean) / std``, float32 (I-frames, I3D clips).

  Computed as one float32 multiply-add per value, ``x * (1 / (255 std)) - mean / std``: within
  1e-6 of the formula in float64. ``out``: a float32 array of ``x``'s shape to write to (``x``
  itself for in place).
  """
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  x2, y2, (scale, shift) = _per_channel(x, out, (1.0 / (255.0 * std)).astype(np.float32),
                                        (-mean / std).astype(np.float32))
  np.multiply(x2, scale, out=y2, dtype=np.float32)
  y2 += shift
  return y2.reshape(np.shape(x))


normalize_iframe = normalize_rgb


def normalize_mv(mv: np.ndarray, bound: float = MV_BOUND, *,
                 out: np.ndarray | None = None) -> np.ndarray:
  """CoViAR's MV input: ``clip(trunc(mv * 127.5 / bound) + 128, 0, 255) / 255 - 0.5``, float32.

  About ``mv / (2 * bound)``, saturating at +-``bound`` px. The truncation toward zero is CoViAR's
  ``astype(np.int32)``. Computed in float64 (a float32 product could round onto the integer that
  the truncation must not reach); ``out``: a float32 array to write to (``mv`` itself if float32).
  """
  q = np.multiply(mv, 127.5 / bound, dtype=np.float64)
  np.trunc(q, out=q)
  q += 128
  np.clip(q, 0, 255, out=q)
  q /= 255.0
  q -= 0.5
  return _finish(q, out)


def normalize_residual(res: np.ndarray, std: Sequence[float] = RESIDUAL_STD_RGB, *,
                       out: np.ndarray | None = None) -> np.ndarray:
  """CoViAR's residual input: ``(clip(res + 128, 0, 255) / 255 - 0.5) / std``, float32.

  ``std`` defaults to CoViAR's per-colour divisors for an RGB residual (see ``RESIDUAL_STD_RGB``).
  Computed in float32 as ``clip(res, -128, 127) * (1 / (255 std)) + (128 / 255 - 0.5) / std``:
  within 1e-6 of the formula in float64. ``out`` as in :func:`normalize_mv`.
  """
  std = np.asarray(std, np.float64)
  x2, y2, (scale, shift) = _per_channel(res, out, (1.0 / (255.0 * std)).astype(np.float32),
                                        ((128.0 / 255.0 - 0.5) / std).astype(np.float32))
  np.clip(x2, -128, 127, out=y2, dtype=np.float32)
  y2 *= scale
  y2 += shift
  return y2.reshape(np.shape(res))


# -- Colour -------------------------------------------------------------------------------------

_F32 = np.float32


def _check_rgb_uint8(x: np.ndarray, what: str) -> None:
  if x.dtype != np.uint8 or x.ndim < 1 or x.shape[-1] != 3:
    raise ValueError(f"{what} must be uint8 [..., 3], got {x.dtype} {x.shape}")


def rgb_to_hls(x: np.ndarray) -> np.ndarray:
  """uint8 RGB ``[..., 3]`` to uint8 HLS in OpenCV's 8-bit convention (``cv2.COLOR_RGB2HLS``).

  H is the hue in degrees halved, in ``[0, 180)``; L and S are in ``[0, 255]``. OpenCV's algorithm
  in float32: ``v = x / 255``, ``l = (max + min) / 2``, ``s = d / (max + min)`` for ``l < 0.5``
  else ``d / (2 - max - min)`` with ``d = max - min``; ``h = 60 (g - b) / d`` (red largest),
  ``60 (b - r) / d + 120`` (green), ``60 (r - g) / d + 240`` (blue), plus 360 if negative; H and
  S are 0 for a grey (``d <= FLT_EPSILON``); outputs ``round(h / 2)``, ``round(255 l)``,
  ``round(255 s)``. This is OpenCV's reference (scalar) form; the SIMD path of OpenCV >= 4 fuses
  the hue's multiply-add and differs from it by one level in 5455 of the 2^24 colours (OpenCV 5.1,
  checked on all of them). The official environment had OpenCV 3.4.1.
  """
  x = np.asarray(x)
  _check_rgb_uint8(x, "rgb_to_hls input")
  v = x.astype(_F32) * _F32(1.0 / 255.0)
  r, g, b = v[..., 0], v[..., 1], v[..., 2]
  vmax = np.maximum(np.maximum(r, g), b)
  vmin = np.minimum(np.minimum(r, g), b)
  d = vmax - vmin
  l = (vmax + vmin) * _F32(0.5)
  chroma = d > np.finfo(np.float32).eps
  safe = np.where(chroma, d, _F32(1))  # greys: any non-zero divisor; masked below
  s = np.where(l < _F32(0.5), d / np.where(chroma, vmax + vmin, _F32(1)),
               d / np.where(chroma, _F32(2) - vmax - vmin, _F32(1)))
  k = _F32(60) / safe
  h = np.where(vmax == r, (g - b) * k,
               np.where(vmax == g, (b - r) * k + _F32(120), (r - g) * k + _F32(240)))
  h = np.where(h < 0, h + _F32(360), h)
  hls = np.stack([np.where(chroma, h * _F32(0.5), _F32(0)), l * _F32(255),
                  np.where(chroma, s, _F32(0)) * _F32(255)], axis=-1)
  # saturate_cast<uchar>(float): round half to even, then clamp.
  return np.clip(np.rint(hls), 0, 255).astype(np.uint8)


# OpenCV's HLS2RGB sector table: which of (p2, p1, falling, rising) is (b, g, r) in each 60 deg.
_SECTORS = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def hls_to_rgb(x: np.ndarray) -> np.ndarray:
  """uint8 HLS (OpenCV's 8-bit convention) to uint8 RGB, as ``cv2.COLOR_HLS2RGB``.

  In float32: ``l = L / 255``, ``s = S / 255``; ``p2 = l (1 + s)`` for ``l <= 0.5`` else
  ``l + s - l s``, ``p1 = 2 l - p2``; ``h = H / 30`` wrapped into ``[0, 6)`` (so ``H = 180`` is red
  again), sector ``floor(h)``, fraction ``f``; the channels are ``p2``, ``p1``,
  ``p1 + (p2 - p1)(1 - f)`` or ``p1 + (p2 - p1) f`` by sector; grey (``S = 0``) is ``l``; output
  ``round(255 c)``. Equal to OpenCV 5.1 on every 8-bit HLS triple (checked on all of them).
  """
  x = np.asarray(x)
  _check_rgb_uint8(x, "hls_to_rgb input")
  h = x[..., 0].astype(_F32) * _F32(6.0 / 180.0)
  l = x[..., 1].astype(_F32) * _F32(1.0 / 255.0)
  s = x[..., 2].astype(_F32) * _F32(1.0 / 255.0)
  p2 = np.where(l <= _F32(0.5), l * (_F32(1) + s), l + s - l * s)
  p1 = _F32(2) * l - p2
  h = np.where(h >= _F32(6), h - _F32(6), h)  # 8-bit H <= 255 is below 12: one wrap suffices
  sector = np.floor(h).astype(np.int64)
  f = h - sector.astype(_F32)
  tab = np.stack([p2, p1, p1 + (p2 - p1) * (_F32(1) - f), p1 + (p2 - p1) * f], axis=-1)
  bgr = np.take_along_axis(tab, _SECTORS[sector], axis=-1)
  rgb = np.where((s == 0)[..., None], l[..., None], bgr[..., ::-1])
  return np.clip(np.rint(rgb * _F32(255)), 0, 255).astype(np.uint8)


def sample_hls_offsets(rng: np.random.Generator, num: int,
                       bounds: Sequence[float] = HLS_JITTER) -> np.ndarray:
  """``num`` independent (H, L, S) offsets, each uniform in ``[-bound, bound)``; float64 ``[num, 3]``.

  CoViAR's ``color_aug`` draws ``(random.random() * 2 - 1) * bound`` per channel, once per call,
  and calls it once per segment: every segment of a video gets its own offsets.
  """
  if num < 0:
    raise ValueError(f"num must be >= 0, got {num}")
  u = rng.random((num, 3))
  return (u * 2.0 - 1.0) * np.asarray(bounds, np.float64)


def hls_jitter(frames: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """CoViAR's I-frame colour jitter (``transforms.color_aug``) of uint8 RGB ``[..., H, W, 3]``.

  ``offsets`` (H, L, S), float, of shape ``[3]`` (one for all frames) or ``frames.shape[:-3] +
  (3,)`` (one per frame). In OpenCV's 8-bit HLS: ``H' = min(H + dh, 180)``, ``L' = min(L + dl,
  255)``, ``S' = min(S + ds, 255)``, all ``max(., 0)``, truncated to uint8 (``astype``: toward
  zero, no wrap), then back to RGB. Hue saturates rather than wraps (``H' = 180`` is red). CoViAR
  jitters BGR frames with ``COLOR_BGR2HLS``; the same on RGB frames with RGB2HLS is identical.
  """
  frames = np.asarray(frames)
  _check_frames(frames)
  _check_rgb_uint8(frames, "hls_jitter frames")
  offsets = np.asarray(offsets, np.float64)
  lead = frames.shape[:-3]
  if offsets.shape not in ((3,), lead + (3,)):
    raise ValueError(f"offsets must have shape (3,) or {lead + (3,)}, got {offsets.shape}")
  offsets = offsets.reshape(offsets.shape[:-1] + (1, 1, 3))
  hls = rgb_to_hls(frames).astype(np.float64) + offsets
  hls = np.minimum(hls, np.array([180.0, 255.0, 255.0]))
  hls = np.maximum(hls, 0.0)
  return hls_to_rgb(hls.astype(np.uint8))

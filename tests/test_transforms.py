"""Tests of kd_jax.data.transforms against hand-computed values and PyTorch."""

import numpy as np
import pytest

from kd_jax.data import transforms


def test_resize_hand_checked():
  row = np.array([0, 10, 20, 30], np.float32).reshape(1, 4, 1)
  # Half-pixel centres: source x = 0.5 and 2.5.
  np.testing.assert_allclose(transforms.resize(row, (1, 2))[0, :, 0], [5, 25])
  # Upsampling 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
  two = np.array([0, 10], np.float32).reshape(1, 2, 1)
  np.testing.assert_allclose(transforms.resize(two, (1, 4))[0, :, 0], [0, 2.5, 7.5, 10])


@pytest.mark.torch
def test_resize_matches_torch_bilinear():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).normal(size=(3, 37, 50, 2)).astype(np.float32)
  for size in [(24, 31), (64, 90), (37, 17)]:
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
        align_corners=False, antialias=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(transforms.resize(x, size), ref, atol=1e-4)  # float32 scale


def test_resize_dtypes_and_mv_magnitudes():
  img = np.full((2, 10, 14, 3), 200, np.uint8)
  out = transforms.resize(img, 7)
  assert out.dtype == np.uint8 and out.shape == (2, 7, 7, 3) and (out == 200).all()
  mv = np.zeros((10, 14, 2), np.int32)
  mv[..., 0], mv[..., 1] = 5, -3
  out = transforms.resize(mv, (20, 28))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[..., 0], 5)  # No rescaling of the vectors with the image.
  np.testing.assert_allclose(out[..., 1], -3)


def test_center_crop_offsets():
  x = np.arange(256 * 340).reshape(256, 340, 1)
  out = transforms.center_crop(x, 224)
  # Offsets (256 - 224) // 2 = 16 and (340 - 224) // 2 = 58.
  assert out.shape == (224, 224, 1)
  assert out[0, 0, 0] == 16 * 340 + 58
  with pytest.raises(ValueError, match="exceeds"):
    transforms.center_crop(np.zeros((10, 10, 3)), 12)


def test_multiscale_crop_sizes_from_allowed_set():
  rng = np.random.default_rng(0)
  # Base 256: int(256 * s) for s in (1, .875, .75, .66) = 256, 224, 192, 168; indices <= 1 apart.
  sides = [256, 224, 192, 168]
  allowed = {(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
  seen = set()
  for _ in range(500):
    top, left, h, w = transforms.sample_multiscale_crop(rng, 256, 340, 224)
    assert (h, w) in allowed
    assert 0 <= top <= 256 - h and 0 <= left <= 340 - w
    seen.add((h, w))
  assert seen == allowed
  # MV / residual scales; output 256 (fused loader): 256, 224, 192.
  for _ in range(100):
    _, _, h, w = transforms.sample_multiscale_crop(
        rng, 256, 340, 256, scales=transforms.MV_RESIDUAL_SCALES)
    assert h in (256, 224, 192) and w in (256, 224, 192)
  # Snapping: a side within 2 px of the output side becomes the output side.
  _, _, h, w = transforms.sample_multiscale_crop(rng, 100, 100, 98, scales=(1.0,))
  assert (h, w) == (98, 98)


def test_multiscale_fixed_offsets():
  # 256 x 340 frames, 192 x 224 crop: steps (64 // 4, 116 // 4) = (16, 29).
  offsets = transforms.multiscale_crop_offsets(256, 340, 192, 224)
  assert len(offsets) == 13
  assert set(offsets[:5]) == {(0, 0), (0, 116), (64, 0), (64, 116), (32, 58)}
  assert (16, 29) in offsets and (48, 87) in offsets
  rng = np.random.default_rng(0)
  for _ in range(50):
    top, left, h, w = transforms.sample_multiscale_crop(rng, 256, 340, 224, fix_crop=True)
    assert (top, left) in transforms.multiscale_crop_offsets(256, 340, h, w)


def test_multiscale_crop_applies_one_window_to_the_group():
  x = np.random.default_rng(1).integers(0, 256, (3, 64, 80, 3), np.uint8)
  x[1] = x[0]
  out = transforms.multiscale_crop(x, np.random.default_rng(7), 48)
  assert out.shape == (3, 48, 48, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[0], out[1])
  top, left, h, w = transforms.sample_multiscale_crop(np.random.default_rng(7), 64, 80, 48)
  np.testing.assert_array_equal(out, transforms.resize(x[:, top:top + h, left:left + w], 48))


def test_flip_negates_mv_x():
  mv = np.zeros((1, 2, 3, 2), np.int32)
  mv[0, :, :, 0] = [[1, 2, 3], [4, 5, 6]]
  mv[0, :, :, 1] = [[7, 8, 9], [10, 11, 12]]
  out = transforms.hflip(mv, is_mv=True)
  np.testing.assert_array_equal(out[0, :, :, 0], [[-3, -2, -1], [-6, -5, -4]])
  np.testing.assert_array_equal(out[0, :, :, 1], [[9, 8, 7], [12, 11, 10]])
  img = np.arange(6, dtype=np.uint8).reshape(1, 3, 2)
  np.testing.assert_array_equal(transforms.hflip(img)[0], [[4, 5], [2, 3], [0, 1]])
  with pytest.raises(ValueError, match="raw"):
    transforms.hflip(mv.astype(np.uint8), is_mv=True)


def test_random_flip_seeded():
  mv = np.ones((4, 4, 2), np.float32)
  flips = [transforms.random_hflip(mv, np.random.default_rng(s), is_mv=True) for s in range(200)]
  again = [transforms.random_hflip(mv, np.random.default_rng(s), is_mv=True)[1] for s in range(200)]
  assert [f for _, f in flips] == again
  assert 60 < sum(again) < 140
  for out, flipped in flips[:10]:
    assert (out[..., 0] == (-1 if flipped else 1)).all()


def test_normalisation_hand_checked():
  # MV: trunc(mv * 6.375) + 128, clipped, / 255 - 0.5.
  mv = np.array([0, 3, -3, 20, -20, 100, -100])
  expected = np.array([128, 147, 109, 255, 1, 255, 0]) / 255 - 0.5
  np.testing.assert_allclose(transforms.normalize_mv(mv), expected, atol=1e-7)
  # Residual (RGB): (clip(r + 128) / 255 - 0.5) / std, red by 0.225 and blue by 0.229 (CoViAR's
  # divisors for its BGR residual).
  res = np.array([[0, 0, 0], [127, -128, 300]])
  expected = np.array([[0.5 / 255] * 3, [0.5, -0.5, 0.5]]) / np.array([0.225, 0.224, 0.229])
  np.testing.assert_allclose(transforms.normalize_residual(res), expected, atol=1e-6)
  # I-frame / RGB clip: ImageNet statistics.
  rgb = np.array([[0, 128, 255]], np.uint8)
  expected = (np.array([0, 128, 255]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(transforms.normalize_rgb(rgb)[0], expected, atol=1e-6)
  assert transforms.normalize_iframe(rgb).dtype == np.float32


# -- HLS colour jitter (CoViAR's color_aug) ---------------------------------------------------------

try:
  import cv2  # optional: not a dependency of kd_jax
except ImportError:
  cv2 = None

needs_cv2 = pytest.mark.skipif(cv2 is None, reason="OpenCV (cv2) is not installed")


def _px(*rgb):
  return np.array([[rgb]], np.uint8)  # one pixel, [1, 1, 3]


def test_rgb_to_hls_hand_checked():
  # OpenCV 8-bit HLS: H = degrees / 2, L = 255 (max + min) / 2, S = 255 (max - min) / (max + min)
  # (L < 0.5) or / (2 - max - min); rounded half to even (L = 127.5 -> 128).
  cases = {(255, 0, 0): (0, 128, 255), (0, 255, 0): (60, 128, 255), (0, 0, 255): (120, 128, 255),
           (255, 255, 255): (0, 255, 0), (0, 0, 0): (0, 0, 0), (100, 100, 100): (0, 100, 0),
           # hue 60 * 50 / 100 = 30 deg -> 15; L = 50; S = 100 / 100 -> 255
           (100, 50, 0): (15, 50, 255),
           # hue 360 - 60 * 128 / 255 = 329.88 deg -> 164.94 -> 165
           (255, 0, 128): (165, 128, 255)}
  for rgb, hls in cases.items():
    np.testing.assert_array_equal(transforms.rgb_to_hls(_px(*rgb))[0, 0], hls, err_msg=str(rgb))


def test_hls_to_rgb_hand_checked():
  # L = 108 / 255, S = 1: p2 = 2 L = 0.84706, p1 = 0; H = 10 (20 deg): sector 0, f = 1/3 ->
  # r = p2 = 216 / 255, g = p2 / 3 = 72 / 255, b = 0.
  np.testing.assert_array_equal(transforms.hls_to_rgb(_px(10, 108, 255))[0, 0], (216, 72, 0))
  # L = 128 / 255 > 0.5: p2 = 1, p1 = 2 L - 1 = 1 / 255. H = 180 is H = 0 again (red).
  np.testing.assert_array_equal(transforms.hls_to_rgb(_px(0, 128, 255))[0, 0], (255, 1, 1))
  np.testing.assert_array_equal(transforms.hls_to_rgb(_px(180, 128, 255))[0, 0], (255, 1, 1))
  np.testing.assert_array_equal(transforms.hls_to_rgb(_px(77, 100, 0))[0, 0], (100, 100, 100))


def test_hls_conversions_match_colorsys():
  import colorsys  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (3000, 3), dtype=np.uint8)
  got = transforms.rgb_to_hls(rgb).astype(np.int64)
  ref = np.array([colorsys.rgb_to_hls(*(c / 255.0)) for c in rgb]) * (180, 255, 255)
  d = got - ref
  d[:, 0] = (d[:, 0] + 90) % 180 - 90  # hue is circular: 179.6 rounds to 180 == 0
  assert np.abs(d).max() <= 0.5 + 1e-6  # rounding only (float32 here, float64 there)
  hls = np.stack([rng.integers(0, 180, 3000), rng.integers(0, 256, 3000),
                  rng.integers(0, 256, 3000)], -1).astype(np.uint8)
  got = transforms.hls_to_rgb(hls).astype(np.float64)
  ref = np.array([colorsys.hls_to_rgb(h / 180, l / 255, s / 255) for h, l, s in hls]) * 255
  assert np.abs(got - ref).max() <= 0.5 + 1e-4


@needs_cv2
def test_hls_conversions_match_opencv():
  rng = np.random.default_rng(1)
  hls = np.stack([rng.integers(0, 256, 200_000), rng.integers(0, 256, 200_000),
                  rng.integers(0, 256, 200_000)], -1).astype(np.uint8).reshape(400, 500, 3)
  np.testing.assert_array_equal(transforms.hls_to_rgb(hls), cv2.cvtColor(hls, cv2.COLOR_HLS2RGB))
  rgb = rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)
  d = np.abs(transforms.rgb_to_hls(rgb).astype(int) - cv2.cvtColor(rgb, cv2.COLOR_RGB2HLS))
  # OpenCV >= 4 fuses a multiply-add in its SIMD hue: one level off for ~0.03% of colours.
  assert d.max() <= 1 and (d.max(-1) > 0).mean() < 1e-3


def test_hls_jitter_hand_checked():
  red, magenta = _px(255, 0, 0), _px(255, 0, 128)  # HLS (0, 128, 255) and (165, 128, 255)
  np.testing.assert_array_equal(transforms.hls_jitter(red, [10.0, -20.0, 0.0])[0, 0], (216, 72, 0))
  # Hue saturates at 180 (red), it does not wrap: 165 + 30 -> 180, not 15 (orange).
  np.testing.assert_array_equal(transforms.hls_jitter(magenta, [30.0, 0.0, 0.0])[0, 0], (255, 1, 1))
  np.testing.assert_array_equal(transforms.hls_jitter(red, [-10.0, 0.0, 0.0])[0, 0], (255, 1, 1))
  grey = _px(100, 100, 100)
  # Back to uint8 by truncation: 100.9 -> 100, 99.5 -> 99 (rounding would give 101 and 100).
  np.testing.assert_array_equal(transforms.hls_jitter(grey, [0.0, 0.9, 0.0])[0, 0], (100, 100, 100))
  np.testing.assert_array_equal(transforms.hls_jitter(grey, [0.0, -0.5, 0.0])[0, 0], (99, 99, 99))
  # L and S are clipped to [0, 255].
  np.testing.assert_array_equal(transforms.hls_jitter(_px(250, 250, 250), [0, 50, 0])[0, 0], (255,) * 3)
  np.testing.assert_array_equal(transforms.hls_jitter(_px(20, 20, 20), [0, -50, 0])[0, 0], (0, 0, 0))
  # A grey gains saturation at its hue 0: S = 40 at L = 100 -> p2 = l (1 + s), p1 = 2 l - p2.
  l, s = 100 / 255, 40 / 255
  expected = np.rint(np.array([l * (1 + s), 2 * l - l * (1 + s), 2 * l - l * (1 + s)]) * 255)
  np.testing.assert_array_equal(transforms.hls_jitter(grey, [0, 0, 40])[0, 0], expected)


def test_hls_jitter_takes_one_offset_per_frame():
  frames = np.stack([np.full((2, 3, 3), (255, 0, 0), np.uint8),
                     np.full((2, 3, 3), (100, 100, 100), np.uint8)])
  out = transforms.hls_jitter(frames, np.array([[10.0, -20.0, 0.0], [0.0, -0.5, 0.0]]))
  assert out.shape == frames.shape and out.dtype == np.uint8
  assert (out[0] == (216, 72, 0)).all() and (out[1] == (99, 99, 99)).all()
  with pytest.raises(ValueError, match="offsets"):
    transforms.hls_jitter(frames, np.zeros((3, 3)))
  with pytest.raises(ValueError, match="uint8"):
    transforms.hls_jitter(frames.astype(np.float32), np.zeros(3))


@needs_cv2
def test_hls_jitter_matches_coviar_color_aug_with_opencv():
  def color_aug(bgr, offsets):  # CoViAR transforms.color_aug with given offsets, on BGR
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2HLS).astype(float)
    for c, top in enumerate((180, 255, 255)):
      img[..., c] = np.minimum(img[..., c] + offsets[c], top)
    img = np.maximum(img, 0)
    return cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_HLS2BGR)

  rng = np.random.default_rng(2)
  diffs = []
  for _ in range(10):
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    off = rng.uniform(-1, 1, 3) * (36, 50, 50)
    ref = color_aug(np.ascontiguousarray(rgb[..., ::-1]), off)[..., ::-1]
    diffs.append(np.abs(transforms.hls_jitter(rgb, off).astype(int) - ref).max(-1))
  d = np.stack(diffs)
  # Exact but where OpenCV >= 4's fused multiply-add moves the hue by one level (see above).
  assert (d > 0).mean() < 2e-3 and d.max() <= 9


def test_sample_hls_offsets_uniform_within_the_coviar_bounds():
  off = transforms.sample_hls_offsets(np.random.default_rng(3), 40_000)
  bounds = np.array([36.0, 50.0, 50.0])
  assert off.shape == (40_000, 3) and off.dtype == np.float64
  assert (off >= -bounds).all() and (off < bounds).all()
  # Uniform on [-b, b): mean 0 (standard error b / sqrt(3 n)), variance b^2 / 3, and the extremes
  # near the bounds; the three channels independent.
  se = bounds / np.sqrt(3 * 40_000)
  assert (np.abs(off.mean(0)) < 4 * se).all()
  np.testing.assert_allclose(off.var(0), bounds ** 2 / 3, rtol=0.03)
  assert (off.min(0) < -0.99 * bounds).all() and (off.max(0) > 0.99 * bounds).all()
  assert np.abs(np.corrcoef(off.T) - np.eye(3)).max() < 0.03
  # CoViAR's (random() * 2 - 1) * bound on a seeded stream of uniforms.
  np.testing.assert_allclose(transforms.sample_hls_offsets(np.random.default_rng(5), 2),
                             (np.random.default_rng(5).random((2, 3)) * 2 - 1) * bounds)


# -- Fused crop / resize / flip and float32 normalisation (the pipeline's fast path) ---------------


def _reference_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """The resize arithmetic before the fast path, written plainly: float32, rows then columns,
  ``y[lo] * (1 - f) + y[hi] * f`` with OpenCV's half-pixel taps."""
  def taps(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), (src - lo).astype(np.float32)
  y = x.astype(np.float32)
  lo, hi, f = taps(x.shape[-3], size[0])
  f = f[:, None, None]
  y = y[..., lo, :, :] * (1 - f) + y[..., hi, :, :] * f
  lo, hi, f = taps(x.shape[-2], size[1])
  f = f[:, None]
  return y[..., lo, :] * (1 - f) + y[..., hi, :] * f


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_resized_crop_is_bit_identical_to_crop_resize_flip(dtype):
  rng = np.random.default_rng(7)
  x = rng.integers(-300 if dtype != np.uint8 else 0, 256, (3, 41, 57, 3)).astype(dtype)
  for box, size, flip in [((0, 0, 41, 57), (20, 30), False), ((3, 5, 30, 40), (64, 50), True),
                          ((10, 2, 24, 24), (24, 24), True), ((1, 1, 17, 33), (9, 40), True)]:
    top, left, h, w = box
    window = x[:, top:top + h, left:left + w]
    expected = (window.astype(np.float32) if (h, w) == size
                else _reference_resize(window, size))
    if flip:
      expected = expected[..., ::-1, :]
    got = transforms.resized_crop(x, size, box, flip=flip)
    assert got.dtype == np.float32 and got.shape == (3,) + size + (3,)
    np.testing.assert_array_equal(got, expected)
    # Segments as a list of frames (not stacked) give the same.
    np.testing.assert_array_equal(transforms.resized_crop(list(x), size, box, flip=flip), got)
  # resize of uint8 is the rounded value.
  if dtype == np.uint8:
    ref = np.clip(np.rint(_reference_resize(x, (30, 20))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(transforms.resize(x, (30, 20)), ref)
    y = transforms.resized_crop(x, (30, 20))
    np.testing.assert_array_equal(transforms.round_uint8(y), ref)


def test_resized_crop_rejects_a_window_outside_the_frames():
  x = np.zeros((2, 10, 12, 3), np.uint8)
  with pytest.raises(ValueError, match="exceeds"):
    transforms.resized_crop(x, 8, (4, 0, 8, 8))
  with pytest.raises(ValueError, match="one shape"):
    transforms.resized_crop([x[0], x[1, :5]], 8)


def test_float32_normalisation_is_within_1e6_of_the_float64_formula():
  # Every uint8 value per channel, and residuals over and beyond the clipped range.
  rgb = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2).reshape(16, 16, 3)
  ref = (rgb / 255.0 - np.array(transforms.IMAGENET_MEAN)) / np.array(transforms.IMAGENET_STD)
  np.testing.assert_allclose(transforms.normalize_rgb(rgb), ref, rtol=0, atol=1e-6)
  res = np.repeat(np.arange(-400, 400, dtype=np.int32)[:, None], 3, axis=1).reshape(20, 40, 3)
  ref = ((np.clip(res + 128.0, 0, 255) / 255 - 0.5) / np.array(transforms.RESIDUAL_STD_RGB))
  np.testing.assert_allclose(transforms.normalize_residual(res), ref, rtol=0, atol=1e-6)
  frac = np.random.default_rng(0).uniform(-200, 200, (2, 8, 8, 3)).astype(np.float32)
  ref = ((np.clip(frac + 128.0, 0, 255) / 255 - 0.5) / np.array(transforms.RESIDUAL_STD_RGB))
  np.testing.assert_allclose(transforms.normalize_residual(frac), ref, rtol=0, atol=1e-6)
  # In place (out=x) and on a non-contiguous view give the same values.
  y = rgb.astype(np.float32)
  assert transforms.normalize_rgb(y, out=y) is not None
  np.testing.assert_array_equal(y, transforms.normalize_rgb(rgb))
  view = rgb[:, ::2]
  np.testing.assert_array_equal(transforms.normalize_rgb(view),
                                transforms.normalize_rgb(rgb)[:, ::2])
  # MV: still exact (float64 truncation), in place too.
  mv = np.random.default_rng(1).uniform(-30, 30, (4, 5, 2)).astype(np.float32)
  ref = (np.clip(np.trunc(mv.astype(np.float64) * 6.375) + 128, 0, 255) / 255 - 0.5)
  np.testing.assert_array_equal(transforms.normalize_mv(mv), ref.astype(np.float32))
  transforms.normalize_mv(mv, out=mv)
  np.testing.assert_array_equal(mv, ref.astype(np.float32))

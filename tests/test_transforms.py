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

"""Tests of kd_jax.data.flow: known motion, sign conventions, dense_flow storage, normalisation."""

import sys
import types

import numpy as np
import pytest

from kd_jax.data import flow
from kd_jax.errors import UserError

H, W = 64, 80


def _grey(frames):
  # ITU-R 601 luma, written out so the reference does not go through OpenCV.
  return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _bilinear(img, xs, ys):
  """img sampled at float coordinates (edge-clamped), a NumPy reference for backward warping."""
  h, w = img.shape
  xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
  x0, y0 = np.minimum(np.floor(xs).astype(int), w - 2), np.minimum(np.floor(ys).astype(int), h - 2)
  fx, fy = xs - x0, ys - y0
  top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
  bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


# Both signs on each axis, subpixel and several-pixel speeds, diagonal and axis-aligned.
VELOCITIES = [(0.5, 0.0), (-0.5, 0.0), (0.0, 0.75), (0.0, -0.75), (1.5, -1.0), (-2.5, 2.0),
              (3.0, 0.25)]


@pytest.mark.parametrize("velocity", VELOCITIES)
def test_tvl1_recovers_panning_motion(velocity):
  frames = flow.panning_scene(3, H, W, velocity, seed=1)
  f = flow.optical_flow(frames)
  assert f.shape == (2, H, W, 2) and f.dtype == np.float32
  for c, v in enumerate(velocity):
    med = np.median(f[..., c])
    assert abs(med - v) < 0.5, (c, med, v)  # issue 18's criterion
    if v != 0:
      assert np.sign(med) == np.sign(v), (c, med, v)  # x right / y down, frame t -> t + 1
  # Pixel-wise too, away from the borders where new content enters.
  m = 8
  err = np.abs(f[:, m:-m, m:-m] - np.asarray(velocity, np.float32))
  assert np.median(err) < 0.1, np.median(err)


def test_flow_warps_next_frame_onto_current():
  """The convention checked without the generator: frame_t(x) ~ frame_t+1(x + flow)."""
  frames = flow.panning_scene(2, H, W, (1.25, -0.75), seed=3)
  f = flow.optical_flow(frames)[0]
  g0, g1 = _grey(frames[0]), _grey(frames[1])
  y, x = np.mgrid[0:H, 0:W].astype(np.float64)
  warped = _bilinear(g1, x + f[..., 0], y + f[..., 1])
  wrong_sign = _bilinear(g1, x - f[..., 0], y - f[..., 1])
  inner = np.s_[8:-8, 8:-8]
  err = np.abs(warped - g0)[inner].mean()
  assert err < 0.1 * np.abs(g1 - g0)[inner].mean(), err
  assert err < 0.1 * np.abs(wrong_sign - g0)[inner].mean(), err


def test_frames_are_read_as_rgb():
  # Red pans right, blue pans left: 601 luma weighs red 0.299 and blue 0.114, so the flow follows
  # red for RGB input; reading the frames as BGR (a swapped conversion) would follow blue.
  red = flow.panning_scene(3, H, W, (1.0, 0.0), seed=6)[..., 0]
  blue = flow.panning_scene(3, H, W, (-1.0, 0.0), seed=7)[..., 2]
  frames = np.stack([red, np.full_like(red, 128), blue], axis=-1)
  assert np.median(flow.optical_flow(frames)[..., 0]) > 0.5
  assert np.median(flow.optical_flow(frames[..., ::-1])[..., 0]) < -0.5


def test_farneback_recovers_panning_motion():
  for velocity in [(1.0, -0.5), (-0.75, 1.5)]:
    f = flow.optical_flow(flow.panning_scene(3, H, W, velocity, seed=2), method="farneback")
    assert f.shape == (2, H, W, 2) and f.dtype == np.float32
    np.testing.assert_allclose(np.median(f, axis=(0, 1, 2)), velocity, atol=0.5)


def test_options_reach_opencv():
  frames = flow.panning_scene(2, H, W, (2.5, 0.0), seed=4)
  default = flow.optical_flow(frames)
  # One scale, one warp, one iteration: far from converged on a 2.5 px motion.
  crude = flow.optical_flow(frames, nscales=1, warps=1, inner_iterations=1, outer_iterations=1)
  assert abs(np.median(default[..., 0]) - 2.5) < 0.1
  assert abs(np.median(crude[..., 0]) - 2.5) > 0.5
  assert set(flow.DENSE_FLOW_TVL1) == set(flow._TVL1_SETTERS)  # pylint: disable=protected-access


def test_panning_scene_moves_by_whole_pixels_exactly():
  frames = flow.panning_scene(3, 20, 30, (2, -1), seed=5)
  assert frames.shape == (3, 20, 30, 3) and frames.dtype == np.uint8
  # Frame t+1 at (y, x) shows the scene point that frame t shows at (y + 1, x - 2).
  np.testing.assert_array_equal(frames[1][:-1, 2:], frames[0][1:, :-2])
  np.testing.assert_array_equal(frames[2][:-1, 2:], frames[1][1:, :-2])
  assert 30 < frames.std() < 50  # textured, not flat or saturated
  # Not periodic along the motion: no other shift of a row matches it.
  row = frames[0, 10, :, 0].astype(float)
  assert all(np.abs(row[s:] - row[:-s]).mean() > 5 for s in range(1, 15))


# -- Storage ------------------------------------------------------------------------------------


def _cast_reference(v, lower, higher):
  """dense_flow's CAST macro, scalar by scalar (Python's round is half to even, as cvRound)."""
  if v > higher:
    return 255
  if v < lower:
    return 0
  return round(255 * (v - lower) / (higher - lower))


def test_quantize_hand_values():
  v = np.array([-20.0, -25.0, 0.0, 10.0, 20.0, 30.0, -19.9, 20 / 255])
  # 0 -> 127.5 rounds half to even -> 128; 10 -> 191.25; -19.9 -> 0.6375; 20/255 -> 128.
  np.testing.assert_array_equal(flow.quantize_flow(v), [0, 0, 128, 191, 255, 255, 1, 128])
  assert flow.quantize_flow(v).dtype == np.uint8
  np.testing.assert_array_equal(flow.quantize_flow(np.array([5.0]), bound=10.0), [191])


def test_quantize_matches_dense_flow_cast():
  v = np.random.default_rng(0).normal(0, 12, size=500).astype(np.float32)
  ref = [_cast_reference(float(x), -20.0, 20.0) for x in v]
  np.testing.assert_array_equal(flow.quantize_flow(v), ref)


def test_quantize_round_trip_and_clipping():
  rng = np.random.default_rng(1)
  for bound in (20.0, 7.5):
    v = rng.uniform(-bound, bound, size=(4, 9, 11, 2)).astype(np.float32)
    back = flow.dequantize_flow(flow.quantize_flow(v, bound), bound)
    assert back.dtype == np.float32 and back.shape == v.shape
    step = 2 * bound / 255
    assert np.abs(back - v).max() <= step / 2 + 1e-5  # half a quantisation step
    beyond = np.array([bound + 0.5, 3 * bound, -bound - 0.5, -1e6], np.float32)
    np.testing.assert_allclose(flow.dequantize_flow(flow.quantize_flow(beyond, bound), bound),
                               [bound, bound, -bound, -bound], atol=1e-5)
  np.testing.assert_allclose(flow.dequantize_flow(np.array([0, 128, 255], np.uint8)),
                             [-20.0, 20 / 255, 20.0], atol=1e-6)


def test_normalize_flow_hand_values():
  q = np.array([0, 128, 255], np.uint8)
  # (q / 255 - 0.5) / 0.226
  expected = [-0.5 / 0.226, (128 / 255 - 0.5) / 0.226, 0.5 / 0.226]
  out = flow.normalize_flow(q)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [-2.2123894, 0.0086760, 2.2123894], atol=1e-6)
  np.testing.assert_allclose(out, expected, atol=1e-6)  # float32 arithmetic, as the official


def test_bad_inputs_raise_one_line():
  frames = flow.panning_scene(2, 16, 16, (0.5, 0.5))
  cases = [
      (lambda: flow.optical_flow(frames.astype(np.float32)), "uint8 RGB"),
      (lambda: flow.optical_flow(frames[..., :2]), "uint8 RGB"),
      (lambda: flow.optical_flow(frames[:1]), "at least 2 frames"),
      (lambda: flow.optical_flow(frames, method="brox"), "tvl1, farneback"),
      (lambda: flow.optical_flow(frames, lambda_=0.1, lamda=0.1), "unknown option(s) lamda"),
      (lambda: flow.optical_flow(frames, method="farneback", tau=0.1), "unknown option(s) tau"),
      (lambda: flow.quantize_flow(np.array([np.nan])), "NaN"),
      (lambda: flow.quantize_flow(np.zeros(2), bound=0), "positive"),
      (lambda: flow.dequantize_flow(np.zeros(2)), "uint8"),
      (lambda: flow.normalize_flow(np.zeros(2)), "uint8"),
  ]
  for call, text in cases:
    with pytest.raises(ValueError) as e:
      call()
    assert text in str(e.value) and "\n" not in str(e.value), str(e.value)


# -- Missing OpenCV -----------------------------------------------------------------------------


@pytest.mark.parametrize("fake_cv2", [None, types.SimpleNamespace()], ids=["absent", "no_contrib"])
def test_missing_opencv_names_the_extra(monkeypatch, fake_cv2):
  # None in sys.modules makes `import cv2` raise ImportError; a module without `optflow` is what
  # opencv-python (no contrib) looks like.
  monkeypatch.setitem(sys.modules, "cv2", fake_cv2)
  with pytest.raises(flow.FlowUnavailableError) as e:
    flow.optical_flow(flow.panning_scene(2, 16, 16, (0.5, 0.0)))
  msg = str(e.value)
  assert "pip install 'kd-jax[flow]'" in msg and "\n" not in msg, msg
  assert isinstance(e.value, ImportError) and isinstance(e.value, UserError)
  # Storage and normalisation are NumPy only and keep working.
  assert flow.quantize_flow(np.zeros(1))[0] == 128

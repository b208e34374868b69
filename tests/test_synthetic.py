"""Tests of the synthetic action-video generator: determinism, class structure, stream signals."""

import numpy as np
import pytest

from kd_jax.data import codec
from kd_jax.data import synthetic

# Small clips of one GOP; no label noise or distractor so that a statistic sees one object.
CLEAN = synthetic.SyntheticSpec(num_classes=12, num_frames=12, height=64, width=96,
                                label_noise=0.0, distractor_prob=0.0)


def _video(label, index, spec=CLEAN):
  return codec.CompressedVideo(codec.encode_frames(synthetic.generate_clip(label, index, spec=spec)))


def _saturation(rgb):
  f = rgb.astype(np.float64) / 255
  hi, lo = f.max(-1), f.min(-1)
  return (hi - lo) / np.maximum(hi, 1e-6)


def test_shape_dtype_and_determinism():
  spec = synthetic.SyntheticSpec(num_classes=4, num_frames=10, height=48, width=64)
  a = synthetic.generate_clip(3, 7, spec=spec, seed=5)
  assert a.shape == (10, 48, 64, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, synthetic.generate_clip(3, 7, spec=spec, seed=5))
  assert not np.array_equal(a, synthetic.generate_clip(3, 7, spec=spec, seed=6))
  assert not np.array_equal(a, synthetic.generate_clip(3, 8, spec=spec, seed=5))
  assert not np.array_equal(a, synthetic.generate_clip(3, 7, spec=spec, seed=5, split="test"))
  # Frames change over time (something moves).
  assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_classes"):
    synthetic.SyntheticSpec(num_classes=1)
  with pytest.raises(ValueError, match="outside"):
    synthetic.generate_clip(4, 0, spec=synthetic.SyntheticSpec(num_classes=4))


def test_each_stream_confuses_some_class_pairs():
  attrs = [synthetic.class_attributes(c) for c in range(32)]
  motion = [(a.path, a.direction) for a in attrs]
  look = [(a.pattern, round(a.hue - 0.06 * (c % 2), 3) % 1.0) for c, a in enumerate(attrs)]
  for k in range(16):  # 2k and 2k+1 move alike (only 25 % apart in speed), look different
    assert motion[2 * k] == motion[2 * k + 1]
    assert attrs[2 * k + 1].speed == pytest.approx(1.25 * attrs[2 * k].speed)
    assert attrs[2 * k].pattern != attrs[2 * k + 1].pattern or look[2 * k] != look[2 * k + 1]
  for k in range(1, 16):  # 2k-1 and 2k look alike (hue 0.06 apart), move differently
    assert look[2 * k - 1] == look[2 * k]
    assert motion[2 * k - 1] != motion[2 * k]
  assert attrs[0].dynamics == attrs[1].dynamics == attrs[2].dynamics != attrs[3].dynamics
  # Yet every class is a distinct combination, with a distinct name.
  assert len({(a.path, a.direction, a.speed, a.hue, a.pattern, a.dynamics) for a in attrs}) == 32
  assert len(set(synthetic.class_names(32))) == 32


def test_motion_direction_shows_in_motion_vectors():
  def mean_dx(label):  # mean x of the accumulated MVs that moved, at the last P-frame of a GOP
    values = []
    for i in range(4):
      mv = _video(label, i).motion_vectors(11)[..., 0]
      values.append(mv[np.abs(mv) >= 2].mean())
    return np.mean(values)

  east, east_fast, west = mean_dx(0), mean_dx(1), mean_dx(2)
  assert synthetic.class_attributes(0).name.startswith("linear-e")
  assert synthetic.class_attributes(2).name.startswith("linear-w")
  assert east > 2 and east_fast > 2 and west < -2


def test_appearance_shows_in_iframes():
  def object_hue(label, i):  # circular mean hue of the saturated (object) pixels of the I-frame
    rgb = _video(label, i).iframe(0)
    f = rgb[_saturation(rgb) > 0.6].astype(np.float64)
    angle = np.arctan2(np.sqrt(3) * (f[:, 1] - f[:, 2]), 2 * f[:, 0] - f[:, 1] - f[:, 2])
    return np.angle(np.exp(1j * angle).mean()) / (2 * np.pi) % 1.0

  red = [object_hue(0, i) for i in range(3)]
  green = [object_hue(1, i) for i in range(3)]
  assert all(min(h, 1 - h) < 0.06 for h in red)  # class 0 is red
  assert all(0.3 < h < 0.45 for h in green)  # class 1 is green (hue 0.39)


def test_texture_change_shows_in_residuals():
  def object_residual(label, i):  # mean |residual| on the object's pixels at GOP position 6
    video = _video(label, i)
    mask = _saturation(video.frames([6])[0]) > 0.6
    return np.abs(video.residual(6))[mask].mean()

  assert synthetic.class_attributes(0).dynamics == "static"
  assert synthetic.class_attributes(9).dynamics == "sparkle"
  static = np.mean([object_residual(0, i) for i in range(4)])
  sparkle = np.mean([object_residual(9, i) for i in range(4)])
  assert sparkle > 1.5 * static

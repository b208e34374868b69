"""GenKD's two-stream fusion and flow-stream evaluation, against NumPy written from genkd.md 7.2."""

import numpy as np
import pytest

from kd_jax.errors import UserError
from kd_jax.methods import _genkd_flow


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def test_two_stream_scores_match_the_official_loop():
  rng = np.random.default_rng(0)
  rgb, flow = rng.normal(size=(2, 2, 7, 5)).astype(np.float32) * 3
  want = np.zeros((2, 5))
  for b in range(2):  # test_Top_I3D_att_fusion.py: per time step, then over time, then again
    acc = np.zeros(5)
    for t in range(7):
      acc += _softmax(rgb[b, t] + flow[b, t])
    want[b] = _softmax(acc)
  got = np.asarray(_genkd_flow.two_stream_scores(rgb, flow))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_two_stream_scores_reject_mismatched_clips():
  with pytest.raises(ValueError, match="same length"):
    _genkd_flow.two_stream_scores(np.zeros((1, 7, 3)), np.zeros((1, 6, 3)))


def test_accuracy_by_hand():
  scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
  got = _genkd_flow.accuracy(scores, np.array([1, 1, 0]))
  assert got["top1"] == pytest.approx(1 / 3)
  assert got["top5"] == pytest.approx(1.0)  # 3 classes: every label is within the top 5


def test_fuse_matches_videos_by_id_and_fusion_can_beat_both_streams():
  # Two classes, one time step. Video a: RGB right by a little, flow wrong by less -> fused right.
  # Video b: RGB wrong by a little, flow right by more -> fused right. Each stream alone: 1 of 2.
  rgb = {"ids": ["a", "b", "only_rgb"], "labels": np.array([0, 1, 0]),
         "logits": np.array([[[1.0, 0.0]], [[0.5, 0.0]], [[9.0, 0.0]]])}
  flow = {"ids": ["b", "a"], "labels": np.array([1, 0]),
          "logits": np.array([[[0.0, 2.0]], [[0.0, 0.5]]])}
  out = _genkd_flow.fuse(rgb, flow, "double_softmax")
  assert out["videos"] == 2 and out["left_out"] == 1
  assert out["rgb"]["top1"] == pytest.approx(0.5)
  assert out["flow"]["top1"] == pytest.approx(0.5)
  assert out["two_stream"]["top1"] == pytest.approx(1.0)


def test_fuse_refuses_disjoint_or_disagreeing_sets():
  one = {"ids": ["a"], "labels": np.array([0]), "logits": np.zeros((1, 1, 2))}
  other = {"ids": ["z"], "labels": np.array([0]), "logits": np.zeros((1, 1, 2))}
  with pytest.raises(UserError, match="share no video"):
    _genkd_flow.fuse(one, other, "double_softmax")
  relabelled = {"ids": ["a"], "labels": np.array([1]), "logits": np.zeros((1, 1, 2))}
  with pytest.raises(UserError, match="different labels"):
    _genkd_flow.fuse(one, relabelled, "double_softmax")

"""Tests of kd_jax.data.sampling against hand-computed indices."""

import numpy as np
import pytest

from kd_jax.data import sampling

GOPS = np.array([0, 12, 24])


def test_segment_centres_hand_checked():
  # n = 30, S = 3: seg_size = 29 / 3; centres round(4.83), round(14.5), round(24.17). NumPy rounds
  # half to even, as CoViAR does: 14.5 -> 14.
  np.testing.assert_array_equal(sampling.segment_indices(30, 3, train=False), [5, 14, 24])
  # MV / residual: 29 frames after frame 0, seg_size = 28 / 3 -> 5, 14, 23, then + 1.
  np.testing.assert_array_equal(sampling.segment_indices(30, 3, train=False, skip_first=True),
                                [6, 15, 24])
  np.testing.assert_array_equal(sampling.segment_indices(1, 4, train=False), [0, 0, 0, 0])


def test_coviar_modalities_hand_checked():
  iframes = sampling.coviar_indices(30, GOPS, 3, modality="iframe", train=False)
  np.testing.assert_array_equal(iframes, [0, 12, 24])
  # Frame 24 is an I-frame: CoViAR reads (gop 1, pos 11) = frame 23 instead.
  mvs = sampling.coviar_indices(30, GOPS, 3, modality="mv", train=False)
  np.testing.assert_array_equal(mvs, [6, 15, 23])
  # Irregular GOPs: the real keyframes decide, not idx // 12.
  irregular = np.array([0, 7, 9, 21])
  np.testing.assert_array_equal(sampling.iframe_of([8, 9, 20, 21, 29], irregular),
                                [7, 9, 9, 21, 21])
  np.testing.assert_array_equal(sampling.pframe_of([0, 7, 8, 9, 21], irregular), [0, 6, 8, 8, 20])
  with pytest.raises(ValueError, match="modality"):
    sampling.coviar_indices(30, GOPS, 3, modality="flow", train=False)


def test_train_segments_cover_exact_ranges():
  # n = 30, S = 3: bounds round(0), round(9.67), round(19.33), round(29) -> [0,10) [10,19) [19,29).
  rng = np.random.default_rng(0)
  draws = np.stack([sampling.segment_indices(30, 3, train=True, rng=rng) for _ in range(600)])
  for s, (lo, hi) in enumerate([(0, 9), (10, 18), (19, 28)]):
    assert draws[:, s].min() == lo and draws[:, s].max() == hi
  # A segment narrower than one frame still samples its begin.
  narrow = sampling.segment_indices(3, 8, train=True, rng=rng)
  assert narrow.min() >= 0 and narrow.max() <= 2


def test_sampling_is_deterministic_for_a_seed():
  def draw(seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([
        sampling.segment_indices(300, 8, train=True, rng=rng),
        sampling.coviar_indices(300, np.arange(0, 300, 12), 8, modality="mv", train=True, rng=rng),
        *sampling.fused_indices(300, np.arange(0, 300, 12), 8, train=True, rng=rng),
        sampling.dense_clip_indices(300, 64, train=True, rng=rng),
    ])
  np.testing.assert_array_equal(draw(3), draw(3))
  assert not np.array_equal(draw(3), draw(4))
  with pytest.raises(ValueError, match="rng"):
    sampling.segment_indices(30, 3, train=True)


def test_fused_test_positions_hand_checked():
  # n = 28, S = 4: seg_size = 6.75, centres 3, 10, 17, 24 -> GOPs starting 0, 0, 12, 24. P position
  # 5, except in the last GOP (frames 24..27), whose last P position is 3.
  iframes, pframes = sampling.fused_indices(28, GOPS, 4, train=False)
  np.testing.assert_array_equal(iframes, [0, 0, 12, 24])
  np.testing.assert_array_equal(pframes, [5, 5, 17, 27])


def test_fused_train_positions():
  rng = np.random.default_rng(1)
  gops = np.array([0, 12, 13, 20])  # GOP lengths 12, 1, 7, 5 (n = 25).
  seen = {}
  for _ in range(400):
    iframes, pframes = sampling.fused_indices(25, gops, 5, train=True, rng=rng)
    for i, p in zip(iframes, pframes):
      seen.setdefault(int(i), set()).add(int(p) - int(i))
  assert seen[0] == set(range(1, 12))
  assert seen.get(12, {0}) == {0}  # One-frame GOP: no P-frame, its I-frame (zero MV / residual).
  assert seen[13] == set(range(1, 7))
  assert seen[20] == set(range(1, 5))


def test_dense_clip_loop_padding_hand_checked():
  idx = sampling.dense_clip_indices(20, 64, train=False)
  expected = list(range(20)) * 3 + [0, 1, 2, 3]
  np.testing.assert_array_equal(idx, expected)
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(sampling.dense_clip_indices(20, 64, train=True, rng=rng), expected)
  np.testing.assert_array_equal(sampling.dense_clip_indices(5, 8, train=False, stride=2),
                                [0, 2, 4, 1, 3, 0, 2, 4])


def test_dense_clip_offsets():
  # Centred: (100 - 64) // 2 = 18.
  np.testing.assert_array_equal(sampling.dense_clip_indices(100, 64, train=False),
                                np.arange(18, 82))
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(300):
    idx = sampling.dense_clip_indices(70, 64, train=True, rng=rng)
    np.testing.assert_array_equal(np.diff(idx), 1)
    starts.add(int(idx[0]))
  assert starts == set(range(7))

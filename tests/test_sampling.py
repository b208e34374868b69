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


# -- Video order in training ------------------------------------------------------------------------


def test_train_order_permutation_epochs_are_seeded_permutations():
  order = sampling.TrainOrder(10, 7, order="permutation", epoch_size=8)
  for e in range(3):
    got = [order[e * 8 + i] for i in range(8)]
    # Reference: NumPy's permutation of the epoch's generator, cut to the epoch size.
    assert got == np.random.default_rng([7, e]).permutation(10)[:8].tolist()
    assert len(set(got)) == 8


def test_train_order_with_replacement_draws_uniform_with_duplicates():
  n, epochs = 10, 3000
  order = sampling.TrainOrder(n, 11, order="with_replacement")
  assert order.epoch_size == n  # CoViAR: len(list) draws an epoch
  draws = np.array([order[p] for p in range(n * epochs)]).reshape(epochs, n)
  np.testing.assert_array_equal(draws[2], np.random.default_rng([11, 2]).integers(0, n, n))
  # Uniform: each index n * epochs / n = 3000 times; chi-square with 9 degrees of freedom has
  # mean 9 and sd sqrt(18); 40 is far in its tail (p < 1e-5).
  counts = np.bincount(draws.ravel(), minlength=n)
  chi2 = ((counts - epochs) ** 2 / epochs).sum()
  assert chi2 < 40
  # Ten draws of ten are all distinct with probability 10! / 10^10 = 3.6e-4: nearly every epoch
  # repeats a video. Distinct videos an epoch: n (1 - (1 - 1/n)^n) = 6.513 on average.
  distinct = np.array([len(set(row)) for row in draws])
  assert (distinct < n).mean() > 0.99
  assert abs(distinct.mean() - n * (1 - (1 - 1 / n) ** n)) < 0.08  # standard error ~0.016


def test_train_order_depends_on_the_position_only():
  a = sampling.TrainOrder(7, 3, order="with_replacement")
  seq = [a[p] for p in range(50)]
  b = sampling.TrainOrder(7, 3, order="with_replacement")  # fresh: no state, any access order
  assert [b[p] for p in reversed(range(50))][::-1] == seq
  assert [sampling.TrainOrder(7, 4, order="with_replacement")[p] for p in range(50)] != seq
  finite = sampling.TrainOrder(7, 3, order="with_replacement", num_epochs=2)
  assert len(finite) == 14 and [finite[p] for p in range(14)] == seq[:14]
  with pytest.raises(IndexError):
    finite[14]  # pylint: disable=pointless-statement
  with pytest.raises(ValueError, match="order"):
    sampling.TrainOrder(7, 3, order="shuffle")
  with pytest.raises(ValueError, match="epoch_size"):
    sampling.TrainOrder(7, 3, epoch_size=8)


def test_array_batches_with_replacement_resume_and_slice_bit_identically():
  from kd_jax import train  # pylint: disable=g-import-not-at-top
  arrays = {"x": np.arange(20)}
  make = lambda **kw: train.train_batches(arrays, global_batch_size=8, seed=3,
                                          order="with_replacement", **kw)
  it = make(per_host_batch_size=8)
  first = [next(it)["x"] for _ in range(3)]
  # The stream is the documented draws: epoch e = default_rng([3, e]).integers(0, 20, 20).
  ref = np.concatenate([np.random.default_rng([3, e]).integers(0, 20, 20) for e in range(2)])
  np.testing.assert_array_equal(np.concatenate(first), ref[:24])
  state = it.get_state()
  later = [next(it)["x"] for _ in range(4)]
  restored = make(per_host_batch_size=8)
  restored.set_state(state)
  for a, b in zip(later, [next(restored)["x"] for _ in range(4)]):
    np.testing.assert_array_equal(a, b)
  halves = [make(per_host_batch_size=4, process=(p, 2)) for p in range(2)]
  for whole in first:
    parts = [next(h)["x"] for h in halves]
    np.testing.assert_array_equal(parts[0], whole[0::2])
    np.testing.assert_array_equal(parts[1], whole[1::2])
  # The default order is unchanged: per epoch a permutation cut to whole batches (20 // 8 * 8).
  perm = train.train_batches(arrays, global_batch_size=8, per_host_batch_size=8, seed=3)
  got = np.concatenate([next(perm)["x"] for _ in range(4)])
  ref = np.concatenate([np.random.default_rng([3, e]).permutation(20)[:16] for e in range(2)])
  np.testing.assert_array_equal(got, ref)
  with pytest.raises(ValueError, match="order"):
    train.train_batches(arrays, global_batch_size=8, per_host_batch_size=8, seed=3, order="x")


def test_train_order_is_safe_across_threads_and_pickles():
  import pickle  # pylint: disable=g-import-not-at-top
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  order = sampling.TrainOrder(7, seed=3, order="with_replacement")
  positions = list(range(0, 7 * 40))  # 40 epochs: the two-epoch cache evicts all the time
  want = [int(np.random.default_rng([3, p // 7]).integers(0, 7, 7)[p % 7]) for p in positions]
  with futures.ThreadPoolExecutor(8) as pool:
    got = list(pool.map(order.__getitem__, positions * 3))
  assert got == want * 3
  copy = pickle.loads(pickle.dumps(order))
  assert [copy[p] for p in positions[:20]] == want[:20]

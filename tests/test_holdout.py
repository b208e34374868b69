"""Held-out training videos for config.selection='best_val' (kd_jax.data.holdout, streams)."""

import numpy as np
import pytest

from kd_jax.data import holdout
from kd_jax.data import streams
from test_streams import _dcfg


def test_holdout_is_a_fixed_disjoint_share():
  kept, held = holdout.holdout_indices(50, 0.1)
  assert len(held) == 5 and len(kept) == 45
  assert sorted(np.concatenate([kept, held]).tolist()) == list(range(50))  # disjoint, complete
  again = holdout.holdout_indices(50, 0.1)
  np.testing.assert_array_equal(held, again[1])  # the same videos every time (every run seed)
  assert not np.array_equal(held, holdout.holdout_indices(50, 0.1, seed=1)[1])
  assert len(holdout.holdout_indices(3, 0.01)[1]) == 1  # at least one held out ...
  assert len(holdout.holdout_indices(3, 0.99)[0]) == 1  # ... and one left to train on
  with pytest.raises(ValueError, match=r"in \(0, 1\)"):
    holdout.holdout_indices(10, 1.0)
  with pytest.raises(ValueError, match="1 record"):
    holdout.holdout_indices(1, 0.5)


def test_subset_reads_the_source_at_its_indices():
  source = [{"i": i} for i in range(10)]
  train, val = holdout.split_holdout(source, 0.3)
  assert len(train) == 7 and len(val) == 3
  assert sorted([train[i]["i"] for i in range(7)] + [val[i]["i"] for i in range(3)]) == \
      list(range(10))


def test_streams_hold_videos_out_of_training(tmp_path):
  data = streams.open_streams(_dcfg(tmp_path), "rgb_clip", clip_len=4, holdout=0.25)
  assert len(data.opened.train) == 3 and len(data.val) == 1  # 4 training videos, a quarter out
  val = list(data.eval(2, split="val"))
  assert len(val) == 1 and val[0]["mask"].tolist() == [1.0, 0.0]
  held = holdout.holdout_indices(4, 0.25)[1]
  whole = streams.open_streams(_dcfg(tmp_path), "rgb_clip", clip_len=4)
  ref = next(iter(whole.eval(4, split="train")))  # the same video, read from the whole split
  np.testing.assert_array_equal(val[0]["video"][0], ref["video"][held[0]])
  with pytest.raises(ValueError, match="no held-out videos"):
    whole.eval(2, split="val")

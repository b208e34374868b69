"""kd_jax.data.streams: a method's config.data opened as training and evaluation streams."""

import numpy as np
import pytest

from kd_jax.data import sources
from kd_jax.data import streams
from kd_jax.errors import UserError

# 2 classes x (2 train + 1 test) clips of 8 frames at 16x16: about a second to generate.
SIZE = dict(num_classes=2, train_clips=2, test_clips=1, num_frames=8, height=16, width=16)


def _dcfg(data_dir, **fields):
  return sources.data_config(config="custom", data_dir=str(data_dir), auto_prepare=True,
                             prepare_workers=1, crop_size=16, resize_size=0, synthetic=SIZE,
                             **fields)


def test_train_and_eval_streams_of_a_config(tmp_path):
  data = streams.open_streams(_dcfg(tmp_path, cache_eval=True), "rgb_clip", clip_len=4)
  assert data.num_classes == 2
  assert data.description == "synthetic_actions/c2_2x1_f8_16x16: 4 train / 2 eval videos, 2 classes"
  assert data.spec.kind == "rgb_clip" and data.spec.clip_len == 4 and data.spec.crop_size == 16
  batch = next(data.train(2, seed=0))
  assert batch["video"].shape == (2, 4, 16, 16, 3) and batch["label"].shape == (2,)
  evals = list(data.eval(4))
  assert len(evals) == 1 and evals[0]["mask"].dtype == np.float32
  assert evals[0]["mask"].tolist() == [1.0, 1.0, 0.0, 0.0]  # 2 eval videos, padded to 4
  assert data.eval(4) is data.eval(4)  # cache_eval: decoded once
  train_split = list(data.eval(4, split="train"))  # the training videos, unaugmented
  assert train_split[0]["mask"].tolist() == [1.0] * 4
  other = data.spec.__class__(**{**data.spec.__dict__, "clip_len": 2})
  assert next(data.train(2, seed=0, spec=other))["video"].shape == (2, 2, 16, 16, 3)


def test_a_dataset_that_is_not_there_is_one_line(tmp_path):
  dcfg = sources.data_config(name="ucf101", config="split1", data_dir=str(tmp_path))
  with pytest.raises(UserError, match="ucf101/split1 is not prepared") as e:
    streams.open_streams(dcfg, "rgb_clip")
  assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="flip"):
    streams.open_streams(_dcfg(tmp_path, flip="sometimes"), "rgb_clip")


def test_loader_switches_reach_the_clip_spec(tmp_path):
  data = streams.open_streams(_dcfg(tmp_path, iframe_color_jitter="train_and_test",
                                    train_order="with_replacement"), "compressed", sampling="coviar")
  assert data.spec.iframe_jitter == "train_and_test" and data.spec.train_order == "with_replacement"
  base = sources.data_config()
  assert (base.iframe_color_jitter, base.train_order) == ("off", "permutation")  # today's behaviour
  # A bad value is one line, before any dataset is opened (ucf101 is not prepared here).
  dcfg = sources.data_config(name="ucf101", config="split1", data_dir=str(tmp_path),
                             train_order="random")
  with pytest.raises(UserError, match="config.data.train_order"):
    streams.open_streams(dcfg, "compressed")


def test_the_paper_configs_use_the_official_loader_switches():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).parents[1] / "configs" / "pkd_hmdb.py"
  spec = importlib.util.spec_from_file_location("pkd_hmdb_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for arg in (None, "smoke"):
    data = module.get_config(arg).data
    # CoViAR's dataset.py: jitter at train and test time, random.choice(video_list).
    assert (data.iframe_color_jitter, data.train_order) == ("train_and_test", "with_replacement")

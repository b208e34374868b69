"""TFDS builder of ``synthetic_actions``: generated action videos, no download.

Build: ``python -m kd_jax.data.prepare synthetic_actions[/CONFIG] [--data_dir D] [--workers N]``.
Configs: ``default`` (the quickstart size) and ``tiny`` (tests). Any other size:
``SyntheticActions(config=SyntheticActionsConfig(name=..., spec=SyntheticSpec(...)), data_dir=D)``.
"""

from __future__ import annotations

import dataclasses
import functools

import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data import synthetic
from kd_jax.data.builders import common


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticActionsConfig(tfds.core.BuilderConfig):
  """A size of the synthetic dataset.

  Attributes:
    spec: classes, frames, frame size and difficulty.
    train_clips: clips per class in ``train``.
    test_clips: clips per class in ``test``.
    seed: generator seed; the same seed gives the same videos.
    gop_size: encoder GOP length.
  """

  spec: synthetic.SyntheticSpec = dataclasses.field(default_factory=synthetic.SyntheticSpec)
  train_clips: int = 48
  test_clips: int = 16
  seed: int = 0
  gop_size: int = 12


def _encode_clip(job: tuple, *, spec: synthetic.SyntheticSpec, seed: int, gop_size: int):
  split, label, index = job
  key = f"{split}_{label:03d}_{index:04d}"
  frames = synthetic.generate_clip(label, index, spec=spec, split=split, seed=seed)
  data = codec.encode_frames(frames, gop_size=gop_size)
  example = {"video": data, "label": label, "video_id": key, "num_frames": len(frames)}
  return key, example, ""


class SyntheticActions(common.VideoBuilder, skip_registration=True):
  """Synthetic action videos whose classes differ in motion, appearance and texture change.

  See ``kd_jax.data.synthetic``. Each record is one clip encoded as a raw MPEG-4 Part 2 stream.
  """

  BUILDER_CONFIGS = [
      SyntheticActionsConfig(
          name="default", description="12 classes x (48 train + 16 test) clips, 32 frames, 96x128.",
          spec=synthetic.SyntheticSpec(num_classes=12, num_frames=32, height=96, width=128)),
      SyntheticActionsConfig(
          name="tiny", description="4 classes x (3 train + 2 test) clips, 24 frames, 48x64.",
          spec=synthetic.SyntheticSpec(num_classes=4, num_frames=24, height=48, width=64),
          train_clips=3, test_clips=2),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _class_names(self):
    return synthetic.class_names(self.builder_config.spec.num_classes)

  def _jobs(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    classes = range(cfg.spec.num_classes)
    return {
        "train": [("train", c, i) for c in classes for i in range(cfg.train_clips)],
        "test": [("test", c, i) for c in classes for i in range(cfg.test_clips)],
    }

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(_encode_clip, spec=cfg.spec, seed=cfg.seed, gop_size=cfg.gop_size)

"""TFDS builder of ``synthetic_detection``: generated untrimmed videos with action instances.

Build: ``python -m kd_jax.data.prepare synthetic_detection[/CONFIG] [--data_dir D]``. Configs:
``default`` (64x64), ``small`` (32x32, the detection quickstart) and ``tiny`` (tests). Any other
size: ``SyntheticDetection(config=SyntheticDetectionConfig(name=..., spec=DetectionSpec(...)),
data_dir=D)``. Records as ``thumos14``'s (``builders/_detection.py``): segments in seconds at
``spec.fps``, no ambiguous segments.
"""

from __future__ import annotations

import dataclasses
import functools

import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data import synthetic_detection as sd
from kd_jax.data.builders import _detection


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticDetectionConfig(tfds.core.BuilderConfig):
  """A size of the synthetic detection dataset.

  Attributes:
    spec: classes, frames, frame size, instance counts and lengths.
    train_videos, test_videos: videos in ``train`` and ``test``.
    seed: generator seed; the same seed gives the same videos.
    gop_size: encoder GOP length.
  """

  spec: sd.DetectionSpec = dataclasses.field(default_factory=sd.DetectionSpec)
  train_videos: int = 64
  test_videos: int = 16
  seed: int = 0
  gop_size: int = 12


def _encode_video(job: tuple, *, spec: sd.DetectionSpec, seed: int, gop_size: int):
  split, index = job
  key = f"{split}_{index:05d}"
  frames, instances = sd.generate_video(index, spec=spec, split=split, seed=seed)
  example = {
      "video": codec.encode_frames(frames, gop_size=gop_size), "video_id": key,
      "num_frames": len(frames), "fps": spec.fps,
      "segments": _detection.segment_array(i.seconds(spec.fps) for i in instances),
      "labels": [i.label for i in instances], "ambiguous": _detection.segment_array([]),
  }
  return key, example, ""


class SyntheticDetection(_detection.DetectionBuilder, skip_registration=True):
  """Synthetic untrimmed videos: background with action instances of the ``synthetic_actions``
  classes at random times (``kd_jax.data.synthetic_detection``), one MPEG-4 stream per video."""

  BUILDER_CONFIGS = [
      SyntheticDetectionConfig(
          name="default", description="4 classes, 64 train + 16 test videos of 256 frames, 64x64.",
          spec=sd.DetectionSpec(num_classes=4, num_frames=256, height=64, width=64)),
      SyntheticDetectionConfig(
          name="small", description="4 distinct classes (synthetic_actions 0, 3, 6, 9), 64 train + "
          "16 test videos of 256 frames, 32x32 (the detection quickstart).",
          spec=sd.DetectionSpec(num_classes=4, class_step=3, num_frames=256, height=32,
                                width=32)),
      SyntheticDetectionConfig(
          name="tiny", description="3 classes, 4 train + 2 test videos of 96 frames, 32x32.",
          spec=sd.DetectionSpec(num_classes=3, num_frames=96, height=32, width=32,
                                max_instances=3, min_length=8, max_length=24),
          train_videos=4, test_videos=2),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _class_names(self):
    spec = self.builder_config.spec
    return sd.class_names(spec.num_classes, spec.class_step)

  def _jobs(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    return {"train": [("train", i) for i in range(cfg.train_videos)],
            "test": [("test", i) for i in range(cfg.test_videos)]}

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(_encode_video, spec=cfg.spec, seed=cfg.seed, gop_size=cfg.gop_size)

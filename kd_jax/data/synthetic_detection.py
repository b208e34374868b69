"""Synthetic untrimmed videos for temporal action detection: a seeded, deterministic testbed.

Each video is a long clip of moving, textured background (the camera pans) in which several action
instances appear at random times, for random lengths, one at a time: during an instance the object
of one ``synthetic_actions`` class (:mod:`kd_jax.data.synthetic`: its motion, appearance and texture
change) is drawn over the background; outside every instance nothing but background is shown. The
ground truth is exact: instance ``i`` covers frames ``[start_i, end_i)`` (the object is drawn in
exactly those frames), i.e. ``[start_i / fps, end_i / fps]`` seconds, frame ``t`` covering
``[t / fps, (t + 1) / fps)``.

Instances do not overlap and are at least ``min_gap`` frames apart, so that every boundary is a
visible appearance or disappearance. The rendering reuses ``kd_jax.data.synthetic`` (background,
object sampling, painting), so a class looks the same here as in ``synthetic_actions``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kd_jax.data import synthetic

# synthetic.py's renderer, reused so that a class looks the same in both datasets.
# pylint: disable=protected-access
_background, _object, _paint, _shift = (synthetic._background, synthetic._object,
                                        synthetic._paint, synthetic._shift)
# pylint: enable=protected-access
_SPLIT_CODES = {"train": 0, "test": 1, "validation": 2}
_STREAM = 0xD37EC7  # keeps these draws apart from synthetic_actions' clip generators


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
  """Size and difficulty of a synthetic detection dataset.

  Attributes:
    num_classes: action classes: ``synthetic_actions`` classes ``0, class_step, 2 class_step,
      ...`` (the first ``num_classes`` when ``class_step`` is 1).
    class_step: stride through the ``synthetic_actions`` classes. Neighbouring classes there come
      in near pairs (same motion 25 % faster, hue 0.06 apart); a step of 3 gives classes that
      differ in motion, hue and dynamics.
    num_frames: frames per video.
    height, width: frame size in pixels (even, >= 16).
    fps: the frame rate the seconds of the ground truth refer to (THUMOS14 is sampled at 10).
    min_instances, max_instances: action instances per video (fewer when they do not fit).
    min_length, max_length: instance length in frames.
    min_gap: frames of background between two instances (and none needed at the ends).
    noise_std: per-pixel sensor noise, in 0-255 units.
    max_pan: largest camera pan speed, pixels per frame.
  """

  num_classes: int = 4
  class_step: int = 1
  num_frames: int = 256
  height: int = 64
  width: int = 64
  fps: float = 10.0
  min_instances: int = 1
  max_instances: int = 4
  min_length: int = 12
  max_length: int = 48
  min_gap: int = 4
  noise_std: float = 3.0
  max_pan: float = 0.2

  def __post_init__(self):
    if self.num_classes < 1 or self.class_step < 1:
      raise ValueError(f"num_classes and class_step must be >= 1, got {self.num_classes}, "
                       f"{self.class_step}")
    if self.height < 16 or self.width < 16 or self.height % 2 or self.width % 2:
      raise ValueError(f"frames must be even and >= 16x16, got {self.height}x{self.width}")
    if not 1 <= self.min_length <= self.max_length:
      raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, "
                       f"{self.max_length}")
    if not 1 <= self.min_instances <= self.max_instances:
      raise ValueError(f"need 1 <= min_instances <= max_instances, got {self.min_instances}, "
                       f"{self.max_instances}")
    if self.min_gap < 0 or not self.fps > 0:
      raise ValueError(f"min_gap must be >= 0 and fps > 0, got {self.min_gap}, {self.fps}")
    if self.num_frames < self.min_length:
      raise ValueError(f"num_frames ({self.num_frames}) must hold one instance of min_length "
                       f"({self.min_length}) frames")


@dataclasses.dataclass(frozen=True)
class Instance:
  """One action instance: the object of class ``label`` is drawn in frames ``[start, end)``."""

  start: int
  end: int
  label: int

  def seconds(self, fps: float) -> tuple[float, float]:
    """``(start / fps, end / fps)``."""
    return self.start / fps, self.end / fps


def class_names(num_classes: int, class_step: int = 1) -> list[str]:
  """The ``synthetic_actions`` names of classes ``0, class_step, ...`` (``num_classes`` of them)."""
  names = synthetic.class_names(num_classes * class_step)
  return names[::class_step]


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of one video, independent of every other video."""
  return np.random.default_rng([_STREAM, seed, _SPLIT_CODES.get(split, 3), index])


def sample_instances(spec: DetectionSpec, rng: np.random.Generator) -> list[Instance]:
  """Non-overlapping instances, sorted by start, at least ``min_gap`` frames apart.

  The count is drawn in ``[min_instances, max_instances]`` and lowered while the drawn lengths and
  gaps do not fit in ``num_frames``; the free frames are spread over the ``k + 1`` gaps (before,
  between, after) by a uniform random composition.
  """
  k = int(rng.integers(spec.min_instances, spec.max_instances + 1))
  lengths = rng.integers(spec.min_length, spec.max_length + 1, size=k)
  labels = rng.integers(0, spec.num_classes, size=k)
  while k > 1 and lengths[:k].sum() + (k - 1) * spec.min_gap > spec.num_frames:
    k -= 1
  lengths = np.minimum(lengths[:k], spec.num_frames)
  free = spec.num_frames - int(lengths.sum()) - (k - 1) * spec.min_gap
  # A uniform composition of `free` into k + 1 parts: k sorted cut points in [0, free].
  cuts = np.sort(rng.integers(0, free + 1, size=k))
  gaps = np.diff(np.concatenate([[0], cuts, [free]]))
  out, t = [], 0
  for i in range(k):
    t += int(gaps[i]) + (spec.min_gap if i else 0)
    out.append(Instance(t, t + int(lengths[i]), int(labels[i])))
    t += int(lengths[i])
  return out


def generate_video(index: int, *, spec: DetectionSpec, split: str = "train",
                   seed: int = 0) -> tuple[np.ndarray, list[Instance]]:
  """Renders video ``index`` of ``split`` and returns it with its ground truth.

  Returns:
    ``(frames, instances)``: uint8 ``[num_frames, height, width, 3]`` RGB and the instances,
    sorted by start.
  """
  rng = video_rng(seed, split, index)
  instances = sample_instances(spec, rng)
  scene = synthetic.SyntheticSpec(num_classes=max(2, spec.num_classes * spec.class_step),
                                  num_frames=spec.num_frames,
                                  height=spec.height, width=spec.width, label_noise=0.0,
                                  noise_std=0.0, distractor_prob=0.0, max_pan=spec.max_pan)
  background, pan = _background(scene, rng)
  size = min(spec.height, spec.width)
  # Each instance has its own object (shape, size, path, colour jitter), drawn from its own time 0.
  objects = [_object(synthetic.class_attributes(inst.label * spec.class_step), size, rng,
                     jitter=True)
             for inst in instances]
  frames = np.empty((spec.num_frames, spec.height, spec.width, 3), np.float32)
  for t in range(spec.num_frames):
    ox, oy = pan * t
    frames[t] = _shift(background, ox, oy, spec.height, spec.width)
  for inst, obj in zip(instances, objects):
    for t in range(inst.start, inst.end):
      _paint(frames[t], obj, t - inst.start, rng)
  if spec.noise_std > 0:
    frames += spec.noise_std * rng.standard_normal(frames.shape, dtype=np.float32)
  return np.clip(frames, 0, 255).astype(np.uint8), instances


def ground_truth(instances: list[Instance], video_id: str, fps: float,
                 names: list[str] | None = None) -> list[dict]:
  """Ground-truth dicts ``{"video", "start", "end", "label"}`` in seconds, for
  ``kd_jax.metrics.detection.mean_average_precision``; ``label`` is the class index, or its name
  from ``names``."""
  out = []
  for inst in instances:
    start, end = inst.seconds(fps)
    out.append({"video": video_id, "start": start, "end": end,
                "label": inst.label if names is None else names[inst.label]})
  return out

"""Shared by the temporal action detection builders (``thumos14``, ``synthetic_detection``).

A detection record is one untrimmed video with its ground truth, in features TFDS writes and reads
without TensorFlow (jax_stack.md section 8.2):

* ``video``: the raw MPEG-4 Part 2 stream at the dataset's sampled frame rate, bytes;
* ``video_id``: text; ``num_frames``: int32, frames in the stream; ``fps``: float32, its frame rate;
* ``segments``: float32 ``[N, 2]`` (start, end) in seconds of the source video (float32: TFDS keeps
  floats in ``tf.train.Example`` float lists, float64 would come back rounded anyway);
* ``labels``: ``Sequence(ClassLabel)`` of length ``N`` (0-based class indices; the class names are
  in ``info.features['labels'].feature.names``);
* ``ambiguous``: float32 ``[M, 2]`` segments annotated ``Ambiguous`` (THUMOS14), seconds: not
  training targets; the official evaluation neither rewards nor penalises detections on them.

Frame ``t`` of the stream shows the source at time ``t / fps``, so a segment covers frames
``[start * fps, end * fps]`` of the stream (:func:`reencode_at_fps`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import av
import numpy as np
import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data.builders import common

T = TypeVar("T")
# Timestamps are floats: an output time this close before a source frame counts as that frame's.
_TIME_EPS = 1e-6


def detection_features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """The TF-free record features of every kd_jax detection dataset (module docstring)."""
  return tfds.features.FeaturesDict({
      "video": tfds.features.Tensor(shape=(), dtype=np.object_),
      "video_id": tfds.features.Text(),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "fps": tfds.features.Scalar(dtype=np.float32),
      "segments": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
      "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=list(class_names))),
      "ambiguous": tfds.features.Tensor(shape=(None, 2), dtype=np.float32),
  })


def segment_array(pairs: Iterable[Sequence[float]]) -> np.ndarray:
  """float32 ``[N, 2]`` (also for N = 0)."""
  return np.asarray(list(pairs), np.float32).reshape(-1, 2)


class DetectionBuilder(common.VideoBuilder, skip_registration=True):
  """A VideoBuilder whose records are :func:`detection_features`' (no video-level label)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=detection_features(self._class_names()))


def resample(items: Iterable[tuple[T, float]], fps: float,
             frame_duration: float | None = None) -> Iterator[T]:
  """Resamples a stream of ``(item, timestamp in seconds)`` to ``fps``.

  Output frame ``k`` is the item on screen at time ``t0 + k / fps`` (``t0`` the first timestamp):
  the last one whose timestamp is not after it. The output ends when the last item's display ends,
  ``frame_duration`` after its timestamp (default: the last interval between timestamps). A
  source slower than ``fps`` repeats items; a faster one drops them. For a 30 fps source at 10 fps,
  frames 0, 3, 6, ... (AFSD's ``video2npy`` takes 2, 5, 8, ...: its output lags the time it is
  labelled with by 2/30 s; this one does not).
  """
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps!r}")
  k = 0
  t0 = prev = prev_t = None
  last_gap = None
  for item, t in items:
    if t0 is None:
      t0 = t
    elif prev_t is not None:
      last_gap = t - prev_t
    while prev is not None and t0 + k / fps < t - _TIME_EPS:
      yield prev
      k += 1
    prev, prev_t = item, t
  if prev is None:
    return
  duration = frame_duration if frame_duration else (last_gap or 1.0 / fps)
  while t0 + k / fps < prev_t + duration - _TIME_EPS:
    yield prev
    k += 1


def _timed(frames: Iterable[av.VideoFrame], rate: float | None) -> Iterator[tuple[Any, float]]:
  """``(frame, seconds)``: the frame's timestamp, or its index over ``rate`` where it has none."""
  for i, frame in enumerate(frames):
    t = frame.time
    if t is None:
      t = i / (rate or 25.0)
    yield frame, float(t)


def reencode_at_fps(source: codec.Source, *, fps: float, width: int, height: int,
                    gop_size: int = 12, qscale: int = 1, name: str | None = None
                    ) -> codec.Reencoded:
  """``codec.reencode_checked`` with the frame rate resampled to ``fps`` (:func:`resample`).

  Decodes the source once, picks the frames by their timestamps, resizes them to ``width x
  height`` (bicubic, aspect ratio not kept) and encodes them, streaming (a long video never sits in
  memory). The same reasons and the same partial-decode check as ``codec.reencode_checked``
  (which it calls with a frame selection); ``Reencoded.num_frames`` counts the *output* frames
  and ``declared_frames`` the source's.

  Raises:
    codec.VideoDecodeError: as ``codec.reencode_checked``.
  """
  def select(frames, stream):
    rate = stream.average_rate or stream.guessed_rate
    rate = float(rate) if rate else None
    return resample(_timed(frames, rate), fps, 1.0 / rate if rate else None)

  return codec.reencode_checked(source, width=width, height=height, gop_size=gop_size,
                                qscale=qscale, name=name, select=select)

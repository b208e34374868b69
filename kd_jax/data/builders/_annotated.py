"""Shared by the builders whose classes come from annotation files (SSv2, Jester, Kinetics).

Their class lists are read from the manual download at prepare time (``label`` names are then stored
with the dataset), so the builders ship no hard-coded class tables. Missing videos are skipped
and listed (Kinetics: YouTube deletions) instead of failing the build, unless the builder is strict.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import av
import numpy as np
import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data.builders import common

MISSING = common.MISSING


@dataclasses.dataclass(eq=False, kw_only=True)
class VideoConfig(tfds.core.BuilderConfig):
  """Frame size and GOP of the re-encoded streams (CoViAR: 340 x 256, aspect ratio not kept)."""

  width: int = 340
  height: int = 256
  gop_size: int = 12


class AnnotatedVideoBuilder(common.VideoBuilder, skip_registration=True):
  """A VideoBuilder whose ``label`` names are set from the annotations when preparing."""

  NUM_CLASSES: int | None = None  # the official count; None: whatever the annotations list

  def _class_names(self) -> Sequence[str]:
    return []  # unused: _info below builds the ClassLabel without names

  def _info(self) -> tfds.core.DatasetInfo:
    features = tfds.features.FeaturesDict({
        "video": tfds.features.Tensor(shape=(), dtype=np.object_),
        "label": tfds.features.ClassLabel(),
        "video_id": tfds.features.Text(),
        "num_frames": tfds.features.Scalar(dtype=np.int32),
    })
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                 supervised_keys=("video", "label"))

  def _set_class_names(self, names: Sequence[str]) -> None:
    label = self.info.features["label"]
    label.names = list(names)


def index_by_stem(root: str, suffixes: tuple[str, ...] = common.VIDEO_SUFFIXES) -> dict[str, str]:
  """Lower-case file stems (name without extension) of the videos under ``root`` -> paths."""
  found = {}
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      if name.lower().endswith(suffixes):
        found.setdefault(os.path.splitext(name)[0].lower(), os.path.join(dirpath, name))
  return found


def jobs_for(name: str, root: str, lists: dict[str, list[tuple[str, int]]], instructions: str,
             *, skip_missing: bool, index: dict[str, str] | None = None
             ) -> dict[str, list[tuple[str, str | None, int, str]]]:
  """split -> [(video id, path or None if missing, label, video id)] for listed ids (file stems).

  Raises:
    ManualDirError: videos are missing and ``skip_missing`` is off, or none of a split's is there.
  """
  index = index_by_stem(root) if index is None else index
  out, missing, total = {}, [], 0
  for split, entries in lists.items():
    jobs = []
    for video_id, label in entries:
      total += 1
      path = index.get(video_id.lower())
      if path is None:
        missing.append(video_id)
        if not skip_missing:
          continue
      jobs.append((video_id, path, label, video_id))
    out[split] = jobs
  if missing and (not skip_missing or len(missing) == total):
    problem = (f"{len(set(missing))} of {total} videos named in the annotations are not under "
               f"{root} (e.g. {missing[0]})")
    raise common.manual_dir_error(name, problem, instructions)
  common.check_some_present(name, root, out, instructions)
  return out


def reencode_or_skip(job: tuple, *, width: int, height: int, gop_size: int):
  """``common.reencode_video``, which reports a missing file (path None) as skipped."""
  return common.reencode_video(job, width=width, height=height, gop_size=gop_size)


def encode_image_sequence(job: tuple, *, width: int, height: int, gop_size: int):
  """Encodes a folder of numbered JPEG frames (``00001.jpg``, ...) like a video; skips bad ones.

  The frames are read in name order with PyAV (FFmpeg's JPEG decoder), resized to
  ``width x height`` (bicubic, aspect ratio not kept, as ``codec.reencode``) and encoded with
  ``codec.encode_frames``. A folder that is missing, empty or holds an undecodable frame is skipped
  (reasons ``missing``, ``no decodable frames``, ``corrupt stream at frame N (file)``).
  """
  video_id, folder, label = job[:3]
  if folder is None:
    return video_id, None, MISSING, job[3] if len(job) > 3 else ""
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
  if not names:
    return video_id, None, "no decodable frames (no .jpg or .png files)", folder
  frames = []
  for i, name in enumerate(names):
    try:
      with av.open(os.path.join(folder, name)) as container:
        frame = next(container.decode(video=0))
        frames.append(frame.reformat(width=width, height=height, format="rgb24",
                                     interpolation="BICUBIC").to_ndarray())
    except (av.FFmpegError, StopIteration, OSError, ValueError):
      return video_id, None, f"corrupt stream at frame {i} ({name})", folder
  data = codec.encode_frames(np.stack(frames), gop_size=gop_size)
  example = {"video": data, "label": label, "video_id": video_id, "num_frames": len(frames)}
  return video_id, example, "", folder


def check_labels(name: str, names: Sequence[str], expected: int | None, source: str,
                 instructions: str) -> None:
  if not names:
    raise common.manual_dir_error(name, f"{source} lists no classes", instructions)
  if len(set(names)) != len(names):
    raise common.manual_dir_error(name, f"{source} lists a class twice", instructions)
  del expected  # fewer classes are fine (subsets for experiments); the count is reported

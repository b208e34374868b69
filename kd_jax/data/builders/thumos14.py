"""TFDS builder of THUMOS14 temporal action detection from the official downloads (manual).

The user downloads from https://www.crcv.ucf.edu/THUMOS14/download.html and extracts, into one
``manual_dir`` (sub-folders do not matter; files are found by name):

* the validation videos ``TH14_validation_set_mp4.zip`` -> ``video_validation_*.mp4``;
* the validation temporal annotations ``TH14_Temporal_annotations_validation.zip`` ->
  ``annotation/<Class>_val.txt`` (and ``Ambiguous_val.txt``);
* the test videos ``TH14_test_set_mp4.zip`` (password from the THUMOS14 site) ->
  ``video_test_*.mp4``;
* the test temporal annotations ``TH14_Temporal_Annotations_Test.zip`` -> ``<Class>_test.txt`` (and
  ``Ambiguous_test.txt``).

Splits ``validation`` (the 200 validation videos with temporal annotations: the training set of
every THUMOS14 detector, AFSD's and GenKD's included) and ``test`` (the 213 annotated test videos,
for evaluation). An annotation line is ``<video> <start s> <end s>``; the 20 classes are the
detection classes in the official ``Class Index_Detection.txt`` order (labels 0-19 here; AFSD
numbers them 1-20 with 0 for background). ``Ambiguous`` segments are stored apart (``ambiguous``)
and are no targets, as AFSD drops them (``gen_annotations.py``). The videos are those named by the
20 class files (AFSD's lists); ``video_test_0001292``, which only has ``Ambiguous`` segments, is
left out like there. CliffDiving instances are also annotated as Diving in the official files;
both are kept, as AFSD does.

Every video is resampled to 10 fps and resized to 112 x 112, bicubic (AFSD's ``video2npy.py``), and
stored re-encoded (raw MPEG-4 Part 2); segments stay in seconds (a segment covers stream frames
``[10 start, 10 end]``). Missing or undecodable videos are skipped and listed (``prepare``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data.builders import _detection
from kd_jax.data.builders import common

DOWNLOAD_PAGE = "https://www.crcv.ucf.edu/THUMOS14/download.html"
# The 20 detection classes in the official "Class Index_Detection.txt" order (its UCF-101 indices
# 7, 9, 12, 21, 22, 23, 24, 26, 31, 33, 36, 40, 45, 51, 68, 79, 85, 92, 93, 97).
CLASSES = (
    "BaseballPitch", "BasketballDunk", "Billiards", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "Diving", "FrisbeeCatch", "GolfSwing", "HammerThrow",
    "HighJump", "JavelinThrow", "LongJump", "PoleVault", "Shotput", "SoccerPenalty",
    "TennisSwing", "ThrowDiscus", "VolleyballSpiking",
)
AMBIGUOUS = "Ambiguous"
# split -> the suffix of its annotation files (<Class>_<suffix>.txt).
SPLITS = {"validation": "val", "test": "test"}

INSTRUCTIONS = (
    f"download the validation and test videos (mp4) and their temporal annotations from "
    f"{DOWNLOAD_PAGE} and extract them into the manual_dir, giving video_validation_*.mp4, "
    f"video_test_*.mp4 and the annotation files <Class>_val.txt and <Class>_test.txt "
    f"(see docs/data.md)")


@dataclasses.dataclass(eq=False, kw_only=True)
class Thumos14Config(tfds.core.BuilderConfig):
  """Sampling of the stored streams.

  Attributes:
    fps: frames per second of the stored stream (AFSD: 10).
    width, height: frame size (AFSD: 112 x 112, cropped to 96 by the pipeline).
    gop_size: encoder GOP length.
  """

  fps: float = 10.0
  width: int = 112
  height: int = 112
  gop_size: int = 12


def _index_annotations(root: str) -> dict[str, str]:
  """Lower-case file names of the ``*.txt`` files under ``root`` -> paths (first found)."""
  return common.index_files(root, (".txt",))


def read_annotation_file(path: str) -> dict[str, list[tuple[float, float]]]:
  """``<video> <start> <end>`` lines -> ``{video: [(start, end), ...]}`` in file order.

  Raises:
    ManualDirError: a line that is not a video name and two numbers.
  """
  out: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
  with open(path) as f:
    for n, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      try:
        video, start, end = fields[0], float(fields[1]), float(fields[2])
      except (IndexError, ValueError):
        raise common.manual_dir_error(
            "thumos14", f"{path} line {n} is not '<video> <start s> <end s>': {line.strip()!r}",
            INSTRUCTIONS) from None
      out[video].append((start, end))
  return dict(out)


def read_annotations(root: str) -> dict[str, dict[str, dict]]:
  """The temporal annotations of both splits under ``root``.

  Returns:
    ``{split: {video: {"segments": [(start, end)], "labels": [k], "ambiguous": [(start, end)]}}}``
    for the videos that the 20 class files name, sorted by video name; segments in class order,
    then file order.

  Raises:
    ManualDirError: a split has none of its 20 class files, or only some of them.
  """
  index = _index_annotations(root)
  out = {}
  for split, suffix in SPLITS.items():
    paths = {c: index.get(f"{c.lower()}_{suffix}.txt") for c in CLASSES}
    missing = [c for c, p in paths.items() if p is None]
    if len(missing) == len(CLASSES):
      raise common.manual_dir_error(
          "thumos14", f"no {split} annotation files (<Class>_{suffix}.txt, e.g. "
          f"{CLASSES[0]}_{suffix}.txt) under {root}", INSTRUCTIONS)
    if missing:
      raise common.manual_dir_error(
          "thumos14", f"{len(missing)} of the 20 {split} annotation files are not under {root} "
          f"(e.g. {missing[0]}_{suffix}.txt)", INSTRUCTIONS)
    videos: dict[str, dict] = {}
    for label, cls in enumerate(CLASSES):
      for video, pairs in read_annotation_file(paths[cls]).items():
        entry = videos.setdefault(video, {"segments": [], "labels": [], "ambiguous": []})
        entry["segments"] += pairs
        entry["labels"] += [label] * len(pairs)
    ambiguous = index.get(f"{AMBIGUOUS.lower()}_{suffix}.txt")
    if ambiguous is not None:
      for video, pairs in read_annotation_file(ambiguous).items():
        if video in videos:  # a video with only ambiguous segments has nothing to learn or score
          videos[video]["ambiguous"] += pairs
    out[split] = dict(sorted(videos.items()))
  return out


def encode_video(job: tuple, *, fps: float, width: int, height: int, gop_size: int):
  """One job ``(video_id, path or None, annotation, listed name)`` -> ``(key, example or None,
  reason, path)``, as ``common.reencode_video`` but resampled to ``fps``."""
  video_id, path, anno, listed = job
  if path is None:
    return video_id, None, common.MISSING, listed
  try:
    result = _detection.reencode_at_fps(path, fps=fps, width=width, height=height,
                                        gop_size=gop_size, name=video_id)
    num_frames = codec.CompressedVideo(result.data, name=video_id).num_frames
  except codec.VideoDecodeError as e:
    return video_id, None, e.reason, path
  except (ValueError, OSError) as e:  # anything else a broken file can raise in PyAV
    return video_id, None, f"unreadable ({type(e).__name__})", path
  example = {
      "video": result.data, "video_id": video_id, "num_frames": num_frames, "fps": fps,
      "segments": _detection.segment_array(anno["segments"]), "labels": list(anno["labels"]),
      "ambiguous": _detection.segment_array(anno["ambiguous"]),
  }
  return video_id, example, result.problem, path


class Thumos14(_detection.DetectionBuilder, skip_registration=True):
  """THUMOS14 temporal action detection (20 classes; 200 validation, 213 test videos), 10 fps,
  112x112, re-encoded to MPEG-4, with the official temporal annotations."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = [Thumos14Config(
      name="default", description="THUMOS14 at 10 fps, 112x112 (AFSD's sampling).")]
  DEFAULT_BUILDER_CONFIG_NAME = "default"

  def _class_names(self):
    return CLASSES

  def _jobs(self, dl_manager):
    root = common.manual_dir(dl_manager, "thumos14", INSTRUCTIONS)
    annotations = read_annotations(root)
    index = common.index_files(root, common.VIDEO_SUFFIXES)
    jobs, missing, total = {}, [], 0
    for split, videos in annotations.items():
      split_jobs = []
      for video, anno in videos.items():
        total += 1
        path = None
        for suffix in common.VIDEO_SUFFIXES:
          path = index.get(f"{video.lower()}{suffix}")
          if path:
            break
        if path is None:
          missing.append(video)
          if self.strict:
            continue
        split_jobs.append((video, path, anno, video))
      jobs[split] = split_jobs
    if missing and (self.strict or len(missing) == total):
      raise common.manual_dir_error(
          "thumos14", f"{len(missing)} of {total} videos named in the annotations are not under "
          f"{root} (e.g. {missing[0]}.mp4)", INSTRUCTIONS)
    common.check_some_present("thumos14", root, jobs, INSTRUCTIONS)
    return jobs

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(encode_video, fps=cfg.fps, width=cfg.width, height=cfg.height,
                             gop_size=cfg.gop_size)

"""TFDS builder of 20BN-Jester V1 from the official download (manual), without TensorFlow.

The user downloads (https://developer.qualcomm.com/software/ai-datasets/jester, free registration)
and extracts into one ``manual_dir``:

* the frames, ``20bn-jester-v1-??`` (concatenate the parts and untar) ->
  ``manual_dir/20bn-jester-v1/<id>/00001.jpg, 00002.jpg, ...`` (148 092 folders of JPEG frames,
  100 pixels high, 12 fps);
* ``jester-v1-labels.csv`` (one class per line, in label order), ``jester-v1-train.csv`` and
  ``jester-v1-validation.csv`` (``<id>;<class>`` per line) anywhere under ``manual_dir``.

Jester ships frames, not videos: each folder's JPEGs are decoded in name order with PyAV, resized to
340x256 and encoded as one raw MPEG-4 Part 2 stream (12-frame GOPs), so Jester is read by the same
pipelines as every other dataset. A folder with an undecodable frame is skipped and listed.
Splits ``train`` (118 562) and ``validation`` (14 787); the test list is unlabelled and not used.
Gestures are direction-sensitive ("Swiping Left"): do not flip horizontally.
"""

from __future__ import annotations

import functools
import os

from kd_jax.data.builders import _annotated
from kd_jax.data.builders import common

URL = "https://developer.qualcomm.com/software/ai-datasets/jester"
FRAMES_DIR = "20bn-jester-v1"
SPLITS = {"train": "jester-v1-train.csv", "validation": "jester-v1-validation.csv"}
LABELS = "jester-v1-labels.csv"

INSTRUCTIONS = (
    f"download Jester V1 from {URL}; extract the frames into the manual_dir (giving "
    f"<manual_dir>/{FRAMES_DIR}/<id>/00001.jpg) and put {LABELS}, jester-v1-train.csv and "
    f"jester-v1-validation.csv next to them")


def _find(manual_dir: str, name: str) -> str:
  path = common.find_file(manual_dir, name, name)
  if path is None:
    raise common.manual_dir_error("jester", f"no {name} under {manual_dir}", INSTRUCTIONS)
  return path


def read_annotations(manual_dir: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  """Class names (label order) and ``{'train'|'validation': [(video id, label), ...]}``."""
  labels_path = _find(manual_dir, LABELS)
  with open(labels_path) as f:
    names = [line.strip() for line in f if line.strip()]
  _annotated.check_labels("jester", names, 27, labels_path, INSTRUCTIONS)
  index = {n: i for i, n in enumerate(names)}
  lists = {}
  for split, file_name in SPLITS.items():
    path = _find(manual_dir, file_name)
    entries = []
    with open(path) as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        video_id, sep, cls = line.strip().partition(";")
        if not sep or cls not in index:
          raise common.manual_dir_error(
              "jester", f"{path} line {n} ({line.strip()!r}) is not '<id>;<class of {LABELS}>'",
              INSTRUCTIONS)
        entries.append((video_id, index[cls]))
    lists[split] = entries
  return names, lists


def frame_folders(manual_dir: str, ids: list[str]) -> dict[str, str]:
  """Video id (lower case) -> its frame folder, looked up in the usual places (no full walk)."""
  roots = [os.path.join(manual_dir, FRAMES_DIR), manual_dir]
  roots += [os.path.join(manual_dir, d) for d in sorted(os.listdir(manual_dir))
            if os.path.isdir(os.path.join(manual_dir, d, FRAMES_DIR))]
  roots = [os.path.join(r, FRAMES_DIR) if os.path.isdir(os.path.join(r, FRAMES_DIR)) else r
           for r in roots]
  out = {}
  for video_id in ids:
    for root in roots:
      folder = os.path.join(root, video_id)
      if os.path.isdir(folder):
        out[video_id.lower()] = folder
        break
  return out


class Jester(_annotated.AnnotatedVideoBuilder, skip_registration=True):
  """20BN-Jester V1 (27 hand gestures), official train/validation, encoded to 340x256 MPEG-4."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = [_annotated.VideoConfig(
      name="default", description="Jester V1 frame folders encoded to 340x256 MPEG-4.")]
  DEFAULT_BUILDER_CONFIG_NAME = "default"
  NUM_CLASSES = 27

  def _jobs(self, dl_manager):
    manual_dir = common.manual_dir(dl_manager, "jester", INSTRUCTIONS)
    names, lists = read_annotations(manual_dir)
    self._set_class_names(names)
    folders = frame_folders(manual_dir, [v for e in lists.values() for v, _ in e])
    return _annotated.jobs_for("jester", manual_dir, lists, INSTRUCTIONS,
                               skip_missing=not self.strict, index=folders)

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(_annotated.encode_image_sequence, width=cfg.width,
                             height=cfg.height, gop_size=cfg.gop_size)

"""TFDS builder of Kinetics-400 from a directory of downloaded clips (manual), without TensorFlow.

Kinetics is distributed as YouTube ids; the clips are fetched with a downloader of choice (e.g.
``cvdfoundation/kinetics-dataset``'s tarballs, or ``activitynet/ActivityNet``'s
``Crawler/Kinetics``) into one ``manual_dir``:

* the official annotation CSVs ``train.csv``, ``validate.csv`` (and ``test.csv``) with the columns
  ``label,youtube_id,time_start,time_end,split`` (from
  https://storage.googleapis.com/deepmind-media/Datasets/kinetics400.tar.gz), anywhere under
  ``manual_dir``;
* the clips, named ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4`` (any video extension),
  in per-class folders or flat, anywhere under ``manual_dir``.

Splits ``train`` and ``validation`` (from ``validate.csv``), plus ``test`` when ``test.csv`` has
labels. Classes are the sorted unique labels of ``train.csv`` (0 = abseiling ... 399 = zumba, the
usual numbering). Clips that were not downloaded (videos deleted from YouTube) are skipped and
listed in ``skipped_videos.tsv``, like clips that fail to decode. Every clip is re-encoded to
340x256 raw MPEG-4 Part 2.
"""

from __future__ import annotations

import csv
import functools

from kd_jax.data.builders import _annotated
from kd_jax.data.builders import common

ANNOTATIONS_URL = "https://storage.googleapis.com/deepmind-media/Datasets/kinetics400.tar.gz"
CSV_FILES = {"train": "train.csv", "validation": "validate.csv", "test": "test.csv"}
COLUMNS = ("label", "youtube_id", "time_start", "time_end")

INSTRUCTIONS = (
    f"put the annotation CSVs of {ANNOTATIONS_URL} (train.csv, validate.csv) and the downloaded "
    "clips <youtube_id>_<start:06d>_<end:06d>.mp4 (per-class folders or flat) into the manual_dir")


def clip_id(youtube_id: str, start: str, end: str) -> str:
  """``('abc', '14', '24.0')`` -> ``'abc_000014_000024'`` (the downloaders' file stem)."""
  return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def _read_csv(path: str) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return rows


def read_annotations(manual_dir: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  """Class names (sorted) and ``{split: [(clip id, label), ...]}``.

  Raises:
    ManualDirError: train.csv or validate.csv is missing, lacks a column, or names a class that
      train.csv does not.
  """
  rows = {}
  for split, name in CSV_FILES.items():
    path = common.find_file(manual_dir, name, name)
    if path is None:
      if split == "test":
        continue
      raise common.manual_dir_error("kinetics400", f"no {name} under {manual_dir}", INSTRUCTIONS)
    data = _read_csv(path)
    fields = set(data[0]) if data else set()
    if split == "test" and "label" not in fields:
      continue  # the official test list is unlabelled
    missing = [c for c in COLUMNS if c not in fields]
    if missing:
      raise common.manual_dir_error("kinetics400", f"{path} lacks the column(s) {missing}",
                                    INSTRUCTIONS)
    rows[split] = (path, data)
  names = sorted({r["label"] for r in rows["train"][1]})
  _annotated.check_labels("kinetics400", names, 400, rows["train"][0], INSTRUCTIONS)
  index = {n: i for i, n in enumerate(names)}
  lists = {}
  for split, (path, data) in rows.items():
    out = []
    for r in data:
      if r["label"] not in index:
        raise common.manual_dir_error(
            "kinetics400", f"{path} has class {r['label']!r}, which train.csv does not",
            INSTRUCTIONS)
      out.append((clip_id(r["youtube_id"], r["time_start"], r["time_end"]), index[r["label"]]))
    lists[split] = out
  return names, lists


class Kinetics400(_annotated.AnnotatedVideoBuilder, skip_registration=True):
  """Kinetics-400 clips, official train/validate(/test) lists, re-encoded to 340x256 MPEG-4."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = [_annotated.VideoConfig(
      name="default", description="Kinetics-400, re-encoded to 340x256 MPEG-4.")]
  DEFAULT_BUILDER_CONFIG_NAME = "default"
  NUM_CLASSES = 400

  def _jobs(self, dl_manager):
    manual_dir = common.manual_dir(dl_manager, "kinetics400", INSTRUCTIONS)
    names, lists = read_annotations(manual_dir)
    self._set_class_names(names)
    return _annotated.jobs_for("kinetics400", manual_dir, lists, INSTRUCTIONS,
                               skip_missing=not self.strict)

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(_annotated.reencode_or_skip, width=cfg.width, height=cfg.height,
                             gop_size=cfg.gop_size)

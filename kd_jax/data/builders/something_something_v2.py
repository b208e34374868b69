"""TFDS builder of Something-Something V2 from the official download (manual), without TensorFlow.

The user downloads (https://developer.qualcomm.com/software/ai-datasets/something-something, free
registration) and extracts into one ``manual_dir``:

* the videos, ``20bn-something-something-v2-??`` (concatenate the parts and untar) ->
  ``manual_dir/20bn-something-something-v2/<id>.webm`` (220 847 VP9 videos; any sub-directory);
* the labels archive -> ``something-something-v2-train.json``, ``-validation.json``,
  ``-labels.json`` (and ``-test.json``, unlabelled, not used) anywhere under ``manual_dir``.

Splits ``train`` (168 913) and ``validation`` (24 777). Labels: ``labels.json`` maps each of the 174
templates (``"Putting something on a surface"``) to its index; an entry's class is its ``template``
with the brackets removed (``"Putting [something] on a surface"``), as TSM's ``process_dataset``.
Every video is re-encoded to 340x256 raw MPEG-4 Part 2. Classes are direction-sensitive
("... from left to right"): do not flip horizontally.
"""

from __future__ import annotations

import functools
import json

from kd_jax.data.builders import _annotated
from kd_jax.data.builders import common

URL = "https://developer.qualcomm.com/software/ai-datasets/something-something"
PREFIX = "something-something-v2"
SPLITS = {"train": "train", "validation": "validation"}
NUM_CLASSES = 174

INSTRUCTIONS = (
    f"download the Something-Something V2 videos and labels from {URL}; extract the videos into "
    f"the manual_dir (giving <manual_dir>/20bn-something-something-v2/<id>.webm) and the labels "
    f"next to them (giving <manual_dir>/{PREFIX}-train.json, -validation.json, -labels.json)")


def template_class(template: str) -> str:
  """``'Putting [something] on a surface'`` -> ``'Putting something on a surface'``."""
  return template.replace("[", "").replace("]", "")


def _load_json(manual_dir: str, stem: str):
  name = f"{PREFIX}-{stem}.json"
  path = common.find_file(manual_dir, name, name)
  if path is None:
    raise common.manual_dir_error("something_something_v2", f"no {name} under {manual_dir}",
                                  INSTRUCTIONS)
  try:
    with open(path) as f:
      return json.load(f), path
  except (OSError, ValueError) as e:
    raise common.manual_dir_error("something_something_v2", f"cannot read {path} ({e})",
                                  INSTRUCTIONS) from None


def read_annotations(manual_dir: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
  """Class names (in label order) and ``{'train'|'validation': [(video id, label), ...]}``.

  Raises:
    ManualDirError: a JSON file is missing or unreadable, or names a template not in labels.json.
  """
  labels, labels_path = _load_json(manual_dir, "labels")
  try:
    by_index = {int(i): name for name, i in labels.items()}
  except (AttributeError, TypeError, ValueError):
    raise common.manual_dir_error("something_something_v2", f"{labels_path} is not the "
                                  "{template: index} map of the official release",
                                  INSTRUCTIONS) from None
  if sorted(by_index) != list(range(len(by_index))):
    raise common.manual_dir_error("something_something_v2",
                                  f"{labels_path} does not number its classes 0..N-1",
                                  INSTRUCTIONS)
  names = [by_index[i] for i in range(len(by_index))]
  index = {name: i for i, name in enumerate(names)}
  lists = {}
  for split, stem in SPLITS.items():
    entries, path = _load_json(manual_dir, stem)
    out = []
    for e in entries:
      cls = template_class(e.get("template", ""))
      if cls not in index:
        raise common.manual_dir_error(
            "something_something_v2", f"{path}: video {e.get('id')} has template {cls!r}, which "
            f"{labels_path} does not list", INSTRUCTIONS)
      out.append((str(e["id"]), index[cls]))
    lists[split] = out
  return names, lists


class SomethingSomethingV2(_annotated.AnnotatedVideoBuilder, skip_registration=True):
  """Something-Something V2 (174 classes), official train/validation, as 340x256 MPEG-4."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = [_annotated.VideoConfig(
      name="default", description="Something-Something V2, re-encoded to 340x256 MPEG-4.")]
  DEFAULT_BUILDER_CONFIG_NAME = "default"
  NUM_CLASSES = NUM_CLASSES

  def _jobs(self, dl_manager):
    manual_dir = common.manual_dir(dl_manager, "something_something_v2", INSTRUCTIONS)
    names, lists = read_annotations(manual_dir)
    self._set_class_names(names)
    return _annotated.jobs_for("something_something_v2", manual_dir, lists, INSTRUCTIONS,
                               skip_missing=not self.strict,
                               index=_annotated.index_by_stem(manual_dir, (".webm",)))

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(_annotated.reencode_or_skip, width=cfg.width, height=cfg.height,
                             gop_size=cfg.gop_size)



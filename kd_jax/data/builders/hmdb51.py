"""TFDS builder of HMDB-51 from the official downloads (manual), without TensorFlow.

The user downloads and extracts, into one ``manual_dir``:

* ``hmdb51_org.rar``, then each of the 51 per-class ``<class>.rar`` inside it ->
  ``manual_dir/<class>/*.avi`` (any sub-directory works; 6 766 videos);
* ``test_train_splits.rar`` -> ``manual_dir/testTrainMulti_7030_splits/<class>_test_split<N>.txt``,
  whose lines are ``<video>.avi <tag>`` with tag 1 = train, 2 = test, 0 = unused.

Configs ``split1``, ``split2``, ``split3`` (3 570 train / 1 530 test videos each). HMDB-51 has no
class-index file; labels follow the alphabetical order of the class names, as the split files sort
and as CoViAR / MMAction lists number them. Videos tagged 0 are left out.
"""

from __future__ import annotations

import glob
import os
import re

from absl import logging

from kd_jax.data.builders import common

VIDEOS_URL = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/hmdb51_org.rar"
SPLITS_URL = "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar"
SPLITS_DIR = "testTrainMulti_7030_splits"

CLASSES = (
    "brush_hair", "cartwheel", "catch", "chew", "clap", "climb", "climb_stairs", "dive",
    "draw_sword", "dribble", "drink", "eat", "fall_floor", "fencing", "flic_flac", "golf",
    "handstand", "hit", "hug", "jump", "kick", "kick_ball", "kiss", "laugh", "pick", "pour",
    "pullup", "punch", "push", "pushup", "ride_bike", "ride_horse", "run", "shake_hands",
    "shoot_ball", "shoot_bow", "shoot_gun", "sit", "situp", "smile", "smoke", "somersault",
    "stand", "swing_baseball", "sword", "sword_exercise", "talk", "throw", "turn", "walk", "wave",
)

INSTRUCTIONS = (
    f"download {VIDEOS_URL} and {SPLITS_URL}; extract hmdb51_org.rar and every <class>.rar in it "
    f"into the manual_dir (giving <manual_dir>/<class>/*.avi), and test_train_splits.rar into the "
    f"manual_dir (giving <manual_dir>/{SPLITS_DIR}/<class>_test_split1.txt)")
_TAGS = {"1": "train", "2": "test"}


def read_lists(manual_dir: str, split_number: int) -> dict[str, list[tuple[str, int]]]:
  """Reads the official lists of one split: ``{'train'|'test': [(file name, label), ...]}``.

  Raises:
    ManualDirError: no split file for this split, or one for an unknown class.
  """
  pattern = re.compile(rf"^(.+)_test_split{split_number}\.txt$")
  files = {}
  for path in glob.glob(os.path.join(manual_dir, "**", f"*_test_split{split_number}.txt"),
                        recursive=True):
    match = pattern.match(os.path.basename(path))
    if match:
      files.setdefault(match.group(1), path)
  if not files:
    raise common.manual_dir_error(
        "hmdb51", f"no *_test_split{split_number}.txt file under {manual_dir}", INSTRUCTIONS)
  unknown = sorted(set(files) - set(CLASSES))
  if unknown:
    raise common.manual_dir_error(
        "hmdb51", f"split files for unknown classes {unknown} under {manual_dir}", INSTRUCTIONS)
  if len(files) < len(CLASSES):
    logging.warning("hmdb51: split files for only %d of %d classes under %s", len(files),
                    len(CLASSES), manual_dir)
  out = {"train": [], "test": []}
  for cls in sorted(files):
    label = CLASSES.index(cls)
    with open(files[cls]) as f:
      for line in f:
        fields = line.split()
        if len(fields) != 2:
          continue
        split = _TAGS.get(fields[1])
        if split is not None:
          out[split].append((fields[0], label))
  return out


class Hmdb51(common.SplitVideoBuilder, skip_registration=True):
  """HMDB-51 (51 classes), official 70/30 splits 1-3, re-encoded to 340x256 MPEG-4."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = common.split_configs("HMDB-51")

  def _class_names(self):
    return CLASSES

  def _jobs(self, dl_manager):
    manual_dir = common.manual_dir(dl_manager, "hmdb51", INSTRUCTIONS)
    lists = read_lists(manual_dir, self.builder_config.split_number)
    rars = glob.glob(os.path.join(manual_dir, "**", "*.rar"), recursive=True)
    hint = (f"; {len(rars)} .rar archives are still packed there (e.g. {os.path.basename(rars[0])})"
            " - extract them too" if rars else "")
    jobs = common.locate_videos("hmdb51", manual_dir, lists, INSTRUCTIONS, hint,
                                strict=self.strict)
    missing = sum(path is None for split_jobs in jobs.values() for _, path, *_ in split_jobs)
    if missing and hint:
      self.notes.append(f"{missing} listed videos are not under {manual_dir}{hint}")
    return jobs

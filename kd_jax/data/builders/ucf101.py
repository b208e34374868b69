"""TFDS builder of UCF-101 from the official downloads (manual), without TensorFlow.

The user downloads and extracts, into one ``manual_dir``:

* ``UCF101.rar`` -> ``manual_dir/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (13 320 videos);
* ``UCF101TrainTestSplits-RecognitionTask.zip`` -> ``manual_dir/ucfTrainTestlist/`` with
  ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``.

Configs ``split1``, ``split2``, ``split3``; labels are ``classInd.txt`` indices minus one. Every
video is re-encoded to 340 x 256 raw MPEG-4 Part 2 (CoViAR's ``reencode.sh``).
"""

from __future__ import annotations

import os

from kd_jax.data.builders import common

VIDEOS_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101.rar"
SPLITS_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"
SPLITS_DIR = "ucfTrainTestlist"

# The official classInd.txt order; label = index in this tuple.
CLASSES = (
    "ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
    "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress", "Biking", "Billiards",
    "BlowDryHair", "BlowingCandles", "BodyWeightSquats", "Bowling", "BoxingPunchingBag",
    "BoxingSpeedBag", "BreastStroke", "BrushingTeeth", "CleanAndJerk", "CliffDiving",
    "CricketBowling", "CricketShot", "CuttingInKitchen", "Diving", "Drumming", "Fencing",
    "FieldHockeyPenalty", "FloorGymnastics", "FrisbeeCatch", "FrontCrawl", "GolfSwing", "Haircut",
    "Hammering", "HammerThrow", "HandstandPushups", "HandstandWalking", "HeadMassage", "HighJump",
    "HorseRace", "HorseRiding", "HulaHoop", "IceDancing", "JavelinThrow", "JugglingBalls",
    "JumpingJack", "JumpRope", "Kayaking", "Knitting", "LongJump", "Lunges", "MilitaryParade",
    "Mixing", "MoppingFloor", "Nunchucks", "ParallelBars", "PizzaTossing", "PlayingCello",
    "PlayingDaf", "PlayingDhol", "PlayingFlute", "PlayingGuitar", "PlayingPiano", "PlayingSitar",
    "PlayingTabla", "PlayingViolin", "PoleVault", "PommelHorse", "PullUps", "Punch", "PushUps",
    "Rafting", "RockClimbingIndoor", "RopeClimbing", "Rowing", "SalsaSpin", "ShavingBeard",
    "Shotput", "SkateBoarding", "Skiing", "Skijet", "SkyDiving", "SoccerJuggling", "SoccerPenalty",
    "StillRings", "SumoWrestling", "Surfing", "Swing", "TableTennisShot", "TaiChi", "TennisSwing",
    "ThrowDiscus", "TrampolineJumping", "Typing", "UnevenBars", "VolleyballSpiking",
    "WalkingWithDog", "WallPushups", "WritingOnBoard", "YoYo",
)

INSTRUCTIONS = (
    f"download {VIDEOS_URL} and {SPLITS_URL} and extract both into the manual_dir, giving "
    f"<manual_dir>/UCF-101/<Class>/*.avi and <manual_dir>/{SPLITS_DIR}/classInd.txt")


def read_lists(manual_dir: str, split_number: int) -> dict[str, list[tuple[str, int]]]:
  """Reads the official lists of one split: ``{'train'|'test': [(relative path, label), ...]}``.

  Raises:
    ManualDirError: a list is missing, or ``classInd.txt`` disagrees with the official classes.
  """
  class_ind = common.find_file(manual_dir, "classInd.txt", os.path.join(SPLITS_DIR, "classInd.txt"))
  if class_ind is None:
    raise common.ManualDirError(f"ucf101: no classInd.txt under {manual_dir}; {INSTRUCTIONS}")
  lists_dir = os.path.dirname(class_ind)
  labels = {}
  with open(class_ind) as f:
    for line in f:
      if not line.strip():
        continue
      index, name = line.split()
      label = int(index) - 1
      if not 0 <= label < len(CLASSES) or CLASSES[label] != name:
        raise common.ManualDirError(
            f"ucf101: {class_ind} lists '{line.strip()}', which is not the official class "
            f"{label + 1}; {INSTRUCTIONS}")
      labels[name.lower()] = label
  out = {}
  for split, stem in (("train", "trainlist"), ("test", "testlist")):
    path = os.path.join(lists_dir, f"{stem}{split_number:02d}.txt")
    if not os.path.isfile(path):
      raise common.ManualDirError(f"ucf101: {path} is missing; {INSTRUCTIONS}")
    entries = []
    with open(path) as f:
      for line in f:
        if not line.strip():
          continue
        rel = line.split()[0]
        cls = rel.replace("\\", "/").split("/")[0].lower()
        if cls not in labels:
          raise common.ManualDirError(
              f"ucf101: {path} names class '{cls}', which {class_ind} does not list; "
              f"{INSTRUCTIONS}")
        entries.append((rel, labels[cls]))
    out[split] = entries
  return out


class Ucf101(common.SplitVideoBuilder, skip_registration=True):
  """UCF-101 (101 classes, 13 320 videos), official splits 1-3, re-encoded to 340x256 MPEG-4."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
  BUILDER_CONFIGS = common.split_configs("UCF-101")

  def _class_names(self):
    return CLASSES

  def _jobs(self, dl_manager):
    manual_dir = common.manual_dir(dl_manager, "ucf101", INSTRUCTIONS)
    lists = read_lists(manual_dir, self.builder_config.split_number)
    return common.locate_videos("ucf101", manual_dir, lists, INSTRUCTIONS, strict=self.strict)

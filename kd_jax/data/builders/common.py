"""Code shared by the kd_jax TFDS builders: record features, parallel encoding, skipped videos.

Every builder writes array_record files whose records hold only features that TFDS can write and read
without TensorFlow (jax_stack.md section 8.2):

* ``video``: the raw MPEG-4 Part 2 stream (``codec.encode_frames`` / ``codec.reencode``), bytes;
* ``label``: ``ClassLabel`` with the dataset's class names;
* ``video_id``: text (comes back as bytes from a data source);
* ``num_frames``: int32, the number of frames in the stream.

A video that cannot be decoded is skipped: it is counted in the progress bar, listed in
``skipped_videos.tsv`` inside the prepared dataset directory, and reported by ``prepare``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from kd_jax.data import codec

SKIPPED_FILE = "skipped_videos.tsv"
VERSION = tfds.core.Version("1.0.0")


class DatasetError(ValueError):
  """Bad input to a builder (unknown name or config, unusable inputs); the message says what to do."""


class ManualDirError(DatasetError):
  """The manual download directory is missing or incomplete; the message says what to do."""


def video_features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """The TF-free record features of every kd_jax video dataset."""
  return tfds.features.FeaturesDict({
      "video": tfds.features.Tensor(shape=(), dtype=np.object_),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "video_id": tfds.features.Text(),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
  })


def run_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int,
             desc: str) -> Iterator[Any]:
  """Yields ``fn(job)`` for every job, in order, with a progress bar.

  With ``workers > 1`` the jobs run in a pool of spawned processes (fork is unsafe once JAX or grain
  threads exist in the parent).
  """
  bar = tqdm.tqdm(total=len(jobs), desc=desc, unit="video", dynamic_ncols=True)
  try:
    if workers <= 1:
      for job in jobs:
        yield fn(job)
        bar.update()
      return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
      for result in pool.imap(fn, jobs, chunksize=1):
        yield result
        bar.update()
  finally:
    bar.close()


class VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the kd_jax video builders.

  Subclasses define ``_class_names()``, ``_jobs(dl_manager)`` (split -> list of jobs) and the
  picklable ``_encode_fn()``, a function of one job returning ``(key, example or None, reason)``.
  Set ``num_workers`` on an instance to encode in parallel.
  """

  VERSION = VERSION
  num_workers: int = 1

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.skipped: list[tuple[str, str, str]] = []  # (split, video id, reason)
    self.counts: dict[str, int] = {}

  @abc.abstractmethod
  def _class_names(self) -> Sequence[str]:
    """Class names in label order."""

  @abc.abstractmethod
  def _jobs(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[Any]]:
    """The work of each split; raises ManualDirError when inputs are missing."""

  @abc.abstractmethod
  def _encode_fn(self) -> Callable[[Any], tuple[str, dict | None, str]]:
    """A picklable function job -> (key, example or None, reason for skipping)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=video_features(self._class_names()),
        supervised_keys=("video", "label"),
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split, jobs)
            for split, jobs in self._jobs(dl_manager).items()}

  def _generate_examples(self, split: str, jobs: Sequence[Any]):
    fn = self._encode_fn()
    written = 0
    desc = f"{self.name}/{self.builder_config.name} {split}"
    for key, example, reason in run_jobs(fn, jobs, workers=self.num_workers, desc=desc):
      if example is None:
        self.skipped.append((split, key, reason))
        continue
      written += 1
      yield key, example
    self.counts[split] = written
    if not written:
      raise DatasetError(f"{self.name}: no video of split {split!r} could be decoded: "
                         f"{self.skipped[-1][2] if self.skipped else 'the split is empty'}")

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # Still inside TFDS's temporary directory, which becomes the dataset directory on success.
    write_skipped(os.fspath(self.data_dir), self.skipped)


def write_skipped(directory: str, skipped: Iterable[tuple[str, str, str]]) -> str:
  """Writes the skipped-video list (tab-separated split, video id, reason) and returns its path."""
  path = os.path.join(directory, SKIPPED_FILE)
  with open(path, "w") as f:
    f.write("split\tvideo_id\treason\n")
    for split, key, reason in skipped:
      f.write(f"{split}\t{key}\t{' '.join(reason.split())}\n")
  return path


def read_skipped(directory: str) -> list[tuple[str, str, str]]:
  """Reads the list written by :func:`write_skipped`; empty when there is none."""
  path = os.path.join(directory, SKIPPED_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [line.rstrip("\n").split("\t", 2) for line in f][1:]
  return [tuple(r) for r in rows if len(r) == 3]


def index_files(root: str, suffixes: tuple[str, ...]) -> dict[str, str]:
  """Maps lower-case base names of the files under ``root`` with one of ``suffixes`` to paths.

  Lower-case keys absorb the case mismatches of the official lists (UCF-101's
  ``HandstandPushups/v_HandStandPushups_*``).
  """
  found = {}
  for dirpath, _, filenames in os.walk(root):
    for name in filenames:
      if name.lower().endswith(suffixes):
        found.setdefault(name.lower(), os.path.join(dirpath, name))
  return found


def find_file(root: str, name: str, preferred: str) -> str | None:
  """``root/preferred`` if it exists, else the first file called ``name`` below ``root``."""
  path = os.path.join(root, preferred)
  if os.path.isfile(path):
    return path
  for dirpath, _, filenames in os.walk(root):
    if name in filenames:
      return os.path.join(dirpath, name)
  return None


@dataclasses.dataclass(eq=False, kw_only=True)
class SplitConfig(tfds.core.BuilderConfig):
  """One official train/test split of a manually downloaded dataset.

  Attributes:
    split_number: 1, 2 or 3.
    width, height: frame size of the re-encoded streams (CoViAR: 340 x 256, aspect not kept).
    gop_size: encoder GOP length.
  """

  split_number: int = 1
  width: int = 340
  height: int = 256
  gop_size: int = 12


def split_configs(dataset: str) -> list[SplitConfig]:
  """``split1``, ``split2``, ``split3`` at 340 x 256."""
  return [SplitConfig(name=f"split{n}", split_number=n,
                      description=f"{dataset} official split {n}, re-encoded to 340x256 MPEG-4.")
          for n in (1, 2, 3)]


def reencode_video(job: tuple, *, width: int, height: int, gop_size: int):
  """Re-encodes one source video: ``job = (video_id, path, label)``; skips undecodable ones."""
  video_id, path, label = job
  try:
    data = codec.reencode(path, width=width, height=height, gop_size=gop_size, name=video_id)
    num_frames = codec.CompressedVideo(data, name=video_id).num_frames
  except codec.VideoDecodeError as e:
    return video_id, None, str(e)
  except (ValueError, OSError) as e:  # anything else a broken file can raise in PyAV
    return video_id, None, f"{video_id}: {type(e).__name__}: {e}"
  example = {"video": data, "label": label, "video_id": video_id, "num_frames": num_frames}
  return video_id, example, ""


class SplitVideoBuilder(VideoBuilder, skip_registration=True):
  """Base of the builders of downloaded datasets with official splits (``SplitConfig``).

  Subclasses set ``BUILDER_CONFIGS = split_configs(...)`` and define ``_class_names()`` and
  ``_jobs(dl_manager)``, whose jobs are ``reencode_video``'s: every source video is re-encoded at
  the frame size and GOP length of the chosen split config.
  """

  DEFAULT_BUILDER_CONFIG_NAME = "split1"

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(reencode_video, width=cfg.width, height=cfg.height,
                             gop_size=cfg.gop_size)


VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg")


def manual_dir(dl_manager: tfds.download.DownloadManager, name: str, instructions: str) -> str:
  """The manual directory as a string, or a one-line ManualDirError saying what to put there."""
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError:  # TFDS's way of saying "missing or empty", with a multi-line message
    where = getattr(dl_manager, "_manual_dir", None) or "the manual_dir"
    raise manual_dir_error(name, f"{where} does not exist or is empty (set --manual_dir)",
                           instructions) from None


def manual_dir_error(name: str, problem: str, instructions: str) -> ManualDirError:
  """``'<name>: <problem>; <what to download and where>'`` as one line."""
  return ManualDirError(f"{name}: {problem}; {instructions}")


def locate_videos(name: str, root: str, lists: dict[str, list[tuple[str, int]]],
                  instructions: str, hint: str = "") -> dict[str, list[tuple[str, str, int]]]:
  """Finds every listed video under ``root`` by file name (any sub-directory, any case).

  Args:
    name: dataset name, for messages.
    root: the manual directory.
    lists: split -> [(listed path or file name, label)].
    instructions: what to download and where, for the error message.
    hint: an extra sentence for the error message.

  Returns:
    split -> [(video id, path, label)], the video id being the file name without extension.

  Raises:
    ManualDirError: some listed videos are not there.
  """
  index = index_files(root, VIDEO_SUFFIXES)
  out, missing, total = {}, [], 0
  for split, entries in lists.items():
    jobs = []
    for listed, label in entries:
      base = os.path.basename(listed.replace("\\", "/"))
      total += 1
      path = index.get(base.lower())
      if path is None:
        missing.append(base)
        continue
      jobs.append((os.path.splitext(base)[0], path, label))
    out[split] = jobs
  if missing:
    problem = (f"{len(set(missing))} of {total} videos named in the split lists are not under "
               f"{root} (e.g. {missing[0]}){hint}")
    raise manual_dir_error(name, problem, instructions)
  return out

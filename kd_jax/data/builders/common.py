"""Code shared by the kd_jax TFDS builders: record features, parallel encoding, skipped videos.

Every builder writes array_record files whose records hold only features that TFDS can write and read
without TensorFlow (jax_stack.md section 8.2):

* ``video``: the raw MPEG-4 Part 2 stream (``codec.encode_frames`` / ``codec.reencode``), bytes;
* ``label``: ``ClassLabel`` with the dataset's class names;
* ``video_id``: text (comes back as bytes from a data source);
* ``num_frames``: int32, the number of frames in the stream.

No single video aborts a build. A listed video that is missing or cannot be decoded is skipped; one
that decodes only in part (truncated, concealed corruption) is kept (or skipped, with
``keep_truncated`` off). Each is listed with a short reason of its own (:data:`REASONS`) and its
path in ``skipped_videos.tsv`` inside the prepared dataset directory, and reported by ``prepare``.
Only a split with no usable video at all is an error; ``strict`` restores "any unusable video
aborts".

A build leaves nothing behind when it fails: TFDS writes into a temporary ``VERSION.incomplete*``
folder renamed at the end, and :meth:`VideoBuilder.download_and_prepare` removes the folders it
created around it (and keeps TFDS's download folder out of the data directory).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from etils import epath

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from kd_jax.data import codec

SKIPPED_FILE = "skipped_videos.tsv"
VERSION = tfds.core.Version("1.0.0")
MISSING = "missing"
# The kinds of reason a video is listed with (the text before any detail in parentheses or
# "at frame N"); codec.reencode_checked words all but the first.
REASONS = ("missing", "empty file", "not a video container", "damaged container",
           "no video stream", "no decodable frames", "corrupt stream", "truncated")


class Listed(NamedTuple):
  """A video listed in the summary and in ``skipped_videos.tsv``.

  Attributes:
    split: the split it belongs to.
    video_id: its id in the dataset.
    action: ``skipped`` (not in the records) or ``kept`` (in the records, damaged).
    reason: what is wrong, e.g. ``missing``, ``empty file (0 bytes)``,
      ``truncated (57 of 141 frames)``.
    path: the file (or folder) it was read from; for a missing video, the name the split list
      gives.
  """

  split: str
  video_id: str
  action: str
  reason: str
  path: str = ""


def reason_kind(reason: str) -> str:
  """``'corrupt stream at frame 12'`` -> ``'corrupt stream'``; ``'damaged AVI container ...'`` ->
  ``'damaged container'``: the reason without its details, for counting."""
  kind = re.split(r" \(| at frame | - ", reason, maxsplit=1)[0].strip()
  if kind.startswith("damaged ") and kind.endswith(" container"):
    return "damaged container"
  return kind


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
  picklable ``_encode_fn()``, a function of one job returning ``(key, example or None, reason)``
  or ``(key, example or None, reason, path)``: an example with a reason is usable but damaged
  (e.g. truncated), no example means skipped. Set on an instance:

  * ``num_workers``: encoding processes;
  * ``strict``: a missing or unusable video aborts the build (default: skipped and listed);
  * ``keep_truncated``: keep (default) or skip videos that decode only in part.
  """

  VERSION = VERSION
  num_workers: int = 1
  strict: bool = False
  keep_truncated: bool = True

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.listed: list[Listed] = []
    self.counts: dict[str, int] = {}
    self.notes: list[str] = []  # sentences for the summary, e.g. archives still packed

  @property
  def skipped(self) -> list[tuple[str, str, str]]:
    """(split, video id, reason) of the videos left out."""
    return [(l.split, l.video_id, l.reason) for l in self.listed if l.action == "skipped"]

  @abc.abstractmethod
  def _class_names(self) -> Sequence[str]:
    """Class names in label order."""

  @abc.abstractmethod
  def _jobs(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[Any]]:
    """The work of each split; raises ManualDirError when inputs are missing."""

  @abc.abstractmethod
  def _encode_fn(self) -> Callable[[Any], tuple]:
    """A picklable function job -> (key, example or None, reason[, path])."""

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
    for result in run_jobs(fn, jobs, workers=self.num_workers, desc=desc):
      key, example, reason = result[:3]
      path = result[3] if len(result) > 3 else ""
      if example is not None and reason and not self.keep_truncated:
        example = None  # decodes only in part, and the user wants only complete videos
      if example is None:
        self.listed.append(Listed(split, key, "skipped", reason, path))
        if self.strict:
          raise DatasetError(f"{self.name}: {split} video {key} ({path or 'no path'}): {reason}; "
                             "--strict stops at the first unusable video (without it, such "
                             "videos are skipped and listed)")
        continue
      if reason:
        self.listed.append(Listed(split, key, "kept", reason, path))
      written += 1
      yield key, example
    self.counts[split] = written
    if not written:
      raise self._nothing_usable(split)

  def _nothing_usable(self, split: str) -> DatasetError:
    """The error of a split without one usable video: why, per reason, with an example."""
    skipped = [l for l in self.listed if l.split == split and l.action == "skipped"]
    if not skipped:
      return DatasetError(f"{self.name}: split {split!r} lists no video")
    why = _count_kinds(skipped)
    first = skipped[0]
    message = (f"{self.name}: no video of split {split!r} is usable ({why}; e.g. "
               f"{first.path or first.video_id}: {first.reason})")
    instructions = getattr(self, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if instructions and all(l.reason == MISSING for l in skipped):
      return ManualDirError(f"{message}; {instructions}")
    return DatasetError(message)

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # Still inside TFDS's temporary directory, which becomes the dataset directory on success.
    write_skipped(os.fspath(self.data_dir), self.listed)

  def download_and_prepare(self, *, download_dir=None, **kwargs):
    """TFDS's, leaving nothing behind on failure.

    TFDS writes the dataset into ``VERSION.incomplete*`` and renames it at the end; it also creates
    the folders around it (``NAME/CONFIG/``, ``NAME/.config/``) and ``DATA_DIR/downloads/`` before
    anything is generated. Those that did not exist are removed again when the build fails, and
    the downloads folder (kd_jax datasets download nothing) is a temporary one unless given.
    """
    version_dir = epath.Path(self.data_dir)
    created = [d for d in (version_dir.parent, version_dir.parent.parent,
                           epath.Path(self.data_dir_root)) if not d.exists()]
    scratch = None
    if download_dir is None:
      scratch = download_dir = tempfile.mkdtemp(prefix="kd_jax_prepare_")
    try:
      super().download_and_prepare(download_dir=download_dir, **kwargs)
    except BaseException:
      for d in created:  # deepest first
        _remove_leftover(d)
      raise
    finally:
      if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)

  def is_prepared(self) -> bool:
    # TFDS logs "Variant folder ... has no dataset_info.json" for a folder that is not there yet,
    # i.e. on every first use; that is not the user's business.
    return epath.Path(self.data_dir).exists() and super().is_prepared()

  def _log_download_bytes(self) -> None:
    pass  # TFDS's "Downloading and preparing dataset Unknown size ...": kd_jax downloads nothing

  def _log_download_done(self) -> None:
    pass  # prepare prints its own summary


def _remove_leftover(directory: epath.Path) -> None:
  """Removes a folder a failed build created if it holds nothing but TFDS's bookkeeping."""
  def only_bookkeeping(folder: epath.Path) -> bool:
    for path in folder.iterdir():  # no rglob: epath refuses "**" (GCS cost); these trees are tiny
      if path.is_dir():
        if not only_bookkeeping(path):
          return False
      elif path.name != "metadata.json" or path.parent.name != ".config":
        return False
    return True

  if directory.exists() and only_bookkeeping(directory):
    directory.rmtree()


def write_skipped(directory: str, listed: Iterable[Listed | tuple]) -> str:
  """Writes the list of skipped and damaged videos and returns its path.

  Tab-separated columns ``split, video_id, action, reason, path``; ``action`` is ``skipped`` or
  ``kept``. Plain ``(split, video id, reason)`` tuples are skipped videos.
  """
  path = os.path.join(directory, SKIPPED_FILE)
  with open(path, "w") as f:
    f.write("split\tvideo_id\taction\treason\tpath\n")
    for row in listed:
      row = row if isinstance(row, Listed) else Listed(row[0], row[1], "skipped", row[2])
      fields = [" ".join(str(v).split()) for v in row]
      f.write("\t".join(fields) + "\n")
  return path


def read_listed(directory: str) -> list[Listed]:
  """Reads the list written by :func:`write_skipped` (also the older three-column one)."""
  path = os.path.join(directory, SKIPPED_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line.rstrip("\n") for line in f]
  if not lines:
    return []
  old = lines[0].split("\t") == ["split", "video_id", "reason"]
  out = []
  for line in lines[1:]:
    if old:
      row = line.split("\t", 2)
      if len(row) == 3:
        out.append(Listed(row[0], row[1], "skipped", row[2]))
    else:
      row = line.split("\t", 4)
      if len(row) >= 4:
        out.append(Listed(*row[:4], row[4] if len(row) > 4 else ""))
  return out


def read_skipped(directory: str) -> list[tuple[str, str, str]]:
  """(split, video id, reason) of the skipped videos listed by :func:`write_skipped`."""
  return [(l.split, l.video_id, l.reason) for l in read_listed(directory)
          if l.action == "skipped"]


def _count_kinds(rows: Iterable[Listed]) -> str:
  """``'2 missing, 1 truncated'``: most frequent first, then by name."""
  counts = collections.Counter(reason_kind(l.reason) for l in rows)
  return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kn: (-kn[1], kn[0])))


def summarize(listed: Iterable[Listed], counts: dict[str, int]) -> list[str]:
  """Per split: ``train: 5 videos; skipped 2 (1 missing, 1 empty file); kept damaged 1 (...)``."""
  listed = list(listed)
  lines = []
  for split, n in counts.items():
    line = f"{split}: {n} videos"
    for action, label in (("skipped", "skipped"), ("kept", "kept damaged")):
      rows = [l for l in listed if l.split == split and l.action == action]
      if rows or action == "skipped":
        line += f"; {label} {len(rows)}" + (f" ({_count_kinds(rows)})" if rows else "")
    lines.append(line)
  return lines


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
  """Re-encodes one source video: ``job = (video_id, path, label[, listed name])``.

  Returns ``(video_id, example or None, reason, path)``: no example for a missing (path None) or
  undecodable video, an example and a reason (``truncated (57 of 141 frames)``) for one that
  decodes only in part, reason ``''`` for a complete one.
  """
  video_id, path, label = job[:3]
  if path is None:
    return video_id, None, MISSING, job[3] if len(job) > 3 else ""
  try:
    result = codec.reencode_checked(path, width=width, height=height, gop_size=gop_size,
                                    name=video_id)
    num_frames = codec.CompressedVideo(result.data, name=video_id).num_frames
  except codec.VideoDecodeError as e:
    return video_id, None, e.reason, path
  except (ValueError, OSError) as e:  # anything else a broken file can raise in PyAV
    return video_id, None, f"unreadable ({type(e).__name__})", path
  example = {"video": result.data, "label": label, "video_id": video_id, "num_frames": num_frames}
  return video_id, example, result.problem, path


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
                  instructions: str, hint: str = "", *, strict: bool = False
                  ) -> dict[str, list[tuple]]:
  """Finds every listed video under ``root`` by file name (any sub-directory, any case).

  Args:
    name: dataset name, for messages.
    root: the manual directory.
    lists: split -> [(listed path or file name, label)].
    instructions: what to download and where, for the error message.
    hint: an extra sentence for the error message.
    strict: a missing video is an error; otherwise it becomes a job without a path (skipped and
      listed as ``missing`` when encoding).

  Returns:
    split -> [(video id, path or None, label, listed name)], the video id being the file name
    without extension.

  Raises:
    ManualDirError: some listed videos are not there and ``strict`` is on, or none of a split's
      is there (found before hours of encoding the other splits).
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
        if strict:
          continue
      jobs.append((os.path.splitext(base)[0], path, label, listed))
    out[split] = jobs
  if missing and (strict or len(missing) == total):
    problem = (f"{len(set(missing))} of {total} videos named in the split lists are not under "
               f"{root} (e.g. {missing[0]}){hint}")
    raise manual_dir_error(name, problem, instructions)
  check_some_present(name, root, out, instructions, hint)
  return out


def check_some_present(name: str, root: str, jobs: dict[str, list[tuple]], instructions: str,
                       hint: str = "") -> None:
  """Raises a ManualDirError when every listed video of a split is missing (path None)."""
  for split, split_jobs in jobs.items():
    if split_jobs and all(job[1] is None for job in split_jobs):
      problem = (f"none of the {len(split_jobs)} videos of split {split!r} is under {root} "
                 f"(e.g. {split_jobs[0][3]}){hint}")
      raise manual_dir_error(name, problem, instructions)

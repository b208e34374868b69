"""Prepares one kd_jax dataset: ``python -m kd_jax.data.prepare NAME[/CONFIG] [options]``.

Examples::

  python -m kd_jax.data.prepare synthetic_actions --data_dir ~/tensorflow_datasets
  python -m kd_jax.data.prepare ucf101/split1 --manual_dir ~/downloads/ucf101 --workers 8
  python -m kd_jax.data.prepare hmdb51/split2 --manual_dir ~/downloads/hmdb51
  python -m kd_jax.data.prepare thumos14 --manual_dir ~/downloads/thumos14 --workers 8
  python -m kd_jax.data.prepare synthetic_actions/c12_24x12_f24_48x64   # a sized synthetic copy

Writes array_record files under ``DATA_DIR/NAME/CONFIG/1.0.0/``, shows a progress bar per split and
ends with a summary. ``DATA_DIR`` is ``--data_dir``, else ``$KD_JAX_DATA_DIR``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.

No single video aborts a build: a listed video that is missing or cannot be decoded is skipped, one
that decodes only in part (truncated) is kept (``--truncated skip`` leaves it out); each is listed
with its own reason (``missing``, ``empty file (0 bytes)``, ``not a video container``,
``no decodable frames``, ``corrupt stream at frame N``, ``truncated (57 of 141 frames)``) and path
in the summary and in ``skipped_videos.tsv`` next to the records. Only a split without one usable
video is an error; ``--strict`` makes any unusable video one. A missing or incomplete manual_dir
ends in one line saying what to download and where to put it (exit status 1), and a failed build
leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds

from kd_jax.data import builders
from kd_jax.data.builders import common

# Datasets generated here, without a download: the only ones a method may prepare on first use.
GENERATED = ("synthetic_actions", "synthetic_detection", "synthetic_actions_flow")
# Where the data directory comes from when none is given, in order (then ~/tensorflow_datasets).
DATA_DIR_VARIABLES = ("KD_JAX_DATA_DIR", "TFDS_DATA_DIR")
# The config names of sized synthetic_actions copies (see synthetic_config_name).
_SIZED = re.compile(r"c(\d+)_(\d+)x(\d+)_f(\d+)_(\d+)x(\d+)(?:_s(\d+))?")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m kd_jax.data.prepare",
      description="Build a kd_jax video dataset (TFDS array_record, no TensorFlow).")
  p.add_argument("name", help=f"dataset, optionally NAME/CONFIG; one of {', '.join(builders.NAMES)}"
                 " (configs: synthetic_actions/default|tiny or a size such as"
                 " synthetic_actions/c12_24x12_f24_48x64 (classes, train x test clips per class,"
                 " frames, height x width, optional _s{seed}), ucf101|hmdb51/split1|split2|split3;"
                 " the _flow datasets take the same configs)")
  p.add_argument("--manual_dir", default=None,
                 help="where the official downloads are extracted (ucf101, hmdb51, thumos14)")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data directory (default $KD_JAX_DATA_DIR, else $TFDS_DATA_DIR, else "
                 "~/tensorflow_datasets)")
  p.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
  p.add_argument("--overwrite", action="store_true", help="rebuild even if already prepared")
  p.add_argument("--strict", action="store_true",
                 help="stop at the first listed video that is missing or cannot be decoded "
                 "(default: skip it, list it with the reason, and go on)")
  p.add_argument("--truncated", choices=("keep", "skip"), default="keep",
                 help="videos that decode only in part (fewer frames than the container "
                 "declares, or corrupt frames the decoder concealed): keep what decodes "
                 "(default) or skip them; listed either way")
  return p


def resolve_data_dir(data_dir: str | None = None) -> str | None:
  """The data directory: ``data_dir`` if given, else ``$KD_JAX_DATA_DIR``, else ``$TFDS_DATA_DIR``,
  else None (TFDS's ``~/tensorflow_datasets``); ``~`` expanded."""
  for value in (data_dir, *(os.environ.get(v) for v in DATA_DIR_VARIABLES)):
    if value:
      return os.path.expanduser(value)
  return None


def prepare(name: str, *, manual_dir: str | None = None, data_dir: str | None = None,
            workers: int = 1, overwrite: bool = False, strict: bool = False,
            keep_truncated: bool = True) -> dict:
  """Builds one dataset and returns a summary.

  Args:
    name: ``NAME`` or ``NAME/CONFIG``.
    manual_dir: where the downloads are extracted; default ``DATA_DIR/downloads/manual`` (TFDS's).
    data_dir: the data directory (default: :func:`resolve_data_dir`).
    workers: encoding processes.
    overwrite: build again even if prepared.
    strict: a listed video that is missing or cannot be decoded aborts the build.
    keep_truncated: keep the videos that decode only in part (listed either way).

  Returns:
    ``{'path', 'counts': {split: n}, 'skipped': [(split, video_id, reason)],
    'listed': [common.Listed], 'notes': [str], 'seconds', 'already_prepared'}``.

  Raises:
    DatasetError: unknown dataset or config, a missing or incomplete manual_dir, a split without
      one usable video, or (``strict``) any unusable video; the message says what to do.
  """
  builder = get_builder(name, data_dir=resolve_data_dir(data_dir))
  path = os.fspath(builder.data_dir)
  if builder.is_prepared() and not overwrite:
    listed = common.read_listed(path)
    return {"path": path, "already_prepared": True, "seconds": 0.0,
            "counts": {k: v.num_examples for k, v in builder.info.splits.items()},
            "skipped": common.read_skipped(path), "listed": listed, "notes": []}
  builder.num_workers = max(1, workers)
  builder.strict = bool(strict)
  builder.keep_truncated = bool(keep_truncated)
  if manual_dir:
    manual_dir = os.path.expanduser(manual_dir)
  elif builder.name not in GENERATED:
    # TFDS's default, named here: the download folder the builder gets is a temporary one.
    manual_dir = os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
  config = tfds.download.DownloadConfig(
      manual_dir=manual_dir,
      download_mode=(tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
                     else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  start = time.time()
  tfds.disable_progress_bar()  # ours (one bar per split, in VideoBuilder) is enough
  builder.download_and_prepare(download_config=config)
  return {"path": path, "already_prepared": False, "seconds": time.time() - start,
          "counts": dict(builder.counts), "skipped": list(builder.skipped),
          "listed": list(builder.listed), "notes": list(builder.notes)}


def synthetic_config_name(*, num_classes: int, train_clips: int, test_clips: int,
                          num_frames: int, height: int, width: int, seed: int = 0) -> str:
  """``c{classes}_{train}x{test}_f{frames}_{h}x{w}``, plus ``_s{seed}`` when the seed is not 0.

  The name is the cache key of a prepared copy: the same size (and seed) reuses the same files, so
  it must not change, or users' prepared data would be generated again under a new name. The seed
  joins it only when not the default, which keeps the names prepared before seeds existed.
  """
  name = f"c{num_classes}_{train_clips}x{test_clips}_f{num_frames}_{height}x{width}"
  return name if seed == 0 else f"{name}_s{seed}"


def synthetic_builder(*, num_classes: int, train_clips: int, test_clips: int, num_frames: int,
                      height: int, width: int, seed: int = 0, data_dir: str | None = None,
                      flow: bool = False, flow_method: str | None = None):
  """A ``synthetic_actions`` builder of any size, its config named by :func:`synthetic_config_name`.

  Methods that ask for the same size share one prepared copy (the name is the cache key).
  ``flow``: the ``synthetic_actions_flow`` builder of that size (the clips' optical flow),
  computed with ``flow_method`` (None: ``$KD_JAX_FLOW_METHOD``, else TV-L1).
  """
  from kd_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from kd_jax.data.builders import synthetic_actions as sa  # pylint: disable=g-import-not-at-top
  name = synthetic_config_name(num_classes=num_classes, train_clips=train_clips,
                               test_clips=test_clips, num_frames=num_frames, height=height,
                               width=width, seed=seed)
  try:
    spec = synthetic.SyntheticSpec(num_classes=num_classes, num_frames=num_frames, height=height,
                                   width=width)
  except ValueError as e:
    raise common.DatasetError(f"synthetic_actions/{name}: {e}") from None
  config = sa.SyntheticActionsConfig(
      name=name, description="kd_jax quickstart size", spec=spec, train_clips=train_clips,
      test_clips=test_clips, seed=seed)
  if flow:
    from kd_jax.data.builders import flow as flow_builders  # pylint: disable=g-import-not-at-top
    return flow_builders.SyntheticActionsFlow(config=config, data_dir=data_dir,
                                              file_format="array_record", flow_method=flow_method)
  return sa.SyntheticActions(config=config, data_dir=data_dir, file_format="array_record")


def get_builder(name: str, *, data_dir: str | None = None, flow_method: str | None = None):
  """``builders.get_builder``, plus the sized ``synthetic_actions`` configs the methods generate.

  So that the command in a "not prepared" message (:func:`command`) prepares exactly the copy a
  method asked for, e.g. ``synthetic_actions/c12_24x12_f24_48x64``. ``flow_method``: the optical
  flow method of a ``*_flow`` dataset's builder (None: its default).
  """
  base, config = builders.split_name(name)
  sized = (_SIZED.fullmatch(config or "") if base in ("synthetic_actions", "synthetic_actions_flow")
           else None)
  flow = base.endswith("_flow")
  if sized is None:
    extra = {"flow_method": flow_method} if flow and flow_method else {}
    return builders.get_builder(name, data_dir=data_dir, **extra)
  c, tr, te, f, h, w, seed = sized.groups()
  return synthetic_builder(num_classes=int(c), train_clips=int(tr), test_clips=int(te),
                           num_frames=int(f), height=int(h), width=int(w), seed=int(seed or 0),
                           data_dir=data_dir, flow=flow, flow_method=flow_method)


def command(builder) -> str:
  """The command line that prepares ``builder``'s dataset where the builder looks for it.

  Datasets that need a download get ``--manual_dir DIR (see docs/data.md)``.
  """
  cmd = (f"python -m kd_jax.data.prepare {builder.name}/{builder.builder_config.name} "
         f"--data_dir {builder.data_dir_root}")
  if builder.name not in GENERATED:
    cmd += " --manual_dir DIR (see docs/data.md)"
  return cmd


def generate(builder, *, workers: int = 1) -> None:
  """Generates a dataset of :data:`GENERATED` now, with a note that it happens once.

  The caller makes sure that only one process writes (several would race on the files).
  """
  if builder.name not in GENERATED:
    raise common.DatasetError(f"{builder.name} is not prepared in {builder.data_dir_root}; run: "
                              f"{command(builder)}")
  print(f"Preparing {builder.name}/{builder.builder_config.name} in {builder.data_dir_root} "
        "(first use only) ...", flush=True)
  builder.num_workers = max(1, workers)
  tfds.disable_progress_bar()  # ours (one bar per split, in VideoBuilder) is enough
  builder.download_and_prepare()


def ensure_prepared(builder, *, workers: int = 1) -> bool:
  """Prepares a generated dataset (``synthetic_actions``) unless it already is; True if it did.

  Single-process only (several processes would race on the files): a multi-host run prepares
  through ``kd_jax.data.sources.open_splits`` or first with this module's command line. Datasets
  with a manual download are never prepared here.

  Raises:
    DatasetError: the dataset needs a manual download, or several processes are running; the
      message has the command to run.
  """
  if builder.is_prepared():
    return False
  import jax  # pylint: disable=g-import-not-at-top
  if builder.name in GENERATED and jax.process_count() > 1:
    raise common.DatasetError(f"prepare {builder.name} before a multi-host run: {command(builder)}")
  generate(builder, workers=workers)
  return True


def format_summary(name: str, summary: dict) -> str:
  """The summary printed at the end of ``prepare``."""
  counts = ", ".join(f"{split} {n}" for split, n in summary["counts"].items())
  skipped = summary["skipped"]
  listed = summary.get("listed")
  if listed is None:
    listed = [common.Listed(s, v, "skipped", r) for s, v, r in skipped]
  verb = "already prepared" if summary["already_prepared"] else f"prepared in {summary['seconds']:.1f} s"
  lines = [f"{name}: {verb} at {summary['path']}",
           f"  videos: {counts}; skipped: {len(skipped)}"]
  if listed:
    lines += [f"  {line}" for line in common.summarize(listed, summary["counts"])]
  lines += [f"  note: {note}" for note in summary.get("notes", ())]
  if listed:
    where = os.path.join(summary["path"], common.SKIPPED_FILE)
    lines.append(f"  listed videos (split, id, action, reason, path; also in {where}):")
    lines += ["    " + "\t".join(row) for row in listed]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    summary = prepare(args.name, manual_dir=args.manual_dir, data_dir=args.data_dir,
                      workers=args.workers, overwrite=args.overwrite, strict=args.strict,
                      keep_truncated=args.truncated == "keep")
  except common.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(format_summary(args.name, summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Opens a prepared dataset for a method: the builder, the train and eval sources, the class names.

Every method opens its data with :func:`open_splits`, so that they agree on how a dataset is named,
when it is generated and what an error says::

  from kd_jax.data import sources
  opened = sources.open_splits("ucf101", "split1", data_dir="~/tensorflow_datasets",
                               train_split="train", eval_split="test")
  opened.train[0]  # {'video': bytes, 'label': int, 'video_id': bytes, 'num_frames': int}

A ``synthetic_actions`` dataset (a named config, or any size given as ``synthetic``) is generated
on first use when ``auto_prepare`` is on. With several processes, process 0 generates it while the
others wait at a barrier, and then every process reopens it: ``data_dir`` must be storage that all
hosts share (a bucket, NFS). Datasets with a manual download are never prepared here.

Every method's ``config.data`` block starts from :func:`data_config` (the fields they share, one
naming) and :func:`open_data_config` opens it.

Problems raise :class:`kd_jax.data.builders.common.DatasetError` with one line that says what to do:
the ``python -m kd_jax.data.prepare`` command (with ``--manual_dir`` where a download is needed),
or, for a missing split, the splits there are and the config field to set. The messages name the
config fields the methods share (``config.data.auto_prepare``, ``config.data.train_split`` and
``eval_split``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
from jax.experimental import multihost_utils
import ml_collections

from kd_jax.data import builders
from kd_jax.data import prepare
from kd_jax.data.builders.common import DatasetError

# The fields of a synthetic_actions size (``seed`` may be left out: 0).
SYNTHETIC_FIELDS = ("num_classes", "train_clips", "test_clips", "num_frames", "height", "width")
DEFAULT_SPLIT_FIELDS = ("config.data.train_split", "config.data.eval_split")


class Splits(NamedTuple):
  """An opened dataset.

  Attributes:
    builder: the TFDS builder (``info``, ``data_dir``).
    train, eval: random-access sources (``len``, ``__getitem__`` -> dict of numpy values), as
      ``kd_jax.data.pipeline`` takes them.
    class_names: class names in label order.
  """

  builder: Any
  train: Any
  eval: Any
  class_names: list[str]

  @property
  def name(self) -> str:
    """``NAME/CONFIG``, e.g. ``ucf101/split1`` or ``synthetic_actions/c12_24x12_f24_48x64``."""
    return f"{self.builder.name}/{self.builder.builder_config.name}"

  @property
  def description(self) -> str:
    """``NAME/CONFIG: N train / M eval videos, K classes``, as the methods print it."""
    return (f"{self.name}: {len(self.train)} train / {len(self.eval)} eval videos, "
            f"{len(self.class_names)} classes")


def data_config(**fields: Any) -> ml_collections.ConfigDict:
  """A method's ``config.data``: the fields every method shares, at these defaults, with ``fields``
  set or added (a method's own, e.g. ``clip_len``); ``synthetic`` may be given as a dict."""
  data = ml_collections.ConfigDict(dict(
      name="synthetic_actions",  # one of kd_jax.data.builders.NAMES
      config="",             # builder config: split1-3 (ucf101, hmdb51), default / tiny, or
                             # 'custom' (a synthetic_actions of the size in `synthetic`)
      data_dir="",           # TFDS data dir; '' = ~/tensorflow_datasets
      auto_prepare=False,    # generate a synthetic_actions dataset on first use (downloads never)
      prepare_workers=2,     # encoding processes when generating
      train_split="train",
      eval_split="test",     # TFDS split strings ("train[:10%]") work too
      crop_size=224,
      resize_size=256,       # eval: resize to this square, then centre-crop; 0 = crop as stored
      flip="auto",           # random horizontal flips in training: auto (off for
                             # direction-sensitive datasets), on or off
      # Two switches of CoViAR's single-modality loader (compressed videos, sampling 'coviar';
      # every other loader permutes and never jitters; kd_jax.data.pipeline.ClipSpec):
      iframe_color_jitter="off",  # HLS jitter of I-frames: off, train, or train_and_test (the
                                  # official dataset.py jitters at test time too)
      train_order="permutation",  # training videos: permutation (each once an epoch) or
                                  # with_replacement (official: random.choice(video_list))
      augment="host",        # compressed videos: crops, flips, normalisation on the host, or on
                             # the accelerator inside jit ('device': the loader only decodes;
                             # kd_jax.data.device_augment, docs/data.md)
      holdout=0.1,           # share of training videos held out for config.selection='best_val'
                             # (the same videos for every seed; kd_jax.data.holdout)
      num_workers=0,         # grain worker processes; 0 = decode in the main process
      read_threads=2,        # threads per worker computing batches
  ))
  data.synthetic = ml_collections.ConfigDict(dict(
      num_classes=12, train_clips=24, test_clips=12, num_frames=24, height=48, width=64))
  for key, value in fields.items():
    data[key] = ml_collections.ConfigDict(value) if key == "synthetic" else value
  return data


def open_data_config(data: Any, *, sized: bool) -> Splits:
  """:func:`open_splits` of a method's ``config.data`` block (fields ``name``, ``config``,
  ``data_dir``, ``synthetic``, ``auto_prepare``, ``prepare_workers``, ``train_split``,
  ``eval_split``); ``sized``: a ``synthetic_actions`` of the size in ``data.synthetic``."""
  return open_splits(
      data.name, data.config, data_dir=config_data_dir(data.data_dir),
      synthetic=data.synthetic.to_dict() if sized else None, auto_prepare=data.auto_prepare,
      prepare_workers=data.prepare_workers, train_split=data.train_split,
      eval_split=data.eval_split)


def config_data_dir(value: str) -> str:
  """The data directory of ``config.data.data_dir``, after the environment.

  Precedence: ``--config.data.data_dir`` on ``kd_jax.main``'s command line, then
  ``$KD_JAX_DATA_DIR``, then ``$TFDS_DATA_DIR``, then the config file's value ('' =
  ``~/tensorflow_datasets``). Outside ``kd_jax.main`` (a program building its own config) a
  non-empty value counts as given, as an explicit ``open_splits(data_dir=...)`` does.
  """
  overrides = _command_line_overrides()
  given = "data.data_dir" in overrides if overrides is not None else bool(value)
  if given:
    return value
  return prepare.resolve_data_dir(None) or value


def _command_line_overrides() -> set[str] | None:
  """The fields given as ``--config.FIELD=...`` to ``kd_jax.main``; None without its config flag."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    flag = flags.FLAGS["config"]
  except KeyError:
    return None
  overrides = getattr(flag, "override_values", None) if flag.present else None
  return set(overrides) if isinstance(overrides, Mapping) else None


def parse_flip(value: str) -> bool | None:
  """``config.data.flip``: 'auto' (the dataset decides: None), 'on' or 'off'."""
  if value not in ("auto", "on", "off"):
    raise DatasetError(f"config.data.flip must be auto, on or off, got {value!r}")
  return {"auto": None, "on": True, "off": False}[value]


def open_splits(name: str, config: str | None = None, *, data_dir: str | None = None,
                synthetic: Mapping[str, int] | None = None, auto_prepare: bool = False,
                prepare_workers: int = 1, train_split: str = "train", eval_split: str = "test",
                split_fields: tuple[str, str] | None = DEFAULT_SPLIT_FIELDS) -> Splits:
  """Opens the train and eval splits of a prepared dataset, generating synthetic data if asked.

  Args:
    name: dataset name, one of ``kd_jax.data.builders.NAMES``.
    config: builder config (``split1``, ``tiny``, ...); empty or None for the default one; ignored
      when ``synthetic`` is given.
    data_dir: TFDS data directory; empty or None for ``$KD_JAX_DATA_DIR``, else
      ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``; ``~`` is expanded.
    synthetic: a ``synthetic_actions`` size (keys ``num_classes``, ``train_clips``, ``test_clips``,
      ``num_frames``, ``height``, ``width``, optional ``seed``), stored under the config name
      ``prepare.synthetic_config_name`` gives it; None for a named config.
    auto_prepare: generate a ``synthetic_actions`` dataset that is not prepared yet.
    prepare_workers: encoding processes when generating.
    train_split, eval_split: split names (TFDS slicing such as ``train[:50%]`` works too).
    split_fields: the config fields that hold ``train_split`` and ``eval_split``, named in the
      message about a missing split; None where a method fixes the split names itself.

  Returns:
    The builder, both sources and the class names.

  Raises:
    DatasetError: unknown dataset, config or synthetic size; a dataset that is not prepared (and
      may not be generated here); a missing split. One line, saying what to do.
  """
  data_dir = prepare.resolve_data_dir(data_dir)
  make = _builder_factory(name, config, data_dir, synthetic)
  builder = make()
  if auto_prepare and builder.name in prepare.GENERATED:
    builder = _generate_once(make, builder, workers=int(prepare_workers))
  elif not builder.is_prepared():
    hint = (" (or set --config.data.auto_prepare=True to generate it on first use)"
            if builder.name in prepare.GENERATED else "")
    raise DatasetError(f"{builder.name}/{builder.builder_config.name} is not prepared in "
                       f"{builder.data_dir_root}; run: {prepare.command(builder)}{hint}")
  fields = split_fields or (None, None)
  train = _source(builder, train_split, fields[0])
  evaluation = _source(builder, eval_split, fields[1])
  return Splits(builder, train, evaluation, list(builder.info.features["label"].names))


def _builder_factory(name: str, config: str | None, data_dir: str | None,
                     synthetic: Mapping[str, int] | None) -> Callable[[], Any]:
  """A function making the builder (called again after another process has prepared the data)."""
  if synthetic is None:
    full = f"{name}/{config}" if config else name
    return lambda: builders.get_builder(full, data_dir=data_dir)
  if name != "synthetic_actions":
    raise DatasetError(f"a synthetic size applies to synthetic_actions only, not {name}")
  size = dict(synthetic)
  unknown = sorted(set(size) - set(SYNTHETIC_FIELDS) - {"seed"})
  missing = [k for k in SYNTHETIC_FIELDS if k not in size]
  if unknown or missing:
    raise DatasetError(f"synthetic_actions size: unknown fields {unknown}, missing {missing}; "
                       f"give {', '.join(SYNTHETIC_FIELDS)} and optionally seed")
  size = {k: int(v) for k, v in size.items()}
  return lambda: prepare.synthetic_builder(**size, data_dir=data_dir)


def _generate_once(make: Callable[[], Any], builder, *, workers: int):
  """Prepares a generated dataset once for all processes; returns a builder that sees it."""
  if jax.process_count() == 1:
    prepare.ensure_prepared(builder, workers=workers)
    return builder
  # Every process enters the barrier, whatever it finds on disk: with shared storage, a late
  # process can already see the files that process 0 wrote, and skipping the barrier then would
  # leave process 0 waiting for it forever.
  error = None
  if jax.process_index() == 0 and not builder.is_prepared():
    try:
      prepare.generate(builder, workers=workers)
    except Exception as e:  # pylint: disable=broad-except
      error = e  # raised after the barrier, so that the other processes are not left waiting
  multihost_utils.sync_global_devices(
      f"kd_jax.data.sources:{builder.name}/{builder.builder_config.name}")
  if error is not None:
    raise error
  # A builder made before the files existed holds no split information: make it again.
  builder = make()
  if not builder.is_prepared():
    raise DatasetError(
        f"{builder.name}/{builder.builder_config.name} is not in {builder.data_dir_root} on "
        f"process {jax.process_index()} after process 0 prepared it (or failed to, see its log); "
        f"use a data_dir all hosts share, or run on every host first: {prepare.command(builder)}")
  return builder


def _source(builder, split: str, field: str | None):
  """``builder.as_data_source(split)``; a missing split is a one-line DatasetError."""
  available = list(builder.info.splits)
  fix = (f"set {field} to one of them" if field
         else "this method reads fixed split names; use a dataset that has them")
  where = f"{builder.name}/{builder.builder_config.name}"
  # TFDS split strings may slice and join ("train[:50%]", "train+test"): check the base names.
  bases = [part.split("[", 1)[0].strip() for part in split.split("+")]
  unknown = [b for b in bases if b not in available]
  if unknown:
    asked = f" (asked for {split!r})" if split != unknown[0] else ""
    raise DatasetError(f"{where} has no split {unknown[0]!r}{asked}; its splits are "
                       f"{', '.join(available)}; {fix}")
  try:
    return builder.as_data_source(split=split)
  except (KeyError, ValueError) as e:
    # TFDS explains a bad slice on several lines; the first says what is wrong.
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DatasetError(f"{where}: bad split {split!r} ({reason}); its splits are "
                       f"{', '.join(available)}; {fix}") from None

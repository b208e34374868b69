"""TFDS builders of kd_jax's video datasets (array_record, no TensorFlow).

Names: ``synthetic_actions`` (configs ``default``, ``tiny``), ``ucf101`` and ``hmdb51`` (configs
``split1``, ``split2``, ``split3``; manual download); ``something_something_v2``, ``jester``,
``kinetics400`` (config ``default``; manual download); ``thumos14`` (temporal detection, config
``default``; manual download) and ``synthetic_detection`` (configs ``default``, ``small``,
``tiny``). The builders do not register themselves with TFDS (its own, TensorFlow-only ``ucf101``
would clash); reach them through :func:`get_builder`, or read a prepared dataset with
``tfds.data_source('NAME/CONFIG', split=..., data_dir=...)`` or :func:`data_source`.
"""

from __future__ import annotations

import importlib

import tensorflow_datasets as tfds

from kd_jax.data.builders.common import DatasetError

_BUILDERS = {
    "synthetic_actions": ("kd_jax.data.builders.synthetic_actions", "SyntheticActions"),
    "ucf101": ("kd_jax.data.builders.ucf101", "Ucf101"),
    "hmdb51": ("kd_jax.data.builders.hmdb51", "Hmdb51"),
    "something_something_v2": ("kd_jax.data.builders.something_something_v2",
                               "SomethingSomethingV2"),
    "jester": ("kd_jax.data.builders.jester", "Jester"),
    "kinetics400": ("kd_jax.data.builders.kinetics400", "Kinetics400"),
    # Optical flow (two-stream I3D), the RGB dataset's configs: kd_jax.data.builders.flow.
    "ucf101_flow": ("kd_jax.data.builders.flow", "Ucf101Flow"),
    "hmdb51_flow": ("kd_jax.data.builders.flow", "Hmdb51Flow"),
    "synthetic_actions_flow": ("kd_jax.data.builders.flow", "SyntheticActionsFlow"),
    "thumos14": ("kd_jax.data.builders.thumos14", "Thumos14"),
    "synthetic_detection": ("kd_jax.data.builders.synthetic_detection", "SyntheticDetection"),
}
NAMES = tuple(_BUILDERS)


def builder_class(name: str) -> type:
  """The builder class of a dataset name (without config)."""
  if name not in _BUILDERS:
    raise DatasetError(f"unknown dataset {name!r}; kd_jax datasets are {', '.join(NAMES)}")
  module, cls = _BUILDERS[name]
  return getattr(importlib.import_module(module), cls)


def split_name(name: str) -> tuple[str, str | None]:
  """``'ucf101/split2'`` -> ``('ucf101', 'split2')``; no config -> ``(name, None)``."""
  base, _, config = name.partition("/")
  return base, config or None


def get_builder(name: str, *, data_dir: str | None = None, config=None, **kwargs):
  """A builder for ``NAME`` or ``NAME/CONFIG``, writing array_record files under ``data_dir``.

  Args:
    name: dataset name, optionally with ``/CONFIG``.
    data_dir: TFDS data directory (default ``~/tensorflow_datasets``).
    config: a config name or ``BuilderConfig`` object; overrides the one in ``name``.
    **kwargs: the builder's own arguments (e.g. ``flow_method`` of the ``*_flow`` builders).
  """
  base, config_name = split_name(name)
  cls = builder_class(base)
  config = config if config is not None else config_name
  known = [c.name for c in cls.BUILDER_CONFIGS]
  if isinstance(config, str) and config not in known:
    raise DatasetError(f"{base} has no config {config!r}; choose one of {', '.join(known)}")
  return cls(config=config, data_dir=data_dir, file_format="array_record", **kwargs)


def data_source(name: str, split: str, *, data_dir: str | None = None):
  """The random-access source (``len``, ``__getitem__`` -> dict of numpy values) of a prepared split.

  Raises:
    FileNotFoundError: the dataset has not been prepared, with the command that prepares it.
  """
  builder = get_builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{name} is not prepared in {builder.data_dir}; run: python -m kd_jax.data.prepare "
        f"{builder.name}/{builder.builder_config.name} --data_dir {builder.data_dir_root}")
  return builder.as_data_source(split=split)


def info(name: str, *, data_dir: str | None = None) -> tfds.core.DatasetInfo:
  """The DatasetInfo of a dataset (class names, split sizes once prepared)."""
  return get_builder(name, data_dir=data_dir).info

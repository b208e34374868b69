"""The engine's config blocks, for config files to include, and the parsing of a config's variant."""

from __future__ import annotations

import importlib.util
import os
import types
from collections.abc import Collection, Mapping
from typing import Any

import ml_collections

from kd_jax.train import compilation


def engine_config(**train_overrides) -> ml_collections.ConfigDict:
  """``{'train': ..., 'mesh': ...}`` with defaults; merge into an experiment config."""
  train = ml_collections.ConfigDict(dict(
      log_every=50, checkpoint_every=500, max_to_keep=2,
      # Persistent XLA cache: reruns, resumes and stages of one shape compile once. '' = off.
      compilation_cache_dir=compilation.DEFAULT_CACHE_DIR,
      # CPU only: 'default', 'fast' or 'fastest' (kd_jax.train.compilation.CPU_PRESETS).
      cpu_compile="fast",
      # Gradient accumulation: each step's global batch runs as this many micro-batches, then one
      # optimiser update (kd_jax.train.steps). PyTorch's iter_size k with DataLoader batch B is a
      # global batch of B * k with grad_accum_steps k.
      grad_accum_steps=1,
      # A finished stage keeps 'weights' (its final parameters, statistics and evaluations: no
      # optimiser or data state, no earlier steps) or 'all' (its last checkpoints, whole, so
      # that it can be trained on with more steps).
      keep_finished="weights"))
  train.update(train_overrides)
  mesh = ml_collections.ConfigDict(dict(num_devices=-1))
  # Which weights a stage hands on (kd_jax.train.loop): 'last', 'best_test' (the papers' protocol:
  # the best evaluation on the test split) or 'best_val' (best on held-out training videos).
  # Several runs of the experiment (kd_jax.methods._runs): each (split, seed) in its own
  # sub-workdir, then mean ± std. Empty: one run with config.seed on the config's split.
  return ml_collections.ConfigDict({"train": train, "mesh": mesh, "selection": "last",
                                    "seeds": (), "splits": ()})


def parse_arg(arg: str | None, *, allowed: Mapping[str, type] | Collection[str],
              config_file: str) -> dict[str, Any]:
  """A config file's ``:variant`` argument as a dict, e.g. ``'split=2,smoke'`` ->
  ``{'split': 2, 'smoke': True}``; no variant (None or '') -> ``{}``.

  Args:
    arg: what follows ``config.py:`` on the command line (``get_config``'s argument).
    allowed: the variants: names of flags (``{'smoke'}``), or a mapping from name to type, ``bool``
      for a flag and ``int``, ``float`` or ``str`` for a ``name=value`` variant.
    config_file: the config file, for the error (``configs/pkd_hmdb.py``).

  Raises:
    ValueError: an unknown variant, a flag given a value, a value missing or not of its type, or a
      variant given twice; one line that names the file and its variants.
  """
  types_ = dict(allowed) if isinstance(allowed, Mapping) else dict.fromkeys(sorted(allowed), bool)
  spell = lambda n, t: n if t is bool else f"{n}=<{t.__name__}>"
  usage = ", ".join(spell(n, t) for n, t in types_.items())
  usage = f"use no variant or a comma-separated list of: {usage}" if types_ else "use no variant"
  out: dict[str, Any] = {}
  for item in (arg or "").split(","):
    name, eq, value = item.strip().partition("=")
    kind = types_.get(name)
    problem = None
    if not name:
      problem = "an empty item" if arg else None
    elif kind is None:
      problem = f"unknown {name!r}"
    elif name in out:
      problem = f"{name!r} given twice"
    elif (kind is bool) == bool(eq):
      problem = f"{name!r} takes no value" if kind is bool else f"write {spell(name, kind)}"
    else:
      try:
        out[name] = True if kind is bool else kind(value)
      except ValueError:
        problem = f"{name}={value!r} is not {'an' if kind is int else 'a'} {kind.__name__}"
    if problem:
      raise ValueError(f"{config_file} has no variant {arg!r} ({problem}); {usage}")
  return out


def config_module(path: str | os.PathLike) -> types.ModuleType:
  """The config file at ``path`` as a module: a config that adjusts a sibling's recipe loads it so
  (``configs/`` is a folder of files, not a package)."""
  path = os.fspath(path)
  name = "kd_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module

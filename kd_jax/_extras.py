"""Checks that an optional part of kd_jax (a pip extra) is installed, before anything imports it.

`pip install kd-jax` gives jax, numpy and `kd_jax.losses`; the trainer needs the `train` extra. An
entry point calls `require` first, so a losses-only install ends in one line that says what to
install instead of a ModuleNotFoundError from whichever import happens to come first.

This module imports only the standard library: it must work when the extra is missing.
"""

from __future__ import annotations

import importlib.util
import sys

# Import names (not distribution names) of the `train` extra in pyproject.toml, in its order;
# tests/test_extras.py keeps the two lists in step.
TRAIN_MODULES: tuple[str, ...] = (
    "flax",
    "optax",
    "orbax.checkpoint",
    "tensorflow_datasets",
    "array_record",
    "importlib_resources",
    "grain",
    "ml_collections",
    "einops",
    "av",
    "numba",
    "absl",
    "tqdm",
    "matplotlib",
    "tensorboardX",
)

# What each extra is, for the message; an extra not named here is called by its name.
_WHAT = {
    "train": "the training stack",
}


def _importable(module: str) -> bool:
  """Whether `module` can be found, without importing it (only the parents of a dotted name)."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    # find_spec("a.b") imports `a` and raises when `a` is missing or broken; ValueError comes from
    # a module in sys.modules without a __spec__. Either way the extra is not usable.
    return False


def missing(modules: tuple[str, ...]) -> list[str]:
  """The names in `modules` that cannot be imported, in their order."""
  return [m for m in modules if not _importable(m)]


def require(extra: str, modules: tuple[str, ...]) -> None:
  """Ends the program with one line naming the pip extra when any of its modules is missing.

  Args:
    extra: the extra's name in pyproject.toml, e.g. "train".
    modules: the import names it provides, e.g. `TRAIN_MODULES`.

  Raises:
    SystemExit: status 2, as for any other bad set-up (kd_jax.main's rule), after one line on
      stderr; nothing happens when all modules are importable.
  """
  absent = missing(modules)
  if not absent:
    return
  what = _WHAT.get(extra, f"the '{extra}' extra")
  print(f"kd_jax: error: {what} is not installed (missing: {', '.join(absent)}); install it "
        f'with: pip install "kd-jax[{extra}]"  (from a checkout: pip install -e ".[{extra}]")',
        file=sys.stderr, flush=True)
  raise SystemExit(2)

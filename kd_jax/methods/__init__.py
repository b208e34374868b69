"""Distillation methods. Each is one module here with ``run(config, workdir) -> dict``.

``kd_jax.main`` dispatches on ``config.method`` to the module of that name.
"""

import importlib
import pkgutil
from types import ModuleType

from kd_jax.errors import UserError


def available() -> list[str]:
  """Names of the methods that can be run."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> ModuleType:
  """The module of method ``name``; a ``UserError`` listing the choices if there is none."""
  names = available()
  if name not in names:
    raise UserError(
        f"unknown method {name!r} (config.method); available: {', '.join(names)}"
    )
  return importlib.import_module(f"{__name__}.{name}")

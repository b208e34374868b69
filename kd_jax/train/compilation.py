"""How the engine's programs are compiled: a persistent XLA cache and CPU compile-time presets.

On GPU and TPU XLA's defaults apply and only the cache is used. On the CPU, compilation dominates
short runs (tests, ``:smoke`` configs, quickstarts), so ``config.train.cpu_compile`` picks one of
:data:`CPU_PRESETS`. Measured on a 2-core x86 CPU with jax 0.10.2 (tiny networks, batch 8,
one jitted forward+backward, ``python -m kd_jax.bench.compile_time``):

============== ========================= ========================= =========================
network        ``default`` compile, step ``fast`` compile, step    ``fastest`` compile, step
============== ========================= ========================= =========================
Top-I3D tiny   20.6 s, 196 ms            16.9 s, 169 ms            5.3 s, 401 ms
I3D tiny       25.4 s, 861 ms            17.9 s, 737 ms            4.0 s, 1035 ms
TSM-R18 tiny   3.1 s, 22 ms              2.5 s, 22 ms              0.9 s, 348 ms
TSM-R50 tiny   5.4 s, 62 ms              2.5 s, 58 ms              1.1 s, 1203 ms
============== ========================= ========================= =========================

``fast`` (XLA's older fusion emitters) compiles faster at no step cost, so it is the CPU default;
``fastest`` (also LLVM optimisation level 0) suits runs of a few steps of 3D networks only.
Initialisation programs run once, so they always compile with ``fastest`` on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import os
from typing import Any

from absl import logging
import jax

from kd_jax.errors import UserError

CPU_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"xla_cpu_use_fusion_emitters": False},
    "fastest": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0},
}
DEFAULT_CACHE_DIR = "~/.cache/kd_jax/xla"
_cpu_preset = "fast"


def configure(train_cfg: Mapping[str, Any]) -> None:
  """Applies ``compilation_cache_dir`` and ``cpu_compile`` of a ``config.train`` block.

  The cache is process-wide and set once: a directory already chosen (``JAX_COMPILATION_CACHE_DIR``
  or an earlier call) wins, so tests and users can redirect it. ``''`` turns it off.
  """
  global _cpu_preset
  preset = train_cfg.get("cpu_compile", "fast")
  if preset not in CPU_PRESETS:
    raise UserError(f"config.train.cpu_compile={preset!r} is not one of {sorted(CPU_PRESETS)}")
  _cpu_preset = preset
  path = train_cfg.get("compilation_cache_dir", DEFAULT_CACHE_DIR)
  if not path:
    return
  try:
    if not jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  except AttributeError:  # a JAX without these options: compile as usual
    logging.warning("No persistent compilation cache in this JAX; continuing without one.")


def compiler_options(preset: str | None = None) -> dict[str, Any] | None:
  """XLA options for a jit on the default backend: the CPU preset there, else XLA's defaults."""
  if jax.default_backend() != "cpu":
    return None
  return dict(CPU_PRESETS[preset or _cpu_preset]) or None


def jit(fn: Callable[..., Any], *, preset: str | None = None, **kwargs: Any) -> Any:
  """``jax.jit`` with the configured compiler options (``preset`` overrides the CPU preset)."""
  return jax.jit(fn, compiler_options=compiler_options(preset), **kwargs)

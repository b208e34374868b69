"""How the engine's programs are compiled: a persistent XLA cache and CPU compile-time presets.

On GPU and TPU XLA's defaults apply and only the cache is used. On the CPU, compilation dominates
short runs (tests, ``:smoke`` configs, quickstarts), so ``config.train.cpu_compile`` picks one of
:data:`CPU_PRESETS`: ``fast`` (XLA's older fusion emitters) compiles up to 2x faster than XLA's
default, with steps within 20 % of its speed, so it is the CPU default; ``fastest`` (also LLVM optimisation
level 0) compiles I3D-sized programs about 3x faster again but runs steps 1.4-10x slower, which suits
runs of a few steps only. Initialisation programs run once, so they always compile with ``fastest``
on the CPU. ``python -m kd_jax.bench.compile_time`` measures the trade; docs/benchmarks.md has the
figures of a 2-core x86 CPU.
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
  """``jax.jit`` with the configured compiler options (``preset`` overrides the CPU preset).

  For outermost functions only: JAX refuses compiler options on a jit nested in another, so a
  function meant to be called inside other jitted code takes a plain ``jax.jit``.
  """
  return jax.jit(fn, compiler_options=compiler_options(preset), **kwargs)

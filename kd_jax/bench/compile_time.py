r"""Compile time against step time of the CPU compile presets (``config.train.cpu_compile``).

  python -m kd_jax.bench.compile_time [--models top_i3d,i3d,tsm_resnet18,tsm_resnet50]
                                      [--batch 8] [--iters 5]

For each model (tiny width, clips of 16x32x32 for I3D and 8x32x32 for TSM) and each preset of
:data:`kd_jax.train.compilation.CPU_PRESETS`: the seconds to trace and lower one jitted
forward+backward, the seconds XLA takes to compile it, and the median step time. The persistent
compilation cache is turned off so every compilation is cold. Meant for the CPU, where the presets
apply; on an accelerator it measures XLA's defaults three times.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from kd_jax import models
from kd_jax.train import compilation

CLIPS = {"top_i3d": (16, 32, 32, 3), "i3d": (16, 32, 32, 3)}
DEFAULT_CLIP = (8, 32, 32, 3)


def measure(name: str, preset: str, *, batch: int, iters: int) -> dict[str, float]:
  """Trace/lower, compile and step seconds of one model's train step under one preset."""
  model = models.get(name, tiny=True, num_classes=4)
  clip = CLIPS.get(name, DEFAULT_CLIP)
  x = jax.random.normal(jax.random.key(2), (batch, *clip))
  variables = jax.jit(lambda k: model.init(k, x[:1], train=False),
                      compiler_options=compilation.compiler_options("fastest"))(jax.random.key(0))

  def loss(params, stats, x):
    (logits, _), new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return jnp.mean(jnp.square(logits)), new

  step = jax.jit(jax.value_and_grad(loss, has_aux=True),
                 compiler_options=compilation.compiler_options(preset))
  args = (variables["params"], variables.get("batch_stats", {}), x)
  t0 = time.perf_counter()
  lowered = step.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return {"lower_s": t1 - t0, "compile_s": t2 - t1, "step_ms": 1e3 * statistics.median(times)}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kd_jax.bench.compile_time",
                                   description=__doc__.split("\n\n")[2])
  parser.add_argument("--models", default="top_i3d,i3d,tsm_resnet18,tsm_resnet50")
  parser.add_argument("--presets", default=",".join(compilation.CPU_PRESETS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--iters", type=int, default=5)
  args = parser.parse_args(argv)
  names, presets = args.models.split(","), args.presets.split(",")
  bad = [n for n in names if n not in models.names()] + [
      p for p in presets if p not in compilation.CPU_PRESETS]
  if bad:
    print(f"compile_time: unknown model or preset {bad}; models: {models.names()}, presets: "
          f"{list(compilation.CPU_PRESETS)}", file=sys.stderr)
    return 2
  jax.config.update("jax_enable_compilation_cache", False)
  if "JAX_DEFAULT_PRNG_IMPL" not in os.environ:  # as kd_jax.main does
    jax.config.update("jax_default_prng_impl", "rbg")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, batch {args.batch}")
  print("| model | preset | trace+lower (s) | compile (s) | step (ms) |\n|---|---|---|---|---|")
  for name in names:
    for preset in presets:
      r = measure(name, preset, batch=args.batch, iters=args.iters)
      print(f"| {name} | {preset} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
            f"{r['step_ms']:.0f} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

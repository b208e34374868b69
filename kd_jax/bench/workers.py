"""The measurements behind ``python -m kd_jax.bench`` (:mod:`kd_jax.bench.run`), and their launcher.

Each measurement runs in a fresh Python process (``--no-isolate`` runs them all in the caller): JAX
cannot reset a device's peak-memory counter, an out-of-memory error can leave the allocator
fragmented, and JAX and PyTorch would otherwise compete for one device's memory. The workers run
with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (so the peak is what the step uses and PyTorch gets the
memory JAX does not), JAX's ``rbg`` generator as the command line (``kd_jax.main``) selects it, and
no persistent compilation cache (compile seconds are cold), unless the environment says otherwise.

This module is the workers' entry point: ``python -m kd_jax.bench.workers SPEC.json``. It does not
import :mod:`kd_jax.bench.run`, so a worker process loads no command-line code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from kd_jax.bench import sizes

PIPELINE_CLIPS, PIPELINE_BATCH, PIPELINE_BATCHES = 4, 2, 2

# Dense peak FLOP/s per device (no 2:4 sparsity) in TFLOP/s, by `jax.devices()[0].device_kind`;
# the first matching pattern wins. Sources: the NVIDIA H100 (SXM5, PCIe, NVL), H200 (SXM, NVL), A100
# and L4 datasheets, whose tensor-core figures are quoted with sparsity (dense = half of them), and
# Google Cloud's TPU v4, v5e, v5p and v6e system-architecture pages (bfloat16 per chip). float32 on
# NVIDIA GPUs is the TF32 tensor-core peak: at JAX's default precision float32 convolutions and
# matmuls run in TF32 on recent GPUs and as bfloat16 passes on TPUs (JAX's "Matmul precision" page),
# so TPUs get their bfloat16 peak for both.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"H100.*PCIe", {"bfloat16": 756.5, "float32": 378.0}),  # 1513 / 756 sparse
    (r"H[12]00 NVL", {"bfloat16": 835.5, "float32": 417.5}),  # 1671 / 835 sparse
    (r"H100|H200|GH200", {"bfloat16": 989.5, "float32": 494.5}),  # SXM: 1979 / 989 sparse
    (r"A100", {"bfloat16": 312.0, "float32": 156.0}),  # 624 / 312 sparse (SXM and PCIe)
    (r"\bL4\b", {"bfloat16": 121.0, "float32": 60.0}),  # 242 / 120 sparse
    (r"TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
    (r"TPU v5 ?lite|TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    (r"TPU v5p?$", {"bfloat16": 459.0, "float32": 459.0}),
    (r"TPU v6 ?lite|TPU v6e", {"bfloat16": 918.0, "float32": 918.0}),
)


# ------------------------------------------------------------------------------------------------
# Arithmetic (pure; tested against hand computations).


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak FLOP/s for ``dtype`` from :data:`PEAK_TFLOPS`; None if unknown."""
  for pattern, peaks in PEAK_TFLOPS:
    if re.search(pattern, device_kind or ""):
      return peaks[dtype] * 1e12 if dtype in peaks else None
  return None


def mfu(flops_per_step: float | None, step_seconds: float | None,
        peak: float | None) -> float | None:
  """Model FLOPs utilisation: ``flops_per_step / step_seconds / peak`` (None if any is missing)."""
  if not flops_per_step or not step_seconds or not peak:
    return None
  return flops_per_step / step_seconds / peak


def flops_of(cost: Any) -> float | None:
  """FLOPs from a ``cost_analysis()`` result: a dict, a list of per-computation dicts, or None."""
  if cost is None:
    return None
  if isinstance(cost, Mapping):
    cost = [cost]
  total = [float(c["flops"]) for c in cost if isinstance(c, Mapping) and "flops" in c]
  return sum(total) if total and sum(total) > 0 else None


def memory_of(compiled: Any) -> dict[str, int] | None:
  """The compiled program's buffers (``memory_analysis()``), and their sum as ``total``.

  ``total`` = arguments + outputs - aliased (donated) + temporaries: the device memory the step
  needs while it runs.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  if m is None:
    return None
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  out = {f.replace("_size_in_bytes", ""): int(getattr(m, f, 0) or 0) for f in fields}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def is_oom(error: BaseException | str) -> bool:
  text = str(error)
  return ("RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
          or type(error).__name__ == "OutOfMemoryError")


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:500]


# ------------------------------------------------------------------------------------------------
# Workers (each runs in its own process unless --no-isolate).


def _timed(fn, iters: int) -> list[float]:
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def env_worker(spec: Mapping[str, Any]) -> dict[str, Any]:
  """The JAX backend, devices and versions."""
  del spec
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  return {"ok": True, "backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "device_memory_bytes": stats.get("bytes_limit"),
          "compilation_cache": bool(jax.config.jax_enable_compilation_cache
                                    and jax.config.jax_compilation_cache_dir),
          "prng_impl": str(jax.config.jax_default_prng_impl)}




def jax_worker(spec: Mapping[str, Any]) -> dict[str, Any]:
  """Builds, compiles and times one JAX step; ``spec['probe']`` only checks that it runs.

  The step compiles before its state exists and each phase's FLOPs are counted after the timing,
  so that the device's peak memory is the step's, not the compiler's scratch (GPU autotuning).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from kd_jax.bench import jax_steps  # pylint: disable=g-import-not-at-top
  size = sizes.StepSize(**spec["size"])
  t0 = time.perf_counter()
  built = jax_steps.build(spec["step"], batch=int(spec["batch"]), dtype=spec["dtype"], size=size)
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  lowered = built.train.lower(built.abstract_state, built.frozen, built.batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  if spec.get("probe"):
    jax.block_until_ready(compiled(built.phases[0].make_state(), built.frozen, built.batch))
    return {"ok": True, "batch": built.batch_size}
  phases, finite = {}, True
  for phase in built.phases:
    holder = {"state": phase.make_state(), "metrics": None}

    def one_step():
      holder["state"], holder["metrics"] = compiled(holder["state"], built.frozen, built.batch)
      jax.block_until_ready(holder)

    _timed(one_step, int(spec["warmup"]))
    times = _timed(one_step, int(spec["iters"]))
    if holder["metrics"] is not None:
      finite = finite and float(holder["metrics"]["finite"]) > 0
    phases[phase.name] = {"step_s": statistics.median(times), "times_s": times}
    del holder
    gc.collect()
  dev = jax.devices()[0]
  stats = dev.memory_stats() or {}
  flops_compiled = flops_of(compiled.cost_analysis())
  for phase in built.phases:
    flops, pin_s = flops_compiled, None
    if phase.pin is not None:
      t0 = time.perf_counter()
      pinned = jax_steps.pinned_step(built, phase).lower(built.abstract_state, built.frozen,
                                                         built.batch).compile()
      flops, pin_s = flops_of(pinned.cost_analysis()), time.perf_counter() - t0
    phases[phase.name].update(flops=flops, pinned_compile_s=pin_s)
  step_s = statistics.fmean(p["step_s"] for p in phases.values())
  flops_list = [p["flops"] for p in phases.values()]
  flops = statistics.fmean(flops_list) if all(flops_list) else None
  peak = peak_flops(dev.device_kind, spec["dtype"])
  return {
      "ok": True, "batch": built.batch_size, "build_s": build_s, "compile_s": compile_s,
      "step_s": step_s, "clips_per_s": built.batch_size / step_s, "phases": phases,
      "flops_per_step": flops, "flops_compiled_program": flops_compiled,
      "flops_lowered_program": flops_of(lowered.cost_analysis()),
      "achieved_flops_per_s": flops / step_s if flops else None,
      "peak_flops_per_s": peak, "mfu": mfu(flops, step_s, peak),
      "memory": {"compiled": memory_of(compiled),
                 "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
                 "bytes_limit": stats.get("bytes_limit")},
      "params": built.params, "finite": finite, "device_kind": dev.device_kind,
  }


def torch_worker(spec: Mapping[str, Any]) -> dict[str, Any]:
  """Times the PyTorch version of one step, eager and/or compiled (``kd_jax.bench.torch_steps``)."""
  import torch  # pylint: disable=g-import-not-at-top
  from kd_jax.bench import torch_steps  # pylint: disable=g-import-not-at-top
  device = spec["device"]
  cuda = device == "cuda"
  if cuda and not torch.cuda.is_available():
    return {"ok": False, "error": f"torch {torch.__version__} sees no CUDA device"}
  out: dict[str, Any] = {"ok": True, "device": device, "torch": torch.__version__}
  if spec["step"] not in torch_steps.STEPS:
    return {"ok": False, "error": "kd_jax.bench.torch_steps has no version of this step"}
  size = sizes.StepSize(**spec["size"])
  # GenKD's PyTorch step alternates its passes every `per_pass` calls, starting with pass A; as on
  # the JAX side, each pass's median is taken and the step is their mean.
  per_pass = (int(getattr(torch_steps, "GENKD_STEPS_PER_PASS", 1))
              if spec["step"] == "genkd_phase2" else 0)
  for mode in spec["modes"]:
    fn = None
    try:
      if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
      t0 = time.perf_counter()
      fn = torch_steps.build(spec["step"], batch=int(spec["batch"]), dtype=spec["dtype"],
                             compile=mode == "compile", device=device, size=size)
      build_s = time.perf_counter() - t0
      first_s = _timed(fn, 1)[0]  # torch.compile compiles here
      before, iters = max(1, int(spec["warmup"])), int(spec["iters"])
      if per_pass:  # start on a pass A call, time whole A-B cycles
        before = -(-before // (2 * per_pass)) * 2 * per_pass
        iters = -(-iters // (2 * per_pass)) * 2 * per_pass
      _timed(fn, before - 1)
      times = _timed(fn, iters)
      if per_pass:
        passes = {p: statistics.median(t for i, t in enumerate(times) if (i // per_pass) % 2 == k)
                  for k, p in enumerate("AB")}
        step_s = statistics.fmean(passes.values())
      else:
        passes, step_s = None, statistics.median(times)
      out[mode] = {"ok": True, "build_s": build_s, "first_step_s": first_s, "step_s": step_s,
                   "times_s": times, "phases": passes, "clips_per_s": int(spec["batch"]) / step_s,
                   "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}
    except Exception as e:  # pylint: disable=broad-except  # recorded per mode, the rest goes on
      out[mode] = {"ok": False, "error": _one_line(e), "oom": is_oom(e)}
    finally:
      del fn
      gc.collect()
  return out


def pipeline_spec(step: str, size: sizes.StepSize):
  """The training pipeline's ClipSpec of ``step`` (what the method's stage decodes per clip)."""
  from kd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if step.startswith("pkd_"):
    net = "residual" if step.endswith("r18") else "iframe"
    if step.startswith("pkd_backbone"):
      mods, sampling = (net,), "coviar"  # pkd_wise.md 6.1: CoViAR's single-modality loader
    else:  # the IC stage decodes every modality its curriculum's teachers read (fused loader)
      mods, sampling = tuple(sorted({net, "mv", "residual"})), "fused"
    return pipeline.make_spec("compressed", num_segments=size.frames, crop_size=size.crop,
                              sampling=sampling, modalities=mods, flip=True)
  if step == "genkd_phase2":
    return pipeline.make_spec("rgb_clip", clip_len=size.frames, crop_size=size.crop, flip=True)
  return pipeline.make_spec("rgb_segments", num_segments=size.frames, crop_size=size.crop,
                            flip=False)  # Something-Something: no flips


def pipeline_worker(spec: Mapping[str, Any]) -> dict[str, Any]:
  """Clips/s of one pipeline worker (decoding in this process) on synthetic 340x256 MPEG-4 clips."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain reads absl flags (jax_stack.md 7.2)
    flags.FLAGS.mark_as_parsed()
  from kd_jax.data import bench as data_bench  # pylint: disable=g-import-not-at-top
  size = sizes.StepSize(**spec["size"])
  clip_spec = pipeline_spec(spec["step"], size)
  frames = max(48, size.frames + 8)  # a dense clip needs its frames, segments a few GOPs
  t0 = time.perf_counter()
  records = data_bench.make_records(PIPELINE_CLIPS, frames, 256, 340)
  encode_s = time.perf_counter() - t0
  rate = data_bench.bench_pipeline(records, clip_spec, workers=0, batch_size=PIPELINE_BATCH,
                                   batches=PIPELINE_BATCHES)
  return {"ok": True, "clips_per_s_per_worker": rate, "kind": clip_spec.kind,
          "modalities": list(clip_spec.modalities) if clip_spec.kind == "compressed" else None,
          "source": f"{PIPELINE_CLIPS} synthetic clips of {frames} frames, 340x256 MPEG-4",
          "encode_s": encode_s}


WORKERS = {"env": env_worker, "jax": jax_worker, "torch": torch_worker,
           "pipeline": pipeline_worker}


def run_worker(spec: Mapping[str, Any]) -> dict[str, Any]:
  """Runs one worker in this process; failures become ``{'ok': False, 'error', 'oom'}``."""
  try:
    return WORKERS[spec["kind"]](spec)
  except Exception as e:  # pylint: disable=broad-except  # reported in the results
    return {"ok": False, "error": _one_line(e), "oom": is_oom(e)}


def _worker_main(argv: Sequence[str]) -> int:
  with open(argv[0]) as f:
    spec = json.load(f)
  result = run_worker(spec)
  with open(spec["result_path"], "w") as f:
    json.dump(result, f)
  return 0


class Launcher:
  """Runs workers in fresh processes (``isolate``) or in this one."""

  def __init__(self, isolate: bool, tmpdir: str):
    self.isolate, self.tmpdir, self._n = isolate, tmpdir, 0

  def env(self) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
    env.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")
    return env

  def __call__(self, spec: dict[str, Any]) -> dict[str, Any]:
    if not self.isolate:
      return run_worker(spec)
    self._n += 1
    spec_path = os.path.join(self.tmpdir, f"spec{self._n}.json")
    result_path = os.path.join(self.tmpdir, f"result{self._n}.json")
    with open(spec_path, "w") as f:
      json.dump(dict(spec, result_path=result_path), f)
    proc = subprocess.run([sys.executable, "-m", "kd_jax.bench.workers", spec_path],
                          capture_output=True, text=True, env=self.env(), check=False)
    if os.path.exists(result_path):
      with open(result_path) as f:
        return json.load(f)
    lines = [l for l in (proc.stderr or "").strip().splitlines() if l.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    return {"ok": False, "error": f"worker died (exit status {proc.returncode}): {last}"[:500],
            "oom": is_oom(proc.stderr or "")}


if __name__ == "__main__":
  sys.exit(_worker_main(sys.argv[1:]))

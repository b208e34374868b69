"""``python -m kd_jax.bench``: train-step throughput, FLOPs utilisation and memory, JAX vs PyTorch.

For every selected (step, dtype, batch): the JAX step's compile seconds, median step seconds,
clips/s, FLOPs per step (XLA's cost analysis of the compiled step), achieved FLOP/s and model
FLOPs utilisation (MFU, over the device's dense peak for the dtype), memory (the compiled
program's buffers, and the device's peak where it reports one); the same step in PyTorch (eager
and ``torch.compile``, ``kd_jax.bench.torch_steps``) when torch is installed, with the JAX/PyTorch
throughput ratio; and the data pipeline's clips/s per worker for the step's clip shape, with the
workers needed to keep up. Writes ``DIR/results.json`` and ``DIR/results.md`` and prints the table.

Each measurement runs in a fresh Python process (``--no-isolate`` runs them all here): JAX cannot
reset a device's peak-memory counter, an out-of-memory error can leave the allocator fragmented,
and JAX and PyTorch would otherwise compete for one device's memory. The workers run with
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (so the peak is what the step uses and PyTorch gets the
memory JAX does not), JAX's ``rbg`` generator as the command line (``kd_jax.main``) selects it, and
no persistent compilation cache (compile seconds are cold), unless the environment says otherwise.

This module is also the workers' entry point: ``python -m kd_jax.bench.run SPEC.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
import dataclasses
import datetime
import fractions
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from kd_jax import report
from kd_jax.bench import sizes

PROG = "python -m kd_jax.bench"
TORCH_MODES = ("eager", "compile")
DEFAULT_OUT = "runs/bench"
# Per preset: (warmup, iters) when the command line does not say.
DEFAULT_ITERS = {"paper": (3, 20), "cpu": (1, 3)}
MAX_BATCH_LIMIT = 1 << 16  # the doubling search stops here even without running out of memory
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


class UsageError(Exception):
  """Bad command-line input: one line on stderr, exit status 2."""


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
    proc = subprocess.run([sys.executable, "-m", "kd_jax.bench.run", spec_path],
                          capture_output=True, text=True, env=self.env(), check=False)
    if os.path.exists(result_path):
      with open(result_path) as f:
        return json.load(f)
    lines = [l for l in (proc.stderr or "").strip().splitlines() if l.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    return {"ok": False, "error": f"worker died (exit status {proc.returncode}): {last}"[:500],
            "oom": is_oom(proc.stderr or "")}


# ------------------------------------------------------------------------------------------------
# Command line.


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):
    raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog=PROG, description="Train-step throughput, FLOPs utilisation and memory of "
              "kd_jax's method steps, JAX against PyTorch; see kd_jax/bench/run.py.")
  p.add_argument("--preset", choices=sorted(sizes.PRESETS), default=None,
                 help="sizes: 'paper' (the papers', default on GPU/TPU) or 'cpu' (default on CPU)")
  p.add_argument("--steps", default=",".join(sizes.STEPS),
                 help=f"comma-separated, from {', '.join(sizes.STEPS)} (default: all)")
  p.add_argument("--dtypes", default=",".join(sizes.DTYPES), help="float32 and/or bfloat16")
  p.add_argument("--batch", default="paper",
                 help="'paper' (the papers' batch sizes), 'max' (paper and the largest that fits, "
                      "by doubling) or a number")
  p.add_argument("--torch", default=None,
                 help="PyTorch variants: eager and/or compile, or 'none' (default: both on a GPU, "
                      "eager on the CPU, where torch.compile takes minutes per step)")
  p.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True,
                 help="measure the data pipeline's clips/s per worker for each step")
  p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                 help="one fresh process per measurement (meaningful peak memory)")
  p.add_argument("--size", default="",
                 help="overrides of every step's size, e.g. crop=112,frames=16,width=1/2")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps first (3 paper, 1 cpu)")
  p.add_argument("--iters", type=int, default=None, help="timed steps (20 paper, 3 cpu)")
  p.add_argument("--out", default=DEFAULT_OUT, help="directory for results.json and results.md")
  return p


def _split(value: str, allowed: Sequence[str], what: str) -> list[str]:
  items = [v.strip() for v in value.split(",") if v.strip()]
  bad = [v for v in items if v not in allowed]
  if bad or not items:
    raise UsageError(f"unknown {what} {', '.join(map(repr, bad)) or repr(value)}; choose from "
                     f"{', '.join(allowed)}")
  return list(dict.fromkeys(items))


def parse_size(text: str) -> dict[str, Any]:
  """``'crop=32,width=1/16'`` -> ``{'crop': 32, 'width': 0.0625}``."""
  fields = [f.name for f in dataclasses.fields(sizes.StepSize)]
  out: dict[str, Any] = {}
  for item in (t.strip() for t in text.split(",") if t.strip()):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or key not in fields:
      raise UsageError(f"--size takes KEY=VALUE pairs with KEY in {', '.join(fields)}; got "
                       f"{item!r}")
    try:
      out[key] = float(fractions.Fraction(value.strip())) if key == "width" else int(value)
    except (ValueError, ZeroDivisionError):
      raise UsageError(f"--size {key} must be a number, got {value!r}") from None
  try:
    sizes.size_of(sizes.STEPS[0], "paper", **out)
  except ValueError as e:
    raise UsageError(f"--size: {e}") from None
  return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The parsed, validated command line; a ``UsageError`` for bad input."""
  args = _parser().parse_args(argv)
  args.steps = _split(args.steps, sizes.STEPS, "step")
  args.dtypes = _split(args.dtypes, sizes.DTYPES, "dtype")
  if args.torch is not None:
    args.torch = [] if args.torch.strip() == "none" else _split(
        args.torch, TORCH_MODES, "--torch variant (or 'none')")
  if args.batch not in ("paper", "max"):
    try:
      args.batch = int(args.batch)
    except ValueError:
      raise UsageError(f"--batch must be 'paper', 'max' or a positive number, got "
                       f"{args.batch!r}") from None
    if args.batch < 1:
      raise UsageError(f"--batch must be positive, got {args.batch}")
  for name in ("warmup", "iters"):
    v = getattr(args, name)
    if v is not None and v < (0 if name == "warmup" else 1):
      raise UsageError(f"--{name} must be >= {0 if name == 'warmup' else 1}, got {v}")
  args.size = parse_size(args.size)
  return args


def _versions() -> dict[str, str | None]:
  out = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "grain", "torch"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = None
  return out


def torch_device(backend: str) -> str | None:
  """The PyTorch device that compares with a JAX ``backend``: the same kind, or None."""
  return {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu"}.get(backend)


def torch_status(modes: Sequence[str], backend: str) -> str | None:
  """Why PyTorch is not measured (None when it is)."""
  if not modes:
    return "not requested (--torch none)"
  if torch_device(backend) is None:
    return f"no PyTorch device of the JAX backend's kind ({backend})"
  if importlib.util.find_spec("torch") is None:
    return "torch is not installed"
  if importlib.util.find_spec("kd_jax.bench.torch_steps") is None:
    return "kd_jax.bench.torch_steps is not available"
  return None


def _ok(r: Mapping[str, Any] | None) -> bool:
  return bool(r and r.get("ok"))


def _ratio(jax_r: Mapping[str, Any], torch_r: Mapping[str, Any] | None) -> float | None:
  if _ok(jax_r) and _ok(torch_r):
    return jax_r["clips_per_s"] / torch_r["clips_per_s"]
  return None


class Bench:
  """One benchmark run: measurements in order, then the report."""

  def __init__(self, args: argparse.Namespace, launch: Launcher, env: dict[str, Any]):
    self.args, self.launch, self.env = args, launch, env
    self.rows: list[dict[str, Any]] = []
    self.notes: list[str] = []
    self.pipelines: dict[str, Any] = {}
    self.torch_note = torch_status(args.torch, env.get("backend", ""))

  def log(self, text: str) -> None:
    print(text, file=sys.stderr, flush=True)

  def run(self) -> None:
    if not self.args.isolate and self.env.get("device_memory_bytes"):
      self._note("measured in one process (--no-isolate): the device's peak memory is the "
                 "running maximum over the measurements so far")
    for step in self.args.steps:
      size = sizes.size_of(step, self.args.preset, **self.args.size)
      pipe = None
      if self.args.pipeline:
        pipe = self.launch({"kind": "pipeline", "step": step, "size": size.to_dict()})
        self.pipelines[step] = pipe
        self.log(f"[pipeline] {step}: " + (f"{pipe['clips_per_s_per_worker']:.2f} clips/s per "
                                           "worker" if _ok(pipe) else pipe["error"]))
      for dtype in self.args.dtypes:
        first = self.args.batch if isinstance(self.args.batch, int) else sizes.PAPER_BATCH[step]
        kind = "fixed" if isinstance(self.args.batch, int) else "paper"
        row = self.measure(step, dtype, first, kind, size, pipe)
        if self.args.batch == "max":
          self.search_max(step, dtype, size, row, pipe)

  def measure(self, step: str, dtype: str, batch: int, kind: str, size: sizes.StepSize,
              pipe: Mapping[str, Any] | None) -> dict[str, Any]:
    a = self.args
    common = {"step": step, "dtype": dtype, "batch": batch, "size": size.to_dict(),
              "warmup": a.warmup, "iters": a.iters}
    jax_r = self.launch(dict(common, kind="jax"))
    torch_r = None
    if self.torch_note is None:
      torch_r = self.launch(dict(common, kind="torch", modes=a.torch,
                                 device=torch_device(self.env["backend"])))
    row = {"step": step, "dtype": dtype, "batch": batch, "batch_kind": kind,
           "size": size.to_dict(), "jax": jax_r, "torch": torch_r,
           "ratio": {m: _ratio(jax_r, (torch_r or {}).get(m)) for m in a.torch}}
    per_worker = pipe.get("clips_per_s_per_worker") if _ok(pipe) else None
    row["pipeline_clips_per_s_per_worker"] = per_worker
    row["workers_needed"] = (jax_r["clips_per_s"] / per_worker
                             if _ok(jax_r) and per_worker else None)
    self.rows.append(row)
    self.log(self._progress(row))
    return row

  def _progress(self, row: Mapping[str, Any]) -> str:
    j = row["jax"]
    head = f"[jax] {row['step']} {row['dtype']} batch {row['batch']}: "
    if not _ok(j):
      return head + j["error"]
    text = head + (f"{j['clips_per_s']:.2f} clips/s, {1e3 * j['step_s']:.1f} ms/step, compile "
                   f"{j['compile_s']:.1f} s")
    if j.get("mfu") is not None:
      text += f", MFU {100 * j['mfu']:.1f}%"
    for m, r in row["ratio"].items():
      if r is not None:
        text += f", {r:.2f}x torch {m}"
    return text

  def search_max(self, step: str, dtype: str, size: sizes.StepSize,
                 paper_row: Mapping[str, Any], pipe: Mapping[str, Any] | None) -> None:
    if self.env.get("backend") == "cpu":
      self._note(f"{step} {dtype}: the largest-batch search is skipped on the CPU (host memory "
                 "is not the limit worth measuring)")
      return
    if not _ok(paper_row["jax"]):
      self._note(f"{step} {dtype}: no largest-batch search, the paper batch did not run")
      return
    fits, batch = paper_row["batch"], paper_row["batch"] * 2
    while batch <= MAX_BATCH_LIMIT:
      r = self.launch({"kind": "jax", "probe": True, "step": step, "dtype": dtype,
                       "batch": batch, "size": size.to_dict()})
      self.log(f"[max] {step} {dtype} batch {batch}: "
               + ("fits" if _ok(r) else ("out of memory" if r.get("oom") else r["error"])))
      if not _ok(r):
        if not r.get("oom"):
          self._note(f"{step} {dtype}: largest-batch search stopped at {batch}: {r['error']}")
        break
      fits, batch = batch, batch * 2
    if fits > paper_row["batch"]:
      self.measure(step, dtype, fits, "max", size, pipe)
    else:
      self._note(f"{step} {dtype}: twice the paper batch does not fit; the paper batch is the "
                 "largest measured")

  def _note(self, text: str) -> None:
    self.notes.append(text)
    self.log("[note] " + text)

  # -- report ------------------------------------------------------------------------------------

  def results(self) -> dict[str, Any]:
    return {"environment": self.env, "preset": self.args.preset,
            "settings": {"steps": self.args.steps, "dtypes": self.args.dtypes,
                         "batch": self.args.batch, "torch": self.args.torch,
                         "size_overrides": self.args.size, "warmup": self.args.warmup,
                         "iters": self.args.iters, "isolated": self.args.isolate},
            "torch_status": self.torch_note or "measured", "rows": self.rows,
            "pipeline": self.pipelines, "notes": self.notes}

  def markdown(self) -> str:
    headers = ["step", "dtype", "batch", "JAX clips/s", "ms/step", "compile s", "GFLOP/step",
               "TFLOP/s", "MFU", "peak GiB"]
    for m in self.args.torch:
      headers += [f"torch {m} clips/s", f"JAX / {m}"]
    if self.args.torch:
      headers.append("torch peak GiB (" + " / ".join(self.args.torch) + ")")
    headers += ["pipeline clips/s/worker", "workers needed"]
    rows, fmt = [], report.fmt
    for r in self.rows:
      j = r["jax"] if _ok(r["jax"]) else {}
      mem = j.get("memory") or {}
      peak = mem.get("peak_bytes_in_use") or (mem.get("compiled") or {}).get("total")
      batch = f"{r['batch']}" + (" (max)" if r["batch_kind"] == "max" else "")
      cells = [r["step"], r["dtype"], batch,
               fmt(j.get("clips_per_s"), 1) if j else "error",
               fmt(1e3 * j["step_s"], 1) if j else "-", fmt(j.get("compile_s"), 1),
               _sig(j.get("flops_per_step"), 1e9), _sig(j.get("achieved_flops_per_s"), 1e12),
               fmt(j.get("mfu"), 1, percent=True) + ("%" if j.get("mfu") is not None else ""),
               fmt(peak / 2**30, 2) if peak else "-"]
      peaks = []
      for m in self.args.torch:
        t = (r["torch"] or {}).get(m)
        cells += [fmt(t["clips_per_s"], 1) if _ok(t) else ("OOM" if t and t.get("oom") else "-"),
                  fmt(r["ratio"].get(m), 2)]
        peaks.append(fmt(t["peak_bytes"] / 2**30, 2) if _ok(t) and t.get("peak_bytes") else "-")
      if self.args.torch:
        cells.append(" / ".join(peaks))
      cells += [fmt(r["pipeline_clips_per_s_per_worker"], 2), fmt(r["workers_needed"], 1)]
      rows.append(cells)
    env = self.env
    lines = [f"# kd_jax train-step benchmark ({self.args.preset} preset)", "",
             f"{env.get('device_count')} x {env.get('device_kind')} ({env.get('backend')}), "
             f"jax {env['versions'].get('jax')}, flax {env['versions'].get('flax')}, torch "
             f"{env['versions'].get('torch') or '-'}; {env.get('cpu_count')} CPUs; "
             f"{env.get('date')}", "", report.markdown_table(headers, rows), ""]
    lines.append("MFU: FLOPs per step from XLA's cost analysis of the compiled step over the "
                 "device's dense peak for the dtype (float32: TF32 on NVIDIA GPUs). Peak GiB: the "
                 "device's peak in use while the step ran, else the compiled program's buffers. "
                 "Pipeline: one worker decoding synthetic 340x256 MPEG-4 clips; workers needed = "
                 "JAX clips/s / pipeline clips/s per worker.")
    if self.torch_note:
      lines.append(f"PyTorch: {self.torch_note}.")
    errors = []
    for r in self.rows:
      sides = [("JAX", r["jax"]), ("torch", r["torch"])]
      sides += [(f"torch {m}", (r["torch"] or {}).get(m)) for m in self.args.torch]
      errors += [f"- {r['step']} {r['dtype']} batch {r['batch']}, {side}: {res['error']}"
                 for side, res in sides if res and not res.get("ok")]
    if self.notes or errors:
      lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes] + errors
    return "\n".join(lines) + "\n"


def _sig(value: float | None, unit: float) -> str:
  """``value / unit`` to 3 significant digits (GFLOP per step spans 0.01 to 10^4), or '-'."""
  return "-" if not value else f"{value / unit:.3g}"


def environment(env: Mapping[str, Any], argv: Sequence[str] | None) -> dict[str, Any]:
  return dict(env, versions=_versions(), python=platform.python_version(),
              platform=platform.platform(), cpu_count=os.cpu_count(),
              command=" ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
              date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              xla_flags=os.environ.get("XLA_FLAGS", ""))


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (2: bad input, 1: a JAX measurement failed)."""
  try:
    args = parse_args(argv)
  except UsageError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  with tempfile.TemporaryDirectory(prefix="kd_jax_bench_") as tmp:
    launch = Launcher(args.isolate, tmp)
    probe = launch({"kind": "env"})
    if not _ok(probe):
      print(f"{PROG}: error: cannot start JAX: {probe['error']}", file=sys.stderr)
      return 1
    probe.pop("ok")
    env = environment(probe, argv)
    args.preset = args.preset or ("cpu" if env["backend"] == "cpu" else "paper")
    if args.torch is None:
      args.torch = list(TORCH_MODES) if env["backend"] != "cpu" else ["eager"]
    warmup, iters = DEFAULT_ITERS[args.preset]
    args.warmup = warmup if args.warmup is None else args.warmup
    args.iters = iters if args.iters is None else args.iters
    bench = Bench(args, launch, env)
    bench.run()
  results, text = bench.results(), bench.markdown()
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, default=str)
    f.write("\n")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(text)
  print(text)
  print(f"results: {os.path.join(args.out, 'results.json')} and results.md")
  return 0 if all(_ok(r["jax"]) for r in bench.rows) else 1


if __name__ == "__main__":
  sys.exit(_worker_main(sys.argv[1:]))

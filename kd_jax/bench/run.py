"""``python -m kd_jax.bench``: train-step throughput, FLOPs utilisation and memory, JAX vs PyTorch.

For every selected (step, dtype, batch): the JAX step's compile seconds, median step seconds,
clips/s, FLOPs per step (XLA's cost analysis of the compiled step), achieved FLOP/s and model
FLOPs utilisation (MFU, over the device's dense peak for the dtype), memory (the compiled
program's buffers, and the device's peak where it reports one); the same step in PyTorch (eager
and ``torch.compile``, ``kd_jax.bench.torch_steps``) when torch is installed, with the JAX/PyTorch
throughput ratio; and the data pipeline's clips/s per worker for the step's clip shape, with the
workers needed to keep up. Writes ``DIR/results.json`` and ``DIR/results.md`` and prints the table.

The measurements run in worker processes, one per measurement: :mod:`kd_jax.bench.workers`, which
says why and how they are isolated. This module is the command line, the order of the measurements
(including the largest-batch search) and the report.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
import dataclasses
import datetime
import fractions
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import tempfile
from typing import Any

from kd_jax import report
from kd_jax.bench import sizes
from kd_jax.bench import workers

PROG = "python -m kd_jax.bench"
TORCH_MODES = ("eager", "compile")
DEFAULT_OUT = "runs/bench"
# Per preset: (warmup, iters) when the command line does not say.
DEFAULT_ITERS = {"paper": (3, 20), "cpu": (1, 3)}
MAX_BATCH_LIMIT = 1 << 16  # the doubling search stops here even without running out of memory


class UsageError(Exception):
  """Bad command-line input: one line on stderr, exit status 2."""


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

  def __init__(self, args: argparse.Namespace, launch: workers.Launcher, env: dict[str, Any]):
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
    if row.get("workers_needed") is not None:  # on the device this step ran on
      text += (f", needs {row['workers_needed']:.1f} data workers at "
               f"{row['pipeline_clips_per_s_per_worker']:.1f} clips/s each")
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
    launch = workers.Launcher(args.isolate, tmp)
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


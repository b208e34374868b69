"""kd_jax.bench: the command line end to end, FLOP extraction, MFU arithmetic, bad input."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from kd_jax.bench import run
from kd_jax.bench import sizes
from kd_jax.bench import workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny versions of each step: the fewest frames and pixels the networks take, 1/16 of the width.
TINY = {
    "pkd_backbone_r18": sizes.StepSize(frames=1, crop=32, num_classes=5, width=1 / 16),
    "pkd_backbone_r50": sizes.StepSize(frames=1, crop=32, num_classes=5, width=1 / 16),
    "pkd_ic_r18": sizes.StepSize(frames=1, crop=32, num_classes=5, width=1 / 16),
    "pkd_ic_r50": sizes.StepSize(frames=1, crop=32, num_classes=5, width=1 / 16),
    "genkd_phase2": sizes.StepSize(frames=16, crop=32, num_classes=5, width=1 / 16),
    "spectral_r18_r50": sizes.StepSize(frames=2, crop=32, num_classes=5, width=1 / 16),
}


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "kd_jax.bench", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_every_step_has_sizes_a_batch_and_networks():
  for table in (sizes.PAPER, sizes.CPU, sizes.PAPER_BATCH, sizes.NETWORKS, TINY):
    assert set(table) == set(sizes.STEPS)
  assert sizes.PAPER["genkd_phase2"] == sizes.StepSize(64, 224, 101)
  assert sizes.PAPER_BATCH["pkd_backbone_r18"] == 80


@pytest.mark.slow  # the command line, which runs each measurement in a worker process
def test_cli_runs_one_small_step_and_writes_json_and_markdown(tmp_path):
  out = tmp_path / "bench"
  proc = _cli("--preset", "cpu", "--steps", "pkd_ic_r18", "--dtypes", "float32", "--torch",
              "none", "--no-pipeline", "--size", "frames=1,crop=32,width=1/16", "--batch", "4",
              "--warmup", "1", "--iters", "2", "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  (row,) = results["rows"]
  j = row["jax"]
  assert j["ok"] and row["batch"] == 4 and row["dtype"] == "float32"
  assert j["clips_per_s"] > 0 and j["flops_per_step"] > 0 and j["compile_s"] > 0
  assert len(j["phases"]["teacher=own"]["times_s"]) == 2
  assert j["memory"]["compiled"]["total"] > 0
  assert set(j["params"]) == set(sizes.NETWORKS["pkd_ic_r18"])
  env = results["environment"]
  assert env["versions"]["jax"] == jax.__version__ and env["cpu_count"] >= 1
  assert env["backend"] == "cpu" and "--steps pkd_ic_r18" in env["command"]
  table = (out / "results.md").read_text()
  assert "| pkd_ic_r18 | float32 | 4 |" in table
  assert "| pkd_ic_r18 | float32 | 4 |" in proc.stdout


def test_flops_from_cost_analysis_match_hand_counts():
  m, k, n = 64, 96, 48
  a, b = jnp.ones((m, k)), jnp.ones((k, n))
  matmul = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
  assert workers.flops_of(matmul.cost_analysis()) == 2 * m * n * k

  # NHWC conv, HWIO kernel, VALID: 2 * (B * Ho * Wo * Cout) * (kh * kw * Cin).
  x, w = jnp.ones((2, 10, 12, 3)), jnp.ones((3, 5, 3, 8))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  flops = workers.flops_of(conv.lower(x, w).compile().cost_analysis())
  assert flops == 2 * (2 * 8 * 8 * 8) * (3 * 5 * 3)


def test_flops_of_reads_every_cost_analysis_shape():
  assert workers.flops_of({"flops": 10.0, "bytes accessed": 3.0}) == 10.0
  assert workers.flops_of([{"flops": 10.0}, {"flops": 5.0}]) == 15.0
  assert workers.flops_of(None) is None
  assert workers.flops_of([{"bytes accessed": 3.0}]) is None
  assert workers.flops_of({"flops": 0.0}) is None


def test_mfu_arithmetic_against_hand_computation():
  h100 = workers.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16")
  assert h100 == 989.5e12
  assert workers.peak_flops("NVIDIA H100 80GB HBM3", "float32") == 494.5e12
  assert workers.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756.5e12
  assert workers.peak_flops("NVIDIA H200", "bfloat16") == 989.5e12
  assert workers.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 156e12
  assert workers.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert workers.peak_flops("cpu", "float32") is None
  # 4.2 TFLOP in 10 ms is 420 TFLOP/s: 42.45 % of 989.5.
  assert workers.mfu(4.2e12, 0.01, h100) == pytest.approx(420 / 989.5)
  assert workers.mfu(4.2e12, 0.01, None) is None
  assert workers.mfu(None, 0.01, h100) is None


def test_bad_step_name_exits_2_with_one_line():
  proc = _cli("--steps", "pkd_ic_r18,nope", timeout=60)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown step 'nope'" in lines[0], proc.stderr
  assert "pkd_backbone_r18" in lines[0]  # says what is allowed


@pytest.mark.parametrize("args, message", [
    (["--dtypes", "float16"], "unknown dtype 'float16'"),
    (["--batch", "lots"], "--batch must be"),
    (["--torch", "jit"], "unknown --torch variant"),
    (["--size", "depth=3"], "--size takes KEY=VALUE"),
    (["--size", "crop=0"], "positive int"),
    (["--preset", "laptop"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, message):
  assert run.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err


def test_largest_batch_search_doubles_until_out_of_memory():
  calls = []

  def fake_launch(spec):  # a device where 4x the paper batch fits and 8x does not
    calls.append((spec["kind"], spec["batch"], bool(spec.get("probe"))))
    if spec["batch"] > 4 * sizes.PAPER_BATCH["pkd_ic_r18"]:
      return {"ok": False, "error": "JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory",
              "oom": True}
    return {"ok": True, "batch": spec["batch"], "clips_per_s": 10.0 * spec["batch"],
            "step_s": 0.1, "compile_s": 1.0}

  args = run.parse_args(["--steps", "pkd_ic_r18", "--dtypes", "bfloat16", "--batch", "max",
                         "--torch", "none", "--no-pipeline"])
  args.preset, args.warmup, args.iters = "paper", 1, 1
  env = {"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "device_count": 1,
         "versions": {}, "cpu_count": 2, "date": "today"}
  bench = run.Bench(args, fake_launch, env)
  bench.run()
  assert [(r["batch"], r["batch_kind"]) for r in bench.rows] == [(32, "paper"), (128, "max")]
  assert calls == [("jax", 32, False), ("jax", 64, True), ("jax", 128, True), ("jax", 256, True),
                   ("jax", 128, False)]
  assert "| pkd_ic_r18 | bfloat16 | 128 (max) | 1280.0 |" in bench.markdown()


def test_progress_line_says_how_many_data_workers_the_step_needs(capsys):
  def fake_launch(spec):  # a step at 120 clips/s, a pipeline worker at 16 clips/s
    if spec["kind"] == "pipeline":
      return {"ok": True, "clips_per_s_per_worker": 16.0}
    return {"ok": True, "batch": spec["batch"], "clips_per_s": 120.0, "step_s": 0.25,
            "compile_s": 1.0}

  args = run.parse_args(["--steps", "pkd_ic_r18", "--dtypes", "bfloat16", "--torch", "none"])
  args.preset, args.warmup, args.iters = "paper", 1, 1
  env = {"backend": "gpu", "device_kind": "NVIDIA H200", "device_count": 1, "versions": {},
         "cpu_count": 2, "date": "today"}
  bench = run.Bench(args, fake_launch, env)
  bench.run()
  (row,) = bench.rows
  assert row["workers_needed"] == pytest.approx(120 / 16)
  err = capsys.readouterr().err
  assert "[jax] pkd_ic_r18 bfloat16 batch 32: 120.00 clips/s" in err
  assert "needs 7.5 data workers at 16.0 clips/s each" in err
  assert "| 16.00 | 7.5 |" in bench.markdown()


def test_data_bench_measures_the_decode_bound_and_a_baseline_side_by_side(tmp_path):
  from kd_jax.data import bench as data_bench  # pylint: disable=g-import-not-at-top
  from kd_jax.data import codec  # pylint: disable=g-import-not-at-top
  out = tmp_path / "data_bench.json"
  assert data_bench.main(["--clips", "2", "--frames", "14", "--height", "48", "--width", "64",
                          "--workers", "0", "--kinds", "compressed", "--batch_size", "2",
                          "--batches", "1", "--repeats", "1", "--pipeline_repeats", "1",
                          "--baseline", codec.__file__, "--json", str(out)]) == 0
  r = json.loads(out.read_text())
  # 2 clips of 14 frames, GOPs of 12: positions 1..13 of a clip decode 2..12, then 1, 2 frames.
  assert 1 < r["frames_per_sample"] < 12
  for k in ("wall", "cpu"):
    assert r["decode_bound"][k] == pytest.approx(r["decode_rgb"][k] / r["frames_per_sample"])
    assert r["sample_to_bound_ratio"][k] == pytest.approx(
        r["sample_mv_residual"][k] / r["decode_bound"][k])
    base = r["baseline"]
    assert base["sample_speedup"][k] == pytest.approx(
        r["sample_mv_residual"][k] / base["sample_mv_residual"][k])
  pipe = base["pipeline"]["compressed/w0"]
  mine = r["pipeline"]["compressed/w0"]
  assert pipe["speedup"] == pytest.approx(mine["clips_per_s"] / pipe["clips_per_s"])
  assert pipe["speedup_cpu"] == pytest.approx(mine["clips_per_cpu_s"] / pipe["clips_per_cpu_s"])
  assert len(r["setup"]["load_average"]) == 3
  # augment='device' beside it: the host half in the same alternation, the device half timed.
  dev_pipe = base["pipeline"]["compressed-device/w0"]
  assert dev_pipe["clips_per_s"] == pipe["clips_per_s"]  # one baseline for both variants
  assert dev_pipe["speedup"] == pytest.approx(
      r["pipeline"]["compressed-device/w0"]["clips_per_s"] / pipe["clips_per_s"])
  dev = r["device_augment"]
  assert dev["backend"] == jax.default_backend() and dev["batch_size"] == 2
  assert dev["ms_per_clip"] > 0 and dev["clips_per_s"] == pytest.approx(1e3 / dev["ms_per_clip"])
  # Raw input per clip: 3 segments of 64x48, uint8 RGB + int16 MV (2) + int16 residual (3).
  assert dev["raw_mb_per_clip"] == pytest.approx(3 * 48 * 64 * (3 + 4 + 6) / 2**20, rel=0.01)
  with pytest.raises(FileNotFoundError, match="--baseline"):
    data_bench.load_codec(str(tmp_path / "missing.py"))


def test_size_overrides_parse_fractions():
  assert run.parse_size("crop=32, width=1/16,frames=2") == {"crop": 32, "width": 0.0625,
                                                             "frames": 2}


def test_pipeline_worker_reports_clips_per_second_per_worker():
  r = workers.run_worker({"kind": "pipeline", "step": "pkd_ic_r18",
                          "size": TINY["pkd_ic_r18"].to_dict()})
  assert r["ok"], r
  assert r["clips_per_s_per_worker"] > 0 and r["modalities"] == ["mv", "residual"]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
@pytest.mark.parametrize("step", sizes.STEPS)
def test_torch_steps_have_the_jax_parameter_counts(step):
  from kd_jax.bench import jax_steps
  from kd_jax.bench import torch_steps
  if step not in torch_steps.STEPS:
    pytest.skip(f"no PyTorch version of {step}")
  want = jax_steps.param_count(step, TINY[step])
  assert set(want) == set(sizes.NETWORKS[step])
  assert want["student"] > 0
  assert dict(torch_steps.param_count(step, TINY[step])) == want


def test_jax_param_count_of_the_real_pkd_networks():
  from kd_jax.bench import jax_steps
  counts = jax_steps.param_count("pkd_backbone_r18", sizes.PAPER["pkd_backbone_r18"])
  # torchvision ResNet-18 has 11,689,512 parameters with a 1000-class fc (513,000 of them);
  # data_bn adds 6 (3 channels, scale and bias) and the 101-class fc has 51,813.
  assert counts == {"student": 11_689_512 - 513_000 + 51_813 + 6, "teacher": 0}

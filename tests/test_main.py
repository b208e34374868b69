"""The command line: flags, one-line errors with exit status 2, config.json, and the smoke run."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kd_jax import main as kd_main
from kd_jax.methods import smoke

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "kd_jax.main", *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
  )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
  assert proc.returncode == 2, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("kd_jax: error: ")
  assert "Traceback" not in proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize(
    "args, needles",
    [
        (("--config", "configs/smoke.py", "--config.method=no_such_method"),
         ("'no_such_method'", "available: ", "smoke")),
        (("--config", "configs/does_not_exist.py"), ("configs/does_not_exist.py", "not found")),
        (("--config", "configs/smoke.py", "--config.smoke.widht=3"),
         ("--config.smoke.widht=3", "'widht'")),
        (("--config", "configs/smoke.py", "--config.seed=abc"), ("--config.seed=abc",)),
        (("--config", "configs/smoke.py:no_such_variant"), ("no_such_variant",)),
        (("--workdir", "/tmp/x"), ("--config is required",)),
        (("--config", "configs/smoke.py", "stray"), ("unexpected arguments",)),
    ],
    ids=["unknown-method", "missing-file", "unknown-field", "bad-type", "bad-variant",
         "no-config", "stray-arg"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needles):
  if "--workdir" not in args:
    args = (*args, "--workdir", str(tmp_path / "wd"))
  assert_one_line_error(run_cli(*args), *needles)
  assert not (tmp_path / "wd").exists(), "nothing may be written for a rejected command line"


def test_helpfull_lists_config_and_workdir():
  proc = run_cli("--helpfull")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout + proc.stderr
  for flag in ("--config:", "--workdir:", "--[no]distributed:"):
    assert flag in out


@pytest.mark.parametrize(
    "spec, want",
    [
        ("configs/pkd_hmdb.py", os.path.join("runs", "pkd_hmdb")),
        ("configs/quickstart.py:smoke", os.path.join("runs", "quickstart_smoke")),
        ("/abs/path/x.py:a,b=1", os.path.join("runs", "x_a_b_1")),
    ],
)
def test_default_workdir(spec, want):
  assert kd_main.default_workdir(spec) == want


def _tensorboard_tags(logdir: pathlib.Path) -> set[str]:
  """Scalar tags in TensorBoard event files, read with the TFRecord framing by hand."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  tags = set()
  for path in logdir.glob("events.out.tfevents.*"):
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      tags.update(v.tag for v in event.summary.value)
      pos += 12 + length + 4
  return tags


def _checkpoint_top1(workdir: pathlib.Path, stage: str, config: dict) -> float:
  """Test top-1 of a smoke student's final weights (what a finished stage keeps, with
  train.keep_finished='weights'), computed without the engine's evaluation."""
  cfg = ml_collections.ConfigDict(config["smoke"])
  path = workdir / "checkpoints" / f"{stage}-final" / str(cfg.num_steps) / "weights"
  ckptr = ocp.PyTreeCheckpointer()
  # As numpy arrays: no sharding to look up, and nothing of the run's device layout is reused.
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          ckptr.metadata(path).item_metadata.tree)
  restored = ckptr.restore(path, restore_args=as_numpy)
  data = smoke.make_data(cfg, cfg.num_test, config["seed"] + 1)  # the run's test split
  student = smoke.SequenceMLP(cfg.student_width, cfg.num_classes)
  logits, _ = student.apply({"params": restored["params"]}, data["x"])
  return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == data["label"]))


@pytest.mark.slow  # two command-line runs (150 steps of three stages, then a short rerun)
def test_smoke_run_end_to_end(tmp_path):
  workdir = tmp_path / "smoke"
  proc = run_cli("--config", "configs/smoke.py", "--workdir", str(workdir),
                 "--config.smoke.num_steps=150")
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["method"] == "smoke" and config["smoke"]["num_steps"] == 150
  results = json.loads((workdir / "results.json").read_text())
  top1 = {stage: m["top1"] for stage, m in results["stages"].items()}
  assert set(top1) == {"teacher", "student_ce", "student_kd"}
  assert results["stages"]["student_kd"]["num_examples"] == 2000
  # Ten classes: chance is 0.1. The wide teacher must be well above chance and above the student.
  assert top1["teacher"] > 0.6 and top1["teacher"] > top1["student_ce"]
  # The gain, by another route than the run's: the two students' final checkpoints applied here
  # to the regenerated test set, top-1 counted with numpy. A near-tie may land on the other class
  # in a different batching: 1e-3 is two of the 2000 examples.
  own = {stage: _checkpoint_top1(workdir, stage, config) for stage in ("student_ce", "student_kd")}
  for stage, value in own.items():
    assert top1[stage] == pytest.approx(value, abs=1e-3), stage
  gain = own["student_kd"] - own["student_ce"]
  # Distillation helps by several points here (the config's docstring), so the gain's sign is
  # tested too: a gain of about zero could not tell kd - ce from ce - kd.
  assert gain > 0.01, own
  assert results["kd_gain/top1"] == pytest.approx(gain, abs=1e-3), own
  assert "from distillation" in proc.stdout
  assert "student_kd: 100%" in proc.stderr  # The progress bar of the last stage ran to the end.
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {m["stage"] for m in logged} >= {"teacher", "student_ce", "student_kd", "teacher/eval"}
  assert all(np.isfinite(m["loss"]) for m in logged if "loss" in m and "/" not in m["stage"])
  tags = _tensorboard_tags(workdir / "tb")
  assert {"teacher/loss", "student_kd/kd", "student_kd/learning_rate", "teacher/eval/top1"} <= tags

  # A second run with a different config keeps the first config.json beside the new one.
  proc = run_cli("--config", "configs/smoke.py", "--workdir", str(workdir),
                 "--config.smoke.num_steps=2", "--config.smoke.num_test=10")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((workdir / "config.1.json").read_text())["smoke"]["num_steps"] == 150
  assert json.loads((workdir / "config.json").read_text())["smoke"]["num_steps"] == 2


@pytest.mark.slow  # two command-line runs of the smoke method
def test_relative_workdir_checkpoints_and_resumes(tmp_path):
  """A relative --workdir (the default one is) lands under the current directory; orbax needs an
  absolute checkpoint path, which the command line makes of it."""
  cmd = [sys.executable, "-m", "kd_jax.main", "--config", str(REPO / "configs" / "smoke.py"),
         "--workdir", "runs/rel", "--config.smoke.num_steps=4", "--config.smoke.num_test=10",
         "--config.train.checkpoint_every=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for _ in range(2):  # the second run finds the finished stages in the same place
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "runs" / "rel" / "checkpoints" / "teacher-final" / "4").is_dir()
  assert proc.stderr.count("finished earlier") == 3


"""The pkd method: curriculum, phase-tagged batches, config errors, and the smoke quickstart."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _pkd_report
from kd_jax.methods import pkd
from kd_jax.train import weights

REPO = pathlib.Path(__file__).resolve().parents[1]
BOUNDS = (50 / 300, 100 / 300)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "kd_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("kd_jax: error: ")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  return lines[0]


@pytest.mark.parametrize("network, want", [
    ("mv", {0: "mv", 49: "mv", 50: "residual", 99: "residual", 100: "mv", 299: "mv"}),
    ("residual", {0: "mv", 49: "mv", 50: "residual", 99: "residual", 100: "residual"}),
    ("iframe", {0: "mv", 49: "mv", 50: "residual", 99: "residual", 100: "iframe", 299: "iframe"}),
])
def test_official_curriculum_at_the_epoch_boundaries(network, want):
  teachers = pkd.curriculum("progressive", network, 300, BOUNDS)
  assert len(teachers) == 300
  for epoch, teacher in want.items():
    assert teachers[epoch] == teacher, epoch


def test_curriculum_scales_to_the_budget_and_other_schedules():
  # 30 epochs: boundaries 50/300 * 30 = 5 and 100/300 * 30 = 10.
  assert pkd.boundary_epochs(30, BOUNDS) == [5, 10]
  t = pkd.curriculum("progressive", "residual", 30, BOUNDS)
  assert t[:5] == ["mv"] * 5 and t[5:10] == ["residual"] * 5 and t[10:] == ["residual"] * 20
  t = pkd.curriculum("mv_r_i", "residual", 30, BOUNDS)
  assert (t[4], t[5], t[9], t[10]) == ("mv", "residual", "residual", "iframe")
  t = pkd.curriculum("anti_curriculum", "mv", 300, BOUNDS)
  assert (t[0], t[49], t[50], t[99], t[100]) == ("mv", "mv", "residual", "residual", "mv")
  t = pkd.curriculum("anti_curriculum", "iframe", 300, BOUNDS)
  assert (t[0], t[50], t[100]) == ("iframe", "residual", "mv")
  assert set(pkd.curriculum("iframe_only", "mv", 20, ())) == {"iframe"}
  with pytest.raises(UserError, match="teacher_schedule"):
    pkd.curriculum("mv_first", "mv", 10, BOUNDS)


def test_the_teacher_phase_follows_the_step():
  spe, epochs, bounds = 5, 6, (1 / 3, 2 / 3)  # epochs 0-1, 2-3, 4-5
  at = jax.jit(lambda step: pkd.teacher_phase_at(step, spe, epochs, bounds))
  assert [int(at(jnp.int32(s))) for s in range(30)] == [0] * 10 + [1] * 10 + [2] * 10
  assert [int(at(jnp.int32(s))) for s in range(0, 30, 5)] == [
      pkd.teacher_phase(e, epochs, bounds) for e in range(6)]
  assert int(pkd.teacher_phase_at(jnp.int32(7), spe, epochs, ())) == 0  # one-teacher schedules


def test_batches_resume_before_their_iterator_is_built():
  arrays = {"x": np.arange(20, dtype=np.float32), "label": np.zeros(20, np.int32)}

  def make():
    return pkd.Batches(lambda: train.train_batches(arrays, global_batch_size=4,
                                                   per_host_batch_size=4, seed=0))

  a = make()
  for _ in range(12):
    next(a)
  b = make()
  b.set_state(a.get_state())  # before the inner iterator exists: applied when it is built
  for _ in range(3):
    np.testing.assert_array_equal(next(a)["x"], next(b)["x"])


def test_host_init_matches_the_model_variables():
  config = pkd.base_config()
  for name in pkd.NETWORKS:
    config.networks[name].model_kwargs = {"width": 8, "stage_sizes": (1, 1, 1, 1)}
  nets = pkd.build_networks(config, 5)
  for net in nets.values():
    ex = pkd.backbone_example(net, 32)
    want = jax.eval_shape(lambda x: net.backbone.init(jax.random.key(0), x, train=False), ex)
    got = weights.host_init(net.backbone, ex, seed=0)
    assert jax.tree.structure(want) == jax.tree.structure(got)
    assert all(w.shape == g.shape for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)))
    # He-normal convs: std sqrt(2 / fan_out); BatchNorm variance 1.
    k = got["params"]["layer1_0"]["conv1"]["kernel"]
    std = np.sqrt(2 / (k.shape[0] * k.shape[1] * k.shape[3]))
    assert abs(k.std() - std) < 0.2 * std
    assert np.all(got["batch_stats"]["bn1"]["var"] == 1)
  # Same seed, same start (CE and PKD ICs share their initialisation).
  a = pkd.init_heads(nets["mv"], 32, 3)[0]
  b = pkd.init_heads(nets["mv"], 32, 3)[0]
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_ic_heads_follow_the_backbone_dtype():
  config = pkd.base_config()
  for name in pkd.NETWORKS:
    config.networks[name].model_kwargs = {"width": 8, "stage_sizes": (1, 1, 1, 1)}
  config.networks["mv"].model_kwargs.dtype = "bfloat16"
  nets = pkd.build_networks(config, 5)
  assert jnp.dtype(nets["mv"].heads.dtype) == jnp.bfloat16
  assert jnp.dtype(nets["iframe"].heads.dtype) == jnp.float32


@pytest.mark.parametrize("override, needle", [
    ("--config.ic.teacher_schedule=mv_first", "unknown ic.teacher_schedule 'mv_first'"),
    ("--config.wise.order=R,MV,X", "wise.order"),
    ("--config.wise.variants=wise,bogus", "unknown wise.variants"),
    ("--config.ic.bn_mode=drift", "ic.bn_mode"),
])
def test_bad_schedule_or_exits_fail_before_any_compute(tmp_path, override, needle):
  data_dir = tmp_path / "tfds"
  line = one_line_error(run_cli("--config", "configs/quickstart.py:smoke", "--workdir",
                                str(tmp_path / "wd"), f"--config.data.data_dir={data_dir}",
                                override, timeout=120))
  assert needle in line
  assert not data_dir.exists(), "no data may be prepared for a rejected config"
  assert not (tmp_path / "wd" / "checkpoints").exists()


def test_missing_dataset_names_the_prepare_command(tmp_path):
  line = one_line_error(run_cli("--config", "configs/pkd_hmdb.py:split=2", "--workdir",
                                str(tmp_path / "wd"), f"--config.data.data_dir={tmp_path}",
                                timeout=120))
  assert f"python -m kd_jax.data.prepare hmdb51/split2 --data_dir {tmp_path}" in line
  assert "--manual_dir" in line


def test_ic_gains_are_pkd_minus_ce_against_hand_values():
  # Two evaluations per stage, at steps 4 and 8 (4 steps per epoch). R1: PKD better; R2: PKD
  # worse; R3: a tie. The expected numbers are written out, not computed like the code does.
  ce = [(4, {"R1/top1": 0.25, "R2/top1": 0.5, "R3/top1": 0.5}),
        (8, {"R1/top1": 0.5, "R2/top1": 0.25, "R3/top1": 0.5})]
  kd = [(4, {"R1/top1": 0.75, "R2/top1": 0.25, "R3/top1": 0.5}),
        (8, {"R1/top1": 0.625, "R2/top1": 0.125, "R3/top1": 0.5})]
  backbone = [(5, {"R/top1": 0.5}), (10, {"R/top1": 0.75})]
  networks, ic = _pkd_report.accuracies({"backbone": backbone, "ic_ce": ce, "ic_pkd": kd},
                                        [("", ["R"])], {"R": 5}, 4)
  assert networks == {"R": {"best": 0.75, "best_epoch": 2, "last": 0.75, "evaluations": 2}}
  assert ic["R1"]["ce"] == {"best": 0.5, "best_epoch": 2, "last": 0.5, "evaluations": 2}
  assert ic["R1"]["pkd"] == {"best": 0.75, "best_epoch": 1, "last": 0.625, "evaluations": 2}
  assert (ic["R1"]["gain_best"], ic["R1"]["gain_last"]) == (0.25, 0.125)
  assert (ic["R2"]["gain_best"], ic["R2"]["gain_last"]) == (-0.25, -0.125)
  assert (ic["R3"]["gain_best"], ic["R3"]["gain_last"]) == (0.0, 0.0)


@pytest.mark.slow  # two command-line runs; mostly XLA compilation (about 3-5 min on 2 cores)
def test_smoke_quickstart_over_two_seeds_with_selection_and_resume(tmp_path):
  wd, data_dir = tmp_path / "qs", tmp_path / "tfds"
  # The official protocol's pieces: best test-split weights, train-mode BN of the frozen backbone;
  # two IC-training seeds on the same backbones.
  args = ("--config", "configs/quickstart.py:smoke", "--workdir", str(wd),
          f"--config.data.data_dir={data_dir}", "--config.selection=best_test",
          "--config.ic.bn_mode=train", "--config.seeds=(0,1)")
  proc = run_cli(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Internal classifiers, CE vs PKD" in proc.stdout and "WISE" in proc.stdout

  runs = {s: json.loads((wd / f"seed{s}" / "results.json").read_text()) for s in (0, 1)}
  backbone_log = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
  for seed, results in runs.items():
    rd = wd / f"seed{seed}"
    assert results["dataset"] == "synthetic_actions/tiny" and results["num_classes"] == 4
    assert results["seed"] == seed and results["selection"]["mode"] == "best_test"
    assert set(results["networks"]) == {"R", "MV", "I"}
    assert set(results["ic"]) == {f"{n}{i}" for n in ("R", "MV", "I") for i in (1, 2, 3)}
    # Each IC's accuracies and gains, by another route than the run's: from the evaluation lines
    # of metrics.jsonl, read here (each stage's last evaluation and its best one).
    logged = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    evals = {}
    for key, row in results["ic"].items():
      for kind in ("ce", "pkd"):
        by_step = sorted({x["step"]: x[f"{key}/top1"] for x in logged
                          if x["stage"] == f"ic_{kind}/eval"}.items())
        values = [v for _, v in by_step]
        assert values and all(0.0 <= v <= 1.0 for v in values), (key, kind)
        assert row[kind]["last"] == values[-1] and row[kind]["best"] == max(values), (key, kind)
        evals[(key, kind)] = by_step
      assert row["gain_best"] == pytest.approx(
          max(v for _, v in evals[(key, "pkd")]) - max(v for _, v in evals[(key, "ce")]))
    # The selected weights are the ones used downstream: each IC's test logits (1 segment, the
    # evaluation's sampling) score exactly its best evaluation, with the backbone statistics of
    # that IC's own step; the final classifier column scores its backbone's best evaluation.
    nets = {"R": "residual", "MV": "mv", "I": "iframe"}
    with np.load(rd / "logits" / "test_s1.npz") as f:
      for (key, kind), by_step in evals.items():
        z = f[f"{nets[key[:-1]]}/{kind}"]
        acc = float(np.mean(z[:, int(key[-1]) - 1].argmax(-1) == f["label"]))
        best_step = max(by_step, key=lambda sv: (sv[1], -sv[0]))[0]
        assert acc == pytest.approx(max(v for _, v in by_step)), (key, kind, acc, by_step)
        assert results["selection"]["steps"][f"{kind}/{key}"] == best_step
      for short, net in nets.items():
        bb = [x[f"{short}/top1"] for x in backbone_log if x["stage"] == "backbone/eval"]
        acc = float(np.mean(f[f"{net}/pkd"][:, 3].argmax(-1) == f["label"]))
        assert acc == pytest.approx(max(bb)), (short, acc, bb)
    block = results["wise"]["1/1/1"]
    assert len(block["weights"]) == 12 and len(block["fallback_weights"]) == 3
    costs = block["exit_gmacs_per_video"]
    assert all(a < b for a, b in zip(costs, costs[1:]))  # cumulative along the cascade
    tau1 = block["variants"]["wise"][0]
    assert tau1["threshold"] == 1.0 and tau1["exit_fraction"][-1] == 1.0  # nothing exits early
    assert tau1["gmacs_per_video"] == pytest.approx(costs[-1])
    # PKD stage: 6 epochs of 2 steps; the teacher changes at epochs round(6/6) = 1 and
    # round(6/3) = 2: MV for steps 1-2, R for 3-4, the own final classifier for 5-12.
    phases = {x["step"]: x["teacher_phase"] for x in logged if x["stage"] == "ic_pkd"}
    assert [phases[s] for s in sorted(phases)] == [0, 0, 1, 1] + [2] * 8

  # The summary of the two real runs: mean ± std of their numbers.
  report = (wd / "report.md").read_text()
  for section in ("## Run", "## Modality networks", "## Internal classifiers: CE versus PKD",
                  "## WISE", "## Accuracy versus compute", "## Cost model"):
    assert section in report
  assert "mean ± std over 2 runs" in report and (wd / "tradeoff.png").stat().st_size > 1000
  # PKD's effect: per run the mean over the ICs of PKD - CE (best evaluations), then over runs.
  diffs = [np.mean([row["pkd"]["best"] - row["ce"]["best"] for row in runs[s]["ic"].values()])
           for s in (0, 1)]
  effect = json.loads((wd / "results.json").read_text())["effect"]
  assert effect["mean"] == pytest.approx(np.mean(diffs)) and effect["n"] == 2
  assert "Distillation effect (PKD mean IC top-1 (best) - CE)" in proc.stdout
  values = [runs[s]["ic"]["R1"]["pkd"]["best"] for s in (0, 1)]
  assert (f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f} (n=2)"
          in report), report

  # A rerun restores every stage and the logits instead of recomputing them.
  before = (wd / "seed1" / "metrics.jsonl").read_text()
  mtime = (wd / "seed1" / "logits" / "test_s1.npz").stat().st_mtime
  proc = run_cli(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count("Stage backbone finished earlier") == 2  # restored for each seed
  for stage in ("ic_ce", "ic_pkd"):
    assert proc.stderr.count(f"Stage {stage} finished earlier") == 2
  assert (wd / "seed1" / "metrics.jsonl").read_text() == before
  assert (wd / "seed1" / "logits" / "test_s1.npz").stat().st_mtime == mtime
  assert json.loads((wd / "seed1" / "results.json").read_text())["ic"] == runs[1]["ic"]

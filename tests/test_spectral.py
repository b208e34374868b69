"""The spectral method: its losses, kernel pairing, adapter, weighting, mutual learning, CLI run."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.fft

from kd_jax import losses
from kd_jax import models
from kd_jax import train
from kd_jax.data import sources
from kd_jax.data import streams
from kd_jax.errors import UserError
from kd_jax.methods import spectral

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-5, atol=1e-6)


# -- NumPy references (float64, from the formulas) -----------------------------------------------


def np_amplitude(x):
  return np.abs(np.fft.rfft(np.asarray(x, np.float64), axis=1, norm="ortho"))


def np_pooled_dct_distribution(kernels):
  """Mean over all (kh, kw) slices of the squared 2-D orthonormal DCT-II, normalised."""
  energies = []
  for k in kernels:
    k = np.asarray(k, np.float64)
    kh, kw = k.shape[-4:-2]
    slices = np.moveaxis(k, (-4, -3), (0, 1)).reshape(kh, kw, -1)
    for n in range(slices.shape[-1]):
      c = scipy.fft.dct(scipy.fft.dct(slices[:, :, n], type=2, norm="ortho", axis=0), type=2,
                        norm="ortho", axis=1)
      energies.append(c**2)
  e = np.mean(energies, axis=0)
  return e / e.sum()


def np_soft_histogram(values, num_bins=64, r=4.0, scale=None):
  w = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in values])
  scale = w.std() if scale is None else scale
  z = (w - w.mean()) / scale
  c = np.linspace(-r, r, num_bins)
  h = c[1] - c[0]
  counts = np.array([np.exp(-0.5 * ((z - cj) / h) ** 2).sum() for cj in c])
  return counts / counts.sum()


def np_kl(p, q, eps=1e-8):
  return float(np.sum(p * (np.log(p + eps) - np.log(q + eps))))


# -- losses added for the method -----------------------------------------------------------------


def test_pooled_frequency_distribution_matches_scipy_and_pools_any_channels():
  rng = np.random.default_rng(0)
  ks = [rng.normal(size=(3, 3, 4, 8)), rng.normal(size=(3, 3, 1, 5)), rng.normal(size=(3, 3, 8, 2))]
  p = np.asarray(losses.pooled_frequency_distribution([jnp.asarray(k) for k in ks]))
  np.testing.assert_allclose(p, np_pooled_dct_distribution(ks), **TOL)
  assert p.shape == (3, 3) and abs(p.sum() - 1) < 1e-6
  # One kernel: the same as the per-kernel distribution; channel permutations change nothing.
  np.testing.assert_allclose(losses.pooled_frequency_distribution(jnp.asarray(ks[0])),
                             losses.kernel_frequency_distribution(jnp.asarray(ks[0])), **TOL)
  perm = ks[0][:, :, rng.permutation(4)][..., rng.permutation(8)]
  np.testing.assert_allclose(losses.pooled_frequency_distribution(jnp.asarray(perm)), p * 0 +
                             np_pooled_dct_distribution([ks[0]]), **TOL)
  with pytest.raises(ValueError, match="share"):
    losses.pooled_frequency_distribution([jnp.zeros((3, 3, 1, 1)), jnp.zeros((5, 5, 1, 1))])


def test_weight_value_distribution_and_divergences_match_numpy():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(3, 3, 4, 4)), 0.5 * rng.standard_t(3, size=(3, 3, 2, 6))
  p = np.asarray(losses.weight_value_distribution([jnp.asarray(a), jnp.asarray(b)], num_bins=16,
                                                  range_sigmas=3.0))
  np.testing.assert_allclose(p, np_soft_histogram([a, b], 16, 3.0), rtol=1e-4, atol=1e-7)
  q = np.asarray(losses.weight_value_distribution(jnp.asarray(b), num_bins=16, range_sigmas=3.0,
                                                  scale=2.0))
  np.testing.assert_allclose(q, np_soft_histogram([b], 16, 3.0, scale=2.0), rtol=1e-4, atol=1e-7)
  m = 0.5 * (p + q)
  want = {"kl": np_kl(p, q), "sym_kl": np_kl(p, q) + np_kl(q, p),
          "js": 0.5 * np_kl(p, m) + 0.5 * np_kl(q, m)}
  for kind, value in want.items():
    got = float(losses.distribution_divergence(jnp.asarray(q), jnp.asarray(p), kind=kind))
    assert got == pytest.approx(value, rel=1e-4, abs=1e-7), kind
    assert float(losses.distribution_divergence(jnp.asarray(p), jnp.asarray(p), kind=kind)) == (
        pytest.approx(0.0, abs=1e-6))
  # Only the student side gets a gradient.
  g_t, g_s = jax.grad(lambda t, s: losses.distribution_divergence(s, t), argnums=(0, 1))(
      jnp.asarray(p), jnp.asarray(q))
  assert not np.any(np.asarray(g_t)) and np.any(np.asarray(g_s))
  with pytest.raises(ValueError, match="kind"):
    losses.distribution_divergence(jnp.asarray(q), jnp.asarray(p), kind="wasserstein")


# -- spectrum term -------------------------------------------------------------------------------


def test_spectrum_zero_for_identical_and_invariant_to_circular_time_shift():
  rng = np.random.default_rng(2)
  t = jnp.asarray(rng.normal(size=(2, 8, 3, 3, 5)), jnp.float32)
  for kw in ({}, dict(mode="power"), dict(norm="log1p"), dict(norm="l2"), dict(norm="drop_dc"),
             dict(distance="l1"), dict(pool_spatial=True)):
    assert float(spectral.spectrum_distance(t, t, **kw)) == pytest.approx(0.0, abs=1e-6), kw
    shifted = jnp.roll(t, 3, axis=1)  # |rfft| ignores a circular shift in time
    assert float(spectral.spectrum_distance(shifted, t, **kw)) == pytest.approx(0.0, abs=1e-5), kw
  # ... while plain feature mimicking (the complex spectrum) does not.
  assert float(spectral.spectrum_distance(jnp.roll(t, 3, axis=1), t, mode="complex")) > 0.1


def test_spectrum_variants_match_numpy_and_complex_equals_fitnets():
  rng = np.random.default_rng(3)
  s = rng.normal(size=(2, 8, 2, 2, 4))
  t = rng.normal(size=(2, 8, 2, 2, 4)) + 1.0
  a_s, a_t = np_amplitude(s), np_amplitude(t)
  want = {
      (): np.mean((a_s - a_t) ** 2),
      (("mode", "power"),): np.mean((a_s**2 - a_t**2) ** 2),
      (("norm", "log1p"),): np.mean((np.log1p(a_s) - np.log1p(a_t)) ** 2),
      (("norm", "drop_dc"),): np.mean((a_s[:, 1:] - a_t[:, 1:]) ** 2),
      (("distance", "l1"),): np.mean(np.abs(a_s - a_t)),
      (("pool_spatial", True),): np.mean(
          (np_amplitude(s.mean((2, 3))) - np_amplitude(t.mean((2, 3)))) ** 2),
  }
  unit = lambda a: a / np.sqrt((a**2).sum(axis=(1, 2, 3, 4), keepdims=True))
  want[(("norm", "l2"),)] = np.mean((unit(a_s) - unit(a_t)) ** 2)
  for kw, value in want.items():
    got = float(spectral.spectrum_distance(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                           **dict(kw)))
    assert got == pytest.approx(value, rel=1e-4), kw
  # Parseval: the complex orthonormal spectrum's L2 is FitNets' MSE.
  got = float(spectral.spectrum_distance(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                         mode="complex"))
  assert got == pytest.approx(np.mean((s - t) ** 2), rel=1e-4)


def test_adapter_computes_in_the_student_dtype():
  s = jnp.ones((2, 4, 6), jnp.bfloat16)
  for use_bn in (False, True):
    adapter = spectral.SpectrumAdapter(10, use_bn=use_bn, dtype=jnp.bfloat16)
    v = adapter.init(jax.random.key(0), s, train=False)
    assert adapter.apply(v, s, train=False).dtype == jnp.bfloat16
    assert v["params"]["proj"]["kernel"].dtype == jnp.float32


def test_adapter_maps_student_channels_to_teacher_channels_and_learns():
  rng = np.random.default_rng(4)
  s = jnp.asarray(rng.normal(size=(2, 8, 3, 3, 6)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(2, 8, 3, 3, 10)), jnp.float32)
  for use_bn in (False, True):
    adapter = spectral.SpectrumAdapter(10, use_bn=use_bn)
    v = adapter.init(jax.random.key(0), s, train=False)
    out = adapter.apply(v, s, train=False)
    assert out.shape == t.shape
    w = np.asarray(v["params"]["proj"]["kernel"])
    assert w.shape == (6, 10)
    if not use_bn:  # a 1x1 conv: per location, per frame, a matrix product on channels
      np.testing.assert_allclose(out, np.einsum("bthwc,cd->bthwd", s, w)
                                 + np.asarray(v["params"]["proj"]["bias"]), rtol=1e-5, atol=1e-5)
      # Linear, so it commutes with the temporal FFT (spec section 3.3).
      lhs = np.fft.rfft(np.asarray(out) - np.asarray(v["params"]["proj"]["bias"]), axis=1)
      rhs = np.einsum("bfhwc,cd->bfhwd", np.fft.rfft(np.asarray(s), axis=1), w)
      np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)

    def loss(params):
      mapped = adapter.apply({**v, "params": params}, s, train=False)
      return spectral.spectrum_distance(mapped, t)

    g = jax.grad(loss)(v["params"])
    assert np.all(np.isfinite(np.asarray(g["proj"]["kernel"])))
    assert np.abs(np.asarray(g["proj"]["kernel"])).sum() > 0


# -- kernel pairing ------------------------------------------------------------------------------


def _shapes(model, t=2, size=32):
  x = jnp.zeros((1, t, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]


def test_stage_kernels_of_resnets_and_mobilenet_v2_as_documented():
  r50 = models.get("tsm_resnet50", num_classes=5)
  paths = spectral.stage_kernel_paths(r50, _shapes(r50))
  assert paths == {i: [f"layer{i}_{j}/conv2/kernel" for j in range(n)]
                   for i, n in zip((1, 2, 3, 4), (3, 4, 6, 3))}
  r18 = models.get("tsm_resnet18", num_classes=5)
  paths = spectral.stage_kernel_paths(r18, _shapes(r18))
  assert paths == {i: [f"layer{i}_{j}/conv{c}/kernel" for j in (0, 1) for c in (1, 2)]
                   for i in (1, 2, 3, 4)}
  mb = models.get("tsm_mobilenet_v2", num_classes=5)
  paths = spectral.stage_kernel_paths(mb, _shapes(mb))
  # Repeats (1, 2, 3, 4, 3, 3, 1): block 0 (stride 2) has no counterpart; strides 4/8/16/32.
  blocks = {1: [1, 2], 2: [3, 4, 5], 3: [6, 7, 8, 9, 10, 11, 12], 4: [13, 14, 15, 16]}
  assert paths == {s: [f"block{b}/dw_conv/kernel" for b in bs] for s, bs in blocks.items()}
  tiny = models.get("tsm_mobilenet_v2", num_classes=5, tiny=True)  # repeats (1, 2, 2, 1, 2, 1, 1)
  paths = spectral.stage_kernel_paths(tiny, _shapes(tiny))
  blocks = {1: [1, 2], 2: [3, 4], 3: [5, 6, 7], 4: [8, 9]}
  assert paths == {s: [f"block{b}/dw_conv/kernel" for b in bs] for s, bs in blocks.items()}
  params = _shapes(tiny)
  assert all(params[f"block{b}"]["dw_conv"]["kernel"].shape[:3] == (3, 3, 1)
             for bs in blocks.values() for b in bs)


def test_pairing_pairs_stages_and_rejects_unpairable_kernels():
  teacher = models.get("tsm_resnet50", num_classes=5, tiny=True)
  student = models.get("tsm_mobilenet_v2", num_classes=5, tiny=True)
  tp, sp = _shapes(teacher), _shapes(student)
  pairs = spectral.pair_stage_kernels(student, sp, teacher, tp, (2, 4))
  assert [(p.stage, p.student, p.teacher, p.kernel_size) for p in pairs] == [
      (2, ("block3/dw_conv/kernel", "block4/dw_conv/kernel"), ("layer2_0/conv2/kernel",), (3, 3)),
      (4, ("block8/dw_conv/kernel", "block9/dw_conv/kernel"), ("layer4_0/conv2/kernel",), (3, 3))]

  bad = jax.tree.map(lambda x: x, tp)
  bad["layer3_0"]["conv2"]["kernel"] = jax.ShapeDtypeStruct((5, 5, 8, 8), jnp.float32)
  with pytest.raises(UserError, match=r"stage 3: student \(3, 3\) vs teacher \(5, 5\)"):
    spectral.pair_stage_kernels(student, sp, teacher, bad, (1, 2, 3, 4))
  missing = {k: v for k, v in tp.items() if not k.startswith("layer1_")}
  with pytest.raises(UserError, match="stage 1: the teacher .* has no spatial"):
    spectral.pair_stage_kernels(student, sp, teacher, missing, (1, 2))
  with pytest.raises(UserError, match="stages are 1, 2, 3, 4"):
    spectral.pair_stage_kernels(student, sp, teacher, tp, (5,))

  class Other(nn.Module):
    pass

  with pytest.raises(UserError, match="does not know the stages of Other"):
    spectral.stage_kernel_paths(Other(), {})


def test_parameter_term_matches_numpy_for_both_readings():
  teacher = models.get("tsm_resnet50", num_classes=5, tiny=True)
  student = models.get("tsm_resnet18", num_classes=5, tiny=True)
  x = jnp.zeros((1, 2, 32, 32, 3))
  init = lambda m, seed: jax.jit(lambda k: m.init(spectral._fast_key(k), x, train=False))(
      jax.random.key(seed))["params"]
  tp, sp = init(teacher, 1), init(student, 2)
  pairs = spectral.pair_stage_kernels(student, sp, teacher, tp)
  cfg = spectral.base_config().param
  get = lambda tree, p: np.asarray(spectral._get(tree, p))
  s_groups = [[get(sp, p) for p in pair.student] for pair in pairs]
  t_groups = [[get(tp, p) for p in pair.teacher] for pair in pairs]
  dct = [(np_pooled_dct_distribution(t), np_pooled_dct_distribution(s))
         for s, t in zip(s_groups, t_groups)]
  got = float(spectral.parameter_term(sp, tp, pairs, cfg))
  assert got == pytest.approx(np.mean([np_kl(t, s) for t, s in dct]), rel=1e-4)
  assert got > 0
  assert float(spectral.parameter_term(tp, tp, spectral.pair_stage_kernels(
      teacher, tp, teacher, tp), cfg)) == pytest.approx(0.0, abs=1e-7)
  cfg.divergence = "js"
  js = lambda p, q: 0.5 * np_kl(p, (p + q) / 2) + 0.5 * np_kl(q, (p + q) / 2)
  assert float(spectral.parameter_term(sp, tp, pairs, cfg)) == pytest.approx(
      np.mean([js(t, s) for t, s in dct]), rel=1e-4)
  cfg.divergence, cfg.reading, cfg.hist_bins = "kl", "hist", 32
  for scale in ("own", "teacher"):
    cfg.hist_scale = scale
    want = []
    for s, t in zip(s_groups, t_groups):
      t_scale = np.concatenate([np.ravel(k) for k in t]).std()
      want.append(np_kl(np_soft_histogram(t, 32), np_soft_histogram(
          s, 32, scale=t_scale if scale == "teacher" else None)))
    assert float(spectral.parameter_term(sp, tp, pairs, cfg)) == pytest.approx(
        np.mean(want), rel=1e-3)


# -- ablation entries ----------------------------------------------------------------------------


def test_ablation_entries():
  collab = spectral.base_config().collab
  e = spectral.parse_entry("all", collab)
  assert (e.terms, e.weighting, e.mutual, e.stage_name) == (
      ("kd", "spec", "param"), "uncertainty", False, "student_all")
  e = spectral.parse_entry("param+kd@fixed@mutual", collab)
  assert (e.terms, e.weighting, e.mutual, e.stage_name) == (
      ("kd", "param"), "fixed", True, "student_param_kd_fixed_mutual")
  assert spectral.parse_entry("ce@mutual", collab).mutual is False
  for bad in ("fitnets", "kd@sometimes", ""):
    with pytest.raises(UserError, match="config.ablation entry"):
      spectral.parse_entry(bad, collab)


# -- the student objective: weighting and mutual learning ---------------------------------------


@pytest.fixture(scope="module")
def tiny_setup():
  config = spectral.base_config()
  config.data.num_segments, config.data.crop_size = 2, 32
  config.teacher.kwargs = ml_collections.ConfigDict(dict(tiny=True, width=4))
  config.student.model = "tsm_resnet18"
  config.student.kwargs = ml_collections.ConfigDict(dict(tiny=True, width=4))
  config.kd.weight, config.spec.weight, config.param.weight = 0.5, 2.0, 3.0
  data = streams.Streams(sources.Splits(None, None, None, ["a", "b", "c"]), spec=None)
  setup = spectral.make_setup(config, data)
  teacher_vars = jax.jit(lambda k: setup.teacher.init(spectral._fast_key(k), setup.example,
                                                      train=False))(jax.random.key(7))
  rng = np.random.default_rng(5)
  batch = {"video": jnp.asarray(rng.normal(size=(4, 2, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray([0, 1, 2, 0])}
  return config, setup, teacher_vars, batch


_STEPS = {}


def _grads(setup, entry, teacher_vars, batch, log_vars):
  """Loss, metrics and gradients of one student step; one compilation per (setup, mutual)."""
  config = setup.config
  key = (id(setup), entry.mutual)
  if key not in _STEPS:
    fn = spectral.student_objective(setup, need_teacher=True, mutual=entry.mutual)
    init = jax.jit(spectral._student_init_fn(setup, teacher_vars if entry.mutual else None))
    _STEPS[key] = (jax.jit(jax.value_and_grad(fn, has_aux=True)), init(jax.random.key(0)))
  step, (params, state) = _STEPS[key]
  params = dict(params, log_vars=jnp.asarray(log_vars, jnp.float32))
  frozen = {"switch": spectral.switches(entry, config)}
  if not entry.mutual:
    frozen["teacher"] = teacher_vars
  (loss, (metrics, _)), grads = step(params, state, frozen, batch, jax.random.key(1), jnp.int32(0))
  return float(loss), jax.device_get(metrics), grads, params


def test_uncertainty_weights_get_gradients_and_the_sum_is_kendall(tiny_setup):
  config, setup, teacher_vars, batch = tiny_setup
  s = np.array([0.3, -0.2, 0.5, -0.4])
  w = np.array([1.0, 0.5, 2.0, 3.0])
  collab = config.collab
  entry = spectral.parse_entry("all", collab)
  loss, m, grads, _ = _grads(setup, entry, teacher_vars, batch, s)
  values = np.array([m["ce"], m["kd"], m["spec"], m["param"]], np.float64)
  assert np.all(values > 0)
  assert loss == pytest.approx(np.sum(np.exp(-s) * w * values + s), rel=1e-5)
  # d/ds_i (e^{-s_i} w_i L_i + s_i) = 1 - e^{-s_i} w_i L_i
  np.testing.assert_allclose(grads["log_vars"], 1 - np.exp(-s) * w * values, rtol=1e-4)
  assert np.abs(np.asarray(grads["adapters"]["layer4"]["proj"]["kernel"])).sum() > 0

  # One term alone: the others contribute nothing and their s_i get no gradient.
  entry = spectral.parse_entry("spec", collab)
  loss, m, grads, _ = _grads(setup, entry, teacher_vars, batch, s)
  on = np.array([1, 0, 1, 0])
  assert loss == pytest.approx(np.sum(on * (np.exp(-s) * w * values + s)), rel=1e-5)
  np.testing.assert_allclose(grads["log_vars"], on * (1 - np.exp(-s) * w * values), rtol=1e-4,
                             atol=1e-7)

  # Fixed weights: sum w_i L_i, no gradient into the log-variances.
  entry = spectral.parse_entry("all@fixed", collab)
  loss, m, grads, _ = _grads(setup, entry, teacher_vars, batch, s)
  assert loss == pytest.approx(np.sum(w * values), rel=1e-5)
  assert not np.any(np.asarray(grads["log_vars"]))


def test_mutual_learning_trains_the_teacher_only_when_on(tiny_setup):
  config, setup, teacher_vars, batch = tiny_setup
  collab = config.collab
  # Off: the teacher is a frozen input, never a trainable parameter.
  stage, _ = spectral.student_stage(setup, spectral.parse_entry("all", collab), teacher_vars,
                                    eval_batches=None)
  assert "teacher" in stage.frozen
  params, _ = jax.eval_shape(stage.init_fn, jax.random.key(0))
  assert set(params) == {"student", "adapters", "log_vars"}
  # On: the teacher is trainable, with its own rate, and learns from CE + KD towards the student.
  entry = spectral.parse_entry("all@mutual", collab)
  stage, _ = spectral.student_stage(setup, entry, teacher_vars, eval_batches=None)
  assert "teacher" not in stage.frozen
  assert stage.optimizer.lr_multipliers[0] == ("^teacher/", collab.teacher_lr_multiplier)
  loss, m, grads, params = _grads(setup, entry, teacher_vars, batch, np.zeros(4))
  t_grad = grads["teacher"]
  assert sum(float(np.abs(np.asarray(g)).sum()) for g in jax.tree.leaves(t_grad)) > 0
  assert m["teacher_loss"] == pytest.approx(m["teacher_ce"] + collab.mutual_weight
                                            * m["teacher_kd"], rel=1e-5)
  # The student's distillation terms send no gradient into the teacher: its gradient is that of
  # its own loss only, whatever the student's terms.
  entry_ce = spectral.Entry("x", (), "uncertainty", True)
  _, _, grads_ce, _ = _grads(setup, entry_ce, teacher_vars, batch, np.zeros(4))
  for a, b in zip(jax.tree.leaves(t_grad), jax.tree.leaves(grads_ce["teacher"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# -- the command line ----------------------------------------------------------------------------


def _run(*args, env_extra=None, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "kd_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # two command-line runs: prepares the data, trains 2 x 3 stages, then restores
def test_smoke_config_end_to_end_over_two_seeds_and_resume(tmp_path):
  args = ["--config", "configs/spectral_quickstart.py:smoke", "--workdir", str(tmp_path / "wd"),
          f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.seeds=(0,1)"]
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Two real runs, each in its own sub-workdir, and their summary: mean ± std of every number.
  summary = json.loads((tmp_path / "wd" / "results.json").read_text())
  per_run = [json.loads((tmp_path / "wd" / f"seed{s}" / "results.json").read_text())
             for s in (0, 1)]
  assert [r["seed"] for r in summary["runs"]] == [0, 1]
  for row_index, stage in enumerate(("teacher", "student_ce", "student_all")):
    values = [r["ablation"][row_index]["top1"] for r in per_run]
    entry = summary["summary"][f"{stage} top-1"]
    assert entry["values"] == values
    assert entry["mean"] == pytest.approx(np.mean(values))
    assert entry["std"] == pytest.approx(np.std(values, ddof=1))
  diffs = [r["ablation"][2]["top1"] - r["ablation"][1]["top1"] for r in per_run]
  assert summary["effect"]["mean"] == pytest.approx(np.mean(diffs))
  assert "2 runs (seeds [0, 1])" in (tmp_path / "wd" / "report.md").read_text()
  assert "Distillation effect" in proc.stdout
  wd = tmp_path / "wd" / "seed0"
  results = per_run[0]
  assert set(results["stages"]) == {"teacher", "student_ce", "student_all"}
  for metrics in results["stages"].values():
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0 and metrics["num_examples"] == 8
  assert [r["stage"] for r in results["ablation"]] == ["teacher", "student_ce", "student_all"]
  curves = results["spectra"]["curves"]
  assert len(curves["teacher"]["own"]) == 4 // 2 + 1  # rFFT bins of 4 segments
  assert {"init", "student_ce", "student_all"} <= set(curves)
  assert set(results["learned_weights"]["student_all"]) == {"ce", "kd", "spec", "param"}
  report = (wd / "report.md").read_text()
  assert "| student_all | CE + kd + spec + param (uncertainty) |" in report
  assert "Inferred choices" in report and (wd / "spectra.png").stat().st_size > 1000
  assert "| stage | objective | top-1 | top-5 |" in proc.stdout

  # A rerun restores every finished stage instead of training again, and reports the same.
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stderr.count("finished earlier") == 6
  again = json.loads((wd / "results.json").read_text())
  assert again["stages"] == results["stages"]


def test_bad_spectral_config_is_one_line(tmp_path):
  proc = _run("--config", "configs/spectral_quickstart.py:smoke", "--workdir", str(tmp_path / "wd"),
              "--config.spec.mode=phase", timeout=120)
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.startswith("kd_jax: error:")]
  assert len(lines) == 1 and "config.spec.mode must be one of" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("name", ["spectral_kinetics", "spectral_ssv2", "spectral_jester"])
def test_full_configs_build_and_ask_for_their_data(tmp_path, name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for variant in (None, "r18", "smoke"):
    config = module.get_config(variant)
    spectral._check_config(config)
    assert [spectral.parse_entry(e, config.collab).stage_name for e in config.ablation]
  config = module.get_config(None)
  assert config.student.model == "tsm_mobilenet_v2" and config.teacher.model == "tsm_resnet50"
  assert config.data.num_segments == 8 and config.student.optimizer.grad_clip_norm == 20.0
  assert module.get_config("r18").student.model == "tsm_resnet18"
  config.data.data_dir = str(tmp_path)
  with pytest.raises(UserError, match=r"is not prepared in .*python -m kd_jax.data.prepare"):
    spectral.run(config, str(tmp_path / "wd"))


def test_a_loaded_teacher_is_evaluated_on_every_example(tiny_setup, tmp_path, cpu_devices):
  """``_evaluate_teacher`` (a teacher from a checkpoint) through Runner.predict, against NumPy."""
  config, setup, teacher_vars, _ = tiny_setup
  config = ml_collections.ConfigDict(config.to_dict())
  config.teacher.batch_size = 8
  rng = np.random.default_rng(11)
  arrays = {"video": rng.normal(size=(13, 2, 32, 32, 3)).astype(np.float32),  # 13: padding
            "label": rng.integers(0, 3, size=13).astype(np.int32)}
  runner = train.Runner(config, str(tmp_path))
  got = spectral._evaluate_teacher(
      dataclasses.replace(setup, config=config), teacher_vars,
      lambda per_host: train.eval_batches(arrays, global_batch_size=8,
                                          per_host_batch_size=per_host), runner)
  logits = np.asarray(setup.teacher.apply(teacher_vars, jnp.asarray(arrays["video"]),
                                          train=False)[0])
  assert got["num_examples"] == 13
  assert got["top1"] == pytest.approx(np.mean(logits.argmax(-1) == arrays["label"]))
  assert got["top5"] == 1.0  # 3 classes

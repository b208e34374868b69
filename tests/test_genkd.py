"""GenKD: the method's own pieces against hand-computed values, the gradient-flow table of
genkd.md 5.2, the global renormalisation on 1 vs 8 devices, and the smoke config end to end."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax.methods import genkd
from kd_jax.train import compilation
from subprocess_env import single_device_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------------------------
# Hand-computed values.


def test_double_softmax_loss_matches_hand_computed_values():
  # Step 1: softmax([0, ln 3]) = [1/4, 3/4]; step 2: softmax([0, 0]) = [1/2, 1/2].
  logits = jnp.array([[[0.0, math.log(3.0)], [0.0, 0.0]]])
  labels = jnp.array([1])
  # p = [3/4, 5/4]; CE(p, 1) = log(1 + exp(3/4 - 5/4)).
  np.testing.assert_allclose(genkd.video_scores(logits), [[0.75, 1.25]], rtol=1e-6)
  np.testing.assert_allclose(genkd.classification_loss(logits, labels),
                             [math.log(1 + math.exp(-0.5))], rtol=1e-6)
  # Plain CE on the time-averaged logits [0, ln(3)/2]: log(1 + 3^-1/2).
  np.testing.assert_allclose(genkd.classification_loss(logits, labels, "mean_logits"),
                             [math.log(1 + 3 ** -0.5)], rtol=1e-6)
  with pytest.raises(ValueError, match="kind"):
    genkd.classification_loss(logits, labels, "ce")


def test_reconstruction_ramp_matches_hand_computed_values():
  official = [float(genkd.reconstruction_weight(e)) for e in (1, 2, 10, 20, 21, 200)]
  np.testing.assert_allclose(official, [0.025, 0.05, 0.25, 0.5, 0.5, 0.5], rtol=1e-6)
  # GAF / dev phase 1: 0.5 * min(e, max_epoch) / max_epoch.
  linear = [float(genkd.reconstruction_weight(e, kind="linear", ramp_epochs=300))
            for e in (1, 150, 300)]
  np.testing.assert_allclose(linear, [0.5 / 300, 0.25, 0.5], rtol=1e-6)
  assert [tuple(map(int, genkd.pass_and_epoch(jnp.int32(c), 3))) for c in (0, 2, 3, 5, 6, 9)] == [
      (0, 1), (0, 1), (1, 1), (1, 1), (0, 2), (1, 2)]


def test_foreground_matches_hand_computed_values():
  f = jnp.array([1.0, 3.0]).reshape(2, 1, 1, 1, 1)
  a = jnp.array([0.5, 0.25]).reshape(2, 1, 1)
  # Global: F*A = [0.5, 0.75], scale = (1 + 3) / 1.25 = 3.2.
  np.testing.assert_allclose(genkd.foreground(f, a).ravel(), [1.6, 2.4], rtol=1e-6)
  # Per sample: every clip keeps its own sum.
  np.testing.assert_allclose(genkd.foreground(f, a, scope="per_sample").ravel(), [1.0, 3.0],
                             rtol=1e-6)
  zero = genkd.foreground(jnp.zeros((1, 1, 1, 1, 1)), a[:1])
  assert np.all(np.isfinite(zero)) and float(jnp.sum(zero)) == 0.0


def test_foreground_renormalisation_is_global_on_1_and_8_devices(cpu_devices):
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  rng = np.random.default_rng(0)
  f = rng.uniform(0, 2, size=(8, 2, 3, 3, 64)).astype(np.float32)
  a = rng.uniform(0.05, 1, size=(8, 2, 64)).astype(np.float32)
  expected = f * a[:, :, None, None, :] * (f.astype(np.float64).sum()
                                           / (f * a[:, :, None, None, :]).astype(np.float64).sum())
  outs = []
  for n in (1, 8):
    mesh = Mesh(np.asarray(cpu_devices[:n]), ("data",))
    sh = NamedSharding(mesh, P("data"))
    fn = jax.jit(genkd.foreground, in_shardings=(sh, sh), out_shardings=sh)
    out = fn(jax.device_put(f, sh), jax.device_put(a, sh))
    assert len(out.sharding.device_set) == n
    outs.append(np.asarray(out))
  np.testing.assert_allclose(outs[0], expected, rtol=2e-5)
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=0)


def test_alternating_optimizer_steps_one_part_and_freezes_the_others_state():
  params = {"cvae": jnp.ones(3), "net": jnp.ones(2)}
  grads = {"cvae": jnp.full(3, 0.5), "net": jnp.full(2, 0.5)}
  tx = genkd.alternating([("cvae", optax.adam(0.1)),
                          ("net", optax.chain(optax.add_decayed_weights(0.1),
                                              optax.sgd(0.1, momentum=0.9)))], 2)
  state = tx.init(params)
  history = []
  for step in range(6):  # The engine hands every update its step.
    updates, state = tx.update(grads, state, params, step=jnp.int32(step))
    params = optax.apply_updates(params, updates)
    history.append((np.asarray(updates["cvae"]).copy(), np.asarray(updates["net"]).copy()))
  for step, (u_cvae, u_net) in enumerate(history):
    cvae_phase = (step // 2) % 2 == 0
    assert np.any(u_cvae != 0) == cvae_phase and np.any(u_net != 0) == (not cvae_phase)
  # Adam counted only its own 4 steps (phases 0 and 2), not all 6.
  assert int(state["cvae"][0].count) == 4
  # Its first step after the pause is its third, not a step with stale momentum from the pause.
  np.testing.assert_allclose(history[4][0], -0.1 * np.ones(3), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Gradient flow (genkd.md 5.2).

CLIP = (16, 32, 32, 3)


@pytest.fixture(scope="module")
def tiny_genkd():
  """Tiny student and teacher, both initialised, and a batch of 2 clips."""
  tiny = {"tiny": True}
  student = genkd.build_networks("top_i3d", tiny, tiny, 4)
  teacher = genkd.build_networks("i3d", tiny, tiny, 4)
  init = lambda nets: compilation.jit(lambda k: genkd.init_variables(nets, k, CLIP),
                                      preset="fastest")
  s_params, s_state = init(student)(jax.random.key(0))
  t_params, t_state = init(teacher)(jax.random.key(1))
  t_vars = genkd.teacher_variables(
      genkd.train.TrainState(step=0, params=t_params, model_state=t_state, opt_state=None))
  rng = np.random.default_rng(0)
  batch = {"video": jnp.asarray(rng.normal(size=(2, *CLIP)), jnp.float32),
           "label": jnp.array([0, 3], jnp.int32)}
  return student, teacher, s_params, s_state, t_vars, batch


TERMS = ("loss", "cvae", "gd", "cls", "rec", "ad")


@pytest.fixture(scope="module")
def term_grads(tiny_genkd):
  """``grads(step, use_gd, use_ad) -> {term: (d/d student params, d/d teacher)}``, one compile.

  Every loss term is also a metric, so differentiating the metrics isolates each term's gradient.
  """
  student, teacher, params, state, t_vars, batch = tiny_genkd
  switch = genkd.make_loss_fn(student, genkd.LossConfig(), steps_per_pass=1, teacher=teacher)

  def terms(branch):
    def fn(params, t_vars, step, use_gd, use_ad):
      frozen = {"teacher": t_vars, "use_gd": use_gd, "use_ad": use_ad}
      loss, (metrics, new_state) = branch(params, state, frozen, batch, jax.random.key(7), step)
      values = jnp.stack([loss] + [metrics[k] for k in TERMS[1:]])
      return values, (metrics, new_state)
    return fn

  # One Jacobian per pass: differentiating through the engine's lax.switch would trace both
  # passes' linearisation for every call (minutes on a CPU); the switch's index is checked instead.
  # LLVM at -O0 (the engine's 'fastest' CPU preset): these programs run four times.
  jacs = [compilation.jit(jax.jacrev(terms(b), argnums=(0, 1), has_aux=True), preset="fastest")
          for b in switch.branches]

  def grads(step, use_gd=1.0, use_ad=1.0):
    assert int(switch.index(jnp.int32(step))) == step % 2
    (g_p, g_t), aux = jacs[step % 2](params, t_vars, jnp.int32(step), jnp.float32(use_gd),
                                     jnp.float32(use_ad))
    pick = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
    return {k: (pick(g_p, i), pick(g_t, i)) for i, k in enumerate(TERMS)}, aux

  return grads


def _nonzero(tree) -> bool:
  return any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(tree))


def _groups(g):
  """The columns of the table: backbone (no classifier), attention head, classifier, CVAE."""
  backbone = {k: v for k, v in g["net"]["backbone"].items() if k != "logits"}
  return {"backbone": _nonzero(backbone), "attention": _nonzero(g["net"]["attention_head"]),
          "classifier": _nonzero(g["net"]["backbone"]["logits"]), "cvae": _nonzero(g["cvae"])}


def test_gradient_flow_matches_the_spec_table(tiny_genkd, term_grads):
  none = {"backbone": False, "attention": False, "classifier": False, "cvae": False}
  # Pass A: L_CVAE and 0.01 L_GD reach only the student CVAE; BN statistics still update.
  g, (metrics, new_state) = term_grads(0)
  assert float(metrics["pass"]) == 0 and float(metrics["gd"]) > 0
  for term in ("loss", "cvae", "gd"):
    assert _groups(g[term][0]) == dict(none, cvae=True), term
  old_bs = tiny_genkd[3]["batch_stats"]
  assert _nonzero(jax.tree.map(lambda a, b: a - b, new_state["batch_stats"], old_bs))
  assert set(new_state) == {"batch_stats"}  # No counter of its own: the engine's step is the one.
  # Pass B: L_cls reaches backbone, attention head and classifier; w L_rec and beta L_AD reach
  # backbone and attention head only; nothing reaches the CVAE.
  g, (metrics, _) = term_grads(1)
  assert float(metrics["pass"]) == 1 and float(metrics["ad"]) > 0
  every = {"backbone": True, "attention": True, "classifier": True, "cvae": False}
  assert _groups(g["loss"][0]) == every
  assert _groups(g["cls"][0]) == every
  assert _groups(g["rec"][0]) == dict(every, classifier=False)
  assert _groups(g["ad"][0]) == dict(every, classifier=False)
  # The teacher (network, attention head, CVAE) is frozen in both passes.
  for step in (0, 1):
    g, _ = term_grads(step)
    assert not any(_nonzero(g[t][1]) for t in TERMS)
  # Switched off (the baseline), the distillation terms vanish and cost no teacher pass.
  g, (metrics, _) = term_grads(1, use_gd=0.0, use_ad=0.0)
  assert float(metrics["ad"]) == 0 and not _nonzero(g["ad"][0])


# ------------------------------------------------------------------------------------------------
# The command line.


def _cli(workdir, data_dir, **kwargs):
  cmd = [sys.executable, "-m", "kd_jax.main", "--config", "configs/genkd_quickstart.py:smoke",
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]
  return subprocess.Popen(cmd, cwd=REPO, env=single_device_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kwargs)


def _finish(proc, timeout=900):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out, err


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smoke_config_runs_end_to_end_and_resumes(tmp_path):
  workdir, data_dir = tmp_path / "run", tmp_path / "data"
  # Stopped (SIGTERM, as a preemption) once the baseline student has logged a step.
  proc = _cli(workdir, data_dir)
  metrics = workdir / "metrics.jsonl"
  deadline = time.monotonic() + 900
  while proc.poll() is None and time.monotonic() < deadline:
    if metrics.exists() and '"stage": "student_baseline"' in metrics.read_text():
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = _finish(proc)
  assert "resume" in err and not (workdir / "results.json").exists()

  out, err = _finish(_cli(workdir, data_dir))
  assert "Stage teacher finished earlier" in err
  # Usually stopped mid-stage; on a slow machine the 6-step stage may have ended first.
  assert re.search(r"Stage student_baseline (resumes from step|finished earlier)", err), err[-3000:]
  assert "GenKD" in out and "gain of GenKD" in out
  results = json.loads((workdir / "results.json").read_text())
  assert set(results["stages"]) == set(genkd.STAGES)
  for name in genkd.STAGES:
    assert 0.0 <= results["genkd"][name]["top1"] <= 1.0
  assert (workdir / "report.md").exists() and (workdir / "curves.png").exists()
  # The exported student has no CVAE.
  nets, variables, meta = genkd.load_student(str(workdir / "student.ckpt"))
  assert set(variables["params"]) == {"backbone", "attention_head"}
  assert meta["model"] == "top_i3d"
  x = jnp.zeros((2, 16, 32, 32, 3))
  scores, attention = compilation.jit(lambda v, x: genkd.predict(nets, v["params"],
                                                                  v["batch_stats"], x),
                                       preset="fastest")(variables, x)
  assert scores.shape == (2, 4) and attention.shape[0] == 2

  # A rerun finds every stage finished: nothing is trained again, the numbers are the same.
  _, err = _finish(_cli(workdir, data_dir))
  assert err.count("finished earlier") == len(genkd.STAGES)
  again = json.loads((workdir / "results.json").read_text())
  assert again["genkd"] == results["genkd"]


def test_teacher_starts_from_a_converted_rgb_imagenet_checkpoint(tmp_path):
  """pytorch-i3d's rgb_imagenet.pt (400 classes), converted: every backbone weight but the
  classifier is the checkpoint's; a checkpoint of the other network is refused."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fake_checkpoints import torch_layout_state_dict  # pylint: disable=g-import-not-at-top
  from kd_jax import models  # pylint: disable=g-import-not-at-top
  from kd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from kd_jax.models import convert  # pylint: disable=g-import-not-at-top

  clip = (16, 32, 32, 3)
  sd = torch_layout_state_dict(
      convert.abstract_variables(models.get("i3d", tiny=True, num_classes=400), (1, *clip)),
      np.random.default_rng(0))
  path = str(tmp_path / "i3d_rgb_imagenet")
  convert.save_converted(path, convert.convert_state_dict(sd, "i3d", tiny=True))
  tcfg = ml_collections.ConfigDict(dict(checkpoint=path, model="i3d"))
  pretrained = genkd.load_pretrained(tcfg, "config.teacher")
  nets = genkd.build_networks("i3d", {"tiny": True}, {"tiny": True}, num_classes=4)
  params, state = jax.jit(lambda k: genkd.init_variables(nets, k, clip, pretrained))(
      jax.random.key(0))
  backbone = params["net"]["backbone"]
  np.testing.assert_array_equal(backbone["Conv3d_1a_7x7"]["conv3d"]["kernel"],
                                np.transpose(sd["Conv3d_1a_7x7.conv3d.weight"], (2, 3, 4, 1, 0)))
  np.testing.assert_array_equal(backbone["Mixed_5c"]["b3b"]["bn"]["bias"],
                                sd["Mixed_5c.b3b.bn.bias"])
  np.testing.assert_array_equal(state["batch_stats"]["Mixed_4d"]["b1a"]["bn"]["mean"],
                                sd["Mixed_4d.b1a.bn.running_mean"])
  assert backbone["logits"]["conv3d"]["kernel"].shape[-1] == 4  # new classifier, 4 classes

  tcfg.model = "top_i3d"
  with pytest.raises(UserError, match="holds a i3d.*--model top_i3d"):
    genkd.load_pretrained(tcfg, "config.teacher")

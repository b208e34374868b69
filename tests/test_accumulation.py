"""Gradient accumulation in the engine (kd_jax.train.steps): one update from k micro-batches equals
the full-batch update (NumPy), BatchNorm statistics follow the sequential micro-batch rule, masks
weight micro-batches by their real examples, and Switch losses accumulate too."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax.models import layers
from kd_jax.train import mesh as mesh_lib
from kd_jax.train import steps as steps_lib

LR = 0.1
W0 = np.array([[0.5], [-1.0], [0.25]], np.float32)


def _linear_init(key):
  del key
  return {"w": jnp.asarray(W0), "b": jnp.zeros((1,), jnp.float32)}, {}


def _mse(params, model_state, frozen, batch, rng, step):
  """Mean squared error over the batch's real examples (``mask``, when there is one)."""
  del frozen, rng, step
  per = jnp.square((batch["x"] @ params["w"] + params["b"])[:, 0] - batch["y"])
  mask = batch.get("mask")
  loss = per.mean() if mask is None else jnp.sum(per * mask) / jnp.sum(mask)
  return loss, ({"mse": loss}, model_state)


def _data(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(n, 3)).astype(np.float32),
          "y": rng.normal(size=n).astype(np.float32)}


def _numpy_sgd_step(x, y, w, b, scale=1.0):
  """One SGD step on ``scale * mean((x w + b - y)^2)``, by hand."""
  r = x @ w[:, 0] + b[0] - y
  grad_w = scale * 2.0 * x.T @ r / len(y)
  grad_b = scale * 2.0 * r.sum() / len(y)
  return w - LR * grad_w[:, None], b - LR * grad_b, scale * np.mean(r ** 2)


def _build(loss_fn, k, mesh=None, init_fn=_linear_init, tx=None):
  mesh = mesh or mesh_lib.make_mesh(1)
  steps = steps_lib.build_steps(loss_fn=loss_fn, tx=tx or optax.sgd(LR), schedule=lambda s: LR,
                                mesh=mesh, init_fn=init_fn, seed=0, grad_accum_steps=k)
  return steps, steps.init(jax.random.key(0)), mesh


@pytest.mark.parametrize("k", [1, 2, 4])
def test_k_micro_batches_give_the_full_batch_update(k):
  batch = _data()
  steps, state, mesh = _build(_mse, k)
  state, metrics = steps.train(state, None, mesh_lib.host_to_global(batch, mesh))
  w, b, loss = _numpy_sgd_step(batch["x"], batch["y"], W0, np.zeros(1, np.float32))
  np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state.params["b"]), b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["mse"]), loss, rtol=1e-5)
  assert int(state.step) == 1  # one optimiser step, whatever k


def test_masked_micro_batches_are_weighted_by_their_real_examples():
  # Micro-batch j holds rows j, j + 2, ...: 3 real examples in micro-batch 0 (rows 0, 2, 4),
  # 1 in micro-batch 1 (row 1). Equal weights would give micro-batch 1 three times its share.
  batch = dict(_data(), mask=np.array([1, 1, 1, 0, 1, 0, 0, 0], np.float32))
  steps, state, mesh = _build(_mse, 2)
  state, metrics = steps.train(state, None, mesh_lib.host_to_global(batch, mesh))
  real = batch["mask"] > 0
  w, b, loss = _numpy_sgd_step(batch["x"][real], batch["y"][real], W0, np.zeros(1, np.float32))
  np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state.params["b"]), b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)


def test_a_switch_accumulates_the_branch_of_its_step():
  def triple(*args):
    loss, aux = _mse(*args)
    return 3.0 * loss, aux

  switch = steps_lib.Switch(index=lambda step: step % 2, branches=(_mse, triple))
  batch = _data()
  steps, state, mesh = _build(switch, 2)
  w, b = W0, np.zeros(1, np.float32)
  for scale in (1.0, 3.0, 1.0):
    state, _ = steps.train(state, None, mesh_lib.host_to_global(batch, mesh))
    w, b, _ = _numpy_sgd_step(batch["x"], batch["y"], w, b, scale)
  np.testing.assert_allclose(np.asarray(state.params["w"]), w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(state.params["b"]), b, rtol=1e-5, atol=1e-6)


class _BNNet(nn.Module):
  @nn.compact
  def __call__(self, x, *, train, mask=None):
    h = nn.Dense(4, name="dense")(x)
    return layers.BatchNorm(momentum=0.9, epsilon=1e-5, name="bn")(h, train=train, mask=mask)


def _bn_setup():
  model = _BNNet()

  def init_fn(key):
    v = model.init(key, jnp.zeros((1, 3)), train=False)
    return v["params"], {"batch_stats": v["batch_stats"]}

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del frozen, rng, step
    out, new = model.apply({"params": params, **model_state}, batch["x"], train=True,
                           mask=batch.get("mask"), mutable=["batch_stats"])
    per = jnp.sum(jnp.square(out), axis=1)
    mask = batch.get("mask")
    loss = per.mean() if mask is None else jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, ({}, dict(new))

  return init_fn, loss_fn


@pytest.mark.parametrize("masked", [False, True])
def test_batchnorm_statistics_follow_the_micro_batches_in_order(masked):
  init_fn, loss_fn = _bn_setup()
  batch = _data()
  if masked:  # micro-batch 1 (rows 1, 3, 5, 7) is all padding: its statistics are never used
    batch["mask"] = np.array([1, 0, 1, 0, 1, 0, 0, 0], np.float32)
  steps, state, mesh = _build(loss_fn, 2, init_fn=init_fn)
  p = jax.tree.map(np.asarray, state.params)
  h = batch["x"] @ p["dense"]["kernel"] + p["dense"]["bias"]  # the same weights for both
  mean, var = np.zeros(4), np.ones(4)
  for j in (0, 1):  # PyTorch: running = 0.9 running + 0.1 batch stat (unbiased variance)
    rows = h[j::2]
    if masked:
      rows = rows[batch["mask"][j::2] > 0]
    if len(rows) == 0:
      continue
    mean = 0.9 * mean + 0.1 * rows.mean(0)
    var = 0.9 * var + 0.1 * rows.var(0, ddof=1)
  state, metrics = steps.train(state, None, mesh_lib.host_to_global(batch, mesh))
  assert float(metrics["finite"]) == 1.0
  bs = state.model_state["batch_stats"]["bn"]
  np.testing.assert_allclose(np.asarray(bs["mean"]), mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(bs["var"]), var, rtol=1e-5, atol=1e-6)


def test_eight_devices_accumulate_as_one(cpu_devices):
  init_fn, loss_fn = _bn_setup()
  batch = _data(n=32)
  outs = []
  for n in (1, 8):
    steps, state, mesh = _build(loss_fn, 2, mesh=mesh_lib.make_mesh(n), init_fn=init_fn,
                                tx=optax.sgd(LR, momentum=0.9))
    for _ in range(2):
      state, _ = steps.train(state, None, mesh_lib.host_to_global(batch, mesh))
    outs.append(jax.tree.map(np.asarray, (state.params, state.model_state)))
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_errors():
  with pytest.raises(ValueError, match="micro_batches must be >= 1"):
    steps_lib.accumulate(_mse, 0)
  assert steps_lib.accumulate(_mse, 1) is _mse
  acc = steps_lib.accumulate(_mse, 2)
  assert steps_lib.accumulate(acc, 2) is acc and steps_lib.accumulate(acc, 1) is acc
  with pytest.raises(ValueError, match="already accumulates over 2"):
    steps_lib.accumulate(acc, 4)
  steps, state, mesh = _build(_mse, 3)
  with pytest.raises(ValueError, match="batch of 8 does not split into 3 micro-batches"):
    steps.train(state, None, mesh_lib.host_to_global(_data(), mesh))

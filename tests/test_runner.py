"""Runner: the evaluation history a stage returns (kept across a resume) and predict()."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kd_jax import train


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x)


def _stage(num_steps: int) -> train.Stage:
  model = _Linear()
  rng = np.random.default_rng(0)
  arrays = {"x": rng.normal(size=(64, 5)).astype(np.float32),
            "label": rng.integers(0, 3, size=64).astype(np.int32)}

  def init_fn(key):
    return model.init(key, jnp.zeros((1, 5)))["params"], {}

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del frozen, rng
    logits = model.apply({"params": params}, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, ({"ce": loss, "step_seen": step.astype(jnp.float32)}, model_state)

  def eval_fn(params, model_state, frozen, batch):
    del model_state, frozen
    return {"logits": model.apply({"params": params}, batch["x"])}

  return train.Stage(
      name="linear", init_fn=init_fn, loss_fn=loss_fn, num_steps=num_steps, global_batch_size=16,
      optimizer=train.optimizer_config(name="sgd", learning_rate=0.5),
      train_data=lambda per_host: train.train_batches(arrays, global_batch_size=16,
                                                      per_host_batch_size=per_host, seed=0),
      eval_fn=eval_fn, eval_every=2,
      eval_data=lambda per_host: train.eval_batches(arrays, global_batch_size=16,
                                                    per_host_batch_size=per_host))


def _runner(workdir) -> train.Runner:
  config = train.engine_config(log_every=1, checkpoint_every=2, max_to_keep=10)
  config.seed = 0
  return train.Runner(config, str(workdir))


def test_best_is_the_highest_value_and_the_earliest_on_ties():
  result = train.StageResult(state=None, metrics={}, history=[
      (2, {"top1": 0.5}), (4, {"top1": 0.75, "ic1/top1": 0.1}), (6, {"top1": 0.75}),
      (8, {"top1": 0.25, "ic1/top1": 0.3})])
  assert result.best() == (4, 0.75)
  assert result.best("ic1/top1") == (8, 0.3)
  assert result.best("top5") is None


def test_history_has_every_evaluation_and_survives_a_resume(tmp_path, cpu_devices):
  whole = _runner(tmp_path / "whole").run(_stage(8))
  assert [step for step, _ in whole.history] == [2, 4, 6, 8]
  assert whole.history[-1][1] == whole.metrics
  # Four steps, then the same stage resumed to eight: the history of the first part is kept.
  _runner(tmp_path / "split").run(_stage(4))
  resumed = _runner(tmp_path / "split").run(_stage(8))
  assert [step for step, _ in resumed.history] == [2, 4, 6, 8]
  # The loss is handed the engine's step (the steps taken before it), across the resume too.
  lines = [json.loads(l) for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
  seen = {l["step"]: l["step_seen"] for l in lines if l["stage"] == "linear"}
  assert seen == {k: k - 1 for k in range(1, 9)}
  # A finished stage restored from its checkpoint returns the same history.
  restored = _runner(tmp_path / "whole").run(_stage(8))
  assert restored.history == [(s, pytest.approx(m)) for s, m in whole.history]


def test_predict_returns_every_example_once_in_order(tmp_path, cpu_devices):
  runner = _runner(tmp_path)
  rng = np.random.default_rng(1)
  arrays = {"x": rng.normal(size=(21, 4)).astype(np.float32),  # 21: the last batch is padded.
            "index": np.arange(21, dtype=np.int32)}
  w = rng.normal(size=(4, 2)).astype(np.float32)

  def fn(variables, batch):
    return {"y": batch["x"] @ variables["w"], "index": batch["index"]}

  out = runner.predict(fn, {"w": w}, train.eval_batches(arrays, global_batch_size=8,
                                                        per_host_batch_size=8))
  np.testing.assert_array_equal(out["index"], np.arange(21))
  np.testing.assert_allclose(out["y"], arrays["x"] @ w, rtol=1e-5, atol=1e-6)
  assert out["y"].shape == (21, 2) and set(out) == {"y", "index"}

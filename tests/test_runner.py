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
from kd_jax.errors import UserError


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x)


def _stage(num_steps: int, **fields) -> train.Stage:
  model = _Linear()
  rng = np.random.default_rng(0)
  arrays = {"x": rng.normal(size=(64, 5)).astype(np.float32),
            "label": rng.integers(0, 3, size=64).astype(np.int32)}
  held_out = {"x": rng.normal(size=(24, 5)).astype(np.float32),
              "label": rng.integers(0, 3, size=24).astype(np.int32)}
  evaluate_on = held_out if fields.pop("eval_held_out", False) else arrays

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
      eval_data=lambda per_host: train.eval_batches(evaluate_on, global_batch_size=16,
                                                    per_host_batch_size=per_host), **fields)


def _runner(workdir, selection: str = "last", keep_finished: str = "all",
            grad_accum_steps: int = 1) -> train.Runner:
  config = train.engine_config(log_every=1, checkpoint_every=2, max_to_keep=10,
                               keep_finished=keep_finished, grad_accum_steps=grad_accum_steps)
  config.seed = 0
  config.selection = selection
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


def _params(tree):
  return jax.tree.leaves(jax.device_get(tree))


def test_best_test_hands_on_the_weights_of_the_best_evaluation_per_part(tmp_path, cpu_devices):
  stage = lambda n: _stage(n, eval_held_out=True, select={"a": "top1", "b": "top5"})
  result = _runner(tmp_path / "best", "best_test").run(stage(12))
  top1 = [(m["top1"], -s) for s, m in result.history]
  best_step = -max(top1)[1]
  assert best_step != 12, "the data must make the best evaluation an earlier one"
  assert result.pick("a").step == best_step and result.pick("a").metric == "top1"
  # top-5 of 3 classes is always 1: a tie, broken towards the earliest evaluation.
  assert result.pick("b").step == 2
  # The kept weights are those of a run stopped at that step.
  for part, step in (("a", best_step), ("b", 2)):
    short = _runner(tmp_path / f"short{step}").run(_stage(step))
    for kept, ref in zip(_params(result.pick(part).params), _params(short.state.params)):
      np.testing.assert_array_equal(kept, ref)
  # 'last' keeps nothing and hands on the final state; so does a part nobody selected.
  last = _runner(tmp_path / "last").run(stage(12))
  assert last.kept == {} and last.pick("a").step == 12
  assert result.pick("c").step == 12
  assert result.describe() == {"selection": "best_test", "steps": {"a": best_step, "b": 2}}
  # A finished stage restored from its checkpoints hands on the same kept weights.
  again = _runner(tmp_path / "best", "best_test").run(stage(12))
  assert again.pick("a").step == best_step
  for x, y in zip(_params(again.pick("a").params), _params(result.pick("a").params)):
    np.testing.assert_array_equal(x, y)


def test_interrupted_between_the_kept_and_the_regular_checkpoint_ends_identical(
    tmp_path, cpu_devices, monkeypatch):
  stage = lambda: _stage(12, eval_held_out=True)
  whole = _runner(tmp_path / "whole", "best_test").run(stage())
  kept_step = whole.pick().step
  assert 2 < kept_step < 12

  # The run dies right after the kept weights of step `kept_step` are written, before the regular
  # checkpoint of that step.
  from kd_jax.train import checkpoint as checkpoint_lib
  real_save = checkpoint_lib.Checkpointer.save

  def dying_save(self, step, *args, **kwargs):
    if step == kept_step:
      raise KeyboardInterrupt("killed")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", dying_save)
  with pytest.raises(KeyboardInterrupt):
    _runner(tmp_path / "cut", "best_test").run(stage())
  kept_dir = tmp_path / "cut" / "checkpoints" / "linear-best"
  assert kept_step in [int(p.name) for p in kept_dir.iterdir() if p.name.isdigit()]
  monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", real_save)

  resumed = _runner(tmp_path / "cut", "best_test").run(stage())
  assert resumed.pick().step == kept_step
  assert resumed.history == whole.history
  for x, y in zip(_params(resumed.pick().params), _params(whole.pick().params)):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(_params(resumed.state), _params(whole.state)):
    np.testing.assert_array_equal(x, y)


def test_best_val_selects_on_held_out_data_and_needs_it(tmp_path, cpu_devices):
  with pytest.raises(UserError, match="best_val"):
    _runner(tmp_path / "none", "best_val").run(_stage(4))
  rng = np.random.default_rng(5)
  val = {"x": rng.normal(size=(24, 5)).astype(np.float32),
         "label": rng.integers(0, 3, size=24).astype(np.int32)}
  val_data = lambda per_host: train.eval_batches(val, global_batch_size=16,
                                                 per_host_batch_size=per_host)
  result = _runner(tmp_path / "val", "best_val").run(_stage(12, val_data=val_data))
  assert all("val/top1" in m and "top1" in m for _, m in result.history)
  scored = [(m["val/top1"], -s) for s, m in result.history]
  assert result.pick().step == -max(scored)[1] and result.pick().metric == "val/top1"


def test_an_unknown_selection_is_one_clear_error(tmp_path, cpu_devices):
  with pytest.raises(UserError, match="config.selection must be one of last, best_test"):
    _runner(tmp_path, "best")


def _size(path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_finished_stage_keeps_its_weights_only(tmp_path, cpu_devices):
  whole = _runner(tmp_path / "all").run(_stage(8))
  compact = _runner(tmp_path / "w", keep_finished="weights").run(_stage(8))
  ckpts = tmp_path / "w" / "checkpoints"
  assert not [p for p in (ckpts / "linear").iterdir() if p.name.isdigit()]  # no regular steps
  assert [p.name for p in (ckpts / "linear-final").iterdir() if p.name.isdigit()] == ["8"]
  # SGD has no optimiser state here; the gain is the data state and the earlier steps.
  assert _size(ckpts) < _size(tmp_path / "all" / "checkpoints") / 2
  restored = _runner(tmp_path / "w", keep_finished="weights").run(_stage(8))
  assert restored.history == [(s, pytest.approx(m)) for s, m in whole.history]
  assert int(restored.state.step) == 8 and restored.state.opt_state is None
  for x, y in zip(_params(restored.state.params), _params(whole.state.params)):
    np.testing.assert_array_equal(x, y)
  for x, y in zip(_params(compact.state.params), _params(whole.state.params)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(UserError, match="kept its weights only"):
    _runner(tmp_path / "w", keep_finished="weights").run(_stage(10))


def test_the_runner_accumulates_gradients_over_micro_batches(tmp_path, cpu_devices):
  # A mean loss without batch statistics: two micro-batches of 8 give the full batch's gradient.
  whole = _runner(tmp_path / "one").run(_stage(6))
  accumulated = _runner(tmp_path / "two", grad_accum_steps=2).run(_stage(6))
  for x, y in zip(_params(accumulated.state.params), _params(whole.state.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  with pytest.raises(UserError, match="does not split into config.train.grad_accum_steps=3"):
    _runner(tmp_path / "three", grad_accum_steps=3).run(_stage(6))

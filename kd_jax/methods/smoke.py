"""The smoke method: a short distillation run on the full engine, with no dataset.

It generates multichannel sequences whose class sets their temporal frequency, phase and channel
mixing, then runs three stages on :mod:`kd_jax.train`: a wide teacher trained with cross-entropy,
and the same narrow student trained twice from one initialisation, with cross-entropy alone and
with cross-entropy plus ``kd_jax.losses.hinton_kd_loss`` against the frozen teacher. It exercises
everything a real method uses (sharded steps, checkpoints and resume, metrics, evaluation,
results.json) in seconds, so it is the engine's end-to-end test and an installation check.

This is not one of the papers' methods; ``configs/smoke.py`` documents its fields.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from kd_jax import losses
from kd_jax import train


class SequenceMLP(nn.Module):
  """A two-layer MLP on the flattened sequence ``[B, T, C]``."""

  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    del train
    h = nn.relu(nn.Dense(self.hidden, name="hidden1")(x.reshape(x.shape[0], -1)))
    features = nn.relu(nn.Dense(self.hidden, name="hidden2")(h))
    return nn.Dense(self.num_classes, name="head")(features), {"hidden": features}


def make_data(cfg: ml_collections.ConfigDict, num: int, seed: int) -> dict[str, np.ndarray]:
  """Noisy sinusoids: class ``c`` has its own frequency, phase and channel mixing."""
  rng = np.random.default_rng(seed)
  class_rng = np.random.default_rng(cfg.class_seed)  # The classes are the same in every split.
  freqs = class_rng.uniform(0.05, 0.45, size=cfg.num_classes)
  phases = class_rng.uniform(0, 2 * np.pi, size=cfg.num_classes)
  mixing = class_rng.normal(size=(cfg.num_classes, cfg.num_channels))
  labels = rng.integers(0, cfg.num_classes, size=num)
  t = np.arange(cfg.num_frames)[None, :, None]
  wave = np.sin(2 * np.pi * freqs[labels][:, None, None] * t + phases[labels][:, None, None])
  x = wave * mixing[labels][:, None, :] + cfg.noise * rng.normal(size=(num, cfg.num_frames,
                                                                        cfg.num_channels))
  return {"x": x.astype(np.float32), "label": labels.astype(np.int32)}


def _stage(name: str, model: SequenceMLP, cfg: ml_collections.ConfigDict, seed: int,
           data: dict[str, dict[str, np.ndarray]], teacher: SequenceMLP | None = None,
           teacher_params: Any = None) -> train.Stage:
  example = data["train"]["x"][:1]

  def init_fn(key):
    return model.init(key, example)["params"], {}

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del rng, step
    logits, _ = model.apply({"params": params}, batch["x"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    metrics = {"ce": ce}
    loss = ce
    if teacher is not None:
      t_logits, _ = teacher.apply({"params": frozen}, batch["x"])
      kd = losses.hinton_kd_loss(logits, t_logits, temperature=cfg.temperature).mean()
      metrics["kd"] = kd
      loss = ce + cfg.kd_weight * kd
    return loss, (metrics, model_state)

  def eval_fn(params, model_state, frozen, batch):
    del model_state
    out = {"logits": model.apply({"params": params}, batch["x"])[0]}
    if teacher is not None:
      out["teacher_logits"] = teacher.apply({"params": frozen}, batch["x"])[0]
    return out

  batch = cfg.batch_size
  return train.Stage(
      name=name, init_fn=init_fn, loss_fn=loss_fn, optimizer=cfg.optimizer,
      num_steps=cfg.num_steps, global_batch_size=batch,
      train_data=lambda per_host: train.train_batches(
          data["train"], global_batch_size=batch, per_host_batch_size=per_host, seed=seed),
      frozen=teacher_params, eval_fn=eval_fn,
      eval_data=lambda per_host: train.eval_batches(
          data["test"], global_batch_size=batch, per_host_batch_size=per_host),
      eval_every=cfg.eval_every)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the teacher, the CE student and the KD student; writes and returns results.json."""
  cfg = config.smoke
  data = {"train": make_data(cfg, cfg.num_train, config.seed),
          "test": make_data(cfg, cfg.num_test, config.seed + 1)}
  teacher = SequenceMLP(cfg.teacher_width, cfg.num_classes)
  student = SequenceMLP(cfg.student_width, cfg.num_classes)
  runner = train.Runner(config, workdir)

  t = runner.run(_stage("teacher", teacher, cfg, config.seed, data))
  s_ce = runner.run(_stage("student_ce", student, cfg, config.seed, data))
  s_kd = runner.run(_stage("student_kd", student, cfg, config.seed, data, teacher=teacher,
                           teacher_params=t.state.params))
  gain = s_kd.metrics["top1"] - s_ce.metrics["top1"]
  results = runner.write_results({"kd_gain/top1": gain})
  if jax.process_index() == 0:
    print("\n".join([
        "smoke run (generated sequences, test top-1):",
        f"  teacher (width {cfg.teacher_width}, CE)      {t.metrics['top1']:.3f}",
        f"  student (width {cfg.student_width}, CE)       {s_ce.metrics['top1']:.3f}",
        f"  student (width {cfg.student_width}, CE + KD)  {s_kd.metrics['top1']:.3f}"
        f"   ({gain:+.3f} from distillation)",
        f"  results: {runner.workdir / 'results.json'}",
    ]), flush=True)
  return results

"""The smoke method: a seconds-long distillation run with no dataset, to check an installation.

It generates short multichannel sequences whose class sets their temporal frequency and phase,
trains a wide teacher with cross-entropy, then the same narrow student twice from one
initialisation: with cross-entropy alone, and with cross-entropy plus ``kd_jax.losses``' Hinton KD
loss. It prints the three test accuracies and writes ``results.json``.

This is not one of the papers' methods; ``configs/smoke.py`` documents its fields.
"""

from __future__ import annotations

import json
import time
from typing import Any

from absl import logging
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kd_jax import losses


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


def make_data(
    rng: np.random.Generator, num: int, cfg: ml_collections.ConfigDict, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Noisy sinusoids: class ``c`` has its own frequency, phase and channel mixing."""
  labels = rng.integers(0, cfg.num_classes, size=num)
  t = np.arange(cfg.num_frames)[None, :, None]
  class_rng = np.random.default_rng(seed + 1)  # The classes are the same in every split.
  freqs = class_rng.uniform(0.05, 0.45, size=cfg.num_classes)
  phases = class_rng.uniform(0, 2 * np.pi, size=cfg.num_classes)
  mixing = class_rng.normal(size=(cfg.num_classes, cfg.num_channels))
  wave = np.sin(2 * np.pi * freqs[labels][:, None, None] * t + phases[labels][:, None, None])
  x = wave * mixing[labels][:, None, :]
  x = x + cfg.noise * rng.normal(size=x.shape)
  return x.astype(np.float32), labels.astype(np.int32)


def _train(
    model: nn.Module,
    params: Any,
    data: tuple[np.ndarray, np.ndarray],
    cfg: ml_collections.ConfigDict,
    rng: np.random.Generator,
    teacher: tuple[nn.Module, Any] | None = None,
) -> Any:
  tx = optax.adam(cfg.learning_rate)
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    logits, _ = model.apply({"params": p}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    if teacher is not None:
      t_logits, _ = teacher[0].apply({"params": teacher[1]}, x)
      loss += cfg.kd_weight * losses.hinton_kd_loss(
          logits, t_logits, temperature=cfg.temperature).mean()
    return loss

  @jax.jit
  def step(p, o, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  x_all, y_all = data
  for _ in range(cfg.num_steps):
    idx = rng.integers(0, len(x_all), size=cfg.batch_size)
    params, opt_state, _ = step(params, opt_state, x_all[idx], y_all[idx])
  return params


def _accuracy(model: nn.Module, params: Any, data: tuple[np.ndarray, np.ndarray]) -> float:
  logits, _ = model.apply({"params": params}, data[0])
  return float(np.mean(np.asarray(logits.argmax(-1)) == data[1]))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains teacher, CE student and KD student; returns and writes their test accuracies."""
  cfg = config.smoke
  start = time.time()
  rng = np.random.default_rng(config.seed)
  train = make_data(rng, cfg.num_train, cfg, config.seed)
  test = make_data(rng, cfg.num_test, cfg, config.seed)

  teacher = SequenceMLP(cfg.teacher_width, cfg.num_classes)
  student = SequenceMLP(cfg.student_width, cfg.num_classes)
  key_t, key_s = jax.random.split(jax.random.key(config.seed))
  t_params = teacher.init(key_t, train[0][:1])["params"]
  s_init = student.init(key_s, train[0][:1])["params"]

  t_params = _train(teacher, t_params, train, cfg, np.random.default_rng(config.seed + 10))
  s_ce = _train(student, s_init, train, cfg, np.random.default_rng(config.seed + 20))
  s_kd = _train(student, s_init, train, cfg, np.random.default_rng(config.seed + 20),
                teacher=(teacher, t_params))

  results = {
      "teacher/top1": _accuracy(teacher, t_params, test),
      "student_ce/top1": _accuracy(student, s_ce, test),
      "student_kd/top1": _accuracy(student, s_kd, test),
      "seconds": round(time.time() - start, 2),
  }
  results["kd_gain/top1"] = results["student_kd/top1"] - results["student_ce/top1"]
  if jax.process_index() == 0:
    (epath.Path(workdir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "smoke run (synthetic sequences, test top-1):",
        f"  teacher (width {cfg.teacher_width}, CE)      {results['teacher/top1']:.3f}",
        f"  student (width {cfg.student_width}, CE)       {results['student_ce/top1']:.3f}",
        f"  student (width {cfg.student_width}, CE + KD)  {results['student_kd/top1']:.3f}"
        f"   ({results['kd_gain/top1']:+.3f} from distillation)",
        f"  results: {epath.Path(workdir) / 'results.json'}",
    ]
    print("\n".join(lines), flush=True)
    logging.info("smoke results: %s", results)
  return results

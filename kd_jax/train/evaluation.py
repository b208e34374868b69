"""Classification metrics as masked sums, so they add up exactly over batches, devices and hosts.

An eval function returns ``{'logits': [B, C]}`` (video-level: segments and clips already
aggregated by the model or the method) and, when a teacher is present, ``'teacher_logits'``. Labels
come from ``batch['label']``; padded examples have ``batch['mask'] == 0`` and count for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kd_jax import losses


def classification_sums(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array | None = None,
    teacher_logits: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Sums over the real examples of a batch: count, top-1/top-5 hits, CE, teacher agreement/KL."""
  logits = logits.astype(jnp.float32)
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  k = min(5, logits.shape[-1])
  # Rank of the true class: how many classes score strictly higher.
  true_score = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits > true_score, axis=-1)
  sums = {
      "count": jnp.sum(mask),
      "top1": jnp.sum(mask * (rank < 1)),
      "top5": jnp.sum(mask * (rank < k)),
      "loss": jnp.sum(mask * optax.softmax_cross_entropy_with_integer_labels(logits, labels)),
  }
  if teacher_logits is not None:
    t = teacher_logits.astype(jnp.float32)
    agree = jnp.argmax(logits, -1) == jnp.argmax(t, -1)
    # KL(p_t || p_s) per example: Hinton's loss at T = 1, where its T^2 factor is 1.
    kl = losses.hinton_kd_loss(logits, t, temperature=1.0)
    sums["teacher_agreement"] = jnp.sum(mask * agree)
    sums["teacher_kl"] = jnp.sum(mask * kl)
  return sums


def finalize(batch_sums: Iterable[Mapping[str, jax.Array]]) -> dict[str, float]:
  """Adds up per-batch sums (in float64 on the host) and divides by the number of real examples."""
  total: dict[str, float] = {}
  for sums in batch_sums:
    for key, value in jax.device_get(dict(sums)).items():
      total[key] = total.get(key, 0.0) + float(np.asarray(value, np.float64))
  count = total.pop("count", 0.0)
  if count <= 0:
    raise ValueError("evaluation saw no real examples (every example was padding)")
  out = {key: value / count for key, value in total.items()}
  out["num_examples"] = count
  return out

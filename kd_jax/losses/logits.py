"""Distillation losses on class logits, and the WISE ensemble of early exits."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from . import _checks


def soft_target_cross_entropy(
    student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  r"""Cross-entropy of the student against the teacher's softened distribution.

  .. math::
    \ell = -\sum_c \mathrm{softmax}(t / T)_c \, \log \mathrm{softmax}(s / T)_c

  There is no :math:`T^2` factor and no hard-label term: this is the loss of Progressive Knowledge
  Distillation (Shao et al., "Advancing Compressed Video Action Recognition through Progressive
  Knowledge Distillation", arXiv 2407.02713), where it equals :math:`KL(p_t \| p_s)` plus the
  teacher's entropy.

  Args:
    student_logits: ``[..., C]``.
    teacher_logits: ``[..., C]``, same shape; no gradient flows into it.
    temperature: softening temperature ``T > 0``.

  Returns:
    The loss per example, shape ``[...]`` (the logits' shape without the class axis).
  """
  _checks.check_positive("temperature", temperature)
  _checks.check_same_shape(student_logits, teacher_logits, "student_logits and teacher_logits")
  s = _checks.as_float(student_logits) / temperature
  t = jax.lax.stop_gradient(_checks.as_float(teacher_logits)) / temperature
  return -jnp.sum(jax.nn.softmax(t, axis=-1) * jax.nn.log_softmax(s, axis=-1), axis=-1)


def hinton_kd_loss(
    student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 4.0
) -> jax.Array:
  r"""Hinton et al.'s knowledge-distillation loss, scaled by :math:`T^2`.

  .. math::
    \ell = T^2 \, KL\big(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T)\big)
         = T^2 \sum_c p^t_c \big(\log p^t_c - \log p^s_c\big)

  The :math:`T^2` keeps the gradient magnitude independent of :math:`T` (Hinton, Vinyals and Dean,
  "Distilling the Knowledge in a Neural Network", arXiv 1503.02531).

  Args:
    student_logits: ``[..., C]``.
    teacher_logits: ``[..., C]``, same shape; no gradient flows into it.
    temperature: ``T > 0``.

  Returns:
    The loss per example, shape ``[...]``.
  """
  _checks.check_positive("temperature", temperature)
  _checks.check_same_shape(student_logits, teacher_logits, "student_logits and teacher_logits")
  s = _checks.as_float(student_logits) / temperature
  t = jax.lax.stop_gradient(_checks.as_float(teacher_logits)) / temperature
  log_p_t = jax.nn.log_softmax(t, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(s, axis=-1)), axis=-1)
  return temperature**2 * kl


def progressive_kd_loss(
    ic_logits: Sequence[jax.Array], teacher_logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  r"""Progressive KD loss: every internal classifier (IC) learns from one teacher.

  .. math::
    \ell = \sum_{k=1}^{K} -\sum_c \mathrm{softmax}(t/T)_c \, \log \mathrm{softmax}(s_k/T)_c

  The curriculum (which teacher, when) is the caller's: it passes the logits of the current teacher.
  The official code uses ``T = 1`` and no label term (arXiv 2407.02713).

  Args:
    ic_logits: a list or tuple of ``K`` arrays ``[..., C]``, one per internal classifier.
    teacher_logits: ``[..., C]``; no gradient flows into it.
    temperature: ``T > 0``.

  Returns:
    The summed loss per example, shape ``[...]``.
  """
  if not isinstance(ic_logits, (list, tuple)):
    raise ValueError(
        "ic_logits must be a list or tuple of per-classifier logits; for a stacked array "
        f"[K, ..., C] pass list(array). Got {type(ic_logits).__name__}"
    )
  if not ic_logits:
    raise ValueError("ic_logits is empty: pass the logits of at least one internal classifier")
  losses = [
      soft_target_cross_entropy(ic, teacher_logits, temperature=temperature) for ic in ic_logits
  ]
  return sum(losses[1:], losses[0])


def wise_combine(exit_logits: jax.Array, weights: jax.Array) -> jax.Array:
  r"""The WISE ensemble of early exits: a learned weighted sum of their logits.

  .. math::
    \tilde z = \sum_{k=1}^{K} w_k \, z_k

  WISE (arXiv 2407.02713) learns one weight vector per exit on cached training logits and exits
  once the softmax confidence of :math:`\tilde z` passes a threshold. Weights are not normalised and
  may be negative, as in the official code. Gradients flow to both arguments.

  Args:
    exit_logits: ``[..., K, C]``, the logits of the first ``K`` exits.
    weights: ``[K]``.

  Returns:
    The combined logits, ``[..., C]``.
  """
  if jnp.ndim(exit_logits) < 2:
    raise ValueError(f"exit_logits must be [..., K, C], got shape {tuple(jnp.shape(exit_logits))}")
  num_exits = jnp.shape(exit_logits)[-2]
  if jnp.shape(weights) != (num_exits,):
    raise ValueError(
        f"weights must have shape ({num_exits},) to match the K axis of exit_logits "
        f"{tuple(jnp.shape(exit_logits))}, got {tuple(jnp.shape(weights))}"
    )
  z = _checks.as_float(exit_logits)
  return jnp.einsum("...kc,k->...c", z, _checks.as_float(weights).astype(z.dtype))

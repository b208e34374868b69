"""Distillation losses on class logits.

Each returns one value per example (the logits' shape without the class axis, ``[B]`` for ``[B, C]``
logits): every example's softened distribution is compared with its own teacher's, nothing is
normalised across the batch, so the caller picks the reduction (a mean, or a masked sum over padded
batches).
"""

from __future__ import annotations

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
    The loss per example, shape ``[...]``: the logits' shape without the class axis, ``[B]`` for
    ``[B, C]`` logits (see the module docstring).
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
    The loss per example, shape ``[...]``: the logits' shape without the class axis, ``[B]`` for
    ``[B, C]`` logits. At ``T = 1`` it is exactly :math:`KL(p_t \| p_s)` per example.
  """
  _checks.check_positive("temperature", temperature)
  _checks.check_same_shape(student_logits, teacher_logits, "student_logits and teacher_logits")
  s = _checks.as_float(student_logits) / temperature
  t = jax.lax.stop_gradient(_checks.as_float(teacher_logits)) / temperature
  log_p_t = jax.nn.log_softmax(t, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(s, axis=-1)), axis=-1)
  return temperature**2 * kl


def progressive_kd_loss(
    ic_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float = 1.0
) -> jax.Array:
  r"""Progressive KD loss: every internal classifier (IC) learns from one teacher.

  .. math::
    \ell = \sum_{k=1}^{K} -\sum_c \mathrm{softmax}(t/T)_c \, \log \mathrm{softmax}(s_k/T)_c

  The curriculum (which teacher, when) is the caller's: it passes the logits of the current teacher.
  The official code uses ``T = 1`` and no label term (Shao et al., "Advancing Compressed Video
  Action Recognition through Progressive Knowledge Distillation", arXiv 2407.02713).

  Args:
    ic_logits: ``[..., K, C]``, the ``K`` internal classifiers' logits stacked on the
      second-to-last axis (``jnp.stack(per_ic_logits, axis=-2)``), the layout of a network's exit
      logits in kd_jax (``[B, K, C]``) and of the WISE weight fitting.
    teacher_logits: ``[..., C]``, shared by all ``K`` classifiers; no gradient flows into it.
    temperature: ``T > 0``.

  Returns:
    The loss per example, summed over the ``K`` classifiers, shape ``[...]`` (``[B]`` for
    ``[B, K, C]``): as for :func:`soft_target_cross_entropy`, nothing couples the examples.
  """
  _checks.check_positive("temperature", temperature)
  if isinstance(ic_logits, (list, tuple)):
    raise ValueError(
        "ic_logits must be one array [..., K, C], not a list or tuple; stack the per-classifier "
        "logits with jnp.stack(ic_logits, axis=-2)"
    )
  shape, t_shape = tuple(jnp.shape(ic_logits)), tuple(jnp.shape(teacher_logits))
  if len(shape) < 2 or shape[-2] < 1 or shape[:-2] + shape[-1:] != t_shape:
    raise ValueError(
        f"ic_logits must be [..., K, C] with K >= 1 and teacher_logits [..., C] with the same "
        f"[...] and C; got {shape} and {t_shape}"
    )
  # A Python loop over the static K (one slice per classifier, added in classifier order), not one
  # broadcast cross-entropy reduced over K: the result is bit-for-bit the sum of the K
  # per-classifier losses, whatever order a fused XLA reduction would pick.
  total = soft_target_cross_entropy(ic_logits[..., 0, :], teacher_logits, temperature=temperature)
  for k in range(1, shape[-2]):
    total = total + soft_target_cross_entropy(
        ic_logits[..., k, :], teacher_logits, temperature=temperature
    )
  return total

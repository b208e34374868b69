"""Losses of generative feature distillation: attention maps, CVAE reconstructions, the CVAE itself.

Reference: "Generative Model-based Feature Knowledge Distillation for Action Recognition" (AAAI-24,
arXiv 2312.08644). Every loss returns ``[B]``, each example's mean over its own elements (nothing
couples the examples), so the batch mean of the result equals the element-wise mean
(``nn.MSELoss``) of the official code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _checks


def _per_example_mse(student: jax.Array, teacher: jax.Array, names: str) -> jax.Array:
  _checks.check_same_shape(student, teacher, names)
  _checks.check_has_batch_axis(names, student)
  diff = _checks.as_float(student) - jax.lax.stop_gradient(_checks.as_float(teacher))
  return _checks.mean_over_non_batch_axes(diff**2)


def attention_distillation_loss(
    student_attention: jax.Array, teacher_attention: jax.Array
) -> jax.Array:
  r"""Attention Distillation: the student's attention map mimics the frozen teacher's.

  .. math::
    \ell_b = \operatorname{mean}\big((A^s_b - A^t_b)^2\big)

  Args:
    student_attention: ``[B, ...]``, e.g. ``[B, T, C]`` attention values in (0, 1).
    teacher_attention: same shape; no gradient flows into it.

  Returns:
    The loss per example, shape ``[B]``: the mean over the example's own elements.
  """
  return _per_example_mse(
      student_attention, teacher_attention, "student_attention and teacher_attention"
  )


def generative_distillation_loss(
    student_reconstruction: jax.Array, teacher_reconstruction: jax.Array
) -> jax.Array:
  r"""Generative Distillation: the student CVAE's reconstruction mimics the teacher CVAE's.

  .. math::
    \ell_b = \operatorname{mean}\big((\hat F^s_b - \hat F^t_b)^2\big)

  Args:
    student_reconstruction: ``[B, ...]``, e.g. ``[B, T, H, W, C]``.
    teacher_reconstruction: same shape; no gradient flows into it.

  Returns:
    The loss per example, shape ``[B]``: the mean over the example's own elements.
  """
  return _per_example_mse(
      student_reconstruction,
      teacher_reconstruction,
      "student_reconstruction and teacher_reconstruction",
  )


def cvae_loss(
    features: jax.Array,
    reconstruction: jax.Array,
    posterior_mean: jax.Array,
    posterior_log_var: jax.Array,
    prior_mean: jax.Array,
    *,
    kl_weight: float = 0.1,
) -> jax.Array:
  r"""Conditional-VAE loss with a unit-variance prior centred on the attention map.

  .. math::
    \ell_b = \operatorname{mean}\big((F_b - \hat F_b)^2\big)
      + \lambda\,\operatorname{mean}\Big(-\tfrac12\big(1 + \log\sigma^2_b - (\mu_b - a_b)^2
      - \sigma^2_b\big)\Big)

  The second term is :math:`KL(\mathcal N(\mu, \sigma^2) \| \mathcal N(a, I))` averaged (not
  summed) over latent elements, as in the official code, with :math:`\lambda = 0.1`. Nothing is
  stopped here: which of ``features`` and ``prior_mean`` carry gradients is the caller's choice
  (GenKD's reconstruction term deliberately leaves the target features attached).
  Not a student-teacher loss (one CVAE, the teacher's or the student's, fitting the features it
  reconstructs), so the arguments follow the CVAE: its target, its output, its posterior, its prior.

  Args:
    features: the target features ``F``, ``[B, ...]``.
    reconstruction: ``F_hat``, same shape as ``features``.
    posterior_mean: ``mu``, ``[B, ...]``, e.g. ``[B, T, C]``.
    posterior_log_var: ``log sigma^2``, same shape as ``posterior_mean``.
    prior_mean: the prior mean ``a`` (the attention map), same shape as ``posterior_mean``.
    kl_weight: ``lambda >= 0``.

  Returns:
    The loss per example, shape ``[B]``: each example's reconstruction error and KL term, averaged
    over its own elements; nothing couples the examples.
  """
  _checks.check_non_negative("kl_weight", kl_weight)
  _checks.check_same_shape(features, reconstruction, "features and reconstruction")
  _checks.check_same_shape(posterior_mean, posterior_log_var, "posterior_mean and posterior_log_var")
  _checks.check_same_shape(posterior_mean, prior_mean, "posterior_mean and prior_mean")
  _checks.check_has_batch_axis("features", features)
  _checks.check_has_batch_axis("posterior_mean", posterior_mean)
  if jnp.shape(features)[0] != jnp.shape(posterior_mean)[0]:
    raise ValueError(
        f"features {tuple(jnp.shape(features))} and posterior_mean "
        f"{tuple(jnp.shape(posterior_mean))} have different batch sizes"
    )
  f = _checks.as_float(features)
  rec = _checks.mean_over_non_batch_axes((f - _checks.as_float(reconstruction)) ** 2)
  mu = _checks.as_float(posterior_mean)
  log_var = _checks.as_float(posterior_log_var)
  a = _checks.as_float(prior_mean)
  kl = -0.5 * (1.0 + log_var - (mu - a) ** 2 - jnp.exp(log_var))
  return rec + kl_weight * _checks.mean_over_non_batch_axes(kl)

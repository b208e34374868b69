"""Combining several loss terms."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from . import _checks


def uncertainty_weighted_sum(
    losses: Sequence[jax.Array] | jax.Array, log_vars: jax.Array
) -> jax.Array:
  r"""Learned task weighting by homoscedastic uncertainty.

  .. math::
    L = \sum_i e^{-s_i} L_i + s_i, \qquad s_i = \log \sigma_i^2

  Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
  Geometry and Semantics" (CVPR 2018). The spectral method's collaborative strategy trains the
  ``s_i`` with the student (initialised at 0, excluded from weight decay).

  Args:
    losses: ``N`` scalar losses (each already reduced over the batch), as a sequence or an array
      ``[N]``.
    log_vars: ``[N]``, the learned ``s_i``.

  Returns:
    A scalar: it combines already reduced loss terms (and the learned ``s_i``, which belong to the
    model, not to an example), so there is no batch axis left to keep.
  """
  if isinstance(losses, (list, tuple)):
    if not losses:
      raise ValueError("losses is empty: pass at least one loss term")
    for i, term in enumerate(losses):
      if jnp.ndim(term) != 0:
        raise ValueError(
            f"losses[{i}] has shape {tuple(jnp.shape(term))}; reduce each term to a scalar first"
        )
    losses = jnp.stack([_checks.as_float(term) for term in losses])
  losses = _checks.as_float(losses)
  if losses.ndim != 1 or jnp.shape(log_vars) != losses.shape:
    raise ValueError(
        f"losses must be N scalars and log_vars [N]; got losses of shape {tuple(losses.shape)} "
        f"and log_vars of shape {tuple(jnp.shape(log_vars))}"
    )
  s = _checks.as_float(log_vars)
  return jnp.sum(jnp.exp(-s) * losses + s)

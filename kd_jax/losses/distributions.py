"""Distributions of network parameters, and divergences between them.

Reference: "Collaborative Distillation in the Parameter and Spectrum Domains for Video Action
Recognition" (arXiv 2009.06902), whose "parameter frequency distribution" is not defined in the
available text. kd_jax's spectral spec (section 4) gives two readings:

* reading A, spectral: the energy of conv kernels over their 2-D DCT frequencies
  (:func:`pooled_frequency_distribution`, built on ``kernel_frequency_distribution``);
* reading B, statistical: the histogram of the weight values (:func:`weight_value_distribution`, a
  differentiable soft histogram).

Either way the knowledge is a probability vector whose length does not depend on channel or block
counts, so teacher and student layers of different widths compare directly;
:func:`distribution_divergence` compares them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from . import _checks
from .spectral import kernel_frequency_distribution

DIVERGENCES = ("kl", "sym_kl", "js")


def _as_kernel_list(kernels: Sequence[jax.Array] | jax.Array, what: str) -> list[jax.Array]:
  if not isinstance(kernels, (list, tuple)):
    kernels = [kernels]
  if not kernels:
    raise ValueError(f"{what}: no kernels given; pass at least one")
  return [_checks.as_float(k) for k in kernels]


def pooled_frequency_distribution(kernels: Sequence[jax.Array] | jax.Array) -> jax.Array:
  r"""The DCT energy distribution of a group of conv kernels (e.g. all 3x3 kernels of one stage).

  Every ``(kh, kw)`` slice of every kernel contributes equally: with ``C`` the orthonormal 2-D
  DCT-II of a slice (see ``kernel_frequency_distribution``),

  .. math::
    E_{u,v} = \operatorname{mean}_{\text{slices } n} C_{n,u,v}^2, \qquad p = E / \textstyle\sum E

  For one kernel this is ``kernel_frequency_distribution``. Kernels of different channel counts
  (a ResNet stage's ``conv1`` and ``conv2``, depthwise ``(3, 3, 1, C)`` kernels) pool freely.

  Args:
    kernels: one kernel or a sequence of kernels ``[..., kh, kw, cin, cout]`` sharing ``(kh, kw)``.

  Returns:
    ``p``, shape ``[kh, kw]``, summing to 1: a description of parameters, with no batch axis.
  """
  ks = _as_kernel_list(kernels, "pooled_frequency_distribution")
  sizes = set()
  for i, k in enumerate(ks):
    if k.ndim < 4:
      raise ValueError(f"kernel {i} must be [..., kh, kw, cin, cout], got shape {tuple(k.shape)}")
    sizes.add(tuple(k.shape[-4:-2]))
  if len(sizes) > 1:
    raise ValueError(f"kernels of one group must share (kh, kw), got {sorted(sizes)}")
  (kh, kw), = sizes
  # A slice is a (kh, kw) plane: move the spatial axes first and concatenate the rest.
  slices = [jnp.reshape(jnp.moveaxis(k, (-4, -3), (0, 1)), (kh, kw, 1, -1)) for k in ks]
  return kernel_frequency_distribution(jnp.concatenate(slices, axis=-1))


def weight_value_distribution(
    kernels: Sequence[jax.Array] | jax.Array,
    *,
    num_bins: int = 64,
    range_sigmas: float = 4.0,
    scale: jax.Array | float | None = None,
    bandwidth: float = 1.0,
) -> jax.Array:
  r"""Differentiable soft histogram of the weight values of a group of kernels (reading B).

  All values ``w`` are standardised, ``z = (w - mean(w)) / scale`` (``scale`` defaults to their own
  standard deviation), and spread over ``num_bins`` equally spaced centres ``c_j`` on
  ``[-range_sigmas, range_sigmas]`` with Gaussian kernels of width ``h = bandwidth * (c_1 - c_0)``:

  .. math::
    H_j = \sum_w \exp\!\big(-(z_w - c_j)^2 / (2h^2)\big), \qquad p = H / \textstyle\sum H

  Args:
    kernels: one array or a sequence of arrays of any shapes (all values are pooled).
    num_bins: ``>= 2``.
    range_sigmas: half-width of the binned range, in standard deviations; ``> 0``.
    scale: the standardising scale; pass the teacher's std (under ``stop_gradient``) to compare
      absolute magnitudes instead of shapes. ``None``: the values' own std.
    bandwidth: Gaussian width in units of the bin spacing; ``> 0``.

  Returns:
    ``p``, shape ``[num_bins]``, summing to 1: a description of parameters, with no batch axis.
  """
  if num_bins < 2:
    raise ValueError(f"num_bins must be >= 2, got {num_bins}")
  _checks.check_positive("range_sigmas", range_sigmas)
  _checks.check_positive("bandwidth", bandwidth)
  ks = _as_kernel_list(kernels, "weight_value_distribution")
  w = jnp.concatenate([jnp.ravel(k) for k in ks])
  mean = jnp.mean(w)
  if scale is None:
    scale = jnp.std(w)
  z = (w - mean) / jnp.maximum(_checks.as_float(scale), jnp.finfo(w.dtype).tiny)
  centres = jnp.linspace(-range_sigmas, range_sigmas, num_bins, dtype=w.dtype)
  h = bandwidth * (centres[1] - centres[0])
  counts = jnp.sum(jnp.exp(-0.5 * ((z[:, None] - centres[None, :]) / h) ** 2), axis=0)
  return counts / jnp.maximum(jnp.sum(counts), jnp.finfo(w.dtype).tiny)


def distribution_divergence(
    student_p: jax.Array,
    teacher_p: jax.Array,
    *,
    kind: str = "kl",
    eps: float = 1e-8,
) -> jax.Array:
  r"""Divergence of a student probability vector from a teacher's (same shape).

  .. math::
    \mathrm{kl} = \sum p_t (\log(p_t+\epsilon) - \log(p_s+\epsilon)), \quad
    \mathrm{sym\_kl} = KL(p_t \| p_s) + KL(p_s \| p_t), \quad
    \mathrm{js} = \tfrac12 KL(p_t \| m) + \tfrac12 KL(p_s \| m),\ m = \tfrac12(p_t + p_s)

  The parameter-distribution term of "Collaborative Distillation in the Parameter and Spectrum
  Domains for Video Action Recognition" (arXiv 2009.06902; kd_jax's spectral spec, section 4)
  compares teacher and student layers with one of these. The teacher side is under
  ``stop_gradient``.

  Args:
    student_p: a distribution (any shape; summed over all axes).
    teacher_p: same shape; no gradient flows into it.
    kind: ``"kl"`` (default, ``KL(teacher || student)``), ``"sym_kl"`` or ``"js"``.
    eps: ``> 0``, keeps the logarithms finite.

  Returns:
    A scalar: the inputs are distributions of network parameters (one per layer or stage, see
    :func:`pooled_frequency_distribution`), which have no batch axis, so every axis is summed.
  """
  if kind not in DIVERGENCES:
    raise ValueError(f"kind must be one of {DIVERGENCES}, got {kind!r}")
  _checks.check_positive("eps", eps)
  _checks.check_same_shape(student_p, teacher_p, "student and teacher distributions")
  p_s = _checks.as_float(student_p)
  p_t = jax.lax.stop_gradient(_checks.as_float(teacher_p))

  def kl(p, q):
    return jnp.sum(p * (jnp.log(p + eps) - jnp.log(q + eps)))

  if kind == "kl":
    return kl(p_t, p_s)
  if kind == "sym_kl":
    return kl(p_t, p_s) + kl(p_s, p_t)
  m = 0.5 * (p_t + p_s)
  return 0.5 * kl(p_t, m) + 0.5 * kl(p_s, m)

"""Frequency-domain distillation: temporal feature spectra and kernel frequency distributions.

Reference: "Collaborative Distillation in the Parameter and Spectrum Domains for Video Action
Recognition" (arXiv 2009.06902). The paper's full text is not public; the readings implemented here
are the ones argued for in kd_jax's spectral spec (amplitude spectrum, orthonormal DCT-II energy).
"""

from __future__ import annotations

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

_FFT_NORMS = ("backward", "ortho", "forward")


def _magnitude(z: jax.Array) -> jax.Array:
  """``|z|`` of a complex array, with a zero (not NaN) gradient where ``z == 0``.

  A plain ``sqrt`` of the squared magnitude has an infinite derivative at 0; the double ``where``
  keeps both the value exact and the gradient finite.
  """
  power = jnp.real(z) ** 2 + jnp.imag(z) ** 2
  nonzero = power > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, power, 1.0)), 0.0)


def temporal_amplitude(features: jax.Array, *, time_axis: int = 1, norm: str = "ortho") -> jax.Array:
  """Amplitude spectrum ``|rfft(x)|`` along ``time_axis``, in at least float32.

  A transform, not a loss: it returns ``features``' shape with ``time_axis`` of length
  ``T // 2 + 1`` (the non-negative frequencies), every other axis, the batch axis included, kept.
  """
  if norm not in _FFT_NORMS:
    raise ValueError(f"norm must be one of {_FFT_NORMS}, got {norm!r}")
  return _magnitude(jnp.fft.rfft(_checks.as_float(features), axis=time_axis, norm=norm))


def temporal_spectrum_loss(
    student_features: jax.Array,
    teacher_features: jax.Array,
    *,
    time_axis: int = 1,
    norm: str = "ortho",
) -> jax.Array:
  r"""Squared distance between the temporal amplitude spectra of student and teacher features.

  .. math::
    \ell_b = \operatorname{mean}_{f, \ldots}\Big(\big|\mathrm{rfft}_T(s_b)\big|
             - \big|\mathrm{rfft}_T(t_b)\big|\Big)^2

  The phase is discarded on purpose: by Parseval's theorem a distance between complex orthonormal
  spectra equals plain feature mimicking, while the amplitude transfers how much energy each channel
  has at each temporal frequency, independent of temporal shifts (spectral spec, section 3).

  Args:
    student_features: ``[B, ..., T, ...]``, e.g. ``[B, T, H, W, C]``; already mapped to the
      teacher's channels (the adapter is the caller's job).
    teacher_features: same shape; no gradient flows into it.
    time_axis: the time axis; not the batch axis 0.
    norm: ``numpy.fft`` normalisation, ``"ortho"`` (default), ``"backward"`` or ``"forward"``.

  Returns:
    The loss per example, shape ``[B]``: each example's spectrum is compared with its own teacher's
    and averaged over its frequencies, positions and channels; nothing couples the examples.
  """
  _checks.check_same_shape(student_features, teacher_features, "student and teacher features")
  ndim = jnp.ndim(student_features)
  if ndim < 2:
    raise ValueError(
        f"features must be [B, ..., T, ...] with at least 2 axes, got shape "
        f"{tuple(jnp.shape(student_features))}"
    )
  if not -ndim <= time_axis < ndim or time_axis % ndim == 0:
    raise ValueError(
        f"time_axis={time_axis} must name a non-batch axis of features with {ndim} axes"
    )
  amp_s = temporal_amplitude(student_features, time_axis=time_axis, norm=norm)
  amp_t = temporal_amplitude(
      jax.lax.stop_gradient(teacher_features), time_axis=time_axis, norm=norm
  )
  return _checks.mean_over_non_batch_axes((amp_s - amp_t) ** 2)


@functools.lru_cache(maxsize=None)
def dct_matrix(n: int) -> np.ndarray:
  r"""The orthonormal DCT-II matrix ``D`` (``D @ x == scipy.fft.dct(x, type=2, norm="ortho")``).

  .. math::
    D_{u,m} = \sqrt{2/n}\,\cos\big(\pi (2m+1) u / (2n)\big), \quad D_{0,m} = \sqrt{1/n}
  """
  if n < 1:
    raise ValueError(f"DCT size must be >= 1, got {n}")
  u = np.arange(n)[:, None]
  m = np.arange(n)[None, :]
  d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * m + 1) * u / (2 * n))
  d[0] *= np.sqrt(0.5)
  return d


def kernel_frequency_distribution(kernel: jax.Array) -> jax.Array:
  r"""How a conv kernel's energy spreads over its spatial DCT frequencies.

  With ``C = D_{kh} W D_{kw}^T`` the orthonormal 2-D DCT-II of every ``(kh, kw)`` slice of ``W``:

  .. math::
    E_{u,v} = \operatorname{mean}_{\ldots, i, o} C_{\ldots,u,v,i,o}^2, \qquad p = E / \textstyle\sum E

  Args:
    kernel: ``[..., kh, kw, cin, cout]`` (Flax layout; depthwise kernels have ``cin == 1``).

  Returns:
    ``p``, shape ``[kh, kw]``, summing to 1 (all zeros for an all-zero kernel): a description of
    parameters, with no batch axis.
  """
  if jnp.ndim(kernel) < 4:
    raise ValueError(
        f"a conv kernel must be [..., kh, kw, cin, cout], got shape {tuple(jnp.shape(kernel))}"
    )
  w = _checks.as_float(kernel)
  kh, kw = w.shape[-4], w.shape[-3]
  d_h = jnp.asarray(dct_matrix(kh), w.dtype)
  d_w = jnp.asarray(dct_matrix(kw), w.dtype)
  coef = jnp.einsum("uh,...hwio,vw->uv...io", d_h, w, d_w)
  energy = jnp.mean(jnp.reshape(coef**2, (kh, kw, -1)), axis=-1)
  total = jnp.sum(energy)
  return energy / jnp.maximum(total, jnp.finfo(energy.dtype).tiny)


def parameter_frequency_loss(
    student_kernels: Sequence[jax.Array],
    teacher_kernels: Sequence[jax.Array],
    *,
    eps: float = 1e-8,
) -> jax.Array:
  r"""Distillation of the frequency distributions of paired conv kernels.

  For every pair, ``p`` is :func:`kernel_frequency_distribution` of each kernel and

  .. math::
    \ell = \frac{1}{N}\sum_{n=1}^{N} \sum_{u,v} p^t_{n,uv}
           \big(\log(p^t_{n,uv} + \epsilon) - \log(p^s_{n,uv} + \epsilon)\big)

  i.e. the mean of :math:`KL(p_t \| p_s)` over pairs. Only the distribution over the ``kh x kw``
  frequencies is compared, so the two kernels of a pair may have different channel counts (spectral
  spec, section 4, reading A).

  Args:
    student_kernels: ``N`` kernels ``[..., kh, kw, cin, cout]``.
    teacher_kernels: ``N`` kernels, paired by position; the ``(kh, kw)`` of a pair must agree. No
      gradient flows into them.
    eps: ``> 0``, keeps the logarithms finite.

  Returns:
    A scalar: the loss is a function of the weights alone, with no batch axis (DESIGN.md's rule
    for parameter losses); add it once to the batch-mean of the per-example losses.
  """
  _checks.check_positive("eps", eps)
  student_kernels, teacher_kernels = list(student_kernels), list(teacher_kernels)
  if len(student_kernels) != len(teacher_kernels):
    raise ValueError(
        f"got {len(student_kernels)} student kernels and {len(teacher_kernels)} teacher kernels; "
        "they are compared in pairs"
    )
  if not student_kernels:
    raise ValueError("no kernels given: pass at least one (student, teacher) pair")
  kls = []
  for i, (ks, kt) in enumerate(zip(student_kernels, teacher_kernels)):
    for name, k in (("student", ks), ("teacher", kt)):
      if jnp.ndim(k) < 4:
        raise ValueError(
            f"pair {i}: the {name} kernel must be [..., kh, kw, cin, cout], got shape "
            f"{tuple(jnp.shape(k))}"
        )
    if jnp.shape(ks)[-4:-2] != jnp.shape(kt)[-4:-2]:
      raise ValueError(
          f"pair {i}: spatial sizes differ, student {tuple(jnp.shape(ks)[-4:-2])} vs teacher "
          f"{tuple(jnp.shape(kt)[-4:-2])}; pair kernels of the same (kh, kw)"
      )
    p_s = kernel_frequency_distribution(ks)
    p_t = kernel_frequency_distribution(jax.lax.stop_gradient(kt))
    kls.append(jnp.sum(p_t * (jnp.log(p_t + eps) - jnp.log(p_s + eps))))
  return jnp.mean(jnp.stack(kls))

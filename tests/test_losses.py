"""kd_jax.losses against independent NumPy references, hand-computed golden values and properties."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft as scipy_fft

from kd_jax import losses

TOL = dict(rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# NumPy references, written from the formulas in the spec, in float64.


def np_log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def np_soft_target_ce(s, t, temperature=1.0):
  p_t = np.exp(np_log_softmax(t / temperature))
  return -(p_t * np_log_softmax(s / temperature)).sum(-1)


def np_hinton(s, t, temperature=4.0):
  log_p_t = np_log_softmax(t / temperature)
  log_p_s = np_log_softmax(s / temperature)
  return temperature**2 * (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1)


def np_progressive(ics, t, temperature=1.0):
  # ics: [..., K, C], the classifiers stacked on the second-to-last axis.
  return sum(np_soft_target_ce(ics[..., k, :], t, temperature) for k in range(ics.shape[-2]))


def np_temporal_spectrum(s, t, time_axis=1, norm="ortho"):
  d = np.abs(np.fft.rfft(s, axis=time_axis, norm=norm)) - np.abs(
      np.fft.rfft(t, axis=time_axis, norm=norm)
  )
  return (d**2).reshape(d.shape[0], -1).mean(-1)


def np_dct2_ortho(x, axis):
  """Orthonormal DCT-II by its definition, as a loop over frequencies (independent of dct_matrix)."""
  x = np.moveaxis(x, axis, -1)
  n = x.shape[-1]
  out = np.empty_like(x)
  m = np.arange(n)
  for u in range(n):
    scale = math.sqrt(1.0 / n) if u == 0 else math.sqrt(2.0 / n)
    out[..., u] = scale * (x * np.cos(np.pi * (2 * m + 1) * u / (2 * n))).sum(-1)
  return np.moveaxis(out, -1, axis)


def np_kernel_distribution(w):
  coef = np_dct2_ortho(np_dct2_ortho(w, w.ndim - 4), w.ndim - 3)
  coef = np.moveaxis(coef, (w.ndim - 4, w.ndim - 3), (0, 1))
  energy = (coef**2).reshape(coef.shape[0], coef.shape[1], -1).mean(-1)
  return energy / energy.sum()


def np_parameter_frequency(student, teacher, eps=1e-8):
  kls = []
  for ws, wt in zip(student, teacher):
    p_s, p_t = np_kernel_distribution(ws), np_kernel_distribution(wt)
    kls.append((p_t * (np.log(p_t + eps) - np.log(p_s + eps))).sum())
  return np.mean(kls)


def np_mse_per_example(s, t):
  return ((s - t) ** 2).reshape(s.shape[0], -1).mean(-1)


def np_cvae(f, f_hat, mu, log_var, prior, kl_weight=0.1):
  rec = ((f - f_hat) ** 2).reshape(f.shape[0], -1).mean(-1)
  kl = -0.5 * (1 + log_var - (mu - prior) ** 2 - np.exp(log_var))
  return rec + kl_weight * kl.reshape(kl.shape[0], -1).mean(-1)


def np_kl(p, q, eps=1e-8):
  return (p * (np.log(p + eps) - np.log(q + eps))).sum()


def np_divergence(p_s, p_t, kind="kl", eps=1e-8):
  if kind == "kl":
    return np_kl(p_t, p_s, eps)
  if kind == "sym_kl":
    return np_kl(p_t, p_s, eps) + np_kl(p_s, p_t, eps)
  m = 0.5 * (p_t + p_s)
  return 0.5 * np_kl(p_t, m, eps) + 0.5 * np_kl(p_s, m, eps)


def np_uncertainty(ls, s):
  return sum(math.exp(-s_i) * l_i + s_i for l_i, s_i in zip(ls, s))


# --------------------------------------------------------------------------------------------------
# One table drives the shared checks. Each case knows how to draw inputs of a given shape, which
# argument is the teacher's (it must get no gradient) and which is the student's.


@dataclasses.dataclass
class Case:
  name: str
  fn: Callable[..., Any]
  ref: Callable[..., Any]
  make: Callable[[np.random.Generator, tuple[int, ...]], tuple]
  shapes: tuple[tuple[int, ...], ...]
  kwargs: tuple[dict, ...] = ({},)
  student: int | None = 0
  teacher: int | None = 1
  bad_kwargs: tuple[dict, ...] = ()


def _pair(rng, shape, scale=3.0):
  return (rng.normal(size=shape) * scale, rng.normal(size=shape) * scale)


def _kernels(rng, shape):
  # shape: (kh, kw, cin, cout) of the student; teachers get other channel counts.
  kh, kw, cin, cout = shape
  student = [rng.normal(size=(kh, kw, cin, cout)), rng.normal(size=(2, kh, kw, 1, cout + 1))]
  teacher = [rng.normal(size=(kh, kw, cin + 3, cout * 2)), rng.normal(size=(kh, kw, 1, 3))]
  return (student, teacher)


def _cvae_inputs(rng, shape):
  b, t, c = shape
  feat_shape = (b, t, 2, 2, c)
  return (
      np.abs(rng.normal(size=feat_shape)),
      np.abs(rng.normal(size=feat_shape)),
      rng.normal(size=shape),
      rng.normal(size=shape) * 0.5,
      rng.uniform(size=shape),
  )


CASES = [
    Case(
        "soft_target_cross_entropy",
        losses.soft_target_cross_entropy,
        np_soft_target_ce,
        _pair,
        ((4, 7), (3, 2, 11)),
        ({}, {"temperature": 0.5}, {"temperature": 4.0}),
        bad_kwargs=({"temperature": 0.0}, {"temperature": -1.0}),
    ),
    Case(
        "hinton_kd_loss",
        losses.hinton_kd_loss,
        np_hinton,
        _pair,
        ((4, 7), (3, 2, 11)),
        ({}, {"temperature": 1.0}, {"temperature": 2.5}),
        bad_kwargs=({"temperature": 0.0},),
    ),
    Case(
        "progressive_kd_loss",
        losses.progressive_kd_loss,
        np_progressive,
        lambda rng, shape: (
            rng.normal(size=shape[:-1] + (3, shape[-1])) * 3,  # K = 3 classifiers
            rng.normal(size=shape) * 3,
        ),
        ((5, 6), (2, 3, 4)),
        ({}, {"temperature": 2.0}),
        bad_kwargs=({"temperature": -0.5},),
    ),
    Case(
        "temporal_spectrum_loss",
        losses.temporal_spectrum_loss,
        np_temporal_spectrum,
        _pair,
        ((2, 8, 3, 3, 4), (3, 5, 6), (2, 4, 7)),
        ({}, {"norm": "backward"}, {"norm": "forward"}, {"time_axis": 2}, {"time_axis": -1}),
        bad_kwargs=({"norm": "l2"}, {"time_axis": 0}, {"time_axis": 9}),
    ),
    Case(
        "parameter_frequency_loss",
        losses.parameter_frequency_loss,
        np_parameter_frequency,
        _kernels,
        ((3, 3, 4, 5), (2, 2, 3, 2), (3, 5, 2, 2)),
        ({}, {"eps": 1e-6}),
        bad_kwargs=({"eps": 0.0},),
    ),
    Case(
        "attention_distillation_loss",
        losses.attention_distillation_loss,
        np_mse_per_example,
        lambda rng, shape: (rng.uniform(size=shape), rng.uniform(size=shape)),
        ((4, 8, 16), (3, 5)),
    ),
    Case(
        "generative_distillation_loss",
        losses.generative_distillation_loss,
        np_mse_per_example,
        _pair,
        ((2, 4, 3, 3, 8), (5, 3)),
    ),
    Case(
        "cvae_loss",
        losses.cvae_loss,
        np_cvae,
        _cvae_inputs,
        ((2, 4, 8), (3, 2, 5)),
        ({}, {"kl_weight": 1.0}, {"kl_weight": 0.0}),
        student=1,
        teacher=None,
        bad_kwargs=({"kl_weight": -0.1},),
    ),
    Case(
        "distribution_divergence",
        losses.distribution_divergence,
        np_divergence,
        lambda rng, shape: tuple(
            np.exp(np_log_softmax(rng.normal(size=shape).ravel() * 2)).reshape(shape)
            for _ in range(2)
        ),
        ((16,), (3, 3)),
        ({}, {"kind": "sym_kl"}, {"kind": "js"}, {"eps": 1e-6}),
        bad_kwargs=({"kind": "wasserstein"}, {"eps": 0.0}),
    ),
    Case(
        "uncertainty_weighted_sum",
        losses.uncertainty_weighted_sum,
        np_uncertainty,
        lambda rng, shape: (np.abs(rng.normal(size=shape)), rng.normal(size=shape)),
        ((3,), (5,)),
        student=1,
        teacher=None,
    ),
]
CASE_IDS = [c.name for c in CASES]


def _to_jax(tree, dtype=jnp.float32):
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _first_leaf(tree):
  return jax.tree.leaves(tree)[0]


def test_all_names_exported():
  required = {
      "soft_target_cross_entropy", "hinton_kd_loss", "temporal_spectrum_loss",
      "parameter_frequency_loss", "attention_distillation_loss", "generative_distillation_loss",
      "cvae_loss", "progressive_kd_loss", "uncertainty_weighted_sum", "distribution_divergence",
  }
  assert required <= set(losses.__all__)
  for name in losses.__all__:
    assert callable(getattr(losses, name)), name


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(case: Case):
  rng = np.random.default_rng(0)
  for shape in case.shapes:
    args = case.make(rng, shape)
    for kwargs in case.kwargs:
      got = np.asarray(case.fn(*_to_jax(args), **kwargs))
      want = np.asarray(case.ref(*args, **kwargs))
      assert got.shape == want.shape, (shape, kwargs)
      np.testing.assert_allclose(got, want, **TOL, err_msg=f"{case.name} {shape} {kwargs}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_finite_and_teacher_receives_none(case: Case):
  rng = np.random.default_rng(1)
  args = _to_jax(case.make(rng, case.shapes[0]))
  argnums = tuple(i for i in (case.student, case.teacher) if i is not None)

  def total(*a):
    return jnp.sum(case.fn(*a))

  grads = jax.grad(total, argnums=argnums)(*args)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(g)))
  student_grad = grads[0]
  assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(student_grad))
  if case.teacher is not None:
    for g in jax.tree.leaves(grads[1]):
      np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_jit_and_vmap_agree_with_eager(case: Case):
  rng = np.random.default_rng(2)
  shape = case.shapes[0]
  batches = [_to_jax(case.make(np.random.default_rng(seed), shape)) for seed in range(3)]
  del rng
  eager = [np.asarray(case.fn(*args)) for args in batches]
  jitted = jax.jit(case.fn)
  for args, want in zip(batches, eager):
    np.testing.assert_allclose(np.asarray(jitted(*args)), want, **TOL)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
  mapped = np.asarray(jax.vmap(case.fn)(*stacked))
  np.testing.assert_allclose(mapped, np.stack(eager), **TOL)


@pytest.mark.parametrize("case", [c for c in CASES if c.bad_kwargs], ids=lambda c: c.name)
def test_invalid_hyperparameters_raise(case: Case):
  args = _to_jax(case.make(np.random.default_rng(3), case.shapes[0]))
  for kwargs in case.bad_kwargs:
    with pytest.raises(ValueError):
      case.fn(*args, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_low_precision_inputs_are_computed_in_float32(case: Case):
  args = case.make(np.random.default_rng(4), case.shapes[0])
  got = case.fn(*_to_jax(args, jnp.bfloat16))
  assert got.dtype == jnp.float32
  bf16_args = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), args)
  np.testing.assert_allclose(np.asarray(got), case.ref(*bf16_args), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Golden values, computed by hand (the derivation is in each comment).

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def test_golden_soft_target_cross_entropy():
  # p_t = [.5, .5], q_s = softmax([ln3, 0]) = [.75, .25]: -(.5 ln .75 + .5 ln .25) = 0.8369882.
  got = losses.soft_target_cross_entropy(jnp.array([[LN3, 0.0]]), jnp.zeros((1, 2)))
  np.testing.assert_allclose(got, [0.8369882], rtol=1e-6)


def test_golden_hinton_kd_loss():
  # T = 2: s/T = [ln3, 0] -> q = [.75, .25], p = [.5, .5];
  # KL(p||q) = .5 ln(.5/.75) + .5 ln(.5/.25) = 0.1438410; times T^2 = 0.5753641.
  got = losses.hinton_kd_loss(jnp.array([[2 * LN3, 0.0]]), jnp.zeros((1, 2)), temperature=2.0)
  np.testing.assert_allclose(got, [0.5753641], rtol=1e-6)


def test_golden_progressive_kd_loss():
  # IC1 as in the soft-target golden value (0.8369882), IC2 uniform against uniform (ln 2).
  got = losses.progressive_kd_loss(
      jnp.stack([jnp.array([[LN3, 0.0]]), jnp.zeros((1, 2))], axis=-2), jnp.zeros((1, 2))
  )
  np.testing.assert_allclose(got, [0.8369882 + LN2], rtol=1e-6)


def test_golden_temporal_spectrum_loss():
  # Ortho rfft over T = 4: [1,1,1,1] -> amplitudes [2,0,0]; [1,-1,1,-1] -> [0,0,2].
  # Mean of squared differences: (4 + 0 + 4) / 3.
  s = jnp.array([[1.0, 1.0, 1.0, 1.0]])
  t = jnp.array([[1.0, -1.0, 1.0, -1.0]])
  np.testing.assert_allclose(losses.temporal_spectrum_loss(s, t), [8.0 / 3.0], rtol=1e-6)


def test_golden_parameter_frequency_loss():
  # 2x2 DCT of a delta at (0,0) is 0.5 everywhere -> uniform p_s; a constant kernel has only DC
  # energy -> p_t = [1,0,0,0]. KL = log(1+eps) - log(.25+eps) = ln 4.
  delta = jnp.zeros((2, 2, 1, 1)).at[0, 0].set(1.0)
  const = jnp.ones((2, 2, 3, 2))
  np.testing.assert_allclose(losses.parameter_frequency_loss([delta], [const]), LN4, rtol=1e-6)
  # A checkerboard teacher has only the (1,1) frequency; a constant student only DC:
  # KL = log(1+eps) - log(eps) = -ln(1e-8) = 18.420681.
  checker = jnp.array([[1.0, -1.0], [-1.0, 1.0]])[:, :, None, None]
  np.testing.assert_allclose(
      losses.parameter_frequency_loss([const], [checker]), 18.420681, rtol=1e-6
  )


def test_golden_attention_and_generative_distillation():
  # mean((.5 - 0)^2, (1 - 0)^2) = 0.625 per example.
  s, t = jnp.array([[0.5, 1.0], [0.0, 0.0]]), jnp.zeros((2, 2))
  np.testing.assert_allclose(losses.attention_distillation_loss(s, t), [0.625, 0.0])
  np.testing.assert_allclose(losses.generative_distillation_loss(s, t), [0.625, 0.0])


def test_golden_cvae_loss():
  # rec = mean(1, 4) = 2.5; KL = -0.5 (1 + 0 - 1 - 1) = 0.5; total = 2.5 + 0.1 * 0.5.
  got = losses.cvae_loss(
      jnp.array([[1.0, 2.0]]), jnp.zeros((1, 2)), jnp.ones((1, 1)), jnp.zeros((1, 1)),
      jnp.zeros((1, 1)),
  )
  np.testing.assert_allclose(got, [2.55], rtol=1e-6)


def test_golden_distribution_divergence_is_student_first():
  # Student [.5, .5], teacher [1, 0]: KL(p_t || p_s) = 1 * (ln(1 + eps) - ln(.5 + eps)) = ln 2.
  # The other order would be .5 ln(.5 / eps) + .5 ln(.5 / 1), about 8.52.
  got = losses.distribution_divergence(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(got, LN2, rtol=1e-6)


def test_golden_uncertainty_weighted_sum():
  # 1 * 1 + 0 + 2 * 0.5 + ln 2.
  got = losses.uncertainty_weighted_sum([jnp.array(1.0), jnp.array(2.0)], jnp.array([0.0, LN2]))
  np.testing.assert_allclose(got, 2.0 + LN2, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Shape errors and properties.


def test_mismatched_shapes_name_both_shapes():
  with pytest.raises(ValueError, match=r"\(2, 8, 4\).*\(2, 8, 5\)"):
    losses.temporal_spectrum_loss(jnp.zeros((2, 8, 4)), jnp.zeros((2, 8, 5)))
  with pytest.raises(ValueError, match="same shape"):
    losses.hinton_kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="spatial sizes differ"):
    losses.parameter_frequency_loss([jnp.zeros((3, 3, 1, 1))], [jnp.zeros((5, 5, 1, 1))])
  with pytest.raises(ValueError, match="pairs"):
    losses.parameter_frequency_loss([jnp.zeros((3, 3, 1, 1))], [])
  with pytest.raises(ValueError, match=r"\(3, 2, 5\) and \(2, 5\)"):
    losses.progressive_kd_loss(jnp.zeros((3, 2, 5)), jnp.zeros((2, 5)))  # [K, B, C]: wrong axis
  with pytest.raises(ValueError, match=r"jnp.stack\(ic_logits, axis=-2\)"):
    losses.progressive_kd_loss([jnp.zeros((2, 5))] * 3, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match="log_vars"):
    losses.uncertainty_weighted_sum(jnp.ones((3,)), jnp.zeros((2,)))


def test_dct_matrix_is_scipy_orthonormal_dct():
  for n in (1, 2, 3, 7):
    x = np.random.default_rng(n).normal(size=(n, 4))
    np.testing.assert_allclose(
        losses.dct_matrix(n) @ x, scipy_fft.dct(x, type=2, norm="ortho", axis=0), atol=1e-12
    )


def test_kernel_distribution_sums_to_one_and_ignores_channel_order():
  w = np.random.default_rng(5).normal(size=(3, 3, 6, 4))
  p = np.asarray(losses.kernel_frequency_distribution(jnp.asarray(w)))
  np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
  permuted = w[:, :, np.random.default_rng(6).permutation(6)][..., ::-1]
  np.testing.assert_allclose(
      losses.kernel_frequency_distribution(jnp.asarray(permuted)), p, rtol=1e-6
  )


def test_spectrum_gradient_is_finite_at_zero_amplitude():
  # A temporally constant signal has zero amplitude at every non-DC bin, where |z| is not
  # differentiable; the loss must still give finite gradients.
  s = jnp.ones((2, 8, 3))
  g = jax.grad(lambda x: losses.temporal_spectrum_loss(x, jnp.zeros_like(x)).sum())(s)
  assert np.all(np.isfinite(np.asarray(g)))


_FLOATS = st.floats(-20, 20, allow_nan=False, width=32)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    st.lists(_FLOATS, min_size=5, max_size=5), st.lists(_FLOATS, min_size=5, max_size=5),
    st.floats(0.25, 8.0),
)
def test_kl_losses_are_non_negative_and_zero_on_agreement(s, t, temperature):
  s, t = jnp.array([s]), jnp.array([t])
  assert float(losses.hinton_kd_loss(s, t, temperature=temperature)[0]) >= -1e-5
  assert abs(float(losses.hinton_kd_loss(t, t, temperature=temperature)[0])) < 1e-4
  # Soft-target CE is KL plus the teacher's entropy, so it is smallest when the student agrees.
  agree = float(losses.soft_target_cross_entropy(t, t, temperature=temperature)[0])
  assert float(losses.soft_target_cross_entropy(s, t, temperature=temperature)[0]) >= agree - 1e-4


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(st.integers(0, 7), st.integers(0, 2**31 - 1))
def test_spectrum_loss_ignores_circular_time_shifts(shift, seed):
  # The amplitude spectrum of a circularly shifted signal equals the original's: a teacher that is
  # a shifted copy of the student costs nothing, unlike plain feature mimicking.
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 8, 3)), jnp.float32)
  shifted = jnp.roll(x, shift, axis=1)
  np.testing.assert_allclose(losses.temporal_spectrum_loss(x, shifted), [0.0, 0.0], atol=1e-5)


def test_parameter_loss_is_zero_for_identical_kernels():
  k = [jnp.asarray(np.random.default_rng(7).normal(size=(3, 3, 4, 4)))]
  assert abs(float(losses.parameter_frequency_loss(k, k))) < 1e-6


# --------------------------------------------------------------------------------------------------
# PyTorch, where installed, as a second independent reference.


def test_against_pytorch():
  torch = pytest.importorskip("torch")
  f = torch.nn.functional
  rng = np.random.default_rng(8)
  s, t = rng.normal(size=(6, 9)) * 2, rng.normal(size=(6, 9)) * 2
  for temperature in (1.0, 4.0):
    ts, tt = torch.tensor(s / temperature), torch.tensor(t / temperature)
    kl = f.kl_div(f.log_softmax(ts, -1), f.log_softmax(tt, -1), log_target=True, reduction="none")
    np.testing.assert_allclose(
        losses.hinton_kd_loss(jnp.asarray(s), jnp.asarray(t), temperature=temperature),
        temperature**2 * kl.sum(-1).numpy(), **TOL,
    )
    ce = f.cross_entropy(ts, f.softmax(tt, -1), reduction="none")
    np.testing.assert_allclose(
        losses.soft_target_cross_entropy(jnp.asarray(s), jnp.asarray(t), temperature=temperature),
        ce.numpy(), **TOL,
    )
  a_s, a_t = rng.uniform(size=(4, 8, 16)), rng.uniform(size=(4, 8, 16))
  np.testing.assert_allclose(
      losses.attention_distillation_loss(jnp.asarray(a_s), jnp.asarray(a_t)).mean(),
      f.mse_loss(torch.tensor(a_s), torch.tensor(a_t)).item(), **TOL,
  )

"""WISE: the ensemble sum, weight fitting, the cascade on a hand example, the cost tally."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import losses

from kd_jax.methods import _wise


def _sample_labels(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.array([rng.choice(p.shape[1], p=row) for row in p])


def test_wise_combine_matches_numpy_and_hand_values():
  # 2 * [1, 2] - 1 * [3, 4] = [-1, 0].
  got = _wise.wise_combine(jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([2.0, -1.0]))
  np.testing.assert_allclose(got, [-1.0, 0.0])
  rng = np.random.default_rng(0)
  for shape in ((6, 4, 10), (2, 3, 5, 7)):
    z, w = rng.normal(size=shape), rng.normal(size=shape[-2])
    want = sum(w[k] * z[..., k, :] for k in range(len(w)))
    np.testing.assert_allclose(_wise.wise_combine(jnp.asarray(z), jnp.asarray(w)), want,
                               rtol=1e-5, atol=1e-5)
    # jit and vmap (over the leading axis) agree with the eager call.
    z32, w32 = jnp.asarray(z, jnp.float32), jnp.asarray(w, jnp.float32)
    eager = _wise.wise_combine(z32, w32)
    np.testing.assert_allclose(jax.jit(_wise.wise_combine)(z32, w32), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(_wise.wise_combine, (0, None))(z32, w32), eager,
                               rtol=1e-6)
  # bf16 logits are summed in float32; gradients reach both the logits and the weights.
  assert _wise.wise_combine(jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones(3)).dtype == jnp.float32
  g_z, g_w = jax.grad(lambda z, w: _wise.wise_combine(z, w).sum(), argnums=(0, 1))(
      jnp.ones((2, 3, 4)), jnp.array([1.0, 2.0, 3.0]))
  np.testing.assert_allclose(g_z[0, :, 0], [1.0, 2.0, 3.0])
  np.testing.assert_allclose(g_w, [8.0, 8.0, 8.0])
  with pytest.raises(ValueError, match=r"weights must have shape \(3,\)"):
    _wise.wise_combine(jnp.zeros((2, 3, 5)), jnp.ones((4,)))
  with pytest.raises(ValueError, match=r"\[\.\.\., K, C\]"):
    _wise.wise_combine(jnp.zeros((5,)), jnp.ones((1,)))
  # Not a loss: it lives beside WISE, not in the public loss library.
  assert not hasattr(losses, "wise_combine")


def test_fit_recovers_known_weights():
  # Labels drawn from softmax(sum_j w*_j z_j): the fitted weights of the last exit are w*
  # (maximum likelihood), up to sampling error.
  rng = np.random.default_rng(0)
  n, e, c = 8000, 3, 6
  z = rng.normal(size=(n, e, c)).astype(np.float32) * 1.5
  true = np.array([0.5, 0.0, 1.5])
  y = _sample_labels(np.einsum("nec,e->nc", z, true), rng)
  w = _wise.fit_weights(z, y, alpha=0.0, steps=500, lr=0.1)
  np.testing.assert_allclose(w[-1], true, atol=0.12)
  # Row k uses exits 1..k only; exit 1 is used as it is (weight 1), as in the official code.
  assert np.all(np.triu(w, 1) == 0)
  np.testing.assert_array_equal(w[0], [1.0, 0.0, 0.0])
  # Exit 2 sees z1, z2 only: the weight of the useless z2 stays near 0, z1's is positive.
  assert abs(w[1, 1]) < 0.12 and w[1, 0] > 0.2


def test_l1_penalty_shrinks_weights_and_fallback_vector():
  rng = np.random.default_rng(1)
  n, c = 4000, 5
  z = rng.normal(size=(n, 3, c)).astype(np.float32)
  y = _sample_labels(2.0 * z[:, 2], rng)
  free = _wise.fit_vector(z, y, alpha=0.0)
  l1 = _wise.fit_vector(z, y, alpha=0.1)
  assert free[2] > 1.5 and abs(free[0]) < 0.15 and abs(free[1]) < 0.15
  assert np.abs(l1).sum() < np.abs(free).sum()
  assert abs(l1[0]) < 0.05 and abs(l1[1]) < 0.05  # the useless classifiers are driven to ~0


def test_alphas_follow_the_official_rule():
  np.testing.assert_array_equal(_wise.alphas(8), [0, 0, 0, 0, 0, 0.1, 0.1, 0.1])


def test_cascade_hand_example():
  # Two exits plus the fallback, costs 1, 3, 10. Sample 0 is confident at exit 1
  # (softmax([ln 19, 0]) = [0.95, 0.05]); sample 1 only at exit 2 (p = 0.99); sample 2 never.
  l19, l99 = math.log(19.0), math.log(99.0)
  combined = np.array([
      [[l19, 0.0], [0.0, 5.0]],
      [[0.0, 0.5], [0.0, l99]],
      [[0.2, 0.0], [0.0, 0.3]],
  ])
  fallback = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
  labels = np.array([0, 1, 1])
  r = _wise.cascade(combined, fallback, labels, 0.9, [1.0, 3.0, 10.0])
  np.testing.assert_array_equal(r.exits, [0, 1, 2])
  np.testing.assert_array_equal(r.predictions, [0, 1, 0])
  assert r.accuracy == pytest.approx(2 / 3)
  assert r.gmacs_per_video == pytest.approx((1 + 3 + 10) / 3)
  assert r.exit_fraction == pytest.approx([1 / 3, 1 / 3, 1 / 3])
  # Threshold 0.96: sample 0 (0.95) goes on to exit 2 (softmax([0, 5]) = 0.9933) and is wrong.
  r = _wise.cascade(combined, fallback, labels, 0.96, [1.0, 3.0, 10.0])
  np.testing.assert_array_equal(r.exits, [1, 1, 2])
  np.testing.assert_array_equal(r.predictions, [1, 1, 0])
  # The rule is strict: a confidence equal to the threshold (0.5 for equal logits) does not exit.
  r = _wise.cascade(np.zeros((1, 1, 2)), np.array([[0.0, 1.0]]), np.array([1]), 0.5, [1.0, 2.0])
  np.testing.assert_array_equal(r.exits, [1])
  # At 1.0 nothing exits early: every sample takes the fallback.
  r = _wise.cascade(combined, fallback, labels, 1.0, [1.0, 3.0, 10.0])
  np.testing.assert_array_equal(r.exits, [2, 2, 2])
  assert r.gmacs_per_video == 10.0 and r.accuracy == pytest.approx(1 / 3)


def test_cascade_costs_add_earlier_networks_in_full():
  costs = _wise.cascade_costs([[1, 2, 3, 4], [10, 20, 30, 40]], [2, 3])
  np.testing.assert_allclose(costs, [2, 4, 6, 8, 38, 68, 98, 128])


def test_variants_on_a_hand_example():
  # 2 networks x 4 exits would be 8; use E = 3 exits: the finals are exits 2 and 3 (0-based 1, 2).
  z = np.array([[[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])  # one sample
  y = np.array([1])
  fitted = _wise.Fitted(weights=np.array([[1, 0, 0], [0.5, 1, 0], [1, 1, 1.0]]),
                        fallback=np.array([1.0, 2.0]))
  res = _wise.evaluate(z, y, fitted, [1, 2], [1.0, 2.0, 5.0], [0.5, 1.0],
                       ["wise", "division", "no_scaling", "no_lateral"])
  # tau = 0.5: every variant exits at exit 1 (z1 = [2, 0] or w = 1 on it): class 0, wrong.
  for v in res:
    assert res[v][0]["accuracy"] == 0.0 and res[v][0]["gmacs_per_video"] == 1.0
  # tau = 1: fallback. wise: 1*[0,1] + 2*[0,3] -> class 1; no_lateral: the last exit [0, 3].
  for v in res:
    assert res[v][1]["accuracy"] == 1.0 and res[v][1]["gmacs_per_video"] == 5.0
  comb = _wise.combine(z, fitted.weights, divide=True)
  np.testing.assert_allclose(comb[0, 1], [1.0 / 2, 1.0 / 2])
  np.testing.assert_allclose(comb[0, 2], [2.0 / 3, 4.0 / 3])
  with pytest.raises(ValueError, match="unknown WISE variant"):
    _wise.evaluate(z, y, fitted, [1, 2], [1.0, 2.0, 5.0], [0.5], ["bogus"])

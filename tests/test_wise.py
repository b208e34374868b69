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


# --- The official protocol switches (issue 14 items 4-6) -------------------------------------

# The official cascades' exit costs per segment (GMACs, hard-coded in hmdb_wise.py /
# wise_ucf101_kinetics_pretrained.py), R, MV, I.
_R = (1.09, 1.09 + 0.88, 1.09 + 0.88 + 0.52, 1.09 + 0.88 + 0.52 + 0.41)
_MV = (1.13, 1.13 + 0.87, 1.13 + 0.87 + 0.53, 1.13 + 0.87 + 0.53 + 0.41)
_I = (2.97 - 1.71, 2.97 + 2.88 - 1.71 - 0.92, 2.97 + 2.88 + 3.32 - 1.71 - 0.92,
      2.97 + 2.88 + 3.32 + 0.81 - 1.71 - 0.92)


def _official_loop(z, weights, fb_i_r_mv, labels, threshold, seg_mv, seg_r, seg_i, divide=False):
  """The official per-video cascade (main / main_no_division), re-written here with torch float32.

  z: [N, 12, C] in the order R1..R4, MV1..MV4, I1..I4; weights[k]: the k+1 weights of exit k+1.
  Keeps the official counters, including ``counter_IC<k>_predictions_mv += 1`` where the correct
  counter was meant (MV2-MV4), and the official cost formula. Returns (accuracy %, cost, exits).
  """
  import torch  # pylint: disable=g-import-not-at-top
  softmax = torch.nn.Softmax(dim=1)
  zt = torch.tensor(np.asarray(z, np.float32))
  wt = [torch.tensor(np.asarray(w, np.float32)) for w in weights]
  counter = [0] * 12
  correct, exits = 0, []
  for ii in range(zt.shape[0]):
    for k in range(11):
      if k == 0:
        comb = zt[ii, 0]
      else:
        comb = wt[k][0] * zt[ii, 0]
        for j in range(1, k + 1):
          comb = comb + wt[k][j] * zt[ii, j]
        if divide:
          comb = comb / (k + 1)
      if softmax(comb[None]).max() > threshold:
        prediction = int(np.argmax(comb.numpy()))
        counter[k] += 1
        if prediction == labels[ii]:
          if k in (5, 6, 7):  # MV2-MV4: the official bug
            counter[k] += 1
          correct += 1
        exits.append(k)
        break
    else:
      w_i, w_r, w_mv = fb_i_r_mv
      prediction = int(np.argmax((w_i * zt[ii, 11] + w_r * zt[ii, 3] + w_mv * zt[ii, 7]).numpy()))
      counter[11] += 1
      correct += prediction == labels[ii]
      exits.append(11)
  cost = (sum(_R[k] * counter[k] for k in range(4)) * seg_r
          + sum(_MV[k] * counter[4 + k] for k in range(4)) * seg_mv
          + _R[3] * sum(counter[4:8]) * seg_r
          + sum(_I[k] * counter[8 + k] for k in range(4)) * seg_i
          + _R[3] * sum(counter[8:12]) * seg_r + _MV[3] * sum(counter[8:12]) * seg_mv)
  return 100 * correct / zt.shape[0], cost, np.array(exits)


def _chain_logits(rng, n=200, c=5, scale=1.0):
  # Exits get more confident along the chain, so the cascade exits all along it.
  labels = rng.integers(0, c, n)
  z = rng.normal(size=(n, 12, c)) * scale
  z[np.arange(n), :, labels] += scale * (0.3 + 0.25 * np.arange(12))[None, :]
  return z.astype(np.float32), labels


@pytest.mark.parametrize("threshold, scale, variant", [
    (0.9, 2.0, "wise"), (0.7, 3.0, "division"), (0.999999, 8.0, "wise")])
def test_cascade_matches_the_official_loop(threshold, scale, variant):
  rng = np.random.default_rng(3)
  z, labels = _chain_logits(rng, scale=scale)
  w = np.tril(rng.uniform(0.2, 1.5, size=(12, 12))).astype(np.float32)
  w[0] = 0
  w[0, 0] = 1  # exit 1 is used as it is
  fb = (0.4611, 0.6313, 0.3005)  # I, R, MV: HMDB-51 split 1
  seg_mv, seg_r, seg_i = 1, 2, 1
  acc, cost, exits = _official_loop(z, [w[k, :k + 1] for k in range(12)], fb, labels, threshold,
                                    seg_mv, seg_r, seg_i, divide=variant == "division")
  order = ("residual", "mv", "iframe")
  costs = _wise.cascade_costs([_R, _MV, _I], [seg_r, seg_mv, seg_i])
  fitted = _wise.Fitted(w, _wise.fallback_weights("official", order, dataset="hmdb51", split=1)[1])
  double = _wise.official_double_count(order)
  assert double == (5, 6, 7)
  res = _wise.evaluate(z, labels, fitted, [3, 7, 11], costs, [threshold], [variant],
                       double_count=double, softmax_dtype="float32")[variant][0]
  assert res["accuracy"] * 100 == pytest.approx(acc)
  assert res["gmacs_total"] == pytest.approx(cost, rel=1e-9)
  assert res["gmacs_per_video"] == pytest.approx(cost / len(labels), rel=1e-9)
  comb = _wise.combine(z, w, divide=variant == "division", dtype=np.float32)
  fb_logits = _wise.combine(z[:, [3, 7, 11]], fitted.fallback[None], dtype=np.float32)[:, 0]
  r = _wise.cascade(comb[:, :-1], fb_logits, labels, threshold, costs, double_count=double)
  np.testing.assert_array_equal(r.exits, exits)
  # The test can fail: correct exits at MV2-MV4 occur, so the counter bug changes the cost ...
  doubled = np.isin(exits, double) & (r.predictions == labels)
  assert doubled.sum() > 0 and len(set(exits.tolist())) > 6
  # ... and the true (per-video) count is the official one less those videos' second count.
  true = _wise.cascade(comb[:, :-1], fb_logits, labels, threshold, costs)
  assert true.gmacs_total == pytest.approx(cost - costs[exits[doubled]].sum(), rel=1e-9)
  assert true.gmacs_total == pytest.approx(costs[exits].sum(), rel=1e-9)
  assert true.accuracy == r.accuracy


def test_float32_softmax_decides_like_the_official_tensors():
  # logits [a, 0] with a = log(p / (1 - p)), p = 0.99999899999 < 0.999999: float64 does not exit;
  # float32 rounds 1 + exp(-a) up to 1 + 8 ulp, softmax 0.99999905 > float32(0.999999).
  a = math.log(0.99999899999 / (1 - 0.99999899999))
  combined = np.array([[[a, 0.0]]])
  fallback = np.array([[0.0, 1.0]])
  labels = np.array([0])
  r64 = _wise.cascade(combined, fallback, labels, 0.999999, [1.0, 5.0])
  r32 = _wise.cascade(combined.astype(np.float32), fallback, labels, 0.999999, [1.0, 5.0])
  np.testing.assert_array_equal(r64.exits, [1])
  np.testing.assert_array_equal(r32.exits, [0])
  assert (r64.accuracy, r32.accuracy) == (0.0, 1.0)
  assert (r64.gmacs_total, r32.gmacs_total) == (5.0, 1.0)
  # Through evaluate: the dtype switch picks the path; unknown names are refused.
  z = np.array([[[a, 0.0], [0.0, 9.0]]])
  fitted = _wise.Fitted(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0]))
  got = {d: _wise.evaluate(z, labels, fitted, [1], [1.0, 5.0], [0.999999], ["wise"],
                           softmax_dtype=d)["wise"][0]["exit_fraction"]
         for d in ("float32", "float64")}
  assert got == {"float32": [1.0, 0.0], "float64": [0.0, 1.0]}
  with pytest.raises(ValueError, match="softmax_dtype"):
    _wise.evaluate(z, labels, fitted, [1], [1.0, 5.0], [0.5], ["wise"], softmax_dtype="float16")


def test_official_fallback_presets_and_explicit_weights():
  # The official scripts' constants (I, R, MV), typed from the scripts' `else:` branches.
  official = {("ucf101", 1): (1.8532, 1.3720, 0.5565), ("ucf101", 2): (1.8532, 1.3720, 0.5565),
              ("ucf101", 3): (1.5995, 1.4348, 0.9558), ("hmdb51", 1): (0.4611, 0.6313, 0.3005),
              ("hmdb51", 2): (0.4077, 0.7465, 0.2855), ("hmdb51", 3): (0.3689, 0.7618, 0.3450)}
  order = ("residual", "mv", "iframe")
  for (name, split), (w_i, w_r, w_mv) in official.items():
    source, w = _wise.fallback_weights("official", order, dataset=name, split=split)
    assert source == "official"
    np.testing.assert_array_equal(w, [w_r, w_mv, w_i])
  # HMDB-51 split 1 writes the prediction twice; the second line (I 0.4611, R 0.6313) wins: the
  # first (I 0.6313, R 0.4611) would not be what runs.
  _, w = _wise.fallback_weights("official", ("iframe", "residual", "mv"), dataset="hmdb51",
                                split=1)
  np.testing.assert_array_equal(w, [0.4611, 0.6313, 0.3005])
  assert _wise.fallback_weights("learned", order) == ("learned", None)
  for spec in ("0.5,1,2", (0.5, 1, 2), "(0.5, 1, 2)"):
    source, w = _wise.fallback_weights(spec, order)
    assert source == "explicit"
    np.testing.assert_array_equal(w, [1.0, 0.5, 2.0])  # given (MV, R, I), returned R, MV, I
  for bad in ("offical", "1,2", (1, 2, 3, 4), "a,b,c", "nan,1,1"):
    with pytest.raises(ValueError, match="fallback_weights"):
      _wise.parse_fallback_weights(bad)
  with pytest.raises(ValueError, match="no official WISE fallback"):
    _wise.fallback_weights("official", order, dataset="synthetic_actions", split=None)
  # A given fallback replaces the fitted one.
  z = np.zeros((4, 12, 3), np.float32)
  fitted = _wise.fit(z, np.zeros(4, int), [3, 7, 11], alpha=0.1, free_exits=5, fallback_alpha=0.1,
                     lr=0.1, steps=2, init=1.0, fallback=np.array([1.0, 2.0, 3.0]))
  np.testing.assert_array_equal(fitted.fallback, [1.0, 2.0, 3.0])
  assert _wise.official_double_count(("mv", "residual", "iframe")) == (1, 2, 3)
  assert _wise.dataset_split("split2") == 2 and _wise.dataset_split("custom") is None


def _fake_logits(rng, counts, n=40, c=4):
  """logits[(split, s)] as dump_logits returns them; each count's logits differ."""
  labels = {"train": rng.integers(0, c, n), "test": rng.integers(0, c, n // 2)}
  out = {}
  for split in ("train", "test"):
    for s in counts:
      y = labels[split]
      parts = {"label": y}
      for m in ("residual", "mv", "iframe"):
        z = rng.normal(size=(len(y), 4, c)).astype(np.float32)
        z[np.arange(len(y)), :, y] += 1.0 + 0.3 * s
        parts[f"{m}/pkd"] = z
      out[(split, s)] = parts
  return out


def _wise_config(**wise):
  from kd_jax.methods import _pkd_config  # pylint: disable=g-import-not-at-top
  config = _pkd_config.base_config()
  config.wise.steps = 20
  config.wise.settings = ((1, 1, 1), (3, 3, 3))
  config.wise.thresholds = (1.0, 0.9)
  for k, v in wise.items():
    config.wise[k] = v
  return config


def test_weights_fitted_once_or_per_setting():
  from kd_jax.methods import _pkd_exits  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = _fake_logits(rng, (1, 2, 3))
  costs = {"residual": list(_R), "mv": list(_MV), "iframe": list(_I)}

  def direct(seg_mv, seg_r, seg_i):  # the fit on train logits stacked by hand (R, MV, I)
    z = np.concatenate([logits[("train", seg_r)]["residual/pkd"],
                        logits[("train", seg_mv)]["mv/pkd"],
                        logits[("train", seg_i)]["iframe/pkd"]], axis=1)
    return _wise.fit_weights(z, logits[("train", 1)]["label"],
                             alpha=_wise.alphas(12), steps=20)

  once = _pkd_exits.run_wise(_wise_config(fit_segments=(1, 2, 1)), logits, costs)
  want = direct(1, 2, 1)
  for label in ("1/1/1", "3/3/3"):
    assert once[label]["fit_once"] and once[label]["fit_segments"] == {"R": 2, "MV": 1, "I": 1}
    np.testing.assert_allclose(once[label]["weights"], want, rtol=1e-6)
  per = _pkd_exits.run_wise(_wise_config(), logits, costs)
  for label, seg in (("1/1/1", 1), ("3/3/3", 3)):
    assert not per[label]["fit_once"]
    np.testing.assert_allclose(per[label]["weights"], direct(seg, seg, seg), rtol=1e-6)
  assert not np.allclose(per["3/3/3"]["weights"], want)
  # The train split is dumped where the weights are fitted.
  assert _pkd_exits.logit_segments(_wise_config(fit_segments=(1, 2, 1)), [3, 1]) == {
      "train": [1, 2], "test": [1, 3]}
  assert _pkd_exits.logit_segments(_wise_config(), [3, 1]) == {"train": [1, 3], "test": [1, 3]}


def test_run_wise_switches_reach_the_results():
  from kd_jax.methods import _pkd_exits  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  logits = _fake_logits(rng, (1, 3))
  costs = {"residual": list(_R), "mv": list(_MV), "iframe": list(_I)}
  config = _wise_config(fallback_weights="official", cost_count="official",
                        softmax_dtype="float32")
  config.data.name, config.data.config = "ucf101", "split1"
  # The preset follows the split actually run (run_one's), not the config's data.config.
  block = _pkd_exits.run_wise(config, logits, costs, split=3)["1/1/1"]
  np.testing.assert_array_equal(block["fallback_weights"], [1.4348, 0.9558, 1.5995])
  block1 = _pkd_exits.run_wise(config, logits, costs)["1/1/1"]
  np.testing.assert_array_equal(block1["fallback_weights"], [1.3720, 0.5565, 1.8532])
  assert (block["fallback_weights_source"], block["cost_count"], block["softmax_dtype"]) == (
      "official", "official", "float32")
  n = block["test_videos"]
  assert n == 20
  for row in block["variants"]["wise"]:
    assert row["gmacs_total"] == pytest.approx(row["gmacs_per_video"] * n)
  # tau = 1: every video takes the fallback, cost the full cascade (no MV exit, no double count).
  tau1 = block["variants"]["wise"][0]
  assert tau1["gmacs_total"] == pytest.approx(n * block["exit_gmacs_per_video"][-1])
  assert block["late_fusion"]["gmacs_total"] == pytest.approx(tau1["gmacs_total"])


def test_wise_config_checks():
  from kd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from kd_jax.methods import _pkd_config  # pylint: disable=g-import-not-at-top
  _pkd_config.validate(_wise_config(fit_segments=(1, 2, 1), fallback_weights="0.5,1,2"))
  hmdb = _wise_config(fallback_weights="official")
  _pkd_config.validate(hmdb)  # base_config: hmdb51 split1
  hmdb.splits = (1, 2, 3)
  _pkd_config.validate(hmdb)
  for wise, needle in (({"fit_segments": (1, 2)}, "wise.fit_segments"),
                       ({"fit_segments": (0, 1, 1)}, "wise.fit_segments"),
                       ({"fallback_weights": "offical"}, "wise.fallback_weights"),
                       ({"fallback_weights": "official", "fallback": "last_exit"},
                        "needs wise.fallback='finals'"),
                       ({"cost_count": "double"}, "wise.cost_count"),
                       ({"softmax_dtype": "float16"}, "wise.softmax_dtype")):
    with pytest.raises(UserError, match=needle):
      _pkd_config.validate(_wise_config(**wise))
  other = _wise_config(fallback_weights="official")
  other.data.name = "synthetic_actions"
  with pytest.raises(UserError, match="presets for ucf101 and hmdb51"):
    _pkd_config.validate(other)


def test_report_totals_sum_the_splits_and_name_the_switches():
  from kd_jax.methods import _pkd_report  # pylint: disable=g-import-not-at-top
  runs = [{"split": 1, "t": 10.0}, {"split": 1, "t": 14.0}, {"split": 2, "t": 5.0},
          {"split": 3, "t": 1.0}]
  assert _pkd_report.split_total(runs, "t") == 12.0 + 5.0 + 1.0  # seeds averaged, splits summed
  assert _pkd_report.split_total(runs[:1], "t") == 10.0
  assert _pkd_report.split_total([{"split": None}], "t") is None
  text = _pkd_report.wise_switches({"fit_once": True, "fit_segments": {"R": 2, "MV": 1, "I": 1},
                                    "fallback_weights_source": "official",
                                    "cost_count": "official", "softmax_dtype": "float32"})
  for needle in ("once, at MV/R/I 1/2/1", "`official` (`wise.fallback_weights`)",
                 "`official` (`wise.cost_count`)", "`float32` (`wise.softmax_dtype`)"):
    assert needle in text
  assert "per setting" in _pkd_report.wise_switches({"fit_once": False})

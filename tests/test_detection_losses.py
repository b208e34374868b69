"""kd_jax.losses.detection (AFSD's losses) against NumPy loops, hand values and a PyTorch
transcription of AFSD's MultiSegmentLoss written here from its formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.losses import detection as det

F32_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------------------------------
# NumPy references, one anchor at a time, in float64.


def np_focal(logits, labels, alpha=0.25, gamma=2.0, eps=1e-6):
  flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
  out = np.empty(len(lab))
  for i, (z, y) in enumerate(zip(flat, lab)):
    p = np.exp(z - z.max())
    p /= p.sum()
    pt = p[y] + eps
    a = alpha if y == 0 else 1.0 - alpha
    out[i] = -a * (1.0 - pt) ** gamma * math.log(pt)
  return out.reshape(labels.shape)


def np_iou(p, t):
  out = np.empty(p.shape[:-1])
  for i in np.ndindex(out.shape):
    (pl, pr), (tl, tr) = p[i], t[i]
    inter = min(pl, tl) + min(pr, tr)
    out[i] = inter / max(pl + pr + tl + tr - inter, F32_EPS)
  return out


def np_giou_loss(p, t):
  out = np.empty(p.shape[:-1])
  for i in np.ndindex(out.shape):
    (pl, pr), (tl, tr) = p[i], t[i]
    inter = min(pl, tl) + min(pr, tr)
    union = pl + pr + tl + tr - inter
    hull = max(pl, tl) + max(pr, tr)
    out[i] = 1.0 - (inter / max(union, F32_EPS) - (hull - union) / max(hull, F32_EPS))
  return out


def np_match(centers, gts, labels, valid, clip_length):
  b_, g_ = labels.shape
  out_lab = np.zeros((b_, len(centers)), np.int64)
  out_loc = np.zeros((b_, len(centers), 2))
  for b in range(b_):
    for a, c in enumerate(centers):
      best, best_area = None, None
      for g in range(g_):
        if not valid[b, g]:
          continue
        left, right = (c - gts[b, g, 0]) * clip_length, (gts[b, g, 1] - c) * clip_length
        if left < 0 or right < 0:
          continue
        if best is None or left + right < best_area:
          best, best_area = g, left + right
      if best is not None:
        out_lab[b, a] = labels[b, best]
        out_loc[b, a] = [(c - gts[b, best, 0]) * clip_length, (gts[b, best, 1] - c) * clip_length]
  return out_lab, out_loc


def _random_pairs(seed, shape=(3, 7)):
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.1, 20.0, size=shape + (2,)).astype(np.float32),
          rng.uniform(0.1, 20.0, size=shape + (2,)).astype(np.float32))


# --------------------------------------------------------------------------------------------------
# Single terms.


def test_focal_hand_value():
  # Two classes, equal logits: p = 0.5 for either label.
  got = det.softmax_focal_loss(jnp.zeros((2, 2)), jnp.array([0, 1]))
  pt = 0.5 + 1e-6
  want = [-0.25 * (1 - pt) ** 2 * math.log(pt), -0.75 * (1 - pt) ** 2 * math.log(pt)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 0.0), (0.25, 1.5)])
def test_focal_matches_numpy(alpha, gamma):
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(2, 9, 5)).astype(np.float32)
  labels = rng.integers(0, 5, size=(2, 9))
  got = det.softmax_focal_loss(jnp.asarray(logits), jnp.asarray(labels), alpha=alpha, gamma=gamma)
  assert got.shape == (2, 9)
  np.testing.assert_allclose(np.asarray(got), np_focal(logits.astype(np.float64), labels,
                                                       alpha, gamma), rtol=2e-5, atol=1e-7)


def test_focal_gradient_is_finite_on_confident_logits():
  logits = jnp.array([[40.0, -40.0, 0.0], [-40.0, 40.0, 0.0]])
  g = jax.grad(lambda z: det.softmax_focal_loss(z, jnp.array([0, 0]), gamma=0.5).sum())(logits)
  assert np.all(np.isfinite(np.asarray(g)))


def test_iou_and_giou_hand_values():
  pred = jnp.array([[1.0, 1.0], [1.0, 3.0]])
  target = jnp.array([[2.0, 2.0], [3.0, 1.0]])
  # Nested [-1, 1] in [-2, 2]: IoU 2/4, hull = union -> GIoU = IoU.
  # [-1, 3] vs [-3, 1]: inter 2, union 6, hull 6 -> IoU 1/3.
  np.testing.assert_allclose(np.asarray(det.segment_iou(pred, target)), [0.5, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(det.segment_iou_loss(pred, target)), [0.5, 2 / 3],
                             rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(det.segment_iou_loss(pred, target, kind="linear_iou")), [0.5, 2 / 3], rtol=1e-6)
  # Disjoint once a distance goes negative ([1, 3] vs [-2, 0]): GIoU goes below IoU.
  p, t = jnp.array([[-1.0, 3.0]]), jnp.array([[2.0, 0.0]])
  iou = (-1.0 + 0.0) / (2.0 + 2.0 + 1.0)
  giou = iou - (5.0 - 5.0) / 5.0
  np.testing.assert_allclose(np.asarray(det.segment_iou_loss(p, t)), [1 - giou], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_iou_terms_match_numpy(seed):
  p, t = _random_pairs(seed)
  np.testing.assert_allclose(np.asarray(det.segment_iou(jnp.asarray(p), jnp.asarray(t))),
                             np_iou(p.astype(np.float64), t), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(det.segment_iou_loss(jnp.asarray(p), jnp.asarray(t))),
                             np_giou_loss(p.astype(np.float64), t), rtol=1e-5, atol=1e-6)


def test_boundary_bce_matches_torch_and_clamps_log():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  feats = np.maximum(rng.normal(size=(2, 10, 6)), 0).astype(np.float32)
  feats[0, 3] = 0.0  # p = 0 exactly: log(p) would be -inf, PyTorch clamps it at -100
  targets = (rng.uniform(size=(2, 10)) > 0.6).astype(np.float32)
  targets[0, 3] = 1.0
  got = det.boundary_bce_loss(jnp.asarray(feats), jnp.asarray(targets))
  p = torch.tanh(torch.from_numpy(feats)).mean(-1)
  want = torch.nn.functional.binary_cross_entropy(p, torch.from_numpy(targets),
                                                  reduction="none").mean(-1)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5)
  assert float(got[0]) > 100.0 / 10  # the clamped -100 is in there
  g = jax.grad(lambda f: det.boundary_bce_loss(f, jnp.asarray(targets)).sum())(jnp.asarray(feats))
  assert np.all(np.isfinite(np.asarray(g)))
  # AFSD's reduction='mean' over B*T is the batch mean of the per-example values.
  full = torch.nn.functional.binary_cross_entropy(p, torch.from_numpy(targets))
  np.testing.assert_allclose(float(got.mean()), float(full), rtol=1e-5)


def test_refinement_terms_hand_values():
  coarse = jnp.array([[2.0, 6.0]])  # width 8 -> half width 4
  target = jnp.array([[4.0, 4.0]])
  np.testing.assert_allclose(np.asarray(det.refinement_targets(coarse, target)), [[0.5, -0.5]])
  np.testing.assert_allclose(
      np.asarray(det.refinement_l1_loss(jnp.array([[0.25, 0.0]]), coarse, target)), [0.75])
  np.testing.assert_allclose(
      np.asarray(det.refine_segments(coarse, jnp.array([[0.5, -0.5]]))), [[4.0, 4.0]])
  # Exact refinement: q = 1, BCE(x=0, q=1) = log 2.
  np.testing.assert_allclose(
      np.asarray(det.quality_loss(jnp.zeros((1,)), jnp.array([[0.5, -0.5]]), coarse, target)),
      [math.log(2.0)], rtol=1e-6)
  # No gradient into the coarse distances through the L1 targets.
  g = jax.grad(lambda c: det.refinement_l1_loss(jnp.array([[0.25, 0.0]]), c, target).sum())(coarse)
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_triplet_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(4)
  a, p, n = (rng.normal(size=(5, 8)).astype(np.float32) for _ in range(3))
  got = det.triplet_margin_loss(jnp.asarray(a), jnp.asarray(p), jnp.asarray(n))
  want = torch.nn.TripletMarginLoss(reduction="none")(*(torch.from_numpy(x) for x in (a, p, n)))
  np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-6)
  assert float(got.max()) > 0


def test_match_anchors_matches_numpy_loop():
  rng = np.random.default_rng(5)
  t_levels = [16, 8, 4]
  centers = np.concatenate([(np.arange(t) + 0.5) / t for t in t_levels]).astype(np.float32)
  starts = rng.uniform(0, 0.8, size=(3, 4))
  gts = np.stack([starts, starts + rng.uniform(0.02, 0.5, size=(3, 4))], -1).astype(np.float32)
  gts[1, 0] = [0.25, 0.5]  # an anchor centre lies exactly on the boundary 0.25 (kept: l = 0)
  gts[1, 1] = [0.28125, 0.75]
  labels = rng.integers(1, 21, size=(3, 4))
  valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
  got_lab, got_loc = det.match_anchors(jnp.asarray(centers), jnp.asarray(gts), jnp.asarray(labels),
                                       jnp.asarray(valid), clip_length=256)
  want_lab, want_loc = np_match(centers.astype(np.float64), gts.astype(np.float64), labels, valid,
                                256)
  np.testing.assert_array_equal(np.asarray(got_lab), want_lab)
  pos = want_lab > 0
  assert pos.sum() > 5 and (~pos).sum() > 5 and not pos[2].any()
  np.testing.assert_allclose(np.asarray(got_loc)[pos], want_loc[pos], rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# The whole MultiSegmentLoss against a PyTorch transcription of its forward (values and gradients).


def torch_multisegment(torch, loc, conf, prop_loc, prop_conf, center, centers, gts, labels,
                       clip_length, piou, alpha=0.25, gamma=2.0):
  """AFSD's MultiSegmentLoss.forward with focal loss, batch of lists of ground truths."""
  F = torch.nn.functional
  num_batch, num_priors, num_classes = conf.shape
  loc_t = torch.zeros(num_batch, num_priors, 2)
  conf_t = torch.zeros(num_batch, num_priors, dtype=torch.long)
  prop_loc_t = torch.zeros(num_batch, num_priors, 2)
  prop_conf_t = torch.zeros(num_batch, num_priors, dtype=torch.long)

  def calc_iou(p, t):
    inter = torch.min(p[:, 0], t[:, 0]) + torch.min(p[:, 1], t[:, 1])
    union = p.sum(1) + t.sum(1) - inter
    return inter / union.clamp(min=F32_EPS)

  with torch.no_grad():
    for idx in range(num_batch):
      truths, lab = gts[idx], labels[idx]
      k, n = num_priors, truths.shape[0]
      c = centers.unsqueeze(1).expand(k, n)
      left = (c - truths[:, 0].unsqueeze(0).expand(k, n)) * clip_length
      right = (truths[:, 1].unsqueeze(0).expand(k, n) - c) * clip_length
      area = left + right
      maxn = clip_length * 2
      area[left < 0] = maxn
      area[right < 0] = maxn
      best_area, best_idx = area.min(1)
      loc_t[idx][:, 0] = (centers - truths[best_idx, 0]) * clip_length
      loc_t[idx][:, 1] = (truths[best_idx, 1] - centers) * clip_length
      cf = lab[best_idx].clone()
      cf[best_area >= maxn] = 0
      conf_t[idx] = cf
      pre = loc[idx]
      pc = cf.clone()
      pc[calc_iou(pre, loc_t[idx]) < piou] = 0
      prop_conf_t[idx] = pc
      w = pre[:, 0] + pre[:, 1]
      prop_loc_t[idx][:, 0] = (loc_t[idx][:, 0] - pre[:, 0]) / (0.5 * w)
      prop_loc_t[idx][:, 1] = (loc_t[idx][:, 1] - pre[:, 1]) / (0.5 * w)

  def giou_loss_sum(p, t):
    inter = torch.min(p[:, 0], t[:, 0]) + torch.min(p[:, 1], t[:, 1])
    union = p.sum(1) + t.sum(1) - inter
    iou = inter / union.clamp(min=F32_EPS)
    hull = torch.max(p[:, 0], t[:, 0]) + torch.max(p[:, 1], t[:, 1])
    return (1.0 - (iou - (hull - union) / hull.clamp(min=F32_EPS))).sum()

  def focal_sum(logits, target):
    p = F.softmax(logits.reshape(-1, num_classes), dim=1)
    target = target.reshape(-1, 1)
    pt = p.gather(1, target).view(-1) + 1e-6
    a = torch.full((num_classes,), 1.0 - alpha)
    a[0] = alpha
    return (-torch.pow(1.0 - pt, gamma) * (a.gather(0, target.view(-1)) * pt.log())).sum()

  pos = conf_t > 0
  prop_pos = prop_conf_t > 0
  loss_l = giou_loss_sum(loc[pos], loc_t[pos])
  loss_prop_l = F.l1_loss(prop_loc[prop_pos], prop_loc_t[prop_pos], reduction="sum")
  pre, cur_t, pl = loc[pos], loc_t[pos], prop_loc[pos]
  cur = 0.5 * (pre[:, 0] + pre[:, 1]).unsqueeze(-1) * pl + pre
  ious = calc_iou(cur, cur_t).clamp(min=0)
  loss_ct = F.binary_cross_entropy_with_logits(center[pos], ious, reduction="sum")
  loss_c = focal_sum(conf, conf_t)
  loss_prop_c = focal_sum(prop_conf, prop_conf_t)
  n = max(int(pos.sum()), 1)
  pn = max(int(prop_pos.sum()), 1)
  return {"loc": loss_l / n, "conf": loss_c / n, "prop_loc": loss_prop_l / pn,
          "prop_conf": loss_prop_c / pn, "quality": loss_ct / n}


def _afsd_case(seed):
  rng = np.random.default_rng(seed)
  clip_length = 64
  t_levels = [16, 8, 4, 2]
  centers = np.concatenate([(np.arange(t) + 0.5) / t for t in t_levels]).astype(np.float32)
  a, k, b = len(centers), 4, 2
  # Ground truths as AFSD's dataset gives them (frames / clip_length), a different count per clip.
  gts = [np.array([[0.05, 0.30], [0.40, 0.95], [0.42, 0.60]], np.float32),
         np.array([[0.10, 0.70]], np.float32)]
  lab = [np.array([1, 3, 2]), np.array([2])]
  # Coarse distances near the truth, so that some anchors pass piou and some do not.
  loc = np.exp(rng.normal(1.5, 0.8, size=(b, a, 2))).astype(np.float32)
  return dict(
      loc=loc,
      conf=rng.normal(size=(b, a, k)).astype(np.float32),
      prop_loc=rng.normal(scale=0.3, size=(b, a, 2)).astype(np.float32),
      prop_conf=rng.normal(size=(b, a, k)).astype(np.float32),
      center=rng.normal(size=(b, a)).astype(np.float32),
      centers=centers, gts=gts, labels=lab, clip_length=clip_length)


@pytest.mark.torch
@pytest.mark.parametrize("seed,piou", [(0, 0.5), (1, 0.0), (2, 0.3)])
def test_multisegment_loss_matches_torch_values_and_gradients(seed, piou):
  torch = pytest.importorskip("torch")
  case = _afsd_case(seed)
  names = ["loc", "conf", "prop_loc", "prop_conf", "center"]
  t_in = {n: torch.tensor(case[n], requires_grad=True) for n in names}
  want = torch_multisegment(torch, *(t_in[n] for n in names), torch.from_numpy(case["centers"]),
                            [torch.from_numpy(g) for g in case["gts"]],
                            [torch.from_numpy(lab) for lab in case["labels"]],
                            case["clip_length"], piou)
  # Padded ground truths for the fixed-shape JAX version.
  g_max = max(len(g) for g in case["gts"])
  gts = np.zeros((2, g_max, 2), np.float32)
  labels = np.zeros((2, g_max), np.int32)
  valid = np.zeros((2, g_max), bool)
  for i, (g, lab) in enumerate(zip(case["gts"], case["labels"])):
    gts[i, :len(g)], labels[i, :len(g)], valid[i, :len(g)] = g, lab, True

  def total(args, key):
    out = det.multisegment_loss(*args, jnp.asarray(case["centers"]), jnp.asarray(gts),
                                jnp.asarray(labels), jnp.asarray(valid),
                                clip_length=case["clip_length"], piou=piou)
    return out[key]

  args = tuple(jnp.asarray(case[n]) for n in names)
  step = jax.jit(total, static_argnums=1)
  grad_step = jax.jit(jax.grad(total), static_argnums=1)
  for key in ["loc", "conf", "prop_loc", "prop_conf", "quality"]:
    np.testing.assert_allclose(float(step(args, key)), want[key].item(), rtol=1e-5, atol=1e-6,
                               err_msg=key)
    for t in t_in.values():
      t.grad = None
    want[key].backward(retain_graph=True)
    grads = grad_step(args, key)
    for n, g in zip(names, grads):
      tg = t_in[n].grad
      tg = np.zeros(case[n].shape, np.float32) if tg is None else tg.numpy()
      np.testing.assert_allclose(np.asarray(g), tg, rtol=1e-4, atol=1e-6, err_msg=f"{key}/{n}")
  # The case exercises both filters: positives, and positives dropped by piou.
  lab_j, loc_j = det.match_anchors(jnp.asarray(case["centers"]), jnp.asarray(gts),
                                   jnp.asarray(labels), jnp.asarray(valid),
                                   clip_length=case["clip_length"])
  n_pos = int((lab_j > 0).sum())
  n_prop = int(((lab_j > 0) & (det.segment_iou(args[0], loc_j) >= piou)).sum())
  assert n_pos > 5
  if piou > 0:
    assert 0 < n_prop < n_pos


def test_multisegment_loss_without_positives_is_finite():
  case = _afsd_case(0)
  out = det.multisegment_loss(
      *(jnp.asarray(case[n]) for n in ["loc", "conf", "prop_loc", "prop_conf", "center"]),
      jnp.asarray(case["centers"]), jnp.zeros((2, 1, 2)), jnp.zeros((2, 1), jnp.int32),
      jnp.zeros((2, 1), bool), clip_length=64)
  assert float(out["loc"]) == 0.0 and float(out["prop_loc"]) == 0.0
  assert float(out["quality"]) == 0.0 and float(out["conf"]) > 0.0


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="alpha"):
    det.softmax_focal_loss(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), alpha=1.5)
  with pytest.raises(ValueError, match="without the class axis"):
    det.softmax_focal_loss(jnp.zeros((2, 3)), jnp.zeros(3, jnp.int32))
  with pytest.raises(ValueError, match="kind"):
    det.segment_iou_loss(jnp.ones((2, 2)), jnp.ones((2, 2)), kind="diou")
  with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
    det.segment_iou(jnp.ones((2, 3)), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"\[B, T\]"):
    det.boundary_bce_loss(jnp.ones((2, 5, 4)), jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="margin"):
    det.triplet_margin_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.ones((2, 3)), margin=0.0)

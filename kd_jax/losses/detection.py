"""AFSD's temporal action detection losses as pure functions.

Reference: Lin et al., "Learning Salient Boundary Feature for Anchor-free Temporal Action
Localization" (CVPR 2021), official code TencentYoutuResearch/ActionDetection-AFSD:
``AFSD/thumos14/multisegment_loss.py`` (``MultiSegmentLoss``, ``FocalLoss_Ori``, ``iou_loss``) and
``AFSD/thumos14/train.py`` (``calc_bce_loss``, the triplet term). GenKD's detection code uses the
same files unchanged.

Segments are AFSD's anchor-relative *distances*: ``(left, right)`` in frames, the segment being
``[center - left, center + right]``. Label 0 is background, ``1..K-1`` the action classes. Every
loss returns a value per anchor (or per example for the boundary and triplet terms); AFSD's
batch-level normalisation (sum over the batch's anchors divided by its number of positives) is what
``multisegment_loss`` does, and is left to the caller otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

# torch.finfo(torch.float32).eps, the clamp of AFSD's iou_loss.
_F32_EPS = float(np.finfo(np.float32).eps)
_IOU_KINDS = ("giou", "linear_iou")


def _check_pairs(name: str, x: jax.Array) -> None:
  if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != 2:
    raise ValueError(f"{name} must be [..., 2] (left, right) distances, got shape {jnp.shape(x)}")


def softmax_focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-6,
) -> jax.Array:
  r"""AFSD's focal loss on softmax probabilities (``FocalLoss_Ori`` with ``balance_index=0``).

  .. math::
    p_t = \operatorname{softmax}(z)_y + \epsilon,\qquad
    \ell = -\alpha_y\,(1 - p_t)^\gamma \log p_t,\qquad
    \alpha_y = \alpha \text{ if } y = 0 \text{ (background) else } 1 - \alpha

  Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), in AFSD's softmax form: with
  ``alpha=0.25`` the *background* gets 0.25 and every action class 0.75. ``1 - p_t`` is clamped at
  0 (``p_t`` can reach ``1 + eps``) so that non-integer ``gamma`` stays finite; for the default
  ``gamma=2`` this changes the value by at most ``eps**2``.

  Args:
    logits: ``[..., K]`` class logits (softmax is applied here).
    labels: ``[...]`` integer labels in ``[0, K)``; 0 is background.
    alpha: background weight in ``(0, 1)``; the action classes get ``1 - alpha``.
    gamma: focusing exponent ``>= 0``.
    eps: added to ``p_t`` before the log, as AFSD does.

  Returns:
    The loss per anchor, shape ``[...]``. AFSD sums it over every anchor of the batch and divides by
    the number of positive anchors.
  """
  a = _checks.concrete_number(alpha)
  if a is not None and not 0.0 < a < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
  _checks.check_non_negative("gamma", gamma)
  _checks.check_non_negative("eps", eps)
  if jnp.shape(logits)[:-1] != jnp.shape(labels):
    raise ValueError(
        f"labels must have the logits' shape without the class axis, got logits "
        f"{jnp.shape(logits)} and labels {jnp.shape(labels)}"
    )
  labels = jnp.asarray(labels).astype(jnp.int32)
  probs = jax.nn.softmax(_checks.as_float(logits), axis=-1)
  pt = jnp.take_along_axis(probs, labels[..., None], axis=-1)[..., 0] + eps
  weight = jnp.where(labels == 0, alpha, 1.0 - alpha)
  base = 1.0 - pt
  inside = base > 0
  # The inner where keeps the gradient of x**gamma finite at x = 0 when gamma < 1.
  modulating = jnp.where(inside, jnp.where(inside, base, 1.0) ** gamma, jnp.power(0.0, gamma))
  return -modulating * (weight * jnp.log(pt))


def segment_iou(pred: jax.Array, target: jax.Array) -> jax.Array:
  r"""Temporal IoU of two segments given as distances from the same anchor (AFSD's ``calc iou``).

  .. math::
    I = \min(l, l^*) + \min(r, r^*),\qquad
    \mathrm{IoU} = \frac{I}{\max\big((l + r) + (l^* + r^*) - I,\ \epsilon\big)}

  with ``epsilon`` the float32 machine epsilon. No gradient is stopped: AFSD uses it both as a
  matching criterion (under ``no_grad``) and as the target of the quality branch (with gradient).

  Args:
    pred: ``[..., 2]`` predicted ``(left, right)`` distances.
    target: ``[..., 2]`` ground-truth distances from the same anchor.

  Returns:
    ``[...]``, the IoU; negative when a prediction has negative distances (AFSD clamps it where it
    matters).
  """
  _check_pairs("pred", pred)
  _checks.check_same_shape(pred, target, "pred and target")
  p, t = _checks.as_float(pred), _checks.as_float(target)
  inter = jnp.minimum(p[..., 0], t[..., 0]) + jnp.minimum(p[..., 1], t[..., 1])
  union = p.sum(-1) + t.sum(-1) - inter
  return inter / jnp.maximum(union, _F32_EPS)


def segment_iou_loss(pred: jax.Array, target: jax.Array, *, kind: str = "giou") -> jax.Array:
  r"""AFSD's regression loss on ``(left, right)`` distances: ``1 - GIoU`` (default) or ``1 - IoU``.

  .. math::
    C = \max(l, l^*) + \max(r, r^*),\qquad
    \mathrm{GIoU} = \mathrm{IoU} - \frac{C - U}{\max(C, \epsilon)},\qquad \ell = 1 - \mathrm{GIoU}

  with ``U`` the union and ``IoU`` as in :func:`segment_iou` (Rezatofighi et al., CVPR 2019). AFSD
  uses ``giou`` for the coarse localisation of positive anchors (``loss_l``).

  Args:
    pred: ``[..., 2]`` predicted distances.
    target: ``[..., 2]`` ground-truth distances.
    kind: ``"giou"`` or ``"linear_iou"``.

  Returns:
    The loss per anchor, ``[...]``.
  """
  if kind not in _IOU_KINDS:
    raise ValueError(f"kind must be one of {_IOU_KINDS}, got {kind!r}")
  iou = segment_iou(pred, target)
  if kind == "linear_iou":
    return 1.0 - iou
  p, t = _checks.as_float(pred), _checks.as_float(target)
  inter = jnp.minimum(p[..., 0], t[..., 0]) + jnp.minimum(p[..., 1], t[..., 1])
  union = p.sum(-1) + t.sum(-1) - inter
  enclosing = jnp.maximum(p[..., 0], t[..., 0]) + jnp.maximum(p[..., 1], t[..., 1])
  return 1.0 - (iou - (enclosing - union) / jnp.maximum(enclosing, _F32_EPS))


def _clamped_log(x: jax.Array) -> jax.Array:
  """``max(log x, -100)`` as PyTorch's binary_cross_entropy takes it; finite gradient at 0."""
  positive = x > 0
  return jnp.where(positive, jnp.maximum(jnp.log(jnp.where(positive, x, 1.0)), -100.0), -100.0)


def boundary_bce_loss(boundary_features: jax.Array, targets: jax.Array) -> jax.Array:
  r"""AFSD's start/end boundary loss (``calc_bce_loss``): BCE of the channel-mean ``tanh`` of a
  boundary feature map against the 0/1 boundary mask.

  .. math::
    p_{b,t} = \frac1C \sum_c \tanh(f_{b,t,c}),\qquad
    \ell_b = \frac1T \sum_t -\big(y_{b,t} \log p_{b,t} + (1 - y_{b,t}) \log(1 - p_{b,t})\big)

  with each log clamped at -100 as ``torch.nn.functional.binary_cross_entropy`` does. The features
  are post-ReLU in AFSD, so ``p`` lies in ``[0, 1)``; it is clipped to ``[0, 1]`` here (PyTorch
  would raise). AFSD applies it to the start half and the end half of the frame-level feature (256
  frames), and with weight 0.1 to the two halves of level 0's proposal features (64 steps) against
  the masks subsampled by ``F.interpolate(scale_factor=1/4)`` (nearest: ``targets[:, ::4]``).

  Args:
    boundary_features: ``[B, T, C]`` channels-last.
    targets: ``[B, T]`` boundary masks in ``[0, 1]``.

  Returns:
    The loss per example, ``[B]`` (mean over ``T``); its batch mean is AFSD's ``reduction='mean'``.
  """
  if jnp.ndim(boundary_features) != 3:
    raise ValueError(
        f"boundary_features must be [B, T, C], got shape {jnp.shape(boundary_features)}"
    )
  if jnp.shape(targets) != jnp.shape(boundary_features)[:2]:
    raise ValueError(
        f"targets must be [B, T] = {jnp.shape(boundary_features)[:2]}, got {jnp.shape(targets)}"
    )
  p = jnp.clip(jnp.mean(jnp.tanh(_checks.as_float(boundary_features)), axis=-1), 0.0, 1.0)
  y = _checks.as_float(targets)
  bce = -(y * _clamped_log(p) + (1.0 - y) * _clamped_log(1.0 - p))
  return jnp.mean(bce, axis=-1)


def refine_segments(coarse: jax.Array, refined: jax.Array) -> jax.Array:
  r"""Decode the refinement offsets onto the coarse distances (AFSD's test and quality target).

  .. math::
    \tilde d = d + \tfrac12 (l + r)\,\delta,\qquad d = (l, r)

  Args:
    coarse: ``[..., 2]`` coarse ``(left, right)`` distances.
    refined: ``[..., 2]`` the refinement branch's offsets ``delta``.

  Returns:
    ``[..., 2]`` refined distances. Gradients flow to both inputs.
  """
  _check_pairs("coarse", coarse)
  _checks.check_same_shape(coarse, refined, "coarse and refined")
  c = _checks.as_float(coarse)
  return c + 0.5 * c.sum(-1, keepdims=True) * _checks.as_float(refined)


def refinement_targets(coarse: jax.Array, target: jax.Array) -> jax.Array:
  r"""The offsets the refinement branch regresses: ``(d* - d) / (0.5 (l + r))``, computed from the
  coarse prediction with its gradient stopped (AFSD builds them under ``torch.no_grad``)."""
  _check_pairs("coarse", coarse)
  _checks.check_same_shape(coarse, target, "coarse and target")
  c = jax.lax.stop_gradient(_checks.as_float(coarse))
  return (jax.lax.stop_gradient(_checks.as_float(target)) - c) / (0.5 * c.sum(-1, keepdims=True))


def refinement_l1_loss(refined: jax.Array, coarse: jax.Array, target: jax.Array) -> jax.Array:
  r"""AFSD's refinement regression (``loss_prop_l``): L1 between the predicted offsets and
  :func:`refinement_targets`.

  .. math::
    \ell = \sum_{j \in \{l, r\}} \Big|\delta_j - \frac{d^*_j - d_j}{\tfrac12 (l + r)}\Big|

  Args:
    refined: ``[..., 2]`` predicted offsets ``delta``.
    coarse: ``[..., 2]`` coarse distances ``d``; no gradient flows into them.
    target: ``[..., 2]`` ground-truth distances ``d*``.

  Returns:
    The loss per anchor, ``[...]``. AFSD sums it over the anchors whose label survives the
    ``piou`` filter and divides by their count.
  """
  _checks.check_same_shape(refined, coarse, "refined and coarse")
  return jnp.abs(_checks.as_float(refined) - refinement_targets(coarse, target)).sum(-1)


def quality_loss(
    quality_logits: jax.Array,
    refined: jax.Array,
    coarse: jax.Array,
    target: jax.Array,
    *,
    stop_target_gradient: bool = False,
) -> jax.Array:
  r"""AFSD's quality ("center" / ``loss_ct``) term: BCE with logits against the IoU of the refined
  segment with the ground truth.

  .. math::
    q = \max\big(\mathrm{IoU}(\tilde d, d^*), 0\big),\qquad
    \ell = \max(x, 0) - x q + \log(1 + e^{-|x|})

  with ``tilde d`` from :func:`refine_segments`. In AFSD the coarse and refined distances enter
  this term *with* their gradient, and PyTorch's ``binary_cross_entropy_with_logits`` differentiates
  its target too (``d ell / d q = -x``; checked on torch 2.x, not on the 1.4 AFSD pins), so the IoU
  target trains both regressions; ``stop_target_gradient=True`` treats ``q`` as a constant.

  Args:
    quality_logits: ``[...]`` logits ``x``.
    refined: ``[..., 2]`` refinement offsets.
    coarse: ``[..., 2]`` coarse distances.
    target: ``[..., 2]`` ground-truth distances.
    stop_target_gradient: stop the gradient through ``q``.

  Returns:
    The loss per anchor, ``[...]``. AFSD sums it over the positive anchors and divides by their
    count.
  """
  if jnp.shape(quality_logits) != jnp.shape(refined)[:-1]:
    raise ValueError(
        f"quality_logits must have the segments' shape without the last axis, got "
        f"{jnp.shape(quality_logits)} and {jnp.shape(refined)}"
    )
  q = jnp.maximum(segment_iou(refine_segments(coarse, refined), target), 0.0)
  if stop_target_gradient:
    q = jax.lax.stop_gradient(q)
  x = _checks.as_float(quality_logits)
  return jnp.maximum(x, 0.0) - x * q + jnp.log1p(jnp.exp(-jnp.abs(x)))


def triplet_margin_loss(
    anchor: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    *,
    margin: float = 1.0,
    eps: float = 1e-6,
) -> jax.Array:
  r"""``torch.nn.TripletMarginLoss()`` per example, AFSD's boundary-consistency (SSL) term.

  .. math::
    \ell_b = \max\big(\|a_b - p_b + \epsilon\|_2 - \|a_b - n_b + \epsilon\|_2 + m,\ 0\big)

  (PyTorch's ``pairwise_distance`` adds ``eps`` to the difference). AFSD takes the batch mean for
  each of its three pooled features and weights them 1, 0.1, 0.1.

  Args:
    anchor, positive, negative: ``[B, D]``.
    margin: ``m > 0``.
    eps: added to each difference.

  Returns:
    ``[B]``.
  """
  _checks.check_positive("margin", margin)
  _checks.check_same_shape(anchor, positive, "anchor and positive")
  _checks.check_same_shape(anchor, negative, "anchor and negative")
  _checks.check_has_batch_axis("anchor", anchor)
  a = _checks.as_float(anchor)

  def dist(x):
    d = a - _checks.as_float(x) + eps
    return jnp.sqrt(jnp.sum(d * d, axis=-1))

  return jnp.maximum(dist(positive) - dist(negative) + margin, 0.0)


def match_anchors(
    anchor_centers: jax.Array,
    gt_segments: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array | None = None,
    *,
    clip_length: float,
) -> tuple[jax.Array, jax.Array]:
  r"""AFSD's anchor assignment (``MultiSegmentLoss.forward``): each anchor takes the shortest valid
  ground truth that contains its centre, and background when none does.

  With ``c`` the anchor centre and ``[s, e]`` a ground truth, both as fractions of the clip,
  ``l = (c - s) L`` and ``r = (e - c) L``; ground truths with ``l < 0`` or ``r < 0`` are out (an
  anchor on a boundary is in), ties go to the first ground truth.

  Args:
    anchor_centers: ``[A]`` anchor centres in ``[0, 1]`` (AFSD: ``(i + 0.5) / t`` per level).
    gt_segments: ``[B, G, 2]`` ``(start, end)`` as fractions of the clip, padded to ``G``.
    gt_labels: ``[B, G]`` integer labels ``>= 1``.
    gt_valid: ``[B, G]`` bool, False for padding; all valid when None.
    clip_length: ``L``, the clip length in frames (AFSD: 256).

  Returns:
    ``(labels [B, A] int32, distances [B, A, 2])``: the anchor labels (0 = background) and the
    ground-truth ``(left, right)`` distances in frames (meaningless where the label is 0). No
    gradient flows through either.
  """
  _checks.check_positive("clip_length", clip_length)
  gt = jax.lax.stop_gradient(_checks.as_float(gt_segments))
  if gt.ndim != 3 or gt.shape[-1] != 2:
    raise ValueError(f"gt_segments must be [B, G, 2], got shape {gt.shape}")
  if jnp.shape(gt_labels) != gt.shape[:2]:
    raise ValueError(f"gt_labels must be [B, G] = {gt.shape[:2]}, got {jnp.shape(gt_labels)}")
  if gt_valid is None:
    gt_valid = jnp.ones(gt.shape[:2], bool)
  elif jnp.shape(gt_valid) != gt.shape[:2]:
    raise ValueError(f"gt_valid must be [B, G] = {gt.shape[:2]}, got {jnp.shape(gt_valid)}")
  c = jax.lax.stop_gradient(_checks.as_float(anchor_centers))[None, :, None]  # [1, A, 1]
  left = (c - gt[:, None, :, 0]) * clip_length  # [B, A, G]
  right = (gt[:, None, :, 1] - c) * clip_length
  far = 2.0 * clip_length
  outside = (left < 0) | (right < 0) | ~jnp.asarray(gt_valid, bool)[:, None, :]
  area = jnp.where(outside, far, left + right)
  best = jnp.argmin(area, axis=-1)  # [B, A]
  best_area = jnp.take_along_axis(area, best[..., None], axis=-1)[..., 0]
  labels = jnp.take_along_axis(jnp.asarray(gt_labels, jnp.int32), best, axis=-1)
  labels = jnp.where(best_area >= far, 0, labels)
  distances = jnp.stack(
      [jnp.take_along_axis(left, best[..., None], -1)[..., 0],
       jnp.take_along_axis(right, best[..., None], -1)[..., 0]],
      axis=-1,
  )
  return labels, distances


def multisegment_loss(
    loc: jax.Array,
    conf: jax.Array,
    prop_loc: jax.Array,
    prop_conf: jax.Array,
    quality_logits: jax.Array,
    anchor_centers: jax.Array,
    gt_segments: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array | None = None,
    *,
    clip_length: float,
    piou: float = 0.5,
    alpha: float = 0.25,
    gamma: float = 2.0,
    stop_quality_target_gradient: bool = False,
) -> dict[str, jax.Array]:
  r"""AFSD's ``MultiSegmentLoss`` with focal loss on: the five coarse and refinement terms.

  .. math::
    \mathcal L_{loc} = \tfrac1N \sum_{pos} (1 - \mathrm{GIoU}),\
    \mathcal L_{cls} = \tfrac1N \sum_{all} \mathrm{FL}(y),\
    \mathcal L_{ploc} = \tfrac1{N_p} \sum_{pos_p} \mathrm{L1},\
    \mathcal L_{pcls} = \tfrac1{N_p} \sum_{all} \mathrm{FL}(y_p),\
    \mathcal L_{q} = \tfrac1N \sum_{pos} \mathrm{BCE}(x, q)

  ``y`` from :func:`match_anchors`; ``y_p = y`` where the coarse prediction's IoU with its ground
  truth is ``>= piou``, else 0; ``N``, ``N_p`` the numbers of positives (``>= 1``) over the whole
  batch, which is why these are scalars. AFSD's training cost is
  ``lw (L_loc + L_ploc) + cw (L_cls + L_pcls + L_q)`` plus the boundary terms, with ``lw = 10``,
  ``cw = 1`` and ``piou = 0.5`` in its README command (its config default is ``piou = 0``).

  Args:
    loc: ``[B, A, 2]`` coarse distances (frames).
    conf: ``[B, A, K]`` coarse class logits.
    prop_loc: ``[B, A, 2]`` refinement offsets.
    prop_conf: ``[B, A, K]`` refined class logits.
    quality_logits: ``[B, A]`` quality ("center") logits.
    anchor_centers, gt_segments, gt_labels, gt_valid, clip_length: as in :func:`match_anchors`.
    piou: IoU a coarse prediction needs for its anchor to stay positive in the refinement stage.
    alpha, gamma: of :func:`softmax_focal_loss`.
    stop_quality_target_gradient: see :func:`quality_loss`.

  Returns:
    ``{"loc", "conf", "prop_loc", "prop_conf", "quality"}``: scalars, AFSD's ``loss_l``,
    ``loss_c``, ``loss_prop_l``, ``loss_prop_c``, ``loss_ct``.
  """
  labels, target = match_anchors(
      anchor_centers, gt_segments, gt_labels, gt_valid, clip_length=clip_length
  )
  coarse = jax.lax.stop_gradient(_checks.as_float(loc))
  prop_labels = jnp.where(segment_iou(coarse, target) < piou, 0, labels)
  pos, prop_pos = labels > 0, prop_labels > 0
  n = jnp.maximum(pos.sum(), 1).astype(jnp.float32)
  n_prop = jnp.maximum(prop_pos.sum(), 1).astype(jnp.float32)

  def masked_sum(x, mask):
    return jnp.sum(jnp.where(mask, x, 0.0))

  return {
      "loc": masked_sum(segment_iou_loss(loc, target, kind="giou"), pos) / n,
      "conf": jnp.sum(softmax_focal_loss(conf, labels, alpha=alpha, gamma=gamma)) / n,
      "prop_loc": masked_sum(refinement_l1_loss(prop_loc, loc, target), prop_pos) / n_prop,
      "prop_conf": jnp.sum(
          softmax_focal_loss(prop_conf, prop_labels, alpha=alpha, gamma=gamma)) / n_prop,
      "quality": masked_sum(
          quality_loss(quality_logits, prop_loc, loc, target,
                       stop_target_gradient=stop_quality_target_gradient), pos) / n,
  }

"""Temporal action detection: mAP under the THUMOS14 / ActivityNet protocol, and AFSD's test-time
post-processing (window decoding, merging windows per video, Gaussian soft-NMS). Pure NumPy.

References:

* the evaluation is ActivityNet's ``eval_detection.py`` (``compute_average_precision_detection``,
  ``interpolated_prec_rec``, ``segment_iou``), which AFSD (``AFSD/evaluation``) and GenKD's
  detection code ship unchanged and run on THUMOS14 (``AFSD/thumos14/eval.py``, tIoU 0.3:0.1:0.7);
* the post-processing is ``AFSD/thumos14/test.py`` and ``softnms_v2`` in
  ``AFSD/common/segment_utils.py`` of TencentYoutuResearch/ActionDetection-AFSD (Lin et al., CVPR
  2021).

Detections and ground truths are dicts: ``{"video", "start", "end", "label"}``, plus ``"score"``
for detections; times in any unit (seconds in AFSD), labels any hashable.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# AFSD's THUMOS14 test settings (configs/thumos14.yaml). GenKD's detection config changes
# nms_sigma to 0.1 for RGB (0.5 for flow).
AFSD_CONF_THRESH = 0.01
AFSD_TOP_K = 5000
AFSD_NMS_SIGMA = 0.5
AFSD_SCORE_THRESHOLD = 0.001
THUMOS14_TIOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)

_GT_KEYS = ("video", "start", "end", "label")
_PRED_KEYS = _GT_KEYS + ("score",)


# --------------------------------------------------------------------------------------------------
# Evaluation.


def segment_iou(target: Sequence[float], candidates: np.ndarray) -> np.ndarray:
  """Temporal IoU of one ``[start, end]`` with each row of ``candidates`` ``[N, 2]`` (ActivityNet's
  ``segment_iou``: intersection clipped at 0, union = sum of lengths - intersection)."""
  candidates = np.asarray(candidates, np.float64).reshape(-1, 2)
  t0, t1 = float(target[0]), float(target[1])
  inter = np.clip(np.minimum(t1, candidates[:, 1]) - np.maximum(t0, candidates[:, 0]), 0, None)
  union = (candidates[:, 1] - candidates[:, 0]) + (t1 - t0) - inter
  return inter / union


def interpolated_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
  r"""All-point interpolated AP (VOC 2011, ActivityNet's ``interpolated_prec_rec``).

  .. math::
    AP = \sum_i (r_i - r_{i-1})\, \max_{j \ge i} p_j

  over the points where recall changes, with ``(r, p)`` padded by ``(0, 0)`` in front and
  ``(1, 0)`` at the end.
  """
  mprec = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
  mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
  mprec = np.maximum.accumulate(mprec[::-1])[::-1]
  idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
  return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _records(items: Iterable[Mapping[str, Any]], keys: tuple[str, ...], what: str) -> list:
  out = []
  for i, item in enumerate(items):
    missing = [k for k in keys if k not in item]
    if missing:
      raise ValueError(
          f"{what}[{i}] lacks {missing}; each entry needs the keys {list(keys)}"
      )
    out.append(item)
  return out


def _class_average_precision(
    gts: list[Mapping[str, Any]], preds: list[Mapping[str, Any]], thresholds: np.ndarray
) -> np.ndarray:
  """ActivityNet's ``compute_average_precision_detection`` for one class."""
  ap = np.zeros(len(thresholds))
  if not preds:
    return ap
  gt_by_video: dict[Hashable, list[int]] = {}
  for j, g in enumerate(gts):
    gt_by_video.setdefault(g["video"], []).append(j)
  gt_segments = np.array([[float(g["start"]), float(g["end"])] for g in gts])
  scores = np.array([float(p["score"]) for p in preds])
  # ActivityNet sorts with `argsort()[::-1]` (NumPy's default introsort, stable on small inputs):
  # among equal scores the later prediction comes first. A stable sort makes that deterministic.
  order = np.argsort(scores, kind="stable")[::-1]
  locked = -np.ones((len(thresholds), len(gts)), np.int64)
  tp = np.zeros((len(thresholds), len(preds)))
  fp = np.zeros((len(thresholds), len(preds)))
  for rank, i in enumerate(order):
    pred = preds[i]
    candidates = gt_by_video.get(pred["video"])
    if candidates is None:  # no ground truth of this class in that video
      fp[:, rank] = 1
      continue
    tiou = segment_iou((float(pred["start"]), float(pred["end"])), gt_segments[candidates])
    by_tiou = np.argsort(tiou, kind="stable")[::-1]  # same tie rule: later ground truth first
    for k, threshold in enumerate(thresholds):
      for c in by_tiou:
        if tiou[c] < threshold:
          break
        if locked[k, candidates[c]] >= 0:
          continue
        tp[k, rank] = 1
        locked[k, candidates[c]] = rank
        break
      if not tp[k, rank]:
        fp[k, rank] = 1
  tp_cum = np.cumsum(tp, axis=1)
  fp_cum = np.cumsum(fp, axis=1)
  recall = tp_cum / float(len(gts))
  precision = tp_cum / (tp_cum + fp_cum)
  for k in range(len(thresholds)):
    ap[k] = interpolated_average_precision(precision[k], recall[k])
  return ap


def average_precision_per_class(
    ground_truth: Iterable[Mapping[str, Any]],
    predictions: Iterable[Mapping[str, Any]],
    tiou_thresholds: Sequence[float] | np.ndarray,
) -> tuple[list[Hashable], np.ndarray]:
  """AP of every class present in the ground truth, at every tIoU threshold.

  The ActivityNet protocol as AFSD runs it: per class, detections in descending score order are each
  matched to the not-yet-matched ground truth of the same video and class with the highest tIoU, if
  that tIoU is ``>= threshold`` (true positive), else they are false positives; each ground truth is
  matched at most once per threshold; AP is all-point interpolated
  (:func:`interpolated_average_precision`). As in ActivityNet's loader, detections in videos with no
  ground truth at all, and detections of classes absent from the ground truth, are dropped (they do
  not count as false positives); a class without detections has AP 0. Ties in score go to the
  detection listed later (see the note in the code).

  Args:
    ground_truth: dicts with ``video``, ``start``, ``end``, ``label``.
    predictions: the same plus ``score``.
    tiou_thresholds: the tIoU thresholds.

  Returns:
    ``(classes, ap)``: the classes in order of first appearance in ``ground_truth``, and ``ap`` of
    shape ``[len(tiou_thresholds), len(classes)]``.
  """
  gts = _records(ground_truth, _GT_KEYS, "ground_truth")
  preds = _records(predictions, _PRED_KEYS, "predictions")
  thresholds = np.atleast_1d(np.asarray(tiou_thresholds, np.float64))
  if thresholds.ndim != 1 or thresholds.size == 0:
    raise ValueError(f"tiou_thresholds must be a non-empty 1-D sequence, got {tiou_thresholds!r}")
  if not gts:
    raise ValueError("ground_truth is empty; mAP needs at least one ground-truth segment")
  classes: list[Hashable] = []
  gt_by_class: dict[Hashable, list] = {}
  for g in gts:
    if g["label"] not in gt_by_class:
      classes.append(g["label"])
      gt_by_class[g["label"]] = []
    gt_by_class[g["label"]].append(g)
  videos = {g["video"] for g in gts}
  pred_by_class: dict[Hashable, list] = {c: [] for c in classes}
  for p in preds:
    if p["video"] in videos and p["label"] in pred_by_class:
      pred_by_class[p["label"]].append(p)
  ap = np.zeros((len(thresholds), len(classes)))
  for c, label in enumerate(classes):
    ap[:, c] = _class_average_precision(gt_by_class[label], pred_by_class[label], thresholds)
  return classes, ap


def mean_average_precision(
    ground_truth: Iterable[Mapping[str, Any]],
    predictions: Iterable[Mapping[str, Any]],
    tiou_thresholds: Sequence[float] | np.ndarray = THUMOS14_TIOU_THRESHOLDS,
) -> np.ndarray:
  """mAP at each tIoU threshold: the mean over the ground truth's classes of
  :func:`average_precision_per_class` (ActivityNet's ``ANETdetection.evaluate``).

  Returns:
    ``[len(tiou_thresholds)]`` float64; the THUMOS14 "average mAP" is its mean.
  """
  _, ap = average_precision_per_class(ground_truth, predictions, tiou_thresholds)
  return ap.mean(axis=1)


# --------------------------------------------------------------------------------------------------
# AFSD post-processing.


def soft_nms(
    segments: np.ndarray,
    scores: np.ndarray,
    *,
    sigma: float = AFSD_NMS_SIGMA,
    top_k: int = AFSD_TOP_K,
    score_threshold: float = AFSD_SCORE_THRESHOLD,
    keep_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  r"""AFSD's Gaussian soft-NMS (``softnms_v2``) on one class of one video.

  Repeatedly takes the highest-scoring remaining segment ``m`` (first one on ties) and decays every
  other remaining score by

  .. math::
    s_i \leftarrow s_i \exp\!\big(-\mathrm{IoU}(m, i)^2 / \sigma\big),\qquad
    \mathrm{IoU} = \frac{I}{\max(|m|, 10^{-5}) + |i| - I}

  (Bodla et al., ICCV 2017), dropping segments whose score falls below ``score_threshold`` (those
  below it from the start never enter). It stops when ``top_k`` segments are kept or when at most
  one candidate remains, and that last candidate is *not* kept: AFSD's loop condition is
  ``undone > 1``, so a lone candidate (e.g. a class with one detection in a video) is dropped;
  ``keep_last=True`` keeps it.

  Args:
    segments: ``[N, 2]`` ``(start, end)``.
    scores: ``[N]``.
    sigma: Gaussian width ``> 0``; AFSD THUMOS14 0.5, GenKD's RGB config 0.1.
    top_k: at most this many kept.
    score_threshold: AFSD's 0.001.
    keep_last: keep the final lone candidate (not AFSD's behaviour).

  Returns:
    ``(segments [K, 2], scores [K])``, the kept segments with their decayed scores, in input order
    (as ``softnms_v2`` returns them), ``K <= top_k``.
  """
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma!r}")
  if top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k!r}")
  seg = np.asarray(segments)
  dtype = np.result_type(seg.dtype, np.asarray(scores).dtype, np.float32)
  seg = seg.astype(dtype).reshape(-1, 2)
  score = np.asarray(scores, dtype).reshape(-1).copy()
  if len(score) != len(seg):
    raise ValueError(f"segments {seg.shape} and scores {score.shape} differ in length")
  start, end = seg[:, 0], seg[:, 1]
  done = np.zeros(len(score), bool)
  undone = score >= score_threshold
  while undone.sum() > 1 and done.sum() < top_k:
    best = np.flatnonzero(undone)[np.argmax(score[undone])]
    undone[best] = False
    done[best] = True
    rest = np.flatnonzero(undone)
    inter = np.clip(np.minimum(end[rest], end[best]) - np.maximum(start[rest], start[best]), 0,
                    None)
    width = max(end[best] - start[best], dtype.type(1e-5))
    iou = inter / (width + (end[rest] - start[rest]) - inter)
    score[rest] *= np.exp(-(iou**2) / dtype.type(sigma))
    undone &= ~(score < score_threshold)
  if keep_last and undone.sum() == 1 and done.sum() < top_k:
    done |= undone
  return seg[done], score[done]


def window_offsets(num_frames: int, clip_length: int = 256, stride: int = 128) -> list[int]:
  """Start frames of AFSD's sliding windows over a video of ``num_frames`` sampled frames: every
  ``stride`` frames, plus one window flush with the end when the stride does not land there; one
  window (zero-padded) when the video is shorter than ``clip_length``."""
  if clip_length < 1 or stride < 1:
    raise ValueError(f"clip_length and stride must be >= 1, got {clip_length} and {stride}")
  if num_frames < clip_length:
    return [0]
  offsets = list(range(0, num_frames - clip_length + 1, stride))
  if (num_frames - clip_length) % stride:
    offsets.append(num_frames - clip_length)
  return offsets


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def decode_window(
    loc: np.ndarray,
    conf: np.ndarray,
    prop_loc: np.ndarray,
    prop_conf: np.ndarray,
    quality: np.ndarray,
    anchor_centers: np.ndarray,
    *,
    clip_length: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
  r"""AFSD's decoding of one window's outputs into segments (window frames) and class scores.

  .. math::
    \tilde d = d + \tfrac12 (l + r)\,\delta,\quad
    [c L - \tilde l,\ c L + \tilde r] \text{ clipped to } [0, L],\quad
    s = \tfrac12\big(\operatorname{softmax}(z) + \operatorname{softmax}(z_p)\big)\,\sigma(q)

  Args:
    loc, prop_loc: ``[A, 2]`` coarse distances and refinement offsets.
    conf, prop_conf: ``[A, K]`` coarse and refined class logits (class 0 background).
    quality: ``[A]`` or ``[A, 1]`` quality logits.
    anchor_centers: ``[A]`` in ``[0, 1]``.
    clip_length: ``L`` in frames.

  Returns:
    ``(segments [A, 2] in window frames, scores [A, K])``.
  """
  loc = np.asarray(loc, np.float64)
  refined = loc + 0.5 * loc.sum(-1, keepdims=True) * np.asarray(prop_loc, np.float64)
  c = np.asarray(anchor_centers, np.float64).reshape(-1) * clip_length
  segments = np.clip(np.stack([c - refined[:, 0], c + refined[:, 1]], -1), 0, clip_length)
  q = 1.0 / (1.0 + np.exp(-np.asarray(quality, np.float64).reshape(-1)))
  scores = 0.5 * (_softmax(np.asarray(conf, np.float64)) + _softmax(np.asarray(prop_conf,
                                                                                np.float64)))
  return segments, scores * q[:, None]


def merge_window_detections(
    video: Hashable,
    windows: Iterable[tuple[float, np.ndarray, np.ndarray]],
    *,
    fps: float,
    conf_thresh: float = AFSD_CONF_THRESH,
    sigma: float = AFSD_NMS_SIGMA,
    top_k: int = AFSD_TOP_K,
    score_threshold: float = AFSD_SCORE_THRESHOLD,
    keep_last: bool = False,
    class_names: Mapping[int, Hashable] | Sequence[Hashable] | None = None,
) -> list[dict[str, Any]]:
  """One video's detections from its windows, as AFSD's ``test.py``: per class (background 0
  skipped), the window detections scoring above ``conf_thresh`` are shifted by their window's
  offset, converted to time (``/ fps``), pooled over all windows, and :func:`soft_nms` keeps at most
  ``top_k`` *per class* (AFSD's result buffer is ``[classes, top_k]``).

  Args:
    video: the video id written into each detection.
    windows: ``(offset, segments [A, 2], scores [A, K])`` per window, ``segments`` in window frames
      (:func:`decode_window`), ``offset`` its first frame.
    fps: sampled frames per second (THUMOS14: 10).
    conf_thresh: strict lower bound on a window detection's score (AFSD: 0.01).
    sigma, top_k, score_threshold, keep_last: of :func:`soft_nms`.
    class_names: label written for class index ``k`` (default: ``k`` itself).

  Returns:
    Detection dicts ``{"video", "start", "end", "label", "score"}``, by class then as soft-NMS keeps
    them.
  """
  if not fps > 0:
    raise ValueError(f"fps must be > 0, got {fps!r}")
  per_class: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
  num_classes = None
  for offset, segments, scores in windows:
    segments = np.asarray(segments)
    scores = np.asarray(scores)
    if scores.ndim != 2 or segments.shape != (scores.shape[0], 2):
      raise ValueError(
          f"each window needs segments [A, 2] and scores [A, K], got {segments.shape} and "
          f"{scores.shape}"
      )
    num_classes = scores.shape[1]
    for k in range(1, num_classes):
      mask = scores[:, k] > conf_thresh
      if mask.any():
        per_class.setdefault(k, []).append(((segments[mask] + offset) / fps, scores[mask, k]))
  out = []
  for k in sorted(per_class):
    seg = np.concatenate([s for s, _ in per_class[k]])
    sc = np.concatenate([s for _, s in per_class[k]])
    kept, kept_scores = soft_nms(seg, sc, sigma=sigma, top_k=top_k,
                                 score_threshold=score_threshold, keep_last=keep_last)
    label = k if class_names is None else class_names[k]
    for (s, e), score in zip(kept, kept_scores):
      if score > 0:
        out.append({"video": video, "start": float(s), "end": float(e), "label": label,
                    "score": float(score)})
  return out

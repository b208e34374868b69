"""kd_jax.metrics.detection: hand-worked mAP cases, a brute-force reference, and AFSD's
post-processing against plain NumPy loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kd_jax.metrics import detection as det


def gt(video, start, end, label):
  return {"video": video, "start": start, "end": end, "label": label}


def pred(video, start, end, label, score):
  return {"video": video, "start": start, "end": end, "label": label, "score": score}


# --------------------------------------------------------------------------------------------------
# Hand-worked mAP.


def test_perfect_detection_is_one():
  g = [gt("v1", 0, 10, "a"), gt("v1", 20, 30, "b"), gt("v2", 5, 8, "a")]
  p = [dict(x, score=0.9) for x in g]
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.5, 0.95]), [1.0, 1.0])


def test_duplicate_is_a_false_positive():
  g = [gt("v", 0, 10, "a"), gt("v", 20, 30, "a")]
  p = [pred("v", 0, 10, "a", 0.9),  # TP on the first segment
       pred("v", 1, 10, "a", 0.8),  # tIoU 0.9 with the first, already taken: FP
       pred("v", 20, 30, "a", 0.7)]  # TP
  # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3.
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.5]), [0.5 + 1 / 3])


def test_false_alarm_scored_above_the_true_detection():
  g = [gt("v", 0, 10, "a")]
  p = [pred("v", 50, 60, "a", 0.9), pred("v", 0, 10, "a", 0.5)]
  # precision 0, 1/2 at recall 0, 1 -> AP = 1/2.
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.5]), [0.5])
  # Scored below instead: AP 1.
  p[0]["score"] = 0.1
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.5]), [1.0])


def test_class_without_predictions_counts_zero():
  g = [gt("v", 0, 10, "a"), gt("v", 30, 40, "b")]
  p = [pred("v", 0, 10, "a", 0.9)]
  classes, ap = det.average_precision_per_class(g, p, [0.5])
  assert classes == ["a", "b"]
  np.testing.assert_allclose(ap, [[1.0, 0.0]])
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.5]), [0.5])


def test_multiple_thresholds():
  g = [gt("v", 0, 10, "a"), gt("v", 20, 30, "a")]
  p = [pred("v", 0, 8, "a", 0.9),  # tIoU 0.8
       pred("v", 21, 27, "a", 0.6)]  # tIoU 0.6
  # 0.5: both TP -> 1.  0.7: TP then FP -> precision 1 at recall 1/2 -> 1/2.  0.9: none -> 0.
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.5, 0.7, 0.9]), [1.0, 0.5, 0.0])


def test_each_ground_truth_once_per_threshold_and_highest_tiou_first():
  g = [gt("v", 0, 10, "a"), gt("v", 6, 16, "a")]
  # Overlaps both: tIoU 6/10 with the second, 4/12 with the first -> takes the second.
  p = [pred("v", 6, 12, "a", 0.9),
       pred("v", 0, 9, "a", 0.8)]  # tIoU 0.9 with the first (free), 3/16 with the second
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.5]), [1.0])
  # At 0.3 the first detection still prefers the second ground truth (higher tIoU).
  np.testing.assert_allclose(det.mean_average_precision(g, p, [0.3]), [1.0])


def test_videos_and_classes_outside_the_ground_truth_are_ignored():
  g = [gt("v", 0, 10, "a"), gt("w", 0, 10, "b")]
  base = [pred("v", 0, 10, "a", 0.5)]
  ignored = [pred("x", 0, 10, "a", 0.9),  # video with no ground truth at all
             pred("v", 0, 10, "zzz", 0.9)]  # class absent from the ground truth
  counted = [pred("w", 0, 10, "a", 0.9)]  # video with ground truth, but not of class a: FP
  classes, ap = det.average_precision_per_class(g, base + ignored, [0.5])
  np.testing.assert_allclose(ap[0, classes.index("a")], 1.0)
  classes, ap = det.average_precision_per_class(g, base + counted, [0.5])
  np.testing.assert_allclose(ap[0, classes.index("a")], 0.5)


def test_score_ties_go_to_the_later_prediction():
  g = [gt("v", 0, 10, "a")]
  fa, hit = pred("v", 50, 60, "a", 0.7), pred("v", 0, 10, "a", 0.7)
  np.testing.assert_allclose(det.mean_average_precision(g, [fa, hit], [0.5]), [1.0])
  np.testing.assert_allclose(det.mean_average_precision(g, [hit, fa], [0.5]), [0.5])


def test_interpolated_ap_hand_value():
  # VOC: precision envelope [1, 1, 2/3] over recall steps 1/3, 1/3, 1/3 ... with a dip.
  prec = np.array([1.0, 0.5, 2 / 3, 0.5, 0.6])
  rec = np.array([0.2, 0.2, 0.4, 0.4, 0.6])
  # Steps at recall 0.2, 0.4, 0.6 with envelope max(p_j, j >= i): 1, 2/3, 0.6; then 1.0 with 0.
  want = 0.2 * 1 + 0.2 * (2 / 3) + 0.2 * 0.6
  assert det.interpolated_average_precision(prec, rec) == pytest.approx(want)


def brute_force_map(gts, preds, thresholds):
  """Independent reference: rank detections, match each to the best free ground truth, and take
  AP = sum over ranks of (recall gain) x (max precision at this rank or later). No score ties."""
  classes = list(dict.fromkeys(g["label"] for g in gts))
  videos = {g["video"] for g in gts}
  out = np.zeros((len(thresholds), len(classes)))
  for (k, thr), (c, label) in itertools.product(enumerate(thresholds), enumerate(classes)):
    cg = [g for g in gts if g["label"] == label]
    cp = sorted((p for p in preds if p["label"] == label and p["video"] in videos),
                key=lambda p: -p["score"])
    used = [False] * len(cg)
    hits = []
    for p in cp:
      best, best_iou = None, -1.0
      for j, g in enumerate(cg):
        if g["video"] != p["video"] or used[j]:
          continue
        inter = max(0.0, min(p["end"], g["end"]) - max(p["start"], g["start"]))
        iou = inter / ((p["end"] - p["start"]) + (g["end"] - g["start"]) - inter)
        if iou > best_iou:
          best, best_iou = j, iou
      # The best *free* ground truth may fall below the threshold while a taken one was above it:
      # ActivityNet still calls that a false positive, and so does this.
      hit = best is not None and best_iou >= thr
      if hit:
        used[best] = True
      hits.append(hit)
    hits = np.array(hits, float)
    if not len(hits):
      continue
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ap = 0.0
    for i in range(len(hits)):
      if hits[i]:
        ap += (1.0 / len(cg)) * precision[i:].max()
    out[k, c] = ap
  return out.mean(axis=1)


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_match_brute_force(seed):
  rng = np.random.default_rng(seed)
  gts, preds = [], []
  for v in range(4):
    for _ in range(rng.integers(1, 5)):
      s = float(rng.uniform(0, 80))
      gts.append(gt(f"v{v}", s, s + float(rng.uniform(2, 15)), f"c{rng.integers(0, 3)}"))
  for g in gts:  # noisy detections near each ground truth, some in the wrong class
    for _ in range(rng.integers(0, 4)):
      s = g["start"] + float(rng.normal(0, 2))
      e = max(s + 0.5, g["end"] + float(rng.normal(0, 2)))
      label = g["label"] if rng.uniform() < 0.8 else f"c{rng.integers(0, 3)}"
      preds.append(pred(g["video"], s, e, label, float(rng.uniform())))
  for _ in range(10):  # pure false alarms
    s = float(rng.uniform(0, 90))
    preds.append(pred(f"v{rng.integers(0, 4)}", s, s + 5, f"c{rng.integers(0, 3)}",
                      float(rng.uniform())))
  thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
  got = det.mean_average_precision(gts, preds, thresholds)
  np.testing.assert_allclose(got, brute_force_map(gts, preds, thresholds), rtol=1e-12)
  assert 0.0 < got[-1] < got[0] < 1.0


def test_bad_input_raises_one_clear_line():
  with pytest.raises(ValueError, match="lacks"):
    det.mean_average_precision([gt("v", 0, 1, "a")], [{"video": "v", "start": 0}], [0.5])
  with pytest.raises(ValueError, match="empty"):
    det.mean_average_precision([], [], [0.5])


# --------------------------------------------------------------------------------------------------
# Soft-NMS and window merging.


def loop_soft_nms(segments, scores, sigma, top_k, thr=0.001):
  """softnms_v2 written as a plain loop over Python lists."""
  seg = [tuple(map(float, s)) for s in segments]
  sc = [float(s) for s in scores]
  state = ["undone" if s >= thr else "out" for s in sc]
  while state.count("undone") > 1 and state.count("done") < top_k:
    best = max((i for i in range(len(sc)) if state[i] == "undone"), key=lambda i: (sc[i], -i))
    state[best] = "done"
    bs, be = seg[best]
    for i in range(len(sc)):
      if state[i] != "undone":
        continue
      inter = max(0.0, min(seg[i][1], be) - max(seg[i][0], bs))
      iou = inter / (max(be - bs, 1e-5) + (seg[i][1] - seg[i][0]) - inter)
      sc[i] *= math.exp(-iou * iou / sigma)
      if sc[i] < thr:
        state[i] = "out"
  keep = [i for i in range(len(sc)) if state[i] == "done"]
  return np.array([seg[i] for i in keep]).reshape(-1, 2), np.array([sc[i] for i in keep])


def test_soft_nms_hand_value():
  segs = np.array([[0.0, 10.0], [0.0, 10.0], [0.0, 5.0], [50.0, 60.0]])
  scores = np.array([0.9, 0.8, 0.6, 0.3])
  got_seg, got_sc = det.soft_nms(segs, scores, sigma=0.5, top_k=10)
  # 0.9 kept; 0.8 (IoU 1) -> 0.8 e^-2; 0.6 (IoU 1/2) -> 0.6 e^-0.5 = 0.364 is next; it decays the
  # duplicate by e^-0.5 again; 0.3 next; the duplicate is then the lone candidate: dropped.
  np.testing.assert_allclose(got_seg, segs[[0, 2, 3]])
  np.testing.assert_allclose(got_sc, [0.9, 0.6 * math.exp(-0.5), 0.3])
  seg_k, sc_k = det.soft_nms(segs, scores, sigma=0.5, top_k=10, keep_last=True)
  np.testing.assert_allclose(sc_k, [0.9, 0.8 * math.exp(-2.0) * math.exp(-0.5), 0.6 * math.exp(
      -0.5), 0.3])
  # top_k cuts the loop: the two best.
  np.testing.assert_allclose(det.soft_nms(segs, scores, sigma=0.5, top_k=2)[1],
                             [0.9, 0.6 * math.exp(-0.5)])
  # A lone detection is dropped, as AFSD does, unless keep_last.
  assert det.soft_nms(segs[:1], scores[:1])[0].shape == (0, 2)
  assert det.soft_nms(segs[:1], scores[:1], keep_last=True)[0].shape == (1, 2)


@pytest.mark.parametrize("seed,sigma,top_k", [(0, 0.5, 5000), (1, 0.1, 7), (2, 0.5, 30)])
def test_soft_nms_matches_loop(seed, sigma, top_k):
  rng = np.random.default_rng(seed)
  starts = rng.uniform(0, 100, size=60)
  segs = np.stack([starts, starts + rng.uniform(0, 20, size=60)], -1)
  segs[5] = segs[6]  # exact duplicates and a zero-length segment
  segs[7, 1] = segs[7, 0]
  scores = rng.uniform(0, 1, size=60) ** 3  # some start below the 0.001 threshold
  got_seg, got_sc = det.soft_nms(segs, scores, sigma=sigma, top_k=top_k)
  want_seg, want_sc = loop_soft_nms(segs, scores, sigma, top_k)
  np.testing.assert_allclose(got_seg, want_seg)
  np.testing.assert_allclose(got_sc, want_sc, rtol=1e-12)
  assert 0 < len(got_sc) <= top_k


def test_window_offsets():
  assert det.window_offsets(100) == [0]
  assert det.window_offsets(256) == [0]
  assert det.window_offsets(300) == [0, 44]
  assert det.window_offsets(512) == [0, 128, 256]
  assert det.window_offsets(513) == [0, 128, 256, 257]


def test_decode_window_matches_numpy_loop():
  rng = np.random.default_rng(7)
  a, k, length = 14, 4, 64
  centers = (np.arange(a) + 0.5) / a
  loc = np.exp(rng.normal(2, 1, size=(a, 2)))
  conf, prop_conf = rng.normal(size=(a, k)), rng.normal(size=(a, k))
  prop_loc, q = rng.normal(scale=0.3, size=(a, 2)), rng.normal(size=(a, 1))
  seg, scores = det.decode_window(loc, conf, prop_loc, prop_conf, q, centers, clip_length=length)
  for i in range(a):
    w = loc[i, 0] + loc[i, 1]
    l, r = loc[i] + 0.5 * w * prop_loc[i]
    c = centers[i] * length
    np.testing.assert_allclose(seg[i], [min(max(c - l, 0), length), min(max(c + r, 0), length)])
    p1 = np.exp(conf[i]) / np.exp(conf[i]).sum()
    p2 = np.exp(prop_conf[i]) / np.exp(prop_conf[i]).sum()
    np.testing.assert_allclose(scores[i], (p1 + p2) / 2 / (1 + math.exp(-q[i, 0])))


def test_merge_windows_per_video():
  # Two overlapping windows (offsets 0 and 128, 10 fps), 3 classes (0 = background).
  seg0 = np.array([[10.0, 30.0], [10.0, 31.0], [200.0, 220.0]])
  sc0 = np.array([[0.1, 0.8, 0.005], [0.1, 0.6, 0.02], [0.1, 0.009, 0.5]])
  seg1 = np.array([[82.0, 92.0], [0.0, 5.0]])  # the first is frames 210-220 of the video
  sc1 = np.array([[0.1, 0.3, 0.7], [0.9, 0.004, 0.003]])
  out = det.merge_window_detections("vid", [(0, seg0, sc0), (128, seg1, sc1)], fps=10.0,
                                    sigma=0.5, top_k=100, class_names={1: "a", 2: "b"})
  by_label = {}
  for d in out:
    by_label.setdefault(d["label"], []).append(d)
    assert d["video"] == "vid"
  # Class a: 0.8 [1, 3] s, 0.6 [1, 3.1] s (IoU 20/21), 0.3 [21, 22] s; scores > 0.01 only.
  a = by_label["a"]
  iou = 20 / 21
  decayed = 0.6 * math.exp(-iou**2 / 0.5)
  assert [(d["start"], d["end"]) for d in a] == [(1.0, 3.0), (21.0, 22.0)]  # lone last dropped
  np.testing.assert_allclose([d["score"] for d in a], [0.8, 0.3])
  assert decayed < 0.3  # so the decayed duplicate is the lone last candidate
  # Class b: window 0 [20, 22] s 0.5 and window 1 [21, 22] s 0.7 (IoU 0.5), and 0.02 [1, 3.1] s.
  b = by_label["b"]
  np.testing.assert_allclose(sorted(d["score"] for d in b), sorted([0.7, 0.5 * math.exp(-0.5)]))
  assert {(d["start"], d["end"]) for d in b} == {(20.0, 22.0), (21.0, 22.0)}

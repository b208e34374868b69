"""GenKD detection: F_fg / F_bg against NumPy, the loss terms and their switches (the baseline has no
distillation term), the mAP path from model outputs on a hand-made case, and the THUMOS14 smoke
config end to end on prepared fake data."""

import functools
import json
import os
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd_jax.methods import _genkd_det_model as dm
from kd_jax.methods import genkd_detection
from kd_jax.metrics import detection as md
from kd_jax.train import compilation
from subprocess_env import single_device_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# F_fg and F_bg.


def _numpy_fg_bg(f, a, scope):
  f = f.astype(np.float64)
  a = a.astype(np.float64)
  fg, bg = np.zeros_like(f), np.zeros_like(f)
  b = f.shape[0]
  for i in range(b):
    rows = range(b) if scope == "global" else [i]
    sum_a = sum(a[j].sum() for j in rows)
    sum_b = sum((1 - a[j]).sum() for j in rows)
    for t in range(f.shape[1]):
      for c in range(f.shape[-1]):
        fg[i, t, :, :, c] = f[i, t, :, :, c] * a[i, t, c] / sum_a
        bg[i, t, :, :, c] = f[i, t, :, :, c] * (1 - a[i, t, c]) / sum_b
  return fg, bg


@pytest.mark.parametrize("scope", ["global", "per_sample"])
def test_foreground_background_match_a_numpy_loop(scope):
  rng = np.random.default_rng(0)
  f = np.maximum(rng.normal(size=(3, 4, 2, 2, 5)), 0).astype(np.float32)
  a = rng.uniform(0.05, 0.95, size=(3, 4, 5)).astype(np.float32)
  fg, bg = dm.foreground_background(jnp.asarray(f), jnp.asarray(a), scope=scope)
  want_fg, want_bg = _numpy_fg_bg(f, a, scope)
  np.testing.assert_allclose(fg, want_fg, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(bg, want_bg, rtol=1e-5, atol=1e-9)
  fg, bg = dm.foreground_background(jnp.asarray(f), jnp.asarray(a), norm="none")
  np.testing.assert_allclose(fg, f * a[:, :, None, None, :], rtol=1e-6)
  np.testing.assert_allclose(bg, f * (1 - a)[:, :, None, None, :], rtol=1e-6)
  with pytest.raises(ValueError, match="norm"):
    dm.foreground_background(jnp.asarray(f), jnp.asarray(a), norm="sum")


# ------------------------------------------------------------------------------------------------
# BatchNorm statistics of a random backbone.


@pytest.mark.slow  # about 55 s on 2 loaded cores, mostly initialising the tiny networks
def test_calibrated_batch_norm_statistics_match_numpy():
  """The first layer's running statistics become NumPy's mean and unbiased variance of its conv
  output on the clips, and the frozen backbone's Mixed_5c regains unit scale (it is ~1e-6 with
  the initial mean 0 / variance 1)."""
  nets = dm.build_networks("i3d", {"tiny": True, "num_levels": 2}, ATTENTION, num_classes=2)
  params, state = dm.init_variables(nets, jax.random.key(0), CLIP)
  clips = np.random.default_rng(0).uniform(-1, 1, (3,) + CLIP).astype(np.float32)
  bdnet = params["net"]["bdnet"]
  calibrate = compilation.jit(lambda *a: dm.calibrate_batch_norm(nets, *a), preset="fastest")
  stats = calibrate(bdnet, state["batch_stats"], jnp.asarray(clips))

  # Conv3d_1a_7x7: 7x7x7 stride 2, TF-SAME padding (2, 3) on each 32-long axis, no bias.
  kernel = np.asarray(bdnet["backbone"]["Conv3d_1a_7x7"]["conv3d"]["kernel"], np.float64)
  x = np.pad(clips.astype(np.float64), ((0, 0), (2, 3), (2, 3), (2, 3), (0, 0)))
  win = np.lib.stride_tricks.sliding_window_view(x, (7, 7, 7), axis=(1, 2, 3))[:, ::2, ::2, ::2]
  y = np.einsum("bthwcijk,ijkco->bthwo", win, kernel)
  got = stats["backbone"]["Conv3d_1a_7x7"]["bn"]
  np.testing.assert_allclose(got["mean"], y.mean(axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["var"], y.var(axis=(0, 1, 2, 3), ddof=1), rtol=1e-4)

  @functools.partial(compilation.jit, preset="fastest")
  def mixed_5c_std(batch_stats):
    f = nets.net.apply({"params": bdnet, "batch_stats": batch_stats}, jnp.asarray(clips),
                       train=True, method="extract_features")  # freeze_bn: running statistics
    return jnp.std(f["Mixed_5c"])

  assert float(mixed_5c_std(state["batch_stats"])) < 1e-3
  assert 0.1 < float(mixed_5c_std(stats)) < 10


# ------------------------------------------------------------------------------------------------
# The loss terms and their switches.

CLIP = (32, 32, 32, 3)  # Mixed_4f 8 x 2 x 2 x 52, Mixed_5c 4 x 1 x 1 x 64 (tiny)
ATTENTION = {"tiny": True, "num_groups": 4}  # 4 divides 52, 64 and the 32 hidden channels


def _nets(backbone):
  return dm.build_networks(backbone, {"tiny": True, "num_levels": 2}, ATTENTION, num_classes=2)


def _batch(rng, b=2):
  video = rng.uniform(-1, 1, (b,) + CLIP).astype(np.float32)
  segments = np.zeros((b, 2, 3), np.float32)
  segments[:, 0] = [0.2, 0.6, 1]
  segments[1, 1] = [0.7, 0.9, 2]
  start = np.zeros((b, CLIP[0]), np.float32)
  start[:, 6:8] = 1
  end = np.zeros_like(start)
  end[:, 18:21] = 1
  ssl = np.array([[[4, 10], [12, 18], [11, 11]]] * b, np.float32)
  return {"video": video, "segments": segments, "num_segments": np.array([1, 2], np.int32),
          "start": start, "end": end, "ssl_video": video[:, ::-1].copy(), "ssl_segments": ssl,
          "ssl_flag": np.array([True, False])}


@pytest.fixture(scope="module")
def terms():
  """Every metric of pass A and pass B of a tiny student, with the teacher's terms on and off, and
  of pass B without a teacher and with the background and SSL passes switched off (three
  compilations: about 40 s on 2 CPU cores)."""
  student, teacher = _nets("top_i3d"), _nets("i3d")
  rng = np.random.default_rng(0)
  t_params, t_state = dm.init_variables(teacher, jax.random.key(1), CLIP)
  s_params, s_state = dm.init_variables(student, jax.random.key(2), CLIP)
  teacher_vars = dm.teacher_variables(type("S", (), {"params": t_params, "model_state": t_state}))
  batch = _batch(rng)
  out = {}
  runs = (("full", dm.LossConfig(), teacher, ("A", "B")),
          ("no_bg_ssl", dm.LossConfig(use_bg=False, use_ssl=False), None, ("B",)))
  for name, lc, t, phases in runs:
    switch = dm.make_loss_fn(student, lc, steps_per_pass=1, window=CLIP[0], teacher=t)
    for phase in phases:
      step = "AB".index(phase)
      fn = compilation.jit(switch.branches[step], preset="fastest")
      for on in ((0.0, 1.0) if t is not None else (0.0,)):
        frozen = ({"teacher": teacher_vars, "use_gd": np.float32(on), "use_ad": np.float32(on)}
                  if t is not None else None)
        loss, (metrics, _) = fn(s_params, s_state, frozen, batch, jax.random.key(3),
                                jnp.int32(step))
        out[(name, phase, on)] = (float(loss), jax.tree.map(float, metrics))
  return out


@pytest.mark.slow
def test_baseline_has_zero_distillation_terms(terms):
  for phase in ("A", "B"):
    _, off = terms[("full", phase, 0.0)]
    _, on = terms[("full", phase, 1.0)]
    assert off["gd"] == off["ad"] == off["ad_ssl"] == 0.0
    # The network terms do not depend on the switches (same weights, same noise).
    for k in ("cvae", "fg", "bg", "ssl", "rec"):
      assert on[k] == pytest.approx(off[k], rel=1e-6), k
  assert terms[("full", "A", 1.0)][1]["gd"] > 0
  assert terms[("full", "B", 1.0)][1]["ad"] > 0 and terms[("full", "B", 1.0)][1]["ad_ssl"] > 0


@pytest.mark.slow
def test_pass_totals_are_the_spec_sums(terms):
  loss, m = terms[("full", "A", 1.0)]
  assert m["pass"] == 0 and m["fg"] == m["bg"] == m["rec"] == 0
  assert loss == pytest.approx(m["cvae"] + 0.01 * m["gd"], rel=1e-5)
  loss, m = terms[("full", "B", 1.0)]
  assert m["pass"] == 1 and m["cvae"] == m["gd"] == 0
  assert m["fg"] > 0 and m["bg"] > 0 and m["ssl"] > 0 and m["rec"] > 0
  assert m["rec_weight"] == pytest.approx(0.5 / 20)  # epoch 1 of the official ramp
  want = (m["fg"] + 35 * m["bg"] + 0.1 * m["ssl"] + m["rec_weight"] * m["rec"]
          + 10 * (m["ad"] + m["ad_ssl"]))
  assert loss == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_background_and_ssl_switches(terms):
  _, full = terms[("full", "B", 1.0)]
  loss, m = terms[("no_bg_ssl", "B", 0.0)]
  assert m["bg"] == m["ssl"] == m["ad"] == m["ad_ssl"] == 0.0
  assert m["fg"] == pytest.approx(full["fg"], rel=1e-5)
  assert m["rec"] == pytest.approx(full["rec"], rel=1e-5)
  assert loss == pytest.approx(m["fg"] + m["rec_weight"] * m["rec"], rel=1e-5)


def test_background_cost_is_the_focal_terms_on_all_background():
  """With every anchor background, AFSD's cost keeps only the two focal sums (normaliser 1)."""
  rng = np.random.default_rng(1)
  a, k = 6, 3
  out = {"loc": rng.uniform(1, 5, (1, a, 2)), "conf": rng.normal(size=(1, a, k)),
         "prop_loc": rng.normal(size=(1, a, 2)) * 0.1, "prop_conf": rng.normal(size=(1, a, k)),
         "center": rng.normal(size=(1, a)), "priors": (np.arange(a) + 0.5) / a}
  out = {key: jnp.asarray(v, jnp.float32) for key, v in out.items()}
  batch = {"segments": np.array([[[0.1, 0.5, 1.0]]], np.float32),
           "num_segments": np.array([1], np.int32)}
  got = float(dm.background_cost(out, batch, dm.LossConfig(), window=32))

  def focal(logits):
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    pt = p[..., 0] + 1e-6
    return float(np.sum(-0.25 * (1 - pt) ** 2 * np.log(pt)))

  want = focal(np.asarray(out["conf"], np.float64)) + focal(np.asarray(out["prop_conf"],
                                                                       np.float64))
  assert got == pytest.approx(want, rel=1e-4)


# ------------------------------------------------------------------------------------------------
# The mAP path from model outputs.


def test_map_from_hand_made_window_outputs():
  """Two windows of one 4 s video (window 32 frames, 10 fps, anchors at 0.25 and 0.75): a sure
  detection of class 0 at frames [4, 12] of window 0, a weaker false alarm of class 0 at frames
  [22, 26] of the video (window 1, offset 16), background elsewhere. Ground truth: class 0 at
  [0.4, 1.2] s (found) and [2.8, 3.0] s (missed): AP = 1 * 1/2 at every threshold."""
  bg, tp, fa = [10.0, -10.0, -10.0], [-10.0, 10.0, -10.0], [0.0, 2.0, 0.0]
  outputs = {
      "loc": np.array([[[4, 4], [3, 3]], [[2, 2], [3, 3]]], np.float32),
      "conf": np.array([[tp, bg], [fa, bg]], np.float32),
      "prop_loc": np.zeros((2, 2, 2), np.float32),
      "prop_conf": np.array([[tp, bg], [fa, bg]], np.float32),
      "center": np.full((2, 2), 10.0, np.float32),
      "priors": np.array([[0.25, 0.75]] * 2, np.float32),
      "index": np.array([0, 0], np.int32), "offset": np.array([0, 16], np.int32)}
  source = [{"video_id": b"v0", "fps": 10.0, "num_frames": 40}]
  ecfg = ml_collections.ConfigDict(dict(conf_thresh=0.01, nms_sigma=0.1, top_k=5000,
                                        score_threshold=0.001))
  dets = genkd_detection.detections(outputs, source, window=32, ecfg=ecfg, num_classes=2)
  assert {d["label"] for d in dets} == {0}
  best = max(dets, key=lambda d: d["score"])
  assert (best["video"], best["start"], best["end"]) == ("v0", pytest.approx(0.4),
                                                          pytest.approx(1.2))
  assert best["score"] > 0.99
  truth = [{"video": "v0", "start": 0.4, "end": 1.2, "label": 0},
           {"video": "v0", "start": 2.8, "end": 3.0, "label": 0}]
  np.testing.assert_allclose(md.mean_average_precision(truth, dets), [0.5] * 5)
  # The chance-level detector stays far below a perfect one on the same ground truth.
  chance = dm.random_intervals(truth, {"v0": 4.0}, 2, per_class=10, seed=0)
  assert md.mean_average_precision(truth, chance, [0.5])[0] < 0.5


# ------------------------------------------------------------------------------------------------
# End to end.


def _write_video(path, n, rate=10, h=48, w=64):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(len(str(path)))
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for _ in range(n):
      frame = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(stream.encode(None))


def _fake_thumos(root):
  from kd_jax.data.builders import thumos14  # pylint: disable=g-import-not-at-top
  _write_video(os.path.join(root, "validation", "video_validation_0000001.mp4"), 50)
  _write_video(os.path.join(root, "validation", "video_validation_0000002.mp4"), 40)
  _write_video(os.path.join(root, "TH14_test_set_mp4", "video_test_0000001.mp4"), 45)
  rows = {"val": {"CliffDiving": ["video_validation_0000001 0.5 2.2"],
                  "Diving": ["video_validation_0000002 1.0 3.0"]},
          "test": {"Diving": ["video_test_0000001 0.8 2.5"]}}
  folders = {"val": os.path.join(root, "annotation"),
             "test": os.path.join(root, "TH14_Temporal_Annotations_Test", "annotations",
                                  "annotation")}
  for suffix, folder in folders.items():
    os.makedirs(folder, exist_ok=True)
    for name in thumos14.CLASSES + (thumos14.AMBIGUOUS,):
      with open(os.path.join(folder, f"{name}_{suffix}.txt"), "w") as f:
        f.write("".join(f"{line}\n" for line in rows[suffix].get(name, [])))


def _cli(workdir, data_dir, *extra):
  cmd = [sys.executable, "-m", "kd_jax.main", "--config", "configs/genkd_thumos14.py:smoke",
         "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *extra]
  return subprocess.run(cmd, cwd=REPO, env=single_device_env(), capture_output=True, text=True,
                        timeout=1500)


def test_without_data_the_config_ends_with_the_prepare_command(tmp_path):
  proc = _cli(tmp_path / "run", tmp_path / "empty")
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "thumos14/default is not prepared" in last
  assert last.endswith("--manual_dir DIR (see docs/data.md)"), last
  assert "python -m kd_jax.data.prepare thumos14/default" in last


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_thumos14_smoke_config_runs_end_to_end(tmp_path):
  from kd_jax.data import prepare  # pylint: disable=g-import-not-at-top
  manual, data_dir = str(tmp_path / "manual"), str(tmp_path / "data")
  _fake_thumos(manual)
  assert prepare.main(["thumos14", "--manual_dir", manual, "--data_dir", data_dir]) == 0
  workdir = tmp_path / "run"
  proc = _cli(workdir, data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert set(results["stages"]) == set(genkd_detection.STAGES)
  rows = results["genkd_detection"]
  assert set(rows) == set(genkd_detection.STAGES) | {"random_intervals"}
  for row in rows.values():
    assert len(row["map"]) == 5 and all(0.0 <= m <= 1.0 for m in row["map"])
  assert (workdir / "report.md").exists() and (workdir / "detections.png").exists()
  assert "mAP@0.5" in proc.stdout
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  baseline = [m for m in metrics if m.get("stage") == "student_baseline"]
  assert baseline and all(m["ad"] == 0 and m["gd"] == 0 for m in baseline)

"""Tests of the detection data: synthetic untrimmed videos, the thumos14 and synthetic_detection
builders, and AFSD's windows and targets (hand-worked values)."""

import dataclasses
import os

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data import detection_pipeline as dp
from kd_jax.data import prepare
from kd_jax.data import synthetic_detection as sd
from kd_jax.data.builders import _detection
from kd_jax.data.builders import common
from kd_jax.data.builders import synthetic_detection as sdb
from kd_jax.data.builders import thumos14


def _prepare(capsys, *args):
  code = prepare.main(list(args))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def _records(data_dir, name, split):
  src = tfds.data_source(name, split=split, data_dir=str(data_dir))
  return src, [src[i] for i in range(len(src))]


def _saturation(frames):
  """Per frame, the largest HSV saturation of any pixel."""
  x = frames.astype(np.float64)
  hi, lo = x.max(-1), x.min(-1)
  sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-9), 0.0)
  return sat.reshape(len(frames), -1).max(1)


# -- Synthetic detection videos --------------------------------------------------------------------


def test_synthetic_video_is_deterministic():
  spec = sd.DetectionSpec(num_frames=64, height=32, width=32, max_length=20)
  a, ia = sd.generate_video(3, spec=spec, split="train", seed=5)
  b, ib = sd.generate_video(3, spec=spec, split="train", seed=5)
  np.testing.assert_array_equal(a, b)
  assert ia == ib
  c, _ = sd.generate_video(4, spec=spec, split="train", seed=5)
  d, _ = sd.generate_video(3, spec=spec, split="test", seed=5)
  e, _ = sd.generate_video(3, spec=spec, split="train", seed=6)
  for other in (c, d, e):
    assert not np.array_equal(a, other)
  assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8


@pytest.mark.parametrize("index", range(8))
def test_object_visible_exactly_inside_the_intervals(index):
  # The objects are saturated (HSV S = 0.85), the background is grey-ish (S < 0.3): without sensor
  # noise, a frame shows an object iff it lies inside a ground-truth interval.
  spec = sd.DetectionSpec(num_classes=4, num_frames=160, height=48, width=48, noise_std=0.0,
                          max_instances=4, min_length=6, max_length=30, min_gap=3)
  frames, instances = sd.generate_video(index, spec=spec, split="test", seed=1)
  inside = np.zeros(spec.num_frames, bool)
  for inst in instances:
    inside[inst.start:inst.end] = True
  sat = _saturation(frames)
  assert inside.any()
  assert sat[inside].min() > 0.6, sat[inside].min()
  assert sat[~inside].max() < 0.4 if (~inside).any() else True


def test_instances_are_sorted_apart_and_in_range():
  spec = sd.DetectionSpec(num_frames=100, min_instances=2, max_instances=5, min_length=5,
                          max_length=25, min_gap=4)
  counts = set()
  for index in range(40):
    instances = sd.sample_instances(spec, sd.video_rng(0, "train", index))
    counts.add(len(instances))
    for inst in instances:
      assert 0 <= inst.start < inst.end <= spec.num_frames
      assert spec.min_length <= inst.end - inst.start <= spec.max_length
      assert 0 <= inst.label < spec.num_classes
    for a, b in zip(instances, instances[1:]):
      assert b.start - a.end >= spec.min_gap
  assert counts <= {2, 3, 4, 5} and len(counts) > 1


def test_instances_that_do_not_fit_are_dropped():
  # Three instances of 10 frames need 10 + 4 + 10 + 4 + 10 = 38 > 30 frames: at most two fit.
  spec = sd.DetectionSpec(num_frames=30, min_instances=3, max_instances=3, min_length=10,
                          max_length=10, min_gap=4)
  for index in range(10):
    instances = sd.sample_instances(spec, sd.video_rng(0, "train", index))
    assert len(instances) == 2
    assert instances[1].start - instances[0].end >= 4


def test_ground_truth_in_seconds():
  instances = [sd.Instance(5, 25, 1), sd.Instance(40, 41, 0)]
  assert sd.ground_truth(instances, "v", 10.0, ["a", "b"]) == [
      {"video": "v", "start": 0.5, "end": 2.5, "label": "b"},
      {"video": "v", "start": 4.0, "end": 4.1, "label": "a"}]


# -- Resampling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate, n, expected", [
    (30.0, 10, [0, 3, 6, 9]),         # times 0, 1/30, ...; last shown until 1/3 s
    (25.0, 10, [0, 2, 5, 7]),         # 0.1 s falls on frame 2 (0.08 s), 0.3 s on frame 7 (0.28 s)
    (5.0, 3, [0, 0, 1, 1, 2, 2]),     # slower than 10 fps: frames repeat
    (10.0, 4, [0, 1, 2, 3]),
])
def test_resample_by_timestamps(rate, n, expected):
  items = [(i, 7.0 + i / rate) for i in range(n)]  # the stream's first timestamp is not 0
  assert list(_detection.resample(items, 10.0, 1.0 / rate)) == expected


def test_resample_without_duration_uses_the_last_interval():
  assert list(_detection.resample([(0, 0.0), (1, 0.2)], 10.0)) == [0, 0, 1, 1]
  assert not list(_detection.resample([], 10.0))


# -- Builders --------------------------------------------------------------------------------------


def test_synthetic_detection_round_trip(tmp_path, capsys):
  code, out, err = _prepare(capsys, "synthetic_detection/tiny", "--data_dir", str(tmp_path))
  assert code == 0, err
  assert "train 4, test 2; skipped: 0" in out
  cfg = next(c for c in sdb.SyntheticDetection.BUILDER_CONFIGS if c.name == "tiny")
  src, records = _records(tmp_path, "synthetic_detection/tiny", "test")
  assert len(records) == 2
  assert dp.class_names(src) == sd.class_names(3)
  for r in records:
    split, index = r["video_id"].decode().split("_")
    frames, instances = sd.generate_video(int(index), spec=cfg.spec, split=split, seed=cfg.seed)
    assert r["num_frames"] == len(frames) == cfg.spec.num_frames
    assert r["fps"] == pytest.approx(10.0)
    np.testing.assert_allclose(r["segments"], [[i.start / 10, i.end / 10] for i in instances],
                               atol=1e-6)
    assert list(r["labels"]) == [i.label for i in instances]
    assert r["ambiguous"].shape == (0, 2)
    decoded = codec.CompressedVideo(r["video"]).frames(np.arange(len(frames)))
    assert np.abs(decoded.astype(float) - frames).mean() < 6
  truth, ambiguous = dp.ground_truth(src)
  assert len(truth) == sum(len(r["labels"]) for r in records) and not ambiguous


def _write_video(path, rate, n, h=48, w=64):
  """A real MPEG-4 video whose frame i is uniformly grey at level 20 + 5 i."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=rate)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.codec_context.qscale = True
    stream.codec_context.options = {"qmin": "1", "qmax": "1"}
    for i in range(n):
      frame = np.full((h, w, 3), 20 + 5 * i, np.uint8)
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(stream.encode(None))


def _write_annotations(folder, suffix, rows):
  """One file per class (empty for most, as a split without that class), rows {file: lines}."""
  os.makedirs(folder, exist_ok=True)
  for name in thumos14.CLASSES + (thumos14.AMBIGUOUS,):
    with open(os.path.join(folder, f"{name}_{suffix}.txt"), "w") as f:
      f.write("".join(f"{line}\n" for line in rows.get(name, [])))


@pytest.fixture
def thumos_dir(tmp_path):
  root = tmp_path / "manual"
  _write_video(root / "validation" / "video_validation_0000001.mp4", 30, 45)
  _write_video(root / "validation" / "video_validation_0000002.avi", 25, 30)
  _write_video(root / "TH14_test_set_mp4" / "video_test_0000001.mp4", 30, 36)
  (root / "TH14_test_set_mp4" / "video_test_0000003.mp4").write_bytes(b"")
  _write_annotations(str(root / "annotation"), "val", {
      "CliffDiving": ["video_validation_0000001 0.5 1.2"],
      "Diving": ["video_validation_0000001 0.5 1.2", "video_validation_0000002  0.2  0.9 "],
      "BaseballPitch": ["video_validation_0000002 0.0 0.4"],
      "Ambiguous": ["video_validation_0000001 1.3 1.4", "video_validation_0000099 0.1 0.2"],
  })
  _write_annotations(str(root / "TH14_Temporal_Annotations_Test" / "annotations" / "annotation"),
                     "test", {
      "VolleyballSpiking": ["video_test_0000001 0.3 0.8", "video_test_0000002 1.0 2.0",
                            "video_test_0000003 0.1 0.2"],
  })
  return root


def test_thumos14_from_manual_dir(tmp_path, thumos_dir, capsys):
  code, out, err = _prepare(capsys, "thumos14", "--manual_dir", str(thumos_dir), "--data_dir",
                            str(tmp_path / "data"))
  assert code == 0, err
  # The test video that the annotations name but the folder lacks, and the empty one, are
  # skipped and listed.
  assert "validation 2, test 1; skipped: 2" in out
  assert "video_test_0000002" in out and "missing" in out
  path = os.path.join(str(tmp_path / "data"), "thumos14", "default", "1.0.0")
  assert sorted((l.split, l.video_id, l.reason) for l in common.read_listed(path)) == [
      ("test", "video_test_0000002", "missing"),
      ("test", "video_test_0000003", "empty file (0 bytes)")]

  src, records = _records(tmp_path / "data", "thumos14", "validation")
  assert dp.class_names(src) == list(thumos14.CLASSES)
  by_id = {r["video_id"].decode(): r for r in records}
  v1, v2 = by_id["video_validation_0000001"], by_id["video_validation_0000002"]
  # 45 frames at 30 fps -> 15 at 10 fps, source frames 0, 3, 6, ...; 30 at 25 fps -> 12 frames,
  # source frames 0, 2, 5, 7, 10, ... (floor(2.5 k)).
  assert (v1["num_frames"], v2["num_frames"]) == (15, 12)
  for r, picks in ((v1, [3 * k for k in range(15)]), (v2, [int(2.5 * k) for k in range(12)])):
    frames = codec.CompressedVideo(r["video"]).frames(np.arange(r["num_frames"]))
    assert frames.shape[1:] == (112, 112, 3)
    np.testing.assert_allclose(frames.reshape(len(frames), -1).mean(1),
                               [20 + 5 * i for i in picks], atol=2.5)
    assert r["fps"] == pytest.approx(10.0)
  # CliffDiving (4) and Diving (7) both keep their copy of the same segment, in class order.
  np.testing.assert_allclose(v1["segments"], [[0.5, 1.2], [0.5, 1.2]], atol=1e-6)
  assert list(v1["labels"]) == [4, 7]
  np.testing.assert_allclose(v1["ambiguous"], [[1.3, 1.4]], atol=1e-6)
  np.testing.assert_allclose(v2["segments"], [[0.0, 0.4], [0.2, 0.9]], atol=1e-6)
  assert list(v2["labels"]) == [0, 7] and v2["ambiguous"].shape == (0, 2)

  _, test = _records(tmp_path / "data", "thumos14", "test")
  assert [r["video_id"] for r in test] == [b"video_test_0000001"]
  assert test[0]["num_frames"] == 12 and list(test[0]["labels"]) == [19]


def test_thumos14_manual_dir_errors(tmp_path, thumos_dir, capsys):
  def error_of(manual):
    code, _, err = _prepare(capsys, "thumos14", "--manual_dir", str(manual), "--data_dir",
                            str(tmp_path / "data"))
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 1 and len(lines) == 1, err
    return lines[0]

  empty = tmp_path / "empty"
  empty.mkdir()
  line = error_of(empty)
  assert "does not exist or is empty" in line and thumos14.DOWNLOAD_PAGE in line
  (empty / "readme.txt").write_text("videos only")
  line = error_of(empty)
  assert "no validation annotation files" in line and thumos14.DOWNLOAD_PAGE in line
  os.remove(thumos_dir / "annotation" / "Billiards_val.txt")
  line = error_of(thumos_dir)
  assert "1 of the 20 validation annotation files" in line and "Billiards_val.txt" in line
  _write_annotations(str(thumos_dir / "annotation"), "val", {"Billiards": ["video_x 1 2"]})
  with open(thumos_dir / "annotation" / "Shotput_val.txt", "w") as f:
    f.write("video_validation_0000001 one two\n")
  line = error_of(thumos_dir)
  assert "Shotput_val.txt line 1" in line
  # Nothing is left behind by the failed builds.
  assert not os.path.exists(tmp_path / "data" / "thumos14")


def test_thumos14_all_test_videos_missing(tmp_path, thumos_dir, capsys):
  os.remove(thumos_dir / "TH14_test_set_mp4" / "video_test_0000001.mp4")
  os.remove(thumos_dir / "TH14_test_set_mp4" / "video_test_0000003.mp4")
  code, _, err = _prepare(capsys, "thumos14", "--manual_dir", str(thumos_dir), "--data_dir",
                          str(tmp_path / "data"))
  assert code == 1
  assert "none of the 3 videos of split 'test'" in err and thumos14.DOWNLOAD_PAGE in err


# -- Windows and targets ---------------------------------------------------------------------------


def _fake_source(num_frames, segments_seconds, labels, fps=10.0):
  return [{"num_frames": num_frames, "fps": fps, "video_id": b"v",
           "segments": np.asarray(segments_seconds, np.float32).reshape(-1, 2),
           "labels": labels, "ambiguous": np.zeros((0, 2), np.float32)}]


def test_window_offsets_of_a_300_frame_video():
  # Training: 0, 30 by the stride, and 44 = 300 - 256 flush with the end; test: 0 and 44.
  source = _fake_source(300, [[2.0, 5.0]], [0])
  spec = dp.WindowSpec()
  assert [w.offset for w in dp.windows(source, spec, train=False)] == [0, 44]
  source = _fake_source(300, [[0.0, 29.9]], [0])  # whole in no window: nothing to train on
  assert not dp.windows(source, spec, train=True)
  source = _fake_source(300, [[4.5, 4.8], [28.0, 28.5]], [0, 0])  # whole in every window
  assert [w.offset for w in dp.windows(source, spec, train=True)] == [0, 30, 44]
  # A video no longer than a window: one window at 0 (zero-padded later).
  for n in (100, 256):
    source = _fake_source(n, [[1.0, 2.0]], [0])
    assert [w.offset for w in dp.windows(source, spec, train=True)] == [0]
    assert [w.offset for w in dp.windows(source, spec, train=False)] == [0]
  # 286 = 256 + 30: the stride lands on the end, no extra window.
  assert [w.offset for w in dp.windows(_fake_source(286, [[1.0, 2.0]], [0]), spec,
                                       train=False)] == [0, 30]


def test_window_targets_by_hand():
  # Frames [20, 50] class 0, [240, 290] class 3, [250, 260] class 1; windows of 256 at 0, 30, 44.
  source = _fake_source(300, [[2.0, 5.0], [24.0, 29.0], [25.0, 26.0]], [0, 3, 1])
  found = dp.windows(source, dp.WindowSpec(), train=True)
  expected = {
      # left 1, right 256: ioa 1, 16/50 = 0.32 (dropped), 6/10 (clipped at 256).
      0: [[20, 50, 1], [250, 256, 2]],
      # left 31, right 286: 19/30 (start clipped to 1), 46/50, whole.
      30: [[1, 20, 1], [210, 256, 4], [220, 230, 2]],
      # left 45, right 300: 5/30 (dropped), whole, whole.
      44: [[196, 246, 4], [206, 216, 2]],
  }
  assert {w.offset: w.targets.tolist() for w in found} == expected
  # The ioa uses AFSD's left bound offset + 1: a segment starting at the offset is not whole.
  targets, complete = dp.window_targets(np.array([[30.0, 40.0]]), np.array([2]), 30, 256)
  assert not complete and targets.tolist() == [[1.0, 10.0, 3.0]]
  targets, complete = dp.window_targets(np.array([[31.0, 40.0]]), np.array([2]), 30, 256)
  assert complete and targets.tolist() == [[1.0, 10.0, 3.0]]


def test_boundary_targets_by_hand():
  start, end = dp.boundary_targets(np.array([[20.0, 50.0, 1.0], [250.0, 256.0, 2.0]]), 256)
  # [20, 50]: d = 3; start round(18.5) = 18 .. round(21.5) = 22; end round(48.5) = 48 .. 52.
  # [250, 256]: d = 2; start 249 .. 251; end 255 .. min(257, 255).
  assert np.flatnonzero(start).tolist() == [18, 19, 20, 21, 22, 249, 250, 251]
  assert np.flatnonzero(end).tolist() == [48, 49, 50, 51, 52, 255]
  start, end = dp.boundary_targets(np.zeros((0, 3)), 8)
  assert not start.any() and not end.any()


def test_segments_in_frames_drops_empty_and_rounds():
  record = _fake_source(300, [[0.7, 2.5], [3.0, 3.0]], [1, 2])[0]
  seg, labels = dp.segments_in_frames(record)
  assert seg.tolist() == [[7.0, 25.0]] and labels.tolist() == [1]


class _Draws:
  """A generator stand-in that returns scripted ``integers(n)`` draws (checking ``< n``)."""

  def __init__(self, *values):
    self.values = list(values)

  def integers(self, n):
    value = self.values.pop(0)
    assert 0 <= value < n, (value, n)
    return value


def test_ssl_clip_background_after_the_target():
  # Target [2, 10], th 2: cut t = 3 + 2 = 5 (second of cuts 2..5, plus ceil(2)); the only
  # background gap is (10, 19); b = 10 + 3 = 13 > 10, so [13, 15) goes to t and [5, 13) moves right.
  clip = np.arange(20)
  out, segments, ok = dp.ssl_clip(clip, np.array([[2.0, 10.0, 1.0]]), 2, _Draws(0, 1, 0, 3))
  assert ok
  assert out.tolist() == [0, 1, 2, 3, 4, 13, 14, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 17, 18, 19]
  assert segments.tolist() == [[2, 5], [7, 12], [6, 6]]
  assert clip.tolist() == list(range(20))  # the input is left alone


def test_ssl_clip_background_before_the_target():
  # Target [12, 19], th 2: t = 2 + 12 = 14; gap (0, 12) (the (12, 19) gap is the target);
  # b = 4: [6, 14) moves left by 2 and [4, 6) is inserted just before t.
  out, segments, ok = dp.ssl_clip(np.arange(20), np.array([[12.0, 19.0, 1.0]]), 2,
                                  _Draws(0, 0, 0, 4))
  assert ok
  assert out.tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 4, 5, 14, 15, 16, 17, 18, 19]
  assert segments.tolist() == [[10, 12], [14, 19], [13, 13]]


def test_ssl_clip_without_a_long_target_or_a_gap():
  clip = np.arange(20)
  for targets in ([[2.0, 5.0, 1.0]],                      # 3 frames: not longer than 2 th
                  [[0.0, 10.0, 1.0], [10.0, 19.0, 2.0]]):  # no background gap at all
    out, segments, ok = dp.ssl_clip(clip, np.array(targets), 2, _Draws(0, 0, 0, 0))
    assert not ok and out is clip and not segments.any() and segments.shape == (3, 2)


def test_shortest_target():
  seg = np.array([[20.0, 50.0], [240.0, 290.0], [250.0, 260.0]])
  found = dp.windows(_fake_source(300, seg / 10, [0, 3, 1]), dp.WindowSpec(), train=True)
  # Kept targets are 30 and 6 long at 0, 19, 46, 10 at 30, 50 and 10 at 44 frames.
  assert {w.th for w in found} == {6}
  # A video no longer than a window also counts its unclipped segments; ceil.
  assert dp.shortest_target(np.array([[10.0, 13.5]]), [np.array([[10.0, 13.5, 1.0]])], 100,
                            256) == 4
  assert dp.shortest_target(np.zeros((0, 2)), [np.zeros((0, 3))], 300, 256) == 256


# -- Pipelines -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_detection(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("det")
  assert prepare.main(["synthetic_detection/tiny", "--data_dir", str(data_dir)]) == 0
  train = tfds.data_source("synthetic_detection/tiny", split="train", data_dir=str(data_dir))
  test = tfds.data_source("synthetic_detection/tiny", split="test", data_dir=str(data_dir))
  return train, test


def _decoded(source, index):
  record = source[index]
  return codec.CompressedVideo(record["video"]).frames(np.arange(record["num_frames"]))


def test_train_batches(tiny_detection):
  train, _ = tiny_detection
  spec = dp.WindowSpec(window=32, train_stride=8, crop_size=24, flip=True)
  found = dp.windows(train, spec, train=True)
  batches = list(dp.make_train(train, spec, batch_size=2, seed=3, num_epochs=1))
  assert len(batches) == len(found) // 2
  again = list(dp.make_train(train, spec, batch_size=2, seed=3, num_epochs=1))
  slots = max(len(w.targets) for w in found)
  for b, c in zip(batches, again):
    for key in b:
      np.testing.assert_array_equal(b[key], c[key])
    assert b["video"].shape == (2, 32, 24, 24, 3) and b["video"].dtype == np.float32
    assert b["segments"].shape == (2, slots, 3) and b["start"].shape == (2, 32)
    assert b["video"].min() >= -1.0 and b["video"].max() <= 1.0
  windows = {(w.index, w.offset): w for w in found}
  flips = 0
  for b in batches:
    for j in range(2):
      w = windows[(int(b["index"][j]), int(b["offset"][j]))]
      k = len(w.targets)
      assert b["num_segments"][j] == k
      np.testing.assert_allclose(b["segments"][j, :k, :2], w.targets[:, :2] / 32)
      np.testing.assert_array_equal(b["segments"][j, :k, 2], w.targets[:, 2])
      assert not b["segments"][j, k:].any()
      # The clip is one 24x24 crop of the stored 32x32 frames, maybe mirrored.
      frames = _decoded(train, w.index)[w.offset:w.offset + 32]
      frames = frames.astype(np.float32) * np.float32(2 / 255) - 1
      matches = [flip for t in range(9) for l in range(9) for flip in (False, True)
                 if np.allclose(b["video"][j], frames[:, t:t + 24, l:l + 24][:, :, ::-1 if flip
                                                                              else 1], atol=1e-6)]
      assert matches, "the clip is no crop of the stored frames"
      flips += matches[0]
  assert 0 < flips < 2 * len(batches)
  # synthetic_detection's classes move east or west: no flips unless asked for.
  auto = dp.make_train(train, dataclasses.replace(spec, flip=None), batch_size=1, seed=3)
  assert dp.resolve_flip(dataclasses.replace(spec, flip=None), train) is False
  batch = next(iter(auto))
  w = (int(batch["index"][0]), int(batch["offset"][0]))
  frames = _decoded(train, w[0])[w[1]:w[1] + 32].astype(np.float32) * np.float32(2 / 255) - 1
  assert any(np.allclose(batch["video"][0], frames[:, t:t + 24, l:l + 24], atol=1e-6)
             for t in range(9) for l in range(9))


def test_eval_batches_centre_crop_and_padding(tiny_detection):
  _, test = tiny_detection
  spec = dp.WindowSpec(window=128, test_stride=64, crop_size=24)  # longer than the 96 frames
  batches = list(dp.make_eval(test, spec, batch_size=3))
  assert len(batches) == 1
  b = batches[0]
  assert b["mask"].tolist() == [True, True, False]
  assert b["offset"].tolist() == [0, 0, 0]
  for j in range(2):
    frames = _decoded(test, int(b["index"][j]))
    expected = frames[:, 4:28, 4:28].astype(np.float32) * np.float32(2 / 255) - 1
    np.testing.assert_allclose(b["video"][j, :96], expected, atol=1e-6)
    assert not b["video"][j, 96:].any()  # AFSD's test pads with 0 after scaling
  # Training pads before scaling: -1.
  train_spec = dp.WindowSpec(window=128, train_stride=64, crop_size=24)
  batch = next(iter(dp.make_train(test, train_spec, batch_size=1, seed=0)))
  assert (batch["video"][0, 96:] == -1).all()


def test_max_segments(tiny_detection):
  train, _ = tiny_detection
  spec = dp.WindowSpec(window=96, train_stride=30, crop_size=24, max_segments=8)
  batch = next(iter(dp.make_train(train, spec, batch_size=1, seed=0)))
  assert batch["segments"].shape == (1, 8, 3)
  most = max(len(w.targets) for w in dp.windows(train, spec, train=True))
  assert most >= 2
  with pytest.raises(ValueError, match="raise max_segments"):
    dp.make_train(train, dataclasses.replace(spec, max_segments=most - 1), batch_size=1, seed=0)


def test_ssl_batches():
  # One 64-frame video (each frame a different grey) with targets of 20 and 4 frames: th = 4, and
  # the 20-frame target is longer than 2 th, with background gaps around both.
  frames = np.repeat(np.arange(64, dtype=np.uint8)[:, None, None, None] * 4, 32, 1)
  frames = np.ascontiguousarray(np.repeat(np.repeat(frames, 32, 2), 3, 3))
  source = _fake_source(64, [[1.0, 3.0], [4.5, 4.9]], [0, 1])
  source[0]["video"] = codec.encode_frames(frames)
  spec = dp.WindowSpec(window=64, train_stride=8, crop_size=24, ssl=True, flip=False)
  assert [w.th for w in dp.windows(source, spec, train=True)] == [4]
  batches = list(dp.make_train(source, spec, batch_size=1, seed=1, num_epochs=12))
  assert len(batches) == 12
  for b in batches:
    assert b["ssl_video"].shape == b["video"].shape and b["ssl_segments"].shape == (1, 3, 2)
    assert b["ssl_flag"][0]
    # Frames only move: 4 frames of background enter the 20-frame target, which is cut in two.
    level = np.round((b["video"][0, :, 0, 0, 0] + 1) / 2 * 255 / 4).astype(int)
    ssl_level = np.round((b["ssl_video"][0, :, 0, 0, 0] + 1) / 2 * 255 / 4).astype(int)
    assert level.tolist() == list(range(64))
    first, second, inserted = b["ssl_segments"][0]
    assert inserted[1] - inserted[0] == 2  # [t + 1, t + th - 1]
    expected = list(range(64))
    if first[0] == 10:  # background after the target [10, 30]: inserted at t, [t, b) moves right
      t = int(first[1])
      start = ssl_level[t]
      assert start > 30 and second.tolist() == [t + 4, 34]
      expected[t:t + 4] = range(start, start + 4)
      expected[t + 4:start + 4] = range(t, start)
    else:  # before: [b + 4, t) moves left, the background goes just before t
      t = int(second[0])
      start = ssl_level[t - 4]
      # (b == 30, right after the target, takes this branch in AFSD too: nothing moves but the
      # 4 frames at t - 4.)
      assert first.tolist() == [6, t - 4] and second[1] == 30 and (start + 4 <= 10 or start == 30)
      expected[start:t - 4] = range(start + 4, t)
      expected[t - 4:t] = range(start, start + 4)
    assert ssl_level.tolist() == expected

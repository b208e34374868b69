"""Builders of the spectral datasets (SSv2, Jester, Kinetics-400) on tiny fake manual dirs."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest

from kd_jax.data import builders
from kd_jax.data import codec
from kd_jax.data import pipeline
from kd_jax.data import prepare
from kd_jax.data.builders import common

N_FRAMES = 10
REPO = pathlib.Path(__file__).resolve().parents[1]


def _frames(seed, n=N_FRAMES, h=48, w=64):
  colour = np.array([250, 40, (40 + 23 * seed) % 200], np.uint8)  # far from the grey background
  out = np.full((n, h, w, 3), 60, np.uint8)
  for i in range(n):
    out[i, 10:30, 2 * i:2 * i + 12] = colour
  return out


def _write_video(path, seed, codec_name="mpeg4", n=N_FRAMES):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  frames = _frames(seed, n)
  with av.open(str(path), "w") as out:
    stream = out.add_stream(codec_name, rate=12)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for f in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    out.mux(stream.encode(None))


def _write_jpegs(folder, seed, n=N_FRAMES):
  os.makedirs(folder, exist_ok=True)
  for i, f in enumerate(_frames(seed, n), 1):
    with av.open(os.path.join(folder, f"{i:05d}.jpg"), "w", format="image2") as out:
      stream = out.add_stream("mjpeg", rate=1)
      stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
      out.mux(stream.encode(None))


def _corrupt(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"\x1aE\xdf\xa3 this is not a video" * 20)


def _prepare(capsys, *args):
  code = prepare.main(list(args))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def _error_line(err):
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, err
  return lines[0]


def _records(data_dir, name, split):
  src = builders.data_source(name, split, data_dir=str(data_dir))
  return [src[i] for i in range(len(src))]


def _check_stream(record, n=N_FRAMES):
  video = codec.CompressedVideo(record["video"])
  assert (video.width, video.height) == (340, 256)
  assert record["num_frames"] == video.num_frames == n
  # The stream is the source: frame 5's block sits where it was drawn (x = 10..22).
  frame = video.frames([5])[0]
  col = frame[60:150].astype(float).mean(axis=(0, 2))  # rows 10..30 of the source, x 256/48
  centre = np.mean(np.nonzero(np.abs(col - 60) > 15)[0])
  assert centre == pytest.approx(16 * 340 / 64, abs=8)


# -- Something-Something V2 ----------------------------------------------------------------------

SSV2_LABELS = {"Pushing something from left to right": "0", "Putting something on a surface": "1",
               "Holding something next to something": "2", "Moving something up": "3"}
SSV2_TEMPLATES = ["Pushing [something] from left to right", "Putting [something] on a surface",
                  "Holding [something] next to [something]"]


@pytest.fixture
def ssv2_dir(tmp_path):
  root = tmp_path / "ssv2_manual"
  videos = root / "20bn-something-something-v2"
  entries = {"train": [], "validation": []}
  for vid in range(1, 8):
    split = "validation" if vid % 3 == 0 else "train"
    label = vid % 3
    entries[split].append({"id": str(vid), "label": "a thing", "template": SSV2_TEMPLATES[label],
                           "placeholders": ["thing"]})
    _write_video(videos / f"{vid}.webm", seed=vid, codec_name="libvpx-vp9")
  _corrupt(videos / "4.webm")
  labels_dir = root / "labels"
  os.makedirs(labels_dir)
  (labels_dir / "something-something-v2-labels.json").write_text(json.dumps(SSV2_LABELS))
  for split, e in entries.items():
    (labels_dir / f"something-something-v2-{split}.json").write_text(json.dumps(e))
  (labels_dir / "something-something-v2-test.json").write_text(json.dumps([{"id": "99"}]))
  return root


def test_ssv2_round_trip(tmp_path, ssv2_dir, capsys):
  data_dir = tmp_path / "data"
  code, out, err = _prepare(capsys, "something_something_v2", "--manual_dir", str(ssv2_dir),
                            "--data_dir", str(data_dir))
  assert code == 0, err
  assert "train 4, validation 2; skipped: 1" in out and "\t4\t" in out
  skipped = common.read_skipped(str(data_dir / "something_something_v2/default/1.0.0"))
  assert [(s, v) for s, v, _ in skipped] == [("train", "4")]
  names = builders.info("something_something_v2", data_dir=str(data_dir)).features["label"].names
  assert names == list(SSV2_LABELS)
  train = _records(data_dir, "something_something_v2", "train")
  val = _records(data_dir, "something_something_v2", "validation")
  assert sorted(r["video_id"].decode() for r in train) == ["1", "2", "5", "7"]
  assert sorted(r["video_id"].decode() for r in val) == ["3", "6"]
  for r in train + val:
    assert r["label"] == int(r["video_id"]) % 3
    _check_stream(r)
  # Direction-sensitive: the pipelines do not flip it by default.
  src = builders.data_source("something_something_v2", "train", data_dir=str(data_dir))
  assert not pipeline.resolve_flip(pipeline.make_spec("rgb_segments"), src)


def test_ssv2_missing_or_bad_manual_dir(tmp_path, ssv2_dir, capsys):
  data_dir = str(tmp_path / "data")
  code, _, err = _prepare(capsys, "something_something_v2", "--manual_dir",
                          str(tmp_path / "nowhere"), "--data_dir", data_dir)
  line = _error_line(err)
  assert code == 1 and "nowhere" in line and "-labels.json" in line and "webm" in line
  os.remove(ssv2_dir / "20bn-something-something-v2" / "5.webm")
  code, _, err = _prepare(capsys, "something_something_v2", "--manual_dir", str(ssv2_dir),
                          "--data_dir", data_dir, "--strict")
  assert code == 1 and "1 of 7 videos" in _error_line(err)
  (ssv2_dir / "labels" / "something-something-v2-labels.json").write_text(
      json.dumps({"Pushing something from left to right": "0"}))
  code, _, err = _prepare(capsys, "something_something_v2", "--manual_dir", str(ssv2_dir),
                          "--data_dir", data_dir)
  assert code == 1 and "does not list" in _error_line(err)


# -- Jester --------------------------------------------------------------------------------------

JESTER_CLASSES = ["Swiping Left", "Swiping Right", "Drumming Fingers"]


@pytest.fixture
def jester_dir(tmp_path):
  root = tmp_path / "jester_manual"
  frames = root / "20bn-jester-v1"
  os.makedirs(frames)
  (root / "jester-v1-labels.csv").write_text("".join(c + "\n" for c in JESTER_CLASSES))
  rows = {"train": [], "validation": []}
  for vid in range(100, 106):
    split = "validation" if vid % 2 else "train"
    rows[split].append(f"{vid};{JESTER_CLASSES[vid % 3]}\n")
    _write_jpegs(frames / str(vid), seed=vid)
  with open(frames / "102" / "00004.jpg", "wb") as f:  # one corrupt frame
    f.write(b"not a jpeg at all")
  for split, r in rows.items():
    (root / f"jester-v1-{split}.csv").write_text("".join(r))
  return root


def test_jester_round_trip(tmp_path, jester_dir, capsys):
  data_dir = tmp_path / "data"
  code, out, err = _prepare(capsys, "jester", "--manual_dir", str(jester_dir),
                            "--data_dir", str(data_dir))
  assert code == 0, err
  assert "train 2, validation 3; skipped: 1" in out and "102" in out
  names = builders.info("jester", data_dir=str(data_dir)).features["label"].names
  assert names == JESTER_CLASSES
  train = _records(data_dir, "jester", "train")
  val = _records(data_dir, "jester", "validation")
  assert sorted(r["video_id"].decode() for r in train) == ["100", "104"]
  assert sorted(r["video_id"].decode() for r in val) == ["101", "103", "105"]
  for r in train + val:
    assert r["label"] == int(r["video_id"]) % 3
    _check_stream(r)


def test_jester_missing_lists(tmp_path, jester_dir, capsys):
  os.remove(jester_dir / "jester-v1-validation.csv")
  code, _, err = _prepare(capsys, "jester", "--manual_dir", str(jester_dir),
                          "--data_dir", str(tmp_path / "data"))
  assert code == 1 and "jester-v1-validation.csv" in _error_line(err)


# -- Kinetics-400 --------------------------------------------------------------------------------

K400 = [  # label, youtube_id, start, end, split; the class folders use underscores (downloaders)
    ("abseiling", "aaa", 0, 10, "train"), ("zumba", "bbb", 14, 24, "train"),
    ("air drumming", "ccc", 3, 13, "train"), ("zumba", "ddd", 100, 110, "train"),
    ("abseiling", "eee", 5, 15, "validate"), ("air drumming", "fff", 1, 11, "validate"),
    ("zumba", "ggg", 0, 10, "validate"),
]


@pytest.fixture
def k400_dir(tmp_path):
  root = tmp_path / "k400_manual"
  os.makedirs(root / "annotations")
  for split in ("train", "validate"):
    with open(root / "annotations" / f"{split}.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
      w.writerows([r for r in K400 if r[4] == split])
  with open(root / "annotations" / "test.csv", "w", newline="") as f:
    f.write("youtube_id,time_start,time_end,split\nzzz,0,10,test\n")
  for i, (label, yid, start, end, split) in enumerate(K400):
    name = f"{yid}_{start:06d}_{end:06d}.mp4"
    folder = root / split / label.replace(" ", "_") if split == "train" else root / "val_flat"
    if yid == "ddd":
      continue  # never downloaded (deleted from YouTube)
    _write_video(folder / name, seed=i, codec_name="libx264")
  _corrupt(root / "val_flat" / "ggg_000000_000010.mp4")
  return root


def test_kinetics400_round_trip(tmp_path, k400_dir, capsys):
  data_dir = tmp_path / "data"
  code, out, err = _prepare(capsys, "kinetics400", "--manual_dir", str(k400_dir),
                            "--data_dir", str(data_dir))
  assert code == 0, err
  assert "train 3, validation 2; skipped: 2" in out
  skipped = common.read_skipped(str(data_dir / "kinetics400/default/1.0.0"))
  assert sorted((s, v) for s, v, _ in skipped) == [("train", "ddd_000100_000110"),
                                                   ("validation", "ggg_000000_000010")]
  assert any("missing" in r for _, _, r in skipped)
  names = builders.info("kinetics400", data_dir=str(data_dir)).features["label"].names
  assert names == ["abseiling", "air drumming", "zumba"]  # sorted train labels
  label_of = {f"{y}_{s:06d}_{e:06d}": names.index(l) for l, y, s, e, _ in K400}
  train = _records(data_dir, "kinetics400", "train")
  val = _records(data_dir, "kinetics400", "validation")
  assert sorted(r["video_id"].decode() for r in train) == [
      "aaa_000000_000010", "bbb_000014_000024", "ccc_000003_000013"]
  assert sorted(r["video_id"].decode() for r in val) == ["eee_000005_000015", "fff_000001_000011"]
  for r in train + val:
    assert r["label"] == label_of[r["video_id"].decode()]
    _check_stream(r)
  assert "test" not in builders.info("kinetics400", data_dir=str(data_dir)).splits


def test_kinetics400_missing_manual_dir_or_columns(tmp_path, k400_dir, capsys):
  data_dir = str(tmp_path / "data")
  empty = tmp_path / "empty"
  os.makedirs(empty)
  code, _, err = _prepare(capsys, "kinetics400", "--manual_dir", str(empty), "--data_dir", data_dir)
  line = _error_line(err)
  assert code == 1 and "train.csv" in line and "kinetics400.tar.gz" in line
  with open(k400_dir / "annotations" / "validate.csv", "w") as f:
    f.write("youtube_id,time_start,time_end\neee,5,15\n")
  code, _, err = _prepare(capsys, "kinetics400", "--manual_dir", str(k400_dir),
                          "--data_dir", data_dir)
  assert code == 1 and "lacks the column" in _error_line(err)


# -- a full config's smoke variant on a prepared dataset -----------------------------------------


# Jester and Kinetics fakes both have 3 classes: their runs share compiled programs (XLA cache).
@pytest.mark.slow  # a command-line spectral run of three stages on each prepared fake
@pytest.mark.parametrize("name, config, manual, counts", [
    ("something_something_v2", "spectral_ssv2", "ssv2_dir", "4 train / 2 eval videos, 4 classes"),
    ("jester", "spectral_jester", "jester_dir", "2 train / 3 eval videos, 3 classes"),
    ("kinetics400", "spectral_kinetics", "k400_dir", "3 train / 2 eval videos, 3 classes"),
])
def test_spectral_paper_config_runs_on_prepared_data(tmp_path, capsys, request, name, config,
                                                     manual, counts):
  data_dir = tmp_path / "data"
  code, _, err = _prepare(capsys, name, "--manual_dir", str(request.getfixturevalue(manual)),
                          "--data_dir", str(data_dir))
  assert code == 0, err
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config", f"configs/{config}.py:smoke",
       "--workdir", str(tmp_path / "wd"), f"--config.data.data_dir={data_dir}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "wd" / "results.json").read_text())
  assert set(results["stages"]) == {"teacher", "student_ce", "student_all"}
  assert f"{name}/default: {counts}" in proc.stdout, proc.stdout[-2000:]
  evaluated = int(counts.split(" / ")[1].split()[0])
  assert results["stages"]["student_all"]["num_examples"] == evaluated

"""Tests of the TFDS builders and the prepare CLI (tiny datasets, written under tmp_path)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kd_jax.data import builders
from kd_jax.data import codec
from kd_jax.data import pipeline
from kd_jax.data import prepare
from kd_jax.data import synthetic
from kd_jax.data.builders import common
from subprocess_env import single_device_env

NUM_SOURCE_FRAMES = 14
REPO = pathlib.Path(__file__).resolve().parents[1]


def _write_avi(path, seed, n=NUM_SOURCE_FRAMES, h=48, w=64):
  """A real MPEG-4-in-AVI file: a coloured block sliding over a grey background."""
  rng = np.random.default_rng(seed)
  colour = rng.integers(0, 256, 3, dtype=np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(n):
      frame = np.full((h, w, 3), 60, np.uint8)
      frame[10:30, 2 * i:2 * i + 12] = colour
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(stream.encode(None))


def _corrupt(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"RIFF\x00\x00\x00\x00AVI this is not a video" * 20)


def _prepare(capsys, *args):
  code = prepare.main(list(args))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def _error_line(err):
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, err
  return lines[0]


def _records(data_dir, name, split):
  src = tfds.data_source(name, split=split, data_dir=str(data_dir))
  return [src[i] for i in range(len(src))]


# -- synthetic_actions ---------------------------------------------------------------------------


def test_synthetic_actions_round_trip(tmp_path, capsys):
  code, out, _ = _prepare(capsys, "synthetic_actions/tiny", "--data_dir", str(tmp_path))
  assert code == 0
  assert "train 12, test 8; skipped: 0" in out

  cfg = builders.get_builder("synthetic_actions/tiny").builder_config
  for split, per_class in (("train", cfg.train_clips), ("test", cfg.test_clips)):
    records = _records(tmp_path, "synthetic_actions/tiny", split)
    assert len(records) == per_class * cfg.spec.num_classes
    assert sorted(np.bincount([r["label"] for r in records])) == [per_class] * 4
    for r in records:
      vid = r["video_id"].decode()
      _, label, index = vid.split("_")
      assert int(label) == r["label"] and r["num_frames"] == 24
      # The stored stream is exactly the encoding of the regenerated clip.
      frames = synthetic.generate_clip(int(label), int(index), spec=cfg.spec, split=split)
      assert r["video"] == codec.encode_frames(frames)
  video = codec.CompressedVideo(records[0]["video"])
  assert (video.num_frames, video.height, video.width) == (24, 48, 64)
  assert common.read_skipped(str(tmp_path / "synthetic_actions/tiny/1.0.0")) == []

  # Batches through grain: every test record once, with its label.
  src = builders.data_source("synthetic_actions/tiny", "test", data_dir=str(tmp_path))
  spec = pipeline.make_spec("rgb_segments", num_segments=2, crop_size=32, resize_size=40)
  batches = list(pipeline.make_eval(src, spec, batch_size=4, process_index=0, process_count=1))
  assert [b["video"].shape for b in batches] == [(4, 2, 32, 32, 3)] * 2
  assert sorted(np.concatenate([b["index"] for b in batches])) == list(range(8))
  labels = np.concatenate([b["label"] for b in batches])
  idx = np.concatenate([b["index"] for b in batches])
  assert [src[int(i)]["label"] for i in idx] == labels.tolist()

  # A second run reuses the prepared dataset.
  code, out, _ = _prepare(capsys, "synthetic_actions/tiny", "--data_dir", str(tmp_path))
  assert code == 0 and "already prepared" in out


def test_unknown_dataset_or_config(tmp_path, capsys):
  code, _, err = _prepare(capsys, "kinetics", "--data_dir", str(tmp_path))
  assert code == 1 and "unknown dataset 'kinetics'" in _error_line(err)
  code, _, err = _prepare(capsys, "ucf101/split4", "--data_dir", str(tmp_path))
  assert code == 1 and "split1, split2, split3" in _error_line(err)


# -- UCF-101 -------------------------------------------------------------------------------------

# (class, official 1-based index, file-name spelling of the class)
UCF_CLASSES = [("ApplyEyeMakeup", 1, "ApplyEyeMakeup"), ("Archery", 3, "Archery"),
               ("HandstandPushups", 37, "HandStandPushups")]


@pytest.fixture
def ucf_dir(tmp_path):
  """The official layout: UCF-101/<Class>/v_*.avi and ucfTrainTestlist/*.txt (CRLF lines)."""
  root = tmp_path / "ucf_manual"
  lists = root / "ucfTrainTestlist"
  os.makedirs(lists)
  with open(lists / "classInd.txt", "w", newline="") as f:
    f.write("".join(f"{i} {c}\r\n" for c, i, _ in UCF_CLASSES))
  groups = {}
  for cls, index, spelled in UCF_CLASSES:
    for g in (1, 2, 3):
      name = f"v_{spelled}_g{g:02d}_c01.avi"
      _write_avi(root / "UCF-101" / cls / name, seed=10 * index + g)
      groups.setdefault(g, []).append((f"{cls}/{name}", index))
  _corrupt(root / "UCF-101" / "Archery" / "v_Archery_g02_c01.avi")
  for split in (1, 2, 3):  # split N tests on group N
    train = [e for g in (1, 2, 3) if g != split for e in groups[g]]
    with open(lists / f"trainlist0{split}.txt", "w", newline="") as f:
      f.write("".join(f"{p} {i}\r\n" for p, i in train))
    with open(lists / f"testlist0{split}.txt", "w", newline="") as f:
      f.write("".join(f"{p}\r\n" for p, _ in groups[split]))
  return root


def test_ucf101_from_manual_dir(tmp_path, ucf_dir, capsys):
  data_dir = tmp_path / "data"
  code, out, _ = _prepare(capsys, "ucf101/split1", "--manual_dir", str(ucf_dir),
                          "--data_dir", str(data_dir), "--workers", "2")
  assert code == 0, out
  assert "train 5, test 3; skipped: 1" in out
  assert "v_Archery_g02_c01" in out
  skipped = common.read_skipped(str(data_dir / "ucf101/split1/1.0.0"))
  assert [(s, v) for s, v, _ in skipped] == [("train", "v_Archery_g02_c01")]

  expected_label = {spelled: index - 1 for _, index, spelled in UCF_CLASSES}
  test = _records(data_dir, "ucf101/split1", "test")
  assert sorted(r["video_id"].decode() for r in test) == sorted(
      f"v_{s}_g01_c01" for _, _, s in UCF_CLASSES)
  for r in _records(data_dir, "ucf101/split1", "train") + test:
    vid = r["video_id"].decode()
    assert r["label"] == expected_label[vid.split("_")[1]]
    video = codec.CompressedVideo(r["video"])
    assert (video.width, video.height) == (340, 256)
    assert r["num_frames"] == video.num_frames == NUM_SOURCE_FRAMES
  info = builders.info("ucf101/split1", data_dir=str(data_dir))
  assert info.features["label"].names[36] == "HandstandPushups"

  # Split 3 reads its own lists.
  code, out, _ = _prepare(capsys, "ucf101/split3", "--manual_dir", str(ucf_dir),
                          "--data_dir", str(data_dir))
  assert code == 0 and "train 5, test 3; skipped: 1" in out
  test3 = {r["video_id"].decode() for r in _records(data_dir, "ucf101/split3", "test")}
  assert test3 == {f"v_{s}_g03_c01" for _, _, s in UCF_CLASSES}


def test_ucf101_missing_or_incomplete_manual_dir(tmp_path, ucf_dir, capsys):
  data_dir = str(tmp_path / "data")
  empty = tmp_path / "empty"
  os.makedirs(empty)
  code, _, err = _prepare(capsys, "ucf101", "--manual_dir", str(empty), "--data_dir", data_dir)
  line = _error_line(err)
  assert code == 1 and str(empty) in line and "UCF101.rar" in line

  os.remove(ucf_dir / "UCF-101" / "Archery" / "v_Archery_g03_c01.avi")
  # --strict: the old behaviour, one line, nothing written.
  code, _, err = _prepare(capsys, "ucf101", "--manual_dir", str(ucf_dir), "--data_dir", data_dir,
                          "--strict")
  line = _error_line(err)
  assert code == 1 and "1 of 9 videos" in line and "v_Archery_g03_c01.avi" in line
  assert "UCF101.rar" in line
  assert not os.path.exists(data_dir)
  # By default the missing video is skipped and listed, and the build finishes.
  code, out, _ = _prepare(capsys, "ucf101", "--manual_dir", str(ucf_dir), "--data_dir", data_dir)
  assert code == 0 and "train 4, test 3; skipped: 2" in out
  assert "train: 4 videos; skipped 2 (1 missing, 1 no video stream)" in out
  assert "v_Archery_g03_c01\tskipped\tmissing\tArchery/v_Archery_g03_c01.avi" in out
  shutil.rmtree(data_dir)

  os.remove(ucf_dir / "ucfTrainTestlist" / "classInd.txt")
  code, _, err = _prepare(capsys, "ucf101", "--manual_dir", str(ucf_dir), "--data_dir", data_dir)
  assert code == 1 and "classInd.txt" in _error_line(err)


# -- HMDB-51 -------------------------------------------------------------------------------------

# Official class indices: alphabetical among the 51 classes.
HMDB_CLASSES = {"brush_hair": 0, "clap": 4, "wave": 50}


@pytest.fixture
def hmdb_dir(tmp_path):
  """The official layout: <class>/*.avi and testTrainMulti_7030_splits/<class>_test_split<N>.txt."""
  root = tmp_path / "hmdb_manual"
  splits = root / "testTrainMulti_7030_splits"
  os.makedirs(splits)
  for cls, label in HMDB_CLASSES.items():
    names = [f"{cls}_video_{k}.avi" for k in range(4)]
    for k, name in enumerate(names):
      _write_avi(root / "hmdb51_org" / cls / name, seed=10 * label + k)
    for n in (1, 2, 3):
      # Tags: 1 train, 2 test, 0 unused; the lines end with a space, as the official files.
      tags = {1: [1, 1, 2, 0], 2: [2, 1, 1, 0], 3: [1, 2, 0, 1]}[n]
      with open(splits / f"{cls}_test_split{n}.txt", "w") as f:
        f.write("".join(f"{name} {tag} \n" for name, tag in zip(names, tags)))
  _corrupt(root / "hmdb51_org" / "clap" / "clap_video_1.avi")
  return root


def test_hmdb51_from_manual_dir(tmp_path, hmdb_dir, capsys):
  data_dir = tmp_path / "data"
  code, out, _ = _prepare(capsys, "hmdb51/split1", "--manual_dir", str(hmdb_dir),
                          "--data_dir", str(data_dir))
  assert code == 0, out
  assert "train 5, test 3; skipped: 1" in out and "clap_video_1" in out
  train = _records(data_dir, "hmdb51/split1", "train")
  test = _records(data_dir, "hmdb51/split1", "test")
  assert {r["video_id"].decode() for r in test} == {f"{c}_video_2" for c in HMDB_CLASSES}
  ids = {r["video_id"].decode() for r in train + test}
  assert not any(i.endswith("_video_3") for i in ids)  # tag 0: unused
  for r in train + test:
    assert r["label"] == HMDB_CLASSES[r["video_id"].decode().rsplit("_video_", 1)[0]]
    assert r["num_frames"] == NUM_SOURCE_FRAMES
  names = builders.info("hmdb51/split1", data_dir=str(data_dir)).features["label"].names
  assert [names[i] for i in HMDB_CLASSES.values()] == list(HMDB_CLASSES)


def test_hmdb51_missing_or_packed_manual_dir(tmp_path, hmdb_dir, capsys):
  data_dir = str(tmp_path / "data")
  missing = tmp_path / "nowhere"
  code, _, err = _prepare(capsys, "hmdb51/split2", "--manual_dir", str(missing),
                          "--data_dir", data_dir)
  line = _error_line(err)
  assert code == 1 and str(missing) in line and "hmdb51_org.rar" in line

  # Videos of one class still in their .rar archive.
  wave = hmdb_dir / "hmdb51_org" / "wave"
  for name in os.listdir(wave):
    os.remove(wave / name)
  (hmdb_dir / "hmdb51_org" / "wave.rar").write_bytes(b"Rar!")
  code, _, err = _prepare(capsys, "hmdb51/split2", "--manual_dir", str(hmdb_dir),
                          "--data_dir", data_dir, "--strict")
  line = _error_line(err)
  assert code == 1 and "3 of 9 videos" in line and "wave.rar" in line and "extract" in line
  # Without --strict: built from the other classes, the packed archive named in a note.
  code, out, _ = _prepare(capsys, "hmdb51/split2", "--manual_dir", str(hmdb_dir),
                          "--data_dir", data_dir)
  assert code == 0 and "train 3, test 2; skipped: 4" in out, out
  assert "train: 3 videos; skipped 3 (2 missing, 1 no video stream)" in out
  assert "note: 3 listed videos are not under" in out and "wave.rar" in out


# -- the GenKD paper configs on the prepared fakes -----------------------------------------------


@pytest.mark.slow  # a command-line GenKD run of three stages on each prepared fake
@pytest.mark.parametrize("dataset, config, manual", [
    ("ucf101/split1", "genkd_ucf101", "ucf_dir"),
    ("hmdb51/split1", "genkd_hmdb51", "hmdb_dir"),
])
def test_genkd_paper_config_runs_on_prepared_data(tmp_path, capsys, monkeypatch, request, dataset,
                                                  config, manual):
  data_dir = tmp_path / "data"
  code, out, _ = _prepare(capsys, dataset, "--manual_dir", str(request.getfixturevalue(manual)),
                          "--data_dir", str(data_dir))
  assert code == 0 and "train 5, test 3; skipped: 1" in out, out
  # The flow stream's dataset from the same manual dir (Farneback: TV-L1 is slow on a CPU).
  monkeypatch.setenv("KD_JAX_FLOW_METHOD", "farneback")
  flow = dataset.replace("/", "_flow/")
  code, out, _ = _prepare(capsys, flow, "--manual_dir", str(request.getfixturevalue(manual)),
                          "--data_dir", str(data_dir))
  assert code == 0 and "train 5, test 3; skipped: 1" in out, out
  # 14-frame videos under 16-frame clips: the loop padding is exercised.
  proc = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config", f"configs/{config}.py:smoke",
       "--workdir", str(tmp_path / "wd"), f"--config.data.data_dir={data_dir}"],
      cwd=REPO, env=single_device_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  classes = 101 if dataset.startswith("ucf") else 51
  assert f"{dataset}: 5 train / 3 eval videos, {classes} classes" in proc.stdout, proc.stdout
  results = json.loads((tmp_path / "wd" / "results.json").read_text())
  stages = results["stages"]
  assert set(stages) == {"teacher", "student_baseline", "student_genkd", "flow_teacher",
                         "flow_student"}
  for stage in stages.values():
    assert stage["num_examples"] == 3
    assert 0.0 <= stage["top1"] <= stage["top5"] <= 1.0
  # The distillation terms are on in the GenKD stage only.
  terms = {k: results["curves"][k]["terms"]["1"] for k in ("student_baseline", "student_genkd")}
  assert terms["student_baseline"]["A"]["gd"] == terms["student_baseline"]["B"]["ad"] == 0.0
  assert terms["student_genkd"]["A"]["gd"] > 0.0 and terms["student_genkd"]["B"]["ad"] > 0.0
  assert os.path.exists(tmp_path / "wd" / "student.ckpt")
  # Two-stream evaluation: every RGB network fused with its flow partner over the 3 test videos;
  # each stream alone scores what its own stage's evaluation scored (same clips, same weights).
  fused = results["two_stream"]
  assert set(fused) == {"teacher", "student_baseline", "student_genkd"}
  partner = {"teacher": "flow_teacher", "student_baseline": "flow_student",
             "student_genkd": "flow_student"}
  for name, row in fused.items():
    assert row["videos"] == 3 and row["left_out"] == 0
    assert row["rgb"]["top1"] == pytest.approx(stages[name]["top1"])
    assert row["flow"]["top1"] == pytest.approx(stages[partner[name]]["top1"])
    assert 0.0 <= row["two_stream"]["top1"] <= row["two_stream"]["top5"] <= 1.0
  assert "two-stream" in (tmp_path / "wd" / "report.md").read_text()

"""Damaged and missing videos never abort a build (issue 16): each is listed with its own reason.

The damaged files are made here from tiny real videos written with PyAV: a zero-byte file, a text
file renamed ``.avi``, the header of an AVI without its frames, an H.264 MP4 with bytes replaced in
the middle, and an AVI cut in half. Expected frame counts come from PyAV directly, not from kd_jax.
"""

import logging
import os
import random
import re
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data import prepare
from kd_jax.data import sources
from kd_jax.data.builders import common

N = 40  # frames of every source clip
H, W = 48, 64


def write_clip(path, *, seed=0, codec_name="mpeg4", audio=False, n=N):
  """A real video: a bright block sliding over noise (noise spreads the frames over the file)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  rng = np.random.default_rng(seed)
  with av.open(str(path), "w") as out:
    stream = out.add_stream(codec_name, rate=25)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.bit_rate = 4_000_000  # noise at a high rate: the frames, not the headers, fill the file
    sound = out.add_stream("mp2", rate=44100) if audio else None
    for i in range(n):
      frame = rng.integers(0, 120, (H, W, 3), dtype=np.uint8)
      frame[10:30, i:i + 12] = 250
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
      if sound is not None:
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 1152), np.int16), format="s16",
                                             layout="stereo")
        samples.sample_rate = 44100
        out.mux(sound.encode(samples))
    out.mux(stream.encode(None))
    if sound is not None:
      out.mux(sound.encode(None))


def decodable_frames(path) -> int:
  """Frames PyAV decodes from a file before the end or the first error (the reference count)."""
  n = 0
  try:
    with av.open(str(path)) as container:
      for _ in container.decode(video=0):
        n += 1
  except av.FFmpegError:
    pass
  return n


def make_empty(path):
  open(path, "wb").close()


def make_text(path):
  with open(path, "w") as f:
    f.write("this is a text file renamed to .avi\n" * 40)


def make_header_only(src, dst):
  """The AVI's headers up to the start of its frame data (the 'movi' list), nothing after."""
  data = open(src, "rb").read()
  with open(dst, "wb") as f:
    f.write(data[:data.index(b"movi") + 4])


def make_truncated(src, dst, fraction=0.5):
  data = open(src, "rb").read()
  with open(dst, "wb") as f:
    f.write(data[:int(len(data) * fraction)])


def make_corrupt(src, dst, frame=N // 2, size=64):
  """``size`` random bytes written over the start of a frame's packet (its NAL length and slice
  header in an H.264 MP4: the decoder stops there, as on a genuinely corrupt file)."""
  with av.open(str(src)) as container:
    starts = [p.pos for p in container.demux(video=0) if p.size]
  data = bytearray(open(src, "rb").read())
  rng = random.Random(0)
  k = starts[frame]
  data[k:k + size] = bytes(rng.randrange(256) for _ in range(size))
  with open(dst, "wb") as f:
    f.write(bytes(data))


# -- codec.reencode_checked: one reason per kind of damage ---------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  d = tmp_path_factory.mktemp("clips")
  write_clip(d / "good.avi")
  write_clip(d / "good.mp4", codec_name="libx264")
  write_clip(d / "good.mkv", codec_name="libx264")
  make_empty(d / "empty.avi")
  make_text(d / "text.avi")
  make_header_only(d / "good.avi", d / "header.avi")
  make_truncated(d / "good.avi", d / "cut.avi")
  make_truncated(d / "good.mkv", d / "cut.mkv")
  make_corrupt(d / "good.mp4", d / "corrupt.mp4")
  return d


def _reason(path):
  with pytest.raises(codec.VideoDecodeError) as e:
    codec.reencode_checked(path, width=W, height=H)
  assert str(e.value) == f"{path}: {e.value.reason}"  # the message names the file
  return e.value.reason


def test_complete_sources_have_no_problem(clips):
  for name in ("good.avi", "good.mp4", "good.mkv"):
    result = codec.reencode_checked(clips / name, width=W, height=H)
    assert (result.num_frames, result.declared_frames, result.problem) == (N, N, ""), name
    assert codec.CompressedVideo(result.data).num_frames == N


def test_each_damage_has_its_own_reason(clips):
  assert _reason(clips / "empty.avi") == "empty file (0 bytes)"
  assert _reason(clips / "text.avi") == "not a video container"
  assert _reason(clips / "header.avi") == "no decodable frames"
  corrupt = _reason(clips / "corrupt.mp4")
  # PyAV stops with an error (avcodec_send_packet) after the frames before the damage (H.264
  # holds two back for reordering).
  assert corrupt == f"corrupt stream at frame {decodable_frames(clips / 'corrupt.mp4')}"
  assert 0 < int(corrupt.rsplit(" ", 1)[1]) < N - 2
  # The same from bytes.
  with pytest.raises(codec.VideoDecodeError, match=r"^<bytes, 0 bytes>: empty file \(0 bytes\)$"):
    codec.reencode(b"")


def test_truncated_sources_are_kept_and_said(clips):
  # AVI: the header's frame count; Matroska: its duration x frame rate.
  for name in ("cut.avi", "cut.mkv"):
    expected = decodable_frames(clips / name)
    assert 5 < expected < N - 5
    result = codec.reencode_checked(clips / name, width=W, height=H)
    assert result.problem == f"truncated ({expected} of {N} frames)", name
    assert result.num_frames == codec.CompressedVideo(result.data).num_frames == expected
  assert codec.reencode(clips / "cut.avi", width=W, height=H) == codec.reencode_checked(
      clips / "cut.avi", width=W, height=H).data


@pytest.mark.parametrize("decoded, first_corrupt, declared, basis, problem", [
    (40, None, 40, "count", ""),
    (38, None, 40, "count", ""),  # within 2 frames: an MP4 edit list may hide some
    (37, None, 40, "count", "truncated (37 of 40 frames)"),
    (20, 19, 40, "count", "truncated (20 of 40 frames)"),  # a cut ends in a partial frame
    (37, 10, 40, "count", "corrupt stream at frame 10 (37 of 40 frames decode)"),
    (40, 5, 40, "count", "corrupt stream at frame 5 (concealed by the decoder)"),
    (95, None, 100, "duration", ""),  # an estimate: 5 %
    (94, None, 100, "duration", "truncated (94 of 100 frames)"),
    (3, None, None, "", ""),  # the container declares nothing
])
def test_partial_decode_problem(decoded, first_corrupt, declared, basis, problem):
  stats = codec._Decoded()
  stats.frames, stats.first_corrupt = decoded, first_corrupt
  assert codec._partial_problem(stats, declared, basis) == problem


def test_reason_kinds():
  assert common.reason_kind("corrupt stream at frame 12") == "corrupt stream"
  assert common.reason_kind("truncated (57 of 141 frames)") == "truncated"
  assert common.reason_kind("damaged AVI container (cannot be opened; truncated?)") == (
      "damaged container")
  assert common.reason_kind("missing") == "missing"


# -- prepare: a manual directory with every kind of damage --------------------------------------

# UCF-101 classes (official 1-based index) used by the fake manual directory.
CLASSES = {"ApplyEyeMakeup": 1, "Archery": 3, "Basketball": 8}
# video -> (class, split, how it is made)
ENTRIES = {
    "v_ApplyEyeMakeup_g01_c01.avi": ("ApplyEyeMakeup", "train", "good"),
    "v_Archery_g01_c01.avi": ("Archery", "train", "good"),
    "v_ApplyEyeMakeup_g02_c01.avi": ("ApplyEyeMakeup", "train", "missing"),
    "v_Archery_g02_c01.avi": ("Archery", "train", "empty"),
    "v_Basketball_g01_c01.avi": ("Basketball", "train", "text"),
    "v_Basketball_g02_c01.avi": ("Basketball", "train", "header"),
    "v_ApplyEyeMakeup_g03_c01.mp4": ("ApplyEyeMakeup", "train", "corrupt"),
    "v_Archery_g03_c01.avi": ("Archery", "train", "truncated"),
    "v_Basketball_g05_c01.avi": ("Basketball", "test", "good"),
    "v_ApplyEyeMakeup_g05_c01.avi": ("ApplyEyeMakeup", "test", "good"),
}


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("damaged") / "ucf_manual"
  lists = root / "ucfTrainTestlist"
  os.makedirs(lists)
  (lists / "classInd.txt").write_text("".join(f"{i} {c}\n" for c, i in CLASSES.items()))
  sources_dir = root.parent / "sources"
  write_clip(sources_dir / "src.avi", seed=99)
  write_clip(sources_dir / "src.mp4", seed=98, codec_name="libx264")
  for k, (name, (cls, _, how)) in enumerate(ENTRIES.items()):
    path = root / "UCF-101" / cls / name
    os.makedirs(path.parent, exist_ok=True)
    {"good": lambda p: write_clip(p, seed=k), "missing": lambda p: None, "empty": make_empty,
     "text": make_text, "header": lambda p: make_header_only(sources_dir / "src.avi", p),
     "corrupt": lambda p: make_corrupt(sources_dir / "src.mp4", p),
     "truncated": lambda p: make_truncated(sources_dir / "src.avi", p)}[how](path)
  for split, stem in (("train", "trainlist01"), ("test", "testlist01")):
    (lists / f"{stem}.txt").write_text("".join(
        f"{cls}/{name} {CLASSES[cls]}\n" for name, (cls, s, _) in ENTRIES.items() if s == split))
  return root


def _run(capsys, *args):
  code = prepare.main(list(args))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def _path_of(root, name):
  cls = ENTRIES[name][0]
  return str(root / "UCF-101" / cls / name)


def test_damaged_manual_dir_prepares_to_the_end(tmp_path, damaged_dir, capsys, caplog):
  caplog.set_level(logging.INFO)
  data_dir = tmp_path / "data"
  code, out, err = _run(capsys, "ucf101/split1", "--manual_dir", str(damaged_dir),
                        "--data_dir", str(data_dir))
  assert code == 0, err
  truncated_frames = decodable_frames(_path_of(damaged_dir, "v_Archery_g03_c01.avi"))
  assert 5 < truncated_frames < N - 5
  corrupt_at = decodable_frames(_path_of(damaged_dir, "v_ApplyEyeMakeup_g03_c01.mp4"))
  expected = {  # video id -> (action, reason, path)
      "v_ApplyEyeMakeup_g02_c01": ("skipped", "missing",
                                   "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi"),
      "v_Archery_g02_c01": ("skipped", "empty file (0 bytes)", None),
      "v_Basketball_g01_c01": ("skipped", "not a video container", None),
      "v_Basketball_g02_c01": ("skipped", "no decodable frames", None),
      "v_ApplyEyeMakeup_g03_c01": ("skipped", f"corrupt stream at frame {corrupt_at}", None),
      "v_Archery_g03_c01": ("kept", f"truncated ({truncated_frames} of {N} frames)", None),
  }
  listed = common.read_listed(str(data_dir / "ucf101/split1/1.0.0"))
  assert {l.video_id for l in listed} == set(expected)
  assert {common.reason_kind(l.reason) for l in listed} <= set(common.REASONS)
  for row in listed:
    action, reason, path = expected[row.video_id]
    ext = ".mp4" if "g03_c01" in row.video_id and "Apply" in row.video_id else ".avi"
    path = path or _path_of(damaged_dir, row.video_id + ext)
    assert (row.split, row.action, row.reason, row.path) == ("train", action, reason, path)
    assert "\t".join(row) in out  # and each is in the summary, with its path
  assert "videos: train 3, test 2; skipped: 5" in out
  assert ("train: 3 videos; skipped 5 (1 corrupt stream, 1 empty file, 1 missing, "
          "1 no decodable frames, 1 not a video container); kept damaged 1 (1 truncated)") in out
  assert "test: 2 videos; skipped 0" in out
  # What the user sees: our summary, no FFmpeg internals, no TFDS chatter, no absl warnings.
  for noise in ("avcodec", "Invalid data", "Downloading and preparing", "Subsequent calls",
                "Unknown size"):
    assert noise not in out + err
  assert "Variant folder" not in caplog.text and "dataset_info.json" not in caplog.text

  # The rest reads back; the truncated clip with the frames that decode.
  train = tfds.data_source("ucf101/split1", split="train", data_dir=str(data_dir))
  test = tfds.data_source("ucf101/split1", split="test", data_dir=str(data_dir))
  records = {r["video_id"].decode(): r for r in [train[i] for i in range(len(train))]}
  assert set(records) == {"v_ApplyEyeMakeup_g01_c01", "v_Archery_g01_c01", "v_Archery_g03_c01"}
  assert {test[i]["video_id"].decode() for i in range(len(test))} == {
      "v_Basketball_g05_c01", "v_ApplyEyeMakeup_g05_c01"}
  for vid, r in records.items():
    frames = truncated_frames if vid == "v_Archery_g03_c01" else N
    assert r["num_frames"] == codec.CompressedVideo(r["video"]).num_frames == frames
    assert r["label"] == CLASSES[vid.split("_")[1]] - 1

  # A second run reports the same list from the prepared directory.
  code, out2, _ = _run(capsys, "ucf101/split1", "--manual_dir", str(damaged_dir),
                       "--data_dir", str(data_dir))
  assert code == 0 and "already prepared" in out2
  assert "kept damaged 1 (1 truncated)" in out2


def test_truncated_skip_flag(tmp_path, damaged_dir, capsys):
  code, out, err = _run(capsys, "ucf101/split1", "--manual_dir", str(damaged_dir),
                        "--data_dir", str(tmp_path), "--truncated", "skip")
  assert code == 0, err
  assert "videos: train 2, test 2; skipped: 6" in out
  rows = {l.video_id: l for l in common.read_listed(str(tmp_path / "ucf101/split1/1.0.0"))}
  assert rows["v_Archery_g03_c01"].action == "skipped"
  assert rows["v_Archery_g03_c01"].reason.startswith("truncated (")


def _tree(path):
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, dirs, files in os.walk(path) for f in files + dirs)


def test_strict_aborts_and_leaves_nothing(tmp_path, damaged_dir, capsys):
  data_dir = tmp_path / "data"
  os.makedirs(data_dir / "other")
  (data_dir / "other" / "keep.txt").write_text("someone else's")
  before = _tree(data_dir)
  # A missing video: the old one-line error before anything is encoded.
  code, _, err = _run(capsys, "ucf101/split1", "--manual_dir", str(damaged_dir),
                      "--data_dir", str(data_dir), "--strict")
  line = [l for l in err.splitlines() if l.startswith("error:")]
  assert code == 1 and len(line) == 1
  assert "1 of 10 videos" in line[0] and "v_ApplyEyeMakeup_g02_c01.avi" in line[0]
  assert _tree(data_dir) == before


def test_strict_stops_at_first_unusable_video_mid_build(tmp_path, damaged_dir, capsys):
  # Now nothing is missing: the build starts, and stops at the empty file (list order).
  manual = damaged_dir
  missing = damaged_dir / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g02_c01.avi"
  write_clip(missing, seed=5)
  try:
    data_dir = tmp_path / "data"
    code, _, err = _run(capsys, "ucf101/split1", "--manual_dir", str(manual),
                        "--data_dir", str(data_dir), "--strict")
  finally:
    os.remove(missing)
  line = [l for l in err.splitlines() if l.startswith("error:")]
  assert code == 1 and len(line) == 1, err
  assert "v_Archery_g02_c01" in line[0] and "empty file (0 bytes)" in line[0]
  assert "--strict" in line[0]
  assert not data_dir.exists()  # TFDS's incomplete folder and the folders around it are gone


def test_split_with_nothing_usable_is_an_error_and_leaves_nothing(tmp_path, capsys):
  root = tmp_path / "manual"
  lists = root / "ucfTrainTestlist"
  os.makedirs(lists)
  (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n")
  write_clip(root / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")
  make_empty(root / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g02_c01.avi")
  (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
  (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\n"
                                        "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi\n")
  data_dir = tmp_path / "data"
  code, out, err = _run(capsys, "ucf101/split1", "--manual_dir", str(root), "--data_dir",
                        str(data_dir))
  line = [l for l in err.splitlines() if l.startswith("error:")]
  assert code == 1 and len(line) == 1, err
  assert "no video of split 'test' is usable (1 empty file, 1 missing;" in line[0]
  assert "Downloading and preparing" not in out
  assert not data_dir.exists()  # docs/data.md: a failed prepare writes nothing


def test_failed_prepare_into_a_used_data_dir_keeps_only_what_was_there(tmp_path, capsys):
  data_dir = tmp_path / "data"
  assert _run(capsys, "synthetic_actions/tiny", "--data_dir", str(data_dir))[0] == 0
  before = _tree(data_dir)
  code, _, _ = _run(capsys, "ucf101/split2", "--manual_dir", str(tmp_path / "nowhere"),
                    "--data_dir", str(data_dir))
  assert code == 1
  assert _tree(data_dir) == before


# -- the data directory: --data_dir / config > KD_JAX_DATA_DIR > TFDS_DATA_DIR > default ---------


def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
  monkeypatch.delenv("KD_JAX_DATA_DIR", raising=False)
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  assert prepare.resolve_data_dir(None) is None
  monkeypatch.setenv("TFDS_DATA_DIR", "/tfds")
  assert prepare.resolve_data_dir("") == "/tfds"
  monkeypatch.setenv("KD_JAX_DATA_DIR", "~/kd")
  assert prepare.resolve_data_dir(None) == os.path.expanduser("~/kd")
  assert prepare.resolve_data_dir(str(tmp_path)) == str(tmp_path)


def test_config_data_dir_precedence(monkeypatch):
  monkeypatch.delenv("KD_JAX_DATA_DIR", raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", "/tfds")
  # Under kd_jax.main: the config file's value yields to the environment, the flag does not.
  monkeypatch.setattr(sources, "_command_line_overrides", lambda: set())
  assert sources.config_data_dir("~/tensorflow_datasets") == "/tfds"
  monkeypatch.setattr(sources, "_command_line_overrides", lambda: {"data.data_dir"})
  assert sources.config_data_dir("/given") == "/given"
  # A program's own config: a value it set is kept, an empty one takes the environment.
  monkeypatch.setattr(sources, "_command_line_overrides", lambda: None)
  assert sources.config_data_dir("/set/in/code") == "/set/in/code"
  assert sources.config_data_dir("") == "/tfds"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert sources.config_data_dir("") == ""


def test_data_dir_variables_are_honoured(monkeypatch, tmp_path, capsys):
  kd, tfds_dir = tmp_path / "kd", tmp_path / "tfds"
  monkeypatch.setenv("KD_JAX_DATA_DIR", str(kd))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
  code, out, _ = _run(capsys, "synthetic_actions/tiny")
  assert code == 0 and f"at {kd}/synthetic_actions/tiny/1.0.0" in out
  assert not tfds_dir.exists()
  opened = sources.open_splits("synthetic_actions", "tiny")
  assert str(opened.builder.data_dir_root) == str(kd) and len(opened.train) == 12
  # TFDS_DATA_DIR alone.
  monkeypatch.delenv("KD_JAX_DATA_DIR")
  with pytest.raises(common.DatasetError, match=f"not prepared in {tfds_dir}"):
    sources.open_splits("synthetic_actions", "tiny")


_MAIN_LIKE = textwrap.dedent("""
    import sys
    from absl import app
    from ml_collections import config_flags
    from kd_jax.data import sources
    _CONFIG = config_flags.DEFINE_config_file("config", None, "config", lock_config=True)
    def main(argv):
      print("DATA_DIR=" + sources.config_data_dir(_CONFIG.value.data.data_dir))
    app.run(main)
""")


def test_command_line_flag_beats_the_variables(tmp_path):
  """The real absl parsing: --config.data.data_dir given, or the config file's value."""
  config = tmp_path / "cfg.py"
  config.write_text("import ml_collections\ndef get_config():\n"
                    "  return ml_collections.ConfigDict({'data': {'data_dir': 'data/tfds'}})\n")
  script = tmp_path / "main_like.py"
  script.write_text(_MAIN_LIKE)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, KD_JAX_DATA_DIR="/from/env", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
  env.pop("TFDS_DATA_DIR", None)

  def data_dir(*flags):
    proc = subprocess.run([sys.executable, str(script), f"--config={config}", *flags], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return re.search(r"DATA_DIR=(.*)", proc.stdout).group(1)

  assert data_dir() == "/from/env"
  assert data_dir("--config.data.data_dir=/from/flag") == "/from/flag"


def test_split_with_every_video_missing_fails_before_encoding(tmp_path, capsys):
  root = tmp_path / "manual"
  lists = root / "ucfTrainTestlist"
  os.makedirs(lists)
  (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n")
  write_clip(root / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")
  (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\n")
  (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi\n")
  code, out, err = _run(capsys, "ucf101/split1", "--manual_dir", str(root), "--data_dir",
                        str(tmp_path / "data"))
  line = [l for l in err.splitlines() if l.startswith("error:")]
  assert code == 1 and len(line) == 1, err
  assert "none of the 1 videos of split 'test' is under" in line[0] and "UCF101.rar" in line[0]
  assert "video/s" not in err  # no progress bar: nothing was encoded
  assert not (tmp_path / "data").exists()

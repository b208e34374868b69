"""Tests of the optical-flow datasets and the flow_clip pipeline (issue 18, item 2).

Builds use Farneback (``KD_JAX_FLOW_METHOD=farneback``) on tiny clips to stay fast; the stored
flow is checked against ``quantize_flow(optical_flow(frames))`` of the frames the RGB builders
store, computed here independently. Pipeline values are checked against hand-made fields and
NumPy formulas.
"""

import os
import sys

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kd_jax.data import codec
from kd_jax.data import flow
from kd_jax.data import flow_pipeline as fp
from kd_jax.data import prepare
from kd_jax.data import sources
from kd_jax.data import transforms
from kd_jax.data.builders import common
from kd_jax.data.builders import flow as flow_builders
from kd_jax.errors import UserError


@pytest.fixture(autouse=True)
def farneback(monkeypatch):
  monkeypatch.setenv(flow_builders.METHOD_ENV, "farneback")


def _prepare(capsys, *args):
  code = prepare.main(list(args))
  captured = capsys.readouterr()
  return code, captured.out + captured.err


def _records(data_dir, name, split):
  src = tfds.data_source(name, split=split, data_dir=str(data_dir))
  return [src[i] for i in range(len(src))]


def _expected(video_bytes):
  """The uint8 flow of a stored RGB stream, computed here from its decoded frames."""
  video = codec.CompressedVideo(video_bytes)
  frames = video.frames(np.arange(video.num_frames))
  return flow.quantize_flow(flow.optical_flow(frames, "farneback"))


# -- Storage -----------------------------------------------------------------------------------


def test_storage_round_trip():
  rng = np.random.default_rng(0)
  q = rng.integers(0, 256, (5, 6, 7, 2), dtype=np.uint8)
  stored = flow_builders.StoredFlow(flow_builders.pack_flow(q, method="tvl1"))
  assert (stored.num_frames, stored.height, stored.width) == (5, 6, 7)
  assert (stored.method, stored.bound) == ("tvl1", 20.0)
  np.testing.assert_array_equal(stored.all(), q)
  idx = [4, 0, 4, 2, 2]
  np.testing.assert_array_equal(stored.frames(idx), q[idx])
  with pytest.raises(IndexError):
    stored.field(5)
  with pytest.raises(ValueError, match="not a kd_jax flow record"):
    flow_builders.StoredFlow(b"\x00\x00\x01\xb0 an MPEG-4 stream")


# -- synthetic_actions_flow --------------------------------------------------------------------


def test_synthetic_flow_is_the_flow_of_the_stored_rgb_frames(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(flow_builders, "_CHUNK", 5)  # decoded in chunks: pairs across their ends
  code, out = _prepare(capsys, "synthetic_actions/tiny", "--data_dir", str(tmp_path))
  assert code == 0, out
  code, out = _prepare(capsys, "synthetic_actions_flow/tiny", "--data_dir", str(tmp_path))
  assert code == 0, out
  assert "train 12, test 8; skipped: 0" in out
  assert "synthetic_actions_flow/tiny: disk estimate ~" in out and "20 clips x 23 fields" in out
  assert "note: flow records:" in out and "farneback" in out
  for split in ("train", "test"):
    rgb = {r["video_id"]: r for r in _records(tmp_path, "synthetic_actions/tiny", split)}
    flows = _records(tmp_path, "synthetic_actions_flow/tiny", split)
    assert sorted(r["video_id"] for r in flows) == sorted(rgb)
    for r in flows:
      stored = flow_builders.StoredFlow(r["flow"])
      assert stored.method == "farneback"
      assert r["label"] == rgb[r["video_id"]]["label"]
      assert r["num_frames"] == stored.num_frames == rgb[r["video_id"]]["num_frames"] - 1 == 23
      np.testing.assert_array_equal(stored.all(), _expected(rgb[r["video_id"]]["video"]))
  code, out = _prepare(capsys, "synthetic_actions_flow/tiny", "--data_dir", str(tmp_path))
  assert code == 0 and "already prepared" in out


def test_synthetic_flow_sized_config_through_open_flow_streams(tmp_path):
  size = dict(num_classes=2, train_clips=2, test_clips=1, num_frames=6, height=32, width=32)
  dcfg = sources.data_config(name="synthetic_actions", config="custom", data_dir=str(tmp_path),
                             auto_prepare=True, prepare_workers=1, crop_size=24, resize_size=0,
                             synthetic=size)
  data = fp.open_flow_streams(dcfg, clip_len=8)
  name = prepare.synthetic_config_name(**size)
  assert data.opened.name == f"synthetic_actions_flow/{name}"
  assert (len(data.opened.train), len(data.opened.eval), data.num_classes) == (4, 2, 2)
  batch = next(data.train(2, seed=0))
  assert batch["video"].shape == (2, 8, 24, 24, 2) and batch["video"].dtype == np.float32
  batches = list(data.eval(4))
  assert [b["mask"].tolist() for b in batches] == [[1.0, 1.0, 0.0, 0.0]]
  # The command line names the same copy.
  builder = prepare.get_builder(f"synthetic_actions_flow/{name}", data_dir=str(tmp_path))
  assert builder.is_prepared() and builder.name == "synthetic_actions_flow"
  # A run that asks for the method the copy holds opens it; another method is one line that says
  # which flow is there and what to do (the method is not part of the name).
  assert len(fp.open_flow_streams(dcfg, clip_len=8, flow_method="farneback").opened.train) == 4
  with pytest.raises(UserError, match=r"holds farneback flow, not the tvl1 .*remove"):
    fp.open_flow_streams(dcfg, clip_len=8, flow_method="tvl1")
  # Not prepared and not to be generated: one line with the command.
  dcfg.auto_prepare = False
  dcfg.synthetic.num_classes = 3
  with pytest.raises(UserError, match="prepare synthetic_actions_flow/c3_.*auto_prepare"):
    fp.open_flow_streams(dcfg, clip_len=8)
  dcfg.name = "jester"
  with pytest.raises(UserError, match="jester has no flow dataset"):
    fp.open_flow_streams(dcfg, clip_len=8)


# -- ucf101_flow / hmdb51_flow: skip and list --------------------------------------------------


def _write_avi(path, seed, n, h=48, w=64):
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    background = rng.integers(40, 90, (h, w, 3), dtype=np.uint8)
    for i in range(n):
      frame = background.copy()
      frame[10:30, 3 * i:3 * i + 12] = 220
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    out.mux(stream.encode(None))


def test_ucf101_flow_skips_and_lists_missing_empty_and_short(tmp_path, capsys):
  root = tmp_path / "manual"
  lists = root / "ucfTrainTestlist"
  os.makedirs(lists)
  (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n3 Archery\n")
  videos = {c: [f"{c}/v_{c}_g{g:02d}_c01.avi" for g in (1, 2, 3)]
            for c in ("ApplyEyeMakeup", "Archery")}
  for k, rel in enumerate(videos["ApplyEyeMakeup"][:2] + videos["Archery"][:1]):
    _write_avi(root / "UCF-101" / rel, seed=k, n=6)
  (root / "UCF-101" / videos["ApplyEyeMakeup"][2]).write_bytes(b"")  # empty file
  _write_avi(root / "UCF-101" / videos["Archery"][2], seed=9, n=1)  # one frame: no flow
  # videos["Archery"][1] is listed but missing.
  train = [(v[g], i) for v, i in ((videos["ApplyEyeMakeup"], 1), (videos["Archery"], 3))
           for g in (1, 2)]
  (lists / "trainlist01.txt").write_text("".join(f"{p} {i}\n" for p, i in train))
  (lists / "testlist01.txt").write_text(f"{videos['ApplyEyeMakeup'][0]}\n"
                                        f"{videos['Archery'][0]}\n")

  data_dir = tmp_path / "data"
  code, out = _prepare(capsys, "ucf101_flow/split1", "--manual_dir", str(root), "--data_dir",
                       str(data_dir))
  assert code == 0, out
  assert "ucf101_flow/split1: disk estimate ~" in out and "6 videos x 185.4 fields" in out
  assert "train 1, test 2; skipped: 3" in out
  listed = common.read_listed(str(data_dir / "ucf101_flow/split1/1.0.0"))
  assert sorted((l.split, l.video_id, l.action, l.reason) for l in listed) == [
      ("train", "v_ApplyEyeMakeup_g03_c01", "skipped", "empty file (0 bytes)"),
      ("train", "v_Archery_g02_c01", "skipped", "missing"),
      ("train", "v_Archery_g03_c01", "skipped", "too short for flow (1 frame)"),
  ]
  records = _records(data_dir, "ucf101_flow/split1", "train")
  records += _records(data_dir, "ucf101_flow/split1", "test")
  assert sorted(r["video_id"].decode() for r in records) == [
      "v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g02_c01", "v_Archery_g01_c01"]
  for r in records:
    vid = r["video_id"].decode()
    assert r["label"] == (0 if "ApplyEyeMakeup" in vid else 2)
    stored = flow_builders.StoredFlow(r["flow"])
    assert (stored.height, stored.width, r["num_frames"]) == (256, 340, 5)
    # The flow of the frames the ucf101 builder stores (the source re-encoded at 340 x 256).
    path = root / "UCF-101" / vid.split("_")[1] / f"{vid}.avi"
    np.testing.assert_array_equal(stored.all(), _expected(codec.reencode(str(path))))


def test_hmdb51_flow_without_manual_dir_says_what_to_download(tmp_path, capsys):
  code, out = _prepare(capsys, "hmdb51_flow/split2", "--manual_dir", str(tmp_path / "nowhere"),
                       "--data_dir", str(tmp_path / "data"))
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert code == 1 and len(errors) == 1 and "hmdb51_org.rar" in errors[0]
  assert not (tmp_path / "data" / "hmdb51_flow").exists()


def test_build_without_opencv_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
  code, out = _prepare(capsys, "synthetic_actions_flow/tiny", "--data_dir", str(tmp_path))
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert code == 1 and len(errors) == 1 and "pip install 'kd-jax[flow]'" in errors[0]
  assert not (tmp_path / "synthetic_actions_flow").exists()


def test_unknown_flow_method(monkeypatch):
  monkeypatch.setenv(flow_builders.METHOD_ENV, "lucas_kanade")
  with pytest.raises(common.DatasetError, match="unknown flow method 'lucas_kanade'"):
    prepare.get_builder("synthetic_actions_flow/tiny")


# -- flow_clip pipeline ------------------------------------------------------------------------


def _source(fields):
  """A random-access source of hand-made records (lists of uint8 ``[N, H, W, 2]`` fields)."""
  return [{"flow": flow_builders.pack_flow(q, method="tvl1"), "label": k % 3,
           "video_id": f"v{k}".encode(), "num_frames": len(q)} for k, q in enumerate(fields)]


def _normalised(q):
  return (q.astype(np.float64) / 255.0 - 0.5) / 0.226


def test_eval_values_centre_crop_and_loop_padding():
  # Field t of the 5 holds x = 10 t + column, y = 200 - t: offsets and positions are readable.
  h, w, n = 12, 20, 5
  q = np.zeros((n, h, w, 2), np.uint8)
  q[..., 0] = 10 * np.arange(n)[:, None, None] + np.arange(w)[None, None, :]
  q[..., 1] = 200 - np.arange(n)[:, None, None]
  spec = fp.FlowClipSpec(clip_len=8, crop_size=8)
  (batch,) = fp.make_eval(_source([q]), spec, batch_size=1, process_index=0, process_count=1)
  assert batch["video"].shape == (1, 8, 8, 8, 2) and batch["video"].dtype == np.float32
  # Shorter than the clip: fields 0..4 then 0..2 (loop-padded); the centre 8x8 window.
  want = q[[0, 1, 2, 3, 4, 0, 1, 2], 2:10, 6:14]
  np.testing.assert_allclose(batch["video"][0], _normalised(want), atol=1e-5)
  # Zero motion (q = 127.5) is 0; the quantisation bound reaches about +-2.21.
  assert np.isclose(_normalised(np.uint8(255)), 0.5 / 0.226)
  # A longer video: the centred offset.
  long = np.repeat(np.arange(20, dtype=np.uint8)[:, None, None, None], 8, axis=1)
  long = np.repeat(np.repeat(long, 8, axis=2), 2, axis=3)
  (batch,) = fp.make_eval(_source([long]), spec, batch_size=1, process_index=0, process_count=1)
  np.testing.assert_allclose(batch["video"][0, :, 0, 0, 0],
                             _normalised(np.arange(6, 14, dtype=np.uint8)), atol=1e-5)


@pytest.mark.parametrize("flow_flip", ["negate_x", "mirror"])
def test_flip_semantics(flow_flip):
  # A field moving right by 5 px, more in the columns to the right: x = quantised (5 + col / 4).
  h = w = 16
  vx = 5.0 + np.arange(w)[None, :] / 4.0 * np.ones((h, 1))
  pixels = np.stack([vx, np.full((h, w), -3.0)], axis=-1)[None].repeat(2, axis=0)
  q = flow.quantize_flow(pixels)
  spec = fp.FlowClipSpec(clip_len=2, crop_size=16, scales=(1.0,), flow_flip=flow_flip)
  plain = _normalised(q)
  mirrored = plain[:, :, ::-1].copy()
  if flow_flip == "negate_x":
    mirrored[..., 0] *= -1
  seen = set()
  for seed in range(12):
    out = fp.flow_input(q, spec, train=True, rng=np.random.default_rng(seed), flip=True)
    flipped = not np.allclose(out, plain, atol=1e-5)
    seen.add(flipped)
    np.testing.assert_allclose(out, mirrored if flipped else plain, atol=1e-5)
    if flipped:
      # y never changes sign; x does (left-going motion) only with negate_x.
      assert (out[..., 1] < 0).all()
      assert ((out[..., 0] < 0).all() if flow_flip == "negate_x" else (out[..., 0] > 0).all())
      # negate_x is the quantisation of the negated field, within the rounding of 255 - q.
      if flow_flip == "negate_x":
        back = flow.dequantize_flow(flow.quantize_flow(-pixels[:, :, ::-1]))
        got = flow.dequantize_flow(np.uint8(255) - q[:, :, ::-1, :1])
        np.testing.assert_allclose(got[..., 0], back[..., 0], atol=40 / 255 + 1e-6)
  assert seen == {True, False}
  # flip off: never flipped.
  for seed in range(6):
    out = fp.flow_input(q, spec, train=True, rng=np.random.default_rng(seed), flip=False)
    np.testing.assert_allclose(out, plain, atol=1e-5)


def test_train_shapes_scales_and_determinism():
  rng = np.random.default_rng(1)
  fields = [rng.integers(0, 256, (n, 24, 32, 2), dtype=np.uint8) for n in (3, 30, 12, 70)]
  src = _source(fields)
  spec = fp.FlowClipSpec(clip_len=16, crop_size=16)

  def batches(seed, n=3):
    it = iter(fp.make_train(src, spec, batch_size=2, seed=seed, process_index=0, process_count=1))
    return [next(it) for _ in range(n)]

  a, b, c = batches(3), batches(3), batches(4)
  for x in a:
    assert x["video"].shape == (2, 16, 16, 16, 2) and x["video"].dtype == np.float32
    assert (np.abs(x["video"]) <= 0.5 / 0.226 + 1e-5).all()
    np.testing.assert_array_equal(x["label"], [int(i) % 3 for i in x["index"]])
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, c))
  # Whole epochs: each video once in ceil(4 / 2) batches, then the next epoch.
  it = iter(fp.make_train_epochs(src, spec, batch_size=2, seed=0, process_index=0,
                                 process_count=1))
  epoch = [next(it) for _ in range(2)]
  assert sorted(np.concatenate([e["index"] for e in epoch]).tolist()) == [0, 1, 2, 3]
  assert all(e["mask"].tolist() == [1.0, 1.0] for e in epoch)
  # The crop sides come from the flow scales (1, .875, .75) of the short side: 24, 21, 18 (to a
  # 12 crop: TSN snaps a side within 2 px of the output to it).
  sides = set()
  for seed in range(40):
    box = transforms.sample_multiscale_crop(np.random.default_rng(seed), 24, 32, 12,
                                            scales=spec.scales, fix_crop=spec.fix_crop)
    sides.update(box[2:])
  assert sides == {24, 21, 18}


def test_flip_default_follows_the_rgb_dataset():
  class Info:
    def __init__(self, name):
      self.name = name

  class Source(list):
    def __init__(self, name):
      super().__init__()
      self.dataset_info = Info(name)

  spec = fp.FlowClipSpec()
  assert not fp.resolve_flip(spec, Source("synthetic_actions_flow"))
  assert fp.resolve_flip(spec, Source("ucf101_flow"))
  assert fp.resolve_flip(fp.FlowClipSpec(flip=True), Source("synthetic_actions_flow"))
  with pytest.raises(ValueError, match="flow_flip must be one of negate_x, mirror"):
    fp.FlowClipSpec(flow_flip="negate")

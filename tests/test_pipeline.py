"""Tests of the grain pipelines on a tiny prepared synthetic_actions dataset."""

import dataclasses

import jax
import numpy as np
import pytest

from kd_jax.data import builders
from kd_jax.data import codec
from kd_jax.data import pipeline
from kd_jax.data import prepare
from kd_jax.data import sampling
from kd_jax.data import transforms

NAME = "synthetic_actions/tiny"  # 4 classes; train 12, test 8 clips of 24 frames, 48x64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  prepare.prepare(NAME, data_dir=path)
  return path


@pytest.fixture(scope="module")
def train_src(data_dir):
  return builders.data_source(NAME, "train", data_dir=data_dir)


SMALL = pipeline.make_spec("rgb_segments", num_segments=2, crop_size=16, resize_size=20)


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_is_deterministic_for_a_seed(train_src):
  make = lambda seed: pipeline.make_train(train_src, SMALL, batch_size=4, seed=seed,
                                          process_index=0, process_count=1)
  first = _take(make(3), 5)  # 20 elements: crosses an epoch boundary (12 records)
  _assert_batches_equal(first, _take(make(3), 5))
  other = _take(make(4), 5)
  assert any(not np.array_equal(a["index"], b["index"]) for a, b in zip(first, other))
  # An epoch is a permutation: the first 12 elements are the 12 records.
  assert sorted(np.concatenate([b["index"] for b in first[:3]])) == list(range(12))
  for b in first:
    assert b["video"].shape == (4, 2, 16, 16, 3) and b["video"].dtype == np.float32
    assert [train_src[int(i)]["label"] for i in b["index"]] == b["label"].tolist()


def test_restored_iterator_continues_with_the_same_batches(train_src):
  ds = pipeline.make_train(train_src, SMALL, batch_size=3, seed=0, process_index=0,
                           process_count=1)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  restored = iter(pipeline.make_train(train_src, SMALL, batch_size=3, seed=0, process_index=0,
                                      process_count=1))
  restored.set_state(state)
  _assert_batches_equal([next(restored) for _ in range(3)], expected)


@pytest.mark.slow  # starts grain worker processes (twice: fresh, then restored)
def test_worker_processes_give_the_same_batches_and_restore(train_src):
  make = lambda workers: pipeline.make_train(train_src, SMALL, batch_size=2, seed=1,
                                             num_workers=workers, process_index=0,
                                             process_count=1)
  reference = _take(make(0), 6)
  it = iter(make(2))
  _assert_batches_equal([next(it) for _ in range(3)], reference[:3])
  state = it.get_state()
  it.close()
  restored = iter(make(2))
  restored.set_state(state)
  _assert_batches_equal([next(restored) for _ in range(3)], reference[3:])
  restored.close()


def test_process_shards_are_disjoint_cover_the_data_and_match_the_global_stream(train_src):
  def elements(index, count):
    ds = pipeline.make_train(train_src, SMALL, batch_size=2, seed=7, num_epochs=1,
                             process_index=index, process_count=count)
    batches = list(ds)
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  everything = elements(0, 1)
  shards = [elements(p, 3) for p in range(3)]
  indices = [s["index"].tolist() for s in shards]
  assert [len(i) for i in indices] == [4, 4, 4]
  assert sorted(sum(indices, [])) == list(range(12))  # disjoint and covering
  for p, shard in enumerate(shards):  # process p holds elements p, p + 3, ... of the global stream
    np.testing.assert_array_equal(shard["index"], everything["index"][p::3])
    np.testing.assert_array_equal(shard["video"], everything["video"][p::3])


@pytest.mark.parametrize("count,batch", [(1, 5), (2, 5), (3, 2), (5, 4)])
def test_eval_pads_with_a_mask_and_gives_every_process_the_same_batch_count(train_src, count,
                                                                             batch):
  seen, steps = [], set()
  for p in range(count):
    batches = list(pipeline.make_eval(train_src, SMALL, batch_size=batch, process_index=p,
                                      process_count=count))
    steps.add(len(batches))
    for b in batches:
      assert b["mask"].shape == (batch,) and b["video"].shape[0] == batch
      seen += [(int(i), bool(m)) for i, m in zip(b["index"], b["mask"])]
  assert steps == {pipeline.eval_steps(12, batch, count)}
  real = sorted(i for i, m in seen if m)
  assert real == list(range(12))  # every record exactly once unmasked, the rest is padding
  assert len(seen) == pipeline.eval_steps(12, batch, count) * batch * count


def test_eval_is_deterministic(train_src):
  make = lambda: list(pipeline.make_eval(train_src, SMALL, batch_size=5, process_index=0,
                                         process_count=1))
  _assert_batches_equal(make(), make())


def test_compressed_eval_reads_the_expected_frames(train_src):
  # No resizing or cropping (crop = stored size), so the batch is the normalised representations.
  spec = pipeline.make_spec("compressed", num_segments=2, crop_size=48, resize_size=None)
  (batch,) = _take(pipeline.make_eval(train_src, spec, batch_size=1, process_index=0,
                                      process_count=1), 1)
  video = codec.CompressedVideo(train_src[0]["video"])
  # 24 frames, GOPs at 0 and 12: segment centres 6 and 17 lie in GOPs 0 and 12, and the fused test
  # loader reads the P-frame at GOP position 5 of each.
  np.testing.assert_array_equal(video.gop_starts, [0, 12])
  crop = lambda x: transforms.center_crop(x, 48)
  np.testing.assert_allclose(
      batch["iframe"][0], transforms.normalize_rgb(crop(np.stack([video.iframe(0),
                                                                   video.iframe(12)]))))
  np.testing.assert_allclose(
      batch["mv"][0], transforms.normalize_mv(crop(np.stack([video.motion_vectors(5),
                                                              video.motion_vectors(17)]))))
  np.testing.assert_allclose(
      batch["residual"][0], transforms.normalize_residual(crop(np.stack([video.residual(5),
                                                                          video.residual(17)]))))
  assert batch["mask"].tolist() == [True] and batch["label"][0] == train_src[0]["label"]


def test_compressed_and_rgb_clip_training_batches(train_src):
  spec = pipeline.make_spec("compressed", num_segments=3, crop_size=32, modalities=["mv", "iframe"])
  (b,) = _take(pipeline.make_train(train_src, spec, batch_size=2, seed=0, process_index=0,
                                   process_count=1), 1)
  assert set(b) == {"iframe", "mv", "label", "index"}
  assert b["iframe"].shape == (2, 3, 32, 32, 3) and b["mv"].shape == (2, 3, 32, 32, 2)
  assert np.all(np.abs(b["mv"]) <= 0.5)

  spec = pipeline.make_spec("rgb_clip", clip_len=8, crop_size=48)
  (b,) = _take(pipeline.make_eval(train_src, spec, batch_size=1, process_index=0,
                                  process_count=1), 1)
  video = codec.CompressedVideo(train_src[0]["video"])
  # Centred clip of 8 of 24 frames: frames 8..15; then the centre 48x48 crop.
  expected = transforms.normalize_rgb(transforms.center_crop(video.rgb(8, 8), 48))
  np.testing.assert_allclose(b["video"][0], expected)


def test_flip_is_off_by_default_for_direction_sensitive_data(train_src):
  assert not pipeline.resolve_flip(SMALL, train_src)
  assert pipeline.resolve_flip(pipeline.make_spec("rgb_clip", flip=True), train_src)
  assert pipeline.resolve_flip(SMALL, list(range(3)))  # a source of unknown origin


# -- CoViAR's loader switches: I-frame HLS jitter, draws with replacement ----------------------------


def _coviar(**fields):
  return pipeline.make_spec("compressed", sampling="coviar", modalities=["iframe"], **fields)


def _eval_by_index(source, spec, batch_size=3, count=1):
  out = {}
  for p in range(count):
    for b in pipeline.make_eval(source, spec, batch_size=batch_size, process_index=p,
                                process_count=count):
      for i, x, m in zip(b["index"], b["iframe"], b["mask"]):
        if m:
          out[int(i)] = x
  return out


def test_coviar_test_time_jitter_is_seeded_per_video(train_src):
  source = [train_src[i] for i in range(4)]
  spec = _coviar(num_segments=2, crop_size=32, resize_size=40, iframe_jitter="train_and_test")
  got = _eval_by_index(source, spec)
  assert sorted(got) == [0, 1, 2, 3]
  for i in (0, 3):
    video = codec.CompressedVideo(source[i]["video"])
    idx = sampling.coviar_indices(video.num_frames, video.gop_starts, 2, modality="iframe",
                                  train=False)
    frames = np.stack([video.iframe(int(j)) for j in idx])
    # Documented: segment s of record i gets (u * 2 - 1) * (36, 50, 50), u the uniforms of
    # default_rng([0x4A17, test_jitter_seed, i]); the whole frame is jittered before the resize.
    offsets = (np.random.default_rng([0x4A17, 0, i]).random((2, 3)) * 2 - 1) * (36, 50, 50)
    jittered = transforms.hls_jitter(frames, offsets)
    expected = transforms.normalize_rgb(transforms.center_crop(transforms.resize(jittered, 40), 32))
    np.testing.assert_allclose(got[i], expected, atol=1e-6)
    plain = transforms.normalize_rgb(transforms.center_crop(transforms.resize(frames, 40), 32))
    assert np.abs(got[i] - plain).max() > 0.1
  # The same offsets whatever the batch size or process count; another seed gives others.
  again = _eval_by_index(source, spec, batch_size=1, count=2)
  for i in got:
    np.testing.assert_array_equal(again[i], got[i])
  other = _eval_by_index(source, dataclasses.replace(spec, test_jitter_seed=1))
  assert not np.array_equal(other[0], got[0])
  # 'train' jitters in training only: its evaluation is the unjittered one.
  off = _eval_by_index(source, dataclasses.replace(spec, iframe_jitter="off"))
  train_only = _eval_by_index(source, dataclasses.replace(spec, iframe_jitter="train"))
  for i in got:
    np.testing.assert_array_equal(train_only[i], off[i])


def test_only_coviars_loader_jitters(train_src):
  source = [train_src[i] for i in range(4)]
  make = lambda spec: _take(pipeline.make_train(source, spec, batch_size=2, seed=0,
                                                process_index=0, process_count=1), 2)
  off = make(_coviar(crop_size=32))
  on = make(_coviar(crop_size=32, iframe_jitter="train"))
  for a, b in zip(off, on):
    np.testing.assert_array_equal(a["index"], b["index"])
  assert any(not np.array_equal(a["iframe"], b["iframe"]) for a, b in zip(off, on))
  # PKD's fused loader (dataset_fuse.py) has no colour jitter: the switch leaves it bit-identical.
  fused = dict(sampling="fused", crop_size=32)
  spec_off = pipeline.make_spec("compressed", **fused)
  spec_on = pipeline.make_spec("compressed", iframe_jitter="train_and_test", **fused)
  _assert_batches_equal(make(spec_off), make(spec_on))
  _assert_batches_equal(_take(pipeline.make_eval(source, spec_off, batch_size=4), 1),
                        _take(pipeline.make_eval(source, spec_on, batch_size=4), 1))


def test_coviar_training_draws_videos_with_replacement(train_src):
  spec = pipeline.make_spec("compressed", num_segments=1, crop_size=16, sampling="coviar",
                            modalities=["mv"], train_order="with_replacement")
  assert pipeline.train_order(spec) == "with_replacement"
  make = lambda batch_size=4, **kw: pipeline.make_train(train_src, spec, batch_size=batch_size,
                                                         seed=5, **kw)
  it = iter(make(process_index=0, process_count=1))
  batches = [next(it) for _ in range(6)]  # 24 draws: two epochs of len(source) = 12
  got = np.concatenate([b["index"] for b in batches])
  ref = np.concatenate([np.random.default_rng([5, e]).integers(0, 12, 12) for e in range(2)])
  np.testing.assert_array_equal(got, ref)
  assert len(set(got[:12].tolist())) < 12  # an epoch repeats videos (and misses others)
  for b in batches:
    assert [train_src[int(i)]["label"] for i in b["index"]] == b["label"].tolist()
  # Restored mid-stream: the same batches, bit for bit.
  it = iter(make(process_index=0, process_count=1))
  for _ in range(2):
    next(it)
  restored = iter(make(process_index=0, process_count=1))
  restored.set_state(it.get_state())
  _assert_batches_equal([next(restored) for _ in range(3)], batches[2:5])
  # Two processes take alternate positions of the same global stream.
  halves = [np.concatenate([b["index"] for b in _take(make(batch_size=2, process_index=p,
                                                          process_count=2), 3)])
            for p in range(2)]
  np.testing.assert_array_equal(halves[0], got[0:12:2])
  np.testing.assert_array_equal(halves[1], got[1:12:2])
  # The fused loader always permutes (dataset_fuse.py indexes its list, DataLoader shuffles).
  fused = dataclasses.replace(spec, sampling="fused")
  assert pipeline.train_order(fused) == "permutation"
  first = _take(pipeline.make_train(train_src, fused, batch_size=4, seed=5, process_index=0,
                                    process_count=1), 3)
  assert sorted(np.concatenate([b["index"] for b in first]).tolist()) == list(range(12))


def test_loader_options_of_a_config_block():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from kd_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  block = ml_collections.ConfigDict(dict(iframe_color_jitter="train_and_test",
                                         train_order="with_replacement"))
  assert pipeline.loader_options(block) == {"iframe_jitter": "train_and_test",
                                            "train_order": "with_replacement", "augment": "host"}
  assert pipeline.loader_options(ml_collections.ConfigDict()) == {
      "iframe_jitter": "off", "train_order": "permutation",
      "augment": "host"}  # blocks without the fields
  for field, value in (("iframe_color_jitter", "test"), ("train_order", "shuffle")):
    with pytest.raises(UserError, match=f"config.data.{field}") as e:
      pipeline.loader_options(ml_collections.ConfigDict({field: value}))
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="iframe_jitter"):
    pipeline.make_spec("compressed", iframe_jitter="always")


def _reference_compressed_inputs(raw, spec, train, rng, flip):
  """The compressed kind's augmentation written as the plain composition (stacked segments,
  multiscale_crop, random_hflip, then CoViAR's normalisations in float64)."""
  out = {}
  for m, scales in (("iframe", transforms.IFRAME_SCALES), ("mv", transforms.MV_RESIDUAL_SCALES),
                    ("residual", transforms.MV_RESIDUAL_SCALES)):
    x = np.stack(raw[m])
    if train:
      x = transforms.multiscale_crop(x, rng, spec.crop_size, scales=scales)
      if flip:
        x, _ = transforms.random_hflip(x, rng, is_mv=m == "mv")
    else:
      x = transforms.center_crop(transforms.resize(x, spec.resize_size), spec.crop_size)
    x = x.astype(np.float64)
    if m == "iframe":
      out[m] = (x / 255 - np.array(transforms.IMAGENET_MEAN)) / np.array(transforms.IMAGENET_STD)
    elif m == "mv":
      out[m] = np.clip(np.trunc(x * 127.5 / transforms.MV_BOUND) + 128, 0, 255) / 255 - 0.5
    else:
      out[m] = (np.clip(x + 128, 0, 255) / 255 - 0.5) / np.array(transforms.RESIDUAL_STD_RGB)
  return out


@pytest.mark.parametrize("train", [True, False])
def test_compressed_fast_path_matches_the_plain_composition(train_src, train):
  """The fused crop / resize / flip / normalisation of the compressed kind gives the values of the
  step-by-step composition (the same random draws), MVs exactly, the rest within 1e-6."""
  spec = pipeline.make_spec("compressed", crop_size=24, resize_size=40, flip=True)
  video = codec.CompressedVideo(train_src[0]["video"])
  reps = [video.representations(p) for p in (3, 9, 17)]
  raw = {"iframe": [r.iframe for r in reps], "mv": [r.motion_vectors for r in reps],
         "residual": [r.residual for r in reps]}
  for seed in range(4):
    rng = np.random.default_rng(seed) if train else None  # one stream for the three, in order
    got = {m: pipeline._compressed_input(raw[m], m, spec, train, rng, True)
           for m in ("iframe", "mv", "residual")}
    expected = _reference_compressed_inputs(raw, spec, train,
                                            np.random.default_rng(seed) if train else None, True)
    for m in got:
      assert got[m].dtype == np.float32 and got[m].shape == (3, 24, 24, expected[m].shape[-1])
      if m == "mv":
        np.testing.assert_array_equal(got[m], expected[m].astype(np.float32))
      else:
        np.testing.assert_allclose(got[m], expected[m], rtol=0, atol=1e-6, err_msg=m)

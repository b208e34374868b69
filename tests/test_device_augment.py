"""config.data.augment='device': the compressed kind's crops, flips and normalisation in jit.

The device half (kd_jax.data.device_augment) is held to the host path (pipeline._compressed_input,
itself tested against the plain NumPy composition and OpenCV) on real encoded clips with the same
seeds, to OpenCV's resize, and to the host's taps and normalisations value by value.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd_jax import train
from kd_jax.data import bench
from kd_jax.data import device_augment
from kd_jax.data import pipeline
from kd_jax.data import transforms
from kd_jax.errors import UserError
from kd_jax.train import mesh as mesh_lib

MODALITIES = ("iframe", "mv", "residual")
# One I-frame level after normalisation: 1 / (255 std) of the widest channel.
LEVEL = float(1 / (255 * min(transforms.IMAGENET_STD)))


@pytest.fixture(scope="module")
def records():
  # Real MPEG-4 streams (GOP 12, so positions 1..13 are P-frames of two GOPs), 64x48.
  return bench.make_records(4, 14, 48, 64)


def _decode(spec, records, train_mode, seeds, flip):
  """Elements of ``spec`` for (record, seed) pairs, and whether each rng ended in the same state."""
  out, ends = [], []
  for k, seed in enumerate(seeds):
    rng = np.random.default_rng(seed) if train_mode else None
    dec = pipeline.DecodeVideo(spec, train=train_mode, flip=flip)
    out.append(dec.decode(k % len(records), records[k % len(records)], rng))
    ends.append(rng.random() if train_mode else None)
  return {k: np.stack([e[k] for e in out]) for k in out[0]}, ends


def _augment(batch):
  sizes = device_augment.output_sizes(batch)
  return jax.device_get(jax.jit(lambda b: device_augment.augment(b, sizes))(batch))


def _compare(host, dev):
  """Asserts the device inputs are the host's, within the stated tolerances."""
  assert set(dev) == set(host), (sorted(dev), sorted(host))
  for m in MODALITIES:
    h, d = host[m], np.asarray(dev[m])
    assert d.dtype == h.dtype == np.float32 and d.shape == h.shape, (m, d.shape, h.shape)
    diff = np.abs(d - h)
    if m == "residual":
      # One float32 multiply-add, possibly fused on the device: within an ulp of values <= 2.2.
      assert diff.max() <= 5e-7, (m, diff.max())
    else:
      # Exact levels, except where the resize's last bit (the matmul may fuse the two taps'
      # multiply-add where the host rounds twice) straddles a rounding tie or a truncation
      # threshold: then one level, on a tiny fraction of values.
      step = LEVEL if m == "iframe" else 1 / 255
      off = diff > 1e-6
      assert off.mean() <= 2e-3, (m, off.mean())
      assert diff.max() <= step * 1.0001, (m, diff.max())
  for k in host:
    if k not in MODALITIES:
      np.testing.assert_array_equal(dev[k], host[k], err_msg=k)


@pytest.mark.parametrize("train_mode, flip, resize", [
    (True, True, 40), (True, False, 40), (False, False, 40), (False, False, None),
    (True, True, None)])
def test_device_inputs_are_the_host_inputs(records, train_mode, flip, resize):
  spec = pipeline.make_spec("compressed", crop_size=24, resize_size=resize, flip=flip)
  seeds = list(range(6))
  host, host_ends = _decode(spec, records, train_mode, seeds, flip)
  raw, dev_ends = _decode(dataclasses.replace(spec, augment="device"), records, train_mode, seeds,
                          flip)
  assert host_ends == dev_ends  # the same draws, in the same order
  for m in MODALITIES:
    assert m not in raw  # a hookup that skips the device step fails on a missing key
    assert raw[m + "_raw"].dtype == device_augment.RAW_DTYPES[m]
    assert raw[m + "_raw"].shape[:4] == (6, 3, 48, 64)
    assert raw[m + "_box"].dtype == raw[m + "_view"].dtype == np.int32
  if train_mode and flip:
    assert 0 < raw["mv_flip"].mean() < 1  # both branches are exercised
  if not train_mode:
    assert not raw["iframe_flip"].any()
  _compare(host, _augment(raw))


def test_coviar_loader_with_jitter_and_a_subset_of_modalities(records):
  spec = pipeline.make_spec("compressed", crop_size=32, resize_size=40, flip=True,
                            sampling="coviar", iframe_jitter="train_and_test",
                            modalities=("iframe", "mv"))
  for train_mode in (True, False):
    host, host_ends = _decode(spec, records, train_mode, range(4), True)
    raw, dev_ends = _decode(dataclasses.replace(spec, augment="device"), records, train_mode,
                            range(4), True)
    assert host_ends == dev_ends and "residual_raw" not in raw
    dev = _augment(raw)
    host["residual"] = dev["residual"] = np.zeros((1,), np.float32)  # not produced: skip
    _compare(host, dev)


def _host_taps(length, scaled, offset, size):
  lo, hi, w0, w1 = transforms._linear_taps(length, scaled)  # pylint: disable=protected-access
  window = slice(offset, offset + size)
  return lo[window], hi[window], w0[window], w1[window]


def test_taps_are_the_hosts():
  taps = jax.jit(device_augment.taps, static_argnums=4)
  # Training: windows of every side to the crop; eval: whole frames resized, then a centre crop.
  cases = [(n, c, 0, c) for c in (24, 32, 112, 224) for n in range(1, 341, 3)]
  cases += [(n, r, (r - c) // 2, c) for r, c in ((256, 224), (40, 24), (128, 112))
            for n in (48, 64, 240, 256, 320, 340)]
  for length, scaled, offset, size in cases:
    start = 7
    lo, hi, w0, w1 = jax.device_get(taps(start, length, scaled, offset, size))
    hlo, hhi, hw0, hw1 = _host_taps(length, scaled, offset, size)
    np.testing.assert_array_equal(lo, hlo + start)
    np.testing.assert_array_equal(hi, hhi + start)
    # The host rounds a float64 fraction, XLA's float32 division may be an ulp or two away
    # (1 ulp at 0.5-1 is 6e-8): 2 ulps.
    np.testing.assert_allclose(w0, hw0, rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(w1, hw1, rtol=0, atol=1.2e-7)
    np.testing.assert_array_equal(w0, np.float32(1) - w1)


@pytest.mark.parametrize("box, size", [((5, 7, 20, 30), 16), ((0, 0, 37, 53), 64),
                                       ((3, 11, 9, 14), 23)])
def test_bilinear_matches_cv2_resize_of_the_crop(box, size):
  cv2 = pytest.importorskip("cv2")  # the test extra has it (kd-jax[flow])
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, size=(2, 3, 37, 53, 3)).astype(np.uint8)
  top, left, h, w = box
  view = np.array([[size, 0, size]] * 2, np.int32)
  got = np.asarray(jax.jit(device_augment.resized_crop, static_argnums=4)(
      frames, np.array([box] * 2, np.int32), view, np.array([False, True]), size))
  for b in range(2):
    for s in range(3):
      crop = frames[b, s, top:top + h, left:left + w].astype(np.float32)
      want = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
      if b == 1:
        want = want[:, ::-1]
      # OpenCV's float path computes the same taps in its own order: float32 rounding only.
      np.testing.assert_allclose(got[b, s], want, rtol=0, atol=2e-4)


def test_mv_normalisation_truncates_exactly_at_every_threshold():
  thresholds = device_augment._mv_thresholds()[1:129]  # pylint: disable=protected-access
  near = [np.nextafter(thresholds, np.float32(d)) for d in (-np.inf, np.inf)]
  values = np.concatenate([thresholds, *near, np.float32([0, 1e-30, 19.99, 20, 20.1, 300])])
  values = np.concatenate([values, -values]).astype(np.float32)
  y = np.stack([values, values[::-1]], axis=-1)[None]  # [1, N, 2]
  for flip in (False, True):
    got = np.asarray(jax.jit(device_augment.normalize_mv)(y, np.array([flip])))
    want = y.copy()
    if flip:
      want[..., 0] = -want[..., 0]
    # normalize_mv truncates in float64, where a float32 times 6.375 is exact.
    np.testing.assert_array_equal(got, transforms.normalize_mv(want))
  # The thresholds are where the truncation steps: k * 20 / 127.5 is never a float32.
  assert (np.trunc(thresholds.astype(np.float64) * 6.375) == np.arange(1, 129)).all()
  assert (np.trunc(near[0].astype(np.float64) * 6.375) == np.arange(0, 128)).all()


def test_iframe_and_residual_normalisation_match_the_host():
  rng = np.random.default_rng(0)
  y = np.concatenate([np.arange(256, dtype=np.float32) + f for f in (0, 0.5, -0.5, 0.49)])
  y = np.stack([y, y[::-1], rng.uniform(-3, 260, y.size).astype(np.float32)], axis=-1)
  want = transforms.normalize_rgb(transforms.round_uint8(y.copy()))
  np.testing.assert_array_equal(np.asarray(device_augment.normalize_iframe(y)), want)
  r = rng.uniform(-300, 300, size=(1000, 3)).astype(np.float32)
  r[:6] = [[-128, 127, 0], [-129, 128, 1], [-255, 255, -1], [0.5, -0.5, 127.5], [-128.5, 3, 4],
           [1, 2, 3]]
  np.testing.assert_allclose(np.asarray(device_augment.normalize_residual(r)),
                             transforms.normalize_residual(r), rtol=0, atol=5e-7)


def test_bad_augment_settings_are_one_line_errors():
  with pytest.raises(ValueError, match="augment must be one of"):
    pipeline.make_spec("compressed", augment="gpu")
  for kind in ("rgb_clip", "rgb_segments"):
    with pytest.raises(ValueError, match="for kind 'compressed' only"):
      pipeline.make_spec(kind, augment="device")
  block = lambda **kw: ml_collections.ConfigDict(kw)
  assert pipeline.loader_options(block(augment="device"), "compressed")["augment"] == "device"
  assert pipeline.loader_options(block())["augment"] == "host"
  for cfg, kind, match in [
      (block(augment="gpu"), "compressed", "config.data.augment must be one of host, device"),
      (block(augment="device"), "rgb_clip", "compressed-video inputs only"),
      (block(augment="device", cache_views=4), "compressed", "cache_views=0"),
  ]:
    with pytest.raises(UserError, match=match) as e:
      pipeline.loader_options(cfg, kind)
    assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="lacks mv_box"):
    device_augment.output_sizes({"mv_raw": np.zeros((1, 1, 4, 4, 2), np.int16)})


def test_host_to_global_augments_on_the_devices_batch_sharded(records, cpu_devices):
  spec = pipeline.make_spec("compressed", crop_size=24, resize_size=40, flip=True)
  host, _ = _decode(spec, records, True, range(8), True)
  raw, _ = _decode(dataclasses.replace(spec, augment="device"), records, True, range(8), True)
  mesh = mesh_lib.make_mesh()
  out = mesh_lib.host_to_global(raw, mesh)
  assert set(out) == set(host)
  for k, v in out.items():
    assert v.sharding.is_equivalent_to(mesh_lib.batch_sharded(mesh), v.ndim), k
  _compare(host, jax.device_get(out))
  plain = mesh_lib.host_to_global(host, mesh)  # host-augmented batches pass through as before
  np.testing.assert_array_equal(jax.device_get(plain["mv"]), host["mv"])


def _linear_stage(records, spec, num_steps):
  """A linear classifier on the clip means of the three inputs, trained on ``spec``'s stream."""
  def features(batch):
    return jnp.stack([batch[m].mean(axis=(1, 2, 3, 4)) for m in MODALITIES], axis=-1)

  def init_fn(key):
    return {"w": jax.random.normal(key, (3, 4)) * 0.1}, {}

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del frozen, rng, step
    logits = features(batch) @ params["w"]
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["label"][:, None], 1).mean()
    return loss, ({"ce": loss}, model_state)

  def eval_fn(params, model_state, frozen, batch):
    del model_state, frozen
    return {"logits": features(batch) @ params["w"]}

  def eval_data(per_host):
    ds = pipeline.make_eval(records, spec, batch_size=per_host, process_index=0, process_count=1)
    return ({**b, "mask": np.asarray(b["mask"], np.float32)} for b in ds)

  return train.Stage(
      name="linear", init_fn=init_fn, loss_fn=loss_fn, num_steps=num_steps, global_batch_size=8,
      optimizer=train.optimizer_config(name="sgd", learning_rate=0.1),
      train_data=lambda per_host: iter(pipeline.make_train(
          records, spec, batch_size=per_host, seed=0, process_index=0, process_count=1)),
      eval_fn=eval_fn, eval_data=eval_data), features


def test_runner_trains_evaluates_and_predicts_on_device_augmented_batches(
    records, tmp_path, cpu_devices):
  spec = pipeline.make_spec("compressed", crop_size=24, resize_size=40, flip=True)
  results = {}
  for augment in ("host", "device"):
    config = train.engine_config(log_every=1, checkpoint_every=10, max_to_keep=1)
    config.seed, config.selection = 0, "last"
    runner = train.Runner(config, str(tmp_path / augment))
    stage, features = _linear_stage(records, dataclasses.replace(spec, augment=augment), 2)
    result = runner.run(stage)
    eval_batches = stage.eval_data(8)
    predicted = runner.predict(lambda v, b: {"f": features(b)}, {}, eval_batches)
    results[augment] = (jax.device_get(result.state.params["w"]), result.metrics,
                        predicted["f"])
  (w_h, m_h, f_h), (w_d, m_d, f_d) = results["host"], results["device"]
  # The methods' functions see the same inputs: the same features, the same two updates.
  np.testing.assert_allclose(f_d, f_h, rtol=0, atol=1e-4)
  np.testing.assert_allclose(w_d, w_h, rtol=0, atol=1e-5)
  assert m_d.keys() == m_h.keys() and m_d["top1"] == pytest.approx(m_h["top1"])

"""GenKD passes as whole data epochs (issue 14 item 9): the padded epoch order, the whole-epoch
training stream, masked BatchNorm, and a padded GenKD batch training exactly as its real clips
alone (loss, every term, gradients, BatchNorm statistics); steps per pass = ceil(N / B)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.data import sources
from kd_jax.data import streams
from kd_jax.errors import UserError
from kd_jax.methods import genkd
from kd_jax.models import layers
from kd_jax.train import compilation

# ------------------------------------------------------------------------------------------------
# The order of a whole-epoch stream.


def test_padded_epochs_hold_every_example_once_then_padding():
  n, g = 10, 4
  assert streams.epoch_steps(n, g) == 3  # hand count: 4 + 4 + 2 real, padded to 12
  assert [streams.epoch_steps(*a) for a in ((12, 4), (13, 4), (3, 6), (9537, 6))] == [
      3, 4, 1, 1590]
  order = streams.PaddedEpochs(n, g, seed=5)
  assert order.epoch_size == 12
  epochs = []
  for e in range(3):
    items = [order[e * 12 + i] for i in range(12)]
    real = [i for i, r in items if r]
    assert sorted(real) == list(range(n))  # every example exactly once
    assert [r for _, r in items] == [True] * 10 + [False] * 2  # the padding closes the epoch
    assert all(0 <= i < n for i, _ in items)
    epochs.append(real)
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]  # a fresh order per epoch (pass)
  # (seed, epoch) fixes an epoch: a fresh object, read from the middle, agrees.
  again = streams.PaddedEpochs(n, g, seed=5)
  assert [again[12 + i][0] for i in range(10)] == epochs[1]
  np.testing.assert_array_equal(epochs[1], np.random.default_rng([5, 1]).permutation(n))
  # A batch bigger than the dataset: one padded batch per epoch.
  tiny = streams.PaddedEpochs(3, 8, seed=0)
  assert [r for _, r in (tiny[i] for i in range(8))] == [True] * 3 + [False] * 5


SIZE = dict(num_classes=2, train_clips=5, test_clips=1, num_frames=8, height=16, width=16)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
  """10 training videos."""
  dcfg = sources.data_config(config="custom", data_dir=str(tmp_path_factory.mktemp("data")),
                             auto_prepare=True, prepare_workers=1, crop_size=16, resize_size=0,
                             synthetic=SIZE)
  return streams.open_streams(dcfg, "rgb_clip", clip_len=4)


def test_whole_epoch_stream_covers_each_video_once_per_pass_and_resumes(small_data):
  n = len(small_data.opened.train)
  assert n == 10
  it = small_data.train(4, seed=3, whole_epochs=True)
  passes = []
  for _ in range(2):
    batches = [next(it) for _ in range(math.ceil(n / 4))]
    for b in batches:
      assert b["video"].shape == (4, 4, 16, 16, 3) and b["mask"].dtype == np.float32
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert mask.tolist() == [1.0] * 10 + [0.0] * 2  # only the last batch is partial
    assert sorted(index[mask > 0].tolist()) == list(range(n))
    passes.append(index[mask > 0].tolist())
  assert passes[0] != passes[1]
  # Resuming from a saved position is bit-identical.
  state = it.get_state()
  expected = next(it)
  resumed = small_data.train(4, seed=3, whole_epochs=True)
  resumed.set_state(state)
  got = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
  # Two processes of 2 together hold each global batch of 4 (positions p, p + 2, ...).
  procs = [iter(streams.make_train_epochs(small_data.opened.train, small_data.spec, batch_size=2,
                                          seed=3, process_index=p, process_count=2))
           for p in (0, 1)]
  single = small_data.train(4, seed=3, whole_epochs=True)
  for _ in range(3):
    b0, b1, b = next(procs[0]), next(procs[1]), next(single)
    np.testing.assert_array_equal(np.stack([b0["index"], b1["index"]], 1).ravel(), b["index"])
    np.testing.assert_array_equal(np.stack([b0["mask"], b1["mask"]], 1).ravel(), b["mask"])
  # The default stream is unchanged: no mask.
  assert "mask" not in next(small_data.train(4, seed=3))


# ------------------------------------------------------------------------------------------------
# Masked BatchNorm.


def test_masked_batchnorm_uses_the_real_examples_only():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 2, 3, 4)).astype(np.float32)
  mask = np.array([1, 0, 1, 1, 0], np.float32)
  bn = layers.BatchNorm(momentum=0.9, epsilon=1e-3)
  v = bn.init(jax.random.key(0), jnp.asarray(x), train=False)
  y, new = bn.apply(v, jnp.asarray(x), train=True, mask=jnp.asarray(mask),
                    mutable=["batch_stats"])
  real = x[mask > 0].reshape(-1, 4).astype(np.float64)
  mean, var = real.mean(0), real.var(0)
  np.testing.assert_allclose(np.asarray(y)[mask > 0],
                             (x[mask > 0] - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(new["batch_stats"]["var"], 0.9 + 0.1 * real.var(0, ddof=1),
                             rtol=1e-5)
  # No real example: the running statistics stay, the output is finite.
  y0, none = bn.apply(v, jnp.asarray(x), train=True, mask=jnp.zeros(5), mutable=["batch_stats"])
  assert np.all(np.isfinite(y0))
  np.testing.assert_array_equal(none["batch_stats"]["mean"], v["batch_stats"]["mean"])
  np.testing.assert_array_equal(none["batch_stats"]["var"], v["batch_stats"]["var"])


# ------------------------------------------------------------------------------------------------
# A padded GenKD batch trains as its real clips alone.

CLIP = (16, 32, 32, 3)


def _fixed_normal(key, shape=(), dtype=jnp.float32):
  """Row-independent stand-in for the CVAE's noise: the same draw for every clip, so that a
  batch of 4 and a batch of 3 give their common clips the same noise."""
  del key
  shape = tuple(shape)
  row = jnp.sin(jnp.arange(math.prod(shape[1:]), dtype=jnp.float32) * 0.37).reshape(shape[1:])
  return jnp.broadcast_to(row, shape).astype(dtype)


@pytest.mark.slow
def test_a_padded_batch_trains_as_its_real_clips_alone(monkeypatch):
  # No dropout (its draws depend on the batch shape); the CVAE's noise is made row-independent.
  kw = {"tiny": True, "dropout_rate": 0.0}
  student = genkd.build_networks("top_i3d", kw, {"tiny": True}, 4)
  teacher = genkd.build_networks("i3d", kw, {"tiny": True}, 4)
  init = lambda nets, k: compilation.jit(  # noqa: E731
      lambda k: genkd.init_variables(nets, k, CLIP), preset="fastest")(jax.random.key(k))
  params, state = init(student, 0)
  t_params, t_state = init(teacher, 1)
  t_vars = genkd.teacher_variables(
      genkd.train.TrainState(step=0, params=t_params, model_state=t_state, opt_state=None))
  frozen = {"teacher": t_vars, "use_gd": np.float32(1), "use_ad": np.float32(1)}
  rng = np.random.default_rng(0)
  video = rng.normal(size=(4, *CLIP)).astype(np.float32)
  labels = np.array([0, 3, 1, 2], np.int32)
  # The padding row repeats clip 0 (as the stream pads) but sits first, so the real rows are not
  # a prefix; a different label as well, which must not matter.
  padded = {"video": video.copy(), "label": labels, "mask": np.array([0, 1, 1, 1], np.float32)}
  padded["video"][0] = video[2]
  real = {"video": video[1:], "label": labels[1:]}
  switch = genkd.make_loss_fn(student, genkd.LossConfig(), steps_per_pass=1, teacher=teacher)
  monkeypatch.setattr(jax.random, "normal", _fixed_normal)

  def run(branch, batch, step):
    fn = jax.value_and_grad(
        lambda p: branch(p, state, frozen, batch, jax.random.key(7), jnp.int32(step)),
        has_aux=True)
    return compilation.jit(fn, preset="fastest")(params)

  for step in (0, 1):  # pass A, then pass B
    branch = switch.branches[step]
    (loss_p, (m_p, s_p)), g_p = run(branch, padded, step)
    (loss_r, (m_r, s_r)), g_r = run(branch, real, step)
    assert float(m_p["pass"]) == step
    np.testing.assert_allclose(float(loss_p), float(loss_r), rtol=1e-5)
    for key in ("cvae", "gd", "cls", "rec", "ad"):
      np.testing.assert_allclose(float(m_p[key]), float(m_r[key]), rtol=1e-5, atol=1e-7,
                                 err_msg=key)
    assert float(m_r["gd"] if step == 0 else m_r["ad"]) > 0
    # Gradients: float32 rounding through a dozen BatchNorms on 3 clips leaves ~1e-3 relative
    # differences in single leaves, as much as merely reordering the 3 clips does (measured), so
    # the whole gradient is compared by its norm (measured 3e-5 in pass A, 2e-3 in pass B);
    # counting the padding row moves it by 130% (below).
    assert _relative_error(g_p, g_r) < 1e-2, _relative_error(g_p, g_r)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(s_p), jax.tree.leaves(s_r)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  # Without the mask the padding row would count (the test can fail): pass B's loss differs.
  unmasked = {k: v for k, v in padded.items() if k != "mask"}
  (loss_u, _), g_u = run(switch.branches[1], unmasked, 1)
  assert abs(float(loss_u) - float(loss_r)) > 1e-3 and _relative_error(g_u, g_r) > 0.05


def _relative_error(a, b) -> float:
  """``||a - b|| / ||b||`` over every leaf of two gradients."""
  diff = sum(float(np.sum(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  norm = sum(float(np.sum(np.square(np.asarray(y, np.float64)))) for y in jax.tree.leaves(b))
  return math.sqrt(diff / norm)


# ------------------------------------------------------------------------------------------------
# The stage: steps per pass, config fields.


class _Opened:
  def __init__(self, n):
    self.train = list(range(n))


class _Data:
  def __init__(self, n):
    self.opened = _Opened(n)
    self.calls = []

  def train(self, per_host, *, seed, whole_epochs=False):
    self.calls.append(whole_epochs)
    return iter(())

  def eval(self, per_host):
    return iter(())


@pytest.mark.parametrize("pass_length, n, batch, want", [
    ("epoch", 9537, 6, 1590), ("stream", 9537, 6, 1589), ("epoch", 12, 4, 3), ("stream", 12, 4, 3),
    ("epoch", 3, 6, 1)])
def test_steps_per_pass_hand_counts(pass_length, n, batch, want):
  config = genkd.base_config()
  config.pass_length = pass_length
  config.student.batch_size, config.student.epochs = batch, 2
  data = _Data(n)
  setup = genkd.Setup(config, data, CLIP, None, None)
  stage, spp = genkd._stage(setup, "s", None, config.student, genkd.LossConfig(),  # pylint: disable=protected-access
                            init_fn=None, teacher=object())
  assert spp == want and stage.num_steps == 2 * 2 * want
  stage.train_data(batch)
  assert data.calls == [pass_length == "epoch"]


def test_a_bad_pass_length_is_one_clear_error():
  config = genkd.base_config()
  config.pass_length = "epochs"
  with pytest.raises(UserError, match="config.pass_length must be one of epoch, stream"):
    genkd._check_config(config)  # pylint: disable=protected-access


def _load_config(name):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(__file__).parents[1] / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"{name}_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


@pytest.mark.parametrize("name", ["genkd_ucf101", "genkd_hmdb51", "genkd_quickstart"])
def test_configs_train_whole_epochs_without_accumulation(name):
  for arg in (None, "smoke"):
    config = _load_config(name)(arg)
    # The official DataLoader(drop_last=False) per pass and iter_size 1; in the resolved config.
    assert config.pass_length == "epoch" and config.train.grad_accum_steps == 1
    assert '"pass_length": "epoch"' in config.to_json() and '"grad_accum_steps": 1' in config.to_json()
  assert isinstance(genkd.base_config().train.grad_accum_steps, int)

"""ResNet-18/50: parameter counts, tap shapes, TSN consensus, PyTorch BatchNorm semantics.

PyTorch parity of whole networks is in test_convert.py (it needs torch); these tests need only JAX.
Variables are filled from numpy rather than `model.init`, which keeps the tests free of PRNG
compilation (slow on CPU) and lets full-size models be checked through `jax.eval_shape` alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import layers


def _abstract(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def random_variables(model, shape, seed=0):
  rng = np.random.default_rng(seed)
  def fill(path, a):
    if path[-1].key in ("var", "scale"):
      return 0.5 + rng.random(a.shape, np.float32)
    fan_in = int(np.prod(a.shape[:-1])) or 1
    return (rng.normal(size=a.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, _abstract(model, shape))


@pytest.mark.parametrize("name,kwargs,expected", [
    ("resnet18", {}, 11_689_512),  # torchvision resnet18, 1000 classes
    ("resnet50", {}, 25_557_032),  # torchvision resnet50
    # PKD motion-vector net: conv1 loses an input channel (64*49), data_bn adds 2 scales + 2 biases.
    ("resnet18", {"in_channels": 2, "input_norm": True, "num_classes": 101},
     11_689_512 - 64 * 49 + 4 - 899 * 513),
])
def test_full_size_parameter_counts(name, kwargs, expected):
  model = models.get(name, **kwargs)
  variables = _abstract(model, (1, 224, 224, kwargs.get("in_channels", 3)))
  assert _count(variables["params"]) == expected


@pytest.mark.parametrize("name,expansion", [("resnet18", 1), ("resnet50", 4)])
def test_tiny_shapes_frames_and_segments(name, expansion):
  model = models.get(name, tiny=True, num_classes=5)
  variables = random_variables(model, (1, 32, 32, 3))
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))

  frames = np.random.default_rng(1).normal(size=(6, 32, 32, 3)).astype(np.float32)
  logits, feats = fn(variables, frames)
  assert logits.shape == (6, 5) and logits.dtype == jnp.float32
  widths = [8 * expansion * 2**i for i in range(4)]
  for i, (side, c) in enumerate(zip((8, 4, 2, 1), widths)):
    assert feats[f"layer{i + 1}"].shape == (6, side, side, c)
  assert feats["pooled"].shape == (6, widths[-1])

  # The same frames as 2 videos x 3 segments: taps regain the segment axis and the logits are the
  # mean of the per-frame logits (TSN consensus).
  video_logits, video_feats = fn(variables, frames.reshape(2, 3, 32, 32, 3))
  np.testing.assert_allclose(video_logits, np.asarray(logits).reshape(2, 3, 5).mean(1),
                             rtol=1e-5, atol=1e-5)
  assert video_feats["layer2"].shape == (2, 3, 4, 4, widths[1])
  np.testing.assert_allclose(video_feats["layer3"].reshape(feats["layer3"].shape),
                             feats["layer3"], rtol=1e-6, atol=1e-6)
  assert video_feats["pooled"].shape == (2, 3, widths[-1])


def test_motion_vector_variant_and_train_mode_updates():
  model = models.get("resnet18", tiny=True, num_classes=4, in_channels=2, input_norm=True)
  variables = random_variables(model, (1, 32, 32, 2))
  assert set(variables["params"]) >= {"data_bn", "conv1", "bn1", "fc"}
  assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 2, 8)
  x = np.random.default_rng(2).normal(size=(2, 3, 32, 32, 2)).astype(np.float32)
  (logits, _), updated = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  assert logits.shape == (2, 4)
  # data_bn statistics move towards the batch statistics of the raw input.
  n = x[..., 0].size
  unbiased = x.reshape(-1, 2).var(0) * n / (n - 1)
  want = 0.9 * variables["batch_stats"]["data_bn"]["var"] + 0.1 * unbiased
  np.testing.assert_allclose(updated["batch_stats"]["data_bn"]["var"], want, rtol=1e-5)


def test_batch_norm_matches_pytorch_semantics():
  """Hand-computed: train mode uses the biased batch variance, the running var the unbiased one."""
  bn = layers.BatchNorm()
  x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [6.0, 60.0]], np.float32)  # [N=4, C=2]
  variables = {"params": {"scale": np.array([2.0, 1.0], np.float32),
                          "bias": np.array([0.5, 0.0], np.float32)},
               "batch_stats": {"mean": np.array([1.0, 0.0], np.float32),
                               "var": np.array([4.0, 1.0], np.float32)}}
  y, new = bn.apply(variables, x, train=True, mutable=["batch_stats"])
  mean, var_b, var_u = 3.0, 3.5, 14.0 / 3.0  # channel 0: values 1, 2, 3, 6
  np.testing.assert_allclose(y[:, 0], 2.0 * (x[:, 0] - mean) / np.sqrt(var_b + 1e-5) + 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(new["batch_stats"]["mean"][0], 0.9 * 1.0 + 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(new["batch_stats"]["var"][0], 0.9 * 4.0 + 0.1 * var_u, rtol=1e-6)
  np.testing.assert_allclose(new["batch_stats"]["var"][1], 0.9 * 1.0 + 0.1 * 100 * var_u,
                             rtol=1e-6)
  # Eval mode: running statistics, nothing updated.
  y_eval = bn.apply(variables, x, train=False)
  np.testing.assert_allclose(y_eval[:, 0], 2.0 * (x[:, 0] - 1.0) / np.sqrt(4.0 + 1e-5) + 0.5,
                             rtol=1e-6)


def test_errors_are_clear():
  model = models.get("resnet18", tiny=True, in_channels=2)
  with pytest.raises(ValueError, match="in_channels=2"):
    _abstract(model, (1, 32, 32, 3))
  with pytest.raises(ValueError, match=r"\[B, H, W, C\] or \[B, S, H, W, C\]"):
    _abstract(model, (32, 32, 2))
  with pytest.raises(ValueError, match="stage_sizes"):
    models.get("resnet50", stage_sizes=(1, 2, 3))
  with pytest.raises(ValueError, match="num_classes"):
    models.get("resnet18", num_classes=0)
  with pytest.raises(ValueError, match="dropout_rate"):
    models.get("resnet18", dropout_rate=1.5)

"""TSM networks: the temporal shift against a loop reference, tap layouts, time mixing, sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import tsm


def _shift_reference(x, segments, div):
  """TSM's ops/temporal_shift.py semantics, written with loops over [N, T, ..., C]."""
  nt, h, w, c = x.shape
  v = x.reshape(nt // segments, segments, h, w, c)
  out = np.zeros_like(v)
  fold = c // div
  for t in range(segments):
    if t + 1 < segments:
      out[:, t, ..., :fold] = v[:, t + 1, ..., :fold]  # from the next frame
    if t >= 1:
      out[:, t, ..., fold:2 * fold] = v[:, t - 1, ..., fold:2 * fold]  # from the previous frame
    out[:, t, ..., 2 * fold:] = v[:, t, ..., 2 * fold:]
  return out.reshape(x.shape)


@pytest.mark.parametrize("c,div", [(16, 8), (20, 8), (6, 4), (3, 8)])
def test_temporal_shift_matches_reference(c, div):
  x = np.random.default_rng(c).normal(size=(2 * 4, 3, 2, c)).astype(np.float32)
  np.testing.assert_array_equal(tsm.temporal_shift(x, 4, div), _shift_reference(x, 4, div))
  with pytest.raises(ValueError, match="multiple of segments"):
    tsm.temporal_shift(x, 3, div)


def _abstract(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _numpy_variables(model, shape, seed=0):
  rng = np.random.default_rng(seed)
  def fill(path, a):
    if path[-1].key in ("var", "scale"):
      return 0.5 + rng.random(a.shape, np.float32)
    return (rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]) or 1)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, _abstract(model, shape))


@pytest.mark.parametrize("name,channels", [
    ("tsm_resnet18", (8, 16, 32, 64)),
    ("tsm_resnet50", (32, 64, 128, 256)),
    ("tsm_mobilenet_v2", (8, 8, 24, 64)),
])
def test_tiny_tap_shapes(name, channels):
  model = models.get(name, tiny=True, num_classes=5)
  variables = _abstract(model, (1, 4, 64, 64, 3))
  logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                                 jax.ShapeDtypeStruct((2, 4, 64, 64, 3), jnp.float32))
  assert logits.shape == (2, 5)
  for i, (side, c) in enumerate(zip((16, 8, 4, 2), channels)):
    assert feats[f"layer{i + 1}"].shape == (2, 4, side, side, c), name
  assert feats["pooled"].shape == (2, 4, channels[-1])
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    _abstract(model, (4, 64, 64, 3))


def test_full_size_counts_and_taps():
  # The shift has no parameters: TSM-ResNet-50 has torchvision's count; MobileNetV2 at width 1
  # has torchvision's mobilenet_v2 count (3,504,872 with 1000 classes).
  for name, count in (("tsm_resnet50", 25_557_032), ("tsm_mobilenet_v2", 3_504_872)):
    variables = _abstract(models.get(name), (1, 8, 224, 224, 3))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"])) == count
  model = models.get("tsm_mobilenet_v2")
  _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                            _abstract(model, (1, 8, 224, 224, 3)),
                            jax.ShapeDtypeStruct((1, 8, 224, 224, 3), jnp.float32))
  assert [feats[f"layer{i}"].shape[2:] for i in range(1, 5)] == [
      (56, 56, 24), (28, 28, 32), (14, 14, 96), (7, 7, 1280)]


@pytest.mark.parametrize("name,plain", [("tsm_resnet18", "resnet18"),
                                        ("tsm_mobilenet_v2", None)])
def test_shift_mixes_neighbouring_frames_only(name, plain):
  """Perturbing frame 0 changes frame 1's taps through the shift, never frame 2's in layer1."""
  model = models.get(name, tiny=True, num_classes=3)
  variables = _numpy_variables(model, (1, 4, 32, 32, 3))
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False)[1]["layer1"])
  x = np.random.default_rng(1).normal(size=(1, 4, 32, 32, 3)).astype(np.float32)
  x2 = x.copy()
  x2[:, 0] += 1.0
  delta = np.abs(np.asarray(fn(variables, x2)) - np.asarray(fn(variables, x)))
  delta = delta.max(axis=(0, 2, 3, 4))
  assert delta[0] > 0 and delta[1] > 0
  # layer1 has one shifted block in the tiny ResNet; MobileNet's layer1 stage has one too.
  assert delta[2] == 0 and delta[3] == 0
  if plain:  # same parameters without the shift: frames stay independent
    base = models.get(plain, tiny=True, num_classes=3)
    fb = jax.jit(lambda v, x: base.apply(v, x, train=False)[1]["layer1"])
    d = np.abs(np.asarray(fb(variables, x2)) - np.asarray(fb(variables, x))).max(axis=(0, 2, 3, 4))
    assert d[0] > 0 and d[1] == 0

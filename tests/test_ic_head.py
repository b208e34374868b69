"""PKD internal classifiers: exact adaptive-pool bins, head shapes, the IC table, parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import ic_head as ic


def _numpy_adaptive_pool(x, out):
  """Reference: PyTorch's rule written with loops, [floor(i n / out), ceil((i + 1) n / out))."""
  h, w = x.shape[-3:-1]
  res = np.zeros(x.shape[:-3] + (out, out, x.shape[-1]), np.float64)
  for i in range(out):
    h0, h1 = int(np.floor(i * h / out)), int(np.ceil((i + 1) * h / out))
    for j in range(out):
      w0, w1 = int(np.floor(j * w / out)), int(np.ceil((j + 1) * w / out))
      res[..., i, j, :] = x[..., h0:h1, w0:w1, :].mean(axis=(-3, -2))
  return res


def test_bins_overlap_at_14_and_are_disjoint_elsewhere():
  assert ic.adaptive_pool_bins(14, 4) == [(0, 4), (3, 7), (7, 11), (10, 14)]
  for n in (16, 28, 32, 52, 56, 60):
    bins = ic.adaptive_pool_bins(n, 4)
    assert all(b - a == n // 4 for a, b in bins) and bins[-1][1] == n
  assert ic.adaptive_pool_bins(2, 4) == [(0, 1), (0, 1), (1, 2), (1, 2)]
  with pytest.raises(ValueError):
    ic.adaptive_pool_bins(0, 4)


@pytest.mark.parametrize("h,w", [(14, 14), (52, 52), (7, 10), (3, 5), (60, 16)])
def test_adaptive_pool_matches_numpy_reference(h, w):
  x = np.random.default_rng(h * 100 + w).normal(size=(2, h, w, 3)).astype(np.float32)
  np.testing.assert_allclose(ic.adaptive_avg_pool(x, 4), _numpy_adaptive_pool(x, 4),
                             rtol=1e-5, atol=1e-6)
  # Five-dimensional input ([B, S, H, W, C]) pools the last three axes the same way.
  np.testing.assert_allclose(ic.adaptive_avg_pool(x[None], 4)[0], _numpy_adaptive_pool(x, 4),
                             rtol=1e-5, atol=1e-6)


def _abstract(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


@pytest.mark.parametrize("backbone,exit_,tap,conv_hw,params", [
    # pkd_wise.md 3.2 at 224x224: conv weights + BN (2 C) + fc (16 C K + K), K = 101.
    ("resnet18", 1, (56, 56, 64), 52, 49 * 64 * 64 + 128 + 1024 * 101 + 101),
    ("resnet18", 2, (28, 28, 128), 28, 9 * 128 * 128 + 256 + 2048 * 101 + 101),
    ("resnet18", 3, (14, 14, 256), 14, 9 * 256 * 256 + 512 + 4096 * 101 + 101),
    ("resnet50", 1, (56, 56, 256), 56, 9 * 256 * 64 + 128 + 1024 * 101 + 101),
    ("resnet50", 2, (28, 28, 512), 28, 9 * 512 * 256 + 512 + 4096 * 101 + 101),
    ("resnet50", 3, (14, 14, 1024), 14, 9 * 1024 * 1024 + 2048 + 16384 * 101 + 101),
])
def test_pkd_ic_table(backbone, exit_, tap, conv_hw, params):
  head = models.get("ic_head", num_classes=101, backbone=backbone, exit=exit_)
  variables = _abstract(head, (1,) + tap)
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"])) == params
  shapes = jax.eval_shape(lambda v, x: head.apply(v, x, train=False), variables,
                          jax.ShapeDtypeStruct((2, 3) + tap, jnp.float32))
  logits, feats = shapes
  assert logits.shape == (2, 101)
  assert feats["conv"].shape == (2, 3, conv_hw, conv_hw, head.features)
  assert feats["pooled"].shape == (2, 3, 4, 4, head.features)


def test_ic_heads_on_tiny_backbone_taps_and_consensus():
  backbone = models.get("resnet18", tiny=True, num_classes=5)
  heads = models.get("ic_heads", backbone="resnet18", num_classes=5, tiny=True)
  x = jax.ShapeDtypeStruct((2, 3, 64, 64, 3), jnp.float32)
  bvars = _abstract(backbone, (1, 64, 64, 3))
  _, taps = jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), bvars, x)
  assert [taps[t].shape[-1] for t in ic.IC_TAPS] == [8, 16, 32]
  hvars = jax.eval_shape(lambda t: heads.init(jax.random.key(0), t, train=False), taps)
  assert hvars["params"]["ic1"]["conv"]["kernel"].shape == (7, 7, 8, 8)
  assert hvars["params"]["ic3"]["conv"]["kernel"].shape == (3, 3, 32, 32)
  logits, feats = jax.eval_shape(lambda v, t: heads.apply(v, t, train=False), hvars, taps)
  assert logits.shape == (2, 3, 5)
  assert feats["ic2"].shape == (2, 3, 4, 4, 16)

  # Consensus: a 5-D tap gives the mean over segments of the per-frame logits.
  head = models.get("ic_head", num_classes=4, features=6, kernel_size=3)
  rng = np.random.default_rng(0)
  hv = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                    _abstract(head, (1, 14, 14, 5)))
  hv["batch_stats"]["bn"]["var"] = np.abs(hv["batch_stats"]["bn"]["var"]) + 0.5
  tap = rng.normal(size=(2, 3, 14, 14, 5)).astype(np.float32)
  fn = jax.jit(lambda v, t: head.apply(v, t, train=False)[0])
  np.testing.assert_allclose(fn(hv, tap), np.asarray(fn(hv, tap.reshape(6, 14, 14, 5)))
                             .reshape(2, 3, 4).mean(1), rtol=1e-5, atol=1e-5)


def test_ic_head_argument_errors():
  with pytest.raises(ValueError, match="exit must be 1, 2 or 3"):
    models.get("ic_head", num_classes=3, backbone="resnet18", exit=4)
  with pytest.raises(ValueError, match="allowed"):
    models.get("ic_head", num_classes=3, backbone="vgg", exit=1)
  with pytest.raises(ValueError, match="features="):
    models.get("ic_head", num_classes=3)
  head = models.get("ic_head", num_classes=3, backbone="resnet18", exit=1)
  with pytest.raises(ValueError, match="does not fit"):
    _abstract(head, (1, 4, 4, 64))


@pytest.mark.torch
def test_ic_head_matches_pytorch():
  torch = pytest.importorskip("torch")
  tnn = torch.nn
  g = torch.Generator().manual_seed(0)
  k, cin, cout, classes = 3, 6, 5, 7
  ref = tnn.Sequential(tnn.Conv2d(cin, cout, k, 1, 1, bias=False), tnn.BatchNorm2d(cout),
                       tnn.AdaptiveAvgPool2d(4), tnn.Flatten(), tnn.Linear(16 * cout, classes))
  with torch.no_grad():
    for t in ref.state_dict().values():
      if t.dtype.is_floating_point:
        t.copy_(torch.rand(t.shape, generator=g) + 0.2)
  ref.eval()
  sd = {n: t.numpy() for n, t in ref.state_dict().items()}
  from kd_jax.models import convert  # pylint: disable=g-import-not-at-top
  variables = {
      "params": {"conv": {"kernel": convert.torch_to_flax(sd["0.weight"], "kernel")},
                 "bn": {"scale": sd["1.weight"], "bias": sd["1.bias"]},
                 "fc": {"kernel": convert.torch_to_flax(sd["4.weight"], "kernel"),
                        "bias": sd["4.bias"]}},
      "batch_stats": {"bn": {"mean": sd["1.running_mean"], "var": sd["1.running_var"]}},
  }
  head = models.get("ic_head", num_classes=classes, features=cout, kernel_size=k)
  x = np.random.default_rng(3).normal(size=(2, 14, 14, cin)).astype(np.float32)  # overlapping bins
  with torch.no_grad():
    want = ref(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    pooled = tnn.AdaptiveAvgPool2d(4)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  got, _ = jax.jit(lambda v, x: head.apply(v, x, train=False))(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ic.adaptive_avg_pool(x, 4), pooled.transpose(0, 2, 3, 1),
                             rtol=1e-5, atol=1e-6)

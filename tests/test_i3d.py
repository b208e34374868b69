"""I3D and Top-heavy I3D: full-size shapes and parameter counts, tiny forwards, PyTorch parity.

Full-size models are only traced (``jax.eval_shape``). Forward passes use the tiny width and
parameters drawn with numpy: initialising through JAX's default threefry PRNG compiles one program
per parameter shape, which costs minutes on a 2-core CPU. The parity tests build a small PyTorch
I3D written here after pytorch-i3d (zero ``F.pad`` to TF-SAME, ``Conv3d`` without bias,
``BatchNorm3d(eps=1e-3, momentum=0.01)``, zero-padded ``MaxPool3d``, ``AvgPool3d`` head), copy its
random weights in by name, and compare in train mode (batch statistics and updated running
statistics) and in eval mode.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models import i3d as i3d_lib
from kd_jax.models import layers3d

TOL = 1e-4


def _numel(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _abstract(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return variables, out


def _numpy_variables(model, shape, seed=0):
  """Variables of the right shapes, drawn with numpy (fast on CPU, see the module docstring)."""
  abstract, _ = _abstract(model, shape)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    if "'kernel'" in name:
      fan_in = math.prod(leaf.shape[:-1])
      return jnp.asarray(rng.normal(0, math.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
    return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _analytic_backbone_params(top_heavy: bool) -> int:
  """Conv kernels + BN scale/bias, counted from the published layer table (genkd.md 3.1)."""

  def unit(cin, cout, k):
    return cin * cout * math.prod(k) + 2 * cout

  total = unit(3, 64, (1, 7, 7) if top_heavy else (7, 7, 7))
  total += unit(64, 64, (1, 1, 1))
  total += unit(64, 192, (1, 3, 3) if top_heavy else (3, 3, 3))
  cin = 192
  blocks = [
      ("3b", (64, 96, 128, 16, 32, 32)),
      ("3c", (128, 128, 192, 32, 96, 64)),
      ("4b", (192, 96, 208, 16, 48, 64)),
      ("4c", (160, 112, 224, 24, 64, 64)),
      ("4d", (128, 128, 256, 24, 64, 64)),
      ("4e", (112, 144, 288, 32, 64, 64)),
      ("4f", (256, 160, 320, 32, 128, 128)),
      ("5b", (256, 160, 320, 32, 128, 128)),
      ("5c", (384, 192, 384, 48, 128, 128)),
  ]
  for name, (c0, c1a, c1b, c2a, c2b, c3) in blocks:
    k3 = (1, 3, 3) if top_heavy and name in ("3b", "3c", "4b", "4c") else (3, 3, 3)
    total += unit(cin, c0, (1, 1, 1)) + unit(cin, c1a, (1, 1, 1)) + unit(c1a, c1b, k3)
    total += unit(cin, c2a, (1, 1, 1)) + unit(c2a, c2b, k3) + unit(cin, c3, (1, 1, 1))
    cin = c0 + c1b + c2b + c3
  return total


# ---------------------------------------------------------------------------------------------
# Padding and pooling.


@pytest.mark.parametrize(
    "size,kernel,stride,expected",
    [
        (224, 7, 2, (2, 3)),  # the stem on a 224 clip: asymmetric, extra pixel behind
        (64, 7, 2, (2, 3)),
        (13, 7, 2, (3, 3)),  # odd length: total = k - n % s = 6
        (7, 3, 1, (1, 1)),
        (8, 2, 2, (0, 0)),
        (7, 2, 2, (0, 1)),
        (5, 1, 1, (0, 0)),
    ],
)
def test_tf_same_padding_matches_pytorch_i3d_rule(size, kernel, stride, expected):
  assert layers3d.tf_same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("size,kernel,stride", [(13, 7, 2), (14, 3, 2), (9, 2, 2), (6, 3, 1)])
def test_tf_same_padding_equals_xla_same(size, kernel, stride):
  x = jax.random.normal(jax.random.key(1), (1, size, 1))
  k = jax.random.normal(jax.random.key(2), (kernel, 1, 1))
  dims = ("NWC", "WIO", "NWC")
  ours = jax.lax.conv_general_dilated(
      x, k, (stride,), [layers3d.tf_same_padding(size, kernel, stride)], dimension_numbers=dims
  )
  xla = jax.lax.conv_general_dilated(x, k, (stride,), "SAME", dimension_numbers=dims)
  np.testing.assert_allclose(ours, xla, rtol=1e-6, atol=1e-6)


def test_max_pool_pads_with_zeros_not_minus_inf():
  x = -1.0 - jnp.arange(4.0).reshape(1, 1, 2, 2, 1)  # all negative
  y = layers3d.max_pool3d_same(x, (1, 3, 3), (1, 1, 1))
  # Every 3x3 window of a 2x2 map reaches the zero padding, so PyTorch's F.pad + MaxPool3d gives 0
  # everywhere (a -inf padded pool would give -1 at every position).
  np.testing.assert_array_equal(np.asarray(y), np.zeros((1, 1, 2, 2, 1)))
  z = layers3d.max_pool3d_same(jnp.arange(16.0).reshape(1, 1, 4, 4, 1), (1, 3, 3), (1, 2, 2))
  # 4 % 2 == 0 -> total pad 1 -> (0, 1); windows start at 0 and 2.
  np.testing.assert_array_equal(np.asarray(z)[0, 0, :, :, 0], [[10.0, 11.0], [14.0, 15.0]])


# ---------------------------------------------------------------------------------------------
# Full size, traced only.


@pytest.mark.parametrize(
    "builder,published,top_heavy",
    [(i3d_lib.i3d, 12.29e6, False), (i3d_lib.top_i3d, 10.43e6, True)],
)
def test_full_size_shapes_and_parameter_counts(builder, published, top_heavy):
  model = builder(num_classes=101)
  variables, (logits, features) = _abstract(model, (2, 64, 224, 224, 3))
  assert features["Mixed_4f"].shape == (2, 16, 14, 14, 832)
  assert features["Mixed_5c"].shape == (2, 8, 7, 7, 1024)
  assert logits.shape == (2, 7, 101)  # AvgPool [2, 7, 7] VALID: T 8 -> 7 per-step logits
  assert set(features) == set(i3d_lib.ENDPOINTS)
  backbone_only = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, method="extract_features"),
      variables,
      jax.ShapeDtypeStruct((2, 64, 224, 224, 3), jnp.float32),
  )
  assert backbone_only["Mixed_5c"].shape == (2, 8, 7, 7, 1024)

  params = dict(variables["params"])
  head = params.pop("logits")
  backbone = _numel(params)
  assert abs(backbone - published) / published < 0.01
  assert backbone == _analytic_backbone_params(top_heavy)
  assert _numel(head) == 1024 * 101 + 101
  assert _numel(variables["batch_stats"]) == 14_560  # 7,280 BN channels x (mean, var)


def test_top_heavy_differs_from_i3d_exactly_in_the_lower_layers():
  shape = (1, 16, 224, 224, 3)
  full, _ = _abstract(i3d_lib.i3d(), shape)
  top, _ = _abstract(i3d_lib.top_i3d(), shape)

  def kernel(v, *path):
    node = v["params"]
    for p in path:
      node = node[p]
    return node["conv3d"]["kernel"].shape

  assert kernel(full, "Conv3d_1a_7x7") == (7, 7, 7, 3, 64)
  assert kernel(top, "Conv3d_1a_7x7") == (1, 7, 7, 3, 64)
  assert kernel(full, "Conv3d_2c_3x3") == (3, 3, 3, 64, 192)
  assert kernel(top, "Conv3d_2c_3x3") == (1, 3, 3, 64, 192)
  for block in i3d_lib.MIXED_CHANNELS:
    for branch in ("b1b", "b2b"):
      kt_full = kernel(full, block, branch)[0]
      kt_top = kernel(top, block, branch)[0]
      assert kt_full == 3
      assert kt_top == (1 if block in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c") else 3)
  # Only those kernels differ; every other parameter has the same shape.
  diff = jax.tree.map(lambda a, b: a.shape != b.shape, full["params"], top["params"])
  changed = [jax.tree_util.keystr(p) for p, d in jax.tree_util.tree_leaves_with_path(diff) if d]
  assert len(changed) == 2 + 4 * 2


def test_head_pool_must_fit_the_feature_map():
  model = i3d_lib.i3d(width=1 / 16)  # default head_pool (2, 7, 7) needs a 7x7 Mixed_5c
  with pytest.raises(ValueError, match="head_pool=None"):
    _abstract(model, (1, 16, 64, 64, 3))
  _, (logits, _) = _abstract(i3d_lib.i3d(tiny=True, num_classes=3), (1, 16, 64, 64, 3))
  assert logits.shape == (1, 1, 3)


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="init_scheme"):
    _abstract(i3d_lib.i3d(tiny=True, init_scheme="xavier"), (1, 16, 32, 32, 3))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
    _abstract(i3d_lib.i3d(tiny=True), (16, 32, 32, 3))


# ---------------------------------------------------------------------------------------------
# Initialisation.


def test_pytorch_default_init_bounds():
  unit = layers3d.Unit3D(16, (3, 3, 3), use_batch_norm=False, use_bias=True)
  # rbg keys: the threefry initialiser compiles slowly on CPU and the distribution is the same.
  params = unit.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 4, 4, 4, 8)), train=False)
  kernel = np.asarray(params["params"]["conv3d"]["kernel"])
  bias = np.asarray(params["params"]["conv3d"]["bias"])
  bound = 1 / math.sqrt(8 * 27)  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
  assert np.abs(bias).max() <= bound and np.abs(bias).std() > 0
  np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.05)

  flax_unit = layers3d.Unit3D(16, (3, 3, 3), use_bias=True, init_scheme="flax")
  v = flax_unit.init(jax.random.key(0, impl="rbg"), jnp.zeros((1, 4, 4, 4, 8)), train=False)
  np.testing.assert_array_equal(v["params"]["conv3d"]["bias"], 0.0)
  np.testing.assert_array_equal(v["params"]["bn"]["scale"], 1.0)
  np.testing.assert_array_equal(v["batch_stats"]["bn"]["var"], 1.0)


# ---------------------------------------------------------------------------------------------
# Tiny forward passes.


def test_tiny_forward_train_mode():
  model = i3d_lib.top_i3d(tiny=True, num_classes=5)
  shape = (2, 13, 40, 44, 3)  # the parity tests use the same shape, sharing compiled ops
  variables = _numpy_variables(model, shape)
  x = jax.random.normal(jax.random.key(0), shape)
  (logits, feats), updates = model.apply(
      variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
  )
  assert logits.shape == (2, 1, 5)
  assert feats["Mixed_5c"].shape == (2, 2, 2, 2, 64)
  assert feats["Mixed_4f"].shape == (2, 4, 3, 3, 52)
  assert all(bool(jnp.isfinite(f).all()) for f in feats.values())
  assert bool((feats["Mixed_5c"] >= 0).all())  # post-ReLU concatenation
  # Running statistics were updated (their exact values are checked in the PyTorch parity test).
  old = variables["batch_stats"]["Conv3d_1a_7x7"]["bn"]["mean"]
  new = updates["batch_stats"]["Conv3d_1a_7x7"]["bn"]["mean"]
  assert not np.allclose(new, old)
  # The head in eval mode against a numpy reference (pool [2, H, W] VALID, 1x1x1 conv).
  f5c = np.asarray(feats["Mixed_5c"])
  head = model.apply(variables, jnp.asarray(f5c), train=False, method="classify")
  k = np.asarray(variables["params"]["logits"]["conv3d"]["kernel"])[0, 0, 0]
  b = np.asarray(variables["params"]["logits"]["conv3d"]["bias"])
  np.testing.assert_allclose(head, f5c.mean(axis=(1, 2, 3))[:, None] @ k + b, rtol=TOL, atol=TOL)


def test_head_alone_pool_and_dropout():
  """``method='classify'`` runs only the head, as GenKD does on the foreground feature F * A."""
  c = 16
  model = i3d_lib.i3d(num_classes=c, width=1 / 64)  # Mixed_5c has 16 channels
  f = jax.random.uniform(jax.random.key(0), (3, 8, 7, 7, c), minval=0.5, maxval=1.0)
  # An identity 1x1x1 conv makes the head's output the (dropped-out) pooled feature itself.
  eye = jnp.eye(c)[None, None, None]
  variables = {"params": {"logits": {"conv3d": {"kernel": eye, "bias": jnp.zeros(c)}}}}
  fn = np.asarray(f)
  pooled = np.stack([fn[:, t : t + 2].mean(axis=(1, 2, 3)) for t in range(7)], 1)  # [3, 7, c]

  out = model.apply(variables, f, train=False, method="classify")
  assert out.shape == (3, 7, c)
  np.testing.assert_allclose(out, pooled, rtol=1e-6, atol=1e-6)

  def train(seed):
    return np.asarray(
        model.apply(
            variables, f, train=True, method="classify", rngs={"dropout": jax.random.key(seed)}
        )
    )

  a, b = train(1), train(2)
  np.testing.assert_array_equal(a, train(1))
  assert not np.array_equal(a, b)
  # Inverted dropout with rate 0.5: every value is either dropped or doubled.
  kept = a != 0
  np.testing.assert_allclose(a[kept], 2 * pooled[kept], rtol=1e-6)
  assert 0.35 < kept.mean() < 0.65


# ---------------------------------------------------------------------------------------------
# PyTorch parity.


def _torch_reference(top_heavy: bool, width: float, num_classes: int, dropout: float):
  """A small pytorch-i3d ``InceptionI3d`` (or GenKD's Top-heavy variant), written for this test."""
  torch = pytest.importorskip("torch")
  tnn = torch.nn
  F = torch.nn.functional

  def same_pad(x, kernel, stride):
    pads = []
    for n, k, s in zip(x.shape[2:], kernel, stride):
      total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
      pads.append((total // 2, total - total // 2))
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, [wf, wb, hf, hb, tf, tb])  # zeros

  class Unit3D(tnn.Module):
    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, bias=False,
                 relu=True):
      super().__init__()
      self.kernel, self.stride, self.relu = kernel, stride, relu
      self.conv3d = tnn.Conv3d(cin, cout, kernel, stride, padding=0, bias=bias)
      self.bn = tnn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x):
      x = self.conv3d(same_pad(x, self.kernel, self.stride))
      if self.bn is not None:
        x = self.bn(x)
      return torch.relu(x) if self.relu else x

  class Pool(tnn.MaxPool3d):
    def forward(self, x):
      return super().forward(same_pad(x, self.kernel_size, self.stride))

  class Inception(tnn.Module):
    def __init__(self, cin, c, temporal):
      super().__init__()
      k3 = (3, 3, 3) if temporal else (1, 3, 3)
      self.b0 = Unit3D(cin, c[0])
      self.b1a = Unit3D(cin, c[1])
      self.b1b = Unit3D(c[1], c[2], k3)
      self.b2a = Unit3D(cin, c[3])
      self.b2b = Unit3D(c[3], c[4], k3)
      self.b3a = Pool(k3, (1, 1, 1))
      self.b3b = Unit3D(cin, c[5])

    def forward(self, x):
      return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                        self.b3b(self.b3a(x))], dim=1)

  def w(c):
    return max(1, int(round(c * width)))

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      self.order = []

      def add(name, module):
        self.add_module(name, module)
        self.order.append(name)

      add("Conv3d_1a_7x7", Unit3D(3, w(64), (1, 7, 7) if top_heavy else (7, 7, 7), (2, 2, 2)))
      add("MaxPool3d_2a_3x3", Pool((1, 3, 3), (1, 2, 2)))
      add("Conv3d_2b_1x1", Unit3D(w(64), w(64)))
      add("Conv3d_2c_3x3", Unit3D(w(64), w(192), (1, 3, 3) if top_heavy else (3, 3, 3)))
      add("MaxPool3d_3a_3x3", Pool((1, 3, 3), (1, 2, 2)))
      cin = w(192)
      table = [
          ("Mixed_3b", (64, 96, 128, 16, 32, 32)), ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
          ("MaxPool3d_4a_3x3", None),
          ("Mixed_4b", (192, 96, 208, 16, 48, 64)), ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
          ("Mixed_4d", (128, 128, 256, 24, 64, 64)), ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
          ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
          ("MaxPool3d_5a_2x2", None),
          ("Mixed_5b", (256, 160, 320, 32, 128, 128)), ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
      ]
      for name, c in table:
        if c is None:
          add(name, Pool((3, 3, 3), (2, 2, 2)) if name.endswith("4a_3x3") else
              Pool((2, 2, 2), (2, 2, 2)))
          continue
        c = [w(v) for v in c]
        two_d = top_heavy and name in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c")
        add(name, Inception(cin, c, temporal=not two_d))
        cin = c[0] + c[2] + c[4] + c[5]
      self.dropout = tnn.Dropout(dropout)
      self.logits = Unit3D(cin, num_classes, bn=False, bias=True, relu=False)

    def forward(self, x):
      feats = {}
      for name in self.order:
        x = getattr(self, name)(x)
        feats[name] = x
      pool = tnn.functional.avg_pool3d(x, (2, x.shape[3], x.shape[4]), stride=1)
      logits = self.logits(self.dropout(pool)).squeeze(3).squeeze(3)  # [B, K, T']
      return logits, feats

  return torch, Net()


def _randomise_torch(torch, net, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in net.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif name.endswith("conv3d.weight"):
        fan_in = math.prod(t.shape[1:])
        t.copy_(torch.randn(t.shape, generator=g) * math.sqrt(2.0 / fan_in))
      else:
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _torch_to_flax(state_dict):
  """The name mapping of the i3d module docstring, applied to a pytorch-i3d state dict."""
  params, stats = {}, {}
  for name, t in state_dict.items():
    *path, leaf = name.split(".")
    a = t.detach().numpy()
    if leaf == "num_batches_tracked":
      continue
    if leaf in ("running_mean", "running_var"):
      tree, leaf = stats, {"running_mean": "mean", "running_var": "var"}[leaf]
    else:
      tree = params
      if path[-1] == "conv3d" and leaf == "weight":
        leaf, a = "kernel", a.transpose(2, 3, 4, 1, 0)
      elif path[-1] == "bn" and leaf == "weight":
        leaf = "scale"
    for p in path:
      tree = tree.setdefault(p, {})
    tree[leaf] = jnp.asarray(a)
  return {"params": params, "batch_stats": stats}


@pytest.mark.torch
@pytest.mark.parametrize("top_heavy", [False, True], ids=["i3d", "top_i3d"])
def test_parity_with_pytorch_i3d(top_heavy):
  width, classes = 1 / 16, 6
  torch, net = _torch_reference(top_heavy, width, classes, dropout=0.0)
  _randomise_torch(torch, net, seed=3)
  variables = _torch_to_flax(net.state_dict())
  builder = i3d_lib.top_i3d if top_heavy else i3d_lib.i3d
  model = builder(width=width, head_pool=None, num_classes=classes, dropout_rate=0.0)
  # Odd T, H, W exercise the asymmetric TF-SAME padding of the strided convs and pools.
  x = np.random.default_rng(0).normal(size=(2, 13, 40, 44, 3)).astype(np.float32)
  xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())

  # Train mode: batch statistics, and running statistics updated with PyTorch momentum 0.01.
  net.train()
  with torch.no_grad():
    t_logits, t_feats = net(xt)
  (logits, feats), updates = model.apply(
      variables, jnp.asarray(x), train=True, mutable=["batch_stats"]
  )
  np.testing.assert_allclose(logits, t_logits.numpy().transpose(0, 2, 1), rtol=TOL, atol=TOL)
  for name in ("Conv3d_1a_7x7", "MaxPool3d_3a_3x3", "Mixed_4f", "Mixed_5c"):
    np.testing.assert_allclose(
        feats[name], t_feats[name].numpy().transpose(0, 2, 3, 4, 1), rtol=TOL, atol=TOL,
        err_msg=name,
    )
  t_stats = _torch_to_flax(net.state_dict())["batch_stats"]
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=TOL, atol=1e-5),
      updates["batch_stats"], t_stats,
  )

  # Eval mode with the updated running statistics.
  variables = _torch_to_flax(net.state_dict())
  net.eval()
  with torch.no_grad():
    t_logits, t_feats = net(xt)
  logits, feats = model.apply(variables, jnp.asarray(x), train=False)
  np.testing.assert_allclose(logits, t_logits.numpy().transpose(0, 2, 1), rtol=TOL, atol=TOL)
  np.testing.assert_allclose(
      feats["Mixed_5c"], t_feats["Mixed_5c"].numpy().transpose(0, 2, 3, 4, 1), rtol=TOL, atol=TOL
  )

"""GenKD's attention head and CVAE: sizes, attention range, modes and RNG streams, references.

Full-size modules are only traced (``jax.eval_shape``). The references are a numpy attention head
and, with PyTorch installed, the official modules re-written here (``Conv3d`` + ``GroupNorm`` +
``F.interpolate`` + ``Conv1d`` + ``Linear`` head; ``CEncoder`` / ``CDecoder`` with
``ConvTranspose3d``), with random weights copied in by the mapping of the module docstring.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.models import generative_attention as ga
from kd_jax.models import layers3d

TOL = 1e-4
KEY = lambda seed: jax.random.key(seed, impl="rbg")  # noqa: E731  (fast init on CPU)


def _numel(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _features(shape, seed=0):
  # Post-ReLU, like I3D features.
  return jax.nn.relu(jax.random.normal(jax.random.key(seed), shape))


def _init(module, *args, **kwargs):
  return module.init({"params": KEY(0), "reparam": KEY(1), "prior": KEY(2)}, *args, **kwargs)


def _jit_apply(module):
  """``module.apply`` under jit: one compile beats dozens of op-by-op compiles for these sizes."""
  return jax.jit(module.apply, static_argnames=("train", "mode", "method"))


def _jit_init(module, *args, **kwargs):
  return jax.jit(lambda *a: _init(module, *a, **kwargs))(*args)


# ---------------------------------------------------------------------------------------------
# Sizes at full scale, traced only.


def _analytic_sizes(c, t, h, w, hidden=512):
  head = (c * h * w * hidden + hidden) + 2 * hidden + (hidden * 3 * c + c) + 2 * c + (c * t + t)
  enc = (c * h * w * c + c) + 2 * c + (2 * c * c + c) + (c * c + c) + (c * 2 * c + 2 * c)
  dec = (2 * c * c + c) + (c * c + c) + (c * c + c) + (c * c * h * w + c) + 2 * c
  return head, enc, dec


@pytest.mark.parametrize(
    "shape,published",
    [((2, 8, 7, 7, 1024), (27.3e6, 112e6)), ((2, 16, 14, 14, 832), None)],
    ids=["Mixed_5c", "Mixed_4f"],
)
def test_full_size_parameter_counts_and_shapes(shape, published):
  model = ga.generative_attention()
  f = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda f: _init(model, f, train=False), f)
  out = jax.eval_shape(
      lambda v, f: model.apply(v, f, train=False, mode="prior", rngs={"prior": KEY(0)}),
      variables,
      f,
  )
  b, t, h, w, c = shape
  assert out.attention.shape == out.mean.shape == out.z.shape == (b, t, c)
  assert out.reconstruction.shape == shape
  p = variables["params"]
  head, enc, dec = _analytic_sizes(c, t, h, w)
  assert _numel(p["attention_head"]) == head
  assert _numel(p["cvae"]["encoder"]) == enc
  assert _numel(p["cvae"]["decoder"]) == dec
  if published:
    assert abs(head - published[0]) / published[0] < 0.01
    assert abs(enc + dec - published[1]) / published[1] < 0.01


# ---------------------------------------------------------------------------------------------
# Attention head.


def _np_group_norm(x, groups, scale, bias, eps=1e-5):
  """GroupNorm over all non-batch axes, channels last."""
  b, c = x.shape[0], x.shape[-1]
  g = x.reshape(b, -1, groups, c // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_attention_head(f, p, groups):
  """The head written with numpy (float64): conv (1,H,W) VALID, GN, nearest, conv1d, GN, linear."""
  f = np.asarray(f, np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  b, t, h, w, c = f.shape
  x = np.einsum("bthwc,hwco->bto", f, p["conv3d"]["kernel"][0]) + p["conv3d"]["bias"]
  x = np.maximum(_np_group_norm(x, groups, p["gn3d"]["scale"], p["gn3d"]["bias"]), 0)
  idx = np.floor(np.arange(c) * (t / c)).astype(int)  # nearest; exact for these sizes
  x = x[:, idx]  # [B, C, hidden]
  xp = np.pad(x, ((0, 0), (1, 1), (0, 0)))
  k = p["conv1d"]["kernel"]  # [3, hidden, C]
  y = sum(xp[:, j : j + c] @ k[j] for j in range(3)) + p["conv1d"]["bias"]
  y = np.maximum(_np_group_norm(y, groups, p["gn1d"]["scale"], p["gn1d"]["bias"]), 0)
  a = np.swapaxes(y, 1, 2) @ p["linear"]["kernel"] + p["linear"]["bias"]  # [B, C, T]
  return np.swapaxes(1 / (1 + np.exp(-a)), 1, 2)


@pytest.mark.parametrize("t", [4, 3], ids=["integer-ratio", "fractional-ratio"])
def test_attention_head_values_shape_and_numpy_reference(t):
  head = ga.generative_attention(part="attention", hidden_channels=32, num_groups=8)
  f = _features((2, t, 3, 3, 64))
  variables = _jit_init(head, f, train=False)
  a = _jit_apply(head)(variables, f, train=True)
  assert a.shape == (2, t, 64)
  assert bool(((a > 0) & (a < 1)).all())
  np.testing.assert_allclose(a, _np_attention_head(f, variables["params"], 8), rtol=TOL, atol=TOL)


def test_nearest_indices_follow_pytorch():
  np.testing.assert_array_equal(ga.nearest_indices(8, 1024), np.repeat(np.arange(8), 128))
  np.testing.assert_array_equal(ga.nearest_indices(64, 832), np.repeat(np.arange(64), 13))
  torch = pytest.importorskip("torch")
  for n_in, n_out in [(3, 64), (5, 96), (7, 1024), (32, 1024), (6, 832), (9, 16)]:
    src = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1)
    ref = torch.nn.functional.interpolate(src, [n_out, 1]).reshape(-1).numpy().astype(int)
    np.testing.assert_array_equal(ga.nearest_indices(n_in, n_out), ref, err_msg=f"{n_in}->{n_out}")


# ---------------------------------------------------------------------------------------------
# CVAE modes and randomness.


@pytest.fixture(scope="module")
def tiny():
  model = ga.generative_attention(tiny=True)
  f = _features((2, 4, 3, 3, 64))
  return model, f, _jit_init(model, f, train=False), _jit_apply(model)


def test_posterior_mode_reparameterisation(tiny):
  model, f, variables, apply = tiny
  noise = jax.random.normal(jax.random.key(5), (2, 4, 64))
  out = apply(variables, f, train=True, mode="posterior", noise=noise)
  assert out.mean.shape == out.log_var.shape == out.z.shape == (2, 4, 64)
  assert out.reconstruction.shape == f.shape
  assert bool((out.reconstruction >= 0).all())  # final ReLU
  expected_z = out.mean + np.exp(0.5 * out.log_var) * noise
  np.testing.assert_allclose(out.z, expected_z, rtol=1e-6, atol=1e-6)
  # The same through the 'reparam' stream: standardised residuals look like N(0, 1) noise.
  out = apply(variables, f, train=True, mode="posterior", rngs={"reparam": jax.random.key(7)})
  eps = np.asarray((out.z - out.mean) / np.exp(0.5 * out.log_var))
  assert abs(eps.mean()) < 0.15 and abs(eps.std() - 1) < 0.15
  enc_mean, enc_log_var = _jit_apply(ga.generative_attention(part="cvae"))(
      {"params": variables["params"]["cvae"]}, f, out.attention, method="encode"
  )
  np.testing.assert_allclose(out.mean, enc_mean, rtol=1e-6)
  np.testing.assert_allclose(out.log_var, enc_log_var, rtol=1e-6)


def test_prior_mode_is_centred_on_the_attention(tiny):
  model, f, variables, apply = tiny
  zero = apply(variables, f, train=False, mode="prior", noise=jnp.zeros((2, 4, 64)))
  np.testing.assert_array_equal(zero.z, zero.attention)
  np.testing.assert_array_equal(zero.mean, zero.attention)
  np.testing.assert_array_equal(zero.log_var, 0.0)
  out = apply(variables, f, train=False, mode="prior", rngs={"prior": jax.random.key(3)})
  eps = np.asarray(out.z - out.attention)  # z ~ N(A, I)
  assert abs(eps.mean()) < 0.15 and abs(eps.std() - 1) < 0.15
  # Prior mode needs no encoder: the decoder alone, with spatial_shape, given A.
  cvae = ga.generative_attention(part="cvae", spatial_shape=(3, 3))
  dec_only = {"params": {"decoder": variables["params"]["cvae"]["decoder"]}}
  rec = _jit_apply(cvae)(dec_only, None, out.attention, mode="prior", noise=out.z - out.attention)
  np.testing.assert_allclose(rec.reconstruction, out.reconstruction, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,stream", [("posterior", "reparam"), ("prior", "prior")])
def test_rng_streams(tiny, mode, stream):
  model, f, variables, apply = tiny

  def run(seed):
    return apply(variables, f, train=True, mode=mode, rngs={stream: jax.random.key(seed)})

  a, b = run(1), run(2)
  np.testing.assert_array_equal(a.z, run(1).z)
  np.testing.assert_array_equal(a.reconstruction, run(1).reconstruction)
  assert not np.allclose(a.z, b.z)
  assert not np.allclose(a.reconstruction, b.reconstruction)
  np.testing.assert_array_equal(a.attention, b.attention)  # the head is deterministic
  other = {"posterior": "prior", "prior": "reparam"}[mode]
  with pytest.raises(Exception, match=stream):
    apply(variables, f, train=True, mode=mode, rngs={other: jax.random.key(1)})


def test_halves_apply_alone_and_precomputed_attention(tiny):
  model, f, variables, apply = tiny
  p = variables["params"]
  att = apply({"params": {"attention_head": p["attention_head"]}}, f, train=False,
                    mode="attention")
  assert att.mean is None and att.reconstruction is None
  # GenKD's generative distillation runs the teacher CVAE on the student's (F, A): the CVAE
  # parameters alone suffice when A is given.
  other_a = jax.nn.sigmoid(jax.random.normal(jax.random.key(9), att.attention.shape))
  noise = jax.random.normal(jax.random.key(4), other_a.shape)
  out = apply({"params": {"cvae": p["cvae"]}}, f, train=False, mode="posterior",
                    attention=other_a, noise=noise)
  np.testing.assert_array_equal(out.attention, other_a)
  cvae = ga.generative_attention(part="cvae")
  direct = _jit_apply(cvae)({"params": p["cvae"]}, f, other_a, mode="posterior", noise=noise)
  np.testing.assert_allclose(out.reconstruction, direct.reconstruction, rtol=1e-6, atol=1e-6)


def test_reconstruction_term_reaches_the_attention_head(tiny):
  """GenKD's L_rec = mean((Dec(A + eps, A) - F)^2) trains the head through both uses of A."""
  model, f, variables, apply = tiny

  def loss(head_params):
    params = {**variables["params"], "attention_head": head_params}
    out = model.apply({"params": params}, f, train=True, mode="prior",
                      noise=jnp.zeros((2, 4, 64)))
    return jnp.mean((out.reconstruction - f) ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"]["attention_head"])
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_errors_are_clear():
  f = jax.ShapeDtypeStruct((1, 2, 3, 3, 48), jnp.float32)
  trace_init = lambda m, *a, **k: jax.eval_shape(lambda *x: _init(m, *x, **k), *a)  # noqa: E731
  with pytest.raises(ValueError, match="num_groups"):
    trace_init(ga.generative_attention(tiny=True), f, train=False)  # 48 % 32 != 0
  model = ga.generative_attention(tiny=True, num_groups=16)
  variables = trace_init(model, f, train=False)
  with pytest.raises(ValueError, match="mode"):
    jax.eval_shape(lambda v, f: model.apply(v, f, train=False, mode="sample"), variables, f)
  cvae = ga.generative_attention(part="cvae", num_groups=16)
  a = jax.ShapeDtypeStruct((1, 2, 48), jnp.float32)
  with pytest.raises(ValueError, match="spatial_shape"):
    jax.eval_shape(lambda v, a: cvae.apply(v, None, a, mode="prior", rngs={"prior": KEY(0)}),
                   {"params": variables["params"]["cvae"]}, a)
  with pytest.raises(ValueError, match="does not match"):
    trace_init(cvae, f, jax.ShapeDtypeStruct((1, 3, 48), jnp.float32))
  with pytest.raises(ValueError, match="part"):
    ga.generative_attention(part="decoder")


def test_pytorch_default_init_bounds():
  # PyTorch's ConvTranspose3d weight is [in, out, *k] and its fan_in reads dim 1 (out): with
  # transpose_kernel=True the Flax kernel is [*k, out, in] and the usual fan_in axis (-2) is out.
  cvae = ga.generative_attention(part="cvae", num_groups=4)
  f = jax.ShapeDtypeStruct((1, 1, 3, 3, 8), jnp.float32)
  a = jax.ShapeDtypeStruct((1, 1, 8), jnp.float32)
  shapes = jax.eval_shape(lambda f, a: _init(cvae, f, a), f, a)["params"]
  assert shapes["decoder"]["deconv3d"]["kernel"].shape == (1, 3, 3, 8, 8)
  k = layers3d.torch_kernel_init()(KEY(0), (1, 3, 3, 32, 4))  # [*k, out=32, in=4]
  assert 0.9 / math.sqrt(32 * 9) < float(jnp.abs(k).max()) <= 1 / math.sqrt(32 * 9)
  b = layers3d.torch_bias_init(32 * 9)(KEY(1), (4096,))
  assert 0.9 / math.sqrt(32 * 9) < float(jnp.abs(b).max()) <= 1 / math.sqrt(32 * 9)
  w = layers3d.torch_kernel_init()(KEY(2), (2 * 64, 64))  # Linear 2C -> C: fan_in 128
  assert 0.9 / math.sqrt(128) < float(jnp.abs(w).max()) <= 1 / math.sqrt(128)


# ---------------------------------------------------------------------------------------------
# PyTorch parity with the official modules.


def _torch_modules(c, hidden, groups, t, h, w):
  torch = pytest.importorskip("torch")
  tnn = torch.nn
  F = torch.nn.functional

  class Head(tnn.Module):  # BDNet_student.deconv1 + Att_Head_5c
    def __init__(self):
      super().__init__()
      self.deconv1 = tnn.Sequential(tnn.Conv3d(c, hidden, [1, h, w]), tnn.GroupNorm(groups, hidden),
                                    tnn.ReLU())
      self.conv1d = tnn.Conv1d(hidden, c, 3)  # Unit1D: SAME padding (1, 1) added in forward
      self.gn1d = tnn.GroupNorm(groups, c)
      self.linear = tnn.Linear(c, t)

    def forward(self, f):
      x = self.deconv1(f).squeeze(-1)  # [B, hidden, T, 1]
      x = F.interpolate(x, [c, 1]).squeeze(-1)  # [B, hidden, C]
      x = torch.relu(self.gn1d(self.conv1d(F.pad(x, [1, 1]))))
      return torch.sigmoid(self.linear(x))  # [B, C, T]

  class Encoder(tnn.Module):  # CEncoder
    def __init__(self):
      super().__init__()
      self.con1 = tnn.Sequential(tnn.Conv3d(c, c, [1, h, w]), tnn.GroupNorm(groups, c), tnn.ReLU())
      self.fc1, self.fc2, self.fc3 = tnn.Linear(2 * c, c), tnn.Linear(c, c), tnn.Linear(c, 2 * c)

    def forward(self, x, att):
      x = self.con1(x).squeeze(-1).squeeze(-1)
      x = torch.cat([x, att], dim=1).permute(0, 2, 1)
      x = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
      return x[:, :, :c], x[:, :, c:]

  class Decoder(tnn.Module):  # CDecoder
    def __init__(self):
      super().__init__()
      self.fc1, self.fc2, self.fc3 = tnn.Linear(2 * c, c), tnn.Linear(c, c), tnn.Linear(c, c)
      self.deconv = tnn.Sequential(tnn.ConvTranspose3d(c, c, [1, h, w]), tnn.GroupNorm(groups, c),
                                   tnn.ReLU())

    def forward(self, z, att):
      x = torch.cat([z, att.permute(0, 2, 1)], dim=-1)
      x = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
      return self.deconv(x.permute(0, 2, 1).unsqueeze(-1).unsqueeze(-1))

  torch.manual_seed(0)
  mods = Head(), Encoder(), Decoder()
  with torch.no_grad():  # non-trivial GroupNorm affine parameters
    for m in mods:
      for name, prm in m.named_parameters():
        if prm.ndim == 1 and "weight" in name:
          prm.copy_(1 + 0.2 * torch.randn(prm.shape))
        elif prm.ndim == 1:
          prm.copy_(0.2 * torch.randn(prm.shape))
  return torch, mods


def _conv(m):
  """The generic kernel rule: PyTorch ``[a, b, *k]`` -> Flax ``[*k, b, a]``; Linear ``[out, in]``.

  It applies unchanged to ``ConvTranspose3d`` (``[in, out, *k]`` -> ``[*k, out, in]``), whose Flax
  counterpart uses ``transpose_kernel=True``.
  """
  w = m.weight.detach().numpy()
  k = w.transpose(*range(2, w.ndim), 1, 0) if w.ndim > 2 else w.T
  return {"kernel": jnp.asarray(k.copy()), "bias": jnp.asarray(m.bias.detach().numpy())}


def _gn(m):
  return {
      "scale": jnp.asarray(m.weight.detach().numpy()),
      "bias": jnp.asarray(m.bias.detach().numpy()),
  }


@pytest.mark.torch
@pytest.mark.parametrize("t", [4, 3], ids=["integer-ratio", "fractional-ratio"])
def test_parity_with_official_modules(t):
  c, hidden, groups, h, w = 64, 32, 8, 3, 3
  torch, (head, enc, dec) = _torch_modules(c, hidden, groups, t, h, w)
  params = {
      "attention_head": {
          "conv3d": _conv(head.deconv1[0]), "gn3d": _gn(head.deconv1[1]),
          "conv1d": _conv(head.conv1d), "gn1d": _gn(head.gn1d), "linear": _conv(head.linear),
      },
      "cvae": {
          "encoder": {"conv3d": _conv(enc.con1[0]), "gn": _gn(enc.con1[1]), "fc1": _conv(enc.fc1),
                      "fc2": _conv(enc.fc2), "fc3": _conv(enc.fc3)},
          "decoder": {"fc1": _conv(dec.fc1), "fc2": _conv(dec.fc2), "fc3": _conv(dec.fc3),
                      "deconv3d": _conv(dec.deconv[0]), "gn": _gn(dec.deconv[1])},
      },
  }
  apply = _jit_apply(ga.generative_attention(hidden_channels=hidden, num_groups=groups))
  f = np.asarray(_features((2, t, h, w, c), seed=4))
  noise = np.random.default_rng(0).normal(size=(2, t, c)).astype(np.float32)
  out = apply({"params": params}, jnp.asarray(f), train=False, mode="posterior",
                    noise=jnp.asarray(noise))
  prior = apply({"params": params}, jnp.asarray(f), train=False, mode="prior",
                      noise=jnp.asarray(noise))

  with torch.no_grad():
    ft = torch.from_numpy(f.transpose(0, 4, 1, 2, 3).copy())
    att = head(ft)  # [B, C, T]
    mean, log_var = enc(ft, att)  # [B, T, C]
    eps = torch.from_numpy(noise)
    rec = dec(mean + torch.exp(0.5 * log_var) * eps, att)
    rec_prior = dec(att.permute(0, 2, 1) + eps, att)  # CVAE 'inference' mode

  np.testing.assert_allclose(out.attention, att.numpy().transpose(0, 2, 1), rtol=TOL, atol=TOL)
  np.testing.assert_allclose(out.mean, mean.numpy(), rtol=TOL, atol=TOL)
  np.testing.assert_allclose(out.log_var, log_var.numpy(), rtol=TOL, atol=TOL)
  to_cl = lambda r: r.numpy().transpose(0, 2, 3, 4, 1)  # noqa: E731
  np.testing.assert_allclose(out.reconstruction, to_cl(rec), rtol=TOL, atol=TOL)
  np.testing.assert_allclose(prior.reconstruction, to_cl(rec_prior), rtol=TOL, atol=TOL)

"""PyTorch -> Flax weight import: key mapping, errors, and parity against PyTorch references.

The parity tests use the small reference modules of `torch_reference.py` (torchvision's ResNet
layout, CoViAR's wrapper, pytorch-i3d's inception block, written from scratch). Weights and BN
statistics are random, converted with `kd_jax.models.convert`, and the Flax outputs must agree
within 1e-4 in eval mode and in train mode (batch statistics and updated running statistics).
Without torch those tests skip; the mapping tests run on numpy alone.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy  # a test dependency (pyproject's [test] extra), not an optional one

from kd_jax import models
from kd_jax.models import convert
from kd_jax.models import i3d

from fake_checkpoints import torch_layout_state_dict

TOL = 1e-4


@pytest.fixture(name="tr")
def _torch_reference():
  """The PyTorch reference modules; skips the test when torch is not installed."""
  pytest.importorskip("torch")
  import torch_reference  # pylint: disable=g-import-not-at-top
  return torch_reference


def _nchw(torch, x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


def _channels_last(t):
  return np.moveaxis(t.detach().numpy(), 1, -1)


def _close(a, b, what):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL, err_msg=what)


def _run(model, variables, x, train):
  mutable = ["batch_stats"] if train else []
  fn = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))
  return fn(variables, x)


@pytest.mark.torch
@pytest.mark.parametrize("name,block,stages", [
    ("resnet18", "TorchBasicBlock", (2, 1, 1, 1)),
    ("resnet50", "TorchBottleneck", (1, 2, 1, 1)),  # covers identity and projection bottlenecks
])
def test_resnet_parity_eval_and_train(tr, name, block, stages):
  torch = tr.torch
  ref = tr.randomize(tr.TorchResNet(getattr(tr, block), stages, width=8, num_classes=7), seed=1)
  conv = convert.convert_state_dict(ref.state_dict(), name, width=8, stage_sizes=stages)
  assert conv.model_kwargs["num_classes"] == 7 and conv.model_kwargs["in_channels"] == 3
  model = conv.build()
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)

  ref.eval()
  with torch.no_grad():
    want_logits, want_taps = ref(_nchw(torch, x))
  (logits, taps), _ = _run(model, conv.variables, x, train=False)
  _close(logits, want_logits.numpy(), "eval logits")
  for k, v in want_taps.items():
    _close(taps[k], _channels_last(v), f"eval {k}")

  # Train mode: batch statistics in the forward pass, running stats updated (unbiased variance).
  ref.train()
  with torch.no_grad():
    want_logits, _ = ref(_nchw(torch, x))
  (logits, _), updated = _run(model, conv.variables, x, train=True)
  _close(logits, want_logits.numpy(), "train logits")
  after = convert.convert_state_dict(ref.state_dict(), name, width=8, stage_sizes=stages)
  jax.tree.map(lambda a, b: _close(a, b, "running stats"),
               updated["batch_stats"], after.variables["batch_stats"])


@pytest.mark.torch
def test_coviar_motion_vector_checkpoint_through_cli(tr, tmp_path):
  """2-channel conv1 + data_bn, wrapped as CoViAR saves it (`module.base_model.*`, `state_dict`)."""
  torch = tr.torch
  base = tr.TorchResNet(tr.TorchBasicBlock, (1, 1, 1, 1), width=8, num_classes=5, in_channels=2)
  ref = tr.randomize(tr.TorchCoviar(base, 2), seed=2).eval()
  wrapped = {f"module.{k}": v for k, v in ref.state_dict().items()}
  src = os.path.join(tmp_path, "mv_checkpoint.pth.tar")
  torch.save({"epoch": 3, "arch": "resnet18", "state_dict": wrapped, "best_prec1": 0.5}, src)
  dst = os.path.join(tmp_path, "mv_flax")
  rc = convert.main([src, dst, "--model", "resnet18",
                     "--kwargs", '{"width": 8, "stage_sizes": [1, 1, 1, 1]}'])
  assert rc == 0
  assert convert.main([src, dst, "--model", "resnet18"]) == 1  # DST exists, no --force

  loaded = convert.load_converted(dst)
  assert loaded.model_name == "resnet18"
  assert loaded.model_kwargs["in_channels"] == 2 and loaded.model_kwargs["input_norm"] is True
  model = loaded.build()
  # Three TSN segments per video: logits are the mean over segments.
  x = np.random.default_rng(1).normal(size=(2, 3, 32, 32, 2)).astype(np.float32)
  with torch.no_grad():
    want, _ = ref(_nchw(torch, x.reshape(6, 32, 32, 2)))
  (logits, taps), _ = _run(model, loaded.variables, x, train=False)
  _close(logits, want.numpy().reshape(2, 3, 5).mean(1), "segment-averaged logits")
  assert taps["layer1"].shape == (2, 3, 8, 8, 8)


@pytest.mark.torch
def test_errors_list_every_problem(tr):
  torch = tr.torch
  ref = tr.TorchResNet(tr.TorchBasicBlock, (1, 1, 1, 1), width=8, num_classes=5)
  sd = dict(ref.state_dict())
  del sd["layer2.0.bn1.running_var"]
  sd["extra.weight"] = torch.zeros(3)
  sd["layer3.0.conv2.weight"] = torch.zeros(32, 32, 5, 5)
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict(sd, "resnet18", width=8, stage_sizes=(1, 1, 1, 1))
  msg = str(e.value)
  assert "layer2.0.bn1.running_var" in msg and "extra.weight" in msg
  assert "layer3.0.conv2.weight" in msg and "(3, 3, 32, 32)" in msg
  # The default depth (2-2-2-2) does not silently accept a 1-1-1-1 checkpoint.
  with pytest.raises(convert.ConversionError, match="layer1.1.conv1.weight"):
    convert.convert_state_dict(ref.state_dict(), "resnet18", width=8)
  # Extra entries can be dropped explicitly.
  clean = dict(ref.state_dict(), **{"aux.weight": torch.zeros(2)})
  convert.convert_state_dict(clean, "resnet18", width=8, stage_sizes=(1, 1, 1, 1),
                             allow_unexpected=True)
  with pytest.raises(ValueError, match="convertible"):
    convert.convert_state_dict(sd, "ic_head")


def test_key_mapping_without_torch():
  assert convert.torch_key("params", ("layer2_0", "downsample_conv", "kernel")) == \
      "layer2.0.downsample.0.weight"
  assert convert.torch_key("batch_stats", ("layer4_1", "downsample_bn", "var")) == \
      "layer4.1.downsample.1.running_var"
  assert convert.torch_key("params", ("data_bn", "scale")) == "data_bn.weight"
  assert convert.torch_key("params", ("Mixed_3b", "b1a", "conv3d", "kernel")) == \
      "Mixed_3b.b1a.conv3d.weight"
  keys = convert.normalize_keys({
      "module.base_model.layer1.0.conv1.net.weight": np.zeros(1),
      "module.new_fc.bias": np.zeros(1),
      "module.data_bn.num_batches_tracked": np.zeros(()),
  })
  assert sorted(keys) == ["fc.bias", "layer1.0.conv1.weight"]
  w = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)
  assert convert.torch_to_flax(w, "kernel")[4, 6, 2, 1] == w[1, 2, 4, 6]
  assert convert.torch_to_flax(np.zeros((4, 9)), "kernel").shape == (9, 4)
  assert set(convert.SPECS) <= set(models.names())


def test_safetensors_message_when_missing(tmp_path, monkeypatch):
  path = os.path.join(tmp_path, "w.safetensors")
  open(path, "wb").close()
  # A None entry in sys.modules makes the import fail as if the package were not installed.
  monkeypatch.setitem(sys.modules, "safetensors", None)
  monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
  with pytest.raises(ImportError, match="pip install safetensors"):
    convert.load_state_dict(path)


def test_safetensors_file_converts_like_the_state_dict(tmp_path):
  model = models.get("resnet18", num_classes=5, tiny=True)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                               train=False))
  sd = torch_layout_state_dict(abstract, np.random.default_rng(0))
  path = os.path.join(tmp_path, "w.safetensors")
  safetensors.numpy.save_file(sd, path)
  loaded = convert.load_state_dict(path)
  assert sorted(loaded) == sorted(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(loaded[key], value)
  from_file = convert.convert_state_dict(loaded, "resnet18", tiny=True).variables
  from_dict = convert.convert_state_dict(sd, "resnet18", tiny=True).variables
  for a, b in zip(jax.tree.leaves(from_file), jax.tree.leaves(from_dict)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tsm_checkpoint_names():
  """TSM's checkpoints: `module.base_model.*`, shift wrappers `conv1.net`, classifier `new_fc`."""
  model = models.get("tsm_resnet50", tiny=True, num_classes=4)
  sd = torch_layout_state_dict(convert.abstract_variables(model, (1, 2, 32, 32, 3)),
                                np.random.default_rng(0))
  tsm_sd = {}
  for k, v in sd.items():
    k = k.replace(".conv1.", ".conv1.net.") if k.startswith("layer") else k
    k = "new_fc." + k[3:] if k.startswith("fc.") else "base_model." + k
    tsm_sd["module." + k] = v
  assert "module.base_model.layer1.0.conv1.net.weight" in tsm_sd
  conv = convert.convert_state_dict(tsm_sd, "tsm_resnet50", tiny=True)
  assert conv.model_kwargs["num_classes"] == 4
  np.testing.assert_array_equal(conv.variables["params"]["fc"]["kernel"], sd["fc.weight"].T)


@pytest.mark.parametrize("name", ["i3d", "top_i3d"])
def test_i3d_checkpoint_names_cover_the_model(name):
  """pytorch-i3d names (GenKD prefix included) map onto every I3D variable, in both directions."""
  model = models.get(name, tiny=True, num_classes=9)
  abstract = convert.abstract_variables(model, (1, 16, 64, 64, 3))
  sd = torch_layout_state_dict(abstract, np.random.default_rng(0))
  assert "Mixed_3b.b1a.conv3d.weight" in sd and "logits.conv3d.bias" in sd
  assert "Conv3d_1a_7x7.bn.running_mean" in sd
  wrapped = {f"backbone._model.{k}": v for k, v in sd.items()}
  wrapped["backbone._model.Mixed_5c.b0.bn.num_batches_tracked"] = np.zeros(())
  conv = convert.convert_state_dict(wrapped, name, tiny=True)
  assert conv.model_kwargs["num_classes"] == 9
  w = sd["Conv3d_1a_7x7.conv3d.weight"]  # [O, I, t, h, w]
  got = conv.variables["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"]
  np.testing.assert_array_equal(got, np.transpose(w, (2, 3, 4, 1, 0)))


@pytest.mark.torch
def test_i3d_inception_block_parity(tr):
  """An inception block with TF-SAME padding and the zero-padded SAME max-pool branch."""
  torch = tr.torch
  channels = (4, 3, 5, 2, 3, 4)
  ref = tr.randomize(tr.TorchInception(6, channels), seed=5).eval()
  block = i3d.InceptionBlock(channels)
  x = np.random.default_rng(4).normal(size=(2, 5, 7, 6, 6)).astype(np.float32)  # [B, T, H, W, C]
  abstract = convert.abstract_variables(block, x.shape)
  variables = convert.map_state_dict(
      convert.normalize_keys(convert.state_dict_to_numpy(ref.state_dict())), abstract)
  with torch.no_grad():
    want = ref(_nchw(torch, x)).numpy()
  got = jax.jit(lambda v, x: block.apply(v, x, train=False))(variables, x)
  _close(got, np.moveaxis(want, 1, -1), "inception block")

"""2-channel (optical-flow) I3D and Top-I3D: the model option, weight import, PyTorch parity.

Issue 18, item 3; genkd.md 3.1 and 7.2. Two official layouts, faked with their exact names and
full-size shapes and random values:

* pytorch-i3d's ``flow_imagenet.pt``: the names of ``rgb_imagenet.pt`` (``InceptionI3d``, logits
  first) with a 2-channel stem ``Conv3d_1a_7x7.conv3d.weight`` ``[64, 2, 7, 7, 7]`` and 400
  Kinetics classes; written before PyTorch tracked BatchNorm batches, so no
  ``num_batches_tracked`` (both forms are accepted).
* GenKD's flow student ``BDNet_student(in_channels=2)``: the 344 backbone-plus-classifier entries
  that ``test_Top_I3D_att_fusion*.py`` copies (``backbone._model.``, ``logits`` first because
  ``InceptionI3d.__init__`` registers it before ``build()`` adds the endpoints; 2 + 57 conv/BN
  units x 6 with ``num_batches_tracked``; 101 classes, ``replace_logits(101)`` being hard-coded).

The PyTorch network is the pytorch-i3d reference of ``test_i3d.py`` with its stem rebuilt for 2
input channels (pytorch-i3d's ``InceptionI3d(in_channels=2)``). The files go through the CLI with
no flags, and the converted Flax model must reproduce the PyTorch logits and features on the same
2-channel clip within 1e-4, the tolerance of the RGB parity tests.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import models
from kd_jax.models import convert
from kd_jax.models import i3d as i3d_lib

from fake_checkpoints import torch_layout_state_dict
import test_i3d

TOL = 1e-4
# Backbone parameters of the RGB models, as published in kd_jax.models.i3d (and checked against
# the layer table by test_i3d.py).
RGB_BACKBONE_PARAMS = {"i3d": 12_287_264, "top_i3d": 10_429_088}
FLOW_PRIMARY_UNITS = 57  # 3 stem units + 9 inception blocks x 6 units


def _flow_reference(top_heavy: bool, num_classes: int, seed: int):
  """Full-width pytorch-i3d reference taking 2-channel clips, random weights, eval mode."""
  torch, net = test_i3d._torch_reference(top_heavy, 1.0, num_classes, dropout=0.0)
  unit3d = type(net.Conv3d_1a_7x7)
  # Replacing the attribute keeps the module's place in the state dict, as in pytorch-i3d.
  net.Conv3d_1a_7x7 = unit3d(2, 64, (1, 7, 7) if top_heavy else (7, 7, 7), (2, 2, 2))
  test_i3d._randomise_torch(torch, net, seed)
  return torch, net.eval()


def _pytorch_i3d_order(state_dict) -> dict:
  """pytorch-i3d's key order: `logits` is registered in __init__, the endpoints in build()."""
  logits = {k: v for k, v in state_dict.items() if k.startswith("logits.")}
  return {**logits, **{k: v for k, v in state_dict.items() if k not in logits}}


def _check_parity(torch, net, loaded, shape):
  """Eval-mode logits and endpoints of the converted model against the PyTorch reference."""
  # head_pool=None: the reference pools the whole Mixed_5c map, so a small clip works at full
  # width; it does not change any variable.
  model = models.get(loaded.model_name, **loaded.model_kwargs, head_pool=None, dropout_rate=0.0)
  # Odd sizes exercise the asymmetric TF-SAME padding of the strided stem and pools.
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  with torch.no_grad():
    want_logits, want_feats = net(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))))
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(loaded.variables, x)
  assert logits.shape == (shape[0], 1, loaded.model_kwargs["num_classes"])
  np.testing.assert_allclose(logits, want_logits.numpy().transpose(0, 2, 1), rtol=TOL, atol=TOL,
                             err_msg="logits")
  for name in ("Conv3d_1a_7x7", "Mixed_3c", "Mixed_4f", "Mixed_5c"):
    np.testing.assert_allclose(feats[name], want_feats[name].numpy().transpose(0, 2, 3, 4, 1),
                               rtol=TOL, atol=TOL, err_msg=name)


def _save(torch, sd, path):
  torch.save({k: v.clone() for k, v in sd.items()}, path)
  return path


# ---------------------------------------------------------------------------------------------
# The model option.


def test_in_channels_pins_the_clip_channels():
  def stem_kernel(model, channels):
    x = jax.ShapeDtypeStruct((1, 16, 32, 32, channels), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return v["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"].shape

  flow = i3d_lib.i3d(tiny=True, in_channels=2, num_classes=3)
  assert stem_kernel(flow, 2) == (7, 7, 7, 2, 4)
  assert stem_kernel(i3d_lib.top_i3d(tiny=True, in_channels=2), 2) == (1, 7, 7, 2, 4)
  with pytest.raises(ValueError, match=r"in_channels=2 \(optical-flow clips\) but got 3 channels"):
    stem_kernel(flow, 3)
  with pytest.raises(ValueError, match=r"in_channels=3 \(RGB clips\) but got 2 channels"):
    stem_kernel(i3d_lib.top_i3d(tiny=True, in_channels=3), 2)
  # The default takes whatever the first clip has, as before.
  assert stem_kernel(i3d_lib.i3d(tiny=True), 2)[-2] == 2
  assert stem_kernel(i3d_lib.i3d(tiny=True), 3)[-2] == 3
  for bad in (0, True, 2.0):
    with pytest.raises(ValueError, match="in_channels must be a positive int or None"):
      stem_kernel(i3d_lib.i3d(tiny=True, in_channels=bad), 2)


@pytest.mark.parametrize("name,stem_t", [("i3d", 7), ("top_i3d", 1)])
def test_full_size_flow_shapes_and_parameter_counts(name, stem_t):
  model = models.get(name, in_channels=2, num_classes=101)
  x = jax.ShapeDtypeStruct((1, 64, 224, 224, 2), jnp.float32)
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  logits, feats = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, x)
  assert logits.shape == (1, 7, 101)
  assert feats["Mixed_5c"].shape == (1, 8, 7, 7, 1024)
  backbone = sum(int(np.prod(a.shape)) for k, sub in v["params"].items() if k != "logits"
                 for a in jax.tree.leaves(sub))
  # One input plane fewer in the stem: 64 filters of stem_t x 7 x 7.
  assert backbone == RGB_BACKBONE_PARAMS[name] - 64 * stem_t * 7 * 7


# ---------------------------------------------------------------------------------------------
# pytorch-i3d flow_imagenet.pt.


@pytest.mark.torch
def test_flow_imagenet_converts_with_no_flags_and_matches_pytorch(tmp_path, capsys):
  torch, net = _flow_reference(top_heavy=False, num_classes=400, seed=3)
  sd = _pytorch_i3d_order(
      {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")})
  assert list(sd)[:3] == ["logits.conv3d.weight", "logits.conv3d.bias",
                          "Conv3d_1a_7x7.conv3d.weight"]
  assert tuple(sd["Conv3d_1a_7x7.conv3d.weight"].shape) == (64, 2, 7, 7, 7)
  assert tuple(sd["logits.conv3d.weight"].shape) == (400, 1024, 1, 1, 1)
  assert len(sd) == 2 + FLOW_PRIMARY_UNITS * 5
  src = _save(torch, sd, os.path.join(tmp_path, "flow_imagenet.pt"))
  dst = os.path.join(tmp_path, "flow_i3d")

  assert convert.main([src, dst]) == 0
  assert "i3d(in_channels=2, num_classes=400)" in capsys.readouterr().out
  loaded = convert.load_converted(dst)
  assert loaded.model_name == "i3d" and not loaded.parts and not loaded.notes
  assert loaded.model_kwargs == {"num_classes": 400, "in_channels": 2}
  assert loaded.input_shapes[0][-1] == 2
  np.testing.assert_array_equal(
      loaded.variables["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"],
      sd["Conv3d_1a_7x7.conv3d.weight"].numpy().transpose(2, 3, 4, 1, 0))
  _check_parity(torch, net, loaded, (2, 13, 40, 44, 2))

  # A file saved by a PyTorch that tracks batches converts to the same variables.
  with_tracked = convert.convert_state_dict(net.state_dict())
  jax.tree.map(np.testing.assert_array_equal, with_tracked.variables, loaded.variables)


# ---------------------------------------------------------------------------------------------
# GenKD's flow student.


@pytest.mark.torch
def test_genkd_flow_student_344_entries_convert_with_no_flags_and_match_pytorch(tmp_path):
  torch, net = _flow_reference(top_heavy=True, num_classes=101, seed=4)
  sd = {f"backbone._model.{k}": v for k, v in _pytorch_i3d_order(net.state_dict()).items()}
  keys = list(sd)
  assert len(keys) == 344 == 2 + FLOW_PRIMARY_UNITS * 6
  assert keys[:2] == ["backbone._model.logits.conv3d.weight", "backbone._model.logits.conv3d.bias"]
  assert sum(k.endswith("num_batches_tracked") for k in keys) == FLOW_PRIMARY_UNITS
  assert tuple(sd["backbone._model.Conv3d_1a_7x7.conv3d.weight"].shape) == (64, 2, 1, 7, 7)
  assert tuple(sd["backbone._model.Mixed_3b.b1b.conv3d.weight"].shape) == (128, 96, 1, 3, 3)
  assert tuple(sd["backbone._model.Mixed_5c.b1b.conv3d.weight"].shape) == (384, 192, 3, 3, 3)
  src = _save(torch, sd, os.path.join(tmp_path, "ucf101-flow.ckpt"))
  dst = os.path.join(tmp_path, "flow_student")

  assert convert.main([src, dst]) == 0
  loaded = convert.load_converted(dst)
  assert loaded.model_name == "top_i3d" and not loaded.parts and not loaded.notes
  assert loaded.model_kwargs == {"num_classes": 101, "in_channels": 2}
  _check_parity(torch, net, loaded, (1, 11, 36, 34, 2))

  # Saved through DataParallel (`module.`), the same variables.
  wrapped = convert.convert_state_dict({f"module.{k}": v for k, v in sd.items()})
  assert wrapped.model_kwargs == loaded.model_kwargs
  jax.tree.map(np.testing.assert_array_equal, wrapped.variables, loaded.variables)


@pytest.mark.torch
def test_flow_student_with_its_attention_head():
  """The whole BDNet_student(in_channels=2) state dict: the 344 entries plus deconv1 and
  Att_Head_5c (tiny width: the head is converted on its own shapes)."""
  pytest.importorskip("torch")
  import official_reference  # pylint: disable=g-import-not-at-top
  net = models.get("top_i3d", tiny=True, num_classes=101)
  backbone = torch_layout_state_dict(convert.abstract_variables(net, (1, 16, 32, 32, 2)),
                                     np.random.default_rng(0))
  head = official_reference.AttentionModules(64, 32, 2, 1, 1)  # tiny Mixed_5c: [2, 1, 1, 64]
  sd = {f"backbone._model.{k}": v for k, v in backbone.items()}
  sd.update({k: v.numpy() for k, v in head.state_dict().items()})
  conv = convert.convert_state_dict(sd, tiny=True)
  assert conv.model_name == "top_i3d"
  assert conv.model_kwargs == {"num_classes": 101, "in_channels": 2, "tiny": True}
  assert conv.parts["attention_head"].model_kwargs == {"part": "attention", "hidden_channels": 32}
  np.testing.assert_array_equal(
      conv.variables["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"],
      backbone["Conv3d_1a_7x7.conv3d.weight"].transpose(2, 3, 4, 1, 0))


# ---------------------------------------------------------------------------------------------
# Errors and round trips (numpy only).


def _tiny_flow_state_dict():
  net = models.get("i3d", tiny=True, num_classes=5)
  return torch_layout_state_dict(convert.abstract_variables(net, (1, 16, 32, 32, 2)),
                                 np.random.default_rng(1))


def test_flow_checkpoint_into_an_rgb_model_is_one_clear_error():
  sd = _tiny_flow_state_dict()
  with pytest.raises(convert.ConversionError) as e:
    convert.convert_state_dict(sd, tiny=True, in_channels=3)
  msg = str(e.value)
  assert "shape mismatches (1)" in msg and "Conv3d_1a_7x7.conv3d.weight" in msg
  assert "(7, 7, 7, 2, 4)" in msg and "(7, 7, 7, 3, 4)" in msg


def test_converted_flow_model_round_trip_and_rejects_rgb_clips(tmp_path):
  conv = convert.convert_state_dict(_tiny_flow_state_dict(), tiny=True)
  assert conv.model_kwargs["in_channels"] == 2
  # Without stored input shapes the restore rebuilds them from model_kwargs: 2 channels.
  dst = os.path.join(tmp_path, "flow")
  convert.save_converted(dst, conv._replace(input_shapes=None))
  loaded = convert.load_converted(dst)
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, conv.variables)
  model = loaded.build()
  clip = np.zeros((1, 16, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match="in_channels=2"):
    model.apply(loaded.variables, clip, train=False)
  logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(loaded.variables, clip[..., :2])
  assert logits.shape == (1, 1, 5)

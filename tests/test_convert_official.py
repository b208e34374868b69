"""The official checkpoint layouts convert in one command, and the method configs take the result.

Layouts (names and wrappers as the official code writes them, see ``official_reference.py``):
PKD's IC checkpoints (``DataParallel(IC_Model)``: ResNet-18 with 2-channel MV input or residual
input, ResNet-50 I-frame), GenKD's ``BDNet_teacher`` / ``BDNet_student`` and ``CVAE_teacher`` /
``CVAE_student`` state dicts. Each is converted without ``--model``, ``--prefix`` or
``--allow-unexpected``; the values are checked against the PyTorch modules (forward parity at a
small width) and, at full size with the exact official names and shapes, entry by entry.
"""

import os

import jax
import ml_collections
import numpy as np
import pytest

from kd_jax import models
from kd_jax.errors import UserError
from kd_jax.methods import _genkd_model
from kd_jax.methods import genkd
from kd_jax.methods import pkd
from kd_jax.models import convert

from fake_checkpoints import torch_layout_state_dict
from subprocess_env import single_device_env

TOL = 1e-4
LAYOUTS = {  # representation -> (arch, block, in_channels, input_norm)
    "mv": ("resnet18", "TorchBasicBlock", 2, True),
    "residual": ("resnet18", "TorchBasicBlock", 3, True),
    "iframe": ("resnet50", "TorchBottleneck", 3, False),
}
FULL_STAGES = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}


@pytest.fixture(name="ref")
def _references():
  """(torch_reference, official_reference); skips the test when torch is not installed."""
  pytest.importorskip("torch")
  import official_reference  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  return torch_reference, official_reference


def _close(a, b, what):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL, err_msg=what)


def _np(t):
  return t.detach().numpy()


def _nchw(torch, x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))


# ------------------------------------------------------------------------------------------------
# PKD's IC checkpoints.


def _ic_model(tr, official, rep, width, stages, num_classes, seed):
  arch, block, cin, _ = LAYOUTS[rep]
  base = tr.TorchResNet(getattr(tr, block), stages, width=width, num_classes=num_classes,
                        in_channels=cin)
  model = official.ICModel(official.CoviarModel(base, rep), official.ic_table(arch, width),
                           num_classes)
  return official.randomize(model, seed).eval()


def _pkd_checkpoint(model, arch):
  """What the official IC scripts save: DataParallel names inside a training-state dict."""
  wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
  return {"epoch": 12, "arch": arch, "state_dict": wrapped, "best_prec1": 41.5}


@pytest.mark.torch
@pytest.mark.parametrize("rep", list(LAYOUTS))
def test_pkd_ic_checkpoint_converts_in_one_command(ref, tmp_path, rep):
  tr, official = ref
  torch = tr.torch
  arch, _, cin, input_norm = LAYOUTS[rep]
  model = _ic_model(tr, official, rep, 8, (1, 1, 1, 1), 5, seed=3)
  src = os.path.join(tmp_path, f"{rep}_checkpoint_KD_progressive_IC1.pth.tar")
  torch.save(_pkd_checkpoint(model, arch), src)
  dst = os.path.join(tmp_path, "converted")
  # No --model, --prefix or --allow-unexpected; only the width of this small network.
  assert convert.main([src, dst, "--kwargs", '{"width": 8, "stage_sizes": [1, 1, 1, 1]}']) == 0

  loaded = convert.load_converted(dst)
  assert loaded.model_name == arch
  assert loaded.model_kwargs["in_channels"] == cin
  assert loaded.model_kwargs["input_norm"] is input_norm
  assert loaded.model_kwargs["num_classes"] == 5
  heads = loaded.parts["ic_heads"]
  assert heads.model_name == "ic_heads"
  assert heads.model_kwargs == {"backbone": arch, "width": 8, "num_classes": 5}

  x = np.random.default_rng(1).normal(size=(2, 64, 64, cin)).astype(np.float32)
  with torch.no_grad():
    want_ics, want_final = model(_nchw(torch, x))
  backbone = loaded.build()
  final, taps = jax.jit(lambda v, x: backbone.apply(v, x, train=False))(loaded.variables, x)
  ic_module = heads.build()
  ic_logits, _ = jax.jit(lambda v, t: ic_module.apply(v, t, train=False))(heads.variables, taps)
  _close(final, _np(want_final), "final logits")
  for k in range(3):
    _close(ic_logits[:, k], _np(want_ics[k]), f"IC{k + 1} logits")


def _check_entry(sd, key, got, what):
  """The converted array holds the state-dict entry (PyTorch layout -> Flax layout)."""
  w = sd[key]
  want = np.transpose(w, tuple(range(2, w.ndim)) + (1, 0)) if w.ndim >= 3 else (
      w.T if w.ndim == 2 else w)
  np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{what} <- {key}")


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("rep", list(LAYOUTS))
def test_pkd_ic_checkpoint_full_size_names_and_shapes(ref, rep):
  """The exact official names and shapes (width 64, 101 classes); every value where it belongs."""
  tr, official = ref
  arch, _, cin, input_norm = LAYOUTS[rep]
  model = _ic_model(tr, official, rep, 64, FULL_STAGES[arch], 101, seed=0)
  ckpt = _pkd_checkpoint(model, arch)
  sd = {k: _np(v) for k, v in ckpt["state_dict"].items()}
  assert ("module.net.data_bn.running_var" in sd) is input_norm
  conv = convert.convert_state_dict(ckpt)
  assert conv.model_name == arch and not conv.notes
  assert conv.model_kwargs == {"input_norm": input_norm, "num_classes": 101, "in_channels": cin}
  p, s = conv.variables["params"], conv.variables["batch_stats"]
  last = "layer4_1" if arch == "resnet18" else "layer4_2"
  _check_entry(sd, "module.net.base_model.conv1.weight", p["conv1"]["kernel"], "conv1")
  _check_entry(sd, f"module.net.base_model.{last[:6]}.{last[7:]}.bn2.running_mean",
               s[last]["bn2"]["mean"], "last block")
  _check_entry(sd, "module.net.base_model.layer2.0.downsample.0.weight",
               p["layer2_0"]["downsample_conv"]["kernel"], "projection")
  _check_entry(sd, "module.net.base_model.fc.weight", p["fc"]["kernel"], "fc")
  if input_norm:
    _check_entry(sd, "module.net.data_bn.running_var", s["data_bn"]["var"], "data_bn")
  heads = conv.parts["ic_heads"]
  assert heads.model_kwargs == {"backbone": arch, "width": 64, "num_classes": 101}
  hp, hs = heads.variables["params"], heads.variables["batch_stats"]
  for k in (1, 2, 3):
    _check_entry(sd, f"module.IC{k}_features.0.weight", hp[f"ic{k}"]["conv"]["kernel"], "conv")
    _check_entry(sd, f"module.IC{k}_features.1.weight", hp[f"ic{k}"]["bn"]["scale"], "bn")
    _check_entry(sd, f"module.IC{k}_features.1.running_var", hs[f"ic{k}"]["bn"]["var"], "bn")
    _check_entry(sd, f"module.IC{k}_classifier.weight", hp[f"ic{k}"]["fc"]["kernel"], "fc")
    _check_entry(sd, f"module.IC{k}_classifier.bias", hp[f"ic{k}"]["fc"]["bias"], "fc")
  # The table of pkd_wise.md 3.2: R18 IC1 is 7x7 64->64, R50 IC1 3x3 256->64.
  assert hp["ic1"]["conv"]["kernel"].shape == ((7, 7, 64, 64) if arch == "resnet18"
                                                else (3, 3, 256, 64))


@pytest.mark.torch
def test_pkd_unexpected_entries_are_still_errors(ref):
  tr, official = ref
  torch = tr.torch
  model = _ic_model(tr, official, "mv", 8, (1, 1, 1, 1), 5, seed=0)
  ckpt = _pkd_checkpoint(model, "resnet18")
  ckpt["state_dict"]["module.IC4_features.0.weight"] = torch.zeros(8, 8, 3, 3)
  ckpt["state_dict"]["module.net.extra.weight"] = torch.zeros(3)
  with pytest.raises(convert.ConversionError, match="extra.weight"):
    convert.convert_state_dict(ckpt, width=8, stage_sizes=(1, 1, 1, 1))
  del ckpt["state_dict"]["module.net.extra.weight"]
  with pytest.raises(convert.ConversionError,
                     match=r"part 'ic_heads'.*\n.*unexpected.*\n.*IC4_features.0.weight"):
    convert.convert_state_dict(ckpt, width=8, stage_sizes=(1, 1, 1, 1))


# ------------------------------------------------------------------------------------------------
# GenKD's BDNet and CVAE state dicts.

# pytorch-i3d's endpoints (recognition/common/i3d_backbone.py and Top_heavy_i3d_backbone.py):
# inception blocks (in, [b0, b1a, b1b, b2a, b2b, b3b], 2-D in Top-heavy I3D).
I3D_BLOCKS = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32), True),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64), True),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64), True),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64), True),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64), False),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64), False),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128), False),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128), False),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128), False),
)


def official_i3d_state_dict(top_heavy, num_classes, rng):
  """The exact names and shapes of GenKD's (Top-heavy) InceptionI3d state dict, random values."""
  sd = {}

  def unit(name, cin, cout, k):
    sd[f"{name}.conv3d.weight"] = rng.normal(size=(cout, cin, *k)).astype(np.float32)
    sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.bias"] = rng.normal(size=cout).astype(np.float32)
    sd[f"{name}.bn.running_mean"] = rng.normal(size=cout).astype(np.float32)
    sd[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f"{name}.bn.num_batches_tracked"] = np.array(7, np.int64)

  unit("Conv3d_1a_7x7", 3, 64, (1 if top_heavy else 7, 7, 7))
  unit("Conv3d_2b_1x1", 64, 64, (1, 1, 1))
  unit("Conv3d_2c_3x3", 64, 192, (1 if top_heavy else 3, 3, 3))
  for name, cin, c, two_d in I3D_BLOCKS:
    k3 = (1 if top_heavy and two_d else 3, 3, 3)
    unit(f"{name}.b0", cin, c[0], (1, 1, 1))
    unit(f"{name}.b1a", cin, c[1], (1, 1, 1))
    unit(f"{name}.b1b", c[1], c[2], k3)
    unit(f"{name}.b2a", cin, c[3], (1, 1, 1))
    unit(f"{name}.b2b", c[3], c[4], k3)
    unit(f"{name}.b3b", cin, c[5], (1, 1, 1))
  sd["logits.conv3d.weight"] = rng.normal(size=(num_classes, 1024, 1, 1, 1)).astype(np.float32)
  sd["logits.conv3d.bias"] = rng.normal(size=num_classes).astype(np.float32)
  return sd


def _bdnet(official, backbone_sd, c, hidden, t, h, w, seed):
  head = official.randomize(official.AttentionModules(c, hidden, t, h, w), seed).eval()
  sd = {f"backbone._model.{k}": v for k, v in backbone_sd.items()}
  sd.update({k: _np(v) for k, v in head.state_dict().items()})
  return sd, head


def _cvae(official, c, h, w, c832, h832, w832, seed):
  return official.randomize(official.CVAE(c, h, w, c832, h832, w832), seed).eval()


def _head_parity(torch, head, part, features, what):
  module = part.build()
  got = jax.jit(lambda v, f: module.apply(v, f))(part.variables, features)
  with torch.no_grad():
    want = head(torch.from_numpy(np.ascontiguousarray(features.transpose(0, 4, 1, 2, 3))))
  _close(got, _np(want).transpose(0, 2, 1), what)


@pytest.mark.torch
@pytest.mark.parametrize("which,model_name", [("teacher", "i3d"), ("student", "top_i3d")])
def test_bdnet_state_dict_converts_in_one_command(ref, tmp_path, which, model_name):
  """A BDNet of tiny width, saved as the training script saves it, through the CLI."""
  tr, official = ref
  torch = tr.torch
  net = models.get(model_name, tiny=True, num_classes=5)
  backbone_sd = torch_layout_state_dict(convert.abstract_variables(net, (1, 16, 32, 32, 3)),
                                        np.random.default_rng(0))
  # Tiny Mixed_5c of a 16x32x32 clip: [2, 1, 1, 64].
  sd, head = _bdnet(official, backbone_sd, c=64, hidden=32, t=2, h=1, w=1, seed=1)
  src = os.path.join(tmp_path, f"BDNet_{which}-checkpoint-40.ckpt")
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, src)
  dst = os.path.join(tmp_path, "converted")
  assert convert.main([src, dst, "--kwargs", '{"tiny": true}']) == 0
  loaded = convert.load_converted(dst)
  assert loaded.model_name == model_name and loaded.model_kwargs["num_classes"] == 5
  part = loaded.parts["attention_head"]
  assert part.model_kwargs == {"part": "attention", "hidden_channels": 32}
  _check_entry(sd, "backbone._model.Mixed_5c.b1b.conv3d.weight",
               loaded.variables["params"]["Mixed_5c"]["b1b"]["conv3d"]["kernel"], "backbone")
  f = np.asarray(jax.nn.relu(jax.random.normal(jax.random.key(2), (2, 2, 1, 1, 64))))
  _head_parity(torch, head, part, f, "attention")


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("which,model_name", [("teacher", "i3d"), ("student", "top_i3d")])
def test_bdnet_full_size_names_and_shapes(ref, which, model_name):
  """The exact names and shapes of BDNet_{teacher,student} (101 classes, Mixed_5c 8x7x7x1024)."""
  tr, official = ref
  torch = tr.torch
  backbone_sd = official_i3d_state_dict(model_name == "top_i3d", 101, np.random.default_rng(0))
  sd, head = _bdnet(official, backbone_sd, c=1024, hidden=512, t=8, h=7, w=7, seed=1)
  assert "Att_Head_5c.0.conv1d.weight" in sd
  assert sd["deconv1.0.weight"].shape == (512, 1024, 1, 7, 7)
  conv = convert.convert_state_dict(sd)
  assert conv.model_name == model_name and conv.model_kwargs == {"num_classes": 101}
  assert not conv.notes and set(conv.parts) == {"attention_head"}
  p, s = conv.variables["params"], conv.variables["batch_stats"]
  for key in ("Conv3d_1a_7x7.conv3d.weight", "Mixed_4c.b2b.conv3d.weight",
              "Mixed_5c.b3b.bn.bias", "logits.conv3d.weight", "logits.conv3d.bias"):
    path = key.split(".")
    leaf = {"weight": "kernel" if path[-2] == "conv3d" else "scale", "bias": "bias"}[path[-1]]
    node = p
    for name in path[:-1]:
      node = node[name]
    _check_entry(backbone_sd, key, node[leaf], "backbone")
  _check_entry(backbone_sd, "Mixed_4f.b0.bn.running_var", s["Mixed_4f"]["b0"]["bn"]["var"], "bn")
  part = conv.parts["attention_head"]
  assert part.model_kwargs == {"part": "attention", "hidden_channels": 512}
  hp = part.variables["params"]
  for key, node in (("deconv1.0.weight", hp["conv3d"]["kernel"]),
                    ("deconv1.1.weight", hp["gn3d"]["scale"]),
                    ("Att_Head_5c.0.conv1d.weight", hp["conv1d"]["kernel"]),
                    ("Att_Head_5c.1.bias", hp["gn1d"]["bias"]),
                    ("Att_Head_5c.3.weight", hp["linear"]["kernel"])):
    _check_entry(sd, key, node, "attention head")
  f = np.asarray(jax.nn.relu(jax.random.normal(jax.random.key(2), (1, 8, 7, 7, 1024))))
  _head_parity(torch, head, part, f, "attention (Mixed_5c)")


def _cvae_parity(torch, cvae_ref, conv, f, a, what):
  """Posterior and prior reconstructions of the converted CVAE against the official one."""
  module = conv.build()
  eps = np.random.default_rng(5).normal(size=a.shape).astype(np.float32)
  post = jax.jit(lambda v, f, a, e: module.apply(v, f, a, mode="posterior", noise=e))(
      conv.variables, f, a, eps)
  prior = jax.jit(lambda v, f, a, e: module.apply(v, f, a, mode="prior", noise=e))(
      conv.variables, f, a, eps)
  with torch.no_grad():
    ft = torch.from_numpy(np.ascontiguousarray(f.transpose(0, 4, 1, 2, 3)))
    at = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1)))  # [B, C, T]
    mean, log_var, rec = cvae_ref.posterior(ft, at, torch.from_numpy(eps))
    rec_prior = cvae_ref.prior(at, torch.from_numpy(eps))
  to_cl = lambda r: _np(r).transpose(0, 2, 3, 4, 1)  # noqa: E731
  _close(post.mean, _np(mean), f"{what} mean")
  _close(post.log_var, _np(log_var), f"{what} log_var")
  _close(post.reconstruction, to_cl(rec), f"{what} posterior reconstruction")
  _close(prior.reconstruction, to_cl(rec_prior), f"{what} prior reconstruction")


@pytest.mark.torch
@pytest.mark.parametrize("which,k832", [("teacher", 14), ("student", 6)])
def test_cvae_state_dict_converts_in_one_command(ref, tmp_path, which, k832, capsys):
  """CVAE_{teacher,student} at a small width; the 832 branch is skipped with a note."""
  tr, official = ref
  torch = tr.torch
  cvae_ref = _cvae(official, 64, 3, 3, 32, k832 // 2, k832 // 2, seed=4)
  src = os.path.join(tmp_path, "checkpoint-40_cvae.ckpt")
  torch.save(cvae_ref.state_dict(), src)
  dst = os.path.join(tmp_path, "converted")
  assert convert.main([src, dst]) == 0
  out = capsys.readouterr().out
  assert "note: skipped 20 entries (cdecoder_832.*, cencoder_832.*)" in out, out
  loaded = convert.load_converted(dst)
  assert loaded.model_name == "generative_attention"
  assert loaded.model_kwargs == {"part": "cvae"} and not loaded.parts
  assert len(loaded.notes) == 1 and "832" in loaded.notes[0]
  f = np.asarray(jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 4, 3, 3, 64))))
  a = np.asarray(jax.nn.sigmoid(jax.random.normal(jax.random.key(1), (2, 4, 64))))
  _cvae_parity(torch, cvae_ref, loaded, f, a, which)


@pytest.mark.torch
@pytest.mark.slow
def test_cvae_full_size_names_and_shapes(ref):
  """CVAE_student at its exact size: the 1024 branch (7x7) and the 832 branch (6x6, skipped)."""
  tr, official = ref
  torch = tr.torch
  cvae_ref = _cvae(official, 1024, 7, 7, 832, 6, 6, seed=0)
  sd = {k: _np(v) for k, v in cvae_ref.state_dict().items()}
  assert sd["cencoder_832.con2.0.weight"].shape == (832, 832, 1, 6, 6)
  conv = convert.convert_state_dict(sd, "generative_attention")  # the call of the issue
  assert conv.model_kwargs == {"part": "cvae"} and "832" in conv.notes[0]
  p = conv.variables["params"]
  for key, node in (("cencoder.con1.0.weight", p["encoder"]["conv3d"]["kernel"]),
                    ("cencoder.con1.1.bias", p["encoder"]["gn"]["bias"]),
                    ("cencoder.fc3.weight", p["encoder"]["fc3"]["kernel"]),
                    ("cdecoder.fc1.bias", p["decoder"]["fc1"]["bias"]),
                    ("cdecoder.deconv.0.weight", p["decoder"]["deconv3d"]["kernel"]),
                    ("cdecoder.deconv.1.weight", p["decoder"]["gn"]["scale"])):
    _check_entry(sd, key, node, "cvae")
  f = np.asarray(jax.nn.relu(jax.random.normal(jax.random.key(0), (1, 8, 7, 7, 1024))))
  a = np.asarray(jax.nn.sigmoid(jax.random.normal(jax.random.key(1), (1, 8, 1024))))
  _cvae_parity(torch, cvae_ref, conv, f, a, "Mixed_5c")


@pytest.mark.torch
def test_generative_attention_by_name_and_errors(ref):
  tr, official = ref
  head = official.randomize(official.AttentionModules(64, 32, 4, 3, 3), 0)
  cvae = _cvae(official, 64, 3, 3, 32, 2, 2, seed=1)
  head_sd = {k: _np(v) for k, v in head.state_dict().items()}
  cvae_sd = {k: _np(v) for k, v in cvae.state_dict().items()}
  assert convert.convert_state_dict(head_sd, "generative_attention").model_kwargs == {
      "part": "attention", "hidden_channels": 32}
  both = convert.convert_state_dict({**head_sd, **cvae_sd}, "generative_attention")
  assert both.model_kwargs["part"] == "both" and set(both.variables["params"]) == {
      "attention_head", "cvae"}
  _check_entry(cvae_sd, "cdecoder.deconv.0.weight",
               both.variables["params"]["cvae"]["decoder"]["deconv3d"]["kernel"], "both")
  # Anything unexpected besides the known unused branches is still an error.
  with pytest.raises(convert.ConversionError, match="cencoder.fc4.weight"):
    convert.convert_state_dict({**cvae_sd, "cencoder.fc4.weight": np.zeros((2, 2))})
  with pytest.raises(convert.ConversionError, match="Att_Head_5c.7.weight"):
    convert.convert_state_dict({**head_sd, "Att_Head_5c.7.weight": np.zeros((2, 2))})


def test_model_inference_from_names():
  assert convert.infer_model({"module.base_model.conv1.weight": np.zeros((8, 2, 7, 7)),
                              "module.base_model.layer1.0.conv1.weight": np.zeros(1)}) == "resnet18"
  assert convert.infer_model({"module.base_model.conv1.weight": np.zeros(1),
                              "module.base_model.layer1.0.conv3.weight": np.zeros(1),
                              "module.new_fc.weight": np.zeros(1)}) == "tsm_resnet50"
  tsm = {"base_model.conv1.weight": np.zeros(1),
         "base_model.layer1.0.conv1.net.weight": np.zeros(1)}
  assert convert.infer_model(tsm) == "tsm_resnet18"
  assert convert.infer_model({"Conv3d_1a_7x7.conv3d.weight": np.zeros((64, 3, 7, 7, 7))}) == "i3d"
  assert convert.infer_model(
      {"backbone._model.Conv3d_1a_7x7.conv3d.weight": np.zeros((64, 3, 1, 7, 7))}) == "top_i3d"
  assert convert.infer_model({"cencoder.fc1.weight": np.zeros(1)}) == "generative_attention"
  assert convert.infer_model({"module.IC1_classifier.weight": np.zeros(1)}) == "ic_heads"
  with pytest.raises(convert.ConversionError, match="--model"):
    convert.infer_model({"encoder.weight": np.zeros(1)})


# ------------------------------------------------------------------------------------------------
# The method configs take the converted checkpoints.


def _pkd_config(path, ic_init="random"):
  config = pkd.base_config()
  for name in pkd.NETWORKS:
    config.networks[name].model_kwargs = ml_collections.ConfigDict(
        dict(width=8, stage_sizes=(1, 1, 1, 1)))
  config.networks.mv.init_checkpoint = path
  config.networks.mv.ic_init = ic_init
  return config


def _leaves_equal(a, b):
  fa, fb = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (p, x), (_, y) in zip(fa, fb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


@pytest.mark.torch
def test_pkd_networks_take_a_converted_ic_checkpoint(ref, tmp_path):
  tr, official = ref
  model = _ic_model(tr, official, "mv", 8, (1, 1, 1, 1), 5, seed=7)
  path = os.path.join(tmp_path, "mv_ic")
  conv = convert.convert_state_dict(_pkd_checkpoint(model, "resnet18"), width=8,
                                    stage_sizes=(1, 1, 1, 1))
  convert.save_converted(path, conv)

  assert pkd.base_config().networks.mv.ic_init == "random"
  nets = pkd.build_networks(_pkd_config(path), 5)
  params, stats, desc = pkd.init_backbone(nets["mv"], 32, seed=0)
  assert "classifier kept" in desc  # a checkpoint of this dataset's 5 classes
  _leaves_equal(params, conv.variables["params"])
  _leaves_equal(stats, conv.variables["batch_stats"])
  random_heads = pkd.init_heads(nets["mv"], 32, seed=1)[0]
  assert not np.allclose(random_heads["ic1"]["conv"]["kernel"],
                         conv.parts["ic_heads"].variables["params"]["ic1"]["conv"]["kernel"])

  nets = pkd.build_networks(_pkd_config(path, "checkpoint"), 5)
  hp, hs = pkd.init_heads(nets["mv"], 32, seed=1)
  _leaves_equal(hp, conv.parts["ic_heads"].variables["params"])
  _leaves_equal(hs, conv.parts["ic_heads"].variables["batch_stats"])

  # Another class count: the backbone's classifier is replaced, the IC heads cannot be used.
  nets = pkd.build_networks(_pkd_config(path), 7)
  params, _, desc = pkd.init_backbone(nets["mv"], 32, seed=0)
  assert "classifier replaced" in desc and params["fc"]["kernel"].shape[-1] == 7
  nets = pkd.build_networks(_pkd_config(path, "checkpoint"), 7)
  with pytest.raises(UserError, match="IC heads of config.networks.mv.init_checkpoint.*shape"):
    pkd.init_heads(nets["mv"], 32, seed=1)


def test_pkd_ic_init_errors(tmp_path):
  with pytest.raises(UserError, match="networks.mv.ic_init must be one of random, checkpoint"):
    pkd.build_networks(_pkd_config("", "pretrained"), 5)
  with pytest.raises(UserError, match="init_checkpoint, which is empty"):
    pkd.build_networks(_pkd_config("", "checkpoint"), 5)
  # A plain backbone checkpoint has no IC heads to start from.
  net = models.get("resnet18", width=8, stage_sizes=(1, 1, 1, 1), num_classes=5, in_channels=2,
                   input_norm=True)
  sd = torch_layout_state_dict(convert.abstract_variables(net, (1, 32, 32, 2)),
                               np.random.default_rng(0))
  path = os.path.join(tmp_path, "mv_backbone")
  convert.save_converted(path, convert.convert_state_dict(sd, width=8, stage_sizes=(1, 1, 1, 1)))
  nets = pkd.build_networks(_pkd_config(path, "checkpoint"), 5)
  with pytest.raises(UserError, match="holds no IC heads"):
    pkd.init_backbone(nets["mv"], 32, seed=0)


CLIP = (16, 32, 32, 3)


def _sane(sd):
  """Random weights scaled like an initialisation, BatchNorm statistics valid: activations stay
  finite through a whole network (raw unit normals give negative variances and overflow)."""
  out = {}
  for k, v in sd.items():
    if k.endswith("running_var"):
      v = np.abs(v) + 1.0
    elif k.endswith("running_mean") or k.endswith("bias"):
      v = np.zeros_like(v)
    elif v.ndim >= 2:
      v = v / np.sqrt(np.prod(v.shape[1:]))
    elif k.endswith("weight"):
      v = np.ones_like(v)
    out[k] = v.astype(np.float32)
  return out


def _genkd_checkpoints(official, tmp_path, which, model_name, classes, sane=False):
  net = models.get(model_name, tiny=True, num_classes=classes)
  backbone_sd = torch_layout_state_dict(convert.abstract_variables(net, (1, *CLIP)),
                                        np.random.default_rng(0))
  if sane:
    backbone_sd = _sane(backbone_sd)
  sd, head = _bdnet(official, backbone_sd, c=64, hidden=32, t=2, h=1, w=1, seed=1)
  net_path = os.path.join(tmp_path, f"bdnet_{which}")
  bdnet = convert.convert_state_dict(sd, tiny=True)
  convert.save_converted(net_path, bdnet)
  cvae_ref = _cvae(official, 64, 1, 1, 32, 2, 2, seed=2)
  cvae_path = os.path.join(tmp_path, f"cvae_{which}")
  cvae = convert.convert_state_dict({k: _np(v) for k, v in cvae_ref.state_dict().items()})
  convert.save_converted(cvae_path, cvae)
  return net_path, cvae_path, bdnet, cvae, head


@pytest.fixture(name="genkd_teacher")
def _genkd_teacher(ref, tmp_path):
  _, official = ref
  net_path, cvae_path, bdnet, cvae, _ = _genkd_checkpoints(official, tmp_path, "teacher", "i3d", 4)
  tcfg = ml_collections.ConfigDict(dict(model="i3d", checkpoint=net_path,
                                        cvae_checkpoint=cvae_path))
  return tcfg, bdnet, cvae


@pytest.mark.torch
def test_genkd_teacher_config_reads_a_converted_bdnet_teacher_and_cvae(genkd_teacher):
  tcfg, bdnet, cvae = genkd_teacher
  base = genkd.base_config()
  assert base.teacher.checkpoint == "" and base.teacher.cvae_checkpoint == ""
  pretrained = genkd.load_pretrained(tcfg, "config.teacher")
  assert set(pretrained) == {"params", "batch_stats", "attention_head", "cvae"}
  _leaves_equal({k: pretrained[k] for k in ("params", "batch_stats")}, bdnet.variables)
  _leaves_equal(pretrained["attention_head"], bdnet.parts["attention_head"].variables["params"])
  _leaves_equal(pretrained["cvae"], cvae.variables["params"])
  nets = genkd.build_networks("i3d", {"tiny": True}, {"tiny": True}, num_classes=4)
  with pytest.raises(UserError, match="cvae_checkpoint"):
    _genkd_model.pretrained_teacher(nets, CLIP, {k: v for k, v in pretrained.items()
                                                 if k != "cvae"})
  tcfg.cvae_checkpoint = tcfg.checkpoint
  with pytest.raises(UserError, match="holds no CVAE"):
    genkd.load_pretrained(tcfg, "config.teacher")


@pytest.mark.torch
@pytest.mark.slow
def test_genkd_networks_start_from_the_converted_teacher(genkd_teacher):
  tcfg, bdnet, cvae = genkd_teacher
  pretrained = genkd.load_pretrained(tcfg, "config.teacher")
  nets = genkd.build_networks("i3d", {"tiny": True}, {"tiny": True}, num_classes=4)
  # init_variables (phase 1's start) under jit, through the phase-2 teacher built from it.
  teacher = _genkd_model.pretrained_teacher(nets, CLIP, pretrained)
  _leaves_equal(teacher["backbone"]["params"], bdnet.variables["params"])  # logits kept: 4 classes
  _leaves_equal(teacher["backbone"]["batch_stats"], bdnet.variables["batch_stats"])
  _leaves_equal(teacher["attention_head"], bdnet.parts["attention_head"].variables["params"])
  _leaves_equal(teacher["cvae"], cvae.variables["params"])
  # Weights made for other features than the config's are refused with the reason.
  nets_other = genkd.build_networks("i3d", {"tiny": True, "head_pool": None},
                                    {"tiny": True}, num_classes=4)
  with pytest.raises(UserError, match="attention head of config.teacher.checkpoint.*Mixed_5c"):
    jax.eval_shape(lambda k: genkd.init_variables(nets_other, k, (16, 64, 64, 3), pretrained),
                   jax.random.key(0))
  no_head = {k: v for k, v in pretrained.items() if k != "attention_head"}
  with pytest.raises(UserError, match="CVAE of config.teacher.cvae_checkpoint.*Mixed_5c"):
    jax.eval_shape(lambda k: genkd.init_variables(nets_other, k, (16, 64, 64, 3), no_head),
                   jax.random.key(0))


@pytest.mark.torch
@pytest.mark.slow
def test_official_student_evaluates_through_predict(ref, tmp_path):
  tr, official = ref
  torch = tr.torch
  net_path, _, _, _, head = _genkd_checkpoints(official, tmp_path, "student", "top_i3d", 5)
  nets, variables, meta = _genkd_model.load_converted_network(net_path)
  assert meta["model"] == "top_i3d" and meta["num_classes"] == 5
  clips = np.random.default_rng(3).normal(size=(2, *CLIP)).astype(np.float32)
  def run(v, x):
    scores, attention = genkd.predict(nets, v["params"], v["batch_stats"], x)
    f = nets.net.apply({"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]}, x,
                       train=False, method="extract_features")["Mixed_5c"]
    return scores, attention, f

  scores, attention, f = jax.jit(run)(variables, clips)
  assert scores.shape == (2, 5)
  with torch.no_grad():
    want = head(torch.from_numpy(np.ascontiguousarray(np.asarray(f).transpose(0, 4, 1, 2, 3))))
  _close(attention, _np(want).transpose(0, 2, 1), "official student attention")


def test_phase_2_without_phase_1_needs_both_official_checkpoints():
  config = genkd.base_config()
  config.teacher.epochs = 0
  with pytest.raises(UserError, match="teacher.epochs=0 skips phase 1"):
    genkd._check_config(config)  # pylint: disable=protected-access
  config.teacher.checkpoint, config.teacher.cvae_checkpoint = "t", "c"
  genkd._check_config(config)  # pylint: disable=protected-access


@pytest.mark.torch
@pytest.mark.slow  # one command-line run of the GenKD smoke students (about a minute)
def test_phase_2_runs_from_the_converted_official_teacher_and_cvae(ref, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  _, official = ref
  net_path, cvae_path, _, _, _ = _genkd_checkpoints(official, tmp_path, "teacher", "i3d", 4,
                                                    sane=True)
  tcfg = ml_collections.ConfigDict(dict(checkpoint=net_path, cvae_checkpoint=cvae_path))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  wd = tmp_path / "wd"
  proc = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config", "configs/genkd_quickstart.py:smoke",
       "--workdir", str(wd), f"--config.data.data_dir={tmp_path / 'tfds'}",
       "--config.teacher.epochs=0", f"--config.teacher.checkpoint={tcfg.checkpoint}",
       f"--config.teacher.cvae_checkpoint={tcfg.cvae_checkpoint}"],
      cwd=repo, env=single_device_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Stage teacher" not in proc.stderr  # no phase 1
  results = json.loads((wd / "results.json").read_text())
  assert set(results["stages"]) == {"student_baseline", "student_genkd"}
  assert not (wd / "checkpoints" / "teacher").exists()

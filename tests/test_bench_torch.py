"""The PyTorch side of `python -m kd_jax.bench`: same networks as the JAX models, working steps.

Parameter counts are compared with the kd_jax models traced by `jax.eval_shape` (nothing is
compiled), at a small width and at full size. Each step runs once in float32 eager mode at a tiny
size and must move its trainable parameters and leave the frozen ones alone; the bfloat16 autocast
path runs once too. The optimisers' parameter groups (no weight decay, per-group rates) must hold
the parameters kd_jax's optimizer rules pick, and the losses written in PyTorch must agree with
`kd_jax.losses` on small random arrays. `torch.compile` is not exercised here (minutes of
compilation per step on a CPU).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from kd_jax import losses  # noqa: E402
from kd_jax import models  # noqa: E402
from kd_jax.bench import torch_models as tm  # noqa: E402
from kd_jax.bench import torch_steps  # noqa: E402
from kd_jax.bench.sizes import StepSize  # noqa: E402
from kd_jax.methods import genkd  # noqa: E402
from kd_jax.methods import pkd  # noqa: E402
from kd_jax.models import layers  # noqa: E402
from kd_jax.train import optim  # noqa: E402

pytestmark = pytest.mark.torch


def tiny_size(name: str) -> StepSize:
  """Small but complete: 16 frames for I3D's head, 4 TSM segments, width 1/8 (TSM shifts 1 ch)."""
  frames = 16 if name == "genkd_phase2" else 4 if name.startswith("spectral") else 2
  return StepSize(frames=frames, crop=32, num_classes=5, width=1 / 8)


def full_size(name: str) -> StepSize:
  frames = {"genkd_phase2": 64, "spectral_r18_r50": 8}.get(name, 3)
  return StepSize(frames=frames, crop=224, num_classes=101, width=1.0)


@pytest.fixture(autouse=True)
def one_thread():
  # The CPU is shared; two OpenMP threads spinning against other jobs make tiny steps 30x slower.
  before = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(before)


# -- JAX reference counts --------------------------------------------------------------------------


def _numel(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _init_shapes(module, *args, rngs=None, **kwargs):
  keys = {"params": jax.random.key(0), **(rngs or {})}
  return jax.eval_shape(lambda *a: module.init(keys, *a, **kwargs), *args)


def _apply_shapes(module, variables, *args, **kwargs):
  return jax.eval_shape(lambda v, *a: module.apply(v, *a, **kwargs), variables, *args)


def _sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def jax_param_count(name: str, size: StepSize) -> dict[str, int]:
  """What `torch_steps.param_count` must report, from the kd_jax models the JAX steps use."""
  k, w = size.num_classes, size.width
  rw = tm.resnet_width(w)
  if name.startswith("pkd_"):
    depth = 50 if name.endswith("r50") else 18
    net_name = "iframe" if depth == 50 else "residual"
    net = models.get(f"resnet{depth}", num_classes=k, width=rw, **pkd.INPUT[net_name])
    x = _sds(1, size.frames, size.crop, size.crop, 3)
    v = _init_shapes(net, x, train=False)
    out = {"student": _numel(v["params"]), "teacher": 0}
    if name.startswith("pkd_ic"):
      _, feats = _apply_shapes(net, v, x, train=False)
      heads = models.get("ic_heads", backbone=f"resnet{depth}", num_classes=k, width=rw)
      taps = {t: _sds(*feats[t].shape) for t in pkd.IC_TAPS}
      out["heads"] = _numel(_init_shapes(heads, taps, train=False)["params"])
    return out
  if name == "genkd_phase2":
    hidden = tm.scale_channels(tm.ATTENTION_HIDDEN, w)
    out = {}
    for role, model in (("student", "top_i3d"), ("teacher", "i3d")):
      nets = genkd.build_networks(model, dict(width=w, head_pool=None),
                                  dict(hidden_channels=hidden), k)
      x = _sds(1, size.frames, size.crop, size.crop, 3)
      v = _init_shapes(nets.net, x, train=False)
      f = _apply_shapes(nets.net, v, x, train=False, method="extract_features")["Mixed_5c"]
      f = _sds(*f.shape)
      a = _sds(f.shape[0], f.shape[1], f.shape[-1])
      n_att = _numel(_init_shapes(nets.head, f)["params"])
      n_cvae = _numel(_init_shapes(nets.cvae, f, a, rngs={"reparam": jax.random.key(1)},
                                   mode="posterior")["params"])
      n_net = _numel(v["params"])
      if role == "student":
        out.update(student=n_net, attention=n_att, cvae=n_cvae)
      else:
        out["teacher"] = n_net + n_att + n_cvae
    return out
  from kd_jax.methods import spectral  # pylint: disable=g-import-not-at-top
  x = _sds(1, size.frames, size.crop, size.crop, 3)
  out, feats = {}, {}
  for role, model in (("student", "tsm_resnet18"), ("teacher", "tsm_resnet50")):
    net = models.get(model, num_classes=k, width=rw, dropout_rate=0.5)
    v = _init_shapes(net, x, train=False)
    out[role] = _numel(v["params"])
    feats[role] = _apply_shapes(net, v, x, train=False)[1]["layer4"]
  adapter = spectral.SpectrumAdapter(feats["teacher"].shape[-1])
  out["adapter"] = _numel(_init_shapes(adapter, _sds(*feats["student"].shape), train=False))
  return out


# -- architecture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", torch_steps.STEPS)
@pytest.mark.parametrize("sizer", [tiny_size, full_size], ids=["tiny", "full"])
def test_param_counts_match_jax(name, sizer):
  size = sizer(name)
  assert torch_steps.param_count(name, size) == jax_param_count(name, size)


def test_full_size_counts_are_the_published_ones():
  # Independent anchors: torchvision ResNet-18 / 50 with 101 classes, kd_jax.models.i3d's table.
  size = StepSize(frames=3, crop=224, num_classes=1000)
  assert torch_steps.param_count("pkd_backbone_r50", size)["student"] == 25_557_032
  assert torch_steps.param_count("pkd_backbone_r18", size)["student"] == 11_689_512 + 6  # data_bn
  counts = torch_steps.param_count("genkd_phase2", full_size("genkd_phase2"))
  assert counts["student"] == 10_429_088 + 103_525
  assert counts["attention"] == 27_275_784 and counts["cvae"] == 112_210_944


def test_unknown_step_and_dtype():
  size = tiny_size("pkd_backbone_r18")
  with pytest.raises(ValueError, match="spectral_r18_r50"):
    torch_steps.build("resnet", batch=1, dtype="float32", compile=False, device="cpu", size=size)
  with pytest.raises(ValueError, match="pkd_ic_r50"):
    torch_steps.param_count("resnet", size)
  with pytest.raises(ValueError, match="bfloat16"):
    torch_steps.build("pkd_backbone_r18", batch=1, dtype="float16", compile=False, device="cpu",
                      size=size)


def test_temporal_shift_matches_jax():
  x = np.random.default_rng(0).normal(size=(6, 16, 2, 3)).astype(np.float32)  # [N*T, C, H, W]
  got = tm.temporal_shift(torch.from_numpy(x), 3, 8).numpy()
  want = layers.temporal_shift(jnp.asarray(x.transpose(0, 2, 3, 1)), 3, 8)
  np.testing.assert_array_equal(got, np.asarray(want).transpose(0, 3, 1, 2))


# -- optimiser groups ------------------------------------------------------------------------------


def _expected_groups(leaves, cfg) -> dict[tuple[float, float], int]:
  """Elements per (learning rate, weight decay) under a kd_jax optimizer config's regex rules."""
  no_decay = [re.compile(r) for r in cfg.get("no_decay", ())]
  rules = [(re.compile(r), float(m)) for r, m in cfg.get("lr_multipliers", ())]
  out: dict[tuple[float, float], int] = {}
  for path, leaf in leaves:
    p = optim.path_str(path)
    mult = next((m for r, m in rules if r.search(p)), 1.0)
    wd = 0.0 if any(r.search(p) for r in no_decay) else float(cfg.get("weight_decay", 0.0))
    key = (round(float(cfg["learning_rate"]) * mult, 12), wd)
    out[key] = out.get(key, 0) + math.prod(leaf.shape)
  return out


def _torch_groups(opt) -> dict[tuple[float, float], int]:
  out: dict[tuple[float, float], int] = {}
  for g in opt.param_groups:
    key = (round(g["lr"], 12), g["weight_decay"])
    out[key] = out.get(key, 0) + sum(p.numel() for p in g["params"])
  return out


@pytest.mark.parametrize("name", ["pkd_backbone_r18", "pkd_backbone_r50", "spectral_r18_r50"])
def test_optimizer_groups_follow_the_jax_rules(name):
  # The PyTorch parameter names are translated to kd_jax paths for the configs' regexes (no decay
  # on biases / norm scales, per-group rates); the groups must hold the same parameters.
  size = tiny_size(name)
  x = _sds(1, size.frames, size.crop, size.crop, 3)
  rw = tm.resnet_width(size.width)
  if name.startswith("pkd"):
    config = pkd.base_config()
    net_name = "iframe" if name.endswith("r50") else "residual"
    cfg = config.networks[net_name]
    opt_cfg = dict(learning_rate=cfg.lr, weight_decay=config.backbone.weight_decay,
                   no_decay=config.backbone.no_decay, lr_multipliers=cfg.lr_groups)
    net = models.get(cfg.model, num_classes=size.num_classes, width=rw, **pkd.INPUT[net_name])
    params = _init_shapes(net, x, train=False)["params"]
  else:
    from kd_jax.methods import spectral  # pylint: disable=g-import-not-at-top
    config = spectral.tsm_recipe(spectral.base_config(), num_train=1000, epochs=50, batch=64,
                                 lr=0.01, weight_decay=5e-4)
    opt_cfg = spectral._optimizer(config.student.optimizer)  # pylint: disable=protected-access
    student = models.get("tsm_resnet18", num_classes=size.num_classes, width=rw)
    s_vars = _init_shapes(student, x, train=False)
    feats = _apply_shapes(student, s_vars, x, train=False)[1]["layer4"]
    adapter = spectral.SpectrumAdapter(rw * 8 * 4)  # to TSM-ResNet-50's layer4 channels
    a_params = _init_shapes(adapter, _sds(*feats.shape), train=False)["params"]
    params = {"student": s_vars["params"], "adapters": {"layer4": a_params}, "log_vars": _sds(4)}
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  step = torch_steps.build(name, batch=1, dtype="float32", compile=False, device="cpu", size=size)
  assert _torch_groups(step.optimizers[0]) == _expected_groups(leaves, opt_cfg)


# -- the steps -------------------------------------------------------------------------------------


def _snapshot(groups):
  return {k: [p.detach().clone() for p in ps] for k, ps in groups.items()}


def _changed(before, params) -> bool:
  return any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


@pytest.mark.parametrize("name", torch_steps.STEPS)
def test_step_trains_float32(name):
  step = torch_steps.build(name, batch=2, dtype="float32", compile=False, device="cpu",
                           size=tiny_size(name))
  trainable, frozen = _snapshot(step.trainable), _snapshot(step.frozen)
  calls = 2 if name == "genkd_phase2" else 1  # pass A (CVAE), then pass B (network)
  for i in range(calls):
    step()
    if name == "genkd_phase2" and i == 0:  # pass A moves the CVAE only
      assert _changed(trainable["cvae"], step.trainable["cvae"])
      assert not _changed(trainable["student"], step.trainable["student"])
      assert not _changed(trainable["attention"], step.trainable["attention"])
  for key, params in step.trainable.items():
    assert all(torch.isfinite(p).all() for p in params), key
    assert _changed(trainable[key], params), f"{key} did not train"
  for key, params in step.frozen.items():
    assert not _changed(frozen[key], params), f"frozen {key} changed"


@pytest.mark.parametrize("name", torch_steps.STEPS)
def test_step_runs_bfloat16(name):
  step = torch_steps.build(name, batch=2, dtype="bfloat16", compile=False, device="cpu",
                           size=tiny_size(name))
  step()
  for key, params in step.trainable.items():
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params), key


# -- the losses against kd_jax.losses --------------------------------------------------------------


def test_losses_match_kd_jax():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(4, 7)).astype(np.float32), rng.normal(size=(4, 7)).astype(np.float32)
  ts_, tt = torch.from_numpy(s), torch.from_numpy(t)
  close = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(torch_steps._soft_ce(ts_, tt).numpy(),
                             losses.soft_target_cross_entropy(s, t), **close)
  np.testing.assert_allclose(torch_steps._hinton_kd(ts_, tt, 4.0).item(),
                             losses.hinton_kd_loss(s, t, temperature=4.0).mean(), **close)

  fs = rng.normal(size=(2, 8, 3, 2, 2)).astype(np.float32)  # [N, T, C, h, w], torch layout
  ft = rng.normal(size=(2, 8, 3, 2, 2)).astype(np.float32)
  np.testing.assert_allclose(
      torch_steps._amplitude_mse(torch.from_numpy(fs), torch.from_numpy(ft)).item(),
      losses.temporal_spectrum_loss(fs, ft, time_axis=1).mean(), **close)

  shapes = [[(4, 3, 3, 3), (4, 4, 3, 3)], [(8, 4, 3, 3)]]  # two stages, torch [out, in, kh, kw]
  stud = [[rng.normal(size=sh).astype(np.float32) for sh in st] for st in shapes]
  teach = [[rng.normal(size=sh).astype(np.float32) * 2 for sh in st] for st in shapes]
  dct = torch.tensor(losses.spectral.dct_matrix(3), dtype=torch.float32)
  got = torch_steps._parameter_frequency_loss(
      [[torch.from_numpy(k) for k in st] for st in stud],
      [[torch.from_numpy(k) for k in st] for st in teach], dct).item()
  # kd_jax pools a stage's kernels into one [kh, kw, 1, N] kernel (_spectral_terms._pooled_slices).
  pool = lambda st: np.concatenate([k.transpose(2, 3, 1, 0).reshape(3, 3, 1, -1) for k in st], -1)  # noqa: E731
  want = losses.parameter_frequency_loss([pool(st) for st in stud], [pool(st) for st in teach])
  np.testing.assert_allclose(got, want, **close)

  f = np.abs(rng.normal(size=(2, 4, 3, 2, 2))).astype(np.float32)  # [N, C, T, H, W]
  a = rng.uniform(size=(2, 3, 4)).astype(np.float32)  # [N, T, C]
  got = torch_steps._foreground(torch.from_numpy(f), torch.from_numpy(a)).numpy()
  want = genkd.foreground(jnp.asarray(f.transpose(0, 2, 3, 4, 1)), jnp.asarray(a))
  np.testing.assert_allclose(got, np.asarray(want).transpose(0, 4, 1, 2, 3), **close)

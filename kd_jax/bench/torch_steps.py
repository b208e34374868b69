"""The benchmarked training steps written in PyTorch, for `python -m kd_jax.bench`.

Each step mirrors one kd_jax training step (same networks, losses and optimiser, the latter read
from the method's own config where it lives there) the way a PyTorch user would write it: eager, or `torch.compile` of the forward-and-loss function (AOTAutograd then
compiles the backward too), optionally under `torch.autocast(bfloat16)` with float32 parameters.
On CUDA the inputs and networks are channels-last, the optimisers fused, cuDNN autotuned and TF32
allowed for float32 matmuls (XLA's default on GPUs, so both sides run float32 the same way).

=====================  =========================================================================
step                   what one call does
=====================  =========================================================================
pkd_backbone_r18/_r50  PKD stage 1 (`pkd.backbone_stage`): ResNet-18 (residual network, input
                       BatchNorm) / ResNet-50 (I-frame network) on `frames` TSN segments folded
                       into the batch, segment-averaged logits, cross-entropy; Adam (eps 1e-3)
                       with coupled L2 1e-4 except on biases and PKD's per-group learning rates.
pkd_ic_r18/_r50        PKD stage 2 (`pkd.ic_stage`, `_ic_forward`): the frozen backbone in eval
                       mode, IC1..IC3 on `layer1..3` in train mode, `progressive_kd_loss` (T = 1)
                       against the backbone's own final logits (the curriculum's last and longest
                       phase, no extra network); Adam (eps 1e-3), as PKD.
genkd_phase2           One call of `genkd.make_loss_fn`'s step: pass A (student CVAE, Adam b1 0.8,
                       `cvae_loss` + GD against the frozen teacher CVAE on the student's F and A)
                       or pass B (Top-heavy I3D + attention head, SGD 1e-3 momentum 0.9 with
                       coupled L2 5e-4: double-softmax CE on the foreground feature, reconstruction
                       through the frozen CVAE, AD against the frozen I3D teacher). Calls alternate
                       A, B, A, ... (`GENKD_STEPS_PER_PASS`), so timing an even number of calls
                       gives the mean of the two, as the JAX step's count does.
spectral_r18_r50       `spectral.student_objective` of the 'all' entry: TSM-ResNet-18 student,
                       frozen TSM-ResNet-50 teacher (eval mode), CE + Hinton KD (T = 4) + temporal
                       amplitude-spectrum loss on `layer4` through a 1x1 adapter + DCT kernel
                       frequency loss (stages 1-4) under learned uncertainty weights; SGD momentum
                       0.9, coupled L2 5e-4 (not on the log-variances), gradient clip 20.
=====================  =========================================================================

`param_count(name, size)` counts each network's parameters (BatchNorm running statistics are not
parameters) on the meta device; `tests/test_bench_torch.py` checks them against the JAX models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import contextlib
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
import torch.nn.functional as F

from kd_jax.bench import torch_models as tm
from kd_jax.losses.spectral import dct_matrix

if TYPE_CHECKING:
  from kd_jax.bench.sizes import StepSize

STEPS: tuple[str, ...] = ("pkd_backbone_r18", "pkd_backbone_r50", "pkd_ic_r18", "pkd_ic_r50",
                          "genkd_phase2", "spectral_r18_r50")
DTYPES = ("float32", "bfloat16")
# Consecutive calls of one GenKD pass before the other (the JAX step's steps_per_pass).
GENKD_STEPS_PER_PASS = 1
# pkd.INPUT: the residual network (ResNet-18) and the I-frame network (ResNet-50).
PKD_INPUT = {18: dict(in_channels=3, input_norm=True), 50: dict(in_channels=3, input_norm=False)}

Tensor = torch.Tensor


def _check_name(name: str) -> None:
  if name not in STEPS:
    raise ValueError(f"unknown benchmark step {name!r}; allowed: {', '.join(STEPS)}")


def _depth(name: str) -> int:
  return 50 if name.endswith("r50") else 18


# ------------------------------------------------------------------------------------------------
# Networks (shared by build and param_count).


def _networks(name: str, size: StepSize) -> dict[str, nn.Module | None]:
  """The networks of a step, keyed as `param_count` reports them; None: no such network."""
  k, w = size.num_classes, size.width
  if name.startswith("pkd_"):
    d = _depth(name)
    student = tm.ResNet(d, num_classes=k, width=w, **PKD_INPUT[d])
    if name.startswith("pkd_backbone"):
      return {"student": student, "teacher": None}
    return {"student": student, "teacher": None,
            "heads": tm.ICHeads(f"resnet{d}", num_classes=k, width=w)}
  if name == "genkd_phase2":
    student = tm.InceptionI3d(num_classes=k, top_heavy=True, width=w)
    teacher = tm.InceptionI3d(num_classes=k, top_heavy=False, width=w)
    shape = tm.i3d_feature_shape(size.frames, size.crop, student.out_channels)
    hidden = tm.scale_channels(tm.ATTENTION_HIDDEN, w)
    return {
        "student": student,
        # The frozen teacher of phase 2: I3D with its own attention head and CVAE.
        "teacher": nn.ModuleDict(dict(net=teacher, attention=tm.AttentionHead(shape, hidden),
                                      cvae=tm.ConditionalVAE(shape))),
        "attention": tm.AttentionHead(shape, hidden),
        "cvae": tm.ConditionalVAE(shape),
    }
  student = tm.ResNet(18, num_classes=k, width=w, temporal_shift=True, dropout_rate=0.5)
  teacher = tm.ResNet(50, num_classes=k, width=w, temporal_shift=True, dropout_rate=0.5)
  adapter = nn.Conv2d(student.out_channels, teacher.out_channels, 1)  # spectral.SpectrumAdapter
  return {"student": student, "teacher": teacher, "adapter": adapter}


def param_count(name: str, size: StepSize) -> dict[str, int]:
  """Parameters per network of a step, built on the meta device (nothing is allocated or run).

  Keys: `student` and `teacher` (0 when the step has no separate teacher network: PKD's backbone
  stage, and PKD's IC stage, whose teacher is the backbone's own classifier), plus `heads` (PKD
  ICs), `attention` / `cvae` (GenKD's student attention head and CVAE; `teacher` then counts the
  frozen I3D with its attention head and CVAE) or `adapter` (spectral's 1x1 adapter; its 4
  log-variances are not counted).
  """
  _check_name(name)
  with torch.device("meta"):
    nets = _networks(name, size)
  return {key: 0 if m is None else tm.count(m) for key, m in nets.items()}


# ------------------------------------------------------------------------------------------------
# The step machinery.


class _Runtime:
  """Device, precision and compilation choices of one built step."""

  def __init__(self, device: str, dtype: str, compile_: bool):
    if dtype not in DTYPES:
      raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    self.device = torch.device(device)
    self.cuda = self.device.type == "cuda"
    self.bf16 = dtype == "bfloat16"
    self.compile_ = compile_
    self.generator = torch.Generator(device="cpu").manual_seed(0)
    if self.cuda:
      # Process-wide settings, as any PyTorch training script makes them. TF32 matmuls match
      # XLA's default for float32 on recent GPUs (cuDNN convs already use TF32 by default).
      torch.backends.cudnn.benchmark = True
      torch.set_float32_matmul_precision("high")

  def autocast(self) -> contextlib.AbstractContextManager:
    return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

  def float32(self) -> contextlib.AbstractContextManager:
    """Losses in float32, as kd_jax's: autocast would run their matmuls in bfloat16."""
    return torch.autocast(self.device.type, enabled=False)

  def module(self, m: nn.Module, *, train: bool, frozen: bool = False) -> nn.Module:
    m = m.to(self.device)
    if self.cuda:  # cuDNN's fast path for convs (and with bfloat16)
      fmt = torch.channels_last_3d if _is_3d(m) else torch.channels_last
      m = m.to(memory_format=fmt)
    m.train(train)
    if frozen:
      m.requires_grad_(False)
    return m

  def randn(self, *shape: int, channels_last: bool = False) -> Tensor:
    x = torch.randn(*shape, generator=self.generator).to(self.device)
    if self.cuda and channels_last:
      x = x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5
                       else torch.channels_last)
    return x

  def labels(self, batch: int, num_classes: int) -> Tensor:
    return torch.randint(0, num_classes, (batch,), generator=self.generator).to(self.device)

  def optimizer(self, cfg: Mapping[str, Any],
                params: list[tuple[str, Tensor]]) -> torch.optim.Optimizer:
    """A kd_jax optimizer config (`kd_jax.train.optim`) as a PyTorch optimizer.

    `weight_decay` is PyTorch's coupled L2 in both (kd_jax adds it to the gradient before SGD /
    Adam); `no_decay` and `lr_multipliers` (regexes on kd_jax's parameter paths) become parameter
    groups, so `params` are named as the JAX models name theirs (`_flax_paths`).
    """
    no_decay = [re.compile(r) for r in cfg.get("no_decay", ())]
    rules = [(re.compile(r), float(m)) for r, m in cfg.get("lr_multipliers", ())]
    lr, wd = float(cfg["learning_rate"]), float(cfg.get("weight_decay", 0.0))
    groups: dict[tuple[float, float], list[Tensor]] = {}
    for path, p in params:
      mult = next((m for r, m in rules if r.search(path)), 1.0)
      decay = 0.0 if any(r.search(path) for r in no_decay) else wd
      groups.setdefault((lr * mult, decay), []).append(p)
    param_groups = [{"params": ps, "lr": g_lr, "weight_decay": g_wd}
                    for (g_lr, g_wd), ps in groups.items()]
    fused = {"fused": True} if self.cuda else {}
    if cfg["name"] == "sgd":
      return torch.optim.SGD(param_groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                             nesterov=bool(cfg.get("nesterov", False)), **fused)
    if cfg["name"] == "adam":
      return torch.optim.Adam(param_groups, lr=lr, betas=(float(cfg.get("b1", 0.9)),
                                                          float(cfg.get("b2", 0.999))),
                              eps=float(cfg.get("eps", 1e-8)), **fused)
    raise ValueError(f"no PyTorch version of optimizer {cfg['name']!r}")

  def compile(self, fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    return torch.compile(fn) if self.compile_ else fn

  def sync(self) -> None:
    if self.cuda:
      torch.cuda.synchronize(self.device)


def _is_3d(m: nn.Module) -> bool:
  return any(isinstance(s, (nn.Conv3d, nn.ConvTranspose3d)) for s in m.modules())


_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)


def _flax_paths(prefix: str, module: nn.Module) -> list[tuple[str, Tensor]]:
  """The trainable parameters of `module`, named for kd_jax's optimizer regexes.

  Paths look like the JAX models' (`prefix/conv1/kernel`, `prefix/bn1/scale`, `prefix/fc/bias`):
  PyTorch's module names '/'-separated, a norm layer's `weight` called `scale` and any other
  `weight` a `kernel`. Deeper names differ (`layer1/0/...` against `layer1_0/...`); the configs'
  rules read only top-level names and leaves.
  """
  out = []
  for mod_name, mod in module.named_modules():
    for name, p in mod.named_parameters(recurse=False):
      if p.requires_grad:
        if name == "weight":
          name = "scale" if isinstance(mod, _NORMS) else "kernel"
        out.append(("/".join(filter(None, [prefix, *mod_name.split("."), name])), p))
  return out


class Step:
  """A built training step: each call runs one full step and returns after a device synchronise.

  `trainable` and `frozen` name the parameters the step updates and the ones it must leave alone,
  `optimizers` are its optimisers (for tests; the benchmark only calls the step).
  """

  def __init__(self, fn: Callable[[], None], trainable: dict[str, list[Tensor]],
               frozen: dict[str, list[Tensor]], optimizers: list[torch.optim.Optimizer]):
    self._fn = fn
    self.trainable = trainable
    self.frozen = frozen
    self.optimizers = optimizers

  def __call__(self) -> None:
    self._fn()


def _train_step(rt: _Runtime, loss_fn: Callable[..., Tensor], inputs: tuple[Tensor, ...],
                opt: torch.optim.Optimizer, clip_norm: float = 0.0) -> Callable[[], None]:
  fn = rt.compile(loss_fn)
  params = [p for g in opt.param_groups for p in g["params"]]

  def step() -> None:
    loss = fn(*inputs)
    loss.backward()
    if clip_norm > 0:  # optax.clip_by_global_norm over every trainable parameter
      nn.utils.clip_grad_norm_(params, clip_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    rt.sync()

  return step


def _params(*modules: nn.Module) -> list[Tensor]:
  return [p for m in modules for p in m.parameters()]


def _pkd_config(name: str) -> tuple[Any, Any]:
  """PKD's paper config and the block of the step's network (residual or I-frame)."""
  from kd_jax.methods import pkd  # pylint: disable=g-import-not-at-top
  config = pkd.base_config()
  return config, config.networks["iframe" if _depth(name) == 50 else "residual"]


# ------------------------------------------------------------------------------------------------
# Losses (float32, as kd_jax.losses).


def _soft_ce(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
  """`losses.soft_target_cross_entropy` per example."""
  p_t = F.softmax(teacher.detach().float() / temperature, -1)
  return -(p_t * F.log_softmax(student.float() / temperature, -1)).sum(-1)


def _hinton_kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
  """`losses.hinton_kd_loss(...).mean()`."""
  log_p_s = F.log_softmax(student.float() / temperature, -1)
  log_p_t = F.log_softmax(teacher.detach().float() / temperature, -1)
  return temperature**2 * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


def _amplitude_mse(student: Tensor, teacher: Tensor) -> Tensor:
  """`losses.temporal_spectrum_loss(...).mean()` on `[N, T, ...]`: ortho rfft amplitudes."""
  a_s = torch.fft.rfft(student.float(), dim=1, norm="ortho").abs()
  a_t = torch.fft.rfft(teacher.detach().float(), dim=1, norm="ortho").abs()
  return (a_s - a_t).square().mean()


def _frequency_distribution(kernels: list[Tensor], dct: Tensor) -> Tensor:
  """DCT energy distribution of all `(kh, kw)` slices of a stage's kernels (reading A)."""
  kh, kw = kernels[0].shape[-2:]
  slices = torch.cat([k.float().reshape(-1, kh, kw) for k in kernels])
  energy = (dct @ slices @ dct.T).square().mean(0)
  return energy / energy.sum().clamp_min(torch.finfo(torch.float32).tiny)


def _parameter_frequency_loss(student: list[list[Tensor]], teacher: list[list[Tensor]],
                              dct: Tensor, eps: float = 1e-8) -> Tensor:
  """`losses.parameter_frequency_loss` on pooled stage kernels: mean KL(p_t || p_s)."""
  kls = []
  for s, t in zip(student, teacher):
    p_s = _frequency_distribution(s, dct)
    with torch.no_grad():
      p_t = _frequency_distribution(t, dct)
    kls.append((p_t * (torch.log(p_t + eps) - torch.log(p_s + eps))).sum())
  return torch.stack(kls).mean()


# ------------------------------------------------------------------------------------------------
# The steps.


def _pkd_backbone(rt: _Runtime, name: str, batch: int, size: StepSize) -> Step:
  nets = _networks(name, size)
  net = rt.module(nets["student"], train=True)
  segments = size.frames
  x = rt.randn(batch * segments, 3, size.crop, size.crop, channels_last=True)
  y = rt.labels(batch, size.num_classes)
  config, cfg = _pkd_config(name)
  # pkd.backbone_stage: Adam, coupled L2 except on biases, per-group rates (spec 6.1).
  opt = rt.optimizer(dict(name="adam", learning_rate=cfg.lr, eps=config.backbone.eps,
                          weight_decay=config.backbone.weight_decay,
                          no_decay=config.backbone.no_decay, lr_multipliers=cfg.lr_groups),
                     _flax_paths("", net))

  def loss_fn(x: Tensor, y: Tensor) -> Tensor:
    with rt.autocast():
      logits, _ = net(x, segments)
    with rt.float32():
      return F.cross_entropy(logits.float(), y)

  return Step(_train_step(rt, loss_fn, (x, y), opt), {"student": _params(net)}, {}, [opt])


def _pkd_ic(rt: _Runtime, name: str, batch: int, size: StepSize) -> Step:
  nets = _networks(name, size)
  backbone = rt.module(nets["student"], train=False, frozen=True)
  heads = rt.module(nets["heads"], train=True)
  segments = size.frames
  x = rt.randn(batch * segments, 3, size.crop, size.crop, channels_last=True)
  config, cfg = _pkd_config(name)
  from kd_jax.methods import pkd  # pylint: disable=g-import-not-at-top
  ic = config.ic
  # pkd.ic_stage: Adam, no weight decay; the fc bias trained or frozen as configured.
  opt = rt.optimizer(dict(name="adam", learning_rate=cfg.ic_lr, eps=ic.eps,
                          weight_decay=ic.weight_decay,
                          lr_multipliers=((r"fc/bias$",
                                           1.0 if pkd.fc_bias_trained(ic.train_fc_bias, "pkd")
                                           else 0.0),)),
                     _flax_paths("", heads))

  def loss_fn(x: Tensor) -> Tensor:
    with rt.autocast():
      with torch.no_grad():
        final, taps = backbone(x, segments)
      ic_logits = heads(taps, segments)  # [N, 3, K]
    with rt.float32():
      # losses.progressive_kd_loss: summed over the ICs, then the batch mean.
      return _soft_ce(ic_logits, final[:, None]).sum(1).mean()

  return Step(_train_step(rt, loss_fn, (x,), opt), {"heads": _params(heads)},
              {"student": _params(backbone)}, [opt])


def _foreground(f: Tensor, a: Tensor) -> Tensor:
  """`genkd.foreground(scope='global')`: `F*A * sum(F) / sum(F*A)`, sums in float32."""
  f32 = f.float()
  fa = f32 * a.float().transpose(1, 2)[..., None, None]
  num, den = f32.sum(), fa.sum()
  scale = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)
  return (fa * scale).to(f.dtype)


def _genkd(rt: _Runtime, name: str, batch: int, size: StepSize) -> Step:
  from kd_jax.methods import genkd  # pylint: disable=g-import-not-at-top
  nets = _networks(name, size)
  student = rt.module(nets["student"], train=True)
  head = rt.module(nets["attention"], train=True)
  cvae = rt.module(nets["cvae"], train=True)
  teacher = rt.module(nets["teacher"], train=False, frozen=True)
  x = rt.randn(batch, 3, size.frames, size.crop, size.crop, channels_last=True)
  y = rt.labels(batch, size.num_classes)
  config = genkd.base_config()
  lc = genkd.loss_config(config, teacher=False)
  cvae_params = _params(cvae)
  # SGD on the network (pass B), Adam on the CVAE (pass A), as genkd.make_optimizer.
  net_opt = rt.optimizer(config.student.optimizer,
                         _flax_paths("backbone", student) + _flax_paths("attention_head", head))
  cvae_opt = rt.optimizer(config.student.cvae_optimizer, _flax_paths("cvae", cvae))
  kl_weight, gd_weight, ad_weight = lc.kl_weight, lc.gd_weight, lc.ad_weight
  # genkd.reconstruction_weight in epoch 1, in plain Python: a jnp call here would start JAX on
  # the GPU (and take most of its memory) inside the PyTorch process.
  rec_weight = lc.rec_max_weight * min(1, lc.rec_ramp_epochs) / lc.rec_ramp_epochs

  def pass_a(x: Tensor) -> Tensor:
    with rt.autocast():
      with torch.no_grad():  # the network runs in train mode (BN statistics move), no gradient
        f = student.features(x)
        a = head(f)
        t_rec = teacher["cvae"].posterior(f, a)[2]  # GD 'v8': teacher CVAE on the student's F, A
      mean, log_var, rec = cvae.posterior(f, a)
    with rt.float32():
      mean, log_var, a = mean.float(), log_var.float(), a.float()
      kl = -0.5 * (1.0 + log_var - (mean - a).square() - log_var.exp())
      l_cvae = (f.float() - rec.float()).square().mean() + kl_weight * kl.mean()
      l_gd = (rec.float() - t_rec.float()).square().mean()
      return l_cvae + gd_weight * l_gd

  def pass_b(x: Tensor, y: Tensor) -> Tensor:
    with rt.autocast():
      f = student.features(x)
      a = head(f)
      logits = student.classify(_foreground(f, a))
      rec = cvae.prior(a)  # through the frozen CVAE; the target F stays attached
      with torch.no_grad():
        t_a = teacher["attention"](teacher["net"].features(x))
    with rt.float32():
      scores = F.softmax(logits.float(), -1).sum(1)  # genkd 'double_softmax'
      l_cls = F.cross_entropy(scores, y)
      l_rec = (rec.float() - f.float()).square().mean()
      l_ad = (a.float() - t_a.float()).square().mean()
      return l_cls + rec_weight * l_rec + ad_weight * l_ad

  fn_a, fn_b = rt.compile(pass_a), rt.compile(pass_b)
  count = [0]

  def step() -> None:
    pass_b_now = (count[0] // GENKD_STEPS_PER_PASS) % 2 == 1
    count[0] += 1
    # Only the pass's own parameters get gradients, as jax.grad with stop_gradient on the rest.
    for p in cvae_params:
      p.requires_grad_(not pass_b_now)
    loss, opt = (fn_b(x, y), net_opt) if pass_b_now else (fn_a(x), cvae_opt)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    rt.sync()

  return Step(step, {"student": _params(student), "attention": _params(head),
                     "cvae": cvae_params}, {"teacher": _params(teacher)}, [net_opt, cvae_opt])


def _spectral(rt: _Runtime, name: str, batch: int, size: StepSize) -> Step:
  from kd_jax.methods import spectral  # pylint: disable=g-import-not-at-top
  nets = _networks(name, size)
  student = rt.module(nets["student"], train=True)
  teacher = rt.module(nets["teacher"], train=False, frozen=True)
  adapter = rt.module(nets["adapter"], train=True)
  log_vars = nn.Parameter(torch.zeros(4, device=rt.device))
  segments = size.frames
  x = rt.randn(batch * segments, 3, size.crop, size.crop, channels_last=True)
  y = rt.labels(batch, size.num_classes)
  dct = torch.tensor(dct_matrix(3), dtype=torch.float32, device=rt.device)
  config = spectral.base_config()
  tau, stages = float(config.kd.temperature), tuple(config.param.stages)
  # spectral.tsm_recipe (TSM's public recipe) plus the student stages' rule for the log-variances.
  opt_cfg = dict(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4,
                 no_decay=("bias$", "scale$", "^log_vars"), grad_clip_norm=20.0)
  opt = rt.optimizer(opt_cfg, _flax_paths("student", student) + _flax_paths("adapters", adapter)
                     + [("log_vars", log_vars)])

  def loss_fn(x: Tensor, y: Tensor) -> Tensor:
    with rt.autocast():
      logits, feats = student(x, segments)
      with torch.no_grad():
        t_logits, t_feats = teacher(x, segments)
      mapped = adapter(feats["layer4"])
    with rt.float32():
      ce = F.cross_entropy(logits.float(), y)
      kd = _hinton_kd(logits, t_logits, tau)
      unfold = lambda z: z.view(-1, segments, *z.shape[1:])  # noqa: E731  [N, T, C, h, w]
      spec = _amplitude_mse(unfold(mapped), unfold(t_feats["layer4"]))
      param = _parameter_frequency_loss([student.spatial_kernels(s) for s in stages],
                                        [teacher.spatial_kernels(s) for s in stages], dct)
      values = torch.stack([ce, kd, spec, param])
      # losses.uncertainty_weighted_sum: sum_i exp(-s_i) L_i + s_i.
      return (torch.exp(-log_vars) * values + log_vars).sum()

  step = _train_step(rt, loss_fn, (x, y), opt, opt_cfg["grad_clip_norm"])
  return Step(step, {"student": _params(student), "adapter": _params(adapter),
                     "log_vars": [log_vars]}, {"teacher": _params(teacher)}, [opt])


_BUILDERS = {
    "pkd_backbone_r18": _pkd_backbone,
    "pkd_backbone_r50": _pkd_backbone,
    "pkd_ic_r18": _pkd_ic,
    "pkd_ic_r50": _pkd_ic,
    "genkd_phase2": _genkd,
    "spectral_r18_r50": _spectral,
}


def build(name: str, *, batch: int, dtype: str, compile: bool, device: str,  # noqa: A002
          size: StepSize) -> Step:
  """One training step of `name` as a no-argument callable; each call is one full step.

  Args:
    name: one of `STEPS`.
    batch: clips per step (PKD and spectral fold `size.frames` segments per clip into the batch).
    dtype: 'float32', or 'bfloat16' for `torch.autocast(bfloat16)` with float32 parameters.
    compile: `torch.compile` the forward-and-loss function(s); the first calls compile.
    device: a torch device string ('cuda', 'cuda:0', 'cpu').
    size: frames (segments for PKD / spectral, clip length for GenKD), crop, classes, width.

  Returns:
    A `Step`, called as `step()`: forward, loss, backward, optimiser step and zero_grad, then a
    device synchronise, so the caller can time it with a host clock. Inputs are random tensors
    made here, once.

  Raises:
    ValueError: an unknown name or dtype.
  """
  _check_name(name)
  rt = _Runtime(device, dtype, compile)
  torch.manual_seed(0)
  return _BUILDERS[name](rt, name, batch, size)


__all__ = ["DTYPES", "GENKD_STEPS_PER_PASS", "STEPS", "Step", "build", "param_count"]

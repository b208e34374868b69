"""Collaborative distillation in the parameter and spectrum domains (arXiv 2009.06902), end to end.

A TSM teacher (TSM-ResNet-50; trained here with cross-entropy, or loaded from a converted
checkpoint) teaches a TSM student (TSM-ResNet-18 or TSM-MobileNetV2) on 8 TSN segments. The
student's objective is built from four terms of ``kd_jax.losses``:

* ``ce``: cross-entropy with the labels;
* ``kd``: Hinton KD on the logits, ``T^2 KL(softmax(t/T) || softmax(s/T))`` (``config.kd``);
* ``spec``: the temporal spectrum loss on the configured taps (default ``layer4``), the student's
  features mapped to the teacher's channels by a learned 1x1 adapter first (``config.spec``);
* ``param``: the distance between the teacher's and the student's parameter frequency distributions,
  per stage, over the spatial (k >= 3) conv kernels of that stage (``config.param``).

They are combined by the collaborative strategy (``config.collab``): by default learned
homoscedastic-uncertainty weights ``sum_i exp(-s_i) L_i + s_i``
(``losses.uncertainty_weighted_sum``, the ``s_i`` trained with the student); ``weighting='fixed'``
uses the fixed weights instead, and ``mutual=True`` turns on online mutual learning, where the
teacher is trained in the same stage with ``CE + mutual_weight * T^2 KL(softmax(s/T) ||
softmax(t/T))`` (student side under stop-gradient).

**What is inferred.** The paper's full text was not available (see ``specs/spectral_kd.md``): every
formula is a reconstruction, and each choice the abstract does not pin down is a config field: the
spectrum's taps, amplitude / power / complex mode, normalisation, distance, spatial pooling and
adapter BN; the reading of "parameter frequency distribution" (``dct``: DCT energy of kernels, or
``hist``: weight-value histogram), its divergence and stages; the weighting (uncertainty / fixed);
whether the teacher is trained online; whether a logit-KD term is part of the objective.

**Kernel pairing** (``param``): a stage is an output stride, 4/8/16/32 = stages 1/2/3/4. ResNet
stage ``i`` holds the 3x3 convs of blocks ``layer{i}_*`` (BasicBlock: ``conv1`` and ``conv2``;
Bottleneck: ``conv2``); MobileNetV2 stage ``i`` holds the depthwise 3x3 ``dw_conv`` of the inverted
residual blocks whose output has that stride (settings (6,24), (6,32), (6,64)+(6,96),
(6,160)+(6,320)). Stems, 1x1 convs and MobileNetV2's stride-2 first block have no counterpart and
are left out. All kernels of a stage are pooled into one distribution per network, so teacher and
student stages of different depth and width pair one to one (:func:`stage_kernel_paths`).

**Stages.** ``teacher`` (unless ``config.teacher.checkpoint`` is set), then one student stage per
entry of ``config.ablation``: ``'ce'`` (the baseline), any ``'+'``-joined subset of
``kd``/``spec``/``param``, or ``'all'``; an ``'@fixed'``, ``'@uncertainty'`` or ``'@mutual'`` suffix
overrides the weighting or turns on mutual learning for that entry. Every student stage starts from
the same initialisation and sees the same data order. Which terms are on, and the weighting, are
runtime inputs of one compiled step, so all stages that need the teacher's forward pass share one
compilation (and so do those that do not).

**Trainable pytree of a student stage.** ``{'student', 'adapters', 'log_vars'}`` (plus ``'teacher'``
under mutual learning, with its own learning-rate factor through the optimizer's
``lr_multipliers`` rule ``'^teacher/'``). The frozen teacher, the term switches and the fixed
weights travel in ``frozen``. ``log_vars`` are always excluded from weight decay.

**Outputs.** ``results.json`` (every stage's top-1/top-5, the ablation, learned weights, spectra),
``report.md`` with the ablation table and ``spectra.png`` (the teacher's and the student's temporal
amplitude spectra before and after distillation), written by :mod:`kd_jax.methods._spectral_report`.
The ablation table is also printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import os
import re
import time
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import losses
from kd_jax import models
from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods import _spectral_report
from kd_jax.models import layers as model_layers
from kd_jax.train import compilation
from kd_jax.train import mesh as mesh_lib
from kd_jax.train import optim
from kd_jax.train import weights as weights_lib

if TYPE_CHECKING:  # Imported where used: the video stack is slow to import.
  from kd_jax.data import streams

# ``eval_batches(per_host)``: every evaluation clip once, padded (``Stage.eval_data``).
EvalBatches = Callable[[int], Iterable[dict[str, np.ndarray]]]

TERMS = ("ce", "kd", "spec", "param")
DISTILL_TERMS = TERMS[1:]
WEIGHTINGS = ("uncertainty", "fixed")
SPEC_MODES = ("amplitude", "power", "complex")
SPEC_NORMS = ("none", "log1p", "l2", "drop_dc")
SPEC_DISTANCES = ("mse", "l1")
PARAM_READINGS = ("dct", "hist", "none")
TAPS = ("layer1", "layer2", "layer3", "layer4")
_RESNET_BLOCK = re.compile(r"^layer(\d+)_(\d+)$")
_MOBILENET_BLOCK = re.compile(r"^block(\d+)$")
# MobileNetV2 setting index -> stage (output stride 4/8/16/32 -> 1/2/3/4); setting 0 (stride 2)
# has no ResNet counterpart (ResNet's stride-2 level is the 7x7 stem) and is left out.
_MOBILENET_SETTING_STAGE = {0: None, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4}


# ------------------------------------------------------------------------------------------------
# The config.


def base_config() -> ml_collections.ConfigDict:
  """Every field of the spectral method with the spec's recommended defaults (full-size models):
  what every config starts from."""
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = train.engine_config(log_every=50, checkpoint_every=500, max_to_keep=2)
  config.method = "spectral"
  config.seed = 0
  # True: every non-mutual student stage runs one compiled step (the CE-only and param-only stages
  # then also run the teacher's forward pass, unused): fewer compilations, more compute.
  config.shared_step = False

  # synthetic_actions, generated on first use at the size in `synthetic` (any config but default /
  # tiny); eval: resize to 256, centre crop 224 (TSM's efficient protocol).
  config.data = sources.data_config(
      auto_prepare=True,
      num_segments=8,  # TSM: 8 uniformly sampled segments
      cache_eval=False,  # keep the decoded eval set in memory (small eval sets only)
      synthetic=dict(num_classes=12, num_frames=32, height=48, width=64, train_clips=32,
                     test_clips=12, seed=0))

  def model(name, **kwargs):
    block = ml_collections.ConfigDict(dict(model=name, checkpoint="", init_checkpoint=""))
    block.kwargs = ml_collections.ConfigDict(kwargs)
    return block

  # Teacher: TSM-ResNet-50 [INFERRED-weak]. `checkpoint`: a converted, trained teacher
  # (python -m kd_jax.models.convert), which skips the teacher stage; `init_checkpoint`: converted
  # ImageNet weights of the same architecture to start the teacher stage from (classifier re-drawn).
  config.teacher = model("tsm_resnet50", dropout_rate=0.5)
  config.teacher.num_steps = 1000
  config.teacher.batch_size = 64
  config.teacher.eval_every = 0
  config.teacher.optimizer = train.optimizer_config(
      name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4, schedule="step",
      decay_at=(0.4, 0.8), grad_clip_norm=20.0)
  # Student: TSM-MobileNetV2 or TSM-ResNet-18 [INFERRED-weak]; `init_checkpoint`: converted
  # ImageNet weights of the same architecture (the classifier is re-drawn). `checkpoint` is unused.
  config.student = model("tsm_mobilenet_v2", dropout_rate=0.5)
  config.student.num_steps = 1000
  config.student.batch_size = 64
  config.student.eval_every = 0
  config.student.optimizer = train.optimizer_config(
      name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=5e-4, schedule="step",
      decay_at=(0.4, 0.8), grad_clip_norm=20.0)

  # Logit KD [UNKNOWN whether the paper has it]: T^2 KL(softmax(t/T) || softmax(s/T)).
  config.kd = ml_collections.ConfigDict(dict(temperature=4.0, weight=1.0))
  # Spectrum loss [INFERRED]: taps, mode (amplitude|power|complex), norm (none|log1p|l2|drop_dc),
  # distance (mse|l1), spatial pooling, BN after the 1x1 adapter.
  config.spec = ml_collections.ConfigDict(dict(
      layers=("layer4",), mode="amplitude", norm="none", distance="mse", pool_spatial=False,
      adapter_bn=False, weight=1.0))
  # Parameter distribution [INFERRED-weak]: reading dct (A) | hist (B) | none; divergence
  # kl | sym_kl | js; stages 1-4; soft-histogram settings for reading B.
  config.param = ml_collections.ConfigDict(dict(
      reading="dct", divergence="kl", stages=(1, 2, 3, 4), weight=1.0, eps=1e-8, hist_bins=64,
      hist_range=4.0, hist_scale="own"))
  # Collaborative strategy [INFERRED-weak]: uncertainty (learned exp(-s_i) L_i + s_i) | fixed;
  # weight_ce: CE gets a learned weight too; mutual: the teacher is trained online (DML-style).
  config.collab = ml_collections.ConfigDict(dict(
      weighting="uncertainty", weight_ce=True, mutual=False, mutual_weight=1.0,
      teacher_lr_multiplier=1.0))
  # Student stages: 'ce', '+'-joined subsets of kd/spec/param, 'all'; suffixes @fixed,
  # @uncertainty, @mutual.
  config.ablation = ("ce", "all")
  config.report = ml_collections.ConfigDict(dict(spectrum_layer="layer4", num_clips=32))
  return config


def tsm_recipe(config: ml_collections.ConfigDict, *, num_train: int, epochs: int, batch: int,
               lr: float, weight_decay: float) -> ml_collections.ConfigDict:
  """TSM's public recipe (spec section 8.2) for the teacher and the student: SGD momentum 0.9,
  ``lr`` at global batch ``batch`` scaled linearly with the configured batch, step decay x0.1 at
  40 % and 80 % of training (epochs 20 and 40 of 50), gradient-norm clip 20, dropout 0.5."""
  for block in (config.teacher, config.student):
    block.batch_size = batch
    block.num_steps = epochs * num_train // batch
    block.optimizer = train.optimizer_config(
        name="sgd", learning_rate=lr, momentum=0.9, weight_decay=weight_decay, schedule="step",
        decay_at=(0.4, 0.8), grad_clip_norm=20.0, no_decay=("bias$", "scale$"))
  return config


def smoke_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny models, 4 segments of 32x32, 3 steps per stage, CE vs all: a CPU check of a config."""
  config.data.num_segments, config.data.crop_size, config.data.resize_size = 4, 32, 40
  config.data.cache_eval = True
  config.teacher.model, config.student.model = "tsm_resnet50", "tsm_resnet18"
  config.teacher.kwargs = ml_collections.ConfigDict(dict(tiny=True))
  config.student.kwargs = ml_collections.ConfigDict(dict(tiny=True))
  for block in (config.teacher, config.student):
    block.num_steps, block.batch_size, block.eval_every = 3, 8, 0
    block.checkpoint = block.init_checkpoint = ""
    block.optimizer = train.optimizer_config(
        name="adam", learning_rate=3e-3, schedule="cosine", warmup_steps=10,
        no_decay=("bias$", "scale$"), grad_clip_norm=20.0)
  config.collab.teacher_lr_multiplier = 0.3
  config.shared_step = True
  config.train.log_every = 1
  config.train.checkpoint_every = 200
  config.ablation = ("ce", "all")
  config.report.num_clips = 8
  return config


# ------------------------------------------------------------------------------------------------
# Kernel pairing (parameter distillation).


def _get(tree: Mapping[str, Any], path: str) -> Any:
  for part in path.split("/"):
    tree = tree[part]
  return tree


def stage_kernel_paths(model: nn.Module, params: Mapping[str, Any]) -> dict[int, list[str]]:
  """The spatial (k >= 3) conv kernels of each stage of a TSM / TSN backbone, by parameter path.

  Args:
    model: a ``ResNet`` (``tsm_resnet18``/``50``, ``resnet18``/``50``) or ``MobileNetV2``.
    params: its parameters (arrays or ``ShapeDtypeStruct`` s).

  Returns:
    ``{stage: ['layer1_0/conv1/kernel', ...]}`` for the stages 1-4 that have such kernels, paths in
    parameter order.

  Raises:
    UserError: a model whose stages are not known.
  """
  name = type(model).__name__
  out: dict[int, list[str]] = {}

  def add(stage, block_key, sub):
    for path, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
      p = optim.path_str(path)
      shape = tuple(leaf.shape)
      if p.endswith("kernel") and len(shape) == 4 and min(shape[:2]) >= 3:
        out.setdefault(stage, []).append(f"{block_key}/{p}")

  if name == "ResNet":
    for key in sorted(params, key=_natural_key):
      m = _RESNET_BLOCK.match(key)
      if m:
        add(int(m.group(1)), key, params[key])
  elif name == "MobileNetV2":
    setting_of_block = []
    for setting, n in enumerate(model.stage_repeats):
      setting_of_block += [setting] * n
    for key in sorted(params, key=_natural_key):
      m = _MOBILENET_BLOCK.match(key)
      if m:
        stage = _MOBILENET_SETTING_STAGE[setting_of_block[int(m.group(1))]]
        if stage is not None:
          add(stage, key, params[key])
  else:
    raise UserError(f"parameter distillation does not know the stages of {name}; use a ResNet or "
                    "MobileNetV2 (TSM) model, or set --config.param.reading=none")
  return out


def _natural_key(key: str) -> tuple:
  return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


@dataclasses.dataclass(frozen=True)
class StagePair:
  """The kernels of one stage of the student and of the teacher, compared as one pair."""

  stage: int
  student: tuple[str, ...]
  teacher: tuple[str, ...]
  kernel_size: tuple[int, int]


def pair_stage_kernels(student: nn.Module, student_params: Mapping[str, Any], teacher: nn.Module,
                       teacher_params: Mapping[str, Any],
                       stages: Sequence[int] = (1, 2, 3, 4)) -> list[StagePair]:
  """Pairs the student's and the teacher's spatial kernels stage by stage (see the module doc).

  Raises:
    UserError: a requested stage has no spatial kernels on one side, or the kernel sizes differ
      within a stage or between the two networks.
  """
  if not stages:
    raise UserError("config.param.stages is empty; name at least one stage (1-4) or set "
                    "--config.param.reading=none")
  s_paths = stage_kernel_paths(student, student_params)
  t_paths = stage_kernel_paths(teacher, teacher_params)
  pairs = []
  for stage in stages:
    if stage not in (1, 2, 3, 4):
      raise UserError(f"config.param.stages has {stage!r}; stages are 1, 2, 3, 4")
    sizes = {}
    for side, model, params, paths in (("student", student, student_params, s_paths),
                                       ("teacher", teacher, teacher_params, t_paths)):
      if not paths.get(stage):
        raise UserError(
            f"cannot pair kernels of stage {stage}: the {side} ({type(model).__name__}) has no "
            f"spatial (k >= 3) conv kernel there; drop stage {stage} from config.param.stages")
      ks = {tuple(_get(params, p).shape[:2]) for p in paths[stage]}
      if len(ks) != 1:
        raise UserError(f"cannot pair kernels of stage {stage}: the {side} mixes kernel sizes "
                        f"{sorted(ks)}; one stage must have one (kh, kw)")
      sizes[side] = ks.pop()
    if sizes["student"] != sizes["teacher"]:
      raise UserError(
          f"cannot pair kernels of stage {stage}: student {sizes['student']} vs teacher "
          f"{sizes['teacher']} kernels; their frequency distributions have different bins")
    pairs.append(StagePair(stage, tuple(s_paths[stage]), tuple(t_paths[stage]),
                           sizes["student"]))
  return pairs


def _pooled_slices(kernels: Sequence[jax.Array]) -> jax.Array:
  """All ``(kh, kw)`` slices of a stage's kernels as one kernel ``[kh, kw, 1, N]``."""
  out = []
  for k in kernels:
    kh, kw = k.shape[-4:-2]
    out.append(jnp.reshape(jnp.moveaxis(k, (-4, -3), (0, 1)), (kh, kw, 1, -1)))
  return jnp.concatenate(out, axis=-1)


def parameter_term(student_params, teacher_params, pairs: Sequence[StagePair],
                   cfg: ml_collections.ConfigDict) -> jax.Array:
  """The parameter-distribution loss: the mean over stage pairs of ``D(p_teacher, p_student)``.

  ``dct`` (reading A): ``p`` is the orthonormal 2-D DCT-II energy distribution of all the stage's
  kernel slices; with ``divergence='kl'`` this is exactly ``losses.parameter_frequency_loss`` on
  the pooled stage kernels. ``hist`` (reading B): ``p`` is the soft histogram of the stage's weight
  values, standardised by their own std (``hist_scale='own'``) or the teacher's
  (``'teacher'``). The teacher side gets no gradient.
  """
  s_groups = [[_get(student_params, p) for p in pair.student] for pair in pairs]
  t_groups = [[jax.lax.stop_gradient(_get(teacher_params, p)) for p in pair.teacher]
              for pair in pairs]
  if cfg.reading == "dct":
    if cfg.divergence == "kl":
      return losses.parameter_frequency_loss(
          [_pooled_slices(g) for g in s_groups], [_pooled_slices(g) for g in t_groups],
          eps=cfg.eps)
    return jnp.mean(jnp.stack([
        losses.distribution_divergence(losses.pooled_frequency_distribution(s),
                                       losses.pooled_frequency_distribution(t),
                                       kind=cfg.divergence, eps=cfg.eps)
        for s, t in zip(s_groups, t_groups)]))
  if cfg.reading == "hist":
    terms = []
    for s, t in zip(s_groups, t_groups):
      kw = dict(num_bins=cfg.hist_bins, range_sigmas=cfg.hist_range)
      p_t = losses.weight_value_distribution(t, **kw)
      scale = None
      if cfg.hist_scale == "teacher":
        scale = jnp.std(jnp.concatenate([jnp.ravel(k) for k in t]))
      p_s = losses.weight_value_distribution(s, scale=scale, **kw)
      terms.append(losses.distribution_divergence(p_s, p_t, kind=cfg.divergence, eps=cfg.eps))
    return jnp.mean(jnp.stack(terms))
  return jnp.zeros((), jnp.float32)


# ------------------------------------------------------------------------------------------------
# Spectrum term.


class SpectrumAdapter(nn.Module):
  """The learned 1x1 adapter from student to teacher channels (FitNets' regressor), optional BN.

  A Dense layer on the channel axis is a 1x1 conv on ``[B, T, h, w, C]`` (and works on pooled
  ``[B, T, C]`` too). It is linear, so it commutes with the temporal FFT: mapping before the FFT
  equals mapping the complex spectrum (spec section 3.3).
  """

  features: int
  use_bn: bool = False
  dtype: Any = None  # computation dtype (the student's); parameters stay float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.Dense(self.features, use_bias=not self.use_bn, dtype=self.dtype, name="proj")(x)
    if self.use_bn:
      y = model_layers.BatchNorm(dtype=self.dtype, name="bn")(y, train=train)
    return y


def spectrum_distance(student: jax.Array, teacher: jax.Array, *, mode: str = "amplitude",
                      norm: str = "none", distance: str = "mse",
                      pool_spatial: bool = False) -> jax.Array:
  """The spectrum loss between adapted student and teacher features ``[B, T, ...]``; a scalar.

  ``amplitude`` / ``none`` / ``mse`` is ``losses.temporal_spectrum_loss`` (the default). The other
  settings are the spec's ablations: ``power`` (``|X|^2``), ``complex`` (L2 of the full complex
  orthonormal FFT, which by Parseval equals FitNets' feature MSE), ``log1p`` / ``l2`` (per-example
  L2 normalisation over frequencies and channels) / ``drop_dc`` normalisations of the amplitude,
  ``l1`` distance, and spatial pooling before the FFT.
  """
  if pool_spatial and student.ndim > 3:
    axes = tuple(range(2, student.ndim - 1))
    student, teacher = jnp.mean(student, axes), jnp.mean(teacher, axes)
  if mode == "amplitude" and norm == "none" and distance == "mse":
    return jnp.mean(losses.temporal_spectrum_loss(student, teacher, time_axis=1))
  s = student.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher).astype(jnp.float32)
  if mode == "complex":
    diff = jnp.fft.fft(s, axis=1, norm="ortho") - jnp.fft.fft(t, axis=1, norm="ortho")
    sq = jnp.real(diff) ** 2 + jnp.imag(diff) ** 2
    return jnp.mean(sq if distance == "mse" else jnp.sqrt(sq + 1e-12))
  a_s = losses.temporal_amplitude(s, time_axis=1)
  a_t = losses.temporal_amplitude(t, time_axis=1)
  if mode == "power":
    a_s, a_t = a_s**2, a_t**2
  if norm == "log1p":
    a_s, a_t = jnp.log1p(a_s), jnp.log1p(a_t)
  elif norm == "l2":
    def unit(a):
      n = jnp.sqrt(jnp.sum(a**2, axis=tuple(range(1, a.ndim)), keepdims=True))
      return a / jnp.maximum(n, 1e-12)
    a_s, a_t = unit(a_s), unit(a_t)
  elif norm == "drop_dc":
    a_s, a_t = a_s[:, 1:], a_t[:, 1:]
  d = a_s - a_t
  return jnp.mean(d**2 if distance == "mse" else jnp.abs(d))


def amplitude_curve(features: jax.Array) -> jax.Array:
  """Mean temporal amplitude per frequency bin of ``[B, T, ...]`` features: ``[T // 2 + 1]``."""
  a = losses.temporal_amplitude(features, time_axis=1)
  return jnp.mean(jnp.moveaxis(a, 1, 0).reshape(a.shape[1], -1), axis=1)


# ------------------------------------------------------------------------------------------------
# Ablation entries.


@dataclasses.dataclass(frozen=True)
class Entry:
  """One student stage of the ablation."""

  spec: str
  terms: tuple[str, ...]  # distillation terms that are on (CE is always on)
  weighting: str
  mutual: bool

  @property
  def stage_name(self) -> str:
    return "student_" + re.sub(r"[^a-z0-9]+", "_", self.spec.lower()).strip("_")

  @property
  def label(self) -> str:
    if not self.terms:
      return "CE"
    mutual = ", mutual" if self.mutual else ""
    return "CE + " + " + ".join(self.terms) + f" ({self.weighting}{mutual})"


def parse_entry(spec: str, collab: ml_collections.ConfigDict) -> Entry:
  """``'ce'``, ``'kd+spec'``, ``'all'``, ``'all@fixed'``, ``'param@mutual'``, ... -> Entry."""
  body, *options = spec.strip().lower().split("@")
  if body == "ce":
    terms: tuple[str, ...] = ()
  elif body == "all":
    terms = DISTILL_TERMS
  else:
    names = [t.strip() for t in body.split("+") if t.strip()]
    bad = [t for t in names if t not in DISTILL_TERMS]
    if bad or not names:
      raise UserError(f"config.ablation entry {spec!r}: terms must be 'ce', 'all' or '+'-joined "
                      f"names from {', '.join(DISTILL_TERMS)}")
    terms = tuple(t for t in DISTILL_TERMS if t in names)
  weighting, mutual = collab.weighting, bool(collab.mutual)
  for opt in options:
    if opt in WEIGHTINGS:
      weighting = opt
    elif opt == "mutual":
      mutual = True
    else:
      raise UserError(f"config.ablation entry {spec!r}: unknown option {opt!r}; use @fixed, "
                      "@uncertainty or @mutual")
  if not terms:
    mutual = False  # the CE baseline never touches the teacher
  return Entry(spec, terms, weighting, mutual)


def parse_ablation(config: ml_collections.ConfigDict) -> list[Entry]:
  """Every entry of ``config.ablation``; a ``UserError`` if two name the same stage."""
  entries = [parse_entry(e, config.collab) for e in config.ablation]
  names = [e.stage_name for e in entries]
  if len(set(names)) != len(names):
    raise UserError(f"config.ablation names a stage twice: {list(config.ablation)}")
  return entries


# ------------------------------------------------------------------------------------------------
# Config validation.


def _check_config(config: ml_collections.ConfigDict) -> None:
  sp, pr, co = config.spec, config.param, config.collab
  checks = [
      (sp.mode in SPEC_MODES, f"config.spec.mode must be one of {SPEC_MODES}, got {sp.mode!r}"),
      (sp.norm in SPEC_NORMS, f"config.spec.norm must be one of {SPEC_NORMS}, got {sp.norm!r}"),
      (sp.distance in SPEC_DISTANCES,
       f"config.spec.distance must be one of {SPEC_DISTANCES}, got {sp.distance!r}"),
      (sp.mode != "complex" or sp.norm == "none",
       "config.spec.norm applies to the amplitude and power modes; set it to 'none' for complex"),
      (bool(sp.layers) and all(l in TAPS for l in sp.layers),
       f"config.spec.layers must be a non-empty subset of {TAPS}, got {tuple(sp.layers)}"),
      (pr.reading in PARAM_READINGS,
       f"config.param.reading must be one of {PARAM_READINGS}, got {pr.reading!r}"),
      (pr.divergence in losses.distributions.DIVERGENCES,
       f"config.param.divergence must be one of {losses.distributions.DIVERGENCES}, got "
       f"{pr.divergence!r}"),
      (pr.hist_scale in ("own", "teacher"),
       f"config.param.hist_scale must be 'own' or 'teacher', got {pr.hist_scale!r}"),
      (co.weighting in WEIGHTINGS,
       f"config.collab.weighting must be one of {WEIGHTINGS}, got {co.weighting!r}"),
      (bool(config.ablation), "config.ablation is empty; list at least one student stage"),
  ]
  for ok, message in checks:
    if not ok:
      raise UserError(message)


# ------------------------------------------------------------------------------------------------
# Data.


def load_data(config: ml_collections.ConfigDict) -> streams.Streams:
  """The dataset of ``config.data`` as TSN segments; prepares ``synthetic_actions`` on first use
  (configs other than the two named ones: the size in ``data.synthetic``)."""
  from kd_jax.data import streams  # pylint: disable=g-import-not-at-top,redefined-outer-name
  dcfg = config.data
  sized = dcfg.name == "synthetic_actions" and dcfg.config not in ("default", "tiny")
  return streams.open_streams(dcfg, "rgb_segments", sized=sized,
                              num_segments=int(dcfg.num_segments))


# ------------------------------------------------------------------------------------------------
# Models and initialisation.


def _fast_key(key: jax.Array) -> jax.Array:
  """An ``rbg`` key derived from ``key``.

  ``model.init`` with it compiles several times faster on CPU than with threefry (the random
  initialisers dominate the init program).
  """
  data = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)[:2]
  return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                  impl="rbg")


def build_model(mcfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  try:
    return models.get(mcfg.model, num_classes=num_classes, **_common.model_kwargs(mcfg.kwargs))
  except ValueError as e:
    raise UserError(f"cannot build {mcfg.model!r}: {e}") from None


def _pretrained(params, state, pretrained: Mapping[str, Any] | None, what: str):
  """Initial variables overwritten by converted ImageNet weights; the classifier stays fresh.

  Weights the checkpoint lacks keep their fresh values (``strict=False``).
  """
  if pretrained is None:
    return params, state
  kw = dict(strict=False, what=f"config.{what}", hint="use a checkpoint of the same architecture")
  params = weights_lib.merge_pretrained(params, pretrained["params"], skip=("fc", "classifier"),
                                        **kw)
  state = {k: weights_lib.merge_pretrained(v, pretrained.get(k, {}), **kw)
           for k, v in state.items()}
  return params, state


@dataclasses.dataclass
class Setup:
  """Everything the stages share: models, shapes, pairing, data."""

  config: ml_collections.ConfigDict
  data: streams.Streams
  teacher: nn.Module
  student: nn.Module
  adapters: dict[str, SpectrumAdapter]
  feature_shapes: dict[str, tuple[int, ...]]
  pairs: list[StagePair]
  example: np.ndarray
  student_init_vars: Mapping[str, Any] | None  # pretrained student weights, or None
  teacher_init_vars: Mapping[str, Any] | None = None  # pretrained teacher weights, or None


def make_setup(config: ml_collections.ConfigDict, data: streams.Streams) -> Setup:
  """Builds the models; checks, before any training, that the configured taps and kernels pair."""
  dcfg = config.data
  example = np.zeros((1, dcfg.num_segments, dcfg.crop_size, dcfg.crop_size, 3), np.float32)
  teacher = build_model(config.teacher, data.num_classes)
  if config.teacher.checkpoint:
    converted = _common.load_converted(config.teacher.checkpoint, "config.teacher.checkpoint",
                                       config.teacher.model)
    teacher = converted.build()
  student = build_model(config.student, data.num_classes)

  def shapes(model):
    try:
      return jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
    except ValueError as e:
      raise UserError(f"{type(model).__name__} does not take clips "
                      f"{tuple(example.shape)}: {e}") from None

  t_vars, s_vars = shapes(teacher), shapes(student)
  if config.teacher.checkpoint:
    t_out = jax.eval_shape(lambda v: teacher.apply(v, example, train=False), t_vars)[0]
    if t_out.shape[-1] != data.num_classes:
      raise UserError(f"the teacher checkpoint has {t_out.shape[-1]} classes, the dataset "
                      f"{data.num_classes}; convert a teacher trained on this dataset")
  t_feats = jax.eval_shape(lambda v: teacher.apply(v, example, train=False), t_vars)[1]
  s_feats = jax.eval_shape(lambda v: student.apply(v, example, train=False), s_vars)[1]
  adapters, feature_shapes = {}, {}
  for layer in config.spec.layers:
    ts, ss = t_feats[layer].shape, s_feats[layer].shape
    if ts[:-1] != ss[:-1]:
      raise UserError(
          f"spectrum tap {layer}: teacher features {ts} and student features {ss} differ in more "
          "than channels; pick taps of equal stride or set --config.spec.pool_spatial=True")
    adapters[layer] = SpectrumAdapter(ts[-1], use_bn=config.spec.adapter_bn,
                                      dtype=s_feats[layer].dtype)
    feature_shapes[layer] = tuple(ss)
  pairs = []
  if config.param.reading != "none":
    pairs = pair_stage_kernels(student, s_vars["params"], teacher, t_vars["params"],
                               tuple(config.param.stages))
  init_vars = teacher_init = None
  if config.student.init_checkpoint:
    init_vars = _common.load_converted(config.student.init_checkpoint,
                                       "config.student.init_checkpoint",
                                       config.student.model).variables
  if config.teacher.init_checkpoint and not config.teacher.checkpoint:
    teacher_init = _common.load_converted(config.teacher.init_checkpoint,
                                          "config.teacher.init_checkpoint",
                                          config.teacher.model).variables
  return Setup(config, data, teacher, student, adapters, feature_shapes, pairs, example, init_vars,
               teacher_init)


def _init_model(model: nn.Module, key: jax.Array, example: np.ndarray):
  v = model.init(_fast_key(key), jnp.asarray(example), train=False)
  return v["params"], {k: v[k] for k in v if k != "params"}


# ------------------------------------------------------------------------------------------------
# Stages.


def _optimizer(block: ml_collections.ConfigDict, *, teacher_factor: float | None = None
               ) -> ml_collections.ConfigDict:
  opt = ml_collections.ConfigDict(block.to_dict())
  # The log-variances are never decayed (weight decay would pull every weight towards exp(0)).
  opt.no_decay = tuple(opt.get("no_decay", ())) + ("^log_vars",)
  if teacher_factor is not None:
    opt.lr_multipliers = (("^teacher/", float(teacher_factor)),) + tuple(
        tuple(r) for r in opt.get("lr_multipliers", ()))
  return opt


def _train_data(setup: Setup) -> Callable[[int], Any]:
  """Every stage sees the same seeded data order and augmentation."""
  return lambda per_host: setup.data.train(per_host, seed=setup.config.seed)


def teacher_stage(setup: Setup, eval_batches: EvalBatches) -> train.Stage:
  """Trains the teacher with cross-entropy."""
  cfg = setup.config.teacher
  model, example = setup.teacher, setup.example

  def init_fn(key):
    return _pretrained(*_init_model(model, jax.random.fold_in(key, 1), example),
                       setup.teacher_init_vars, "teacher.init_checkpoint")

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del frozen, step
    (logits, _), new_state = model.apply({"params": params, **model_state}, batch["video"],
                                         train=True, mutable=list(model_state),
                                         rngs={"dropout": rng})
    ce = _common.mean_ce(logits, batch["label"])
    return ce, ({"ce": ce}, new_state)

  def eval_fn(params, model_state, frozen, batch):
    del frozen
    return {"logits": model.apply({"params": params, **model_state}, batch["video"],
                                  train=False)[0]}

  return train.Stage(name="teacher", init_fn=init_fn, loss_fn=loss_fn,
                     optimizer=_optimizer(cfg.optimizer), num_steps=cfg.num_steps,
                     global_batch_size=cfg.batch_size, train_data=_train_data(setup),
                     eval_fn=eval_fn, eval_data=eval_batches, eval_every=cfg.eval_every)


def switches(entry: Entry, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The runtime inputs that select an entry's terms and weighting in the shared student step."""
  on = np.array([1.0] + [1.0 if t in entry.terms else 0.0 for t in DISTILL_TERMS], np.float32)
  if "param" in entry.terms and config.param.reading == "none":
    on[3] = 0.0
  # CE joins the uncertainty weighting only when config.collab.weight_ce; it always counts.
  learned = on * np.array([float(config.collab.weight_ce), 1.0, 1.0, 1.0], np.float32)
  weights = np.array([1.0, config.kd.weight, config.spec.weight, config.param.weight], np.float32)
  return {"on": on, "learned": learned, "weights": weights,
          "uncertainty": np.float32(entry.weighting == "uncertainty" and entry.terms != ())}


def student_objective(setup: Setup, *, need_teacher: bool, mutual: bool):
  """``loss_fn(params, model_state, frozen, batch, rng, step)`` of a student stage (see the module doc).

  ``need_teacher`` and ``mutual`` are static; which terms are on and how they are weighted come from
  ``frozen['switch']`` (:func:`switches`), so one compiled step serves many ablation entries.
  """
  config = setup.config
  student, teacher, adapters = setup.student, setup.teacher, setup.adapters
  tau = float(config.kd.temperature)
  sp = config.spec

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del step
    x, y = batch["video"], batch["label"]
    rng_s, rng_t = jax.random.split(rng)
    new_state = {}
    (logits, feats), new_state["student"] = student.apply(
        {"params": params["student"], **model_state["student"]}, x, train=True,
        mutable=list(model_state["student"]), rngs={"dropout": rng_s})
    ce = _common.mean_ce(logits, y)
    metrics = {"ce": ce}
    zero = jnp.zeros((), jnp.float32)
    kd = spec = zero
    teacher_loss = zero
    new_state["adapters"] = model_state["adapters"]
    if mutual:
      t_params = params["teacher"]
    else:
      t_params = frozen["teacher"]["params"]
    if need_teacher:
      if mutual:
        (t_logits, t_feats), new_state["teacher"] = teacher.apply(
            {"params": params["teacher"], **model_state["teacher"]}, x, train=True,
            mutable=list(model_state["teacher"]), rngs={"dropout": rng_t})
        t_ce = _common.mean_ce(t_logits, y)
        t_kd = losses.hinton_kd_loss(t_logits, logits, temperature=tau).mean()
        teacher_loss = t_ce + config.collab.mutual_weight * t_kd
        metrics.update(teacher_ce=t_ce, teacher_kd=t_kd)
      else:
        t_logits, t_feats = teacher.apply(frozen["teacher"], x, train=False)
      kd = losses.hinton_kd_loss(logits, t_logits, temperature=tau).mean()
      terms, ad_state = [], {}
      for layer, adapter in adapters.items():
        mapped, ad_state[layer] = adapter.apply(
            {"params": params["adapters"][layer], **model_state["adapters"][layer]},
            feats[layer], train=True, mutable=list(model_state["adapters"][layer]))
        terms.append(spectrum_distance(mapped, t_feats[layer], mode=sp.mode, norm=sp.norm,
                                       distance=sp.distance, pool_spatial=sp.pool_spatial))
      spec = jnp.mean(jnp.stack(terms))
      new_state["adapters"] = ad_state
    elif mutual:
      raise AssertionError("mutual learning needs the teacher's forward pass")
    param = (parameter_term(params["student"], t_params, setup.pairs, config.param)
             if setup.pairs else zero)
    values = jnp.stack([ce, kd, spec, param])
    sw = frozen["switch"]
    weighted = sw["weights"] * values
    s = params["log_vars"]
    learned = sw["learned"]
    uncertainty = (losses.uncertainty_weighted_sum(learned * weighted, learned * s)
                   + jnp.sum((sw["on"] - learned) * weighted))
    fixed = jnp.sum(sw["on"] * weighted)
    u = sw["uncertainty"]
    student_loss = u * uncertainty + (1.0 - u) * fixed
    metrics.update(kd=kd, spec=spec, param=param, student_loss=student_loss)
    for i, name in enumerate(TERMS):
      # The effective weight of each term this step (0 when off).
      metrics[f"w_{name}"] = sw["on"][i] * sw["weights"][i] * (
          u * (learned[i] * jnp.exp(-s[i]) + (1.0 - learned[i])) + (1.0 - u))
    if mutual:
      metrics["teacher_loss"] = teacher_loss
    else:
      new_state.pop("teacher", None)
    return student_loss + teacher_loss, (metrics, new_state)

  return loss_fn


def student_stage(setup: Setup, entry: Entry, teacher_vars: Mapping[str, Any],
                  eval_batches: EvalBatches) -> tuple[train.Stage, Any]:
  """The stage of one ablation entry, and its init function (shared by all entries)."""
  config = setup.config
  cfg = config.student
  need_teacher = (entry.mutual or bool(set(entry.terms) & {"kd", "spec"})
                  or bool(config.shared_step))
  init_fn = _student_init_fn(setup, teacher_vars if entry.mutual else None)
  loss_fn = student_objective(setup, need_teacher=need_teacher, mutual=entry.mutual)
  student, teacher = setup.student, setup.teacher

  def eval_fn(params, model_state, frozen, batch):
    logits = student.apply({"params": params["student"], **model_state["student"]},
                           batch["video"], train=False)[0]
    t_vars = ({"params": params["teacher"], **model_state["teacher"]} if "teacher" in params
              else frozen["teacher"])
    return {"logits": logits, "teacher_logits": teacher.apply(t_vars, batch["video"],
                                                              train=False)[0]}

  frozen = {"switch": switches(entry, config)}
  if not entry.mutual:
    frozen["teacher"] = teacher_vars
  opt = _optimizer(cfg.optimizer,
                   teacher_factor=config.collab.teacher_lr_multiplier if entry.mutual else None)
  stage = train.Stage(name=entry.stage_name, init_fn=init_fn, loss_fn=loss_fn, optimizer=opt,
                      num_steps=cfg.num_steps, global_batch_size=cfg.batch_size,
                      train_data=_train_data(setup), frozen=frozen, eval_fn=eval_fn,
                      eval_data=eval_batches, eval_every=cfg.eval_every)
  return stage, init_fn


def _student_init_fn(setup: Setup, mutual_teacher: Mapping[str, Any] | None):
  student, adapters, example = setup.student, setup.adapters, setup.example
  shapes, pretrained = setup.feature_shapes, setup.student_init_vars

  def init_fn(key):
    s_params, s_state = _pretrained(*_init_model(student, jax.random.fold_in(key, 2), example),
                                    pretrained, "student.init_checkpoint")
    params = {"student": s_params, "adapters": {}, "log_vars": jnp.zeros((len(TERMS),))}
    state = {"student": s_state, "adapters": {}}
    for i, (layer, adapter) in enumerate(adapters.items()):
      a_key = jax.random.fold_in(jax.random.fold_in(key, 3), i)
      dummy = jnp.zeros((1,) + shapes[layer][1:], jnp.float32)
      v = adapter.init(_fast_key(a_key), dummy, train=False)
      params["adapters"][layer] = v["params"]
      state["adapters"][layer] = {k: v[k] for k in v if k != "params"}
    if mutual_teacher is not None:
      params["teacher"] = jax.tree.map(jnp.asarray, mutual_teacher["params"])
      state["teacher"] = {k: jax.tree.map(jnp.asarray, v) for k, v in mutual_teacher.items()
                          if k != "params"}
    return params, state

  return init_fn


# ------------------------------------------------------------------------------------------------
# Spectra for the report.


def _host(tree: Any) -> Any:
  """A pytree of (possibly replicated, multi-host) arrays as NumPy, from this process's replica."""
  def one(a):
    if isinstance(a, jax.Array):
      return np.asarray(a.addressable_data(0))
    return np.asarray(a)
  return jax.tree.map(one, tree)


def _report_clips(eval_batches: EvalBatches, num: int) -> np.ndarray:
  """Up to ``num`` real evaluation clips (this process's share), for the spectra."""
  out, have = [], 0
  for batch in eval_batches(max(1, min(num, 16))):
    keep = np.asarray(batch["mask"]).astype(bool)
    out.append(np.asarray(batch["video"])[keep])
    have += int(keep.sum())
    if have >= num:
      break
  return np.concatenate(out)[:num]


def report_spectra(setup: Setup, teacher_vars, init_fn, results: Mapping[Entry, Any],
                   eval_batches: EvalBatches) -> tuple[str, dict[str, dict[str, Any]]]:
  """The report's layer and its :func:`spectra`: the teacher, the student at initialisation
  (``'init'``, from the stages' shared ``init_fn``) and every trained student."""
  config = setup.config
  rep = config.report
  layer = rep.spectrum_layer if rep.spectrum_layer in setup.adapters else config.spec.layers[-1]
  clips = _report_clips(eval_batches, rep.num_clips)
  init_params, init_state = compilation.jit(init_fn, preset="fastest")(jax.random.key(config.seed))
  students = {"init": (init_params, init_state)}
  students.update({e.stage_name: (r.state.params, r.state.model_state)
                   for e, r in results.items()})
  return layer, spectra(setup, teacher_vars, students, layer, clips)


def learned_weights(config: ml_collections.ConfigDict, results: Mapping[Entry, Any]
                    ) -> dict[str, dict[str, float]]:
  """``exp(-s_i)`` of each uncertainty-weighted student at the end of training, per learned term."""
  out = {}
  for e, r in results.items():
    if e.weighting == "uncertainty" and e.terms:
      s = _host(r.state.params["log_vars"])
      on = switches(e, config)["learned"]
      out[e.stage_name] = {t: float(np.exp(-s[i])) for i, t in enumerate(TERMS) if on[i]}
  return out


def spectra(setup: Setup, teacher_vars, students: Mapping[str, Any], layer: str,
            clips: np.ndarray) -> dict[str, dict[str, list[float]]]:
  """Mean temporal amplitude per frequency bin of ``layer`` for the teacher and each student.

  Each student (name -> ``(params, model_state)``) gets its own-feature curve and, through its
  adapter, the curve in the teacher's channel space plus the spectrum loss against the teacher.
  """
  teacher, student = setup.teacher, setup.student
  adapter = setup.adapters.get(layer)

  # One compiled function for the teacher and every student (same shapes): one compilation.
  @compilation.jit
  def curves(params, state, t_vars, x):
    t_feat = teacher.apply(t_vars, x, train=False)[1][layer]
    feats = student.apply({"params": params["student"], **state["student"]}, x, train=False)[1]
    out = {"teacher": amplitude_curve(t_feat), "own": amplitude_curve(feats[layer])}
    if adapter is not None:
      mapped = adapter.apply({"params": params["adapters"][layer], **state["adapters"][layer]},
                             feats[layer], train=False)
      out["adapted"] = amplitude_curve(mapped)
      out["spectrum_loss"] = jnp.mean(losses.temporal_spectrum_loss(mapped, t_feat))
    return out

  x = jnp.asarray(clips)
  t_vars = _host(teacher_vars)
  out = {}
  for name, (params, state) in students.items():
    params, state = _host(params), _host(state)
    t = t_vars
    if "teacher" in params:  # mutual learning: compare with the teacher as it was trained
      params = dict(params)
      t = {"params": params.pop("teacher"), **state["teacher"]}
    r = jax.device_get(curves(params, state, t, x))
    if "teacher" not in out and t is t_vars:
      out["teacher"] = {"own": np.asarray(r["teacher"]).tolist()}
    del r["teacher"]
    out[name] = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in r.items()}
  return out


# ------------------------------------------------------------------------------------------------
# The run.


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the teacher and every ablation entry's student; writes results.json and report.md."""
  t_start = time.monotonic()
  _check_config(config)
  entries = parse_ablation(config)
  data = load_data(config)
  setup = make_setup(config, data)
  runner = train.Runner(config, workdir)
  eval_batches = data.eval
  timings: dict[str, float] = {}

  # 1. The teacher.
  t0 = time.monotonic()
  if config.teacher.checkpoint:
    converted = _common.load_converted(config.teacher.checkpoint, "config.teacher.checkpoint",
                                       config.teacher.model)
    teacher_vars = jax.tree.map(np.asarray, dict(converted.variables))
    teacher_result = None
  else:
    teacher_result = runner.run(teacher_stage(setup, eval_batches))
    teacher_vars = {"params": teacher_result.state.params, **teacher_result.state.model_state}
  timings["teacher"] = time.monotonic() - t0
  if teacher_result is None:  # a loaded teacher is evaluated once, for the table
    teacher_metrics = _evaluate_teacher(setup, teacher_vars, eval_batches, runner)
  else:
    teacher_metrics = teacher_result.metrics

  # 2. The students.
  results, init_fn = {}, None
  for entry in entries:
    t0 = time.monotonic()
    stage, init_fn_e = student_stage(setup, entry, teacher_vars, eval_batches)
    init_fn = init_fn or init_fn_e
    results[entry] = runner.run(stage)
    timings[entry.stage_name] = time.monotonic() - t0

  # 3. Spectra before and after distillation, and the report.
  baseline = next((e for e in entries if not e.terms), None)
  distilled = next((e for e in entries if "spec" in e.terms and len(e.terms) == 3),
                   next((e for e in entries if "spec" in e.terms), None))
  layer, curves = report_spectra(setup, teacher_vars, init_fn, results, eval_batches)
  rows = _spectral_report.ablation_rows(config, teacher_metrics, results, baseline)
  learned = learned_weights(config, results)
  plot_path = None
  if jax.process_index() == 0 and distilled is not None:
    plot_path = _spectral_report.PLOT
    _spectral_report.plot_spectra(
        curves, os.fspath(runner.workdir / plot_path), layer=layer, before="init",
        after=distilled.stage_name, baseline=baseline.stage_name if baseline else None)
  timings["total"] = time.monotonic() - t_start
  extra = {
      "ablation": rows,
      "learned_weights": learned,
      "spectra": {"layer": layer, "curves": curves},
      "pairs": [{"stage": p.stage, "student": list(p.student), "teacher": list(p.teacher)}
                for p in setup.pairs],
      "data": data.description,
      "inferred": _spectral_report.inferred_choices(config),
      "seconds": timings,
  }
  results_json = runner.write_results(extra)
  _spectral_report.write(
      config, runner.workdir, data.description, rows=rows, learned_weights=learned,
      curves=curves, layer=layer, students=["init"] + [e.stage_name for e in entries],
      plot_path=plot_path, pairs=setup.pairs, timings=timings)
  return results_json


def _evaluate_teacher(setup: Setup, teacher_vars, eval_batches: EvalBatches,
                      runner: train.Runner) -> dict[str, float]:
  """Top-1/top-5 of a loaded teacher on the evaluation split, over every process's examples."""
  from kd_jax.train import evaluation  # pylint: disable=g-import-not-at-top
  teacher = setup.teacher
  batch = int(setup.config.teacher.batch_size)
  out = runner.predict(
      lambda v, b: {"logits": teacher.apply(v, b["video"], train=False)[0], "label": b["label"]},
      _host(teacher_vars), eval_batches(mesh_lib.per_host_batch_size(batch, runner.mesh)))
  # Summed per evaluation batch, as the engine's evaluation does, so the numbers match a stage's.
  return evaluation.finalize(
      evaluation.classification_sums(jnp.asarray(out["logits"][i:i + batch]),
                                     jnp.asarray(out["label"][i:i + batch]))
      for i in range(0, len(out["label"]), batch))

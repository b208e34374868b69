"""The terms of spectral distillation and its ablation: kernel pairing and the parameter term, the
spectrum adapter and distances, the ablation entries with their runtime switches, config checks.

Part of the ``spectral`` method (:mod:`kd_jax.methods.spectral` builds the stages and ``run`` from
these).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import losses
from kd_jax.errors import UserError
from kd_jax.models import layers as model_layers
from kd_jax.train import optim

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

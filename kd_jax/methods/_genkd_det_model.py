"""GenKD for temporal action detection: networks, the two passes of a step, inference.

Part of the ``genkd_detection`` method (:mod:`kd_jax.methods.genkd_detection` builds the stages,
the data and the evaluation from these). genkd.md 3.2, 4.1-4.3 (detection versions), 5.1, 5.3;
AFSD's losses come from :mod:`kd_jax.losses.detection`, the CVAE / distillation losses from
:mod:`kd_jax.losses.generative`, the alternating optimiser, ramp and pass/epoch from the
recognition method's :mod:`kd_jax.methods._genkd_model`.

Per network: an AFSD ``BDNet`` (I3D teacher, Top-heavy I3D student), one attention head and one
CVAE per distilled tap (``Mixed_4f`` and ``Mixed_5c``). Parameters of a stage::

  {'net': {'bdnet': {'backbone', 'coarse_pyramid_detection'},
           'attention': {'Mixed_4f', 'Mixed_5c'}},
   'cvae': {'Mixed_4f', 'Mixed_5c'}}

and ``model_state = {'batch_stats'}`` of the backbone (frozen with ``freeze_bn``, the official
setting, so it never changes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import losses
from kd_jax import models
from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods._genkd_model import batch_mean
from kd_jax.methods._genkd_model import pass_and_epoch
from kd_jax.methods._genkd_model import reconstruction_weight
from kd_jax.models import afsd
from kd_jax.models import i3d as i3d_lib

TAPS = ("Mixed_4f", "Mixed_5c")
FG_NORMS = ("sum_attention", "none")
RENORM_SCOPES = ("global", "per_sample")
GD_VARIANTS = ("v8", "teacher_prior")
PASS_A, PASS_B = 0, 1
METRIC_KEYS = ("pass", "epoch", "cvae", "gd", "fg", "bg", "ssl", "rec", "rec_weight", "ad",
               "ad_ssl")
# AFSD's weights of the three SSL triplet terms (frame-level, loc and conf proposal features).
SSL_MAP_WEIGHTS = (1.0, 0.1, 0.1)
OUTPUT_KEYS = ("loc", "conf", "prop_loc", "prop_conf", "center")


# ------------------------------------------------------------------------------------------------
# Foreground and background features.


def foreground_background(features: jax.Array, attention: jax.Array, *,
                          norm: str = "sum_attention", scope: str = "global"
                          ) -> tuple[jax.Array, jax.Array]:
  """GenKD's detection features (genkd.md 4.2, ``detection/GKD/thumos14/train.py``):

  .. math::
    F_{fg} = \\frac{F \\odot A}{\\sum A},\\qquad F_{bg} = \\frac{F \\odot (1 - A)}{\\sum (1 - A)}

  Args:
    features: ``F [B, T, H, W, C]``.
    attention: ``A [B, T, C]`` in (0, 1), broadcast over H x W.
    norm: ``'sum_attention'`` (the official division by the sums) or ``'none'`` (``F*A`` and
      ``F*(1-A)`` as they are).
    scope: ``'global'``: the sums run over the whole (global) batch of ``A``, as the official code;
      ``'per_sample'``: one sum per clip.

  Returns:
    ``(F_fg, F_bg)``, each of the features' shape and dtype; the sums are taken in float32.
  """
  if norm not in FG_NORMS:
    raise ValueError(f"norm must be one of {FG_NORMS}, got {norm!r}")
  if scope not in RENORM_SCOPES:
    raise ValueError(f"scope must be one of {RENORM_SCOPES}, got {scope!r}")
  f = features.astype(jnp.float32)
  a = attention.astype(jnp.float32)
  fg = f * a[:, :, None, None, :]
  bg = f * (1.0 - a)[:, :, None, None, :]
  if norm == "sum_attention":
    axes = None if scope == "global" else (1, 2)
    keep = scope != "global"
    sum_a = jnp.sum(a, axis=axes, keepdims=keep)
    sum_b = jnp.sum(1.0 - a, axis=axes, keepdims=keep)
    if keep:
      sum_a, sum_b = sum_a[:, :, None, None], sum_b[:, :, None, None]
    fg = fg / jnp.maximum(sum_a, 1e-12)
    bg = bg / jnp.maximum(sum_b, 1e-12)
  return fg.astype(features.dtype), bg.astype(features.dtype)


# ------------------------------------------------------------------------------------------------
# Networks.


@dataclasses.dataclass(frozen=True, eq=False)
class DetNetworks:
  """An AFSD BDNet with one attention head and one CVAE module (applied per tap, own weights)."""

  net: nn.Module
  head: nn.Module
  cvae: nn.Module
  taps: tuple[str, ...] = TAPS


def build_networks(backbone: str, model_kwargs: Mapping[str, Any],
                   attention_kwargs: Mapping[str, Any], num_classes: int) -> DetNetworks:
  """The modules of one detector; ``num_classes`` counts the actions (background is added)."""
  try:
    net = models.get("afsd", backbone=backbone, num_classes=num_classes + 1, **dict(model_kwargs))
    head = models.get("generative_attention", part="attention", **dict(attention_kwargs))
    cvae_kwargs = {k: v for k, v in dict(attention_kwargs).items()
                   if k not in ("hidden_channels", "tiny")}
    cvae = models.get("generative_attention", part="cvae", **cvae_kwargs)
  except ValueError as e:
    raise UserError(f"cannot build the GenKD detection networks (AFSD + {backbone}): {e}"
                    ) from None
  return DetNetworks(net, head, cvae)


def tap_shapes(nets: DetNetworks, clip_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
  """Shapes of the distilled taps for one clip ``(T, H, W, 3)``."""
  x = jax.ShapeDtypeStruct((1, *clip_shape), jnp.float32)
  try:
    v = jax.eval_shape(lambda x: nets.net.init(jax.random.key(0), x, train=False), x)
    feats = jax.eval_shape(
        lambda v, x: nets.net.apply(v, x, train=False, method="extract_features"), v, x)
  except ValueError as e:
    raise UserError(f"AFSD does not take clips {tuple(clip_shape)}: {e}") from None
  return {tap: tuple(feats[tap].shape) for tap in nets.taps}


def init_variables(nets: DetNetworks, key: jax.Array, clip_shape: Sequence[int]
                   ) -> tuple[dict, dict]:
  """``(params, model_state)`` of a stage (module docstring), freshly initialised."""
  k_net, k_head, k_cvae = jax.random.split(key, 3)
  x = jnp.zeros((1, *clip_shape), jnp.float32)
  v = nets.net.init(k_net, x, train=False)
  attention, cvae = {}, {}
  try:
    for i, (tap, shape) in enumerate(tap_shapes(nets, clip_shape).items()):
      f = jnp.zeros(shape, jnp.float32)
      a = jnp.zeros((shape[0], shape[1], shape[-1]), jnp.float32)
      attention[tap] = nets.head.init(jax.random.fold_in(k_head, i), f)["params"]
      kc = jax.random.fold_in(k_cvae, i)
      cvae[tap] = nets.cvae.init({"params": kc, "reparam": kc}, f, a, mode="posterior")["params"]
  except ValueError as e:
    raise UserError(f"cannot build the attention heads / CVAEs of the AFSD taps: {e}; choose "
                    "config.attention.kwargs.num_groups dividing every tap's channels (tiny "
                    "backbones: Mixed_4f has 52, Mixed_5c 64 channels, so num_groups=4)") from None
  params = {"net": {"bdnet": v["params"], "attention": attention}, "cvae": cvae}
  return params, {"batch_stats": v.get("batch_stats", {})}


def calibrate_batch_norm(nets: DetNetworks, params: Mapping[str, Any], batch_stats: Any,
                         clips: jax.Array) -> dict[str, Any]:
  """The backbone's BatchNorm statistics measured on ``clips`` (one train-mode pass).

  Every BatchNorm's running mean and variance become those of its input on ``clips``
  ``[N, T, H, W, C]`` (unbiased variance, as PyTorch's running estimate), each layer normalised by
  the statistics of the layers before it, as when the statistics of a pretrained backbone are
  fitted to the data. Why: AFSD freezes BatchNorm (``freeze_bn``) because its backbone comes
  pretrained; a *randomly initialised* one then normalises with mean 0 and variance 1, so its
  activations shrink at every layer (the tiny I3D's ``Mixed_5c`` has a standard deviation of
  about 1e-6 on [-1, 1] clips, under GroupNorm's epsilon of 1e-5 in the AFSD pyramid) and the
  head sees almost nothing.

  Args:
    nets: the networks (their ``net`` is an AFSD ``BDNet``).
    params: the stage's ``params['net']['bdnet']``.
    batch_stats: the stage's ``model_state['batch_stats']``.
    clips: training clips, ``[N, T, H, W, C]``.

  Returns:
    ``batch_stats`` with its ``backbone`` entry replaced.
  """
  net = nets.net
  # Momentum 0: the running statistics become this pass's statistics.
  backbone = i3d_lib.InceptionI3d(in_channels=net.in_channels, top_heavy=net.top_heavy,
                                  width=net.backbone_width, dtype=net.dtype, bn_momentum=0.0)
  _, new = backbone.apply({"params": params["backbone"], "batch_stats": batch_stats["backbone"]},
                          clips, train=True, mutable=["batch_stats"], method="extract_features")
  return {**batch_stats, "backbone": new["batch_stats"]}


def _features(nets: DetNetworks, bdnet, batch_stats, x, train: bool = True):
  """The distilled taps (backbone in train mode: with ``freeze_bn`` it uses, and keeps, its
  running statistics) and the statistics after the pass; ``train=False`` for a frozen teacher,
  whose BatchNorm then uses its running statistics whatever ``freeze_bn`` says."""
  feats, new = nets.net.apply({"params": bdnet, "batch_stats": batch_stats}, x, train=train,
                              mutable=["batch_stats"], method="extract_features")
  return {tap: feats[tap] for tap in nets.taps}, new["batch_stats"]


def _attention(nets: DetNetworks, attention_params, feats):
  return {tap: nets.head.apply({"params": attention_params[tap]}, feats[tap]) for tap in feats}


def _detect(nets: DetNetworks, bdnet, feats, clip_length: int):
  return nets.net.apply({"params": bdnet}, feats, clip_length=clip_length, method="detect")


# ------------------------------------------------------------------------------------------------
# AFSD's costs.


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The loss settings of a stage (static: they shape the compiled program)."""

  lw: float = 10.0
  cw: float = 1.0
  piou: float = 0.5
  bg_weight: float = 35.0
  use_bg: bool = True
  ssl_weight: float = 0.1
  use_ssl: bool = True
  fg_norm: str = "sum_attention"
  renorm_scope: str = "global"
  eval_renorm_scope: str = "per_sample"
  kl_weight: float = 0.1
  rec_ramp: str = "official"
  rec_max_weight: float = 0.5
  rec_ramp_epochs: int = 20
  rec_detach_target: bool = False
  gd_variant: str = "v8"
  gd_weight: float = 0.01
  ad_weight: float = 10.0
  ad_on_ssl: bool = True
  prop_bce_weight: float = 0.1


def _targets(batch, window: int):
  segments = batch["segments"]
  labels = segments[..., 2].astype(jnp.int32)
  valid = jnp.arange(segments.shape[1])[None, :] < batch["num_segments"][:, None]
  return segments[..., :2], labels, valid


def foreground_cost(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
                    lc: LossConfig, window: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """AFSD's training cost on the foreground pass: ``lw (L_loc + L_ploc) + cw (L_cls + L_pcls +
  L_q) + L_start + L_end``, the boundary BCEs including ``prop_bce_weight`` (0.1) times those of
  level 0's proposal features against the masks subsampled by 4 (AFSD ``train.py``)."""
  seg, labels, valid = _targets(batch, window)
  t = losses.detection.multisegment_loss(
      out["loc"], out["conf"], out["prop_loc"], out["prop_conf"], out["center"], out["priors"],
      seg, labels, valid, clip_length=window, piou=lc.piou)
  bce = 0.0
  for side in ("start", "end"):
    mask = batch[side]
    bce += jnp.mean(losses.detection.boundary_bce_loss(out[side], mask))
    for branch in ("loc", "conf"):
      bce += lc.prop_bce_weight * jnp.mean(losses.detection.boundary_bce_loss(
          out[f"{side}_{branch}_prop"], mask[:, ::4][:, :out[f"{side}_{branch}_prop"].shape[1]]))
  cost = (lc.lw * (t["loc"] + t["prop_loc"]) + lc.cw * (t["conf"] + t["prop_conf"] + t["quality"])
          + bce)
  return cost, dict(t, bce=bce)


def background_cost(out: Mapping[str, jax.Array], batch: Mapping[str, jax.Array],
                    lc: LossConfig, window: int) -> jax.Array:
  """The background pass (genkd.md 4.2): AFSD's loss on ``F_bg`` with the complement of the
  ground truth labelled class 0, keeping ``lw (L_loc + L_ploc) + cw (L_cls + L_pcls)``.

  Every anchor then matches background, so AFSD's positive-only localisation terms are 0 and the
  focal terms push every anchor to class 0, normalised by ``max(#positives, 1) = 1`` as in
  ``MultiSegmentLoss``: the complement intervals themselves do not change the value.
  """
  seg, labels, valid = _targets(batch, window)
  t = losses.detection.multisegment_loss(
      out["loc"], out["conf"], out["prop_loc"], out["prop_conf"], out["center"], out["priors"],
      seg, jnp.zeros_like(labels), valid, clip_length=window, piou=lc.piou)
  return lc.lw * (t["loc"] + t["prop_loc"]) + lc.cw * (t["conf"] + t["prop_conf"])


def ssl_cost(taps: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]) -> jax.Array:
  """AFSD's boundary-consistency triplet on the SSL clip: ``sum_m w_m mean_b TripletMargin``
  with ``w = (1, 0.1, 0.1)`` over the frame-level and the two proposal maps, the mean over the
  clips that have a triplet (``ssl_flag``; 0 when none has)."""
  anchor, positive, negative = afsd.ssl_triplet_features(taps, batch["ssl_segments"])
  flag = batch["ssl_flag"].astype(jnp.float32)
  total = 0.0
  for w, a, p, n in zip(SSL_MAP_WEIGHTS, anchor, positive, negative):
    total += w * batch_mean(losses.detection.triplet_margin_loss(a, p, n), flag)
  return total


# ------------------------------------------------------------------------------------------------
# The two-pass step.


def _split(tree: Mapping[str, jax.Array], parts: int, batch: int) -> list[dict[str, jax.Array]]:
  """Splits every ``[parts * batch, ...]`` value of a dict into ``parts`` dicts (``priors``, which
  has no batch axis, goes to each whole)."""
  out = [{} for _ in range(parts)]
  for k, v in tree.items():
    for i in range(parts):
      out[i][k] = v if k == "priors" else v[i * batch:(i + 1) * batch]
  return out


def make_loss_fn(nets: DetNetworks, lc: LossConfig, steps_per_pass: int, window: int,
                 teacher: DetNetworks | None = None) -> train.Switch:
  """The engine loss of a GenKD detection stage: a :class:`~kd_jax.train.Switch` of two passes.

  * pass A (CVAEs only): ``sum_l L_CVAE,l + gd_weight * sum_l L_GD,l`` (genkd.md 5.3; L_GD only
    with a teacher and ``frozen['use_gd']``);
  * pass B (network only): ``cost_fg + bg_weight * cost_bg + ssl_weight * L_triplet(ssl clip)
    + w(e) sum_l L_rec,l + ad_weight * sum_l (L_AD,l + L_AD,l(ssl clip))`` (AD only with a teacher
    and ``frozen['use_ad']``).

  ``frozen = {'teacher': {'bdnet': {'params', 'batch_stats'}, 'attention', 'cvae'}, 'use_gd',
  'use_ad'}`` with a teacher: runtime switches, so the baseline student and the GenKD student
  compile to one program; an off term skips its teacher computation (``lax.cond``).
  """
  f32 = jnp.float32
  zero = jnp.zeros([], f32)

  def finish(loss, terms, batch_stats, epoch, phase):
    metrics = {k: terms.get(k, zero) for k in METRIC_KEYS if k not in ("pass", "epoch")}
    metrics.update({"pass": jnp.asarray(phase, f32), "epoch": epoch})
    return loss, (metrics, {"batch_stats": batch_stats})

  def if_on(switch, fn, like):
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), like)
    return jax.lax.cond(switch > 0, fn,
                        lambda: jax.tree.map(lambda s: jnp.zeros(*s), shapes,
                                             is_leaf=lambda s: isinstance(s, tuple)))

  def teacher_side(t, x):
    t_f, _ = _features(teacher, t["bdnet"]["params"], t["bdnet"]["batch_stats"], x, train=False)
    return t_f, _attention(teacher, t["attention"], t_f)

  def pass_a(params, model_state, frozen, batch, rng, step):
    epoch = pass_and_epoch(step, steps_per_pass)[1].astype(f32)
    x = batch["video"]
    net = jax.lax.stop_gradient(params["net"])
    f, bs = _features(nets, net["bdnet"], model_state["batch_stats"], x)
    a = _attention(nets, net["attention"], f)
    l_cvae, l_gd = zero, zero
    recs = {}
    for i, tap in enumerate(nets.taps):
      out = nets.cvae.apply({"params": params["cvae"][tap]}, f[tap], a[tap], mode="posterior",
                            rngs={"reparam": jax.random.fold_in(rng, 2 * i)})
      recs[tap] = out.reconstruction
      l_cvae += jnp.mean(losses.cvae_loss(f[tap], out.reconstruction, out.mean, out.log_var,
                                          a[tap], kl_weight=lc.kl_weight))
    if teacher is not None:
      t = frozen["teacher"]

      def teacher_reconstructions():
        if lc.gd_variant == "v8":  # the teacher CVAEs on the student's F and A (released code)
          return {tap: teacher.cvae.apply(
              {"params": t["cvae"][tap]}, f[tap], a[tap], mode="posterior",
              rngs={"reparam": jax.random.fold_in(rng, 2 * i + 1)}).reconstruction
                  for i, tap in enumerate(nets.taps)}
        t_f, t_a = teacher_side(t, x)  # dev v2: Dec_t(A_t + eps, A_t) on the teacher's own F, A
        return {tap: teacher.cvae.apply(
            {"params": t["cvae"][tap]}, t_f[tap], t_a[tap], mode="prior",
            rngs={"prior": jax.random.fold_in(rng, 2 * i + 1)}).reconstruction
                for i, tap in enumerate(nets.taps)}

      t_recs = if_on(frozen["use_gd"], teacher_reconstructions, recs)
      gd = sum(jnp.mean(losses.generative_distillation_loss(recs[tap], t_recs[tap]))
               for tap in nets.taps)
      l_gd = jnp.where(frozen["use_gd"] > 0, gd, zero)
    loss = l_cvae + lc.gd_weight * l_gd
    return finish(loss, dict(cvae=l_cvae, gd=l_gd), bs, epoch, PASS_A)

  def pass_b(params, model_state, frozen, batch, rng, step):
    epoch = pass_and_epoch(step, steps_per_pass)[1].astype(f32)
    x = batch["video"]
    b = x.shape[0]
    ssl = lc.use_ssl and "ssl_video" in batch
    xs = jnp.concatenate([x, batch["ssl_video"]]) if ssl else x
    cvae = jax.lax.stop_gradient(params["cvae"])
    bdnet = params["net"]["bdnet"]
    f_all, bs = _features(nets, bdnet, model_state["batch_stats"], xs)
    a_all = _attention(nets, params["net"]["attention"], f_all)
    parts = 2 if ssl else 1
    f = _split(f_all, parts, b)
    a = _split(a_all, parts, b)
    head_in = {}
    for tap in nets.taps:
      fg, bg = foreground_background(f[0][tap], a[0][tap], norm=lc.fg_norm,
                                     scope=lc.renorm_scope)
      pieces = [fg, bg] if lc.use_bg else [fg]
      if ssl:
        pieces.append(foreground_background(f[1][tap], a[1][tap], norm=lc.fg_norm,
                                            scope=lc.renorm_scope)[0])
      head_in[tap] = jnp.concatenate(pieces)
    # One head call on [fg; bg; ssl fg]: GroupNorm is per example, so this is three calls' result.
    out_all, taps_all = _detect(nets, bdnet, head_in, x.shape[1])
    n_parts = head_in[nets.taps[0]].shape[0] // b
    outs = _split(out_all, n_parts, b)
    taps = _split(taps_all, n_parts, b)
    window = x.shape[1]
    l_fg, _ = foreground_cost(outs[0], batch, lc, window)
    l_bg = background_cost(outs[1], batch, lc, window) if lc.use_bg else zero
    l_ssl = ssl_cost(taps[-1], batch) if ssl else zero
    l_rec = zero
    for i, tap in enumerate(nets.taps):
      ff, aa = f[0][tap], a[0][tap]
      rec = nets.cvae.apply({"params": cvae[tap]}, ff, aa, mode="prior",
                            rngs={"prior": jax.random.fold_in(rng, i)}).reconstruction
      target = jax.lax.stop_gradient(ff) if lc.rec_detach_target else ff
      l_rec += jnp.mean(jnp.square(rec.astype(f32) - target.astype(f32)))
    w = reconstruction_weight(epoch, kind=lc.rec_ramp, max_weight=lc.rec_max_weight,
                              ramp_epochs=lc.rec_ramp_epochs)
    l_ad, l_ad_ssl = zero, zero
    if teacher is not None:
      t = frozen["teacher"]
      t_x = xs if (ssl and lc.ad_on_ssl) else x
      t_a_all = if_on(frozen["use_ad"], lambda: teacher_side(t, t_x)[1],
                      {tap: a_all[tap][:t_x.shape[0]] for tap in nets.taps})
      t_a = _split(t_a_all, t_x.shape[0] // b, b)
      ad = sum(jnp.mean(losses.attention_distillation_loss(a[0][tap], t_a[0][tap]))
               for tap in nets.taps)
      l_ad = jnp.where(frozen["use_ad"] > 0, ad, zero)
      if ssl and lc.ad_on_ssl:
        ad_ssl = sum(jnp.mean(losses.attention_distillation_loss(a[1][tap], t_a[1][tap]))
                     for tap in nets.taps)
        l_ad_ssl = jnp.where(frozen["use_ad"] > 0, ad_ssl, zero)
    loss = (l_fg + lc.bg_weight * l_bg + lc.ssl_weight * l_ssl + w * l_rec
            + lc.ad_weight * (l_ad + l_ad_ssl))
    terms = dict(fg=l_fg, bg=l_bg, ssl=l_ssl, rec=l_rec, rec_weight=w, ad=l_ad, ad_ssl=l_ad_ssl)
    return finish(loss, terms, bs, epoch, PASS_B)

  return train.Switch(index=lambda step: pass_and_epoch(step, steps_per_pass)[0],
                      branches=(pass_a, pass_b))


# ------------------------------------------------------------------------------------------------
# Inference.


def detect(nets: DetNetworks, net_params: Mapping[str, Any], batch_stats: Any, x: jax.Array, *,
           norm: str = "sum_attention", scope: str = "per_sample") -> dict[str, jax.Array]:
  """AFSD's outputs on the foreground features (the official test's attention path):
  ``{'loc', 'conf', 'prop_loc', 'prop_conf', 'center' [B, A, ...], 'priors' [A]}``.

  ``scope='per_sample'``: the sums of ``F_fg`` per window, as the official test (batch 1).
  """
  feats = nets.net.apply({"params": net_params["bdnet"], "batch_stats": batch_stats}, x,
                         train=False, method="extract_features")
  feats = {tap: feats[tap] for tap in nets.taps}
  a = _attention(nets, net_params["attention"], feats)
  fg = {tap: foreground_background(feats[tap], a[tap], norm=norm, scope=scope)[0]
        for tap in nets.taps}
  out, _ = _detect(nets, net_params["bdnet"], fg, x.shape[1])
  return {k: out[k] for k in OUTPUT_KEYS + ("priors",)}


def copy_teacher_head(student_params: Mapping[str, Any], teacher: Mapping[str, Any]
                      ) -> dict[str, Any]:
  """Dev v8's student initialisation (genkd.md 9 B1): the student keeps its backbone and CVAEs
  and takes the teacher's AFSD pyramid / heads and attention heads. ``teacher`` in the layout of
  ``frozen['teacher']``."""
  net = dict(student_params["net"])
  bdnet = dict(net["bdnet"])
  bdnet["coarse_pyramid_detection"] = teacher["bdnet"]["params"]["coarse_pyramid_detection"]
  net["bdnet"] = bdnet
  net["attention"] = teacher["attention"]
  return {**student_params, "net": net}


def teacher_variables(state: Any) -> dict[str, Any]:
  """The frozen teacher of phase 2 from the phase-1 state."""
  p = state.params
  return {"bdnet": {"params": p["net"]["bdnet"], "batch_stats": state.model_state["batch_stats"]},
          "attention": p["net"]["attention"], "cvae": p["cvae"]}


def random_intervals(ground_truth: Sequence[Mapping[str, Any]], durations: Mapping[str, float],
                     num_classes: int, *, per_class: int = 10, seed: int = 0
                     ) -> list[dict[str, Any]]:
  """A chance-level detector: per video and class, ``per_class`` intervals with uniform random
  centres in the video, lengths drawn from the ground truth's lengths, uniform random scores."""
  rng = np.random.default_rng(seed)
  lengths = np.array([g["end"] - g["start"] for g in ground_truth], np.float64)
  if not len(lengths):
    lengths = np.array([1.0])
  out = []
  for video, duration in sorted(durations.items()):
    for k in range(num_classes):
      for _ in range(per_class):
        length = float(rng.choice(lengths))
        centre = float(rng.uniform(0.0, duration))
        out.append({"video": video, "start": max(0.0, centre - length / 2),
                    "end": min(duration, centre + length / 2), "label": k,
                    "score": float(rng.uniform())})
  return out

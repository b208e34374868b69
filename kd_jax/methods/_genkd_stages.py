"""GenKD's stages on the engine: the two-pass loss and evaluation, the alternating optimiser and
the teacher and student stages.

Part of the ``genkd`` method (:mod:`kd_jax.methods.genkd` describes the two-pass epoch and runs
these stages; :mod:`kd_jax.methods._genkd_model` holds the networks and pieces they are built
from; :mod:`kd_jax.methods._genkd_flow` builds the flow stream's stages from them).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import losses
from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods._genkd_model import LossConfig
from kd_jax.methods._genkd_model import Networks
from kd_jax.methods._genkd_model import _features
from kd_jax.methods._genkd_model import alternating
from kd_jax.methods._genkd_model import batch_mean
from kd_jax.methods._genkd_model import build_networks
from kd_jax.methods._genkd_model import classification_loss
from kd_jax.methods._genkd_model import feature_shape
from kd_jax.methods._genkd_model import foreground
from kd_jax.methods._genkd_model import init_variables
from kd_jax.methods._genkd_model import load_pretrained
from kd_jax.methods._genkd_model import pass_and_epoch
from kd_jax.methods._genkd_model import predict
from kd_jax.methods._genkd_model import reconstruction_weight
from kd_jax.train import optim

if TYPE_CHECKING:  # Imported where used: the video stack is slow to import.
  from kd_jax.data import streams

PASS_A, PASS_B = 0, 1
METRIC_KEYS = ("pass", "epoch", "cvae", "gd", "cls", "rec", "rec_weight", "ad")


# ------------------------------------------------------------------------------------------------
# The two-pass step.


def _train_features(nets: Networks, backbone, batch_stats, x, mask):
  """The tap in train mode and the updated BatchNorm statistics, from the real clips of ``mask``
  (None: every clip)."""
  if mask is None:
    return _features(nets, backbone, batch_stats, x, train=True)
  feats, new = nets.net.apply({"params": backbone, "batch_stats": batch_stats}, x, train=True,
                              mask=mask, mutable=["batch_stats"], method="extract_features")
  return feats[nets.tap], new["batch_stats"]


def make_loss_fn(nets: Networks, lc: LossConfig, steps_per_pass: int,
                 teacher: Networks | None = None) -> train.Switch:
  """The engine loss of a GenKD stage: a :class:`~kd_jax.train.Switch` of pass A and pass B.

  Each branch is ``loss_fn(params, model_state, frozen, batch, rng, step)``; the pass and the
  epoch follow from the step. ``teacher`` (phase 2) makes the step read ``frozen = {'teacher':
  {'backbone': {'params', 'batch_stats'}, 'attention_head', 'cvae'}, 'use_gd': f32, 'use_ad':
  f32}``; the switches are runtime values, so a baseline (both 0) and a distilled run compile to
  the same program, and a term that is off skips its teacher computation (``lax.cond``). The
  ``cond`` computes only the teacher's side, from values without gradient, so differentiating the
  step never linearises it.

  A batch may carry ``mask`` ``[B]`` (1 real clip, 0 padding: the partial last batch of a
  whole-epoch pass, ``config.pass_length='epoch'``): every term is then the mean over the real
  clips (:func:`batch_mean`; ``L_rec`` the mean over their elements), BatchNorm takes its batch
  statistics and running update from the real clips only, and the batch-global sums of ``F_fg``
  run over the real clips, so a padded batch trains exactly as its real clips alone would.
  """
  f32 = jnp.float32
  zero = jnp.zeros([], f32)

  def finish(loss, terms, batch_stats, epoch, phase):
    metrics = dict(terms, **{"pass": jnp.asarray(phase, f32), "epoch": epoch})
    return loss, (metrics, {"batch_stats": batch_stats})

  def if_on(switch, fn, like):
    """``fn()`` when the runtime switch is on, zeros of ``like``'s shape otherwise."""
    shape, dtype = like.shape, like.dtype  # not ``like`` itself: it would become an operand
    return jax.lax.cond(switch > 0, fn, lambda: jnp.zeros(shape, dtype))

  def pass_a(params, model_state, frozen, batch, rng, step):
    epoch = pass_and_epoch(step, steps_per_pass)[1].astype(f32)
    _, k_rep, _, k_t = jax.random.split(rng, 4)
    x, mask = batch["video"], batch.get("mask")
    net = jax.lax.stop_gradient(params["net"])
    f, bs = _train_features(nets, net["backbone"], model_state["batch_stats"], x, mask)
    a = nets.head.apply({"params": net["attention_head"]}, f)
    out = nets.cvae.apply({"params": params["cvae"]}, f, a, mode="posterior",
                          rngs={"reparam": k_rep})
    l_cvae = batch_mean(losses.cvae_loss(f, out.reconstruction, out.mean, out.log_var, a,
                                         kl_weight=lc.kl_weight), mask)
    l_gd = zero
    if teacher is not None:
      t = frozen["teacher"]

      def teacher_reconstruction():
        if lc.gd_variant == "v8":  # the teacher CVAE on the student's F and A (released code)
          return teacher.cvae.apply({"params": t["cvae"]}, f, a, mode="posterior",
                                    rngs={"reparam": k_t}).reconstruction
        # dev v2: Dec_t(A_t + eps, A_t) on the teacher's own features and attention
        t_f, _ = _features(teacher, t["backbone"]["params"], t["backbone"]["batch_stats"], x,
                           train=False)
        t_a = teacher.head.apply({"params": t["attention_head"]}, t_f)
        return teacher.cvae.apply({"params": t["cvae"]}, t_f, t_a, mode="prior",
                                  rngs={"prior": k_t}).reconstruction

      t_rec = if_on(frozen["use_gd"], teacher_reconstruction, out.reconstruction)
      l_gd = jnp.where(
          frozen["use_gd"] > 0,
          batch_mean(losses.generative_distillation_loss(out.reconstruction, t_rec), mask), zero)
    loss = l_cvae + lc.gd_weight * l_gd
    terms = dict(cvae=l_cvae, gd=l_gd, cls=zero, rec=zero, rec_weight=zero, ad=zero)
    return finish(loss, terms, bs, epoch, PASS_A)

  def pass_b(params, model_state, frozen, batch, rng, step):
    epoch = pass_and_epoch(step, steps_per_pass)[1].astype(f32)
    k_drop, _, k_prior, _ = jax.random.split(rng, 4)
    x, labels, mask = batch["video"], batch["label"], batch.get("mask")
    cvae = jax.lax.stop_gradient(params["cvae"])
    backbone = params["net"]["backbone"]
    f, bs = _train_features(nets, backbone, model_state["batch_stats"], x, mask)
    a = nets.head.apply({"params": params["net"]["attention_head"]}, f)
    # Padding rows are zeroed before the batch-global sums, so only real clips set the scale.
    f_real = f if mask is None else f * mask.astype(f.dtype)[:, None, None, None, None]
    logits = nets.net.apply({"params": backbone}, foreground(f_real, a, scope=lc.renorm_scope),
                            train=True, method="classify", rngs={"dropout": k_drop})
    l_cls = batch_mean(classification_loss(logits, labels, lc.cls_loss), mask)
    rec = nets.cvae.apply({"params": cvae}, f, a, mode="prior",
                          rngs={"prior": k_prior}).reconstruction
    target = jax.lax.stop_gradient(f) if lc.rec_detach_target else f
    sq = jnp.square(rec.astype(f32) - target.astype(f32))
    # Element mean; with padding, over the real clips' elements (every clip has as many).
    l_rec = jnp.mean(sq) if mask is None else batch_mean(jnp.mean(sq, axis=(1, 2, 3, 4)), mask)
    w = reconstruction_weight(epoch, kind=lc.rec_ramp, max_weight=lc.rec_max_weight,
                              ramp_epochs=lc.rec_ramp_epochs)
    l_ad = zero
    if teacher is not None:
      t = frozen["teacher"]

      def teacher_attention():
        t_f, _ = _features(teacher, t["backbone"]["params"], t["backbone"]["batch_stats"], x,
                           train=False)
        return teacher.head.apply({"params": t["attention_head"]}, t_f)

      t_a = if_on(frozen["use_ad"], teacher_attention, a)
      l_ad = jnp.where(frozen["use_ad"] > 0,
                       batch_mean(losses.attention_distillation_loss(a, t_a), mask), zero)
    loss = l_cls + w * l_rec + lc.ad_weight * l_ad
    terms = dict(cvae=zero, gd=zero, cls=l_cls, rec=l_rec, rec_weight=w, ad=l_ad)
    return finish(loss, terms, bs, epoch, PASS_B)

  return train.Switch(index=lambda step: pass_and_epoch(step, steps_per_pass)[0],
                      branches=(pass_a, pass_b))


def make_eval_fn(nets: Networks, lc: LossConfig):
  """``eval_fn(params, model_state, frozen, batch) -> {'logits': video scores [B, K]}``."""

  def eval_fn(params, model_state, frozen, batch):
    del frozen
    scores, _ = predict(nets, params["net"], model_state["batch_stats"], batch["video"],
                        cls_loss=lc.cls_loss, renorm_scope=lc.eval_renorm_scope)
    return {"logits": scores}

  return eval_fn


def make_optimizer(net_cfg: ml_collections.ConfigDict, cvae_cfg: ml_collections.ConfigDict,
                   steps_per_pass: int):
  """The stage optimiser factory: CVAE in pass A, network in pass B (see :func:`alternating`)."""

  def build(num_steps: int):
    own = max(1, num_steps // 2)  # each optimiser steps in half of the stage's steps
    net_tx, net_schedule = optim.make_optimizer(net_cfg, own)
    cvae_tx, _ = optim.make_optimizer(cvae_cfg, own)
    tx = alternating([("cvae", cvae_tx), ("net", net_tx)], steps_per_pass)
    return tx, lambda step: net_schedule(step // 2)

  return build


# ------------------------------------------------------------------------------------------------
# Stages.


def loss_config(config: ml_collections.ConfigDict, *, teacher: bool) -> LossConfig:
  """The teacher's or the student's loss settings: ``config.loss`` with its block's ramp (a
  ``linear`` ramp spans the block's epochs)."""
  lcfg = config.loss
  block = config.teacher if teacher else config.student
  ramp = block.rec_ramp
  return LossConfig(
      cls_loss=lcfg.cls_loss, renorm_scope=lcfg.renorm_scope,
      eval_renorm_scope=lcfg.eval_renorm_scope, kl_weight=lcfg.kl_weight, rec_ramp=ramp,
      rec_max_weight=lcfg.rec_max_weight,
      rec_ramp_epochs=lcfg.rec_ramp_epochs if ramp == "official" else int(block.epochs),
      rec_detach_target=lcfg.rec_detach_target, gd_variant=lcfg.gd_variant,
      gd_weight=lcfg.gd_weight, ad_weight=lcfg.ad_weight)


@dataclasses.dataclass
class Setup:
  """What every stage of a run shares: the config, the data, the clip shape, both networks."""

  config: ml_collections.ConfigDict
  data: streams.Streams
  clip_shape: tuple[int, ...]
  teacher: Networks
  student: Networks


def _stage(setup: Setup, name: str, nets: Networks, block: ml_collections.ConfigDict,
           lc: LossConfig, init_fn, teacher: Networks | None = None, frozen: Any = None
           ) -> tuple[train.Stage, int]:
  """A two-pass stage at ``block``'s recipe: ``(stage, steps per pass)``."""
  cfg, data = setup.config, setup.data
  batch = int(block.batch_size)
  where = f"config.{'teacher' if teacher is None else 'student'}.batch_size"
  whole_epochs = cfg.pass_length == "epoch"
  n = len(data.opened.train)
  # 'epoch': a DataLoader(drop_last=False) pass, the last batch partial (padded and masked);
  # 'stream': whole batches of one continuous stream.
  steps_per_pass = -(-n // batch) if whole_epochs else n // batch
  if steps_per_pass < 1:
    raise UserError(f"{where}={batch} exceeds the {n} training videos")
  num_steps = 2 * int(block.epochs) * steps_per_pass
  eval_every = 2 * steps_per_pass * max(1, int(block.eval_every_epochs))
  stage = train.Stage(
      name=name, init_fn=init_fn, loss_fn=make_loss_fn(nets, lc, steps_per_pass, teacher),
      optimizer=make_optimizer(block.optimizer, block.cvae_optimizer, steps_per_pass),
      num_steps=num_steps, global_batch_size=batch,
      train_data=lambda per_host: data.train(per_host, seed=cfg.seed, whole_epochs=whole_epochs),
      frozen=frozen,
      eval_fn=make_eval_fn(nets, lc), eval_data=data.eval, val_data=_common.val_batches(data),
      eval_every=eval_every if eval_every < num_steps else 0)
  return stage, steps_per_pass


def make_setup(config: ml_collections.ConfigDict, data: streams.Streams, channels: int = 3
               ) -> Setup:
  """Both networks of ``config`` for ``channels``-channel clips; their taps must agree in shape
  (GenKD distils without an adapter)."""
  dcfg = config.data
  clip_shape = (int(dcfg.clip_len), int(dcfg.crop_size), int(dcfg.crop_size), channels)
  att = _common.model_kwargs(config.attention.kwargs)
  teacher = build_networks(config.teacher.model, _common.model_kwargs(config.teacher.kwargs), att,
                           data.num_classes, config.attention.tap)
  student = build_networks(config.student.model, _common.model_kwargs(config.student.kwargs), att,
                           data.num_classes, config.attention.tap)
  ts, ss = feature_shape(teacher, clip_shape), feature_shape(student, clip_shape)
  if ts != ss:
    raise UserError(f"teacher {config.attention.tap} {ts} and student {ss} differ; GenKD "
                    "distils without an adapter, so give both networks the same width")
  return Setup(config, data, clip_shape, teacher, student)


def teacher_stage(setup: Setup, name: str = "teacher") -> tuple[train.Stage, int]:
  """Phase 1: the teacher network, attention head and CVAE."""
  pretrained = load_pretrained(setup.config.teacher, "config.teacher")
  nets = setup.teacher

  def init_fn(key):
    return init_variables(nets, jax.random.fold_in(key, 1), setup.clip_shape, pretrained)

  return _stage(setup, name, nets, setup.config.teacher,
                loss_config(setup.config, teacher=True), init_fn)


def student_stage(setup: Setup, name: str, teacher_vars: Mapping[str, Any], *, use_gd: bool,
                  use_ad: bool) -> tuple[train.Stage, int]:
  """Phase 2 (or the baseline with both switches off); every student starts from one init."""
  nets = setup.student
  # The official student (converted BDNet_student / CVAE_student) when config.student names it.
  pretrained = load_pretrained(setup.config.student, "config.student")

  def init_fn(key):
    return init_variables(nets, jax.random.fold_in(key, 2), setup.clip_shape, pretrained,
                          where="config.student")

  frozen = {"teacher": teacher_vars, "use_gd": np.float32(use_gd), "use_ad": np.float32(use_ad)}
  return _stage(setup, name, nets, setup.config.student, loss_config(setup.config, teacher=False),
                init_fn, teacher=setup.teacher, frozen=frozen)


def teacher_variables(state: train.TrainState | train.Selected) -> dict[str, Any]:
  """The frozen teacher of phase 2 from the phase-1 weights model selection hands on."""
  p = state.params
  return {"backbone": {"params": p["net"]["backbone"],
                       "batch_stats": state.model_state["batch_stats"]},
          "attention_head": p["net"]["attention_head"], "cvae": p["cvae"]}

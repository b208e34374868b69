"""GenKD: generative model-based feature distillation for action recognition (AAAI-24), end to end.

Specification: ``specs/genkd.md``. Three stages on :mod:`kd_jax.train`, all with the same two-pass
epoch:

1. ``teacher`` (phase 1, "Feature Representation"): I3D with its attention head and CVAE, from
   converted ``rgb_imagenet.pt`` weights when ``config.teacher.checkpoint`` names them.
2. ``student_baseline``: Top-heavy I3D with its own attention head and CVAE, without the two
   distillation terms (what GenKD is measured against).
3. ``student_genkd`` (phase 2): the same student, same initialisation and data order, with
   Generative Distillation (``use_gd``) and Attention Distillation (``use_ad``).

**One epoch = pass A then pass B** (genkd.md 5.1/5.2), each ``steps_per_pass`` batches:

* pass A trains only the CVAE: ``cvae_loss(F, F_hat, mu, log_var, A)`` (+ ``gd_weight *
  generative_distillation_loss(F_hat_s, F_hat_t)`` for the distilled student, where the teacher
  CVAE runs on the student's F and A in posterior mode: the released "v8" variant;
  ``gd_variant='teacher_prior'`` is dev-v2, the teacher CVAE in prior mode on the teacher's own
  attention). The network runs in train mode, so its BatchNorm statistics update, but gets no
  gradient.
* pass B trains the network (backbone + attention head + classifier): the classification loss on
  the foreground feature ``F_fg = F*A * sum(F) / sum(F*A)`` (sums over the whole global batch, in
  float32), ``w(e) * L_rec`` with ``L_rec = mean((Dec(A + eps, A) - F)^2)`` through the frozen
  CVAE (target not detached), and ``ad_weight * attention_distillation_loss(A_s, A_t)`` against
  the frozen teacher for the distilled student.

**Pass length.** With ``config.pass_length='epoch'`` (official) each pass is one data epoch, as
the official loop over ``DataLoader(shuffle=True)`` (``drop_last`` False): ``ceil(N / batch)``
batches in a fresh order per pass, the last one partial, here padded to the batch size and
masked out of every loss and BatchNorm statistic (:func:`make_loss_fn`), so no second program
is compiled. ``'stream'`` (earlier kd_jax) takes ``N // batch`` batches of one continuous stream.

**Gradient accumulation.** ``config.train.grad_accum_steps = k`` (official ``iter_size``, 1) runs
each batch of ``batch_size`` clips as ``k`` micro-batches, then one optimiser update
(:mod:`kd_jax.train.steps`): the official ``batch_size B, iter_size k`` is ``batch_size B * k``
with ``grad_accum_steps k`` here.

**How the two passes run on the engine (one Stage).** The trainable pytree is
``{'net': {'backbone', 'attention_head'}, 'cvae'}``; the optimiser is :func:`alternating`, an
optax transformation that hands phase ``k`` of every ``steps_per_pass`` steps to one sub-optimiser
(SGD with coupled L2 on ``net`` in pass B, Adam(b1=0.8) on ``cvae`` in pass A); the inactive one
sees no update and keeps its state (momentum, Adam moments and bias-correction count) untouched,
exactly like two PyTorch optimisers of which only one is stepped. The loss is a
:class:`~kd_jax.train.Switch` of the two passes. Both read the engine's one step counter
(``TrainState.step``, which the engine hands to the loss, the switch and the optimiser): the
step picks the pass inside the compiled step and differentiates only that pass, and only its own
parameters (the rest under ``stop_gradient``); a resumed run continues in the right pass and
epoch. One program per stage is compiled; the baseline and distilled students share it (the
distillation switches are runtime inputs in ``frozen``, and the teacher's forward pass sits
behind a ``lax.cond``, so the baseline does not pay for it), and with the persistent compilation
cache the second student stage compiles nothing.

**Evaluation** uses the attention path (``F_fg``), like the official test, with per-clip
renormalisation (the official test runs one clip per batch; ``eval_renorm_scope='global'`` uses
the batch); the video score is the sum over time steps of per-step softmaxes (or mean logits with
``cls_loss='mean_logits'``).

**Outputs**: ``results.json``, ``report.md`` with the table and ``curves.png``
(:mod:`kd_jax.methods._genkd_report`), and ``student.ckpt`` (an orbax checkpoint: backbone,
attention head and classifier of the distilled student; the CVAE is training-only and dropped),
read back by :func:`load_student`.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import losses
from kd_jax import models
from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods import _genkd_flow
from kd_jax.methods import _genkd_model
from kd_jax.methods import _genkd_report
from kd_jax.methods import _runs
from kd_jax.methods._genkd_model import CLS_LOSSES
from kd_jax.methods._genkd_model import GD_VARIANTS
from kd_jax.methods._genkd_model import LossConfig
from kd_jax.methods._genkd_model import Networks
from kd_jax.methods._genkd_model import RAMPS
from kd_jax.methods._genkd_model import RENORM_SCOPES
from kd_jax.methods._genkd_model import _features
from kd_jax.methods._genkd_model import batch_mean
from kd_jax.methods._genkd_model import alternating
from kd_jax.methods._genkd_model import build_networks
from kd_jax.methods._genkd_model import classification_loss
from kd_jax.methods._genkd_model import load_pretrained
from kd_jax.methods._genkd_model import pretrained_teacher
from kd_jax.methods._genkd_model import feature_shape
from kd_jax.methods._genkd_model import foreground
from kd_jax.methods._genkd_model import init_variables
from kd_jax.methods._genkd_model import pass_and_epoch
from kd_jax.methods._genkd_model import predict
from kd_jax.methods._genkd_model import reconstruction_weight
from kd_jax.methods._genkd_model import video_scores  # noqa: F401  (re-exported)
from kd_jax.train import checkpoint
from kd_jax.train import optim
from kd_jax.train import weights

if TYPE_CHECKING:  # Imported where used: the video stack is slow to import.
  from kd_jax.data import streams

STAGES = ("teacher", "student_baseline", "student_genkd")
PASS_A, PASS_B = 0, 1
PASS_LENGTHS = ("epoch", "stream")
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
# Data.


def load_data(dcfg: ml_collections.ConfigDict, holdout: float = 0.0) -> streams.Streams:
  """The dataset of ``config.data`` as dense RGB clips; ``synthetic_actions`` is prepared on first
  use (config 'custom': the size in ``data.synthetic``); ``holdout``: see ``open_streams``."""
  from kd_jax.data import streams  # pylint: disable=g-import-not-at-top,redefined-outer-name
  sized = dcfg.name == "synthetic_actions" and dcfg.config == "custom"
  return streams.open_streams(dcfg, "rgb_clip", sized=sized, holdout=holdout,
                              clip_len=int(dcfg.clip_len))


# ------------------------------------------------------------------------------------------------
# Stages.


def loss_config(config: ml_collections.ConfigDict, *, teacher: bool) -> LossConfig:
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


def _check_config(config: ml_collections.ConfigDict) -> None:
  lcfg = config.loss
  checks = [
      (lcfg.cls_loss in CLS_LOSSES, f"config.loss.cls_loss must be one of {CLS_LOSSES}"),
      (lcfg.renorm_scope in RENORM_SCOPES,
       f"config.loss.renorm_scope must be one of {RENORM_SCOPES}"),
      (lcfg.eval_renorm_scope in RENORM_SCOPES,
       f"config.loss.eval_renorm_scope must be one of {RENORM_SCOPES}"),
      (lcfg.gd_variant in GD_VARIANTS, f"config.loss.gd_variant must be one of {GD_VARIANTS}"),
      (config.teacher.rec_ramp in RAMPS and config.student.rec_ramp in RAMPS,
       f"config.teacher/student.rec_ramp must be one of {RAMPS}"),
      (min(lcfg.kl_weight, lcfg.gd_weight, lcfg.ad_weight, lcfg.rec_max_weight) >= 0,
       "config.loss weights must be >= 0"),
      (lcfg.rec_ramp_epochs >= 1, "config.loss.rec_ramp_epochs must be >= 1"),
      (config.teacher.epochs >= 0 and config.student.epochs >= 1,
       "config.teacher.epochs must be >= 0 (0: the converted official teacher and CVAE of "
       "config.teacher.checkpoint / cvae_checkpoint, no phase 1) and config.student.epochs >= 1"),
      (config.teacher.epochs > 0 or (config.teacher.checkpoint and
                                     config.teacher.cvae_checkpoint),
       "config.teacher.epochs=0 skips phase 1, so config.teacher.checkpoint (a converted "
       "BDNet_teacher) and config.teacher.cvae_checkpoint (a converted CVAE_teacher) must be set"),
      (config.pass_length in PASS_LENGTHS,
       f"config.pass_length must be one of {', '.join(PASS_LENGTHS)}, got {config.pass_length!r}"),
      (int(config.train.grad_accum_steps) >= 1, "config.train.grad_accum_steps must be >= 1"),
      (config.flow.flip in _genkd_flow.FLOW_FLIPS,
       f"config.flow.flip must be one of {', '.join(_genkd_flow.FLOW_FLIPS)}"),
      (not config.flow.enabled or min(config.flow.teacher.epochs, config.flow.student.epochs) >= 1,
       "config.flow.teacher/student.epochs must be >= 1 (or config.flow.enabled=False)"),
  ]
  for ok, message in checks:
    if not ok:
      raise UserError(message)


@dataclasses.dataclass
class Setup:
  config: ml_collections.ConfigDict
  data: streams.Streams
  clip_shape: tuple[int, ...]
  teacher: Networks
  student: Networks


def _stage(setup: Setup, name: str, nets: Networks, block: ml_collections.ConfigDict,
           lc: LossConfig, init_fn, teacher: Networks | None = None, frozen: Any = None
           ) -> tuple[train.Stage, int]:
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


# ------------------------------------------------------------------------------------------------
# The exported student.


def save_student(path: epath.Path, state: train.TrainState | train.Selected,
                 meta: Mapping[str, Any]) -> None:
  """Writes ``student.ckpt``: backbone, attention head, classifier and BN statistics; no CVAE."""
  variables = {"params": dict(state.params["net"]),
               "batch_stats": state.model_state["batch_stats"]}
  checkpoint.save_variables(path, variables, dict(meta))


def load_student(path: str) -> tuple[Networks, dict[str, Any], dict[str, Any]]:
  """``(networks, variables, meta)`` of a ``student.ckpt``; classify with :func:`predict`::

    nets, v, meta = genkd.load_student("runs/genkd_quickstart/student.ckpt")
    scores, attention = genkd.predict(nets, v["params"], v["batch_stats"], clips,
                                      cls_loss=meta["cls_loss"])
  """
  variables, meta = checkpoint.load_variables(path)
  nets = build_networks(meta["model"], meta["model_kwargs"], meta["attention_kwargs"],
                        meta["num_classes"], meta["tap"])
  return nets, variables, meta


# ------------------------------------------------------------------------------------------------
# The run.


# What several runs (config.seeds / config.splits) summarise, and the distillation effect.
EFFECT = ("student_genkd top-1", "student_baseline top-1")


def summary_numbers(results: Mapping[str, Any]) -> dict[str, float]:
  """The numbers of one run that :mod:`kd_jax.methods._runs` summarises over runs."""
  return {f"{name} {k.replace('top', 'top-')}": row[k] for name, row in results["genkd"].items()
          for k in ("top1", "top5") if row.get(k) is not None}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Every (split, seed) of ``config.seeds`` / ``config.splits`` (one run by default)."""
  return _runs.run_all(config, workdir, run_one, summary_numbers, EFFECT, title="GenKD")


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Phase 1, the baseline student, phase 2; writes results.json, report.md, student.ckpt."""
  t_start = time.monotonic()
  _check_config(config)
  data = load_data(config.data, _common.holdout(config))
  # Opened before any training, so that a missing flow dataset stops the run at once.
  flow_data = load_flow_data(config) if config.flow.enabled else None
  setup = make_setup(config, data)
  runner = train.Runner(config, workdir)
  timings, results, spp = {}, {}, {}

  t0 = time.monotonic()
  if int(config.teacher.epochs) == 0:  # phase 2 from the official teacher and CVAE, no phase 1
    teacher_vars = pretrained_teacher(
        setup.teacher, setup.clip_shape, load_pretrained(config.teacher, "config.teacher"))
  else:
    stage, spp["teacher"] = teacher_stage(setup)
    results["teacher"] = runner.run(stage)
    teacher_vars = teacher_variables(results["teacher"].pick())
  timings["teacher"] = time.monotonic() - t0

  runs = [("student_baseline", False, False)] if config.run_baseline else []
  runs.append(("student_genkd", bool(config.loss.use_gd), bool(config.loss.use_ad)))
  for name, use_gd, use_ad in runs:
    t0 = time.monotonic()
    stage, spp[name] = student_stage(setup, name, teacher_vars, use_gd=use_gd, use_ad=use_ad)
    results[name] = runner.run(stage)
    timings[name] = time.monotonic() - t0

  ckpt_path = runner.workdir / "student.ckpt"
  meta = {"model": config.student.model,
          "model_kwargs": _common.model_kwargs(config.student.kwargs),
          "attention_kwargs": _common.model_kwargs(config.attention.kwargs),
          "tap": config.attention.tap,
          "num_classes": data.num_classes, "cls_loss": config.loss.cls_loss,
          "eval_renorm_scope": config.loss.eval_renorm_scope,
          "source": "GenKD student (kd_jax), CVAE dropped"}
  picked = results["student_genkd"].pick()
  meta["selection"], meta["step"] = config.selection, picked.step
  if not ckpt_path.exists():
    save_student(ckpt_path, picked, meta)

  epoch_steps = {name: 2 * n for name, n in spp.items()}
  two_stream = None
  if config.flow.enabled:
    two_stream = _flow_stream(config, runner, setup, flow_data, results, timings, epoch_steps)
  summaries, rows, gain = _genkd_report.summarize(config, runner.workdir, results, epoch_steps)
  timings["total"] = time.monotonic() - t_start
  if jax.process_index() == 0:
    _genkd_report.plot_curves(summaries, os.fspath(runner.workdir / _genkd_report.PLOT))
  extra = {"genkd": rows, "gain": gain, "curves": summaries, "data": data.description,
           "seconds": timings, "student_checkpoint": os.fspath(ckpt_path),
           "two_stream": two_stream}
  out = runner.write_results(extra)
  _genkd_report.write(config, runner.workdir, data.description, rows, gain, timings, ckpt_path,
                      two_stream)
  return out


# ------------------------------------------------------------------------------------------------
# The flow stream (config.flow) and the two-stream evaluation (genkd.md 7.2).


def _flow_block(rgb: ml_collections.ConfigDict, flow: ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
  """A GenKD network block of the flow stream: the flow block's network and recipe with the RGB
  block's GenKD settings (CVAE optimiser, ramp), for 2-channel clips."""
  block = ml_collections.ConfigDict(rgb.to_dict())
  for key in ("model", "epochs", "batch_size", "eval_every_epochs", "optimizer", "checkpoint"):
    block[key] = flow[key]
  block.kwargs = ml_collections.ConfigDict(
      {**_common.model_kwargs(flow.kwargs), "in_channels": 2})
  block.cvae_checkpoint = ""
  return block


def _plain_stage(config: ml_collections.ConfigDict, name: str, block: ml_collections.ConfigDict,
                 data: streams.Streams, clip_shape: tuple[int, ...]) -> tuple[train.Stage, Any, int]:
  """A flow network trained with cross-entropy on its plain ``Mixed_5c`` logits (the official
  flow stream): ``(stage, network, steps per epoch)``."""
  where = f"config.flow.{name.removeprefix('flow_')}"
  try:
    net = models.get(block.model, num_classes=data.num_classes,
                     **{**_common.model_kwargs(block.kwargs), "in_channels": 2})
  except ValueError as e:
    raise UserError(f"cannot build {where} ({block.model}): {e}") from None
  pretrained = load_pretrained(block, where) or {}
  batch, n = int(block.batch_size), len(data.opened.train)
  whole_epochs = config.pass_length == "epoch"
  per_epoch = -(-n // batch) if whole_epochs else n // batch
  if per_epoch < 1:
    raise UserError(f"{where}.batch_size={batch} exceeds the {n} training videos")
  num_steps = int(block.epochs) * per_epoch
  eval_every = per_epoch * max(1, int(block.eval_every_epochs))

  def init_fn(key):
    v = net.init(jax.random.fold_in(key, 3), jnp.zeros((1, *clip_shape), jnp.float32),
                 train=False)
    params, stats = v["params"], v.get("batch_stats", {})
    if "params" in pretrained:
      kw = dict(what=f"{where}.checkpoint", hint="convert pytorch-i3d flow_imagenet.pt or the "
                "official flow student (python -m kd_jax.models.convert)")
      skip = weights.mismatched_heads(params, pretrained["params"], ("logits",))
      params = weights.merge_pretrained(params, pretrained["params"], skip=skip, **kw)
      stats = weights.merge_pretrained(stats, pretrained.get("batch_stats", {}), **kw)
    return params, {"batch_stats": stats}

  lc = loss_config(config, teacher=False)
  stage = train.Stage(
      name=name, init_fn=init_fn, loss_fn=_genkd_flow.make_loss_fn(net, lc.cls_loss),
      optimizer=block.optimizer, num_steps=num_steps, global_batch_size=batch,
      train_data=lambda per_host: data.train(per_host, seed=config.seed,
                                             whole_epochs=whole_epochs),
      eval_fn=_genkd_flow.make_eval_fn(net, lc.cls_loss), eval_data=data.eval,
      val_data=_common.val_batches(data), eval_every=eval_every if eval_every < num_steps else 0)
  return stage, net, per_epoch


def _video_ids(source: Any):
  def ids(indices: np.ndarray) -> list[str]:
    out = []
    for i in indices:
      vid = source[int(i)]["video_id"]
      out.append(vid.decode() if isinstance(vid, bytes) else str(vid))
    return out
  return ids


def load_flow_data(config: ml_collections.ConfigDict) -> streams.Streams:
  """The optical flow of ``config.data``'s dataset (``<name>_flow``, same config and splits) as
  2-channel clips of the same length; generated on first use for ``synthetic_actions``."""
  from kd_jax.data import flow_pipeline  # pylint: disable=g-import-not-at-top
  return flow_pipeline.open_flow_streams(config.data, holdout=_common.holdout(config),
                                         clip_len=int(config.data.clip_len),
                                         flow_flip=config.flow.flip,
                                         flow_method=config.flow.method or None)


def _flow_stream(config: ml_collections.ConfigDict, runner: train.Runner, setup: Setup,
                 fdata: streams.Streams, results: dict[str, Any], timings: dict[str, float],
                 epoch_steps: dict[str, int]) -> dict[str, Any]:
  """Trains the flow networks (``config.flow``) and fuses them with the RGB networks; returns
  ``{model: {'rgb', 'flow', 'two_stream': {'top1', 'top5'}, 'videos', 'left_out'}}``."""
  t0 = time.monotonic()
  fc, lc = config.flow, loss_config(config, teacher=False)
  per_host = max(1, int(config.student.batch_size) // jax.process_count())
  if fc.kd:  # GenKD on flow too (not the paper's setting): phase 1 and phase 2 on flow clips
    fconfig = ml_collections.ConfigDict(config.to_dict())
    fconfig.teacher = _flow_block(config.teacher, fc.teacher)
    fconfig.student = _flow_block(config.student, fc.student)
    fsetup = make_setup(fconfig, fdata, channels=2)
    stage, n = teacher_stage(fsetup, "flow_teacher")
    results["flow_teacher"], epoch_steps["flow_teacher"] = runner.run(stage), 2 * n
    stage, n = student_stage(fsetup, "flow_student", teacher_variables(
        results["flow_teacher"].pick()), use_gd=bool(config.loss.use_gd),
                             use_ad=bool(config.loss.use_ad))
    results["flow_student"], epoch_steps["flow_student"] = runner.run(stage), 2 * n

    def flow_logits(name):
      state, nets = results[name].pick(), (fsetup.teacher if name == "flow_teacher"
                                           else fsetup.student)
      return lambda x: _genkd_model.time_logits(
          nets, state.params["net"], state.model_state["batch_stats"], x,
          renorm_scope=lc.eval_renorm_scope)[0]
  else:
    nets = {}
    clip_shape = setup.clip_shape[:-1] + (2,)
    for name, block in (("flow_teacher", fc.teacher), ("flow_student", fc.student)):
      stage, nets[name], epoch_steps[name] = _plain_stage(config, name, block, fdata, clip_shape)
      results[name] = runner.run(stage)

    def flow_logits(name):
      state = results[name].pick()
      variables = {"params": state.params, "batch_stats": state.model_state["batch_stats"]}
      return lambda x: _genkd_flow.plain_logits(nets[name], variables, x)
  timings["flow"] = time.monotonic() - t0

  def rgb_logits(name):
    state = results[name].pick()
    nets = setup.teacher if name == "teacher" else setup.student
    return lambda x: _genkd_model.time_logits(nets, state.params["net"],
                                              state.model_state["batch_stats"], x,
                                              renorm_scope=lc.eval_renorm_scope)[0]

  rgb_ids, flow_ids = _video_ids(setup.data.opened.eval), _video_ids(fdata.opened.eval)
  flow = {name: _genkd_flow.collect(flow_logits(name), fdata.eval(per_host), flow_ids)
          for name in ("flow_teacher", "flow_student")}
  pairs = [("teacher", "flow_teacher"), ("student_baseline", "flow_student"),
           ("student_genkd", "flow_student")]
  return {rgb: _genkd_flow.fuse(_genkd_flow.collect(rgb_logits(rgb), setup.data.eval(per_host),
                                                    rgb_ids), flow[f], lc.cls_loss)
          for rgb, f in pairs if rgb in results}


# ------------------------------------------------------------------------------------------------
# Config.


def base_config() -> ml_collections.ConfigDict:
  """Every field of the method at the official recognition settings (genkd.md 6) on UCF-101
  split 1: what every config starts from (``configs/genkd_ucf101.py`` writes its recipe out)."""
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = train.engine_config(log_every=50, checkpoint_every=1000, max_to_keep=2)
  config.method = "genkd"
  config.seed = 2020
  config.run_baseline = True
  # Each pass (A, then B) is one data epoch, as the official DataLoader(shuffle=True,
  # drop_last=False) loop: ceil(N / batch) steps, a fresh order per pass, the last batch partial
  # (padded, its padding masked out of every loss and BatchNorm statistic). 'stream': floor(N /
  # batch) steps of one continuous stream (pass and epoch boundaries drift apart; earlier kd_jax).
  config.pass_length = "epoch"
  # The official iter_size (1): the batch of an optimiser step (batch_size) in grad_accum_steps
  # micro-batches whose gradients are summed with weights (real clips of each) / (real clips of
  # all). Official batch B with iter_size k = batch_size B * k with grad_accum_steps k.
  config.train.grad_accum_steps = 1
  config.data = sources.data_config(
      name="ucf101", config="split1", data_dir="~/tensorflow_datasets", resize_size=0,
      num_workers=8,
      clip_len=64,  # frames per clip
      cache_eval=False)  # keep the decoded eval set in memory (small eval sets only)

  def net_block(model: str, epochs: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        model=model, kwargs=ml_collections.ConfigDict(), epochs=epochs, batch_size=6,
        eval_every_epochs=5, rec_ramp="official",
        # PyTorch SGD(lr 1e-3, momentum 0.9, weight_decay 5e-4): coupled L2 on every parameter.
        optimizer=train.optimizer_config(name="sgd", learning_rate=1e-3, momentum=0.9,
                                         weight_decay=5e-4),
        cvae_optimizer=train.optimizer_config(name="adam", learning_rate=1e-4, b1=0.8,
                                              b2=0.999, eps=1e-8)))

  config.teacher = net_block("i3d", 40)
  config.teacher.checkpoint = ""  # converted rgb_imagenet.pt, or BDNet_teacher (+ attention head)
  config.teacher.cvae_checkpoint = ""  # converted CVAE_teacher: the phase-1 CVAE starts from it
  config.student = net_block("top_i3d", 200)
  # Converted official student weights (BDNet_student: backbone + attention head; CVAE_student),
  # e.g. to evaluate or fine-tune the released student; empty: from the common initialisation.
  config.student.checkpoint = ""
  config.student.cvae_checkpoint = ""
  config.attention = ml_collections.ConfigDict(dict(tap="Mixed_5c",
                                                    kwargs=ml_collections.ConfigDict()))
  config.loss = ml_collections.ConfigDict(dict(
      cls_loss="double_softmax", renorm_scope="global", eval_renorm_scope="per_sample",
      kl_weight=0.1, rec_max_weight=0.5, rec_ramp_epochs=20, rec_detach_target=False,
      gd_variant="v8", gd_weight=0.01, ad_weight=0.1, use_gd=True, use_ad=True))
  config.flow = _genkd_flow.flow_config()
  return config


def smoke_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny networks on 16x32x32 clips, one epoch per stage at batch 4: a CPU check of a config.

  Keeps the config's data and losses; the networks train with Adam from scratch (SGD at the
  paper's rate would not move them in a few steps) and compile with the cheapest CPU preset.
  """
  d = config.data
  d.clip_len, d.crop_size, d.resize_size = 16, 32, 36
  d.num_workers, d.read_threads, d.cache_eval = 0, 1, True
  for block in (config.teacher, config.student):
    block.kwargs = ml_collections.ConfigDict(dict(tiny=True))
    block.epochs, block.batch_size, block.eval_every_epochs = 1, 4, 1
    block.optimizer = train.optimizer_config(name="adam", learning_rate=2e-3, weight_decay=5e-4)
    block.cvae_optimizer = train.optimizer_config(name="adam", learning_rate=1e-3, b1=0.8)
  config.teacher.checkpoint = ""
  for block in (config.flow.teacher, config.flow.student):
    block.kwargs = ml_collections.ConfigDict(dict(tiny=True))
    block.epochs, block.batch_size, block.eval_every_epochs = 1, 4, 1
    block.optimizer = train.optimizer_config(name="adam", learning_rate=2e-3, weight_decay=5e-4)
    block.checkpoint = ""
  config.attention.kwargs = ml_collections.ConfigDict(dict(tiny=True))
  config.train.log_every = 1
  config.train.checkpoint_every = 100
  # A few steps of 3D networks: compile time dominates, so LLVM at -O0 (CPU only).
  config.train.cpu_compile = "fastest"
  return config

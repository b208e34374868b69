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

from collections.abc import Callable, Mapping
import os
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import losses
from kd_jax import train
from kd_jax.methods import _common
from kd_jax.methods import _runs
from kd_jax.methods import _spectral_report
from kd_jax.methods._spectral_setup import EvalBatches
from kd_jax.methods._spectral_setup import Setup
from kd_jax.methods._spectral_setup import _fast_key
from kd_jax.methods._spectral_setup import _init_model
from kd_jax.methods._spectral_setup import _pretrained
from kd_jax.methods._spectral_setup import make_setup
from kd_jax.methods._spectral_spectra import _host
from kd_jax.methods._spectral_spectra import learned_weights
from kd_jax.methods._spectral_spectra import report_spectra
from kd_jax.methods._spectral_terms import Entry
from kd_jax.methods._spectral_terms import SpectrumAdapter  # noqa: F401  (re-exported)
from kd_jax.methods._spectral_terms import TERMS
from kd_jax.methods._spectral_terms import _check_config
from kd_jax.methods._spectral_terms import _get  # noqa: F401  (re-exported)
from kd_jax.methods._spectral_terms import pair_stage_kernels  # noqa: F401  (re-exported)
from kd_jax.methods._spectral_terms import parameter_term
from kd_jax.methods._spectral_terms import parse_ablation
from kd_jax.methods._spectral_terms import parse_entry  # noqa: F401  (re-exported)
from kd_jax.methods._spectral_terms import spectrum_distance
from kd_jax.methods._spectral_terms import stage_kernel_paths  # noqa: F401  (re-exported)
from kd_jax.methods._spectral_terms import switches
from kd_jax.train import mesh as mesh_lib

if TYPE_CHECKING:  # Imported where used: the video stack is slow to import.
  from kd_jax.data import streams


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
# Data.


def load_data(config: ml_collections.ConfigDict) -> streams.Streams:
  """The dataset of ``config.data`` as TSN segments; prepares ``synthetic_actions`` on first use
  (configs other than the two named ones: the size in ``data.synthetic``)."""
  from kd_jax.data import streams  # pylint: disable=g-import-not-at-top,redefined-outer-name
  dcfg = config.data
  sized = dcfg.name == "synthetic_actions" and dcfg.config not in ("default", "tiny")
  return streams.open_streams(dcfg, "rgb_segments", sized=sized, holdout=_common.holdout(config),
                              num_segments=int(dcfg.num_segments))


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
                     eval_fn=eval_fn, eval_data=eval_batches, eval_every=cfg.eval_every,
                     val_data=_common.val_batches(setup.data))


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
                      eval_data=eval_batches, eval_every=cfg.eval_every,
                      val_data=_common.val_batches(setup.data))
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
# The run.


# What several runs (config.seeds) summarise: every ablation row's top-1 / top-5, and the
# distilled student against the CE baseline.
EFFECT = ("distilled top-1", "baseline top-1")


def summary_numbers(results: dict[str, Any]) -> dict[str, float]:
  """The numbers of one run that :mod:`kd_jax.methods._runs` summarises over runs."""
  out = {}
  for row in results["ablation"]:
    out[f"{row['stage']} top-1"], out[f"{row['stage']} top-5"] = row["top1"], row["top5"]
  for role in ("baseline", "distilled"):
    if results.get(f"{role}_stage"):
      out[f"{role} top-1"] = out[f"{results[f'{role}_stage']} top-1"]
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Every (split, seed) of ``config.seeds`` / ``config.splits`` (one run by default)."""
  return _runs.run_all(config, workdir, run_one, summary_numbers, EFFECT, title="Spectral KD")


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
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
    picked = teacher_result.pick()
    teacher_vars = {"params": picked.params, **picked.model_state}
  timings["teacher"] = time.monotonic() - t0
  if teacher_result is None:  # a loaded teacher is evaluated once, for the table
    teacher_metrics = _evaluate_teacher(setup, teacher_vars, eval_batches, runner)
  else:
    teacher_metrics = teacher_result.picked_metrics()

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
      "baseline_stage": baseline.stage_name if baseline else None,
      "distilled_stage": distilled.stage_name if distilled else None,
      "selection": {"mode": config.selection, "steps": {
          name: r.pick().step for name, r in ([("teacher", teacher_result)] if teacher_result
                                              else []) + [(e.stage_name, r)
                                                          for e, r in results.items()]}},
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

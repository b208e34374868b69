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
masked out of every loss and BatchNorm statistic
(:func:`~kd_jax.methods._genkd_stages.make_loss_fn`), so no second program is compiled.
``'stream'`` (earlier kd_jax) takes ``N // batch`` batches of one continuous stream.

**Gradient accumulation.** ``config.train.grad_accum_steps = k`` (official ``iter_size``, 1) runs
each batch of ``batch_size`` clips as ``k`` micro-batches, then one optimiser update
(:mod:`kd_jax.train.steps`): the official ``batch_size B, iter_size k`` is ``batch_size B * k``
with ``grad_accum_steps k`` here.

**How the two passes run on the engine (one Stage).** The trainable pytree is
``{'net': {'backbone', 'attention_head'}, 'cvae'}``; the optimiser is
:func:`~kd_jax.methods._genkd_model.alternating`, an optax transformation that hands phase ``k``
of every ``steps_per_pass`` steps to one sub-optimiser (SGD with coupled L2 on ``net`` in pass
B, Adam(b1=0.8) on ``cvae`` in pass A); the inactive one sees no update and keeps its state
(momentum, Adam moments and bias-correction count) untouched, exactly like two PyTorch
optimisers of which only one is stepped. The loss is a
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

**Where the pieces live.** This module runs the stages (:func:`run`) and holds the config; the
networks and the method's pure pieces are in :mod:`kd_jax.methods._genkd_model`, the two-pass
loss, evaluation, optimiser and stage builders in :mod:`kd_jax.methods._genkd_stages`, the flow
stream and the two-stream evaluation (``config.flow``, genkd.md 7.2) in
:mod:`kd_jax.methods._genkd_flow`. The names tests and benchmarks use (``genkd.make_loss_fn``,
``genkd.Setup``, ...) are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
import os
import time
from typing import TYPE_CHECKING, Any

from etils import epath
import jax
import ml_collections

from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods import _genkd_flow
from kd_jax.methods import _genkd_report
from kd_jax.methods import _runs
from kd_jax.methods._genkd_flow import _flow_stream
from kd_jax.methods._genkd_flow import load_flow_data
from kd_jax.methods._genkd_model import CLS_LOSSES
from kd_jax.methods._genkd_model import GD_VARIANTS
from kd_jax.methods._genkd_model import Networks
from kd_jax.methods._genkd_model import RAMPS
from kd_jax.methods._genkd_model import RENORM_SCOPES
from kd_jax.methods._genkd_model import build_networks
from kd_jax.methods._genkd_model import load_pretrained
from kd_jax.methods._genkd_model import pretrained_teacher
from kd_jax.methods._genkd_stages import make_setup
from kd_jax.methods._genkd_stages import student_stage
from kd_jax.methods._genkd_stages import teacher_stage
from kd_jax.methods._genkd_stages import teacher_variables
from kd_jax.train import checkpoint

# Re-exported: tests, benchmarks and other modules reach the method's pieces as ``genkd.<name>``.
# pylint: disable=unused-import
from kd_jax.methods._genkd_model import LossConfig  # noqa: F401
from kd_jax.methods._genkd_model import alternating  # noqa: F401
from kd_jax.methods._genkd_model import classification_loss  # noqa: F401
from kd_jax.methods._genkd_model import foreground  # noqa: F401
from kd_jax.methods._genkd_model import init_variables  # noqa: F401
from kd_jax.methods._genkd_model import pass_and_epoch  # noqa: F401
from kd_jax.methods._genkd_model import predict  # noqa: F401
from kd_jax.methods._genkd_model import reconstruction_weight  # noqa: F401
from kd_jax.methods._genkd_model import video_scores  # noqa: F401
from kd_jax.methods._genkd_stages import METRIC_KEYS  # noqa: F401
from kd_jax.methods._genkd_stages import PASS_A  # noqa: F401
from kd_jax.methods._genkd_stages import PASS_B  # noqa: F401
from kd_jax.methods._genkd_stages import Setup  # noqa: F401
from kd_jax.methods._genkd_stages import _stage  # noqa: F401
from kd_jax.methods._genkd_stages import loss_config  # noqa: F401
from kd_jax.methods._genkd_stages import make_eval_fn  # noqa: F401
from kd_jax.methods._genkd_stages import make_loss_fn  # noqa: F401
from kd_jax.methods._genkd_stages import make_optimizer  # noqa: F401
# pylint: enable=unused-import

if TYPE_CHECKING:  # Imported where used: the video stack is slow to import.
  from kd_jax.data import streams

STAGES = ("teacher", "student_baseline", "student_genkd")
PASS_LENGTHS = ("epoch", "stream")


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
# Config.


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

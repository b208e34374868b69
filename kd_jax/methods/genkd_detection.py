"""GenKD for temporal action detection: AFSD with I3D (teacher) / Top-heavy I3D (student).

Specification: ``specs/genkd.md`` 3.2, 4.1-4.3 (detection versions), 5.1, 5.3, 6, 7.3 and 9. Three
stages on :mod:`kd_jax.train`, each epoch a CVAE pass (A) then a network pass (B) as the
recognition method (:mod:`kd_jax.methods.genkd`), with two distilled taps (``Mixed_4f``,
``Mixed_5c``), each with its own attention head and CVAE:

1. ``teacher`` (phase 1, "Feature Representation", the GAF recipe of genkd.md 5.1): AFSD + I3D
   with its attention heads and CVAEs. Pass A: ``sum_l L_CVAE,l``; pass B: ``cost_fg + 35 cost_bg
   + 0.1 L_triplet(ssl clip) + w(e) sum_l L_rec,l``.
2. ``student_baseline``: AFSD + Top-heavy I3D with the same losses (attention heads, CVAEs,
   foreground / background passes) but no distillation term.
3. ``student_genkd`` (phase 2, genkd.md 5.3): the same student from the same initialisation, plus
   ``0.01 sum_l L_GD,l`` in pass A and ``beta sum_l (L_AD,l + L_AD,l(ssl clip))``, ``beta = 10``,
   in pass B.

``F_fg = F*A / sum A`` and ``F_bg = F*(1-A) / sum(1-A)`` (batch-global sums) replace both taps
before AFSD's head (:func:`_genkd_det_model.foreground_background`); the costs are AFSD's
(:mod:`kd_jax.losses.detection`, ``lw = 10``, ``cw = 1``, ``piou = 0.5``, focal loss).

**Student initialisation** (``config.student_init``): ``'teacher_head'`` (dev v8, genkd.md 9 B1,
the default): the student's backbone from ``config.student.checkpoint`` when given (a converted
Top-I3D), else random, and the trained teacher's pyramid / heads and attention heads;
``'random'`` (the released code). Both students start from the same weights.

**Evaluation** (genkd.md 7.3, AFSD's ``test.py``): the test windows (``test_stride``) through the
attention path with per-window sums (the official test's batch 1), decoded
(``metrics.detection.decode_window``), merged per video, soft-NMS (``nms_sigma`` 0.1 for RGB as
GenKD's config, top-k 5000, conf 0.01), mAP at tIoU 0.3:0.1:0.7 under the ActivityNet protocol
(``metrics.detection.mean_average_precision``), for the three networks and a random-interval
detector (chance level). Ambiguous THUMOS14 segments are not used by the metric (see
``report.md``).

Every open reading of the spec is a config field (``config.loss``: ``fg_norm``,
``renorm_scope``, ``gd_variant``, ``use_bg``, ``use_ssl``, ``ad_on_ssl``, ``rec_detach_target``,
``rec_ramp``; ``config.student_init``). Outputs: ``results.json``, ``report.md``,
``detections.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods import _genkd_det_model as dm
from kd_jax.methods._genkd_det_model import LossConfig
from kd_jax.methods._genkd_model import alternating
from kd_jax.methods._genkd_model import RAMPS
from kd_jax.models import afsd
from kd_jax.train import mesh as mesh_lib
from kd_jax.train import optim
from kd_jax.train import weights

STAGES = ("teacher", "student_baseline", "student_genkd")
# Reference numbers (genkd.md 8: unverified third-party note; the baseline is derived from the
# stated gain): THUMOS14 average mAP over tIoU 0.3:0.1:0.7.
PAPER_AVG_MAP = {"student_baseline": 32.6, "student_genkd": 33.7}
STUDENT_INITS = ("teacher_head", "random")
# Batch keys the networks read (the rest, e.g. video ids, stay on the host).
_TRAIN_KEYS = ("video", "segments", "num_segments", "start", "end", "ssl_video", "ssl_segments",
               "ssl_flag")


# ------------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class Data:
  """An opened detection dataset and how it is cut into windows."""

  name: str
  train: Any
  eval: Any
  class_names: list[str]
  spec: Any  # detection_pipeline.WindowSpec
  num_workers: int
  read_threads: int

  @property
  def description(self) -> str:
    return (f"{self.name}: {len(self.train)} train / {len(self.eval)} eval videos, "
            f"{len(self.class_names)} classes, {self.spec.window}-frame windows")


def open_data(dcfg: ml_collections.ConfigDict) -> Data:
  """The dataset of ``config.data``; a generated one (``synthetic_detection``) is prepared on
  first use with ``auto_prepare``, a missing one ends in a UserError with the prepare command."""
  from kd_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
  from kd_jax.data import prepare  # pylint: disable=g-import-not-at-top
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  from kd_jax.data.builders.common import DatasetError  # pylint: disable=g-import-not-at-top
  full = f"{dcfg.name}/{dcfg.config}" if dcfg.config else dcfg.name
  try:
    data_dir = prepare.resolve_data_dir(sources.config_data_dir(dcfg.data_dir))
    builder = prepare.get_builder(full, data_dir=data_dir)
    if dcfg.auto_prepare and builder.name in prepare.GENERATED:
      prepare.ensure_prepared(builder, workers=int(dcfg.prepare_workers))
    elif not builder.is_prepared():
      raise UserError(f"{builder.name}/{builder.builder_config.name} is not prepared in "
                      f"{builder.data_dir_root}; run: {prepare.command(builder)}")
    splits = list(builder.info.splits)
    for field in ("train_split", "eval_split"):
      if dcfg[field] not in splits:
        raise UserError(f"{full} has no split {dcfg[field]!r}; its splits are "
                        f"{', '.join(splits)}; set config.data.{field}")
    train_src = builder.as_data_source(split=dcfg.train_split)
    eval_src = builder.as_data_source(split=dcfg.eval_split)
  except DatasetError as e:
    raise UserError(str(e)) from None
  spec = dp.WindowSpec(window=int(dcfg.window), train_stride=int(dcfg.train_stride),
                       test_stride=int(dcfg.test_stride), crop_size=int(dcfg.crop_size),
                       flip=sources.parse_flip(dcfg.flip),
                       max_segments=int(dcfg.max_segments) or None, ssl=bool(dcfg.ssl))
  return Data(f"{builder.name}/{builder.builder_config.name}", train_src, eval_src,
              dp.class_names(train_src), spec, int(dcfg.num_workers), int(dcfg.read_threads))


def _numeric(keys: Sequence[str]):
  def pick(batch):
    return {k: batch[k] for k in keys if k in batch}
  return pick


def train_batches(data: Data, per_host: int, seed: int):
  """Endless, shuffled training windows with their targets (and the SSL clip)."""
  from kd_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
  ds = dp.make_train(data.train, data.spec, batch_size=per_host, seed=seed,
                     num_workers=data.num_workers, read_threads=data.read_threads)
  return iter(ds.map(_numeric(_TRAIN_KEYS)))


def eval_batches(data: Data, per_host: int):
  """Every test window once, centre-cropped, padded to whole batches (``mask``)."""
  from kd_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
  ds = dp.make_eval(data.eval, data.spec, batch_size=per_host, num_workers=data.num_workers,
                    read_threads=data.read_threads)
  return (_numeric(("video", "index", "offset", "mask"))(b) for b in ds)


def num_train_windows(data: Data) -> int:
  from kd_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
  return len(dp.windows(data.train, data.spec, train=True))


# ------------------------------------------------------------------------------------------------
# Stages.


def loss_config(config: ml_collections.ConfigDict, *, teacher: bool) -> LossConfig:
  lcfg = config.loss
  block = config.teacher if teacher else config.student
  ramp = block.rec_ramp
  return LossConfig(
      lw=lcfg.lw, cw=lcfg.cw, piou=lcfg.piou, bg_weight=lcfg.bg_weight, use_bg=lcfg.use_bg,
      ssl_weight=lcfg.ssl_weight, use_ssl=lcfg.use_ssl and config.data.ssl,
      fg_norm=lcfg.fg_norm, renorm_scope=lcfg.renorm_scope,
      eval_renorm_scope=lcfg.eval_renorm_scope, kl_weight=lcfg.kl_weight, rec_ramp=ramp,
      rec_max_weight=lcfg.rec_max_weight,
      rec_ramp_epochs=lcfg.rec_ramp_epochs if ramp == "official" else int(block.epochs),
      rec_detach_target=lcfg.rec_detach_target, gd_variant=lcfg.gd_variant,
      gd_weight=lcfg.gd_weight, ad_weight=lcfg.ad_weight, ad_on_ssl=lcfg.ad_on_ssl,
      prop_bce_weight=lcfg.prop_bce_weight)


def check_config(config: ml_collections.ConfigDict) -> None:
  lcfg = config.loss
  checks = [
      (lcfg.fg_norm in dm.FG_NORMS, f"config.loss.fg_norm must be one of {dm.FG_NORMS}"),
      (lcfg.renorm_scope in dm.RENORM_SCOPES and lcfg.eval_renorm_scope in dm.RENORM_SCOPES,
       f"config.loss.renorm_scope / eval_renorm_scope must be one of {dm.RENORM_SCOPES}"),
      (lcfg.gd_variant in dm.GD_VARIANTS, f"config.loss.gd_variant must be one of "
       f"{dm.GD_VARIANTS}"),
      (config.teacher.rec_ramp in RAMPS and config.student.rec_ramp in RAMPS,
       f"config.teacher/student.rec_ramp must be one of {RAMPS}"),
      (config.student_init in STUDENT_INITS,
       f"config.student_init must be one of {STUDENT_INITS}"),
      (min(lcfg.lw, lcfg.cw, lcfg.bg_weight, lcfg.ssl_weight, lcfg.kl_weight, lcfg.gd_weight,
           lcfg.ad_weight, lcfg.rec_max_weight) >= 0, "config.loss weights must be >= 0"),
      (config.teacher.epochs >= 1 and config.student.epochs >= 1,
       "config.teacher.epochs and config.student.epochs must be >= 1"),
      (int(config.data.window) % 32 == 0,
       "config.data.window must be a multiple of 32 (AFSD's Mixed_5c has window / 8 steps and "
       "the proposal maps window / 4)"),
  ]
  for ok, message in checks:
    if not ok:
      raise UserError(message)


def make_optimizer(net_cfg, cvae_cfg, steps_per_pass: int, freeze_affine: bool):
  """CVAEs in pass A, network in pass B (``alternating``); the backbone BatchNorm affine frozen
  (``freeze_bn_affine``)."""

  def build(num_steps: int):
    own = max(1, num_steps // 2)
    net_tx, net_schedule = optim.make_optimizer(net_cfg, own)
    cvae_tx, _ = optim.make_optimizer(cvae_cfg, own)
    net_tx = afsd.freeze_bn_affine(net_tx, freeze_affine)
    return alternating([("cvae", cvae_tx), ("net", net_tx)], steps_per_pass), (
        lambda step: net_schedule(step // 2))

  return build


def load_pretrained(block: ml_collections.ConfigDict, where: str) -> dict[str, Any] | None:
  """Converted weights of ``<where>.checkpoint``: an AFSD / GenKD ``BDNet_*`` (backbone, head
  and, when present, attention heads) or a plain I3D / Top-I3D (backbone only)."""
  if not block.get("checkpoint"):
    return None
  conv = _common.load_converted(block.checkpoint, f"{where}.checkpoint")
  as_numpy = lambda tree: jax.tree.map(np.asarray, dict(tree))  # noqa: E731
  v = as_numpy(conv.variables)
  if conv.model_name == "afsd":
    out = {"bdnet": v}
    parts = {"Mixed_5c": "attention_head", "Mixed_4f": "attention_head_4f"}
    att = {tap: as_numpy(conv.parts[p].variables["params"]) for tap, p in parts.items()
           if p in conv.parts}
    if att:
      out["attention"] = att
    return out
  if conv.model_name in ("i3d", "top_i3d"):
    params = {k: x for k, x in v["params"].items() if k != "logits"}
    return {"backbone": {"params": params, "batch_stats": v.get("batch_stats", {})}}
  raise UserError(f"{where}.checkpoint holds a {conv.model_name}; convert an AFSD / GenKD "
                  "BDNet or a pytorch-i3d checkpoint (python -m kd_jax.models.convert)")


def _merge(params, state, pretrained, where: str):
  """Fresh stage variables with converted weights put in."""
  if not pretrained:
    return params, state
  hint = "convert it with --kwargs matching config.*.kwargs (tiny, widths)"
  what = f"{where}.checkpoint"
  bdnet, stats = params["net"]["bdnet"], state["batch_stats"]
  if "bdnet" in pretrained:
    bdnet = weights.merge_pretrained(bdnet, pretrained["bdnet"]["params"], what=what, hint=hint)
    stats = weights.merge_pretrained(stats, pretrained["bdnet"].get("batch_stats", {}),
                                     what=what, hint=hint)
  if "backbone" in pretrained:
    bdnet = dict(bdnet)
    bdnet["backbone"] = weights.merge_pretrained(bdnet["backbone"],
                                                 pretrained["backbone"]["params"], what=what,
                                                 hint=hint)
    stats = dict(stats)
    stats["backbone"] = weights.merge_pretrained(
        stats["backbone"], pretrained["backbone"]["batch_stats"], what=what, hint=hint)
  attention = dict(params["net"]["attention"])
  for tap, p in pretrained.get("attention", {}).items():
    attention[tap] = weights.merge_pretrained(attention[tap], p, what=f"{what} ({tap} head)",
                                              hint=hint)
  return ({**params, "net": {"bdnet": bdnet, "attention": attention}},
          {**state, "batch_stats": stats})


@dataclasses.dataclass
class Setup:
  config: ml_collections.ConfigDict
  data: Data
  clip_shape: tuple[int, ...]
  teacher: dm.DetNetworks
  student: dm.DetNetworks
  steps_per_pass: dict[str, int]


def make_setup(config: ml_collections.ConfigDict, data: Data) -> Setup:
  dcfg = config.data
  clip_shape = (int(dcfg.window), int(dcfg.crop_size), int(dcfg.crop_size), 3)
  att = _common.model_kwargs(config.attention.kwargs)
  k = len(data.class_names)
  teacher = dm.build_networks(config.teacher.backbone, _common.model_kwargs(config.teacher.kwargs),
                              att, k)
  student = dm.build_networks(config.student.backbone, _common.model_kwargs(config.student.kwargs),
                              att, k)
  ts, ss = dm.tap_shapes(teacher, clip_shape), dm.tap_shapes(student, clip_shape)
  if ts != ss:
    raise UserError(f"teacher taps {ts} and student taps {ss} differ; GenKD distils without an "
                    "adapter, so give both networks the same width")
  windows = num_train_windows(data)
  spp = {}
  for name, block in (("teacher", config.teacher), ("student", config.student)):
    batch = int(block.batch_size)
    n = int(config.steps_per_pass) or windows // batch
    if n < 1:
      raise UserError(f"config.{name}.batch_size={batch} exceeds the {windows} training windows")
    spp[name] = n
  return Setup(config, data, clip_shape, teacher, student, spp)


def _stage(setup: Setup, name: str, nets: dm.DetNetworks, block, lc: LossConfig, init_fn,
           spp: int, teacher: dm.DetNetworks | None = None, frozen: Any = None) -> train.Stage:
  cfg = setup.config
  freeze_affine = bool(_common.model_kwargs(block.kwargs).get("freeze_bn_affine", True))
  return train.Stage(
      name=name, init_fn=init_fn,
      loss_fn=dm.make_loss_fn(nets, lc, spp, int(cfg.data.window), teacher),
      optimizer=make_optimizer(block.optimizer, block.cvae_optimizer, spp, freeze_affine),
      num_steps=2 * int(block.epochs) * spp, global_batch_size=int(block.batch_size),
      train_data=lambda per_host: train_batches(setup.data, per_host, cfg.seed), frozen=frozen)


def calibration_clips(setup: Setup, block: ml_collections.ConfigDict) -> np.ndarray | None:
  """``block.bn_calibration`` training windows (the same on every process: the stream of
  ``seed + 1``), or None when it is 0."""
  n = int(block.get("bn_calibration", 0))
  if n <= 0:
    return None
  batch = next(train_batches(setup.data, n, int(setup.config.seed) + 1))
  return np.asarray(batch["video"])


def _calibrate(nets: dm.DetNetworks, params, state, clips: np.ndarray | None):
  """Backbone BatchNorm statistics fitted to ``clips`` (:func:`_genkd_det_model.
  calibrate_batch_norm`); unchanged without clips."""
  if clips is None:
    return params, state
  stats = dm.calibrate_batch_norm(nets, params["net"]["bdnet"], state["batch_stats"],
                                  jnp.asarray(clips))
  return params, {**state, "batch_stats": stats}


def teacher_stage(setup: Setup) -> train.Stage:
  """Phase 1: the teacher detector, attention heads and CVAEs."""
  pretrained = load_pretrained(setup.config.teacher, "config.teacher")
  clips = calibration_clips(setup, setup.config.teacher)

  def init_fn(key):
    params, state = dm.init_variables(setup.teacher, jax.random.fold_in(key, 1), setup.clip_shape)
    return _calibrate(setup.teacher, *_merge(params, state, pretrained, "config.teacher"), clips)

  return _stage(setup, "teacher", setup.teacher, setup.config.teacher,
                loss_config(setup.config, teacher=True), init_fn, setup.steps_per_pass["teacher"])


def student_stage(setup: Setup, name: str, teacher_vars: Mapping[str, Any], *, use_gd: bool,
                  use_ad: bool) -> train.Stage:
  """Phase 2 (or the baseline with both switches off); both students start from one init."""
  pretrained = load_pretrained(setup.config.student, "config.student")
  copy_head = setup.config.student_init == "teacher_head"
  clips = calibration_clips(setup, setup.config.student)

  def init_fn(key):
    params, state = dm.init_variables(setup.student, jax.random.fold_in(key, 2), setup.clip_shape)
    if copy_head:
      params = dm.copy_teacher_head(params, teacher_vars)
    return _calibrate(setup.student, *_merge(params, state, pretrained, "config.student"), clips)

  frozen = {"teacher": teacher_vars, "use_gd": np.float32(use_gd), "use_ad": np.float32(use_ad)}
  return _stage(setup, name, setup.student, setup.config.student,
                loss_config(setup.config, teacher=False), init_fn, setup.steps_per_pass["student"],
                teacher=setup.teacher, frozen=frozen)


# ------------------------------------------------------------------------------------------------
# Evaluation.


def window_outputs(runner: train.Runner, nets: dm.DetNetworks, state: Any, data: Data,
                   lc: LossConfig, batch_size: int) -> dict[str, np.ndarray]:
  """AFSD's outputs on every test window: ``{'loc', 'conf', 'prop_loc', 'prop_conf', 'center',
  'priors', 'index', 'offset'}``, one row per window."""

  def fn(variables, batch):
    out = dm.detect(nets, variables["net"], variables["batch_stats"], batch["video"],
                    norm=lc.fg_norm, scope=lc.eval_renorm_scope)
    b = batch["video"].shape[0]
    out["priors"] = jnp.broadcast_to(out["priors"], (b,) + out["priors"].shape)
    return {**out, "index": batch["index"], "offset": batch["offset"]}

  variables = {"net": state.params["net"], "batch_stats": state.model_state["batch_stats"]}
  per_host = mesh_lib.per_host_batch_size(batch_size, runner.mesh)
  return runner.predict(fn, variables, eval_batches(data, per_host))


def detections(outputs: Mapping[str, np.ndarray], source: Any, *, window: int,
               ecfg: ml_collections.ConfigDict, num_classes: int) -> list[dict[str, Any]]:
  """Windows -> decode -> merge per video -> soft-NMS: detection dicts in seconds, label the
  0-based class (AFSD's ``test.py``)."""
  from kd_jax.metrics import detection as md  # pylint: disable=g-import-not-at-top
  per_video: dict[int, list] = {}
  for i in range(len(outputs["index"])):
    seg, scores = md.decode_window(outputs["loc"][i], outputs["conf"][i], outputs["prop_loc"][i],
                                   outputs["prop_conf"][i], outputs["center"][i],
                                   outputs["priors"][i], clip_length=window)
    per_video.setdefault(int(outputs["index"][i]), []).append(
        (float(outputs["offset"][i]), seg, scores))
  names = [None] + list(range(num_classes))
  out = []
  for index, wins in sorted(per_video.items()):
    record = source[index]
    vid = record["video_id"]
    vid = vid.decode() if isinstance(vid, bytes) else str(vid)
    out += md.merge_window_detections(
        vid, wins, fps=float(record["fps"]), conf_thresh=float(ecfg.conf_thresh),
        sigma=float(ecfg.nms_sigma), top_k=int(ecfg.top_k),
        score_threshold=float(ecfg.score_threshold), class_names=names)
  return out


def durations(source: Any) -> dict[str, float]:
  """Seconds of every video of a detection source."""
  out = {}
  for i in range(len(source)):
    r = source[i]
    vid = r["video_id"].decode() if isinstance(r["video_id"], bytes) else str(r["video_id"])
    out[vid] = float(r["num_frames"]) / float(r["fps"])
  return out


# ------------------------------------------------------------------------------------------------
# The run.


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Phase 1, the baseline student, phase 2, evaluation; writes results.json and report.md."""
  from kd_jax.data import detection_pipeline as dp  # pylint: disable=g-import-not-at-top
  from kd_jax.methods import _genkd_det_report  # pylint: disable=g-import-not-at-top
  from kd_jax.metrics import detection as md  # pylint: disable=g-import-not-at-top
  t_start = time.monotonic()
  check_config(config)
  data = open_data(config.data)
  setup = make_setup(config, data)
  runner = train.Runner(config, workdir)
  timings, results, states = {}, {}, {}

  t0 = time.monotonic()
  results["teacher"] = runner.run(teacher_stage(setup))
  states["teacher"] = results["teacher"].pick()
  teacher_vars = dm.teacher_variables(states["teacher"])
  timings["teacher"] = time.monotonic() - t0
  runs = [("student_baseline", False, False)] if config.run_baseline else []
  runs.append(("student_genkd", bool(config.loss.use_gd), bool(config.loss.use_ad)))
  for name, use_gd, use_ad in runs:
    t0 = time.monotonic()
    results[name] = runner.run(student_stage(setup, name, teacher_vars, use_gd=use_gd,
                                             use_ad=use_ad))
    states[name] = results[name].pick()
    timings[name] = time.monotonic() - t0

  t0 = time.monotonic()
  truth, _ = dp.ground_truth(data.eval)
  thresholds = tuple(float(t) for t in config.eval.tiou_thresholds)
  k = len(data.class_names)
  window = int(config.data.window)
  rows, dets = {}, {}
  for name, state in states.items():
    nets = setup.teacher if name == "teacher" else setup.student
    outputs = window_outputs(runner, nets, state, data, loss_config(config, teacher=False),
                             int(config.eval.batch_size))
    dets[name] = detections(outputs, data.eval, window=window, ecfg=config.eval, num_classes=k)
    maps = md.mean_average_precision(truth, dets[name], thresholds)
    rows[name] = {"map": [float(m) for m in maps], "average": float(np.mean(maps)),
                  "detections": len(dets[name])}
  chance = dm.random_intervals(truth, durations(data.eval), k,
                               per_class=int(config.eval.random_per_class), seed=int(config.seed))
  maps = md.mean_average_precision(truth, chance, thresholds)
  rows["random_intervals"] = {"map": [float(m) for m in maps], "average": float(np.mean(maps)),
                              "detections": len(chance)}
  timings["evaluation"] = time.monotonic() - t0
  timings["total"] = time.monotonic() - t_start

  if jax.process_index() == 0:
    _genkd_det_report.plot_detections(
        truth, dets, data.class_names, os.fspath(runner.workdir / _genkd_det_report.PLOT),
        num_videos=int(config.eval.plot_videos))
  extra = {"genkd_detection": rows, "tiou_thresholds": list(thresholds),
           "data": data.description, "seconds": timings,
           "steps_per_pass": setup.steps_per_pass}
  out = runner.write_results(extra)
  _genkd_det_report.write(config, runner.workdir, data.description, rows, thresholds, timings)
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """One run of the detection method (``config.seeds`` / ``config.splits`` are not used)."""
  return run_one(config, workdir)


# ------------------------------------------------------------------------------------------------
# Config.


def base_config() -> ml_collections.ConfigDict:
  """Every field of the method at the official THUMOS14 RGB settings (genkd.md 6, 7.3); phase 1
  at the GAF recipe. What ``configs/genkd_thumos14.py`` starts from."""
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = train.engine_config(log_every=50, checkpoint_every=1000, max_to_keep=2)
  config.method = "genkd_detection"
  config.seed = 2020
  config.run_baseline = True
  # Steps of each pass (A, then B); 0: every training window once (floor(windows / batch)).
  config.steps_per_pass = 0
  config.data = sources.data_config(
      name="thumos14", config="", data_dir="~/tensorflow_datasets", resize_size=0,
      train_split="validation", eval_split="test", crop_size=96, num_workers=8,
      window=256, train_stride=30, test_stride=128,
      max_segments=0,  # padded targets per window; 0: the most any window has
      ssl=True)  # AFSD's boundary-consistency clip in training batches

  def net_block(backbone: str, epochs: int, batch: int, lr: float, cvae_lr: float, ramp: str):
    return ml_collections.ConfigDict(dict(
        backbone=backbone, epochs=epochs, batch_size=batch, rec_ramp=ramp, checkpoint="",
        # Training clips the frozen backbone BatchNorm statistics are measured on at
        # initialisation (dm.calibrate_batch_norm); 0: kept (pretrained checkpoints, official).
        bn_calibration=0,
        kwargs=ml_collections.ConfigDict(dict(freeze_bn=True, freeze_bn_affine=True,
                                              init_scheme="genkd")),
        # PyTorch Adam with weight_decay 1e-3: coupled L2.
        optimizer=train.optimizer_config(name="adam", learning_rate=lr, b1=0.9, b2=0.999,
                                         weight_decay=1e-3),
        cvae_optimizer=train.optimizer_config(name="adam", learning_rate=cvae_lr, b1=0.8,
                                              b2=0.999, eps=1e-8)))

  # Phase 1 at GAF's THUMOS14 recipe (genkd.md 6): Adam 1e-5, batch 8, 300 epochs, CVAE 1e-3,
  # ramp 0.5 e / max_epoch.
  config.teacher = net_block("i3d", 300, 8, 1e-5, 1e-3, "linear")
  # GenKD's detection student: Adam 1e-6, batch 1, 50 epochs, CVAE 1e-4, ramp 0.5 min(e,20)/20.
  config.student = net_block("top_i3d", 50, 1, 1e-6, 1e-4, "official")
  config.student_init = "teacher_head"  # dev v8 (genkd.md 9 B1); 'random': the released code
  config.attention = ml_collections.ConfigDict(dict(kwargs=ml_collections.ConfigDict()))
  config.loss = ml_collections.ConfigDict(dict(
      lw=10.0, cw=1.0, piou=0.5, prop_bce_weight=0.1,
      bg_weight=35.0, use_bg=True,         # cost_fg + 35 cost_bg
      ssl_weight=0.1, use_ssl=True,        # the boundary-consistency triplet (--ssl 0.1)
      fg_norm="sum_attention",             # F*A / sum A ('none': F*A)
      renorm_scope="global", eval_renorm_scope="per_sample",
      kl_weight=0.1, rec_max_weight=0.5, rec_ramp_epochs=20, rec_detach_target=False,
      gd_variant="v8", gd_weight=0.01, ad_weight=10.0, ad_on_ssl=True,
      use_gd=True, use_ad=True))
  config.eval = ml_collections.ConfigDict(dict(
      batch_size=8, nms_sigma=0.1, top_k=5000, conf_thresh=0.01, score_threshold=0.001,
      tiou_thresholds=(0.3, 0.4, 0.5, 0.6, 0.7), plot_videos=4, random_per_class=10))
  return config


def smoke_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Tiny networks on 64-frame 32x32 windows, 2 steps per pass, 1 epoch per stage, batch 2."""
  d = config.data
  d.window, d.train_stride, d.test_stride, d.crop_size = 64, 32, 64, 32
  d.num_workers, d.read_threads = 0, 1
  config.steps_per_pass = 2
  for block in (config.teacher, config.student):
    block.kwargs = ml_collections.ConfigDict(dict(tiny=True, freeze_bn=True,
                                                  freeze_bn_affine=True, init_scheme="genkd"))
    block.epochs, block.batch_size = 1, 2
    block.optimizer = train.optimizer_config(name="adam", learning_rate=1e-3, weight_decay=1e-3)
    block.cvae_optimizer = train.optimizer_config(name="adam", learning_rate=1e-3, b1=0.8)
    block.checkpoint = ""
  # Tiny Mixed_4f has 52 channels: GroupNorm groups must divide 52, 64 and the 32 hidden ones.
  config.attention.kwargs = ml_collections.ConfigDict(dict(tiny=True, num_groups=4))
  config.eval.batch_size = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 100
  config.train.cpu_compile = "fastest"
  config.mesh.num_devices = 1
  return config

"""PKD + WISE: progressive knowledge distillation of early exits on compressed video, then WISE.

Soufleri, Ravikumar and Roy, "Advancing Compressed Video Action Recognition through Progressive
Knowledge Distillation" (arXiv 2407.02713); specification ``specs/pkd_wise.md``. The pipeline, each
step resumable and leaving its artifacts in the workdir:

1. **Modality networks** (stage ``backbone[_<net>]``): the residual network (ResNet-18 + input BN),
   the motion-vector network (ResNet-18, 2 input channels + input BN) and the I-frame network
   (ResNet-50), fine-tuned with cross-entropy on TSN segments; Adam (eps 1e-3) with coupled L2 on
   non-bias weights, per-group learning-rate multipliers and a step schedule (spec 6.1). From a
   converted PyTorch checkpoint when ``networks.<net>.init_checkpoint`` names one, else random.
2. **Internal classifiers** (stages ``ic_ce[_<net>]`` and ``ic_pkd[_<net>]``): IC1..IC3 on the
   frozen backbones' ``layer1..3``, trained twice from the same initialisation, with cross-entropy
   and with PKD: soft-target CE (T = 1, no label term) against a curriculum of teachers over epochs
   (``ic.teacher_schedule``, spec 4.2).
3. **Logits** (``logits/<split>_s<S>.npz``): video-level logits of all 12 exits, train and test
   split, for every test segment count the WISE settings use, for the CE and the PKD ICs.
4. **WISE** (:mod:`kd_jax.methods._wise`): per-exit weights fitted on the train logits, the
   confidence cascade in ``wise.order``, the ablations, GMACs per video from
   ``kd_jax.models.macs.exit_macs`` at the actual input size.
5. **Report**: ``results.json``, ``report.md`` and ``tradeoff.png``.

``joint_networks=True`` trains the three networks (and their ICs) in one stage each: the losses
and parameters are independent and Adam is elementwise, so this equals three separate runs with
the same batch size and budget, with a third of the compilations (the quickstart's setting). The
paper's configs train each network in its own stage with its own batch size.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import losses
from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods import _pkd_report
from kd_jax.methods._pkd_batches import Batches
from kd_jax.methods._pkd_config import base_config  # noqa: F401  (re-exported)
from kd_jax.methods._pkd_config import fc_bias_trained
from kd_jax.methods._pkd_config import smoke_variant  # noqa: F401  (re-exported)
from kd_jax.methods._pkd_config import validate
from kd_jax.methods._pkd_curriculum import SCHEDULES
from kd_jax.methods._pkd_curriculum import boundary_epochs
from kd_jax.methods._pkd_curriculum import curriculum  # noqa: F401  (re-exported)
from kd_jax.methods._pkd_curriculum import resolve_schedule
from kd_jax.methods._pkd_curriculum import steps_per_epoch
from kd_jax.methods._pkd_curriculum import teacher_phase  # noqa: F401  (re-exported)
from kd_jax.methods._pkd_curriculum import teacher_phase_at
from kd_jax.methods._pkd_exits import dump_logits
from kd_jax.methods._pkd_exits import run_wise
from kd_jax.methods._pkd_networks import IC_TAPS  # noqa: F401  (re-exported)
from kd_jax.methods._pkd_networks import INPUT  # noqa: F401  (re-exported)
from kd_jax.methods._pkd_networks import NETWORKS
from kd_jax.methods._pkd_networks import Network
from kd_jax.methods._pkd_networks import SHORT
from kd_jax.methods._pkd_networks import _ic_forward
from kd_jax.methods._pkd_networks import backbone_example  # noqa: F401  (re-exported)
from kd_jax.methods._pkd_networks import build_networks
from kd_jax.methods._pkd_networks import exit_costs
from kd_jax.methods._pkd_networks import init_backbone
from kd_jax.methods._pkd_networks import init_heads


# ----------------------------------------------------------------------------- data


class Data:
  """The configured dataset as training iterators and evaluation batches.

  ``data.cache_views > 0`` decodes each training video that many times (independent random
  segments and crops) into memory once and trains from the arrays; evaluation sets are decoded once
  per (split, segments, sampling). That is what makes the quickstart fast on a CPU. ``0`` streams
  through the grain pipelines (``kd_jax.data.pipeline``), as a real dataset needs.
  """

  def __init__(self, config: ml_collections.ConfigDict, split: int | None = None):
    from kd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    from kd_jax.data import streams  # pylint: disable=g-import-not-at-top
    self.pipeline = pipeline
    self.cfg = config.data
    self.seed = config.seed
    dcfg = self.cfg
    if split is not None:  # an entry of config.splits; the run's config keeps its own split
      dcfg = dcfg.copy_and_resolve_references()
      dcfg.config = f"split{split}"
    self.streams = streams.open_streams(
        dcfg, "compressed", num_segments=int(dcfg.eval_segments),
        holdout=float(dcfg.holdout) if config.selection == "best_val" else 0.0)
    opened = self.streams.opened
    self.sources = {"train": opened.train, "test": opened.eval}
    if self.streams.val is not None:  # select on held-out training videos, never on test
      self.sources["val"] = self.streams.val
    self.name = opened.name
    self.num_classes = len(opened.class_names)
    self._cache: dict[Any, dict[str, np.ndarray]] = {}

  def size(self, split: str) -> int:
    return len(self.sources[split])

  def spec(self, *, segments: int, sampling: str, crop: int | None = None,
           modalities: Sequence[str] = NETWORKS):
    return dataclasses.replace(
        self.streams.spec, num_segments=int(segments), sampling=sampling,
        crop_size=int(crop or self.cfg.crop_size),
        modalities=tuple(m for m in NETWORKS if m in modalities))

  def _decode_all(self, split: str, spec, *, train: bool, views: int = 1) -> dict[str, np.ndarray]:
    key = (split, spec, train, views)
    if key in self._cache:
      return self._cache[key]
    src = self.sources[split]
    flip = self.pipeline.resolve_flip(spec, src)
    dec = self.pipeline.DecodeVideo(spec, train=train, flip=flip)
    t0 = time.monotonic()
    out: dict[str, list] = {}
    for v in range(views):
      for i in range(len(src)):
        rng = np.random.default_rng([self.seed, 7919, v, i]) if train else None
        for k, a in dec.decode(i, src[i], rng).items():
          out.setdefault(k, []).append(a)
    arrays = {k: np.stack(v) for k, v in out.items()}
    logging.info("Decoded %s %s (%d segments, %d view(s)) in %.1f s.", self.name, split,
                 spec.num_segments, views, time.monotonic() - t0)
    self._cache[key] = arrays
    return arrays

  def train_iter(self, spec, *, global_batch: int, per_host: int, seed: int):
    """An endless iterator of per-host training batches (checkpointable)."""
    if self.cfg.cache_views > 0:
      full = self.spec(segments=spec.num_segments, sampling=spec.sampling, crop=spec.crop_size)
      arrays = self._decode_all("train", full, train=True, views=int(self.cfg.cache_views))
      arrays = {k: v for k, v in arrays.items() if k in spec.modalities or k == "label"}
      return train.train_batches(arrays, global_batch_size=global_batch,
                                 per_host_batch_size=per_host, seed=seed,
                                 order=self.pipeline.train_order(spec))
    return self.streams.train(per_host, seed=seed, spec=spec)

  def val_batches(self, spec, *, global_batch: int
                  ) -> Callable[[int], Iterable[dict[str, np.ndarray]]] | None:
    """``Stage.val_data``: the held-out training videos (``config.selection='best_val'``)."""
    if "val" not in self.sources:
      return None
    return lambda per_host: self.eval_batches("val", spec, global_batch=global_batch,
                                              per_host=per_host)

  def eval_batches(self, split: str, spec, *, global_batch: int,
                   per_host: int) -> Iterable[dict[str, np.ndarray]]:
    """Every video of ``split`` once, padded to full batches, ``mask`` marking real ones."""
    if self.cfg.cache_views > 0:
      full = self.spec(segments=spec.num_segments, sampling=spec.sampling, crop=spec.crop_size)
      arrays = self._decode_all(split, full, train=False)
      arrays = {k: v for k, v in arrays.items() if k in spec.modalities or k in ("label", "index")}
      return train.eval_batches(arrays, global_batch_size=global_batch,
                                per_host_batch_size=per_host)
    return self.streams.eval(per_host, spec=spec, split="eval" if split == "test" else split)


# ----------------------------------------------------------------------------- stages


def _lr_multipliers(group: Sequence[Network], lr_of: Callable[[Network], float],
                    groups_of: Callable[[Network], Sequence[Sequence[Any]]],
                    base: float) -> tuple:
  rules = []
  for net in group:
    for regex, mult in groups_of(net):
      regex = str(regex)
      body = regex[1:] if regex.startswith("^") else regex
      rules.append((f"^{net.name}/{body}", float(mult) * lr_of(net) / base))
  return tuple(rules)


def backbone_stage(config, data: Data, group: Sequence[Network], inits: dict[str, tuple],
                   name: str) -> train.Stage:
  """Cross-entropy fine-tuning of the networks in ``group`` (independent losses, one step)."""
  nets = {n.name: n for n in group}
  first = group[0]
  batch, epochs = first.cfg.batch_size, first.cfg.epochs
  spe = steps_per_epoch(data.size("train"), batch)
  base = float(first.cfg.lr)
  opt = train.optimizer_config(
      name="adam", learning_rate=base, eps=float(config.backbone.eps), b1=0.9, b2=0.999,
      weight_decay=float(config.backbone.weight_decay), no_decay=tuple(config.backbone.no_decay),
      schedule="step", decay_at=tuple(first.cfg.decay_at),
      decay_factor=0.1)
  opt.lr_multipliers = _lr_multipliers(group, lambda n: float(n.cfg.lr),
                                       lambda n: n.cfg.lr_groups, base)

  def init_fn(key):
    del key  # host-drawn (see weights.host_init); the same seed gives the same start
    return ({m: inits[m][0] for m in nets}, {m: inits[m][1] for m in nets})

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del frozen, rng, step
    metrics, new_state, total = {}, {}, 0.0
    for m, net in nets.items():
      (logits, _), upd = net.backbone.apply(
          {"params": params[m], "batch_stats": model_state[m]}, batch[m], train=True,
          mutable=["batch_stats"])
      ce = _common.mean_ce(logits, batch["label"])
      metrics[f"ce_{net.short}"] = ce
      new_state[m] = upd["batch_stats"]
      total = total + ce
    return total, (metrics, new_state)

  def eval_fn(params, model_state, frozen, batch):
    del frozen
    out = {}
    for m, net in nets.items():
      out[f"logits/{net.short}"], _ = net.backbone.apply(
          {"params": params[m], "batch_stats": model_state[m]}, batch[m], train=False)
    out["logits"] = sum(out.values())  # late fusion of the group (the network itself alone)
    return out

  train_spec = data.spec(segments=config.data.train_segments, sampling=config.data.train_sampling,
                         modalities=list(nets))
  eval_spec = data.spec(segments=config.data.eval_segments, sampling=config.data.eval_sampling,
                        modalities=list(nets))
  every = int(config.backbone.eval_every_epochs)
  return train.Stage(
      name=name, init_fn=init_fn, loss_fn=loss_fn, optimizer=opt, num_steps=epochs * spe,
      global_batch_size=batch,
      train_data=lambda per_host: Batches(lambda: data.train_iter(
          train_spec, global_batch=batch, per_host=per_host, seed=config.seed)),
      eval_fn=eval_fn,
      eval_data=lambda per_host: data.eval_batches("test", eval_spec, global_batch=batch,
                                                   per_host=per_host),
      eval_every=every * spe if every > 0 else 0,
      select={n.short: f"{n.short}/top1" for n in group},
      val_data=data.val_batches(eval_spec, global_batch=batch))


def ic_stage(config, data: Data, group: Sequence[Network], all_nets: dict[str, Network],
             backbones: dict[str, dict], ic_init: dict[str, tuple], kind: str,
             name: str) -> train.Stage:
  """IC1..IC3 of the networks in ``group`` on their frozen backbones: CE or PKD."""
  ic = config.ic
  nets = {n.name: n for n in group}
  emulate = ic.bn_mode == "train"
  epochs = int(ic.pkd_epochs if kind == "pkd" else ic.ce_epochs)
  batch = int(ic.batch_size)
  spe = steps_per_epoch(data.size("train"), batch)
  resolve_schedule(ic.teacher_schedule, group[0].name)  # a clear error for an unknown schedule
  schedule = SCHEDULES[ic.teacher_schedule] if kind == "pkd" else ()
  boundaries = tuple(ic.boundaries)[:len(SCHEDULES[ic.teacher_schedule]) - 1]
  needed = set(nets) | {t for t in schedule if t != "own"}
  first = group[0]
  base = float(first.cfg.ic_lr)
  opt = train.optimizer_config(
      name="adam", learning_rate=base, eps=float(ic.eps), weight_decay=float(ic.weight_decay),
      schedule="step", decay_at=tuple(ic.pkd_decay_at if kind == "pkd" else ic.ce_decay_at))
  groups = ((r"fc/bias$", 1.0 if fc_bias_trained(ic.train_fc_bias, kind) else 0.0), (".*", 1.0))
  opt.lr_multipliers = _lr_multipliers(group, lambda n: float(n.cfg.ic_lr), lambda n: groups,
                                       base)

  def init_fn(key):
    del key
    params = {m: ic_init[m][0] for m in nets}
    state = {m: {"ic": ic_init[m][1],
                 "backbone": backbones[m]["batch_stats"] if emulate else {}} for m in nets}
    return params, state

  def teacher_logits(m, phase, finals, batch, frozen):
    """The current teacher of network m's ICs: a switch over the curriculum's phases."""

    def branch(t):
      def fn(_):
        if t == "own":  # the same forward pass (train-mode BN when emulating the quirk)
          return finals[m]
        if t in finals and not emulate:  # a group member's final, already computed in eval mode
          return finals[t]
        # A separate frozen copy in eval mode, fed its own modality.
        logits, _ = all_nets[t].backbone.apply(frozen[t], batch[t], train=False)
        return jax.lax.stop_gradient(logits)
      return fn

    ts = schedule
    if len(set(ts)) == 1:
      return branch(ts[0])(None)
    return jax.lax.switch(jnp.clip(phase, 0, len(ts) - 1), [branch(t) for t in ts], None)

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del rng
    metrics, new_state, total, finals, ics = {}, {}, 0.0, {}, {}
    for m, net in nets.items():
      bb_stats = model_state[m]["backbone"] if emulate else frozen[m]["batch_stats"]
      final, ic_logits, bb_stats, ic_stats = _ic_forward(
          net, frozen[m]["params"], bb_stats, params[m], model_state[m]["ic"], batch[m],
          train_ic=True, train_bb=emulate)
      finals[m], ics[m] = final, ic_logits
      new_state[m] = {"ic": ic_stats, "backbone": bb_stats if emulate else {}}
    phase = teacher_phase_at(step, spe, epochs, boundaries)
    for m, net in nets.items():
      heads = [ics[m][:, i] for i in range(ics[m].shape[1])]
      if kind == "ce":
        loss = sum(_common.mean_ce(h, batch["label"]) for h in heads)
      else:
        t = teacher_logits(m, phase, finals, batch, frozen)
        loss = losses.progressive_kd_loss(ics[m], t, temperature=float(ic.temperature)).mean()
      metrics[f"loss_{net.short}"] = loss
      total = total + loss
    if kind == "pkd":
      metrics["teacher_phase"] = phase.astype(jnp.float32)
    return total, (metrics, new_state)

  def eval_fn(params, model_state, frozen, batch):
    out = {}
    for m, net in nets.items():
      bb_stats = model_state[m]["backbone"] if emulate else frozen[m]["batch_stats"]
      _, ic_logits, _, _ = _ic_forward(net, frozen[m]["params"], bb_stats, params[m],
                                       model_state[m]["ic"], batch[m], train_ic=False,
                                       train_bb=False)
      for i in range(ic_logits.shape[1]):
        out[f"logits/{net.short}{i + 1}"] = ic_logits[:, i]
    out["logits"] = out[f"logits/{group[0].short}3"]
    return out

  modalities = sorted(needed)
  crop = ic.train_crop_size or config.data.crop_size
  train_spec = data.spec(segments=config.data.train_segments,
                         sampling=config.data.ic_train_sampling, crop=crop, modalities=modalities)
  eval_spec = data.spec(segments=config.data.eval_segments,
                        sampling=config.data.ic_eval_sampling, modalities=list(nets))
  every = int(ic.eval_every_epochs)
  return train.Stage(
      name=name, init_fn=init_fn, loss_fn=loss_fn, optimizer=opt, num_steps=epochs * spe,
      global_batch_size=batch,
      train_data=lambda per_host: Batches(lambda: data.train_iter(
          train_spec, global_batch=batch, per_host=per_host, seed=config.seed + 1)),
      frozen={m: backbones[m] for m in needed},
      eval_fn=eval_fn,
      eval_data=lambda per_host: data.eval_batches("test", eval_spec, global_batch=batch,
                                                   per_host=per_host),
      eval_every=every * spe if every > 0 else 0,
      select={f"{n.short}{i + 1}": f"{n.short}{i + 1}/top1" for n in group
              for i in range(len(n.heads.configs))},
      val_data=data.val_batches(eval_spec, global_batch=batch))


def _picked_ics(res: train.StageResult, net: Network, kind: str,
                selected: dict[str, int]) -> dict[str, Any]:
  """The IC heads of ``net`` a stage hands on: each IC from its own selected step, as the
  official code keeps one checkpoint per IC. With the train-mode BatchNorm quirk each IC also
  keeps the backbone statistics of its step (``model_state['backbone']``, one per IC)."""
  params, ic_stats, bb_stats = {}, {}, {}
  for i in range(1, len(net.heads.configs) + 1):
    picked = res.pick(f"{net.short}{i}")
    selected[f"{kind}/{net.short}{i}"] = picked.step
    params[f"ic{i}"] = picked.params[net.name][f"ic{i}"]
    ic_stats[f"ic{i}"] = picked.model_state[net.name]["ic"][f"ic{i}"]
    bb_stats[f"ic{i}"] = picked.model_state[net.name]["backbone"]
  return {"params": params, "model_state": {"ic": ic_stats, "backbone": bb_stats}}


# ----------------------------------------------------------------------------- the run


def run_one(config: ml_collections.ConfigDict, workdir: epath.Path, split: int | None,
            seed: int, bb_dir: epath.Path) -> dict[str, Any]:
  """The whole pipeline for one (split, seed); returns its results."""
  timing, t_start = {}, time.monotonic()
  t0 = time.monotonic()
  data = Data(config, split)
  timing["data_open_s"] = time.monotonic() - t0
  nets = build_networks(config, data.num_classes)
  crop = int(config.data.crop_size)
  ic_crop = int(config.ic.train_crop_size or crop)

  bb_config = ml_collections.ConfigDict(config.to_dict())
  bb_runner = train.Runner(bb_config, bb_dir)
  if bb_dir == workdir and seed == config.seed:
    runner = bb_runner
  else:
    ic_config = ml_collections.ConfigDict(config.to_dict())
    ic_config.seed = seed
    runner = train.Runner(ic_config, workdir)

  groups = ([[nets[m] for m in NETWORKS]] if config.joint_networks
            else [[nets[m]] for m in NETWORKS])
  suffix = (lambda g: "") if config.joint_networks else (lambda g: "_" + g[0].short)

  # 1. Modality networks.
  t0 = time.monotonic()
  backbones, init_desc = {}, {}
  selected: dict[str, int] = {}  # the step whose weights each network and IC hands on
  histories: dict[str, list[tuple[int, dict[str, float]]]] = {}  # every evaluation, by stage
  for g in groups:
    inits = {}
    for net in g:
      p, s, desc = init_backbone(net, crop, config.seed + NETWORKS.index(net.name))
      inits[net.name] = (p, s)
      init_desc[net.short] = desc
    res = bb_runner.run(backbone_stage(config, data, g, inits, "backbone" + suffix(g)))
    histories["backbone" + suffix(g)] = res.history
    for net in g:
      picked = res.pick(net.short)
      selected[net.short] = picked.step
      backbones[net.name] = {"params": picked.params[net.name],
                             "batch_stats": picked.model_state[net.name]}
  backbones = jax.device_get(backbones)
  timing["backbones_s"] = time.monotonic() - t0

  # 2. Internal classifiers, CE then PKD, from the same initialisation.
  t0 = time.monotonic()
  ic_init = {m: init_heads(nets[m], ic_crop, seed + 100 + i) for i, m in enumerate(NETWORKS)}
  ics: dict[str, dict[str, Any]] = {m: {} for m in NETWORKS}
  for kind in ("ce", "pkd"):
    for g in groups:
      res = runner.run(ic_stage(config, data, g, nets, backbones, ic_init, kind,
                                f"ic_{kind}" + suffix(g)))
      histories[f"ic_{kind}" + suffix(g)] = res.history
      for net in g:
        ics[net.name][kind] = _picked_ics(res, net, kind, selected)
  ics = jax.device_get(ics)
  timing["ics_s"] = time.monotonic() - t0

  # 3. Logits of all exits.
  t0 = time.monotonic()
  segments = sorted({int(x) for s in config.wise.settings for x in s})
  logits = dump_logits(runner, config, data, nets, backbones, ics, segments)
  timing["logits_s"] = time.monotonic() - t0

  # 4. WISE.
  t0 = time.monotonic()
  costs = exit_costs(config, nets, data.num_classes)
  wise = run_wise(config, logits, costs, split=split)
  timing["wise_s"] = time.monotonic() - t0

  # Per-network and per-IC accuracies (best and last evaluation of each stage).
  bb_spe = {net.short: steps_per_epoch(data.size("train"), net.cfg.batch_size)
            for net in nets.values()}
  ic_spe = steps_per_epoch(data.size("train"), int(config.ic.batch_size))
  networks, ic_table = _pkd_report.accuracies(
      histories, [(suffix(g), [net.short for net in g]) for g in groups], bb_spe, ic_spe)
  timing["total_s"] = time.monotonic() - t_start

  # A rerun that only restores must not replace the cost of the run that computed everything.
  first_timing = timing
  prev_path = workdir / "results.json"
  if prev_path.exists():
    try:
      prev = json.loads(prev_path.read_text())
      first_timing = prev.get("timing_first_run") or prev.get("timing") or timing
    except (json.JSONDecodeError, OSError):
      pass
  runner.results.update(bb_runner.results)
  extra = {
      "dataset": data.name, "num_classes": data.num_classes, "split": split, "seed": seed,
      "train_videos": data.size("train"), "test_videos": data.size("test"),
      "init": init_desc, "teacher_schedule": config.ic.teacher_schedule,
      "curriculum": {
          "teachers": list(SCHEDULES[config.ic.teacher_schedule]),
          "boundary_epochs": boundary_epochs(
              int(config.ic.pkd_epochs),
              tuple(config.ic.boundaries)[:len(SCHEDULES[config.ic.teacher_schedule]) - 1])},
      "bn_mode": config.ic.bn_mode, "networks": networks, "ic": ic_table,
      "selection": {"mode": config.selection, "steps": selected},
      "exit_gmacs_per_segment": {SHORT[m]: c for m, c in costs.items()},
      "input_size": crop, "wise": wise, "wise_ic_variant": config.wise.ic_variant,
      "timing": timing, "timing_first_run": first_timing,
      "models": {SHORT[m]: {"model": n.cfg.model, **n.model_kwargs,
                            "ic_heads": [list(c) for c in n.heads.configs]}
                 for m, n in nets.items()},
  }
  results = runner.write_results(extra)
  if bb_runner is not runner:
    bb_runner.writer.close()
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs PKD + WISE for every configured split and seed; writes results.json and report.md."""
  validate(config)
  wd = epath.Path(workdir)
  splits = [int(s) for s in config.splits] if config.splits else [None]
  if config.data.name not in ("ucf101", "hmdb51") and splits != [None]:
    raise UserError(f"config.splits applies to ucf101 and hmdb51, not {config.data.name}")
  seeds = [int(s) for s in config.seeds] if config.seeds else [int(config.seed)]
  multi = len(splits) * len(seeds) > 1
  runs = []
  for split in splits:
    bb_dir = wd / f"split{split}" if multi and split is not None else wd
    for seed in seeds:
      run_dir = bb_dir / f"seed{seed}" if multi and len(seeds) > 1 else bb_dir
      runs.append(run_one(config, run_dir, split, seed, bb_dir))
  if jax.process_index() != 0:
    return runs[0]
  summary = _pkd_report.pkd_report(runs, wd, config.to_dict())
  if multi:
    (wd / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
  print(_pkd_report.pkd_summary(runs, wd), flush=True)
  return summary if multi else runs[0]



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
import io
import json
import math
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
from kd_jax import models
from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods import _pkd_report
from kd_jax.methods import _wise
from kd_jax.train import mesh as mesh_lib
from kd_jax.train import weights

NETWORKS = ("residual", "mv", "iframe")
SHORT = {"residual": "R", "mv": "MV", "iframe": "I"}
FROM_SHORT = {v: k for k, v in SHORT.items()}
# Fixed by the method (spec 3.1): what each modality network takes.
INPUT = {
    "mv": dict(in_channels=2, input_norm=True),
    "residual": dict(in_channels=3, input_norm=True),
    "iframe": dict(in_channels=3, input_norm=False),
}
# Teacher of IC1..IC3 per curriculum phase; 'own' is the student network's own final classifier.
SCHEDULES = {
    "progressive": ("mv", "residual", "own"),  # the official code (default, spec 4.2)
    "mv_r_i": ("mv", "residual", "iframe"),  # the abstract's literal order (and TEAM-Net's)
    "iframe_only": ("iframe",),  # KD-iframe ablation
    "anti_curriculum": ("own", "residual", "mv"),  # anti-curriculum ablation
}
IC_TAPS = ("layer1", "layer2", "layer3")
SAMPLINGS = ("fused", "coviar")


# ----------------------------------------------------------------------------- curriculum


def boundary_epochs(num_epochs: int, boundaries: Sequence[float]) -> list[int]:
  """Epochs where the teacher changes: the official 50/300 and 100/300 scaled to the budget.

  Rounded half up (Python's ``round`` would send 0.5 to 0 and drop a phase on tiny budgets).
  """
  return [int(math.floor(f * num_epochs + 0.5)) for f in boundaries]


def teacher_phase(epoch: int, num_epochs: int, boundaries: Sequence[float]) -> int:
  """Index of the curriculum phase (into the schedule) at a 0-based epoch."""
  return int(sum(epoch >= b for b in boundary_epochs(num_epochs, boundaries)))


def teacher_phase_at(step: jax.Array, steps_per_epoch: int, num_epochs: int,
                     boundaries: Sequence[float]) -> jax.Array:
  """:func:`teacher_phase` of the epoch of a 0-based train ``step``, traceable: the IC loss gets
  the engine's step and picks its teacher from it."""
  epoch = step // steps_per_epoch
  return sum((epoch >= b).astype(jnp.int32) for b in boundary_epochs(num_epochs, boundaries)
             ) + jnp.zeros((), jnp.int32)


def curriculum(schedule: str, network: str, num_epochs: int,
               boundaries: Sequence[float]) -> list[str]:
  """The teacher network of ``network``'s ICs at every epoch (``own`` resolved)."""
  phases = resolve_schedule(schedule, network)
  return [phases[min(teacher_phase(e, num_epochs, boundaries), len(phases) - 1)]
          for e in range(num_epochs)]


def resolve_schedule(schedule: str, network: str) -> tuple[str, ...]:
  """The schedule's teachers for one network's ICs, ``own`` replaced by the network."""
  if schedule not in SCHEDULES:
    raise UserError(f"unknown ic.teacher_schedule {schedule!r}; choose one of "
                    f"{', '.join(SCHEDULES)}")
  return tuple(network if t == "own" else t for t in SCHEDULES[schedule])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(1, math.ceil(num_examples / batch_size))


# ----------------------------------------------------------------------------- config checks


def parse_order(order: Any) -> tuple[str, ...]:
  """``'R,MV,I'`` (or a sequence of short or long names) -> network names in cascade order."""
  items = [s.strip() for s in order.split(",")] if isinstance(order, str) else list(order)
  nets = tuple(FROM_SHORT.get(s, FROM_SHORT.get(str(s).upper(), s)) for s in items)
  if sorted(nets) != sorted(NETWORKS):
    raise UserError(f"wise.order must name the exits of the three networks R, MV and I once each "
                    f"(e.g. 'R,MV,I'), got {order!r}")
  return nets


def validate(config: ml_collections.ConfigDict) -> None:
  """Every config mistake this method can find before any data or compute is touched."""
  ic, wise, data = config.ic, config.wise, config.data
  resolve_schedule(ic.teacher_schedule, "mv")
  n_phases = len(SCHEDULES[ic.teacher_schedule])
  b = tuple(ic.boundaries)[:n_phases - 1]
  if len(b) != n_phases - 1 or any(not 0 < x < 1 for x in b) or list(b) != sorted(b):
    raise UserError(f"ic.boundaries must hold {n_phases - 1} increasing fractions in (0, 1) for "
                    f"schedule {ic.teacher_schedule!r}, got {tuple(ic.boundaries)}")
  if ic.bn_mode not in ("eval", "train"):
    raise UserError(f"ic.bn_mode must be 'eval' or 'train' (emulate the official train-mode "
                    f"drift), got {ic.bn_mode!r}")
  order = parse_order(wise.order)
  bad = [v for v in wise.variants if v not in _wise.VARIANTS]
  if bad:
    raise UserError(f"unknown wise.variants {bad}; choose from {', '.join(_wise.VARIANTS)}")
  if wise.fallback not in ("finals", "last_exit"):
    raise UserError(f"wise.fallback must be 'finals' or 'last_exit', got {wise.fallback!r}")
  if wise.ic_variant not in ("pkd", "ce"):
    raise UserError(f"wise.ic_variant must be 'pkd' or 'ce', got {wise.ic_variant!r}")
  if not wise.settings:
    raise UserError("wise.settings is empty; give segment counts (MV, R, I), e.g. ((1, 1, 1),)")
  for s in wise.settings:
    if len(tuple(s)) != 3 or any(int(x) < 1 for x in s):
      raise UserError(f"every wise.settings entry is three segment counts (MV, R, I) >= 1, got {s}")
  if any(not 0 <= float(t) <= 1 for t in wise.thresholds) or not wise.thresholds:
    raise UserError(f"wise.thresholds must be confidences in [0, 1], got {tuple(wise.thresholds)}")
  for name in (data.train_sampling, data.ic_train_sampling, data.eval_sampling,
               data.logits_sampling):
    if name not in SAMPLINGS:
      raise UserError(f"data.*_sampling must be 'fused' or 'coviar', got {name!r}")
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  from kd_jax.data.builders import common  # pylint: disable=g-import-not-at-top
  try:
    sources.parse_flip(data.flip)
  except common.DatasetError as e:
    raise UserError(str(e)) from None
  for net in NETWORKS:
    n = config.networks[net]
    if n.model not in ("resnet18", "resnet50"):
      raise UserError(f"networks.{net}.model must be resnet18 or resnet50, got {n.model!r}")
  if config.joint_networks:
    sizes = {config.networks[n].batch_size for n in NETWORKS}
    epochs = {config.networks[n].epochs for n in NETWORKS}
    if len(sizes) > 1 or len(epochs) > 1:
      raise UserError("joint_networks=True trains the three networks in one stage, so "
                      "networks.*.batch_size and networks.*.epochs must agree; set "
                      "joint_networks=False for per-network settings")
  del order


# ----------------------------------------------------------------------------- data


class Batches:
  """A checkpointable batch iterator built on first use, so that restoring a finished stage
  decodes nothing."""

  def __init__(self, factory: Callable[[], Any]):
    self._factory = factory
    self._it, self._pending = None, None

  def _inner(self):
    if self._it is None:
      self._it = self._factory()
      if self._pending is not None:
        self._it.set_state(self._pending)
    return self._it

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._inner())

  def get_state(self) -> bytes:
    # grain's checkpoint handler stores bytes; the inner state is bytes or a JSON-able
    # dict (grain's iterators).
    inner = self._pending if self._it is None else self._inner().get_state()
    enc = ({"bytes": inner.decode()} if isinstance(inner, bytes) else {"json": inner})
    return json.dumps({"inner": enc}).encode()

  def set_state(self, state: bytes) -> None:
    enc = json.loads(state)["inner"]
    inner = enc["bytes"].encode() if "bytes" in enc else enc["json"]
    if self._it is None:
      self._pending = inner
    else:
      self._it.set_state(inner)

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore."""


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
    self.streams = streams.open_streams(dcfg, "compressed", num_segments=int(dcfg.eval_segments))
    opened = self.streams.opened
    self.sources = {"train": opened.train, "test": opened.eval}
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
                                 per_host_batch_size=per_host, seed=seed)
    return self.streams.train(per_host, seed=seed, spec=spec)

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


# ----------------------------------------------------------------------------- models


@dataclasses.dataclass
class Network:
  """One modality network: its backbone and IC heads, and their configs."""

  name: str
  cfg: ml_collections.ConfigDict
  backbone: Any
  heads: Any
  model_kwargs: dict[str, Any]

  @property
  def short(self) -> str:
    return SHORT[self.name]


def build_networks(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Network]:
  out = {}
  for name in NETWORKS:
    cfg = config.networks[name]
    kwargs = _common.model_kwargs(cfg.model_kwargs)
    try:
      backbone = models.get(cfg.model, num_classes=num_classes, **INPUT[name], **kwargs)
      width = kwargs.get("width", 8 if kwargs.get("tiny") else 64)
      # The IC heads compute in the backbone's dtype (bfloat16 runs).
      heads = models.get("ic_heads", backbone=cfg.model, num_classes=num_classes, width=width,
                         dtype=kwargs.get("dtype") or "float32")
    except ValueError as e:
      raise UserError(f"networks.{name}: {e}") from None
    out[name] = Network(name, cfg, backbone, heads, kwargs)
  return out


def backbone_example(net: Network, crop: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1, crop, crop, INPUT[net.name]["in_channels"]), jnp.float32)


def tap_examples(net: Network, crop: int) -> dict[str, jax.ShapeDtypeStruct]:
  variables = jax.eval_shape(lambda x: net.backbone.init(jax.random.key(0), x, train=False),
                             backbone_example(net, crop))
  _, feats = jax.eval_shape(lambda v, x: net.backbone.apply(v, x, train=False), variables,
                            backbone_example(net, crop))
  return {t: jax.ShapeDtypeStruct(feats[t].shape, jnp.float32) for t in IC_TAPS}


def init_backbone(net: Network, crop: int, seed: int) -> tuple[dict, dict, str]:
  """(params, batch_stats, description): converted checkpoint if configured, else random."""
  variables = weights.host_init(net.backbone, backbone_example(net, crop), seed)
  path = net.cfg.init_checkpoint
  if not path:
    return variables["params"], variables.get("batch_stats", {}), "random"
  what = f"config.networks.{net.name}.init_checkpoint"
  conv = _common.load_converted(path, what)
  # The classifier is replaced (ImageNet 1000 / Kinetics 400 classes -> this dataset's).
  hint = f"convert a {net.cfg.model} of the configured width"
  params, stats = (weights.merge_pretrained(variables.get(c, {}), conv.variables.get(c, {}),
                                            skip=("fc",), what=what, hint=hint)
                   for c in ("params", "batch_stats"))
  return params, stats, f"converted checkpoint {path}"


def init_heads(net: Network, crop: int, seed: int) -> tuple[dict, dict]:
  taps = tap_examples(net, crop)
  v = weights.host_init(net.heads, taps, seed)
  return v["params"], v.get("batch_stats", {})


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
      eval_every=every * spe if every > 0 else 0)


def _ic_forward(net: Network, bb_params, bb_stats, ic_params, ic_stats, x, *, train_ic: bool,
                train_bb: bool):
  """Backbone (frozen) then heads; returns (final logits, IC logits [B,3,K], new stats)."""
  bb_vars = {"params": bb_params, "batch_stats": bb_stats}
  if train_bb:
    (final, feats), upd = net.backbone.apply(bb_vars, x, train=True, mutable=["batch_stats"])
    bb_stats = upd["batch_stats"]
  else:
    final, feats = net.backbone.apply(bb_vars, x, train=False)
  taps = {t: jax.lax.stop_gradient(feats[t]) for t in IC_TAPS}
  final = jax.lax.stop_gradient(final)
  ic_vars = {"params": ic_params, "batch_stats": ic_stats}
  if train_ic:
    (ic_logits, _), upd = net.heads.apply(ic_vars, taps, train=True, mutable=["batch_stats"])
    ic_stats = upd["batch_stats"]
  else:
    ic_logits, _ = net.heads.apply(ic_vars, taps, train=False)
  return final, ic_logits, bb_stats, ic_stats


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
  groups = ((r"fc/bias$", 1.0 if ic.train_fc_bias else 0.0), (".*", 1.0))
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
  eval_spec = data.spec(segments=config.data.eval_segments, sampling=config.data.eval_sampling,
                        modalities=list(nets))
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
      eval_every=every * spe if every > 0 else 0)


# ----------------------------------------------------------------------------- logits


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def _load_npz(path: epath.Path) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(path.read_bytes())) as f:
    return {k: f[k] for k in f.files}


def dump_logits(runner: train.Runner, config, data: Data, nets: dict[str, Network],
                backbones: dict[str, dict], ics: dict[str, dict[str, Any]],
                segments: Sequence[int]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
  """Video-level logits of all exits, per split and segment count; cached as npz in the workdir.

  Each file holds ``<net>/<ce|pkd>`` ``[N, 4, K]`` (IC1, IC2, IC3, the network's final
  classifier; the final always from the fine-tuned backbone with its own statistics) and
  ``label`` ``[N]``, in the source's record order.
  """
  out_dir = runner.workdir / "logits"
  batch = int(config.logits.batch_size)
  per_host = mesh_lib.per_host_batch_size(batch, runner.mesh)
  emulate = config.ic.bn_mode == "train"

  def forward(variables, batch):
    out = {"label": batch["label"], "index": batch["index"]}
    for m, net in nets.items():
      bb = variables["backbones"][m]
      final, _ = net.backbone.apply(bb, batch[m], train=False)
      for kind, v in variables["ics"][m].items():
        stats = v["model_state"]["backbone"] if emulate else bb["batch_stats"]
        _, ic_logits, _, _ = _ic_forward(net, bb["params"], stats, v["params"],
                                         v["model_state"]["ic"], batch[m],
                                         train_ic=False, train_bb=False)
        out[f"{m}/{kind}"] = jnp.concatenate([ic_logits, final[:, None]], axis=1)
    return out

  variables = {"backbones": backbones, "ics": ics}
  results = {}
  for split in ("train", "test"):
    for s in segments:
      path = out_dir / f"{split}_s{s}.npz"
      if path.exists():
        results[(split, s)] = _load_npz(path)
        continue
      spec = data.spec(segments=s, sampling=config.data.logits_sampling)
      t0 = time.monotonic()
      out = runner.predict(forward, variables, data.eval_batches(
          split, spec, global_batch=batch, per_host=per_host))
      idx = out.pop("index")
      parts = {}
      for k, v in out.items():  # in the source's record order
        parts[k] = np.zeros((data.size(split),) + v.shape[1:], v.dtype)
        parts[k][idx] = v
      logging.info("Logits %s, %d segment(s): %.1f s.", split, s, time.monotonic() - t0)
      if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{split}_s{s}.npz.tmp"
        tmp.write_bytes(_npz_bytes(parts))
        tmp.rename(path)
      results[(split, s)] = parts
  return results


# ----------------------------------------------------------------------------- WISE


def exit_costs(config, nets: dict[str, Network], num_classes: int) -> dict[str, list[float]]:
  """GMACs per segment up to each exit of each network, at the test input size."""
  from kd_jax.models import macs  # pylint: disable=g-import-not-at-top
  crop = int(config.data.crop_size)
  out = {}
  for m, net in nets.items():
    kw = dict(net.model_kwargs)
    values = macs.exit_macs(net.cfg.model, (1, crop, crop, INPUT[m]["in_channels"]),
                            num_classes=num_classes, ic_configs=net.heads.configs,
                            **INPUT[m], **kw)
    out[m] = [v / 1e9 for v in values]
  return out


def run_wise(config, logits, costs: dict[str, list[float]]) -> dict[str, Any]:
  """Fits and evaluates WISE for every segment setting; returns the ``wise`` results block."""
  w = config.wise
  order = parse_order(w.order)
  finals = [4 * i + 3 for i in range(len(order))]
  out = {}
  for setting in w.settings:
    seg = dict(zip(("mv", "residual", "iframe"), (int(x) for x in setting)))
    label = "/".join(str(seg[m]) for m in ("mv", "residual", "iframe"))

    def stack(split, variant):
      parts = [logits[(split, seg[m])][f"{m}/{variant}"] for m in order]
      return np.concatenate(parts, axis=1), logits[(split, seg[order[0]])]["label"]

    ztr, ytr = stack("train", w.ic_variant)
    zte, yte = stack("test", w.ic_variant)
    fitted = _wise.fit(ztr, ytr, finals, alpha=float(w.alpha), free_exits=int(w.free_exits),
                       fallback_alpha=float(w.fallback_alpha), lr=float(w.lr),
                       steps=int(w.steps), init=float(w.init))
    cost = _wise.cascade_costs([costs[m] for m in order], [seg[m] for m in order])
    variants = _wise.evaluate(zte, yte, fitted, finals, cost, list(w.thresholds),
                              list(w.variants), fallback=w.fallback)
    full = float(cost[-1])
    single = {f"{SHORT[m]}{k + 1}": float(np.mean(zte[:, 4 * i + k].argmax(-1) == yte))
              for i, m in enumerate(order) for k in range(4)}
    fused = zte[:, finals].astype(np.float64)
    out[label] = {
        "segments": {SHORT[m]: seg[m] for m in order},
        "order": [SHORT[m] for m in order],
        "weights": fitted.weights.tolist(),
        "fallback_weights": fitted.fallback.tolist(),
        "variants": variants,
        "exit_gmacs_per_video": cost.tolist(),
        "late_fusion": {"accuracy": float(np.mean(fused.sum(1).argmax(-1) == yte)),
                        "gmacs_per_video": full},
        "late_fusion_learned": {
            "accuracy": float(np.mean(np.einsum("nmc,m->nc", fused, fitted.fallback)
                                      .argmax(-1) == yte)),
            "gmacs_per_video": full},
        "single_exit_top1": single,
    }
  return out


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
      backbones[net.name] = {"params": res.state.params[net.name],
                             "batch_stats": res.state.model_state[net.name]}
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
        ics[net.name][kind] = {"params": res.state.params[net.name],
                               "model_state": res.state.model_state[net.name]}
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
  wise = run_wise(config, logits, costs)
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


# ----------------------------------------------------------------------------- config


def base_config() -> ml_collections.ConfigDict:
  """Every field of the method at the paper's settings (spec sections 6.1-6.3, 9, 10) on HMDB-51
  split 1: what every config starts from (``configs/pkd_hmdb.py`` writes its recipe out)."""
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = train.engine_config(log_every=50, checkpoint_every=1000, max_to_keep=2)
  config.method = "pkd"
  config.seed = 4711  # the official scripts' seed
  config.seeds = ()  # several IC-training seeds (official: 4711, 1, 736): mean and std
  config.splits = ()  # several splits of ucf101 / hmdb51 (1, 2, 3): mean and std
  config.joint_networks = False

  config.data = sources.data_config(
      name="hmdb51", config="split1", data_dir="~/tensorflow_datasets", num_workers=4,
      read_threads=1,
      train_segments=3, eval_segments=3,
      train_sampling="coviar",  # backbones: CoViAR's single-modality loader
      ic_train_sampling="fused",  # ICs: PKD's dataset_fuse.py (one GOP for all modalities)
      eval_sampling="coviar", logits_sampling="coviar",  # spec 6.3
      cache_views=0)  # 0: stream through grain; >0: decode that many views into memory

  def net(model, lr, batch, groups):
    return ml_collections.ConfigDict(dict(
        model=model, model_kwargs=ml_collections.ConfigDict(), init_checkpoint="", lr=lr,
        ic_lr=lr, batch_size=batch, epochs=510, decay_at=(150 / 510, 270 / 510, 390 / 510),
        lr_groups=groups))

  rgb_groups = ((r"^fc/", 1.0), (r".*", 0.01))
  cv_groups = ((r"^(conv1|bn1|data_bn)/", 0.1), (r"^fc/", 1.0), (r".*", 0.01))
  config.networks = ml_collections.ConfigDict(dict(
      residual=net("resnet18", 0.005, 80, cv_groups),
      mv=net("resnet18", 0.01, 80, cv_groups),
      iframe=net("resnet50", 0.0003, 40, rgb_groups),
  ))
  config.backbone = ml_collections.ConfigDict(dict(
      eps=1e-3, weight_decay=1e-4, no_decay=(r"(^|/)bias$",), eval_every_epochs=1))
  config.ic = ml_collections.ConfigDict(dict(
      teacher_schedule="progressive", boundaries=(50 / 300, 100 / 300),
      pkd_epochs=300, ce_epochs=150, pkd_decay_at=(150 / 300, 200 / 300, 250 / 300),
      ce_decay_at=(50 / 150, 100 / 150), batch_size=32, eps=1e-3, weight_decay=0.0,
      bn_mode="eval", train_fc_bias=True, temperature=1.0, train_crop_size=256,
      eval_every_epochs=1))
  config.logits = ml_collections.ConfigDict(dict(batch_size=32))
  config.wise = ml_collections.ConfigDict(dict(
      order="R,MV,I", lr=0.1, steps=500, init=1.0, alpha=0.1, free_exits=5, fallback_alpha=0.1,
      fallback="finals", ic_variant="pkd", variants=("wise", "no_scaling", "no_lateral"),
      thresholds=(1.0, 0.999999, 0.999995, 0.9999, 0.999, 0.995, 0.99, 0.9),
      settings=((3, 5, 3), (5, 5, 3), (1, 1, 1), (1, 2, 2))))
  return config


def smoke_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few real steps of every stage of a paper config, full-size networks at 112x112 crops.

  For checking a set-up (data, shapes, devices) before the real run; not a result.
  """
  for name in NETWORKS:
    n = config.networks[name]
    n.batch_size, n.epochs = 8, 1
  config.train.log_every = 1
  config.data.crop_size, config.data.resize_size = 112, 128
  config.ic.batch_size = 8
  config.ic.ce_epochs = 2
  config.ic.pkd_epochs = 6  # teachers: MV for epoch 0, R for epoch 1, own for epochs 2-5
  config.ic.train_crop_size = 0
  config.logits.batch_size = 8
  config.data.num_workers = 0
  config.wise.settings = ((1, 1, 1),)
  config.wise.steps = 50
  return config

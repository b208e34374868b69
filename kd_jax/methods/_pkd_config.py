"""PKD's config: the defaults every config starts from (:func:`base_config`), the smoke variant of
a paper config, and the checks that find every config mistake before any data or compute is
touched.

Part of the ``pkd`` method (:mod:`kd_jax.methods.pkd`, which re-exports ``base_config`` and
``smoke_variant`` for the config files).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _wise
from kd_jax.methods._pkd_curriculum import SCHEDULES
from kd_jax.methods._pkd_curriculum import resolve_schedule
from kd_jax.methods._pkd_networks import FROM_SHORT
from kd_jax.methods._pkd_networks import NETWORKS

SAMPLINGS = ("fused", "coviar")
# Which IC stages train the IC classifiers' bias: the official CE script lists it in its optimiser,
# the official PKD script leaves it out (it stays at its initial value).
FC_BIAS = ("both", "ce_only", "none")


def fc_bias_trained(train_fc_bias: str, kind: str) -> bool:
  """Whether the IC stage ``kind`` ('ce' or 'pkd') trains the IC classifiers' bias."""
  return train_fc_bias == "both" or (train_fc_bias == "ce_only" and kind == "ce")


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
  if ic.train_fc_bias not in FC_BIAS:
    raise UserError(f"ic.train_fc_bias must be one of {', '.join(FC_BIAS)} (which IC stages "
                    f"train the IC classifiers' bias), got {ic.train_fc_bias!r}")
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
  fit = tuple(wise.fit_segments)
  if fit and (len(fit) != 3 or any(int(x) < 1 for x in fit)):
    raise UserError(f"wise.fit_segments must be three segment counts (MV, R, I) >= 1 (fit the "
                    f"weights once, at those counts) or () (refit per setting), got {fit}")
  try:
    fallback_weights = _wise.parse_fallback_weights(wise.fallback_weights)
  except ValueError as e:
    raise UserError(str(e)) from None
  if fallback_weights != "learned" and wise.fallback != "finals":
    raise UserError(f"wise.fallback_weights={wise.fallback_weights!r} weights the final "
                    f"classifiers; it needs wise.fallback='finals', got {wise.fallback!r}")
  if fallback_weights == "official":
    splits = [int(s) for s in config.splits] or [_wise.dataset_split(data.config)]
    for split in splits:
      if (data.name, split) not in _wise.OFFICIAL_FALLBACK:
        which = data.config if split is None else f"split{split}"
        raise UserError(f"wise.fallback_weights='official' has presets for ucf101 and hmdb51 "
                        f"splits 1-3 only, not {data.name} {which}; use 'learned' or three "
                        f"weights 'w_mv,w_r,w_i'")
  if wise.cost_count not in _wise.COST_COUNTS:
    raise UserError(f"wise.cost_count must be one of {', '.join(_wise.COST_COUNTS)}, got "
                    f"{wise.cost_count!r}")
  if wise.softmax_dtype not in _wise.SOFTMAX_DTYPES:
    raise UserError(f"wise.softmax_dtype must be one of {', '.join(_wise.SOFTMAX_DTYPES)}, got "
                    f"{wise.softmax_dtype!r}")
  for name in (data.train_sampling, data.ic_train_sampling, data.eval_sampling,
               data.ic_eval_sampling, data.logits_sampling):
    if name not in SAMPLINGS:
      raise UserError(f"data.*_sampling must be 'fused' or 'coviar', got {name!r}")
  from kd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  from kd_jax.data.builders import common  # pylint: disable=g-import-not-at-top
  pipeline.loader_options(data)
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


def base_config() -> ml_collections.ConfigDict:
  """Every field of the method at the paper's settings (spec sections 6.1-6.3, 9, 10) on HMDB-51
  split 1: what every config starts from (``configs/pkd_hmdb.py`` writes its recipe out)."""
  from kd_jax.data import sources  # pylint: disable=g-import-not-at-top
  config = train.engine_config(log_every=50, checkpoint_every=1000, max_to_keep=2)
  config.method = "pkd"
  config.seed = 4711  # the official scripts' seed
  # config.seeds: IC-training seeds (official: 4711, 1, 736), sharing each split's backbones;
  # config.splits: ucf101 / hmdb51 splits (1, 2, 3). Reported as mean ± std.
  config.joint_networks = False

  config.data = sources.data_config(
      name="hmdb51", config="split1", data_dir="~/tensorflow_datasets", num_workers=4,
      read_threads=1,
      train_segments=3, eval_segments=3,
      train_sampling="coviar",  # backbones: CoViAR's single-modality loader
      ic_train_sampling="fused",  # ICs: PKD's dataset_fuse.py (one GOP for all modalities)
      eval_sampling="coviar", logits_sampling="coviar",  # spec 6.3
      ic_eval_sampling="coviar",  # the IC stages' evaluation (official: the fused loader)
      cache_views=0)  # 0: stream through grain; >0: decode that many views into memory

  def net(model, lr, batch, groups):
    return ml_collections.ConfigDict(dict(
        model=model, model_kwargs=ml_collections.ConfigDict(), init_checkpoint="", lr=lr,
        ic_lr=lr, batch_size=batch, epochs=510, decay_at=(150 / 510, 270 / 510, 390 / 510),
        lr_groups=groups,
        # Where IC1..IC3 start: 'random', or 'checkpoint': the IC heads of init_checkpoint (a
        # converted PKD IC checkpoint), for both the CE and the PKD IC stage.
        ic_init="random"))

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
      bn_mode="eval", train_fc_bias="both", temperature=1.0, train_crop_size=256,
      eval_every_epochs=1))
  config.logits = ml_collections.ConfigDict(dict(batch_size=32))
  # WISE switches (the paper configs set the official values where they differ):
  # fit_segments: () refits the weights per setting on the train logits at its segment counts;
  #   (MV, R, I) fits them once at those counts and reuses them (official: the counts of the
  #   official command line, UCF-101 (1, 1, 1), HMDB-51 (1, 2, 1)).
  # fallback_weights: 'learned' (fitted like the exits, spec 9 item 8) | 'official' (the
  #   per-split constants of the official scripts, _wise.OFFICIAL_FALLBACK) | 'w_mv,w_r,w_i'.
  # cost_count: 'per_video' (each video's exit cost once) | 'official' (the official counter's
  #   bug: correct exits at MV2-MV4 counted twice; for point-by-point comparison with the paper).
  # softmax_dtype: 'float64' | 'float32' (official: float32 torch tensors).
  config.wise = ml_collections.ConfigDict(dict(
      order="R,MV,I", lr=0.1, steps=500, init=1.0, alpha=0.1, free_exits=5, fallback_alpha=0.1,
      fallback="finals", ic_variant="pkd", variants=("wise", "no_scaling", "no_lateral"),
      thresholds=(1.0, 0.999999, 0.999995, 0.9999, 0.999, 0.995, 0.99, 0.9),
      settings=((3, 5, 3), (5, 5, 3), (1, 1, 1), (1, 2, 2)),
      fit_segments=(), fallback_weights="learned", cost_count="per_video",
      softmax_dtype="float64"))
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

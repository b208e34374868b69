"""Optimisers from a config: optax chains with PyTorch-style coupled L2, masks and per-group rates.

Config fields (``config.<stage>.optimizer``), with defaults:

  name            'sgd' | 'adam' | 'adamw'
  learning_rate   base rate
  momentum        0.9 (sgd); nesterov False
  b1, b2, eps     0.9, 0.999, 1e-8 (adam, adamw)
  weight_decay    0.0; for sgd/adam it is PyTorch's coupled L2 (added to the gradient), for adamw
                  the decoupled decay
  no_decay        regexes of parameter paths ('a/b/kernel') excluded from weight decay
  lr_multipliers  ((regex, factor), ...): the rate of matching parameters is scaled (the first
                  match wins; a factor of 0 freezes them)
  schedule        'constant' | 'step' | 'cosine'
  decay_at        for 'step': fractions of the stage's steps where the rate is multiplied by
                  decay_factor (0.1)
  warmup_steps    linear warm-up from 0 (0: none)
  grad_clip_norm  clip the global gradient norm first (0: no clipping)
"""

from __future__ import annotations

from collections.abc import Mapping
import re
from typing import Any, Callable

import jax
import ml_collections
import optax

from kd_jax.errors import UserError


def path_str(path: tuple[Any, ...]) -> str:
  """'a/b/kernel' for a pytree key path."""
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  lr = float(cfg.learning_rate)
  kind = cfg.get("schedule", "constant")
  warmup = int(cfg.get("warmup_steps", 0))
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "step":
    fractions = tuple(cfg.get("decay_at", ()))
    if any(not 0 < f < 1 for f in fractions):
      raise UserError(f"optimizer.decay_at must be fractions in (0, 1) of the stage, got {fractions}")
    factor = float(cfg.get("decay_factor", 0.1))
    main = optax.piecewise_constant_schedule(
        lr, {max(1, int(round(f * total_steps))) - warmup: factor for f in fractions})
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup))
  else:
    raise UserError(f"optimizer.schedule must be constant, step or cosine, got {kind!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _scale_by_path(factor_of: Callable[[str], float]) -> optax.GradientTransformation:
  """Multiplies each update by a factor chosen from its parameter path (per-group rates)."""

  def update(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(lambda p, u: u * factor_of(path_str(p)), updates)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation and its learning-rate schedule (for logging) for one stage."""
  schedule = make_schedule(cfg, total_steps)
  name = cfg.get("name", "sgd")
  wd = float(cfg.get("weight_decay", 0.0))
  no_decay = [re.compile(p) for p in cfg.get("no_decay", ())]

  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: not any(r.search(path_str(p)) for r in no_decay), params)

  parts = []
  clip = float(cfg.get("grad_clip_norm", 0.0))
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  if wd and name != "adamw":
    parts.append(optax.add_decayed_weights(wd, mask=decay_mask))  # PyTorch's coupled L2.
  if name == "sgd":
    momentum = float(cfg.get("momentum", 0.9))
    parts.append(optax.sgd(schedule, momentum=momentum or None,
                           nesterov=bool(cfg.get("nesterov", False))))
  elif name in ("adam", "adamw"):
    kwargs = dict(b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
                  eps=float(cfg.get("eps", 1e-8)))
    if name == "adam":
      parts.append(optax.adam(schedule, **kwargs))
    else:
      parts.append(optax.adamw(schedule, weight_decay=wd, mask=decay_mask, **kwargs))
  else:
    raise UserError(f"optimizer.name must be sgd, adam or adamw, got {name!r}")

  multipliers = cfg.get("lr_multipliers", None)
  if multipliers:
    rules = [(re.compile(k), float(v)) for k, v in multipliers]

    def factor_of(path: str) -> float:
      return next((v for r, v in rules if r.search(path)), 1.0)

    parts.append(_scale_by_path(factor_of))
  return optax.chain(*parts), schedule


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
  """A complete optimizer block with defaults, for config files to start from."""
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=0.1, momentum=0.9, nesterov=False, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, no_decay=(), schedule="constant", decay_at=(), decay_factor=0.1,
      warmup_steps=0, grad_clip_norm=0.0,
  ))
  cfg.lr_multipliers = ()
  cfg.update(overrides)
  return cfg


def count_params(params: Mapping[str, Any] | Any) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))

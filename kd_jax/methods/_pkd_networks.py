"""PKD's modality networks and their internal classifiers (ICs): what each network takes, building
the backbones and IC heads, their initialisation (converted checkpoints or random), the ICs' forward
pass on a frozen backbone, and the cost in GMACs up to each exit.

Part of the ``pkd`` method (:mod:`kd_jax.methods.pkd` builds the stages and ``run`` from these).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from kd_jax import models
from kd_jax.errors import UserError
from kd_jax.methods import _common
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


IC_TAPS = ("layer1", "layer2", "layer3")


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
    check_ic_init(name, cfg)
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


IC_INITS = ("random", "checkpoint")


def check_ic_init(net_name: str, cfg: ml_collections.ConfigDict) -> str:
  """``networks.<net>.ic_init``: 'random' (default) or 'checkpoint' (needs ``init_checkpoint``)."""
  value = cfg.get("ic_init", "random")
  if value not in IC_INITS:
    raise UserError(f"networks.{net_name}.ic_init must be one of {', '.join(IC_INITS)} (where the "
                    f"IC heads start from), got {value!r}")
  if value == "checkpoint" and not cfg.init_checkpoint:
    raise UserError(f"networks.{net_name}.ic_init='checkpoint' takes the IC heads of "
                    f"networks.{net_name}.init_checkpoint, which is empty; convert a PKD IC "
                    "checkpoint with python -m kd_jax.models.convert and name it there")
  return value


def _converted(net: Network) -> Any:
  what = f"config.networks.{net.name}.init_checkpoint"
  conv = _common.load_converted(net.cfg.init_checkpoint, what, net.cfg.model)
  if check_ic_init(net.name, net.cfg) == "checkpoint" and "ic_heads" not in conv.parts:
    raise UserError(f"{what} holds no IC heads, but networks.{net.name}.ic_init='checkpoint'; "
                    "convert one of PKD's IC checkpoints (module.IC{k}_features.* entries) or "
                    f"set networks.{net.name}.ic_init='random'")
  return conv


def init_backbone(net: Network, crop: int, seed: int) -> tuple[dict, dict, str]:
  """(params, batch_stats, description): converted checkpoint if configured, else random.

  ``networks.<net>.init_checkpoint`` is a converted checkpoint of the configured network: a
  CoViAR / torchvision backbone, or one of PKD's IC checkpoints, whose backbone is used here (its
  IC heads by :func:`init_heads` with ``ic_init='checkpoint'``). The classifier ``fc`` is kept when
  it has this dataset's classes and replaced otherwise (ImageNet 1000, Kinetics 400).
  """
  check_ic_init(net.name, net.cfg)
  variables = weights.host_init(net.backbone, backbone_example(net, crop), seed)
  if not net.cfg.init_checkpoint:
    return variables["params"], variables.get("batch_stats", {}), "random"
  path = net.cfg.init_checkpoint
  what = f"config.networks.{net.name}.init_checkpoint"
  conv = _converted(net)
  skip = weights.mismatched_heads(variables["params"], conv.variables.get("params", {}), ("fc",))
  hint = f"convert a {net.cfg.model} of the configured width"
  params, stats = (weights.merge_pretrained(variables.get(c, {}), conv.variables.get(c, {}),
                                            skip=skip, what=what, hint=hint)
                   for c in ("params", "batch_stats"))
  kept = "classifier replaced" if skip else "classifier kept"
  return params, stats, f"converted checkpoint {path} ({kept})"


def init_heads(net: Network, crop: int, seed: int) -> tuple[dict, dict]:
  """IC1..IC3 heads: random, or (``networks.<net>.ic_init='checkpoint'``) the IC heads of the
  converted PKD IC checkpoint in ``init_checkpoint``, with their BatchNorm statistics."""
  taps = tap_examples(net, crop)
  v = weights.host_init(net.heads, taps, seed)
  params, stats = v["params"], v.get("batch_stats", {})
  if check_ic_init(net.name, net.cfg) == "random":
    return params, stats
  heads = _converted(net).parts["ic_heads"].variables
  what = f"the IC heads of config.networks.{net.name}.init_checkpoint"
  hint = f"convert an IC checkpoint of a {net.cfg.model} of the configured width and classes"
  return (weights.merge_pretrained(params, heads.get("params", {}), what=what, hint=hint),
          weights.merge_pretrained(stats, heads.get("batch_stats", {}), what=what, hint=hint))


def _apply(module, variables: dict, x, *, train: bool):
  """``module.apply`` in train mode (returning the updated BatchNorm statistics) or eval mode."""
  if train:
    out, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, upd["batch_stats"]
  return module.apply(variables, x, train=False), variables["batch_stats"]


def _ic_forward(net: Network, bb_params, bb_stats, ic_params, ic_stats, x, *, train_ic: bool,
                train_bb: bool):
  """Backbone (frozen) then heads; returns (final logits, IC logits [B,3,K], new stats)."""
  (final, feats), bb_stats = _apply(net.backbone, {"params": bb_params, "batch_stats": bb_stats},
                                    x, train=train_bb)
  taps = {t: jax.lax.stop_gradient(feats[t]) for t in IC_TAPS}
  final = jax.lax.stop_gradient(final)
  (ic_logits, _), ic_stats = _apply(net.heads, {"params": ic_params, "batch_stats": ic_stats},
                                    taps, train=train_ic)
  return final, ic_logits, bb_stats, ic_stats


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

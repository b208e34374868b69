"""GenKD's networks and the pieces its stages are built from.

Part of the ``genkd`` method (:mod:`kd_jax.methods._genkd_stages` builds the stages from these,
:mod:`kd_jax.methods.genkd` runs them): the foreground feature, the classification loss and video
scores, the reconstruction-weight ramp, the pass/epoch of a step, the :func:`alternating`
optimiser, the networks (backbone, attention head, CVAE) with their initialisation, a stage's loss
settings and inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kd_jax import models
from kd_jax.errors import UserError
from kd_jax.train import weights

CLS_LOSSES = ("double_softmax", "mean_logits")
RENORM_SCOPES = ("global", "per_sample")
RAMPS = ("official", "linear")
GD_VARIANTS = ("v8", "teacher_prior")


# ------------------------------------------------------------------------------------------------
# The method's own pieces (pure functions; tested against hand-computed values).


def foreground(features: jax.Array, attention: jax.Array, *, scope: str = "global") -> jax.Array:
  """GenKD's foreground feature ``F_fg = (F * A) * sum(F) / sum(F * A)`` (genkd.md 4.2).

  Args:
    features: ``F [B, T, H, W, C]``.
    attention: ``A [B, T, C]``, broadcast over H x W.
    scope: ``'global'``: one scalar from sums over the whole (global) batch, as the official code;
      under ``jax.jit`` with a sharded batch the sums span every device and host. ``'per_sample'``:
      one scale per clip.

  Returns:
    ``F_fg`` with the shape and dtype of ``features``; the sums are taken in float32.
  """
  if scope not in RENORM_SCOPES:
    raise ValueError(f"scope must be one of {RENORM_SCOPES}, got {scope!r}")
  f = features.astype(jnp.float32)
  fa = f * attention.astype(jnp.float32)[:, :, None, None, :]
  axes = None if scope == "global" else tuple(range(1, f.ndim))
  keep = scope != "global"
  num = jnp.sum(f, axis=axes, keepdims=keep)
  den = jnp.sum(fa, axis=axes, keepdims=keep)
  # F * A is all zero where the sum is (A > 0, F >= 0), so any finite scale gives the same result.
  safe = jnp.where(den > 0, den, 1.0)
  return (fa * jnp.where(den > 0, num / safe, 1.0)).astype(features.dtype)


def batch_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """The mean of per-example ``values [B]``; with ``mask`` (1 real, 0 padding) over the real
  examples only: ``sum(values * mask) / sum(mask)`` (0 for a batch without real examples)."""
  if mask is None:
    return values.mean()
  m = mask.astype(jnp.float32)
  return jnp.sum(values.astype(jnp.float32) * m) / jnp.maximum(jnp.sum(m), 1.0)


def video_scores(logits: jax.Array, kind: str = "double_softmax") -> jax.Array:
  """Per-time-step logits ``[B, T', K]`` -> video scores ``[B, K]``.

  ``'double_softmax'``: ``sum_t softmax(l_t)`` (the official score, and what its CE is taken on);
  ``'mean_logits'``: ``mean_t l_t``.
  """
  if kind not in CLS_LOSSES:
    raise ValueError(f"kind must be one of {CLS_LOSSES}, got {kind!r}")
  logits = logits.astype(jnp.float32)
  if kind == "double_softmax":
    return jnp.sum(jax.nn.softmax(logits, axis=-1), axis=1)
  return jnp.mean(logits, axis=1)


def classification_loss(logits: jax.Array, labels: jax.Array, kind: str = "double_softmax"
                        ) -> jax.Array:
  """Per-example classification loss of GenKD (genkd.md 4.2), shape ``[B]``.

  ``'double_softmax'``: ``-log softmax(p)_y`` with ``p = sum_t softmax(l_t)``, cross-entropy on
  summed probabilities used as logits, exactly as the official code; ``'mean_logits'``: ordinary
  cross-entropy on the time-averaged logits.
  """
  return optax.softmax_cross_entropy_with_integer_labels(video_scores(logits, kind), labels)


def reconstruction_weight(epoch: jax.Array | int, *, kind: str = "official",
                          max_weight: float = 0.5, ramp_epochs: int = 20) -> jax.Array:
  """The ramp ``w(e) = max_weight * min(e, ramp_epochs) / ramp_epochs`` of ``L_rec`` (1-based e).

  ``'official'`` (KD scripts): ``ramp_epochs=20``; ``'linear'`` (GAF / dev phase 1): pass the
  run's number of epochs as ``ramp_epochs``. The two differ only in which ``ramp_epochs`` the
  caller passes; ``kind`` is checked so that configs cannot misspell it.
  """
  if kind not in RAMPS:
    raise ValueError(f"kind must be one of {RAMPS}, got {kind!r}")
  if ramp_epochs < 1:
    raise ValueError(f"ramp_epochs must be >= 1, got {ramp_epochs}")
  e = jnp.asarray(epoch, jnp.float32)
  return max_weight * jnp.minimum(e, float(ramp_epochs)) / float(ramp_epochs)


def pass_and_epoch(step: jax.Array, steps_per_pass: int) -> tuple[jax.Array, jax.Array]:
  """``(pass, epoch)`` of step ``step`` (0-based): pass 0 = A, 1 = B; epochs are 1-based."""
  return (step // steps_per_pass) % 2, step // (2 * steps_per_pass) + 1


def alternating(phases: Sequence[tuple[str, optax.GradientTransformation]],
                steps_per_phase: int) -> optax.GradientTransformationExtraArgs:
  """Optimisers that take turns: phase ``k`` of every ``steps_per_phase`` steps updates one part.

  Args:
    phases: ``(key, transformation)`` per phase, in order; ``key`` is a top-level key of the
      parameters, which must be exactly these keys.
    steps_per_phase: steps of each phase before the next one starts (cycling).

  Returns:
    An optax transformation whose ``update`` takes the engine's ``step`` (the steps taken before
    this one) as an extra argument. During phase ``k`` only ``phases[k]``'s part is updated by its
    transformation; every other part gets a zero update and its optimiser state stays as it was
    (no momentum, no weight decay, no step count), as when only one of several PyTorch optimisers
    is stepped.
  """
  if steps_per_phase < 1:
    raise ValueError(f"steps_per_phase must be >= 1, got {steps_per_phase}")
  keys = [k for k, _ in phases]
  if len(set(keys)) != len(keys):
    raise ValueError(f"each phase needs its own parameter key, got {keys}")
  txs = dict(phases)

  def init(params):
    if set(params) != set(keys):
      raise ValueError(f"parameters have keys {sorted(params)}, the phases {sorted(keys)}")
    return {k: txs[k].init(params[k]) for k in keys}

  def update(updates, state, params=None, *, step, **extra_args):
    del extra_args
    if params is None:
      params = {k: None for k in keys}

    def branch(active: str):
      def fn(args):
        upd, inner, prm = args
        new_upd, new_inner = {}, {}
        for k in keys:
          if k == active:
            new_upd[k], new_inner[k] = txs[k].update(upd[k], inner[k], prm[k])
          else:
            new_upd[k], new_inner[k] = jax.tree.map(jnp.zeros_like, upd[k]), inner[k]
        return new_upd, new_inner
      return fn

    phase = (step // steps_per_phase) % len(keys)
    return jax.lax.switch(phase, [branch(k) for k in keys], (updates, state, params))

  return optax.GradientTransformationExtraArgs(init, update)


# ------------------------------------------------------------------------------------------------
# Models.


@dataclasses.dataclass(frozen=True)
class Networks:
  """A backbone (I3D or Top-I3D) with its attention head and CVAE."""

  net: nn.Module
  head: nn.Module
  cvae: nn.Module
  tap: str


def build_networks(model: str, model_kwargs: Mapping[str, Any], attention_kwargs: Mapping[str, Any],
                   num_classes: int, tap: str = "Mixed_5c") -> Networks:
  """The three modules of one network; a ``UserError`` for arguments the models reject."""
  try:
    net = models.get(model, num_classes=num_classes, **dict(model_kwargs))
    head = models.get("generative_attention", part="attention", **dict(attention_kwargs))
    cvae_kwargs = {k: v for k, v in dict(attention_kwargs).items()
                   if k not in ("hidden_channels", "tiny")}
    cvae = models.get("generative_attention", part="cvae", **cvae_kwargs)
  except ValueError as e:
    raise UserError(f"cannot build the GenKD networks ({model}): {e}") from None
  return Networks(net, head, cvae, tap)


def feature_shape(nets: Networks, clip_shape: Sequence[int]) -> tuple[int, ...]:
  """Shape of the distilled tap for one clip of ``clip_shape`` ``(T, H, W, 3)``."""
  x = jax.ShapeDtypeStruct((1, *clip_shape), jnp.float32)
  try:
    v = jax.eval_shape(lambda x: nets.net.init(jax.random.key(0), x, train=False), x)
    feats = jax.eval_shape(
        lambda v, x: nets.net.apply(v, x, train=False, method="extract_features"), v, x)
  except ValueError as e:
    raise UserError(f"{type(nets.net).__name__} does not take clips {tuple(clip_shape)}: {e}"
                    ) from None
  if nets.tap not in feats:
    raise UserError(f"the network has no feature tap {nets.tap!r}; taps: {', '.join(feats)}")
  return tuple(feats[nets.tap].shape)


def load_pretrained(block: Any, where: str) -> dict[str, Any] | None:
  """Converted weights that a network block of the config names, or None.

  ``<where>.checkpoint``: a converted checkpoint of the block's model: pytorch-i3d's
  ``rgb_imagenet.pt`` (backbone), or GenKD's ``BDNet_teacher`` / ``BDNet_student`` (backbone and
  attention head, ``python -m kd_jax.models.convert``). ``<where>.cvae_checkpoint`` (optional
  field): a converted ``CVAE_teacher`` / ``CVAE_student``.

  Returns:
    ``{'params', 'batch_stats'}`` of the backbone (when ``checkpoint`` is set), plus
    ``'attention_head'`` and ``'cvae'`` parameters when the checkpoints hold them; numpy arrays.
    What :func:`init_variables` takes as ``pretrained``.
  """
  from kd_jax.methods import _common  # pylint: disable=g-import-not-at-top
  as_numpy = lambda tree: jax.tree.map(np.asarray, dict(tree))  # noqa: E731
  out: dict[str, Any] = {}
  if block.get("checkpoint"):
    conv = _common.load_converted(block.checkpoint, f"{where}.checkpoint", block.model)
    out.update(as_numpy(conv.variables))
    for part in ("attention_head", "cvae"):
      if part in conv.parts:
        out[part] = as_numpy(conv.parts[part].variables["params"])
  if block.get("cvae_checkpoint"):
    what = f"{where}.cvae_checkpoint"
    conv = _common.load_converted(block.cvae_checkpoint, what)
    if conv.model_name == "generative_attention" and conv.model_kwargs.get("part") == "cvae":
      out["cvae"] = as_numpy(conv.variables["params"])
    elif conv.model_name == "generative_attention" and conv.model_kwargs.get("part") == "both":
      out["cvae"] = as_numpy(conv.variables["params"]["cvae"])
    elif "cvae" in conv.parts:
      out["cvae"] = as_numpy(conv.parts["cvae"].variables["params"])
    else:
      raise UserError(f"{what} holds no CVAE (a converted {conv.model_name}); convert GenKD's "
                      "CVAE_teacher / CVAE_student state dict with python -m "
                      "kd_jax.models.convert")
  return out or None


def init_variables(nets: Networks, key: jax.Array, clip_shape: Sequence[int],
                   pretrained: Mapping[str, Any] | None = None, *,
                   where: str = "config.teacher") -> tuple[dict, dict]:
  """``(params, model_state)`` of a GenKD stage: ``params = {'net': {'backbone',
  'attention_head'}, 'cvae'}``, ``model_state = {'batch_stats'}``.

  ``pretrained`` (what :func:`load_pretrained` returns): its backbone variables replace every
  backbone weight of the same path (the classifier ``logits`` only when it has this dataset's
  classes: a Kinetics ``rgb_imagenet.pt`` gets a new one, a trained ``BDNet_teacher`` keeps its
  own); its ``'attention_head'`` and ``'cvae'``, when present, replace those modules entirely.
  ``where`` names the config block in errors.
  """
  k_net, k_head, k_cvae = jax.random.split(key, 3)
  x = jnp.zeros((1, *clip_shape), jnp.float32)
  v = nets.net.init(k_net, x, train=False)
  f = jnp.zeros(feature_shape(nets, clip_shape), jnp.float32)
  a = jnp.zeros((f.shape[0], f.shape[1], f.shape[-1]), jnp.float32)
  head = nets.head.init(k_head, f)["params"]
  cvae = nets.cvae.init({"params": k_cvae, "reparam": k_cvae}, f, a, mode="posterior")["params"]
  backbone, batch_stats = v["params"], v.get("batch_stats", {})
  pretrained = pretrained or {}
  ckpt = f"{where}.checkpoint"
  shape = f"[B, {', '.join(str(d) for d in f.shape[1:])}]"
  if "params" in pretrained:
    kw = dict(what=ckpt, hint="convert pytorch-i3d rgb_imagenet.pt or GenKD's BDNet_teacher / "
              "BDNet_student (python -m kd_jax.models.convert) with matching --kwargs")
    skip = weights.mismatched_heads(backbone, pretrained["params"], ("logits",))
    backbone = weights.merge_pretrained(backbone, pretrained["params"], skip=skip, **kw)
    batch_stats = weights.merge_pretrained(batch_stats, pretrained.get("batch_stats", {}), **kw)
  if "attention_head" in pretrained:
    head = weights.merge_pretrained(
        head, pretrained["attention_head"], what=f"the attention head of {ckpt}",
        hint=f"it must be made for the {nets.tap} features {shape} of this config's clips")
  if "cvae" in pretrained:
    cvae = weights.merge_pretrained(
        cvae, pretrained["cvae"], what=f"the CVAE of {where}.cvae_checkpoint",
        hint=f"it must be made for the {nets.tap} features {shape} of this config's clips")
  params = {"net": {"backbone": backbone, "attention_head": head}, "cvae": cvae}
  return params, {"batch_stats": batch_stats}


def pretrained_teacher(nets: Networks, clip_shape: Sequence[int], pretrained: Mapping[str, Any],
                       where: str = "config.teacher") -> dict[str, Any]:
  """The frozen phase-2 teacher taken from converted official weights, without phase 1.

  ``pretrained`` must hold the backbone and attention head (a converted ``BDNet_teacher`` in
  ``<where>.checkpoint``) and the CVAE (a converted ``CVAE_teacher`` in
  ``<where>.cvae_checkpoint``). Returns the layout of ``genkd.teacher_variables``:
  ``{'backbone': {'params', 'batch_stats'}, 'attention_head', 'cvae'}``.
  """
  needed = {"params": f"{where}.checkpoint (a converted BDNet_teacher)",
            "attention_head": f"an attention head in {where}.checkpoint (a BDNet_teacher)",
            "cvae": f"{where}.cvae_checkpoint (a converted CVAE_teacher)"}
  missing = [text for k, text in needed.items() if k not in (pretrained or {})]
  if missing:
    raise UserError(f"a teacher without phase 1 needs {'; '.join(missing)}")
  params, state = jax.jit(lambda k, p: init_variables(nets, k, clip_shape, p, where=where))(
      jax.random.key(0), dict(pretrained))
  return {"backbone": {"params": params["net"]["backbone"], "batch_stats": state["batch_stats"]},
          "attention_head": params["net"]["attention_head"], "cvae": params["cvae"]}


def load_converted_network(path: str, tap: str = "Mixed_5c"
                           ) -> tuple[Networks, dict[str, Any], dict[str, Any]]:
  """``(networks, variables, meta)`` of a converted ``BDNet_student`` / ``BDNet_teacher``.

  The counterpart of ``genkd.load_student`` for the official networks: classify with
  :func:`predict` (``predict(nets, variables['params'], variables['batch_stats'], clips)``). The
  networks' CVAE is built but has no weights (inference does not use it).
  """
  from kd_jax.methods import _common  # pylint: disable=g-import-not-at-top
  conv = _common.load_converted(path, path)
  if "attention_head" not in conv.parts:
    raise UserError(f"{path} holds no attention head (a converted {conv.model_name}); convert "
                    "GenKD's BDNet_student / BDNet_teacher state dict")
  kwargs = {k: v for k, v in conv.model_kwargs.items() if k != "num_classes"}
  head = conv.parts["attention_head"]
  att = {k: v for k, v in head.model_kwargs.items() if k != "part"}
  num_classes = int(conv.model_kwargs["num_classes"])
  nets = build_networks(conv.model_name, kwargs, att, num_classes, tap)
  variables = {"params": {"backbone": conv.variables["params"],
                          "attention_head": head.variables["params"]},
               "batch_stats": conv.variables.get("batch_stats", {})}
  meta = {"model": conv.model_name, "model_kwargs": kwargs, "attention_kwargs": att, "tap": tap,
          "num_classes": num_classes, "notes": list(conv.notes)}
  return nets, variables, meta


# ------------------------------------------------------------------------------------------------
# The two-pass step.


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The loss settings of one stage (static: they shape the compiled program)."""

  cls_loss: str = "double_softmax"
  renorm_scope: str = "global"
  eval_renorm_scope: str = "per_sample"
  kl_weight: float = 0.1
  rec_ramp: str = "official"
  rec_max_weight: float = 0.5
  rec_ramp_epochs: int = 20
  rec_detach_target: bool = False
  gd_variant: str = "v8"
  gd_weight: float = 0.01
  ad_weight: float = 0.1


def _features(nets: Networks, backbone, batch_stats, x, *, train: bool):
  """The tap and, in training, the updated BatchNorm statistics."""
  variables = {"params": backbone, "batch_stats": batch_stats}
  if train:
    feats, new = nets.net.apply(variables, x, train=True, mutable=["batch_stats"],
                                method="extract_features")
    return feats[nets.tap], new["batch_stats"]
  return nets.net.apply(variables, x, train=False, method="extract_features")[nets.tap], batch_stats


def time_logits(nets: Networks, net_params: Mapping[str, Any], batch_stats: Any, x: jax.Array, *,
                renorm_scope: str = "per_sample") -> tuple[jax.Array, jax.Array]:
  """Inference with the attention path: ``(per-time-step logits [B, T', K], attention [B, T, C])``.

  ``net_params = {'backbone', 'attention_head'}``: what ``student.ckpt`` holds.
  """
  f, _ = _features(nets, net_params["backbone"], batch_stats, x, train=False)
  a = nets.head.apply({"params": net_params["attention_head"]}, f)
  logits = nets.net.apply({"params": net_params["backbone"]}, foreground(f, a, scope=renorm_scope),
                          train=False, method="classify")
  return logits, a


def predict(nets: Networks, net_params: Mapping[str, Any], batch_stats: Any, x: jax.Array, *,
            cls_loss: str = "double_softmax", renorm_scope: str = "per_sample"
            ) -> tuple[jax.Array, jax.Array]:
  """Inference with the attention path: ``(video scores [B, K], attention [B, T, C])``.

  ``net_params = {'backbone', 'attention_head'}``: what ``student.ckpt`` holds.
  """
  logits, a = time_logits(nets, net_params, batch_stats, x, renorm_scope=renorm_scope)
  return video_scores(logits, cls_loss), a

"""GenKD's second stream: optical-flow networks trained with cross-entropy, and two-stream fusion.

Part of the ``genkd`` method. The official recognition test (``test_Top_I3D_att_fusion*.py``,
genkd.md 7.2) fuses the RGB Top-I3D student, classified through its attention path, with a flow
Top-I3D classified from plain ``Mixed_5c`` (no attention), per time step:
``softmax_k(l_rgb + l_flow)``, summed over the time steps, then a softmax again. The official flow
yamls have no teacher or CVAE paths, so the flow networks train with cross-entropy only (genkd.md 9
B3); the flow teacher is trained for completeness and for ``config.flow.kd``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _genkd_model

Array = jax.Array
FLOW_FLIPS = ("negate_x", "mirror")  # kd_jax.data.flow_pipeline's, without importing the video stack


def two_stream_scores(rgb_logits: Array, flow_logits: Array) -> Array:
  """The official fusion of per-time-step logits ``[B, T', K]`` of both streams -> ``[B, K]``.

  ``softmax(sum_t softmax(l_rgb_t + l_flow_t))``: the logits add before the first softmax (over
  classes), the probabilities sum over the time steps, and the sums go through a softmax again
  (it does not change the ranking; kept so that the scores are the official ones).
  """
  if rgb_logits.shape != flow_logits.shape:
    raise ValueError(f"RGB logits {rgb_logits.shape} and flow logits {flow_logits.shape} differ: "
                     "the two streams must see clips of the same length")
  z = rgb_logits.astype(jnp.float32) + flow_logits.astype(jnp.float32)
  return jax.nn.softmax(jnp.sum(jax.nn.softmax(z, axis=-1), axis=1), axis=-1)


def plain_logits(net: Any, variables: Mapping[str, Any], x: Array) -> Array:
  """Per-time-step logits ``[B, T', K]`` of a network classified from plain ``Mixed_5c``."""
  logits, _ = net.apply(variables, x, train=False)
  return logits


def make_loss_fn(net: Any, cls_loss: str) -> Callable[..., Any]:
  """Cross-entropy of the network's own (plain ``Mixed_5c``) logits; padding masked out."""

  def loss_fn(params, model_state, frozen, batch, rng, step):
    del frozen, step
    mask = batch.get("mask")
    (logits, _), new = net.apply({"params": params, "batch_stats": model_state["batch_stats"]},
                                 batch["video"], train=True, mask=mask, mutable=["batch_stats"],
                                 rngs={"dropout": rng})
    loss = _genkd_model.batch_mean(_genkd_model.classification_loss(logits, batch["label"], cls_loss), mask)
    return loss, ({"cls": loss}, {"batch_stats": new["batch_stats"]})

  return loss_fn


def make_eval_fn(net: Any, cls_loss: str) -> Callable[..., Any]:
  def eval_fn(params, model_state, frozen, batch):
    del frozen
    logits = plain_logits(net, {"params": params, "batch_stats": model_state["batch_stats"]},
                          batch["video"])
    return {"logits": _genkd_model.video_scores(logits, cls_loss)}

  return eval_fn


def collect(logits_fn: Callable[[Array], Array], batches: Iterable[Mapping[str, Any]],
            video_ids: Callable[[np.ndarray], list[str]]) -> dict[str, Any]:
  """Runs ``logits_fn`` over eval ``batches``: ``{'ids', 'labels', 'logits' [N, T', K]}`` of the
  real (unpadded) clips, in the order the batches give them."""
  fn = jax.jit(logits_fn)
  ids, labels, out = [], [], []
  for batch in batches:
    real = np.asarray(batch["mask"]) > 0
    logits = np.asarray(fn(batch["video"]))
    out.append(logits[real])
    labels.append(np.asarray(batch["label"])[real])
    ids.extend(video_ids(np.asarray(batch["index"])[real]))
  return {"ids": ids, "labels": np.concatenate(labels), "logits": np.concatenate(out)}


def accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Top-1 / top-5 (fractions, as the engine's metrics) of video scores ``[N, K]``."""
  order = np.argsort(-scores, axis=-1)
  top5 = np.any(order[:, :5] == labels[:, None], axis=-1)
  return {"top1": float(np.mean(order[:, 0] == labels)), "top5": float(np.mean(top5))}


def fuse(rgb: Mapping[str, Any], flow: Mapping[str, Any], cls_loss: str) -> dict[str, Any]:
  """RGB-only, flow-only and two-stream accuracy over the videos both streams have (matched by
  id; a video one stream's data skipped is left out of all three and counted)."""
  flow_at = {vid: i for i, vid in enumerate(flow["ids"])}
  both = [(i, flow_at[vid]) for i, vid in enumerate(rgb["ids"]) if vid in flow_at]
  if not both:
    raise UserError("the RGB and flow test sets share no video id: were both prepared "
                          "from the same split?")
  ri, fi = (np.asarray(x) for x in zip(*both))
  labels = rgb["labels"][ri]
  if np.any(flow["labels"][fi] != labels):
    raise UserError("the RGB and flow test sets give one video different labels")
  r, f = rgb["logits"][ri], flow["logits"][fi]
  video = lambda x: np.asarray(_genkd_model.video_scores(jnp.asarray(x), cls_loss))
  return {"rgb": accuracy(video(r), labels), "flow": accuracy(video(f), labels),
          "two_stream": accuracy(np.asarray(two_stream_scores(jnp.asarray(r), jnp.asarray(f))),
                                 labels),
          "videos": len(both), "left_out": len(rgb["ids"]) + len(flow["ids"]) - 2 * len(both)}


# ------------------------------------------------------------------------------------------------
# The flow stages and the two-stream evaluation of a run.


def flow_config() -> ml_collections.ConfigDict:
  """``config.flow`` at the official flow recipe (genkd.md 6: SGD lr 1e-2, momentum 0.9, weight
  decay 5e-4, batch 12, 200 epochs), off: a paper config turns it on."""
  def block(model: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        model=model, kwargs=ml_collections.ConfigDict(), epochs=200, batch_size=12,
        eval_every_epochs=5, checkpoint="",
        optimizer=train.optimizer_config(name="sgd", learning_rate=1e-2, momentum=0.9,
                                         weight_decay=5e-4)))

  teacher = block("i3d")
  teacher.checkpoint = ""  # a converted pytorch-i3d flow_imagenet.pt
  return ml_collections.ConfigDict(dict(
      enabled=False,
      # The flip of a flow clip: 'negate_x' mirrors the field and negates its x component (a
      # mirrored motion moves the other way); 'mirror' only mirrors, as the official loader.
      flip="negate_x",
      # The optical flow the flow dataset must hold: '' any (a dataset generated here: TV-L1, or
      # $KD_JAX_FLOW_METHOD), 'tvl1' (the official data's) or 'farneback' (fast, less accurate).
      method="",
      # The official flow networks train with cross-entropy only; True distils the flow student
      # from the flow teacher with GenKD as the RGB one (not the paper's setting).
      kd=False,
      teacher=teacher, student=block("top_i3d")))

"""GenKD's second stream: optical-flow networks trained with cross-entropy, and two-stream fusion.

Part of the ``genkd`` method. The official recognition test (``test_Top_I3D_att_fusion*.py``,
genkd.md 7.2) fuses the RGB Top-I3D student, classified through its attention path, with a flow
Top-I3D classified from plain ``Mixed_5c`` (no attention), per time step:
``softmax_k(l_rgb + l_flow)``, summed over the time steps, then a softmax again. The official flow
yamls have no teacher or CVAE paths, so the flow networks train with cross-entropy only (genkd.md 9
B3); the flow teacher is trained for completeness and for ``config.flow.kd``.

Here: the pure pieces (fusion, accuracy, the cross-entropy loss), then the flow stream of a run
(``config.flow``): its data, its stages (with :mod:`kd_jax.methods._genkd_stages` when
``config.flow.kd``) and the two-stream evaluation that :func:`kd_jax.methods.genkd.run_one`
reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import models
from kd_jax import train
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods import _genkd_model
from kd_jax.methods import _genkd_stages
from kd_jax.train import weights

if TYPE_CHECKING:  # Imported where used: the video stack is slow to import.
  from kd_jax.data import streams

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


def _flow_block(rgb: ml_collections.ConfigDict, flow: ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
  """A GenKD network block of the flow stream: the flow block's network and recipe with the RGB
  block's GenKD settings (CVAE optimiser, ramp), for 2-channel clips."""
  block = ml_collections.ConfigDict(rgb.to_dict())
  for key in ("model", "epochs", "batch_size", "eval_every_epochs", "optimizer", "checkpoint"):
    block[key] = flow[key]
  block.kwargs = ml_collections.ConfigDict(
      {**_common.model_kwargs(flow.kwargs), "in_channels": 2})
  block.cvae_checkpoint = ""
  return block


def _plain_stage(config: ml_collections.ConfigDict, name: str, block: ml_collections.ConfigDict,
                 data: streams.Streams, clip_shape: tuple[int, ...]
                 ) -> tuple[train.Stage, Any, int]:
  """A flow network trained with cross-entropy on its plain ``Mixed_5c`` logits (the official
  flow stream): ``(stage, network, steps per epoch)``."""
  where = f"config.flow.{name.removeprefix('flow_')}"
  try:
    net = models.get(block.model, num_classes=data.num_classes,
                     **{**_common.model_kwargs(block.kwargs), "in_channels": 2})
  except ValueError as e:
    raise UserError(f"cannot build {where} ({block.model}): {e}") from None
  pretrained = _genkd_model.load_pretrained(block, where) or {}
  batch, n = int(block.batch_size), len(data.opened.train)
  whole_epochs = config.pass_length == "epoch"
  per_epoch = -(-n // batch) if whole_epochs else n // batch
  if per_epoch < 1:
    raise UserError(f"{where}.batch_size={batch} exceeds the {n} training videos")
  num_steps = int(block.epochs) * per_epoch
  eval_every = per_epoch * max(1, int(block.eval_every_epochs))

  def init_fn(key):
    v = net.init(jax.random.fold_in(key, 3), jnp.zeros((1, *clip_shape), jnp.float32),
                 train=False)
    params, stats = v["params"], v.get("batch_stats", {})
    if "params" in pretrained:
      kw = dict(what=f"{where}.checkpoint", hint="convert pytorch-i3d flow_imagenet.pt or the "
                "official flow student (python -m kd_jax.models.convert)")
      skip = weights.mismatched_heads(params, pretrained["params"], ("logits",))
      params = weights.merge_pretrained(params, pretrained["params"], skip=skip, **kw)
      stats = weights.merge_pretrained(stats, pretrained.get("batch_stats", {}), **kw)
    return params, {"batch_stats": stats}

  lc = _genkd_stages.loss_config(config, teacher=False)
  stage = train.Stage(
      name=name, init_fn=init_fn, loss_fn=make_loss_fn(net, lc.cls_loss),
      optimizer=block.optimizer, num_steps=num_steps, global_batch_size=batch,
      train_data=lambda per_host: data.train(per_host, seed=config.seed,
                                             whole_epochs=whole_epochs),
      eval_fn=make_eval_fn(net, lc.cls_loss), eval_data=data.eval,
      val_data=_common.val_batches(data), eval_every=eval_every if eval_every < num_steps else 0)
  return stage, net, per_epoch


def _video_ids(source: Any) -> Callable[[np.ndarray], list[str]]:
  """``indices -> video ids`` of ``source``'s records, for :func:`collect`.

  A data source has no id-only access (a record is read and decoded whole, video bytes
  included), so each record is read at most once and only its id is kept: the ids are shared by
  every :func:`collect` over the same source, and a process reads only the records its eval
  batches hold.
  """
  known: list[str | None] = [None] * len(source)

  def ids(indices: np.ndarray) -> list[str]:
    out = []
    for i in indices:
      i = int(i)
      if known[i] is None:
        vid = source[i]["video_id"]
        known[i] = vid.decode() if isinstance(vid, bytes) else str(vid)
      out.append(known[i])
    return out

  return ids


def load_flow_data(config: ml_collections.ConfigDict) -> streams.Streams:
  """The optical flow of ``config.data``'s dataset (``<name>_flow``, same config and splits) as
  2-channel clips of the same length; generated on first use for ``synthetic_actions``."""
  from kd_jax.data import flow_pipeline  # pylint: disable=g-import-not-at-top
  return flow_pipeline.open_flow_streams(config.data, holdout=_common.holdout(config),
                                         clip_len=int(config.data.clip_len),
                                         flow_flip=config.flow.flip,
                                         flow_method=config.flow.method or None)


def _flow_stream(config: ml_collections.ConfigDict, runner: train.Runner,
                 setup: _genkd_stages.Setup, fdata: streams.Streams, results: dict[str, Any],
                 timings: dict[str, float], epoch_steps: dict[str, int]) -> dict[str, Any]:
  """Trains the flow networks (``config.flow``) and fuses them with the RGB networks; returns
  ``{model: {'rgb', 'flow', 'two_stream': {'top1', 'top5'}, 'videos', 'left_out'}}``."""
  t0 = time.monotonic()
  fc, lc = config.flow, _genkd_stages.loss_config(config, teacher=False)
  per_host = max(1, int(config.student.batch_size) // jax.process_count())
  if fc.kd:  # GenKD on flow too (not the paper's setting): phase 1 and phase 2 on flow clips
    fconfig = ml_collections.ConfigDict(config.to_dict())
    fconfig.teacher = _flow_block(config.teacher, fc.teacher)
    fconfig.student = _flow_block(config.student, fc.student)
    fsetup = _genkd_stages.make_setup(fconfig, fdata, channels=2)
    stage, n = _genkd_stages.teacher_stage(fsetup, "flow_teacher")
    results["flow_teacher"], epoch_steps["flow_teacher"] = runner.run(stage), 2 * n
    stage, n = _genkd_stages.student_stage(
        fsetup, "flow_student", _genkd_stages.teacher_variables(results["flow_teacher"].pick()),
        use_gd=bool(config.loss.use_gd), use_ad=bool(config.loss.use_ad))
    results["flow_student"], epoch_steps["flow_student"] = runner.run(stage), 2 * n

    def flow_logits(name):
      state, nets = results[name].pick(), (fsetup.teacher if name == "flow_teacher"
                                           else fsetup.student)
      return lambda x: _genkd_model.time_logits(
          nets, state.params["net"], state.model_state["batch_stats"], x,
          renorm_scope=lc.eval_renorm_scope)[0]
  else:
    nets = {}
    clip_shape = setup.clip_shape[:-1] + (2,)
    for name, block in (("flow_teacher", fc.teacher), ("flow_student", fc.student)):
      stage, nets[name], epoch_steps[name] = _plain_stage(config, name, block, fdata, clip_shape)
      results[name] = runner.run(stage)

    def flow_logits(name):
      state = results[name].pick()
      variables = {"params": state.params, "batch_stats": state.model_state["batch_stats"]}
      return lambda x: plain_logits(nets[name], variables, x)
  timings["flow"] = time.monotonic() - t0

  def rgb_logits(name):
    state = results[name].pick()
    nets = setup.teacher if name == "teacher" else setup.student
    return lambda x: _genkd_model.time_logits(nets, state.params["net"],
                                              state.model_state["batch_stats"], x,
                                              renorm_scope=lc.eval_renorm_scope)[0]

  rgb_ids, flow_ids = _video_ids(setup.data.opened.eval), _video_ids(fdata.opened.eval)
  flow = {name: collect(flow_logits(name), fdata.eval(per_host), flow_ids)
          for name in ("flow_teacher", "flow_student")}
  pairs = [("teacher", "flow_teacher"), ("student_baseline", "flow_student"),
           ("student_genkd", "flow_student")]
  return {rgb: fuse(collect(rgb_logits(rgb), setup.data.eval(per_host), rgb_ids), flow[f],
                    lc.cls_loss)
          for rgb, f in pairs if rgb in results}

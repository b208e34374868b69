"""Runs the stages of a method: train, evaluate, checkpoint, resume, report.

A run is a named sequence of :class:`Stage`\\ s. Each has its own state, optimiser, step budget and
evaluation, and its checkpoints in ``workdir/checkpoints/<stage>``. A stage whose last checkpoint
is at its final step is finished: a rerun restores its final state (later stages may need it) and
its results instead of training again. An unfinished stage resumes from its latest complete
checkpoint, data iterator included, and ends bit-identical to an uninterrupted run.

Model selection (``config.selection``): ``'last'`` hands the final state on; ``'best_test'`` and
``'best_val'`` also keep, per selected part of a stage (:attr:`Stage.select`), the weights of the
evaluation with the highest metric on the evaluation data or on held-out training data
(:attr:`Stage.val_data`), in ``workdir/checkpoints/<stage>-best[-<part>]``, and hand those on
(:meth:`StageResult.pick`). Kept weights are written before the regular checkpoint of the same
step, and a resume forgets those after its step, so an interrupted run keeps the same ones.

SIGTERM, or orbax's preemption sync point on a pod, saves a checkpoint and ends the run cleanly
(:class:`Preempted`); a non-finite loss or gradient stops it with the last good checkpoint kept
(:class:`NonFiniteError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Protocol

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from kd_jax.errors import Preempted
from kd_jax.errors import UserError
from kd_jax.train import checkpoint as checkpoint_lib
from kd_jax.train import compilation
from kd_jax.train import evaluation
from kd_jax.train import mesh as mesh_lib
from kd_jax.train import metrics as metrics_lib
from kd_jax.train import optim
from kd_jax.train import steps as steps_lib


SELECTIONS = ("last", "best_test", "best_val")


class NonFiniteError(UserError):
  """A train step produced a non-finite loss or gradient."""


class DataIterator(Protocol):
  """Host batches (this process's share, NumPy) with a checkpointable position.

  grain's ``DatasetIterator`` fits; so does any object with these methods (``get_state`` then
  returns ``bytes``).
  """

  def __next__(self) -> Any: ...

  def get_state(self) -> Any: ...

  def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass
class Stage:
  """One stage of a run.

  Attributes:
    name: used for the checkpoint directory, metric names and results.
    init_fn: ``init_fn(key) -> (params, model_state)``.
    loss_fn: see :mod:`kd_jax.train.steps`; a :class:`Switch` for alternating objectives.
    optimizer: the optimizer config block (:mod:`kd_jax.train.optim`), or a function
      ``optimizer(num_steps) -> (optax transformation, learning-rate schedule for logging)`` for
      what a config block cannot say (e.g. GenKD's two optimisers taking turns).
    num_steps: the step budget.
    global_batch_size: examples per step over all devices and hosts.
    train_data: ``train_data(per_host_batch_size) -> DataIterator``.
    frozen: read-only inputs of the loss (teachers); replicated, never checkpointed.
    eval_fn: ``eval_fn(params, model_state, frozen, batch) -> {'logits', ['teacher_logits']}``.
    eval_data: ``eval_data(per_host_batch_size) -> iterable of host batches`` with ``'label'`` and
      ``'mask'``; every process must yield the same number of batches.
    eval_every: evaluate every this many steps (0: only at the end).
    select: ``{part: metric}``: what model selection keeps (``{'': 'top1'}`` by default): one
      best state per part, by that key of the evaluation metrics (a part is a name for what the
      method takes from that state, e.g. one of several classifiers trained together).
    val_data: like ``eval_data``, on held-out training examples: evaluated beside it (metrics
      ``val/<name>``) when ``config.selection`` is ``'best_val'``, which needs it.
  """

  name: str
  init_fn: Callable[[jax.Array], tuple[Any, Any]]
  loss_fn: steps_lib.LossFn | steps_lib.Switch
  optimizer: ml_collections.ConfigDict | Callable[[int], tuple[Any, Any]]
  num_steps: int
  global_batch_size: int
  train_data: Callable[[int], DataIterator]
  frozen: Any = None
  eval_fn: steps_lib.EvalFn | None = None
  eval_data: Callable[[int], Iterable[Any]] | None = None
  eval_every: int = 0
  select: dict[str, str] | None = None
  val_data: Callable[[int], Iterable[Any]] | None = None


@dataclasses.dataclass
class Selected:
  """The weights model selection picked: from ``step``, where ``metric`` was ``value``."""

  step: int
  params: Any
  model_state: Any
  metric: str | None = None
  value: float | None = None


@dataclasses.dataclass
class StageResult:
  """What a stage leaves to the stages and reports after it.

  Attributes:
    state: the final train state.
    metrics: the final evaluation (``{}`` without one).
    history: every evaluation of the stage as ``(step, metrics)``, in step order; kept in the
      checkpoints, so a resumed or restored stage has all of it.
    selection: the run's ``config.selection``.
    kept: per part of :attr:`Stage.select`, the weights that selection picked (empty for
      ``'last'``).
  """

  state: steps_lib.TrainState
  metrics: dict[str, float]
  history: list[tuple[int, dict[str, float]]] = dataclasses.field(default_factory=list)
  selection: str = "last"
  kept: dict[str, Selected] = dataclasses.field(default_factory=dict)

  def pick(self, part: str = "") -> Selected:
    """The weights handed on for ``part``: the kept best ones, or the final state."""
    if part in self.kept:
      return self.kept[part]
    return Selected(int(jax.device_get(self.state.step)), self.state.params,
                    self.state.model_state)

  def picked_metrics(self, part: str = "") -> dict[str, float]:
    """The evaluation of the weights handed on for ``part`` (the final one for 'last')."""
    if part not in self.kept:
      return self.metrics
    return next(m for step, m in self.history if step == self.kept[part].step)

  def describe(self) -> dict[str, Any]:
    """What was picked, for results: ``{'selection', 'steps': {part: step}}``."""
    return {"selection": self.selection,
            "steps": {part: k.step for part, k in sorted(self.kept.items())}}

  def best(self, key: str = "top1") -> tuple[int, float] | None:
    """``(step, value)`` of the evaluation with the highest ``key`` (the earliest on ties)."""
    scored = [(step, m[key]) for step, m in self.history if key in m]
    return max(scored, key=lambda sv: (sv[1], -sv[0])) if scored else None


class _StopSignal:
  """Turns SIGTERM into a flag the loop checks between steps (only in the main thread)."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _scalars(tree: Any) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(tree).items()}


class Runner:
  """Runs stages in one workdir with the engine settings of ``config.train``.

  ``config.seed``; ``config.train``: ``log_every``, ``checkpoint_every``, ``max_to_keep``; ``config.mesh``:
  ``num_devices`` (-1: all).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | epath.Path):
    self.config = config
    # orbax refuses relative checkpoint paths; URLs (gs://...) are absolute already.
    self.workdir = epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))
    compilation.configure(config.get("train", {}))
    self.mesh = mesh_lib.make_mesh(config.get("mesh", {}).get("num_devices", -1))
    keep = str(config.get("train", {}).get("keep_finished", "all"))
    if keep not in ("weights", "all"):
      raise UserError(f"config.train.keep_finished must be 'weights' or 'all', got {keep!r}")
    self._compact = keep == "weights"
    self.selection = str(config.get("selection", "last"))
    if self.selection not in SELECTIONS:
      raise UserError(f"config.selection must be one of {', '.join(SELECTIONS)}, got "
                      f"{self.selection!r}")
    self.writer = metrics_lib.MetricWriter(self.workdir)
    self.results: dict[str, dict[str, float]] = {}
    self._predict_fns: dict[Callable[..., Any], Callable[..., Any]] = {}

  # -- One stage --------------------------------------------------------------------------

  def run(self, stage: Stage) -> StageResult:
    cfg = self.config.train
    per_host = mesh_lib.per_host_batch_size(stage.global_batch_size, self.mesh)
    if callable(stage.optimizer):
      tx, schedule = stage.optimizer(stage.num_steps)
    else:
      tx, schedule = optim.make_optimizer(stage.optimizer, stage.num_steps)
    accum = int(cfg.get("grad_accum_steps", 1))
    devices = self.mesh.devices.size
    if accum < 1 or stage.global_batch_size % (accum * devices):
      raise UserError(
          f"stage {stage.name}: its batch of {stage.global_batch_size} does not split into "
          f"config.train.grad_accum_steps={accum} micro-batches over {devices} device(s); use a "
          f"batch size that is a multiple of {max(accum, 1) * devices}")
    steps = steps_lib.build_steps(
        loss_fn=stage.loss_fn, tx=tx, schedule=schedule, mesh=self.mesh, init_fn=stage.init_fn,
        seed=self.config.seed, eval_fn=stage.eval_fn, grad_accum_steps=accum)
    frozen = jax.device_put(stage.frozen, mesh_lib.replicated(self.mesh))
    ckpt = checkpoint_lib.Checkpointer(
        self.workdir / "checkpoints" / stage.name, max_to_keep=cfg.max_to_keep,
        save_every=cfg.checkpoint_every)
    kept = self._kept(stage)
    final = (checkpoint_lib.Kept(self.workdir / "checkpoints" / f"{stage.name}-final")
             if self._compact else None)
    try:
      if final is not None and final.steps():
        return self._finished(stage, steps, ckpt, kept, final)
      result = self._run(stage, steps, frozen, ckpt, kept, per_host)
      if final is not None:
        self._compact_finished(stage, result, ckpt, final)
      return result
    finally:
      ckpt.close()
      for k in [k for _, k in kept.values()] + ([final] if final is not None else []):
        k.close()
      self.writer.flush()

  def _compact_finished(self, stage: Stage, result: StageResult, ckpt, final) -> None:
    """A finished stage keeps its final weights, evaluations and history only: no optimiser
    state, no data-iterator state, no earlier steps (``train.keep_finished='weights'``)."""
    step = int(jax.device_get(result.state.step))
    ckpt.wait()  # the final regular checkpoint is complete before anything is removed
    final.save(step, {"params": result.state.params, "model_state": result.state.model_state},
               {"stage": stage.name, "step": step, "eval": result.metrics,
                "evals": result.history})
    ckpt.delete_all()

  def _finished(self, stage: Stage, steps, ckpt, kept, final) -> StageResult:
    """A stage compacted by :meth:`_compact_finished`, restored."""
    step = final.steps()[-1]
    if step < stage.num_steps:
      raise UserError(
          f"stage {stage.name} finished at step {step} and kept its weights only "
          f"(train.keep_finished='weights'), so it cannot train on to {stage.num_steps} steps; use "
          "a new --workdir, or set train.keep_finished='all' from the start")
    ckpt.delete_all()  # leftovers of a compaction cut short
    weights = final.restore(step, {"params": steps.abstract_state.params,
                                   "model_state": steps.abstract_state.model_state})
    meta = final.meta(step)
    history = [(int(s), m) for s, m in meta.get("evals", [])]
    state = steps_lib.TrainState(step=np.asarray(step, np.int32), params=weights["params"],
                                 model_state=weights["model_state"], opt_state=None)
    logging.info("Stage %s finished earlier (step %d); restored its final weights.", stage.name,
                 step)
    self.results[stage.name] = meta.get("eval", {})
    return StageResult(state, meta.get("eval", {}), history, self.selection,
                       self._picked(stage, kept, history, steps))

  def _kept(self, stage: Stage) -> dict[str, tuple[str, checkpoint_lib.Kept]]:
    """``{part: (metric key, its Kept)}`` of the stage under the run's selection."""
    if self.selection == "last" or stage.eval_fn is None or stage.eval_data is None:
      return {}
    if self.selection == "best_val" and stage.val_data is None:
      raise UserError(f"config.selection='best_val' needs held-out training data, which stage "
                      f"{stage.name} does not have; set the method's held-out fraction (see the "
                      "config docstring) or choose selection 'best_test' or 'last'")
    prefix = "val/" if self.selection == "best_val" else ""
    out = {}
    for part, key in (stage.select or {"": "top1"}).items():
      name = stage.name + "-best" + (f"-{part}".replace("/", "_") if part else "")
      out[part] = (prefix + key, checkpoint_lib.Kept(self.workdir / "checkpoints" / name))
    return out

  def _keep(self, stage: Stage, kept, history, step: int, state, metrics) -> None:
    """Saves, per part, the weights of an evaluation that beats every earlier one."""
    for part, (key, k) in kept.items():
      if key not in metrics:
        raise UserError(f"stage {stage.name} selects part {part!r} by {key!r}, which its "
                        f"evaluation does not report (it has {', '.join(sorted(metrics))})")
      earlier = [m[key] for _, m in history if key in m]
      if not earlier or metrics[key] > max(earlier):
        k.save(step, {"params": state.params, "model_state": state.model_state},
               {"stage": stage.name, "part": part, "metric": key, "value": metrics[key]})

  def _picked(self, stage: Stage, kept, history, steps) -> dict[str, Selected]:
    abstract = {"params": steps.abstract_state.params,
                "model_state": steps.abstract_state.model_state}
    out = {}
    for part, (key, k) in kept.items():
      best = StageResult(None, {}, history).best(key)
      if best is None:
        continue
      weights = k.restore(best[0], abstract)
      out[part] = Selected(best[0], weights["params"], weights["model_state"], key, best[1])
      logging.info("Stage %s: selection %s keeps step %d%s (%s %.4f).", stage.name,
                   self.selection, best[0], f" for {part}" if part else "", key, best[1])
    return out

  def _run(self, stage, steps, frozen, ckpt, kept, per_host) -> StageResult:
    cfg = self.config.train
    data = stage.train_data(per_host)
    latest = ckpt.latest_step()
    if latest is not None:
      state, meta = ckpt.restore(latest, steps.abstract_state, data)
      history = [(int(step), m) for step, m in meta.get("evals", [])]
      for _, k in kept.values():
        k.drop_after(latest)
      if latest >= stage.num_steps:
        logging.info("Stage %s finished earlier (step %d); restored its final state.",
                     stage.name, latest)
        metrics = meta.get("eval", {})
        self.results[stage.name] = metrics
        return StageResult(state, metrics, history, self.selection,
                           self._picked(stage, kept, history, steps))
      logging.info("Stage %s resumes from step %d of %d.", stage.name, latest, stage.num_steps)
      self.writer.drop_after(stage.name, latest)
    else:
      history = []
      for _, k in kept.values():
        k.drop_after(0)
      state = steps.init(jax.random.key(self.config.seed))
      if jax.process_index() == 0:
        logging.info("Stage %s: %d trainable parameters, %d steps of %d clips.", stage.name,
                     optim.count_params(state.params), stage.num_steps, stage.global_batch_size)
    start = int(jax.device_get(state.step))

    progress = metrics_lib.Progress(stage.name, start, stage.num_steps, stage.global_batch_size)
    eval_metrics: dict[str, float] = {}
    pending = None  # (step, metrics) of the previous step, checked one step late.
    t0, first = time.monotonic(), True
    with _StopSignal() as stop:
      for step in range(start + 1, stage.num_steps + 1):
        batch = mesh_lib.host_to_global(next(data), self.mesh)
        state, step_metrics = steps.train(state, frozen, batch)
        if first:
          logging.info("Stage %s: first step (compilation included) took %.1f s.", stage.name,
                       time.monotonic() - t0)
          first = False
        if pending is not None:
          self._check_finite(stage.name, *pending)
        pending = (step, step_metrics)
        if step % cfg.log_every == 0 or step == stage.num_steps:
          scalars = _scalars(step_metrics)
          self._check_finite(stage.name, step, step_metrics)
          self.writer.write(stage.name, step, scalars)
          progress.update(step, scalars["loss"])
        else:
          progress.update(step)
        final = step == stage.num_steps
        if final:
          self._check_finite(stage.name, step, step_metrics)
        if final or (stage.eval_every and step % stage.eval_every == 0):
          eval_metrics = self._evaluate(stage, steps, state, frozen, per_host, step)
          if eval_metrics:
            self._keep(stage, kept, history, step, state, eval_metrics)
            history.append((step, eval_metrics))
        preempt = stop.received or ckpt.reached_preemption(step)
        meta = {"stage": stage.name, "step": step, "eval": eval_metrics, "evals": history}
        ckpt.save(step, state, data, meta, force=final or preempt)
        if preempt:
          ckpt.wait()
          progress.close()
          raise Preempted(f"stage {stage.name} stopped at step {step} with a checkpoint; run the "
                          "same command again to resume")
    progress.close()
    self.results[stage.name] = eval_metrics
    if eval_metrics:
      logging.info("Stage %s: %s", stage.name,
                   ", ".join(f"{k} {v:.4f}" for k, v in sorted(eval_metrics.items())))
    return StageResult(state, eval_metrics, history, self.selection,
                       self._picked(stage, kept, history, steps))

  def _check_finite(self, stage: str, step: int, step_metrics: dict[str, jax.Array]) -> None:
    if float(jax.device_get(step_metrics["finite"])) > 0:
      return
    terms = ", ".join(f"{k}={v:.4g}" for k, v in sorted(_scalars(step_metrics).items())
                      if k not in ("finite", "learning_rate"))
    raise NonFiniteError(
        f"non-finite loss or gradient in stage {stage} at step {step} ({terms}); the update was "
        "not applied and the last checkpoint is kept; lower the learning rate or check the inputs")

  def _evaluate(self, stage: Stage, steps, state, frozen, per_host: int, step: int
                ) -> dict[str, float]:
    if stage.eval_fn is None or stage.eval_data is None:
      return {}
    sources = [("", stage.eval_data)]
    if self.selection == "best_val" and stage.val_data is not None:
      sources.append(("val/", stage.val_data))
    metrics = {}
    for prefix, data in sources:
      sums = [steps.eval(state, frozen, mesh_lib.host_to_global(b, self.mesh))
              for b in data(per_host)]
      metrics.update({prefix + k: v for k, v in evaluation.finalize(sums).items()})
    self.writer.write(stage.name + "/eval", step, metrics)
    return metrics

  # -- Inference over a dataset ------------------------------------------------------------

  def predict(self, fn: Callable[[Any, Any], dict[str, jax.Array]], variables: Any,
              batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``fn(variables, batch)`` over a dataset: every output for every example, on every process.

    ``batches`` are this process's shares of the global batches with ``'mask'`` (0 on padding),
    as ``Stage.eval_data`` yields them; every process must yield the same number. ``fn`` returns
    per-example arrays ``[B, ...]``; they come back as NumPy arrays ``[N, ...]`` in the order of
    the global batches, padding dropped, the same on every process (the outputs are replicated
    before they leave the devices, so this is safe on many hosts). ``fn`` is compiled once per
    runner and batch shape.
    """
    compiled = self._predict_fns.get(fn)
    if compiled is None:
      def with_mask(variables, batch):
        return {**fn(variables, batch), "mask": batch["mask"]}
      compiled = compilation.jit(with_mask, in_shardings=(mesh_lib.replicated(self.mesh),
                                                          mesh_lib.batch_sharded(self.mesh)),
                                 out_shardings=mesh_lib.replicated(self.mesh))
      self._predict_fns[fn] = compiled
    variables = jax.device_put(variables, mesh_lib.replicated(self.mesh))
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
      out = jax.device_get(compiled(variables, mesh_lib.host_to_global(batch, self.mesh)))
      keep = np.asarray(out.pop("mask")) > 0
      for key, value in out.items():
        parts.setdefault(key, []).append(np.asarray(value)[keep])
    return {key: np.concatenate(values) for key, values in parts.items()}

  # -- The whole run ----------------------------------------------------------------------

  def write_results(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Writes ``workdir/results.json``: every stage's final metrics plus the method's own."""
    results = {"stages": self.results, **(extra or {})}
    if jax.process_index() == 0:
      (self.workdir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True)
                                                 + "\n")
    self.writer.close()
    return results

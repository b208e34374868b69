"""Compiled, sharded train and eval steps from a method's pure loss function.

A method states one step as

  loss_fn(params, model_state, frozen, batch, rng, step) -> (loss, (metrics, new_model_state))

where ``params`` are the trainable parameters, ``model_state`` the mutable collections (BatchNorm
statistics; ``{}`` if none), ``frozen`` everything that is read but never trained (teachers, cached
targets), ``batch`` the global batch, ``rng`` this step's key and ``step`` the number of steps
taken before this one (int32 scalar, 0 first): the one step counter, from which a method derives
its epoch, curriculum phase or loss ramp. ``metrics`` is a dict of scalars
(every loss term). The engine adds the gradient, update and parameter norms and the learning rate,
and jit-compiles the step once, with the state replicated, the batch split over ``'data'`` and the
old state donated.

A stage whose steps alternate between objectives (GenKD's two passes) gives a :class:`Switch`: the
branch is picked from the step inside the one compiled step, and each branch is differentiated on
its own. The optimiser's update also receives ``step`` (optax's extra arguments; transformations
that do not take it ignore it), so an optimiser that alternates needs no counter of its own.

Anything the loss reduces over the batch (a mean, a batch-wide renormalisation) is global across
devices and hosts: under ``jax.jit`` the batch is one global array.

**Gradient accumulation** (``build_steps(grad_accum_steps=k)``, or a loss wrapped in
:class:`Accumulate`, e.g. by :func:`accumulate`): the step splits the global batch of ``G``
examples into ``k`` micro-batches of ``G / k`` (micro-batch ``j`` holds rows ``j, j + k, ...``,
so when each device's share divides by ``k`` no example changes device) and runs the loss on them one after another in a
``lax.scan``: the model state (BatchNorm running statistics) is threaded through the
micro-batches in order, as ``k`` PyTorch forward passes would update it, and the device holds the
activations of one micro-batch only. The gradients, the loss and the metrics of the micro-batches
are combined with weights ``n_j / sum(n)``, where ``n_j`` is micro-batch ``j``'s count of real
examples (the sum of the batch's optional ``mask``, 1 real / 0 padding; ``G / k`` without one); a
micro-batch without real examples is skipped. For a loss that is a mean over its batch's (real)
examples this is exactly the gradient of the mean over the whole global batch; then one optimiser
update follows, so step counts, schedules and the data are those of ``k = 1``. Each micro-batch
draws from ``fold_in(rng, j)``. What couples the examples of a batch (BatchNorm batch statistics,
a batch-wide renormalisation) couples those of a micro-batch only, as with PyTorch's gradient
accumulation (e.g. GenKD's ``iter_size``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from kd_jax.train import compilation
from kd_jax.train import evaluation
from kd_jax.train import mesh as mesh_lib

LossFn = Callable[..., tuple[jax.Array, tuple[dict[str, jax.Array], Any]]]
# eval_fn(params, model_state, frozen, batch) -> {'logits': [B, C], optional 'teacher_logits', and
# optional 'logits/<name>' for more classifiers, whose metrics are reported as '<name>/top1', ...}.
EvalFn = Callable[[Any, Any, Any, Any], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Switch:
  """A loss that is one of ``branches`` at each step, picked by ``index(step)`` (int32).

  Every branch is a :data:`LossFn` with the same outputs (the same metric names). The step takes
  the gradient inside the chosen branch (``lax.switch`` of ``value_and_grad`` s), not of a
  ``lax.cond`` of the losses: the same program, but tracing the linearised ``cond`` of two 3D
  networks took 4x as long (measured on GenKD's tiny I3D: 6.6-8.1 s against 1.6-2.4 s).
  """

  index: Callable[[Any], jax.Array]
  branches: tuple[LossFn, ...]


@dataclasses.dataclass(frozen=True)
class Accumulate:
  """``loss_fn`` (a :data:`LossFn` or a :class:`Switch`) with its gradient accumulated over
  ``micro_batches`` micro-batches of each global batch (see the module docstring)."""

  loss_fn: Any
  micro_batches: int


def accumulate(loss_fn: LossFn | Switch | Accumulate, micro_batches: int
               ) -> LossFn | Switch | Accumulate:
  """``loss_fn`` accumulated over ``micro_batches`` (``config.train.grad_accum_steps``); itself
  when that is 1.

  Raises:
    ValueError: ``micro_batches < 1``, or ``loss_fn`` already accumulates over another count.
  """
  micro_batches = int(micro_batches)
  if micro_batches < 1:
    raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
  if isinstance(loss_fn, Accumulate):
    if micro_batches not in (1, loss_fn.micro_batches):
      raise ValueError(f"the loss already accumulates over {loss_fn.micro_batches} micro-batches, "
                       f"not {micro_batches}")
    return loss_fn
  return loss_fn if micro_batches == 1 else Accumulate(loss_fn, micro_batches)


def _micro_batches(batch: Any, k: int, mesh: Mesh) -> Any:
  """``[G, ...]`` leaves -> ``[k, G / k, ...]``; micro-batch ``j`` is rows ``j, j + k, ...``."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, mesh_lib.DATA_AXIS))

  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"a batch of {x.shape[0]} does not split into {k} micro-batches "
                       "(config.train.grad_accum_steps)")
    x = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
    if x.shape[1] % mesh.devices.size:  # a micro-batch that cannot spread over every device
      return x
    return jax.lax.with_sharding_constraint(x, sharding)

  return jax.tree.map(split, batch)


def _accumulated_value_and_grad(fn: LossFn, k: int, mesh: Mesh):
  """``value_and_grad``-like for :class:`Accumulate`: ``(params, model_state, frozen, batch, rng,
  step) -> ((loss, (metrics, model_state)), grads)`` over ``k`` micro-batches in a scan."""

  def run(params, model_state, frozen, batch, rng, step):
    micro = _micro_batches(batch, k, mesh)
    size = jax.tree.leaves(micro)[0].shape[1]
    if isinstance(batch, dict) and "mask" in batch:
      counts = jnp.sum(micro["mask"].astype(jnp.float32), axis=1)
    else:
      counts = jnp.full((k,), float(size), jnp.float32)
    weights = counts / jnp.maximum(jnp.sum(counts), 1.0)

    def one(ms, mb, j):
      def objective(p):
        return fn(p, ms, frozen, mb, jax.random.fold_in(rng, j), step)
      (l, (m, new_ms)), g = jax.value_and_grad(objective, has_aux=True)(params)
      f32 = lambda x: jnp.asarray(x).astype(jnp.float32)  # noqa: E731  (one type for both branches)
      return (f32(l), (jax.tree.map(f32, m), new_ms)), g

    like = jax.eval_shape(one, model_state, jax.tree.map(lambda x: x[0], micro), 0)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)  # noqa: E731
    (_, (metrics_like, _)), grads_like = like

    def body(carry, xs):
      ms, loss, metrics, grads = carry
      mb, j, count, w = xs

      def skip(ms):  # no real example: nothing to learn, statistics untouched
        return (jnp.zeros((), jnp.float32), (zeros(metrics_like), ms)), zeros(grads_like)

      (l, (m, new_ms)), g = jax.lax.cond(count > 0, lambda ms: one(ms, mb, j), skip, ms)
      add = lambda acc, x: acc + w * x  # noqa: E731
      return (new_ms, add(loss, l), jax.tree.map(add, metrics, m),
              jax.tree.map(lambda a, x: a + (w * x).astype(a.dtype), grads, g)), None

    init = (model_state, jnp.zeros((), jnp.float32),
            jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), metrics_like),
            zeros(grads_like))
    (model_state, loss, metrics, grads), _ = jax.lax.scan(
        body, init, (micro, jnp.arange(k), counts, weights))
    return (loss, (metrics, model_state)), grads

  return run


@flax.struct.dataclass
class TrainState:
  """Everything a stage trains and checkpoints. Never holds a teacher."""

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


@dataclasses.dataclass
class Steps:
  """The compiled functions of one stage."""

  init: Callable[[jax.Array], TrainState]
  train: Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, jax.Array]]]
  eval: Callable[[TrainState, Any, Any], dict[str, jax.Array]] | None
  state_sharding: Any
  abstract_state: Any  # ShapeDtypeStructs with shardings: the target of a checkpoint restore.


def _global_norm(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((), jnp.float32)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def build_steps(
    *,
    loss_fn: LossFn | Switch,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    init_fn: Callable[[jax.Array], tuple[Any, Any]],
    seed: int,
    eval_fn: EvalFn | None = None,
    grad_accum_steps: int = 1,
) -> Steps:
  """Builds a stage's sharded ``init``, ``train`` and ``eval`` functions.

  ``loss_fn`` is a :data:`LossFn` or a :class:`Switch` of them, or either wrapped in
  :class:`Accumulate`; ``grad_accum_steps`` (``config.train.grad_accum_steps``) > 1 accumulates
  the gradient over that many micro-batches of each global batch (module docstring).
  ``init_fn(key) -> (params, model_state)`` initialises the trainable parameters; ``init(key)``
  runs it under jit, so the state is created already replicated on every device.

  ``train`` never applies a non-finite update: the state stays as it was and ``metrics['finite']``
  is 0, so the loop can stop with the last good state intact.
  """
  repl = mesh_lib.replicated(mesh)
  data = mesh_lib.batch_sharded(mesh)
  tx = optax.with_extra_args_support(tx)
  loss_fn = accumulate(loss_fn, grad_accum_steps)
  micro_batches = 1
  if isinstance(loss_fn, Accumulate):
    loss_fn, micro_batches = loss_fn.loss_fn, loss_fn.micro_batches

  def init(key):
    params, model_state = init_fn(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params))

  state_shape = jax.eval_shape(init, jax.random.key(seed))
  state_sharding = jax.tree.map(lambda _: repl, state_shape)
  base_key = jax.random.key(seed)

  def train(state: TrainState, frozen, batch):
    rng = jax.random.fold_in(base_key, state.step)

    def value_and_grad(fn):
      if micro_batches > 1:
        accumulated = _accumulated_value_and_grad(fn, micro_batches, mesh)
        return lambda params: accumulated(params, state.model_state, frozen, batch, rng,
                                          state.step)

      def objective(params):
        return fn(params, state.model_state, frozen, batch, rng, state.step)
      return jax.value_and_grad(objective, has_aux=True)

    if isinstance(loss_fn, Switch):
      (loss, (metrics, model_state)), grads = jax.lax.switch(
          loss_fn.index(state.step), [value_and_grad(f) for f in loss_fn.branches], state.params)
    else:
      (loss, (metrics, model_state)), grads = value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, step=state.step)
    params = optax.apply_updates(state.params, updates)
    grad_norm = _global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = TrainState(step=state.step + 1, params=params, model_state=model_state,
                     opt_state=opt_state)
    # A non-finite step leaves everything but the step counter untouched.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new,
                       state.replace(step=state.step + 1))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, update_norm=_global_norm(updates),
                   param_norm=_global_norm(params), learning_rate=schedule(state.step),
                   finite=finite.astype(jnp.float32))
    return new, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  steps = Steps(
      # Initialisation runs once: on the CPU it compiles with the cheapest preset.
      init=compilation.jit(init, preset="fastest", out_shardings=state_sharding),
      train=compilation.jit(train, in_shardings=(state_sharding, repl, data),
                    out_shardings=(state_sharding, repl), donate_argnums=(0,)),
      eval=None,
      state_sharding=state_sharding,
      abstract_state=jax.tree.map(
          lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state_shape,
          state_sharding),
  )
  if eval_fn is not None:

    def evaluate(state: TrainState, frozen, batch):
      out = eval_fn(state.params, state.model_state, frozen, batch)
      sums = evaluation.classification_sums(
          out["logits"], batch["label"], batch.get("mask"), out.get("teacher_logits"))
      # Further classifiers of the same model (early exits): 'logits/<name>' -> '<name>/top1', ...
      for key, value in out.items():
        if key.startswith("logits/"):
          extra = evaluation.classification_sums(value, batch["label"], batch.get("mask"))
          sums.update({f"{key[len('logits/'):]}/{k}": v for k, v in extra.items() if k != "count"})
      return sums

    steps.eval = compilation.jit(evaluate, in_shardings=(state_sharding, repl, data), out_shardings=repl)
  return steps

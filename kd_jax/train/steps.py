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
) -> Steps:
  """Builds a stage's sharded ``init``, ``train`` and ``eval`` functions.

  ``loss_fn`` is a :data:`LossFn` or a :class:`Switch` of them.
  ``init_fn(key) -> (params, model_state)`` initialises the trainable parameters; ``init(key)``
  runs it under jit, so the state is created already replicated on every device.

  ``train`` never applies a non-finite update: the state stays as it was and ``metrics['finite']``
  is 0, so the loop can stop with the last good state intact.
  """
  repl = mesh_lib.replicated(mesh)
  data = mesh_lib.batch_sharded(mesh)
  tx = optax.with_extra_args_support(tx)

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

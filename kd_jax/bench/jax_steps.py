"""The benchmarked JAX training steps, built from the methods' own code.

Each step is what ``python -m kd_jax.main`` runs: the method's loss function and optimiser (from
its stage builders and its paper-setting config), compiled by the engine
(:func:`kd_jax.train.steps.build_steps`) on a one-device mesh, with the engine's metrics, its
non-finite guard and its donated state. :func:`build` returns that jitted step with a ready state,
the frozen inputs (teachers) and a batch of random inputs on the device, per *phase*: steps whose
work depends on a runtime value (GenKD's pass, PKD's curriculum phase) list the phases that are
timed, each with a way to pin that value for exact FLOP counts (XLA's cost analysis counts the
largest branch of a conditional; with the value a constant, XLA keeps only the taken branch).

bfloat16 means mixed precision: parameters, optimiser state and BatchNorm statistics stay float32,
the networks compute in bfloat16 (their ``dtype``), inputs are fed as bfloat16, the losses compute
in float32 (``kd_jax.losses`` and the methods cast).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import models
from kd_jax.bench import sizes
from kd_jax.models import i3d
from kd_jax.train import compilation
from kd_jax.train import mesh as mesh_lib
from kd_jax.train import optim
from kd_jax.train import steps as steps_lib

# GenKD's pass switches every `steps_per_pass` steps; this many keeps a timed run in one pass.
_GENKD_STEPS_PER_PASS = 1_000_000


@dataclasses.dataclass
class Phase:
  """One timed variant of a step.

  Attributes:
    name: '' for a step with one phase; 'A' / 'B' for GenKD's passes; 'teacher=own' for PKD's ICs.
    make_state: a fresh device state for this phase (the step donates its state).
    pin: ``pin(state, batch) -> (state, batch)`` with the phase's control values replaced by
      constants, for a compilation whose cost analysis counts only this phase; None when the step
      has no conditional work.
  """

  name: str
  make_state: Callable[[], Any]
  pin: Callable[[Any, Any], tuple[Any, Any]] | None = None


@dataclasses.dataclass
class BuiltStep:
  """A step ready to compile and time: ``train(state, frozen, batch) -> (state, metrics)``."""

  name: str
  batch_size: int
  dtype: str
  size: sizes.StepSize
  train: Any
  abstract_state: Any  # shapes, dtypes and shardings of the state, to compile without one
  frozen: Any
  batch: dict[str, jax.Array]
  phases: list[Phase]
  params: dict[str, int]


def _init_jit(fn: Callable[..., Any]) -> Callable[..., Any]:
  """``jax.jit`` for an initialiser: one program instead of hundreds of eager ops.

  It runs once, so on the CPU it compiles with the engine's ``fastest`` preset (several times
  faster to compile).
  """
  return compilation.jit(fn, preset="fastest")


def _count(tree: Any) -> int:
  return optim.count_params(tree)


def _compute_dtype(dtype: str) -> Any:
  if dtype not in sizes.DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(sizes.DTYPES)}")
  return jnp.bfloat16 if dtype == "bfloat16" else jnp.float32


def _resnet_width(size: sizes.StepSize) -> int:
  return max(1, int(round(64 * size.width)))


def _inputs(shapes: dict[str, tuple[int, ...]], batch: int, dtype: Any
            ) -> dict[str, jax.ShapeDtypeStruct]:
  """Inputs of ``batch`` clips, to be drawn on the device (:func:`_device_batch`)."""
  return {k: jax.ShapeDtypeStruct((batch, *s), dtype) for k, s in shapes.items()}


def _device_batch(inputs: dict[str, Any], sharding: Any, seed: int) -> dict[str, jax.Array]:
  """The batch on the device; ``ShapeDtypeStruct`` entries become standard-normal draws.

  The pipeline yields normalised clips, hence N(0, 1). They are drawn on the device, so that the
  large batches of a largest-batch search never pass through the host.
  """
  out = {}
  for i, (name, x) in enumerate(sorted(inputs.items())):
    if isinstance(x, jax.ShapeDtypeStruct):
      draw = _init_jit(lambda k, x=x: jax.random.normal(k, x.shape).astype(x.dtype))
      out[name] = jax.device_put(draw(jax.random.key(seed + i)), sharding)
    else:
      out[name] = jax.device_put(x, sharding)
  return out


class _NoData:
  """Stands in for a method's dataset where a stage builder asks for sizes and specs only."""

  def size(self, split: str) -> int:
    del split
    return 1_000_000

  def spec(self, **kwargs: Any) -> dict[str, Any]:
    return kwargs

  def val_batches(self, spec: Any, **kwargs: Any) -> None:
    del spec, kwargs  # no held-out videos: the benchmark selects nothing
    return None


@dataclasses.dataclass
class _Parts:
  """What a method contributes: the engine's inputs and the initial state, before compiling."""

  loss_fn: Any
  tx: Any
  schedule: Any
  init_fn: Callable[[jax.Array], tuple[Any, Any]]
  frozen: Any
  inputs: dict[str, Any]  # name -> ShapeDtypeStruct (drawn on the device) or array
  params: Callable[[Any, Any], dict[str, int]]  # (params, frozen) -> per-network counts
  # (name, prepare(state) -> state or None, pin or None): see Phase.
  phases: list[tuple[str, Callable[[Any], Any] | None, Callable[..., tuple[Any, Any]] | None]]
  # False where init_fn draws on the host (weights.host_init): a jit would only embed its arrays.
  jit_init: bool = True


# ------------------------------------------------------------------------------------------------
# PKD


def _pkd_networks(size: sizes.StepSize, dtype: Any):
  from kd_jax.methods import pkd  # pylint: disable=g-import-not-at-top
  config = pkd.base_config()
  config.data.crop_size = size.crop
  config.data.train_segments = size.frames
  config.ic.train_crop_size = 0
  for name in pkd.NETWORKS:
    config.networks[name].model_kwargs = ml_collections.ConfigDict(
        dict(width=_resnet_width(size), dtype=jnp.dtype(dtype).name))
  nets = pkd.build_networks(config, size.num_classes)
  for name, net in nets.items():
    # build_networks gives the heads the default float32; the benchmark runs them in `dtype`.
    heads = models.get("ic_heads", backbone=net.cfg.model, num_classes=size.num_classes,
                       width=_resnet_width(size), dtype=dtype)
    nets[name] = dataclasses.replace(net, heads=heads)
  return pkd, config, nets


def _pkd_backbone(name: str, size: sizes.StepSize, batch: int, dtype: Any) -> _Parts:
  pkd, config, nets = _pkd_networks(size, dtype)
  net = nets["residual" if name.endswith("r18") else "iframe"]
  params, stats, _ = pkd.init_backbone(net, size.crop, seed=0)
  stage = pkd.backbone_stage(config, _NoData(), [net], {net.name: (params, stats)}, name)
  tx, schedule = optim.make_optimizer(stage.optimizer, stage.num_steps)
  channels = pkd.INPUT[net.name]["in_channels"]
  inputs = _inputs({net.name: (size.frames, size.crop, size.crop, channels)}, batch, dtype)
  return _Parts(
      loss_fn=stage.loss_fn, tx=tx, schedule=schedule, init_fn=stage.init_fn, frozen=None,
      inputs=inputs, params=lambda p, f: {"student": _count(p[net.name]), "teacher": 0},
      phases=[("", None, None)], jit_init=False)


def _pkd_ic(name: str, size: sizes.StepSize, batch: int, dtype: Any) -> _Parts:
  pkd, config, nets = _pkd_networks(size, dtype)
  student = "residual" if name.endswith("r18") else "iframe"
  # The curriculum's last phase, the longest (epochs 100-300 of 300): the network's own final
  # classifier teaches, from the same forward pass. The program still holds every phase's branch
  # (a lax.switch), and the batch every modality they read, as in training.
  schedule = pkd.SCHEDULES[config.ic.teacher_schedule]
  phase = len(schedule) - 1
  backbones = {}
  for i, m in enumerate(pkd.NETWORKS):  # the ones the stage reads: its own and the teachers
    if m in pkd.resolve_schedule(config.ic.teacher_schedule, student):
      p, s, _ = pkd.init_backbone(nets[m], size.crop, seed=i)
      backbones[m] = {"params": p, "batch_stats": s}
  ic_init = {student: pkd.init_heads(nets[student], size.crop, seed=10)}
  stage = pkd.ic_stage(config, _NoData(), [nets[student]], nets, backbones, ic_init, "pkd", name)
  tx, lr_schedule = optim.make_optimizer(stage.optimizer, stage.num_steps)
  shapes = {m: (size.frames, size.crop, size.crop, pkd.INPUT[m]["in_channels"])
            for m in stage.frozen}
  inputs = _inputs(shapes, batch, dtype)
  # The step reaches the loss: the curriculum phase follows from it (0 for a one-phase schedule).
  epochs = int(config.ic.pkd_epochs)
  boundaries = pkd.boundary_epochs(epochs, tuple(config.ic.boundaries)[:phase])
  step = boundaries[-1] * (stage.num_steps // epochs) if boundaries else 0

  def params(p, frozen):
    return {"student": _count(frozen[student]["params"]), "teacher": 0,
            "heads": _count(p[student])}

  return _Parts(loss_fn=stage.loss_fn, tx=tx, schedule=lr_schedule, init_fn=stage.init_fn,
                frozen=stage.frozen, inputs=inputs, params=params,
                phases=[(f"teacher={schedule[phase]}", _at_step(step), _pinned(step))],
                jit_init=False)


def _at_step(step: int) -> Callable[[Any], Any]:
  """Sets the train state's step, the one counter a method's phase (curriculum, pass) follows."""
  return lambda state: state.replace(step=jnp.asarray(step, jnp.int32))


def _pinned(step: int) -> Callable[[Any, Any], tuple[Any, Any]]:
  return lambda state, b: (_at_step(step)(state), b)


# ------------------------------------------------------------------------------------------------
# GenKD


def _genkd(size: sizes.StepSize, batch: int, dtype: Any) -> _Parts:
  from kd_jax.methods import genkd  # pylint: disable=g-import-not-at-top
  config = genkd.base_config()
  hidden = i3d.scale_channels(512, size.width)
  attention = {"hidden_channels": hidden, "dtype": dtype}
  # head_pool=None pools the whole Mixed_5c map in space: (2, 7, 7) at 224, and valid at any crop.
  kw = {"width": float(size.width), "head_pool": None, "dtype": dtype}
  student = genkd.build_networks(config.student.model, kw, attention, size.num_classes,
                                 config.attention.tap)
  teacher = genkd.build_networks(config.teacher.model, kw, attention, size.num_classes,
                                 config.attention.tap)
  clip = (size.frames, size.crop, size.crop, 3)
  lc = genkd.loss_config(config, teacher=False)
  loss_fn = genkd.make_loss_fn(student, lc, _GENKD_STEPS_PER_PASS, teacher)
  tx, schedule = genkd.make_optimizer(config.student.optimizer, config.student.cvae_optimizer,
                                      _GENKD_STEPS_PER_PASS)(4 * _GENKD_STEPS_PER_PASS)
  t_params, t_state = _init_jit(lambda k: genkd.init_variables(teacher, k, clip))(
      jax.random.key(1))
  t_vars = {"backbone": {"params": t_params["net"]["backbone"],
                         "batch_stats": t_state["batch_stats"]},
            "attention_head": t_params["net"]["attention_head"], "cvae": t_params["cvae"]}
  frozen = {"teacher": t_vars, "use_gd": np.float32(1), "use_ad": np.float32(1)}
  inputs = _inputs({"video": clip}, batch, dtype)

  def init_fn(key):
    return genkd.init_variables(student, jax.random.fold_in(key, 2), clip)

  def params(p, f):
    t = f["teacher"]
    return {"student": _count(p["net"]["backbone"]),
            "attention": _count(p["net"]["attention_head"]), "cvae": _count(p["cvae"]),
            "teacher": _count([t["backbone"]["params"], t["attention_head"], t["cvae"]])}

  first_b = _GENKD_STEPS_PER_PASS * (genkd.PASS_B - genkd.PASS_A)
  return _Parts(loss_fn=loss_fn, tx=tx, schedule=schedule, init_fn=init_fn, frozen=frozen,
                inputs=inputs, params=params,
                phases=[("A", _at_step(0), _pinned(0)), ("B", _at_step(first_b), _pinned(first_b))])


# ------------------------------------------------------------------------------------------------
# Spectral


class _Classes:
  def __init__(self, num_classes: int):
    self.num_classes = num_classes


def _spectral(size: sizes.StepSize, batch: int, dtype: Any) -> _Parts:
  from kd_jax.methods import spectral  # pylint: disable=g-import-not-at-top
  config = spectral.base_config()
  config = spectral.tsm_recipe(config, num_train=1_000_000, epochs=50,
                               batch=sizes.PAPER_BATCH["spectral_r18_r50"], lr=0.01,
                               weight_decay=5e-4)
  config.student.model, config.teacher.model = "tsm_resnet18", "tsm_resnet50"
  for block in (config.student, config.teacher):
    block.kwargs.width = _resnet_width(size)
    block.kwargs.dtype = jnp.dtype(dtype).name
  config.data.num_segments, config.data.crop_size = size.frames, size.crop
  setup = spectral.make_setup(config, _Classes(size.num_classes))
  entry = spectral.parse_entry("all", config.collab)
  loss_fn = spectral.student_objective(setup, need_teacher=True, mutual=False)
  opt = ml_collections.ConfigDict(config.student.optimizer.to_dict())
  opt.no_decay = tuple(opt.no_decay) + ("^log_vars",)  # as the method's student stages
  tx, schedule = optim.make_optimizer(opt, config.student.num_steps)
  t_params, t_state = _init_jit(lambda k: spectral._init_model(  # pylint: disable=protected-access
      setup.teacher, k, setup.example))(jax.random.key(1))
  frozen = {"switch": spectral.switches(entry, config), "teacher": {"params": t_params, **t_state}}
  init_fn = spectral._student_init_fn(setup, None)  # pylint: disable=protected-access
  inputs = _inputs({"video": (size.frames, size.crop, size.crop, 3)}, batch, dtype)

  def params(p, f):
    return {"student": _count(p["student"]), "teacher": _count(f["teacher"]["params"]),
            "adapter": _count(p["adapters"])}

  return _Parts(loss_fn=loss_fn, tx=tx, schedule=schedule, init_fn=init_fn, frozen=frozen,
                inputs=inputs, params=params, phases=[("", None, None)])


# ------------------------------------------------------------------------------------------------


def _parts(name: str, size: sizes.StepSize, batch: int, dtype: Any) -> _Parts:
  if name in ("pkd_backbone_r18", "pkd_backbone_r50"):
    return _pkd_backbone(name, size, batch, dtype)
  if name in ("pkd_ic_r18", "pkd_ic_r50"):
    return _pkd_ic(name, size, batch, dtype)
  if name == "genkd_phase2":
    return _genkd(size, batch, dtype)
  if name == "spectral_r18_r50":
    return _spectral(size, batch, dtype)
  raise ValueError(f"unknown step {name!r}; choose from {', '.join(sizes.STEPS)}")


def build(name: str, *, batch: int, dtype: str, size: sizes.StepSize, seed: int = 0) -> BuiltStep:
  """The jitted engine step of ``name`` with its state, teachers and a random batch on device 0.

  Args:
    name: one of :data:`kd_jax.bench.sizes.STEPS`.
    batch: clips per step.
    dtype: 'float32' or 'bfloat16' (mixed precision, see the module docstring).
    size: input and network size.
    seed: of the step's own random stream (dropout, CVAE noise).

  Raises:
    ValueError: an unknown step or dtype, a batch < 1, or a size the networks reject.
  """
  compute = _compute_dtype(dtype)
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ValueError(f"batch must be a positive int, got {batch!r}")
  parts = _parts(name, size, batch, compute)
  labels = np.arange(batch, dtype=np.int32) % size.num_classes
  mesh = mesh_lib.make_mesh(1)
  steps = steps_lib.build_steps(loss_fn=parts.loss_fn, tx=parts.tx, schedule=parts.schedule,
                                mesh=mesh, init_fn=parts.init_fn, seed=seed)
  init = _init_jit(parts.init_fn) if parts.jit_init else parts.init_fn
  params, model_state = init(jax.random.key(seed))
  host_state = jax.device_get(steps_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=parts.tx.init(params)))
  frozen = jax.device_put(parts.frozen, mesh_lib.replicated(mesh))
  device_batch = _device_batch(dict(parts.inputs, label=labels), mesh_lib.batch_sharded(mesh),
                               seed + 1)

  def state_maker(prepare):
    def make():
      # A fresh copy on every call: the step donates (deletes) the state it is given.
      state = jax.device_put(host_state, steps.state_sharding)
      return prepare(state) if prepare is not None else state
    return make

  phases = [Phase(n, state_maker(prep), pin) for n, prep, pin in parts.phases]
  abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          host_state, steps.state_sharding)
  return BuiltStep(name=name, batch_size=batch, dtype=dtype, size=size, train=steps.train,
                   abstract_state=abstract, frozen=frozen, batch=device_batch, phases=phases,
                   params=parts.params(host_state.params, parts.frozen))


def pinned_step(built: BuiltStep, phase: Phase) -> Callable[..., Any]:
  """A jitted ``(state, frozen, batch)`` step with ``phase``'s control values as constants."""
  if phase.pin is None:
    return built.train
  # The engine's Python function, not its jit: a jit nested in another takes no compiler options.
  train = getattr(built.train, "__wrapped__", built.train)

  def step(state, frozen, batch):
    state, batch = phase.pin(state, batch)
    return train(state, frozen, batch)

  # Compiled only for its cost analysis, which is taken on HLO and does not depend on the CPU
  # preset's (LLVM-level) settings; `fastest` makes the CPU compile several times faster.
  return compilation.jit(step, preset="fastest")


def param_count(name: str, size: sizes.StepSize) -> dict[str, int]:
  """Learnable parameters per network of step ``name`` (keys: ``sizes.NETWORKS[name]``)."""
  parts = _parts(name, size, 1, jnp.float32)
  params, _ = jax.eval_shape(parts.init_fn, jax.random.key(0))
  return parts.params(params, parts.frozen)

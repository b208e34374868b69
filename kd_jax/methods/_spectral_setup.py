"""The models of spectral distillation and what the stages share: building and initialising the
teacher, the student and the spectrum adapters, converted weights, and the :class:`Setup` that
checks, before any training, that taps and kernels pair.

Part of the ``spectral`` method (:mod:`kd_jax.methods.spectral`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import dataclasses
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import models
from kd_jax.errors import UserError
from kd_jax.methods import _common
from kd_jax.methods._spectral_terms import SpectrumAdapter
from kd_jax.methods._spectral_terms import StagePair
from kd_jax.methods._spectral_terms import pair_stage_kernels
from kd_jax.train import weights as weights_lib

if TYPE_CHECKING:  # Imported where used: the video stack is slow to import.
  from kd_jax.data import streams

# ``eval_batches(per_host)``: every evaluation clip once, padded (``Stage.eval_data``).
EvalBatches = Callable[[int], Iterable[dict[str, np.ndarray]]]


# ------------------------------------------------------------------------------------------------
# Models and initialisation.


def _fast_key(key: jax.Array) -> jax.Array:
  """An ``rbg`` key derived from ``key``.

  ``model.init`` with it compiles several times faster on CPU than with threefry (the random
  initialisers dominate the init program).
  """
  data = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)[:2]
  return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]),
                                  impl="rbg")


def build_model(mcfg: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  try:
    return models.get(mcfg.model, num_classes=num_classes, **_common.model_kwargs(mcfg.kwargs))
  except ValueError as e:
    raise UserError(f"cannot build {mcfg.model!r}: {e}") from None


def _pretrained(params, state, pretrained: Mapping[str, Any] | None, what: str):
  """Initial variables overwritten by converted ImageNet weights; the classifier stays fresh.

  Weights the checkpoint lacks keep their fresh values (``strict=False``).
  """
  if pretrained is None:
    return params, state
  kw = dict(strict=False, what=f"config.{what}", hint="use a checkpoint of the same architecture")
  params = weights_lib.merge_pretrained(params, pretrained["params"], skip=("fc", "classifier"),
                                        **kw)
  state = {k: weights_lib.merge_pretrained(v, pretrained.get(k, {}), **kw)
           for k, v in state.items()}
  return params, state


@dataclasses.dataclass
class Setup:
  """Everything the stages share: models, shapes, pairing, data."""

  config: ml_collections.ConfigDict
  data: streams.Streams
  teacher: nn.Module
  student: nn.Module
  adapters: dict[str, SpectrumAdapter]
  feature_shapes: dict[str, tuple[int, ...]]
  pairs: list[StagePair]
  example: np.ndarray
  student_init_vars: Mapping[str, Any] | None  # pretrained student weights, or None
  teacher_init_vars: Mapping[str, Any] | None = None  # pretrained teacher weights, or None


def make_setup(config: ml_collections.ConfigDict, data: streams.Streams) -> Setup:
  """Builds the models; checks, before any training, that the configured taps and kernels pair."""
  dcfg = config.data
  example = np.zeros((1, dcfg.num_segments, dcfg.crop_size, dcfg.crop_size, 3), np.float32)
  teacher = build_model(config.teacher, data.num_classes)
  if config.teacher.checkpoint:
    converted = _common.load_converted(config.teacher.checkpoint, "config.teacher.checkpoint",
                                       config.teacher.model)
    teacher = converted.build()
  student = build_model(config.student, data.num_classes)

  def shapes(model):
    try:
      return jax.eval_shape(lambda: model.init(jax.random.key(0), example, train=False))
    except ValueError as e:
      raise UserError(f"{type(model).__name__} does not take clips "
                      f"{tuple(example.shape)}: {e}") from None

  t_vars, s_vars = shapes(teacher), shapes(student)
  if config.teacher.checkpoint:
    t_out = jax.eval_shape(lambda v: teacher.apply(v, example, train=False), t_vars)[0]
    if t_out.shape[-1] != data.num_classes:
      raise UserError(f"the teacher checkpoint has {t_out.shape[-1]} classes, the dataset "
                      f"{data.num_classes}; convert a teacher trained on this dataset")
  t_feats = jax.eval_shape(lambda v: teacher.apply(v, example, train=False), t_vars)[1]
  s_feats = jax.eval_shape(lambda v: student.apply(v, example, train=False), s_vars)[1]
  adapters, feature_shapes = {}, {}
  for layer in config.spec.layers:
    ts, ss = t_feats[layer].shape, s_feats[layer].shape
    if ts[:-1] != ss[:-1]:
      raise UserError(
          f"spectrum tap {layer}: teacher features {ts} and student features {ss} differ in more "
          "than channels; pick taps of equal stride or set --config.spec.pool_spatial=True")
    adapters[layer] = SpectrumAdapter(ts[-1], use_bn=config.spec.adapter_bn,
                                      dtype=s_feats[layer].dtype)
    feature_shapes[layer] = tuple(ss)
  pairs = []
  if config.param.reading != "none":
    pairs = pair_stage_kernels(student, s_vars["params"], teacher, t_vars["params"],
                               tuple(config.param.stages))
  init_vars = teacher_init = None
  if config.student.init_checkpoint:
    init_vars = _common.load_converted(config.student.init_checkpoint,
                                       "config.student.init_checkpoint",
                                       config.student.model).variables
  if config.teacher.init_checkpoint and not config.teacher.checkpoint:
    teacher_init = _common.load_converted(config.teacher.init_checkpoint,
                                          "config.teacher.init_checkpoint",
                                          config.teacher.model).variables
  return Setup(config, data, teacher, student, adapters, feature_shapes, pairs, example, init_vars,
               teacher_init)


def _init_model(model: nn.Module, key: jax.Array, example: np.ndarray):
  v = model.init(_fast_key(key), jnp.asarray(example), train=False)
  return v["params"], {k: v[k] for k in v if k != "params"}

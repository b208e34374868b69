"""Initial weights of a stage: host-drawn random variables, and converted checkpoints merged in.

The methods start their networks either from random variables or from a converted PyTorch
checkpoint (``python -m kd_jax.models.convert``) whose classifier is replaced. Both helpers work on
plain variable dicts (``{'params': ..., 'batch_stats': ...}`` or one collection of them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.errors import UserError
from kd_jax.train import optim


def host_init(module: Any, example: Any, seed: int) -> dict[str, Any]:
  """Random variables drawn with NumPy in the models' own distributions, without compiling.

  Jitting ``model.init`` takes tens of seconds per model on a small CPU; drawing the same
  distributions on the host takes milliseconds. Conv kernels: He normal (fan out), as torchvision;
  linear kernels: U(+-1/sqrt(fan_in)), as PyTorch; biases 0; BatchNorm scale 1, bias 0, running
  mean 0, variance 1. These are the distributions of ``kd_jax.models.layers.conv_init`` and
  ``dense_init``, but not their numbers: the real initialisers draw from ``jax.random``, so this
  NumPy copy stays (a run started from a seed must keep starting from the same weights). Only for
  2-D models whose variables are conv and dense kernels, biases and BatchNorm (PKD's ResNets and
  IC heads).
  """
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), example)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    p = optim.path_str(path)
    shape = leaf.shape
    if p.endswith("kernel") and len(shape) == 4:
      return rng.normal(0.0, math.sqrt(2.0 / (shape[0] * shape[1] * shape[3])), shape)
    if p.endswith("kernel") and len(shape) == 2:
      lim = 1.0 / math.sqrt(shape[0])
      return rng.uniform(-lim, lim, shape)
    if p.endswith("scale") or p.endswith("/var"):
      return np.ones(shape)
    return np.zeros(shape)

  out = jax.tree_util.tree_map_with_path(draw, shapes)
  return jax.tree.map(lambda a: np.asarray(a, np.float32), out)


def merge_pretrained(tree: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                     skip: Sequence[str] = (), strict: bool = True, what: str,
                     hint: str) -> dict[str, Any]:
  """``tree`` with every leaf replaced by ``pretrained``'s leaf of the same path, in its dtype.

  Args:
    tree: fresh variables (one collection or several), arrays or tracers (works under ``jit``).
    pretrained: converted variables of the same layout, e.g. ``Converted.variables['params']``.
    skip: top-level names kept from ``tree`` (the classifier, replaced for the new classes).
    strict: every leaf of ``tree`` outside ``skip`` must be in ``pretrained``; otherwise leaves
      that ``pretrained`` lacks keep their fresh values. Leaves only ``pretrained`` has are ignored.
    what: the checkpoint as the error names it, e.g. ``'config.teacher.checkpoint'``.
    hint: what to do about a mismatch, the end of the error.

  Raises:
    UserError: a weight missing (``strict``) or of another shape than the model's.
  """
  flat = flax.traverse_util.flatten_dict(dict(tree), sep="/")
  pre = flax.traverse_util.flatten_dict(dict(pretrained), sep="/")
  keys = [k for k in flat if k.split("/")[0] not in skip]
  missing = [k for k in keys if k not in pre]
  if strict and missing:
    raise UserError(f"{what} lacks {len(missing)} of the model's weights (e.g. "
                    f"{', '.join(missing[:3])}); {hint}")
  for k in keys:
    if k not in pre:
      continue
    if tuple(np.shape(pre[k])) != tuple(flat[k].shape):
      raise UserError(f"{what}: weight {k} has shape {tuple(np.shape(pre[k]))}, the model "
                      f"{tuple(flat[k].shape)}; {hint}")
    flat[k] = jnp.asarray(pre[k], flat[k].dtype)
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def mismatched_heads(tree: Mapping[str, Any], pretrained: Mapping[str, Any],
                     names: Sequence[str]) -> tuple[str, ...]:
  """The top-level ``names`` (classifiers) that ``pretrained`` lacks or holds in other shapes.

  What ``merge_pretrained(skip=...)`` should keep fresh: a classifier of a checkpoint trained on
  another label set (ImageNet's 1000, Kinetics' 400 classes) is replaced, one of the same shape (a
  checkpoint fine-tuned on this dataset, e.g. PKD's IC checkpoints or GenKD's trained teacher) is
  kept, as the official code loads it.
  """
  out = []
  for name in names:
    fresh = flax.traverse_util.flatten_dict(dict(tree.get(name, {})), sep="/")
    pre = pretrained.get(name)
    pre = flax.traverse_util.flatten_dict(dict(pre), sep="/") if isinstance(pre, Mapping) else {}
    if set(fresh) != set(pre) or any(tuple(np.shape(pre[k])) != tuple(np.shape(v))
                                     for k, v in fresh.items()):
      out.append(name)
  return tuple(out)

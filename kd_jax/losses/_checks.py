"""Input validation and dtype handling shared by the loss functions.

Hyper-parameters are checked only when they are concrete Python or NumPy numbers: a traced value (a
temperature swept under ``jax.vmap``, say) cannot be inspected, so it is taken on trust.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_float(x: Any) -> jax.Array:
  """``x`` as a JAX array of at least float32 precision (bf16/f16 are promoted; f64 is kept)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def concrete_number(value: Any) -> float | None:
  """The value as a Python float when it is known at trace time, else ``None``."""
  if isinstance(value, numbers.Real):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
    return float(value)
  return None


def check_positive(name: str, value: Any) -> None:
  v = concrete_number(value)
  if v is not None and not v > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


def check_non_negative(name: str, value: Any) -> None:
  v = concrete_number(value)
  if v is not None and not v >= 0:
    raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_same_shape(
    student: jax.Array, teacher: jax.Array, what: str = "student and teacher inputs"
) -> None:
  if jnp.shape(student) != jnp.shape(teacher):
    raise ValueError(
        f"{what} must have the same shape, got {tuple(jnp.shape(student))} and "
        f"{tuple(jnp.shape(teacher))}; map one onto the other (e.g. with an adapter) first"
    )


def check_has_batch_axis(name: str, x: jax.Array) -> None:
  if jnp.ndim(x) < 1:
    raise ValueError(f"{name} needs a leading batch axis, got a scalar")


def mean_over_non_batch_axes(x: jax.Array) -> jax.Array:
  """Per-example mean: reduces every axis but the leading one."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x

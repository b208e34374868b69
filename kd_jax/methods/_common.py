"""Small helpers every method uses: model keyword arguments from a config, converted checkpoints
named by a config, plain cross-entropy.

Generic pieces only; a method's own logic stays in its module (a method never imports another).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import optax

from kd_jax.errors import UserError


def model_kwargs(block: Any) -> dict[str, Any]:
  """A config's ``kwargs`` block (ConfigDict, dict or None) as keyword arguments of ``models.get``.

  Lists become tuples: Flax module attributes must be hashable, and a ``--config.x.kwargs.
  stage_sizes=...`` override or a JSON round trip gives lists.
  """
  kw = block.to_dict() if isinstance(block, ml_collections.ConfigDict) else dict(block or {})
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def load_converted(path: str, what: str, model: str | None = None) -> Any:
  """The converted checkpoint (``kd_jax.models.convert.Converted``) a config field names.

  Args:
    path: where it is (``~`` is expanded).
    what: the config field, for the error, e.g. ``'config.teacher.checkpoint'``.
    model: the registered model it must hold; None takes any.

  Raises:
    UserError: no converted checkpoint there, or one of another model.
  """
  from kd_jax.models import convert  # pylint: disable=g-import-not-at-top
  hint = "convert one with python -m kd_jax.models.convert"
  try:
    converted = convert.load_converted(os.path.expanduser(path))
  except (FileNotFoundError, ValueError) as e:
    raise UserError(f"{what}: {e}; {hint}") from None
  if model is not None and converted.model_name != model:
    raise UserError(f"{what} holds a {converted.model_name}, not the configured {model}; {hint} "
                    f"--model {model}")
  return converted


def mean_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Cross-entropy with integer labels, averaged over the batch (a scalar)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def holdout(config: Any) -> float:
  """The share of training videos the data holds out: ``data.holdout`` for
  ``config.selection='best_val'``, else none."""
  return float(config.data.holdout) if config.get("selection") == "best_val" else 0.0


def val_batches(data: Any) -> Any:
  """``Stage.val_data`` of opened streams: their held-out videos, or None without any."""
  if getattr(data, "val", None) is None:
    return None
  return lambda per_host: data.eval(per_host, split="val")

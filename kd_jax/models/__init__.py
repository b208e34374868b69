"""The model zoo: `get(name, **kwargs)` builds any kd_jax model by name.

Every model is a `flax.linen` Module called as `model.apply(variables, x, train=...)` (plus
`mutable=["batch_stats"]` when training) and returns `(logits, features)`, `features` being a dict
of named channels-last taps. Builders live in their own modules and are imported only when a model
is first requested, so importing `kd_jax.models` stays cheap.

    from kd_jax import models
    net = models.get("resnet18", num_classes=101, in_channels=2, input_norm=True)
    macs = models.count_macs("resnet50", (1, 224, 224, 3))
"""

import importlib
import inspect
from collections.abc import Callable
from typing import Any

# name -> "module:builder". Builders take keyword arguments only.
REGISTRY: dict[str, str] = {
    "resnet18": "kd_jax.models.resnet:resnet18",
    "resnet50": "kd_jax.models.resnet:resnet50",
    "ic_head": "kd_jax.models.ic_head:ic_head",
    "ic_heads": "kd_jax.models.ic_head:ic_heads",
    "tsm_resnet18": "kd_jax.models.tsm:tsm_resnet18",
    "tsm_resnet50": "kd_jax.models.tsm:tsm_resnet50",
    "tsm_mobilenet_v2": "kd_jax.models.mobilenet_v2:tsm_mobilenet_v2",
    "i3d": "kd_jax.models.i3d:i3d",
    "top_i3d": "kd_jax.models.i3d:top_i3d",
    "generative_attention": "kd_jax.models.generative_attention:generative_attention",
    "afsd": "kd_jax.models.afsd:afsd",
}

__all__ = ["REGISTRY", "builder", "count_macs", "get", "names"]


def names() -> list[str]:
  """The registered model names, sorted."""
  return sorted(REGISTRY)


def builder(name: str) -> Callable[..., Any]:
  """The builder function registered under `name` (imports its module)."""
  if name not in REGISTRY:
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(names())}")
  module_name, fn_name = REGISTRY[name].split(":")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise ImportError(f"model {name!r} is registered but {module_name} is not available") from e
  return getattr(module, fn_name)


def get(name: str, **kwargs: Any) -> Any:
  """Builds the model `name` with keyword arguments `kwargs`.

  Raises:
    ValueError: an unknown name, an argument the builder does not take (the message lists the
      allowed ones), or an impossible value.
  """
  fn = builder(name)
  params = inspect.signature(fn).parameters.values()
  allowed = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
  if any(p.kind is p.VAR_KEYWORD for p in params):
    allowed.append("and the model's attributes")
  required = [p.name for p in params
              if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
  hint = f"allowed: {', '.join(allowed)}"
  if required:
    hint += f"; required: {', '.join(required)}"
  try:
    inspect.signature(fn).bind(**kwargs)
  except TypeError as e:
    raise ValueError(f"bad arguments for model {name!r} ({e}); {hint}") from None
  try:
    return fn(**kwargs)
  except TypeError as e:
    # Builders taking **kwargs pass them on to a dataclass Module, which rejects unknown fields.
    if "unexpected keyword argument" not in str(e):
      raise
    raise ValueError(f"bad arguments for model {name!r} ({e}); {hint}") from None


def count_macs(model_name: str, input_shape: Any, **kwargs: Any) -> int:
  """Multiply-accumulates of one inference forward pass; see `kd_jax.models.macs.count_macs`."""
  from kd_jax.models import macs  # pylint: disable=g-import-not-at-top
  return macs.count_macs(model_name, input_shape, **kwargs)

"""Import PyTorch weights (torchvision ResNet, CoViAR / TSM checkpoints, pytorch-i3d) into kd_jax.

    python -m kd_jax.models.convert SRC DST --model NAME [--kwargs JSON] [--prefix P]
                                    [--allow-unexpected] [--force]

reads a state dict (`.pt` / `.pth` / `.pth.tar` through `torch.load(..., weights_only=True)`, never
unrestricted unpickling; or `.safetensors`), maps it onto the Flax variables of model NAME and
writes an orbax checkpoint at DST with two items: `variables`
(`{"params": ..., "batch_stats": ...}`) and `meta` (`{"model": NAME, "model_kwargs": {...},
"source": SRC}`). `load_converted(DST)` reads it
back, and `kd_jax.models.get(meta["model"], **meta["model_kwargs"])` rebuilds the matching module.

Names. Flax module paths map to PyTorch module paths by joining with "." after three renames:
`layerX_Y` -> `layerX.Y`, `downsample_conv` -> `downsample.0`, `downsample_bn` -> `downsample.1`
(the I3D modules carry pytorch-i3d's names already). Leaves: `kernel` / `scale` -> `weight`,
`bias` -> `bias`, `batch_stats/mean` -> `running_mean`, `batch_stats/var` -> `running_var`;
`num_batches_tracked` has no counterpart and is ignored. Kernels are transposed from PyTorch's
`[out, in, *k]` to Flax's `[*k, in, out]`, linear weights from `[out, in]` to `[in, out]`.

Checkpoint wrappers are unwrapped: a dict holding `state_dict` (CoViAR / PKD / TSM `.pth.tar`),
the `module.` prefix of DataParallel, CoViAR's and TSM's `base_model.`, GenKD's `backbone._model.`,
TSM's shift wrapper (`conv1.net.weight` -> `conv1.weight`) and its `new_fc` (-> `fc`).

What the checkpoint decides (unless given in `--kwargs`): ResNet `num_classes` (fc rows),
`in_channels` (conv1 input channels: 2 for CoViAR's motion-vector net) and `input_norm` (whether
a `data_bn` is present); I3D `num_classes`. Everything else (width, depth) comes from the builder's
defaults or `--kwargs`, so a checkpoint of another depth fails with the list of differing keys
instead of converting silently into something else.
"""

import argparse
from collections.abc import Callable, Mapping
import json
import os
import re
import sys
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import models

# Prefixes stripped from every key that has them, in this order, repeatedly.
_PREFIXES = ("module.", "base_model.", "backbone._model.")
_IGNORED_SUFFIXES = (".num_batches_tracked",)


class ConversionError(ValueError):
  """The state dict does not fit the model; the message lists every problem."""


class Converted(NamedTuple):
  """A converted checkpoint: Flax variables plus what is needed to rebuild the model."""

  variables: dict[str, Any]
  model_name: str
  model_kwargs: dict[str, Any]

  def build(self) -> Any:
    """The linen module these variables belong to."""
    return models.get(self.model_name, **self.model_kwargs)


# ----------------------------------------------------------------------------- reading


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (`.pt`, `.pth`, `.pth.tar`, `.safetensors`) as float32 numpy arrays.

  `.safetensors` needs the `safetensors` package; everything else needs `torch`, which is loaded
  with `weights_only=True` (plain tensors and containers only, no arbitrary code).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "reading .safetensors needs the 'safetensors' package (pip install safetensors)") from e
    return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"reading {path} needs PyTorch (pip install torch, CPU build is enough), or convert the "
        "file to .safetensors") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  return state_dict_to_numpy(obj)


def state_dict_to_numpy(obj: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Unwraps `{"state_dict": ...}` checkpoints and turns tensors into float32 numpy arrays."""
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"expected a state dict (a mapping of names to tensors), got {type(obj)}")
  out = {}
  for k, v in obj.items():
    if hasattr(v, "detach"):  # a torch.Tensor; bfloat16 has no numpy dtype, so go through float32
      v = v.detach().cpu().float().numpy()
    if isinstance(v, np.ndarray) or np.isscalar(v):
      # Copy: .numpy() shares memory with the tensor, which the caller may keep updating.
      out[k] = np.array(v, np.float32, copy=True)
  return out


def normalize_keys(state_dict: Mapping[str, np.ndarray],
                   prefix: str | None = None) -> dict[str, np.ndarray]:
  """Strips wrapper prefixes and TSM renames; with `prefix`, keeps only the keys under it."""
  out = {}
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES):
      continue
    if prefix is not None:
      if not key.startswith(prefix):
        continue
      key = key[len(prefix):]
    changed = True
    while changed:
      changed = False
      for p in _PREFIXES:
        if key.startswith(p):
          key, changed = key[len(p):], True
    key = key.replace(".net.", ".")
    if key.startswith("new_fc."):
      key = "fc." + key[len("new_fc."):]
    if key in out:
      raise ConversionError(f"two checkpoint entries map to the same name {key!r}")
    out[key] = value
  return out


# ----------------------------------------------------------------------------- mapping


def torch_module_path(flax_path: tuple[str, ...]) -> str:
  """`('layer2_0', 'downsample_conv')` -> `'layer2.0.downsample.0'`."""
  parts = []
  for p in flax_path:
    m = re.fullmatch(r"(layer\d+)_(\d+)", p)
    if m:
      parts += [m[1], m[2]]
    elif p == "downsample_conv":
      parts.append("downsample.0")
    elif p == "downsample_bn":
      parts.append("downsample.1")
    else:
      parts.append(p)
  return ".".join(parts)


_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The PyTorch state-dict key of the Flax variable `collection/path`."""
  leaf = _LEAF_NAMES.get((collection, path[-1]))
  if leaf is None:
    raise ConversionError(f"no PyTorch counterpart for {collection}/{'/'.join(path)}")
  return f"{torch_module_path(path[:-1])}.{leaf}"


def torch_to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  """PyTorch layout to Flax layout: `[O, I, *k]` -> `[*k, I, O]`, `[O, I]` -> `[I, O]`."""
  if leaf == "kernel" and value.ndim >= 3:
    return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  return value


class _Spec(NamedTuple):
  infer: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]
  dummy_input: Callable[[Mapping[str, np.ndarray], dict[str, Any]], tuple[int, ...]]


def _infer_resnet(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  kw: dict[str, Any] = {"input_norm": "data_bn.weight" in sd or "data_bn.running_mean" in sd}
  if "fc.weight" in sd:
    kw["num_classes"] = int(sd["fc.weight"].shape[0])
  if "conv1.weight" in sd:
    kw["in_channels"] = int(sd["conv1.weight"].shape[1])
  return kw


def _infer_i3d(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  if "logits.conv3d.weight" in sd:
    return {"num_classes": int(sd["logits.conv3d.weight"].shape[0])}
  return {}


def _infer_tsm(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  # TSM networks have no data_bn option; a checkpoint holding one fails as "unexpected".
  kw = _infer_resnet(sd)
  del kw["input_norm"]
  return kw


_RESNET = _Spec(_infer_resnet, lambda sd, kw: (1, 64, 64, kw.get("in_channels", 3)))
_TSM = _Spec(_infer_tsm, lambda sd, kw: (1, 2, 64, 64, kw.get("in_channels", 3)))
_I3D = _Spec(
    _infer_i3d,
    lambda sd, kw: (1, 16, 224, 224,
                    int(sd["Conv3d_1a_7x7.conv3d.weight"].shape[1])
                    if "Conv3d_1a_7x7.conv3d.weight" in sd else 3))
SPECS: dict[str, _Spec] = {
    "resnet18": _RESNET,
    "resnet50": _RESNET,
    "tsm_resnet18": _TSM,
    "tsm_resnet50": _TSM,
    "i3d": _I3D,
    "top_i3d": _I3D,
}


def abstract_variables(model: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables, traced without computing anything."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _listing(title: str, items: list[str], limit: int = 40) -> str:
  shown = items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])
  return f"{title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown)


def convert_state_dict(
    state_dict: Mapping[str, Any],
    model_name: str,
    *,
    prefix: str | None = None,
    allow_unexpected: bool = False,
    **model_kwargs: Any,
) -> Converted:
  """Maps a PyTorch state dict onto the Flax variables of `model_name`.

  Args:
    state_dict: names to tensors or arrays (a `{"state_dict": ...}` checkpoint is unwrapped).
    model_name: a registered model with a known mapping (see `SPECS`).
    prefix: keep only the keys under this prefix (e.g. a sub-network of a larger checkpoint).
    allow_unexpected: ignore checkpoint entries the model has no place for (e.g. an auxiliary head).
    **model_kwargs: builder arguments; they override what is inferred from the checkpoint.

  Returns:
    A `Converted` with float32 numpy variables.

  Raises:
    ConversionError: listing every missing key, unexpected key and shape mismatch at once.
  """
  if model_name not in SPECS:
    raise ValueError(
        f"no PyTorch mapping for model {model_name!r}; convertible: {', '.join(sorted(SPECS))}")
  spec = SPECS[model_name]
  sd = normalize_keys(state_dict_to_numpy(state_dict), prefix)
  kwargs = {**spec.infer(sd), **model_kwargs}
  model = models.get(model_name, **kwargs)
  abstract = abstract_variables(model, spec.dummy_input(sd, kwargs))
  variables = map_state_dict(sd, abstract, allow_unexpected=allow_unexpected,
                             what=f"{model_name}({_kwargs_str(kwargs)})")
  return Converted(variables, model_name, _jsonable(kwargs))


def map_state_dict(
    state_dict: Mapping[str, np.ndarray],
    abstract: Mapping[str, Any],
    *,
    allow_unexpected: bool = False,
    what: str = "the model",
) -> dict[str, Any]:
  """Fills the variable tree `abstract` (shapes only) from a normalised PyTorch state dict.

  Works for any module whose Flax names follow the PyTorch names (see the module docstring), e.g.
  a single block in a test. Raises one `ConversionError` listing all missing / unexpected keys and
  shape mismatches.
  """
  flat: dict[tuple[str, ...], np.ndarray] = {}
  used, missing, mismatched = set(), [], []
  for path, leaf in flax.traverse_util.flatten_dict(abstract).items():
    collection, sub = path[0], path[1:]
    key = torch_key(collection, sub)
    if key not in state_dict:
      missing.append(f"{key}  (for {'/'.join(path)} {tuple(leaf.shape)})")
      continue
    used.add(key)
    value = torch_to_flax(np.asarray(state_dict[key], np.float32), sub[-1])
    if value.shape != tuple(leaf.shape):
      mismatched.append(f"{key}: checkpoint {tuple(state_dict[key].shape)} -> {tuple(value.shape)}"
                        f" in Flax layout, model wants {tuple(leaf.shape)} at {'/'.join(path)}")
      continue
    flat[path] = np.ascontiguousarray(value, dtype=np.float32)
  unexpected = sorted(set(state_dict) - used)

  problems = []
  if missing:
    problems.append(_listing("missing from the checkpoint", missing))
  if unexpected and not allow_unexpected:
    problems.append(_listing("unexpected in the checkpoint (use allow_unexpected / "
                             "--allow-unexpected to drop them, or prefix / --prefix)", unexpected))
  if mismatched:
    problems.append(_listing("shape mismatches", mismatched))
  if problems:
    raise ConversionError(f"the checkpoint does not fit {what}:\n  " + "\n  ".join(problems))
  return flax.traverse_util.unflatten_dict(flat)


def _kwargs_str(kwargs: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))


def _jsonable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for k, v in kwargs.items():
    if isinstance(v, tuple):
      v = list(v)
    elif isinstance(v, (np.dtype, type)):
      v = str(jnp.dtype(v))
    out[k] = v
  json.dumps(out)  # fail early on anything orbax's JSON item could not store
  return out


# ----------------------------------------------------------------------------- checkpoints


def save_converted(path: str, converted: Converted, *, source: str = "",
                   force: bool = False) -> None:
  """Writes `converted` as an orbax checkpoint (items `variables` and `meta`) at `path`."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if os.path.exists(path):
    if not force:
      raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
  meta = {"model": converted.model_name, "model_kwargs": converted.model_kwargs, "source": source}
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, ocp.args.Composite(variables=ocp.args.StandardSave(converted.variables),
                                        meta=ocp.args.JsonSave(meta)), force=force)


def load_converted(path: str) -> Converted:
  """Reads a checkpoint written by `save_converted` / the CLI; arrays come back as numpy.

  The stored model is rebuilt first, so the restore checks every shape against it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if not os.path.isdir(os.path.join(path, "meta")):
    raise FileNotFoundError(f"{path} is not a converted kd_jax checkpoint (no 'meta' item)")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    meta = ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    model = models.get(meta["model"], **meta["model_kwargs"])
    spec = SPECS.get(meta["model"])
    target = None
    if spec is not None:
      abstract = abstract_variables(model, spec.dummy_input({}, meta["model_kwargs"]))
      target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    variables = ckptr.restore(
        path, ocp.args.Composite(variables=ocp.args.StandardRestore(target))).variables
  return Converted(dict(variables), meta["model"], dict(meta["model_kwargs"]))


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
  """`python -m kd_jax.models.convert SRC DST --model NAME`."""
  parser = argparse.ArgumentParser(
      prog="python -m kd_jax.models.convert",
      description="Convert a PyTorch state dict into a kd_jax orbax checkpoint.")
  parser.add_argument("src", help=".pt / .pth / .pth.tar / .safetensors file")
  parser.add_argument("dst", help="output checkpoint directory")
  parser.add_argument("--model", required=True, choices=sorted(SPECS))
  parser.add_argument("--kwargs", default="{}",
                      help='builder arguments as JSON, e.g. \'{"num_classes": 101}\'')
  parser.add_argument("--prefix", default=None, help="use only the keys under this prefix")
  parser.add_argument("--allow-unexpected", action="store_true",
                      help="drop checkpoint entries the model has no place for")
  parser.add_argument("--force", action="store_true", help="overwrite DST")
  args = parser.parse_args(argv)
  try:
    kwargs = json.loads(args.kwargs)
    if not isinstance(kwargs, dict):
      raise ValueError("--kwargs must be a JSON object")
    converted = convert_state_dict(load_state_dict(args.src), args.model, prefix=args.prefix,
                                   allow_unexpected=args.allow_unexpected, **kwargs)
    save_converted(args.dst, converted, source=os.path.abspath(args.src), force=args.force)
  except (OSError, ImportError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(converted.variables["params"]))
  print(f"wrote {args.dst}: {args.model}({_kwargs_str(converted.model_kwargs)}), {n:,} parameters")
  return 0


if __name__ == "__main__":
  sys.exit(main())

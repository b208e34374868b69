"""Import PyTorch weights (torchvision ResNet, CoViAR / TSM / PKD, pytorch-i3d RGB and flow, GenKD,
AFSD).

    python -m kd_jax.models.convert SRC DST [--model NAME] [--kwargs JSON] [--prefix P]
                                    [--allow-unexpected] [--force]

reads a state dict (`.pt` / `.pth` / `.pth.tar` / `.ckpt` through `torch.load(...,
weights_only=True)`, never unrestricted unpickling; or `.safetensors`), maps it onto the Flax
variables of model NAME (inferred from the keys when `--model` is not given) and writes an orbax
checkpoint at DST with the items `variables` (`{"params": ..., "batch_stats": ...}`), `meta`
(`{"model": NAME, "model_kwargs": {...}, "source": SRC, "input_shapes": ..., "parts": {...},
"notes": [...]}`) and one `part_<name>` per extra module. `load_converted(DST)` reads it back, and
`kd_jax.models.get(meta["model"], **meta["model_kwargs"])` rebuilds the matching module.

Names. Flax module paths map to PyTorch module paths by joining with "." after three renames:
`layerX_Y` -> `layerX.Y`, `downsample_conv` -> `downsample.0`, `downsample_bn` -> `downsample.1`
(the I3D modules carry pytorch-i3d's names already). Leaves: `kernel` / `scale` -> `weight`,
`bias` -> `bias`, `batch_stats/mean` -> `running_mean`, `batch_stats/var` -> `running_var`;
`num_batches_tracked` has no counterpart and is ignored. Kernels are transposed from PyTorch's
`[out, in, *k]` to Flax's `[*k, in, out]` (a `ConvTranspose3d`'s `[in, out, *k]` by the same rule,
see `generative_attention`), linear weights from `[out, in]` to `[in, out]`.

Checkpoint wrappers are unwrapped: a dict holding `state_dict` (CoViAR / PKD / TSM `.pth.tar`),
the `module.` prefix of DataParallel, CoViAR's and TSM's `base_model.`, PKD's `net.` (the
`IC_Model` wrapper of a CoViAR model), GenKD's `backbone._model.`, TSM's shift wrapper
(`conv1.net.weight` -> `conv1.weight`) and its `new_fc` (-> `fc`).

Official layouts that convert in one command (the model inferred, no `--prefix`, no
`--allow-unexpected`, no `--kwargs`):

* pytorch-i3d's `rgb_imagenet.pt` and `flow_imagenet.pt` (plain InceptionI3d names, 400 Kinetics
  classes; the flow stem `Conv3d_1a_7x7.conv3d.weight` is `[64, 2, 7, 7, 7]`): `i3d`, with
  `in_channels=2` for flow.
* PKD's IC checkpoints (`train_freeze_backbone_IC_*.py` save `DataParallel(IC_Model)`:
  `module.net.base_model.*`, `module.net.data_bn.*`, `module.IC{k}_features.{0,1}.*`,
  `module.IC{k}_classifier.*`): the backbone (`resnet18` with 2-channel MV or 3-channel residual
  input and `data_bn`, or `resnet50` for the I-frame) with the part `ic_heads`
  (`IC{k}_features.0` -> `ic{k}/conv`, `IC{k}_features.1` -> `ic{k}/bn`, `IC{k}_classifier` ->
  `ic{k}/fc`).
* GenKD's `BDNet_teacher` / `BDNet_student` state dicts (`backbone._model.*` = pytorch-i3d names,
  `deconv1.*`, `Att_Head_5c.*`): `i3d` / `top_i3d` with the part `attention_head`
  (`generative_attention(part="attention")`; names in `kd_jax.models.generative_attention`).
* GenKD's flow student (`BDNet_student(in_channels=2)`, `test_Top_I3D_att_fusion*.py`): its 344
  backbone-plus-classifier entries `backbone._model.*` (2 `logits` + 57 conv/BN units x 6,
  `num_batches_tracked` included; with or without the attention head, with or without
  DataParallel's `module.`): `top_i3d` with `in_channels=2`. The official test copies these
  entries into a `BDNet_student` by position (its load by name is commented out), so the file's
  own names are not known; the import here goes by name, and entries with other names fail with
  the list of them. Its `logits` have 101 rows for HMDB-51 too (`replace_logits(101)` is
  hard-coded), so `num_classes` comes out 101 there.
* GenKD's `CVAE_teacher` / `CVAE_student` state dicts (`cencoder.*`, `cdecoder.*`):
  `generative_attention(part="cvae")`.
* AFSD's `BDNet` checkpoints (`checkpoint-15.ckpt`: `backbone._model.*` = pytorch-i3d names without
  `logits`, `coarse_pyramid_detection.*`): `afsd`, with `backbone` ('i3d' / 'top_i3d', from the
  stem), `num_classes` (from `conf_head`) and, when not 512, `channels` / `proposal_channels`;
  the input crop is read from the pyramid's (1, h, w) kernel (h = crop / 16). Names in
  `kd_jax.models.afsd`. GenKD's detection `BDNet_teacher` / `BDNet_student` are the same plus the
  attention heads: `deconv1.*` / `Att_Head_5c.*` convert as the part `attention_head` (Mixed_5c),
  `deconv2.*` / `Att_Head_4f.*` as the part `attention_head_4f` (Mixed_4f).

Branches that exist in those modules but that recognition never runs are recognised by name,
dropped, and reported in `Converted.notes` (and by the CLI): the 832-channel (`Mixed_4f`) CVAE
`cencoder_832.*` / `cdecoder_832.*`, and the `Mixed_4f` attention branch `deconv2.*` /
`Att_Head_4f.*` of GenKD's detection BDNet when converted as a plain I3D (with `afsd` it is
kept). Any other entry without a place is an error.

What the checkpoint decides (unless given in `--kwargs`): ResNet `num_classes` (fc rows),
`in_channels` (conv1 input channels: 2 for CoViAR's motion-vector net) and `input_norm` (whether
a `data_bn` is present); I3D `num_classes` and `in_channels` (`Conv3d_1a_7x7`'s input channels,
2 for optical flow; recorded only when not 3, so an RGB model keeps `in_channels=None`); IC heads
`backbone` (the checkpoint's network), `num_classes` and `width`; attention head
`hidden_channels`, and every feature size of the attention head and the CVAE (from their
kernels). Everything else (width, depth) comes from the builder's defaults or `--kwargs`, so a
checkpoint of another depth fails with the list of differing keys instead of converting silently
into something else.
"""

import argparse
from collections.abc import Callable, Mapping
import json
import os
import re
import sys
import types
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import models

# Prefixes stripped from every key that has them, in this order, repeatedly.
_PREFIXES = ("module.", "net.", "base_model.", "backbone._model.")
_IGNORED_SUFFIXES = (".num_batches_tracked",)

# GenKD's Mixed_4f attention head (detection): a part beside `afsd`, unused beside an I3D.
_ATTENTION_4F = re.compile(r"(deconv2|Att_Head_4f)\.")
# Entries of official checkpoints that belong to branches recognition never runs: dropped with a
# note (pattern on the normalised key -> what it is).
UNUSED_BRANCHES = (
    (re.compile(r"(cencoder_832|cdecoder_832)\."),
     "GenKD's 832-channel (Mixed_4f) CVAE branch, built but never used by recognition"),
    (_ATTENTION_4F, "GenKD's Mixed_4f attention branch (detection only)"),
)

# Extra modules of a checkpoint besides its main network: part name -> (key pattern, model name,
# fixed builder arguments).
PARTS = {
    "ic_heads": (re.compile(r"IC\d+_(features|classifier)\."), "ic_heads", {}),
    "attention_head": (re.compile(r"(deconv1|Att_Head_5c)\."), "generative_attention",
                       {"part": "attention"}),
    "cvae": (re.compile(r"(cencoder|cdecoder)\."), "generative_attention", {"part": "cvae"}),
    # Kept only beside an AFSD network (GenKD's detection BDNet); dropped otherwise (see
    # UNUSED_BRANCHES).
    "attention_head_4f": (_ATTENTION_4F, "generative_attention", {"part": "attention"}),
}

# PyTorch module names of the official IC heads and GenKD modules -> the Flax module names in the
# same dotted form (then mapped by `torch_key` like any other model).
_RENAMES = (
    (re.compile(r"^IC(\d+)_features\.0\."), r"ic\1.conv."),
    (re.compile(r"^IC(\d+)_features\.1\."), r"ic\1.bn."),
    (re.compile(r"^IC(\d+)_classifier\."), r"ic\1.fc."),
    (re.compile(r"^deconv1\.0\."), "attention_head.conv3d."),
    (re.compile(r"^deconv1\.1\."), "attention_head.gn3d."),
    (re.compile(r"^Att_Head_5c\.0\.conv1d\."), "attention_head.conv1d."),
    (re.compile(r"^Att_Head_5c\.1\."), "attention_head.gn1d."),
    (re.compile(r"^Att_Head_5c\.3\."), "attention_head.linear."),
    (re.compile(r"^deconv2\.0\."), "attention_head.conv3d."),
    (re.compile(r"^deconv2\.1\."), "attention_head.gn3d."),
    (re.compile(r"^Att_Head_4f\.0\.conv1d\."), "attention_head.conv1d."),
    (re.compile(r"^Att_Head_4f\.1\."), "attention_head.gn1d."),
    (re.compile(r"^Att_Head_4f\.3\."), "attention_head.linear."),
    (re.compile(r"^cencoder\.con1\.0\."), "cvae.encoder.conv3d."),
    (re.compile(r"^cencoder\.con1\.1\."), "cvae.encoder.gn."),
    (re.compile(r"^cencoder\.(fc\d)\."), r"cvae.encoder.\1."),
    (re.compile(r"^cdecoder\.(fc\d)\."), r"cvae.decoder.\1."),
    (re.compile(r"^cdecoder\.deconv\.0\."), "cvae.decoder.deconv3d."),
    (re.compile(r"^cdecoder\.deconv\.1\."), "cvae.decoder.gn."),
)
# AFSD's BDNet (kd_jax.models.afsd): official CoarsePyramid names -> the Flax names in dotted form.
# The backbone's keys arrive without `backbone._model.` (stripped like GenKD's) and get `backbone.`.
_AFSD_HEAD = "coarse_pyramid_detection."
_AFSD_RENAMES = (
    (re.compile(r"^pyramids\.(\d+)\.0\."), r"pyramids_\1."),
    (re.compile(r"^pyramids\.(\d+)\.1\."), r"pyramids_\1.gn."),
    (re.compile(r"^(loc|conf)_tower\.(\d+)\.0\."), r"\1_tower_\2."),
    (re.compile(r"^(loc|conf)_tower\.(\d+)\.1\."), r"\1_tower_\2.gn."),
    (re.compile(r"^loc_heads\.(\d+)\.scale$"), r"loc_heads_\1.weight"),
    (re.compile(r"^((?:loc|conf)_proposal_branch\.\w+)\.0\."), r"\1."),
    (re.compile(r"^((?:loc|conf)_proposal_branch\.\w+)\.1\."), r"\1.gn."),
    (re.compile(r"^deconv\.([036])\."), lambda m: f"deconv_{int(m[1]) // 3}."),
    (re.compile(r"^deconv\.([147])\."), lambda m: f"deconv_{int(m[1]) // 3}.gn."),
)
_NO_PARTS: Mapping[str, Any] = types.MappingProxyType({})


class ConversionError(ValueError):
  """The state dict does not fit the model; the message lists every problem."""


class Converted(NamedTuple):
  """A converted checkpoint: Flax variables plus what is needed to rebuild the model.

  Attributes:
    variables: `{"params": ..., "batch_stats": ...}` of the main model.
    model_name: its registered name.
    model_kwargs: its builder arguments.
    parts: other modules of the same checkpoint by part name (`"ic_heads"`, `"attention_head"`,
      `"cvae"`), each a `Converted` itself.
    notes: what was dropped on purpose (unused official branches).
    input_shapes: the example inputs the variables were traced with (rebuilds their shapes).
  """

  variables: dict[str, Any]
  model_name: str
  model_kwargs: dict[str, Any]
  parts: Mapping[str, "Converted"] = _NO_PARTS
  notes: tuple[str, ...] = ()
  input_shapes: Any = None

  def build(self) -> Any:
    """The linen module these variables belong to."""
    return models.get(self.model_name, **self.model_kwargs)


# ----------------------------------------------------------------------------- reading


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict (`.pt`, `.pth`, `.pth.tar`, `.ckpt`, `.safetensors`) as float32.

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


def _strip_prefixes(key: str) -> str:
  changed = True
  while changed:
    changed = False
    for p in _PREFIXES:
      if key.startswith(p):
        key, changed = key[len(p):], True
  return key


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
    key = _strip_prefixes(key).replace(".net.", ".")
    if key.startswith("new_fc."):
      key = "fc." + key[len("new_fc."):]
    if key in out:
      raise ConversionError(f"two checkpoint entries map to the same name {key!r}")
    out[key] = value
  return out


def drop_unused_branches(state_dict: Mapping[str, np.ndarray], model_name: str | None = None
                         ) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
  """Removes the entries of `UNUSED_BRANCHES` from a normalised state dict; returns the notes.

  Beside an AFSD network (`model_name='afsd'`, GenKD's detection BDNet) the Mixed_4f attention
  branch is used and kept (it converts as the part `attention_head_4f`).
  """
  kept, dropped = {}, {}
  for key, value in state_dict.items():
    for pattern, what in UNUSED_BRANCHES:
      if model_name == "afsd" and pattern is _ATTENTION_4F:
        continue
      if pattern.match(key):
        dropped.setdefault(what, []).append(key)
        break
    else:
      kept[key] = value
  notes = tuple(
      f"skipped {len(keys)} entries "
      f"({', '.join(sorted({k.split('.')[0] + '.*' for k in keys}))}): "
      f"{what}" for what, keys in dropped.items())
  return kept, notes


def infer_model(state_dict: Mapping[str, np.ndarray]) -> str:
  """The model a PyTorch state dict holds, from its key names (as saved, before normalising).

  AFSD's BDNet by its `coarse_pyramid_detection.*` entries; I3D / Top-heavy I3D by the temporal
  size of `Conv3d_1a_7x7`'s kernel (7 or 1); ResNet-18 / -50
  by BasicBlock / Bottleneck, TSM when TSM's shift wrappers or `new_fc` are there; a GenKD CVAE
  or attention head alone is `generative_attention`, PKD IC heads alone `ic_heads`.

  Raises:
    ConversionError: nothing known in the keys.
  """
  keys = {_strip_prefixes(k) for k in state_dict}
  sd = normalize_keys(state_dict)
  if any(k.startswith(_AFSD_HEAD) for k in sd):
    return "afsd"
  stem = sd.get("Conv3d_1a_7x7.conv3d.weight")
  if stem is not None:
    return "i3d" if np.ndim(stem) == 5 and np.shape(stem)[2] > 1 else "top_i3d"
  if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):
    depth = "resnet50" if "layer1.0.conv3.weight" in sd else "resnet18"
    tsm = any(".net." in k or k.startswith("new_fc.") for k in keys)
    return "tsm_" + depth if tsm else depth
  names = set(sd)
  if any(PARTS["attention_head"][0].match(k) or PARTS["cvae"][0].match(k) for k in names):
    return "generative_attention"
  if any(PARTS["ic_heads"][0].match(k) for k in names):
    return "ic_heads"
  raise ConversionError(
      "cannot tell the model from the checkpoint's names (e.g. "
      f"{', '.join(sorted(state_dict)[:3])}); pass --model ({', '.join(sorted(SPECS))})")


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


def rename_official(key: str) -> str:
  """Official PKD IC / GenKD module names -> the Flax names in dotted form (others unchanged)."""
  for pattern, repl in _RENAMES:
    new = pattern.sub(repl, key, count=1)
    if new != key:
      return new
  return key


def rename_afsd(key: str) -> str:
  """AFSD BDNet names (backbone prefix already stripped) -> the Flax names in dotted form."""
  if not key.startswith(_AFSD_HEAD):
    return "backbone." + key
  head = key[len(_AFSD_HEAD):]
  for pattern, repl in _AFSD_RENAMES:
    new = pattern.sub(repl, head, count=1)
    if new != head:
      return _AFSD_HEAD + new
  return key


def _plain_init(model: Any, inputs: tuple[Any, ...]) -> Any:
  return model.init(jax.random.key(0), *inputs, train=False)


class _Spec(NamedTuple):
  """How a model is converted.

  infer: builder arguments the (normalised) state dict decides.
  inputs: example input shapes `(sd, kwargs) -> tuple` of positional arguments, each a shape tuple
    or a dict of shape tuples.
  init: `(model, inputs as ShapeDtypeStructs) -> variables`.
  rename: to apply to the state dict's keys before mapping (official module names): True for
    `rename_official`, or a function of one key.
  """

  infer: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]
  inputs: Callable[[Mapping[str, np.ndarray], dict[str, Any]], tuple[Any, ...]]
  init: Callable[[Any, tuple[Any, ...]], Any] = _plain_init
  rename: bool | Callable[[str], str] = False


def _infer_resnet(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  kw: dict[str, Any] = {"input_norm": "data_bn.weight" in sd or "data_bn.running_mean" in sd}
  if "fc.weight" in sd:
    kw["num_classes"] = int(sd["fc.weight"].shape[0])
  if "conv1.weight" in sd:
    kw["in_channels"] = int(sd["conv1.weight"].shape[1])
  return kw


def _infer_i3d(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  kw: dict[str, Any] = {}
  if "logits.conv3d.weight" in sd:
    kw["num_classes"] = int(sd["logits.conv3d.weight"].shape[0])
  stem = sd.get("Conv3d_1a_7x7.conv3d.weight")  # [64, C, t, 7, 7]
  # Recorded only when it is not RGB, so RGB checkpoints keep the kwargs they always had and the
  # rebuilt model of a flow checkpoint insists on 2-channel clips.
  if stem is not None and np.ndim(stem) == 5 and int(np.shape(stem)[1]) != 3:
    kw["in_channels"] = int(np.shape(stem)[1])
  return kw


def _infer_tsm(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  # TSM networks have no data_bn option; a checkpoint holding one fails as "unexpected".
  kw = _infer_resnet(sd)
  del kw["input_norm"]
  return kw


def _infer_ic_heads(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """PKD's table decides the rest: IC1 is a 7x7 conv on ResNet-18, 3x3 on ResNet-50, and has
  64 x width / 64 channels on both."""
  kw: dict[str, Any] = {}
  conv = sd.get("ic1.conv.weight")
  if conv is not None:
    kw["backbone"] = "resnet18" if conv.shape[-1] == 7 else "resnet50"
    kw["width"] = int(conv.shape[0])
  if "ic1.fc.weight" in sd:
    kw["num_classes"] = int(sd["ic1.fc.weight"].shape[0])
  return kw


def _ic_inputs(sd: Mapping[str, np.ndarray], kw: dict[str, Any]) -> tuple[Any, ...]:
  from kd_jax.models import ic_head  # pylint: disable=g-import-not-at-top
  width = kw.get("width", 8 if kw.get("tiny") else 64)
  factor = 4 if kw.get("backbone") == "resnet50" else 1
  # The taps' channels: width x 2^i x expansion; 16x16 fits every IC conv (7x7, padding 1).
  taps = {t: (1, 16, 16, width * 2**i * factor) for i, t in enumerate(ic_head.IC_TAPS)}
  return (taps,)


def _infer_attention(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  head = any(k.startswith("attention_head.") for k in sd)
  cvae = any(k.startswith("cvae.") for k in sd)
  kw: dict[str, Any] = {"part": "both" if head and cvae else ("cvae" if cvae else "attention")}
  if "attention_head.conv3d.weight" in sd:
    kw["hidden_channels"] = int(sd["attention_head.conv3d.weight"].shape[0])
  return kw


def _attention_inputs(sd: Mapping[str, np.ndarray], kw: dict[str, Any]) -> tuple[Any, ...]:
  """The feature map `[1, T, H, W, C]` the kernels were made for (Mixed_5c's 8x7x7x1024 when the
  state dict does not say): C and (H, W) from the (1, H, W) convs, T from the head's Linear."""
  t, h, w, c = 8, 7, 7, 1024
  conv = sd.get("attention_head.conv3d.weight", sd.get("cvae.encoder.conv3d.weight"))
  if conv is not None:  # [out, C, 1, H, W]
    c, h, w = int(conv.shape[1]), int(conv.shape[3]), int(conv.shape[4])
  if "attention_head.linear.weight" in sd:
    t = int(sd["attention_head.linear.weight"].shape[0])
  feats = (1, t, h, w, c)
  return (feats, (1, t, c)) if kw.get("part") == "cvae" else (feats,)


def _attention_init(model: Any, inputs: tuple[Any, ...]) -> Any:
  from kd_jax.models import generative_attention  # pylint: disable=g-import-not-at-top
  rngs = {"params": jax.random.key(0), "reparam": jax.random.key(1)}
  if isinstance(model, generative_attention.AttentionHead):
    return model.init(rngs, *inputs)
  return model.init(rngs, *inputs, mode="posterior")  # 'posterior' creates every CVAE parameter


def _infer_afsd(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Backbone kind and input channels as for I3D (no classifier here), and the head's sizes."""
  kw: dict[str, Any] = {}
  stem = sd.get("backbone.Conv3d_1a_7x7.conv3d.weight")  # [64, C, t, 7, 7]
  if stem is not None and np.ndim(stem) == 5:
    kw["backbone"] = "i3d" if np.shape(stem)[2] > 1 else "top_i3d"
    if int(np.shape(stem)[1]) != 3:
      kw["in_channels"] = int(np.shape(stem)[1])
  head = sd.get(_AFSD_HEAD + "conf_head.conv1d.weight")  # [K, C, 3]
  if head is not None:
    kw["num_classes"] = int(np.shape(head)[0])
  pyramid = sd.get(_AFSD_HEAD + "pyramids_0.conv3d.weight")  # [C, 832, 1, h, w]
  if pyramid is not None and int(np.shape(pyramid)[0]) != 512:
    kw["channels"] = int(np.shape(pyramid)[0])
  branch = sd.get(_AFSD_HEAD + "loc_proposal_branch.cur_point_conv.conv1d.weight")  # [P, C, 1]
  if branch is not None and int(np.shape(branch)[0]) != 512:
    kw["proposal_channels"] = int(np.shape(branch)[0])
  return kw


def _afsd_inputs(sd: Mapping[str, np.ndarray], kw: dict[str, Any]) -> tuple[Any, ...]:
  """A 256-frame clip of the crop the pyramid kernel was made for: it spans the whole Mixed_4f
  map, (1, 6, 6) for the official 96x96 crop, and Mixed_4f is 1/16 of the crop."""
  crop = 96
  pyramid = sd.get(_AFSD_HEAD + "pyramids_0.conv3d.weight")
  if pyramid is not None and np.ndim(pyramid) == 5:
    crop = 16 * int(np.shape(pyramid)[3])
  return ((1, 256, crop, crop, kw.get("in_channels") or 3),)


_RESNET = _Spec(_infer_resnet, lambda sd, kw: ((1, 64, 64, kw.get("in_channels", 3)),))
_TSM = _Spec(_infer_tsm, lambda sd, kw: ((1, 2, 64, 64, kw.get("in_channels", 3)),))
_I3D = _Spec(_infer_i3d, lambda sd, kw: ((1, 16, 224, 224, kw.get("in_channels") or 3),))
SPECS: dict[str, _Spec] = {
    "resnet18": _RESNET,
    "resnet50": _RESNET,
    "tsm_resnet18": _TSM,
    "tsm_resnet50": _TSM,
    "i3d": _I3D,
    "top_i3d": _I3D,
    "ic_heads": _Spec(_infer_ic_heads, _ic_inputs, rename=True),
    "generative_attention": _Spec(_infer_attention, _attention_inputs, _attention_init,
                                  rename=True),
    "afsd": _Spec(_infer_afsd, _afsd_inputs, rename=rename_afsd),
}


def _structs(inputs: Any) -> Any:
  """Shape tuples (or lists, after JSON) -> float32 `ShapeDtypeStruct`s, dicts kept."""
  if isinstance(inputs, Mapping):
    return {k: _structs(v) for k, v in inputs.items()}
  if isinstance(inputs, (list, tuple)) and all(isinstance(d, int) for d in inputs):
    return jax.ShapeDtypeStruct(tuple(inputs), jnp.float32)
  return tuple(_structs(v) for v in inputs)


def abstract_variables(model: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables, traced without computing anything."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _abstract(spec: _Spec, model: Any, inputs: tuple[Any, ...]) -> dict[str, Any]:
  return jax.eval_shape(lambda *a: spec.init(model, a), *_structs(inputs))


def _listing(title: str, items: list[str], limit: int = 40) -> str:
  shown = items[:limit] + ([f"... and {len(items) - limit} more"] if len(items) > limit else [])
  return f"{title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown)


def _split_parts(sd: Mapping[str, np.ndarray], model_name: str
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
  """The main model's entries and those of each recognised extra module (`PARTS`)."""
  main: dict[str, np.ndarray] = {}
  parts: dict[str, dict[str, np.ndarray]] = {}
  for key, value in sd.items():
    for name, (pattern, part_model, _) in PARTS.items():
      if part_model != model_name and pattern.match(key):
        parts.setdefault(name, {})[key] = value
        break
    else:
      main[key] = value
  return main, parts


def _unnest_key(key: str, part: str) -> str:
  """The name in `generative_attention(part=...)`: a half built alone is the top-level module."""
  top = {"attention": "attention_head.", "cvae": "cvae."}.get(part)
  return key[len(top):] if top is not None and key.startswith(top) else key


def _convert_one(sd: Mapping[str, np.ndarray], model_name: str, model_kwargs: Mapping[str, Any],
                 *, allow_unexpected: bool, what: str = "") -> Converted:
  spec = SPECS[model_name]
  original = {k: k for k in sd}
  if spec.rename:
    rename = rename_official if spec.rename is True else spec.rename
    original = {rename(k): k for k in sd}
    sd = {rename(k): v for k, v in sd.items()}
  kwargs = {**spec.infer(sd), **model_kwargs}
  inputs = spec.inputs(sd, kwargs)
  if model_name == "generative_attention":
    part = kwargs.get("part", "both")
    original = {_unnest_key(k, part): v for k, v in original.items()}
    sd = {_unnest_key(k, part): v for k, v in sd.items()}
  try:
    model = models.get(model_name, **kwargs)
  except ValueError as e:
    raise ConversionError(f"cannot build {what}{model_name}: {e}") from None
  abstract = _abstract(spec, model, inputs)
  variables = map_state_dict(sd, abstract, allow_unexpected=allow_unexpected,
                             what=f"{what}{model_name}({_kwargs_str(kwargs)})", names=original)
  return Converted(variables, model_name, _jsonable(kwargs), input_shapes=_json_shapes(inputs))


def convert_state_dict(
    state_dict: Mapping[str, Any],
    model_name: str | None = None,
    *,
    prefix: str | None = None,
    allow_unexpected: bool = False,
    **model_kwargs: Any,
) -> Converted:
  """Maps a PyTorch state dict onto the Flax variables of `model_name` (and its extra parts).

  Args:
    state_dict: names to tensors or arrays (a `{"state_dict": ...}` checkpoint is unwrapped).
    model_name: a registered model with a known mapping (see `SPECS`); None infers it from the
      names (`infer_model`).
    prefix: keep only the keys under this prefix (e.g. a sub-network of a larger checkpoint).
    allow_unexpected: ignore checkpoint entries the model has no place for (e.g. an auxiliary head).
    **model_kwargs: builder arguments of the main model; they override what is inferred.

  Returns:
    A `Converted` with float32 numpy variables; the PKD IC heads, a GenKD attention head or CVAE
    found beside the main network come as `parts` (see the module docstring), branches
    recognition never uses are dropped and named in `notes`.

  Raises:
    ConversionError: listing every missing key, unexpected key and shape mismatch at once.
  """
  if model_name is not None and model_name not in SPECS:
    raise ValueError(
        f"no PyTorch mapping for model {model_name!r}; convertible: {', '.join(sorted(SPECS))}")
  raw = state_dict_to_numpy(state_dict)
  if model_name is None:
    model_name = infer_model(
        raw if prefix is None else {k[len(prefix):]: v for k, v in raw.items()
                                    if k.startswith(prefix)})
  sd, notes = drop_unused_branches(normalize_keys(raw, prefix), model_name)
  main_sd, part_sds = _split_parts(sd, model_name)
  main = _convert_one(main_sd, model_name, model_kwargs, allow_unexpected=allow_unexpected)
  parts = {}
  for name, psd in part_sds.items():
    _, part_model, fixed = PARTS[name]
    kw = dict(fixed)
    if name == "ic_heads" and model_name in ("resnet18", "resnet50"):
      kw["backbone"] = model_name  # the heads must fit the taps of this network
    parts[name] = _convert_one(psd, part_model, kw, allow_unexpected=False,
                               what=f"part {name!r}: ")
  return main._replace(parts=types.MappingProxyType(parts), notes=notes)


def map_state_dict(
    state_dict: Mapping[str, np.ndarray],
    abstract: Mapping[str, Any],
    *,
    allow_unexpected: bool = False,
    what: str = "the model",
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
  """Fills the variable tree `abstract` (shapes only) from a normalised PyTorch state dict.

  Works for any module whose Flax names follow the PyTorch names (see the module docstring), e.g.
  a single block in a test. Raises one `ConversionError` listing all missing / unexpected keys and
  shape mismatches; `names` maps renamed keys back to the checkpoint's own for that message.
  """
  names = names or {}
  shown = lambda k: names.get(k, k)  # noqa: E731
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
      mismatched.append(f"{shown(key)}: checkpoint {tuple(state_dict[key].shape)} -> "
                        f"{tuple(value.shape)}"
                        f" in Flax layout, model wants {tuple(leaf.shape)} at {'/'.join(path)}")
      continue
    flat[path] = np.ascontiguousarray(value, dtype=np.float32)
  unexpected = sorted(shown(k) for k in set(state_dict) - used)

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


def _json_shapes(inputs: Any) -> Any:
  if isinstance(inputs, Mapping):
    return {k: _json_shapes(v) for k, v in inputs.items()}
  return [_json_shapes(v) if isinstance(v, (list, tuple, Mapping)) else int(v) for v in inputs]


# ----------------------------------------------------------------------------- checkpoints


def _meta_of(converted: Converted) -> dict[str, Any]:
  return {"model": converted.model_name, "model_kwargs": converted.model_kwargs,
          "input_shapes": converted.input_shapes}


def save_converted(path: str, converted: Converted, *, source: str = "",
                   force: bool = False) -> None:
  """Writes `converted` as an orbax checkpoint (items `variables`, `meta`, `part_<name>`)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if os.path.exists(path):
    if not force:
      raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
  meta = dict(_meta_of(converted), source=source, notes=list(converted.notes),
              parts={n: _meta_of(p) for n, p in converted.parts.items()})
  items = {"variables": ocp.args.StandardSave(converted.variables),
           "meta": ocp.args.JsonSave(meta)}
  for name, part in converted.parts.items():
    items[f"part_{name}"] = ocp.args.StandardSave(part.variables)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(path, ocp.args.Composite(**items), force=force)


def _target(meta: Mapping[str, Any]) -> Any:
  """The variables' shapes of a stored model, rebuilt from its meta (None: not convertible)."""
  spec = SPECS.get(meta["model"])
  if spec is None:
    return None
  model = models.get(meta["model"], **meta["model_kwargs"])
  inputs = meta.get("input_shapes") or spec.inputs({}, meta["model_kwargs"])
  abstract = _abstract(spec, model, inputs)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)


def load_converted(path: str) -> Converted:
  """Reads a checkpoint written by `save_converted` / the CLI; arrays come back as numpy.

  The stored models are rebuilt first, so the restore checks every shape against them.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(path)
  if not os.path.isdir(os.path.join(path, "meta")):
    raise FileNotFoundError(f"{path} is not a converted kd_jax checkpoint (no 'meta' item)")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    meta = ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    part_meta = dict(meta.get("parts") or {})
    items = {"variables": ocp.args.StandardRestore(_target(meta))}
    for name, pm in part_meta.items():
      items[f"part_{name}"] = ocp.args.StandardRestore(_target(pm))
    restored = ckptr.restore(path, ocp.args.Composite(**items))
  as_numpy = lambda tree: jax.tree.map(np.asarray, dict(tree))  # noqa: E731
  parts = {name: Converted(as_numpy(restored[f"part_{name}"]), pm["model"],
                           dict(pm["model_kwargs"]), input_shapes=pm.get("input_shapes"))
           for name, pm in part_meta.items()}
  return Converted(as_numpy(restored["variables"]), meta["model"], dict(meta["model_kwargs"]),
                   types.MappingProxyType(parts), tuple(meta.get("notes") or ()),
                   meta.get("input_shapes"))


def describe(converted: Converted) -> str:
  """One line per module: name, builder arguments, parameter count."""

  def line(label: str, c: Converted) -> str:
    n = sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(c.variables.get("params", {})))
    return f"{label}{c.model_name}({_kwargs_str(c.model_kwargs)}), {n:,} parameters"

  lines = [line("", converted)]
  lines += [line(f"  + part {name}: ", p) for name, p in converted.parts.items()]
  return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
  """`python -m kd_jax.models.convert SRC DST [--model NAME]`."""
  parser = argparse.ArgumentParser(
      prog="python -m kd_jax.models.convert",
      description="Convert a PyTorch state dict into a kd_jax orbax checkpoint: ResNet / TSM "
                  "(CoViAR, PKD, TSM), I3D / Top-I3D with 3-channel RGB or 2-channel optical-flow "
                  "input (pytorch-i3d rgb_imagenet.pt / flow_imagenet.pt, GenKD BDNet), GenKD "
                  "attention heads and CVAEs. The model and its input channels are inferred from "
                  "the checkpoint.")
  parser.add_argument("src", help=".pt / .pth / .pth.tar / .ckpt / .safetensors file")
  parser.add_argument("dst", help="output checkpoint directory")
  parser.add_argument("--model", default=None, choices=sorted(SPECS),
                      help="the main network (default: inferred from the checkpoint's names)")
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
  for note in converted.notes:
    print(f"note: {note}")
  print(f"wrote {args.dst}: {describe(converted)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

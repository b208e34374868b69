"""The ``flow_clip`` grain pipeline: dense optical-flow clips for the flow stream of two-stream I3D.

Each element is one clip ``video`` ``[T, crop, crop, 2]`` float32 (x then y, the key of the RGB
clips so that a method swaps the streams unchanged), ``label`` and ``index`` (int32), from a
``*_flow`` dataset (:mod:`kd_jax.data.builders.flow`). As the official flow loader (genkd.md
section 7.1, bryanyzhu/two-stream-pytorch's ``video_transforms``):

* train: one random offset of ``clip_len`` consecutive fields; TSN's multi-scale crop at the 13
  fixed positions with scales ``(1, .875, .75)`` (``transforms.sample_multiscale_crop``), resized
  bilinearly to ``crop`` and rounded to uint8 as OpenCV resizes the stored flow images (values
  not rescaled with the crop); horizontal flip with p = 0.5; then ``(q / 255 - 0.5) / 0.226``
  (:func:`kd_jax.data.flow.normalize_flow`);
* eval: the centred offset and the centre crop of the stored fields (``resize_size``: resize to
  that square first);
* videos shorter than the clip are loop-padded (``sampling.dense_clip_indices``), as ``rgb_clip``.

The flip (``flow_flip``): ``negate_x`` (default) mirrors the field and negates its x component,
since a mirrored motion moves the other way (issue 18); on the stored uint8 that is
``q_x -> 255 - q_x``, i.e. the normalised x channel changes sign exactly. ``mirror`` only mirrors,
as the official ``RandomHorizontalFlip`` (``np.fliplr`` of the stacked flow images) that GenKD's
flow models were trained with.

Training, evaluation and the whole-epoch form follow :mod:`kd_jax.data.pipeline` and
:mod:`kd_jax.data.streams` (same order, seeding, process slicing, padding and ``mask``), and
:func:`open_flow_streams` returns a :class:`kd_jax.data.streams.Streams` of flow clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import grain
import numpy as np

from kd_jax.data import flow as flow_lib
from kd_jax.data import pipeline
from kd_jax.data import prepare
from kd_jax.data import sampling
from kd_jax.data import sources
from kd_jax.data import streams
from kd_jax.data import transforms
from kd_jax.data.builders import flow as flow_builders
from kd_jax.data.builders.common import DatasetError
from kd_jax.errors import UserError

FLOW_SCALES = (1.0, 0.875, 0.75)  # genkd.md section 7.1: the flow stream's scale ratios
FLOW_FLIPS = ("negate_x", "mirror")
FLOW_DATASETS = ("ucf101_flow", "hmdb51_flow", "synthetic_actions_flow")

# The RGB pipelines' helpers, reused so that both streams order, seed, slice and open alike.
# pylint: disable=protected-access
_dataset_name, _video_name = pipeline._dataset_name, pipeline._video_name
_generate_once, _source = sources._generate_once, sources._source
# pylint: enable=protected-access


@dataclasses.dataclass(frozen=True)
class FlowClipSpec:
  """What one flow clip looks like.

  Attributes:
    clip_len: flow fields per clip (64 in GenKD).
    stride: step between fields.
    crop_size: side of the square network input.
    resize_size: eval fields are resized to this square first, then centre-cropped; None: the
      centre crop of the stored fields (GenKD).
    flip: random horizontal flips in training; None: on unless the dataset is direction-sensitive
      (``synthetic_actions_flow``).
    flow_flip: ``negate_x`` (mirror and negate x) or ``mirror`` (the official loader's); see the
      module docstring.
    scales: multi-scale crop ratios.
    fix_crop: crops at TSN's 13 fixed positions (GenKD) instead of anywhere.
  """

  clip_len: int = 64
  stride: int = 1
  crop_size: int = 224
  resize_size: int | None = None
  flip: bool | None = None
  flow_flip: Literal["negate_x", "mirror"] = "negate_x"
  scales: tuple[float, ...] = FLOW_SCALES
  fix_crop: bool = True
  kind: str = "flow_clip"

  def __post_init__(self):
    if self.flow_flip not in FLOW_FLIPS:
      raise ValueError(f"flow_flip must be one of {', '.join(FLOW_FLIPS)}, got {self.flow_flip!r}")
    if min(self.clip_len, self.stride, self.crop_size) < 1:
      raise ValueError("clip_len, stride and crop_size must be >= 1")
    object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))


def flow_input(q: np.ndarray, spec: FlowClipSpec, *, train: bool,
               rng: np.random.Generator | None = None, flip: bool = False) -> np.ndarray:
  """Stored uint8 fields ``[T, H, W, 2]`` to network input ``[T, crop, crop, 2]`` float32.

  Train: multi-scale crop (``spec.scales``), bilinear resize, flip with p = 0.5 when ``flip``
  (draws from ``rng``: the crop size, the position, then the flip); eval: centre crop.
  """
  height, width = q.shape[-3], q.shape[-2]
  c = spec.crop_size
  flipped = False
  if train:
    box = transforms.sample_multiscale_crop(rng, height, width, c, scales=spec.scales,
                                            fix_crop=spec.fix_crop)
    flipped = flip and bool(rng.random() < 0.5)
    y = transforms.resized_crop(q, c, box, flip=flipped)
  elif spec.resize_size is None:
    y = transforms.resized_crop(q, c, ((height - c) // 2, (width - c) // 2, c, c))
  else:
    y = transforms.center_crop(transforms.resized_crop(q, spec.resize_size), c)
  # The official loader resizes the uint8 flow images with OpenCV: uint8 results.
  x = flow_lib.normalize_flow(transforms.round_uint8(y).astype(np.uint8))
  if flipped and spec.flow_flip == "negate_x":
    np.negative(x[..., 0], out=x[..., 0])
  return x


class DecodeFlow(pipeline.DecodeVideo):
  """Record -> ``{'video', 'label', 'index'}``; random offset, crop and flip when ``train``
  (``spec`` a :class:`FlowClipSpec`)."""

  def decode(self, index: int, record: Mapping[str, Any],
             rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    stored = flow_builders.StoredFlow(record["flow"], name=_video_name(record, index))
    idx = sampling.dense_clip_indices(stored.num_frames, self.spec.clip_len, train=self.train,
                                      rng=rng, stride=self.spec.stride)
    x = flow_input(stored.frames(idx), self.spec, train=self.train, rng=rng, flip=self.flip)
    return {"video": x, "label": np.int32(record["label"]), "index": np.int32(index)}


def resolve_flip(spec: FlowClipSpec, source) -> bool:
  """The spec's flip, or off for the flow of a direction-sensitive dataset."""
  if spec.flip is not None:
    return spec.flip
  name = _dataset_name(source) or ""
  return name.removesuffix("_flow") not in pipeline.DIRECTION_SENSITIVE


def make_train(source, spec: FlowClipSpec, **kwargs: Any) -> grain.IterDataset:
  """Shuffled, repeated, augmented flow clips: :func:`kd_jax.data.pipeline.make_train` (same
  order, per-position seeding, process slicing) with the flow decoder."""
  decoder = DecodeFlow(spec, train=True, flip=resolve_flip(spec, source))
  return pipeline.make_train(source, spec, decoder=decoder, **kwargs)


def make_train_epochs(source, spec: FlowClipSpec, **kwargs: Any) -> grain.IterDataset:
  """Whole epochs of flow clips, the last batch padded, with ``mask``:
  :func:`kd_jax.data.streams.make_train_epochs` with the flow decoder."""
  decoder = DecodeFlow(spec, train=True, flip=resolve_flip(spec, source))
  return streams.make_train_epochs(source, spec, decoder=decoder, **kwargs)


def make_eval(source, spec: FlowClipSpec, **kwargs: Any) -> grain.IterDataset:
  """One deterministic, padded pass (``mask`` False on padding):
  :func:`kd_jax.data.pipeline.make_eval` with the flow decoder."""
  return pipeline.make_eval(source, spec, decoder=DecodeFlow(spec, train=False, flip=False),
                            **kwargs)


class FlowStreams(streams.Streams):
  """:class:`kd_jax.data.streams.Streams` of flow clips: the same ``train()`` / ``eval()``."""

  def decoder(self, spec: FlowClipSpec, source: Any, *, train: bool) -> "DecodeFlow":
    return DecodeFlow(spec, train=train, flip=train and resolve_flip(spec, source))


def flow_name(name: str) -> str:
  """The flow dataset of an RGB one: ``ucf101`` -> ``ucf101_flow`` (a ``*_flow`` name stays)."""
  flow = name if name.endswith("_flow") else f"{name}_flow"
  if flow not in FLOW_DATASETS:
    raise DatasetError(f"{name} has no flow dataset; flow datasets are {', '.join(FLOW_DATASETS)}")
  return flow


def open_flow_splits(dcfg: Any, *, sized: bool, flow_method: str | None = None) -> sources.Splits:
  """The flow dataset of a method's ``config.data`` (its RGB dataset's name, config, size, data
  directory and splits), generated on first use where ``synthetic_actions`` would be.

  ``flow_method``: the optical flow the dataset must hold (None: any); generated with it on
  first use, and a prepared copy made with another method is an error (the method is not part of
  the dataset's name, so both cannot sit in one data directory).
  """
  name = flow_name(dcfg.name)
  data_dir = prepare.resolve_data_dir(sources.config_data_dir(dcfg.data_dir))
  if sized:
    if name != "synthetic_actions_flow":
      raise DatasetError(f"a synthetic size applies to synthetic_actions only, not {dcfg.name}")
    size = {k: int(v) for k, v in dcfg.synthetic.to_dict().items()}
    full = f"{name}/{prepare.synthetic_config_name(**size)}"
  else:
    full = f"{name}/{dcfg.config}" if dcfg.config else name

  def make():
    return prepare.get_builder(full, data_dir=data_dir, flow_method=flow_method or None)

  builder = make()
  if dcfg.auto_prepare and builder.name in prepare.GENERATED:
    builder = _generate_once(make, builder, workers=int(dcfg.prepare_workers))
  elif not builder.is_prepared():
    hint = (" (or set --config.data.auto_prepare=True to generate it on first use)"
            if builder.name in prepare.GENERATED else "")
    raise DatasetError(f"{builder.name}/{builder.builder_config.name} is not prepared in "
                       f"{builder.data_dir_root}; run: {prepare.command(builder)}{hint}")
  fields = sources.DEFAULT_SPLIT_FIELDS
  train = _source(builder, dcfg.train_split, fields[0])
  if flow_method and len(train):
    stored = flow_builders.StoredFlow(train[0]["flow"]).method
    if stored != flow_method:
      raise DatasetError(
          f"{builder.name}/{builder.builder_config.name} in {builder.data_dir_root} holds "
          f"{stored} flow, not the {flow_method} this run asks for: remove "
          f"{builder.data_dir} to rebuild it, or use another data_dir")
  evaluation = _source(builder, dcfg.eval_split, fields[1])
  return sources.Splits(builder, train, evaluation, list(builder.info.features["label"].names))


def open_flow_streams(dcfg: Any, *, sized: bool | None = None, holdout: float = 0.0,
                      clip_len: int = 64, flow_flip: str | None = None,
                      flow_method: str | None = None, **spec_fields: Any) -> FlowStreams:
  """The flow counterpart of :func:`kd_jax.data.streams.open_streams` for ``config.data``.

  Opens ``<config.data.name>_flow`` with the same config (or synthetic size), data directory and
  splits, and ``flow_clip`` clips of ``clip_len`` fields at ``config.data.crop_size`` (eval:
  ``config.data.resize_size`` as for RGB, 0 = the centre crop of the stored fields).

  Args:
    dcfg: a method's ``config.data``; ``flip`` as for RGB; an optional ``flow_flip`` field.
    sized: a ``synthetic_actions_flow`` of the size in ``dcfg.synthetic``; None: when the config
      is ``custom``.
    holdout: share of training videos held out as ``val``. :mod:`kd_jax.data.holdout` picks by
      position and TFDS orders records by video id, so these are the RGB stream's held-out videos
      when both datasets hold the same videos.
    clip_len: fields per clip.
    flow_flip: ``negate_x`` or ``mirror``; default ``dcfg.flow_flip``, else ``negate_x``.
    flow_method: the flow the dataset must hold (``tvl1``, ``farneback``; None: any), see
      :func:`open_flow_splits`.
    **spec_fields: other :class:`FlowClipSpec` fields (``stride``, ``scales``, ...).

  Raises:
    UserError: the dataset has no flow variant, is not prepared, lacks a split; a bad flip.
  """
  if sized is None:
    sized = dcfg.name in ("synthetic_actions", "synthetic_actions_flow") and dcfg.config == "custom"
  try:
    opened = open_flow_splits(dcfg, sized=sized, flow_method=flow_method)
    flip = sources.parse_flip(dcfg.flip)
    spec = FlowClipSpec(clip_len=clip_len, crop_size=dcfg.crop_size,
                        resize_size=dcfg.resize_size or None, flip=flip,
                        flow_flip=flow_flip or dcfg.get("flow_flip", "negate_x"), **spec_fields)
  except (DatasetError, ValueError) as e:
    raise UserError(str(e)) from None
  return streams.make_streams(dcfg, opened, spec, holdout=holdout, cls=FlowStreams)

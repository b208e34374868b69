"""grain input pipelines: from a TFDS data source of encoded videos to per-host batches.

Three representations (``kind``):

* ``compressed``: CoViAR's compressed domain, ``num_segments`` TSN segments per video, each with the
  I-frame ``iframe`` ``[S, h, w, 3]``, accumulated motion vectors ``mv`` ``[S, h, w, 2]`` and
  accumulated residual ``residual`` ``[S, h, w, 3]`` (pkd_wise.md sections 8.2-8.4);
* ``rgb_clip``: one dense clip ``video`` ``[T, h, w, 3]`` for 3D CNNs (genkd.md section 7.1);
* ``rgb_segments``: TSN segments ``video`` ``[S, h, w, 3]`` for TSM (spectral_kd.md section 7).

``ClipSpec.augment='device'`` (compressed only): the host decodes and draws the augmentation but
does not apply it; each modality comes as its uncropped segments and geometry (``<m>_raw``,
``<m>_box``, ``<m>_view``, ``<m>_flip``), which :mod:`kd_jax.data.device_augment` turns into the
same inputs on the accelerator when the engine moves the batch there.

Every batch also holds ``label`` (int32) and ``index`` (int32, the record index in the source); eval
batches add ``mask`` (bool, False on padding). Arrays are float32 and normalised.

Training (:func:`make_train`): seeded shuffle (or, for CoViAR's loader, draws with replacement:
``ClipSpec.train_order``), repeat, random augmentation, then per-process slicing
``[process_index::process_count]``, per-host batches, optional worker processes. Every element's
randomness comes from the seed and its position in the global stream, so the global data order and
augmentation do not depend on the number of processes or workers. Evaluation (:func:`make_eval`):
deterministic, padded so that every process gets the same number of full batches, padding marked by
``mask``; CoViAR's test-time I-frame jitter (``ClipSpec.iframe_jitter='train_and_test'``) is drawn
per video from ``ClipSpec.test_jitter_seed`` and the record index, so it is reproducible too. Both
return a grain ``IterDataset``; ``iter(ds)`` has ``get_state()`` / ``set_state()`` for checkpoints
(restoring needs the same process count).

The engine turns host batches into global ``jax.Array`` s (``kd_jax.train.mesh.host_to_global``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import grain
import jax
import numpy as np

from kd_jax.data import codec
from kd_jax.data import device_augment
from kd_jax.data import sampling as sampling_lib
from kd_jax.data import transforms
from kd_jax.errors import UserError

Kind = Literal["compressed", "rgb_clip", "rgb_segments"]
KINDS = ("compressed", "rgb_clip", "rgb_segments")
# Datasets whose classes depend on left/right motion: a horizontal flip would change the label.
DIRECTION_SENSITIVE = ("synthetic_actions", "something_something_v2", "jester")
IFRAME_JITTERS = ("off", "train", "train_and_test")
AUGMENTS = ("host", "device")
TRAIN_ORDERS = sampling_lib.TRAIN_ORDERS
_TEST_JITTER_STREAM = 0x4A17  # keeps test-time jitter draws apart from any other seeded stream


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What one element of a pipeline looks like.

  Attributes:
    kind: ``compressed``, ``rgb_clip`` or ``rgb_segments``.
    num_segments: TSN segments (compressed, rgb_segments).
    clip_len: frames per dense clip (rgb_clip).
    stride: frame step within a dense clip (rgb_clip).
    crop_size: side of the square network input.
    resize_size: eval frames are resized to this square first, then centre-cropped; None: crop the
      stored frames directly.
    flip: random horizontal flips in training; None: on unless the dataset is direction-sensitive
      (``synthetic_actions``).
    sampling: compressed only; ``fused`` (PKD's ``dataset_fuse.py``: I-frame and P-frame of one
      GOP per segment, one decode) or ``coviar`` (CoViAR's ``dataset.py``: I-frame and P-frame
      sampled independently per segment).
    modalities: compressed only; which of ``iframe``, ``mv``, ``residual`` to produce.
    fix_crop: multi-scale crops at TSN's 13 fixed positions (GenKD, TSM) instead of anywhere
      (CoViAR).
    iframe_jitter: CoViAR's loader only (compressed, ``sampling='coviar'``): HLS colour jitter of
      each I-frame segment (:func:`transforms.hls_jitter`, offsets uniform in +-36 H, +-50 L,
      +-50 S, independent per segment) in ``train`` only, in ``train_and_test`` (the official
      ``dataset.py``, which jitters whatever ``is_train``) or ``off``. The fused loader
      (``dataset_fuse.py``) and the RGB kinds never jitter. Test-time offsets of record ``i`` come
      from ``default_rng([0x4A17, test_jitter_seed, i])``: the same in every run and for every
      batch size, process count and worker count.
    train_order: CoViAR's loader only: training videos as a seeded ``permutation`` an epoch, or
      drawn ``with_replacement`` (the official ``dataset.py``: ``random.choice(video_list)``);
      :class:`kd_jax.data.sampling.TrainOrder`. The fused loader (``dataset_fuse.py`` indexes its
      list under ``DataLoader(shuffle=True)``) and the RGB kinds always permute.
    test_jitter_seed: seeds the test-time jitter (see ``iframe_jitter``).
    augment: compressed only: ``host`` crops, flips and normalises in the loader; ``device``
      leaves that to the accelerator (:mod:`kd_jax.data.device_augment`, applied by the engine):
      elements carry the decoded segments and the drawn geometry instead, with the same random
      draws in the same order.
  """

  kind: Kind = "compressed"
  num_segments: int = 3
  clip_len: int = 64
  stride: int = 1
  crop_size: int = 224
  resize_size: int | None = 256
  flip: bool | None = None
  sampling: Literal["fused", "coviar"] = "fused"
  modalities: tuple[str, ...] = sampling_lib.MODALITIES
  fix_crop: bool = False
  iframe_jitter: Literal["off", "train", "train_and_test"] = "off"
  train_order: Literal["permutation", "with_replacement"] = "permutation"
  test_jitter_seed: int = 0
  augment: Literal["host", "device"] = "host"

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
    if self.sampling not in ("fused", "coviar"):
      raise ValueError(f"sampling must be 'fused' or 'coviar', got {self.sampling!r}")
    bad = set(self.modalities) - set(sampling_lib.MODALITIES)
    if bad or not self.modalities:
      raise ValueError(f"modalities must be a non-empty subset of {sampling_lib.MODALITIES}, "
                       f"got {self.modalities}")
    if min(self.num_segments, self.clip_len, self.stride, self.crop_size) < 1:
      raise ValueError("num_segments, clip_len, stride and crop_size must be >= 1")
    if self.iframe_jitter not in IFRAME_JITTERS:
      raise ValueError(f"iframe_jitter must be one of {IFRAME_JITTERS}, got {self.iframe_jitter!r}")
    if self.train_order not in TRAIN_ORDERS:
      raise ValueError(f"train_order must be one of {TRAIN_ORDERS}, got {self.train_order!r}")
    if self.augment not in AUGMENTS:
      raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
    if self.augment == "device" and self.kind != "compressed":
      raise ValueError(f"augment='device' is for kind 'compressed' only, not {self.kind!r}; "
                       "use augment='host'")


def _coviar_loader(spec: ClipSpec) -> bool:
  return spec.kind == "compressed" and spec.sampling == "coviar"


def jitters_iframes(spec: ClipSpec, train: bool) -> bool:
  """Whether ``spec``'s I-frames get CoViAR's HLS jitter in training (``train``) or at test time."""
  wanted = spec.iframe_jitter == "train_and_test" or (train and spec.iframe_jitter == "train")
  return wanted and _coviar_loader(spec) and "iframe" in spec.modalities


def train_order(spec: ClipSpec) -> str:
  """The order in which ``spec``'s training stream visits the videos (``ClipSpec.train_order``
  for CoViAR's loader, ``permutation`` for every other)."""
  return spec.train_order if _coviar_loader(spec) else "permutation"


def loader_options(dcfg: Any, kind: str | None = None) -> dict[str, str]:
  """The ClipSpec fields of a ``config.data`` block's loader switches (``iframe_color_jitter``,
  ``train_order``, ``augment``; defaults off / permutation / host where a block lacks them),
  checked; ``kind``: the clip kind they are for (None: not checked against one).

  Raises:
    UserError: a value that is not one of the choices, or ``augment='device'`` where it cannot
      apply (a kind other than ``compressed``; ``cache_views > 0``, whose caches hold augmented
      views), in one line.
  """
  jitter = str(dcfg.get("iframe_color_jitter", "off"))
  order = str(dcfg.get("train_order", "permutation"))
  augment = str(dcfg.get("augment", "host"))
  if jitter not in IFRAME_JITTERS:
    raise UserError(f"config.data.iframe_color_jitter must be one of {', '.join(IFRAME_JITTERS)}, "
                    f"got {jitter!r}")
  if order not in TRAIN_ORDERS:
    raise UserError(f"config.data.train_order must be one of {', '.join(TRAIN_ORDERS)}, "
                    f"got {order!r}")
  if augment not in AUGMENTS:
    raise UserError(f"config.data.augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
  if augment == "device":
    if kind is not None and kind != "compressed":
      raise UserError(f"config.data.augment='device' is for compressed-video inputs only; this "
                      f"method reads {kind} clips, so use config.data.augment='host'")
    if int(dcfg.get("cache_views", 0) or 0) > 0:
      raise UserError("config.data.augment='device' streams raw frames, but "
                      f"config.data.cache_views={dcfg.cache_views} caches augmented views; set "
                      "config.data.cache_views=0 or config.data.augment='host'")
  return {"iframe_jitter": jitter, "train_order": order, "augment": augment}


def make_spec(kind: Kind, **overrides: Any) -> ClipSpec:
  """A ClipSpec with the published defaults of ``kind``, then ``overrides``.

  * compressed: 3 segments, 224 crops anywhere, eval resize 256 -> crop 224 (CoViAR / PKD);
  * rgb_clip: 64 frames, 224 crops at fixed positions, eval centre crop of the stored frames (GenKD);
  * rgb_segments: 8 segments, 224 crops at fixed positions, eval resize 256 -> crop 224 (TSM).
  """
  defaults = {
      "compressed": {},
      "rgb_clip": dict(resize_size=None, fix_crop=True),
      "rgb_segments": dict(num_segments=8, fix_crop=True),
  }[kind]
  if "modalities" in overrides:
    overrides["modalities"] = tuple(overrides["modalities"])
  return ClipSpec(kind=kind, **{**defaults, **overrides})


# -- Per-element decoding and augmentation -------------------------------------------------------


def _geometry(x: np.ndarray, spec: ClipSpec, train: bool, rng: np.random.Generator | None,
              scales: Sequence[float], is_mv: bool = False, flip: bool = True) -> np.ndarray:
  """Train: multi-scale crop and random flip; eval: resize then centre crop."""
  if train:
    x = transforms.multiscale_crop(x, rng, spec.crop_size, scales=scales, fix_crop=spec.fix_crop)
    if flip:
      x, _ = transforms.random_hflip(x, rng, is_mv=is_mv)
    return x
  if spec.resize_size is not None:
    x = transforms.resize(x, spec.resize_size)
  return transforms.center_crop(x, spec.crop_size)


_NORMALIZE = {"iframe": transforms.normalize_rgb, "mv": transforms.normalize_mv,
              "residual": transforms.normalize_residual}


def _compressed_input(frames: np.ndarray | list[np.ndarray], modality: str, spec: ClipSpec,
                      train: bool, rng: np.random.Generator | None, flip: bool) -> np.ndarray:
  """One modality's segments to network input: ``_geometry`` then its normalisation, fused.

  The same values as ``normalize_<m>(_geometry(stack(frames)))`` (the same draws from ``rng``,
  in the same order): the crop, resize and flip are one :func:`transforms.resized_crop` into
  float32, the I-frame's uint8 rounding happens in place, and the normalisation writes over it.
  """
  first = frames[0]
  height, width = first.shape[-3], first.shape[-2]
  if train:
    scales = transforms.IFRAME_SCALES if modality == "iframe" else transforms.MV_RESIDUAL_SCALES
    box = transforms.sample_multiscale_crop(rng, height, width, spec.crop_size, scales=scales,
                                            fix_crop=spec.fix_crop)
    flipped = flip and bool(rng.random() < 0.5)  # random_hflip's draw
    y = transforms.resized_crop(frames, spec.crop_size, box, flip=flipped)
  else:
    flipped = False
    if spec.resize_size is None:  # the centre crop of the stored frames
      c = spec.crop_size
      y = transforms.resized_crop(frames, c, ((height - c) // 2, (width - c) // 2, c, c))
    else:
      y = transforms.resized_crop(frames, spec.resize_size)
      y = np.ascontiguousarray(transforms.center_crop(y, spec.crop_size))
  if modality == "iframe":
    transforms.round_uint8(y)  # resize's uint8 result
  elif modality == "mv" and flipped:
    np.negative(y[..., 0], out=y[..., 0])
  return _NORMALIZE[modality](y, out=y)


def _stacked(frames: np.ndarray | list[np.ndarray], dtype: Any) -> np.ndarray:
  """The segments as one ``dtype`` array ``[S, H, W, C]``: one pass, casting while copying."""
  if isinstance(frames, np.ndarray) and frames.dtype == dtype:
    return np.ascontiguousarray(frames)
  out = np.empty((len(frames),) + frames[0].shape, dtype)
  for k, f in enumerate(frames):
    np.copyto(out[k], f, casting="unsafe")  # exact: see device_augment.RAW_DTYPES
  return out


def _raw_input(frames: np.ndarray | list[np.ndarray], modality: str, spec: ClipSpec, train: bool,
               rng: np.random.Generator | None, flip: bool) -> dict[str, np.ndarray]:
  """One modality's segments and drawn geometry for :mod:`device_augment` (``augment='device'``).

  The draws of :func:`_compressed_input` (the crop box, then the flip), in the same order; the eval
  geometry of the host path as ``(box, view)``: the whole frame resized to ``resize_size`` and its
  centre ``crop_size`` window, or the centre window of the stored frames.
  """
  first = frames[0]
  height, width = first.shape[-3], first.shape[-2]
  c = spec.crop_size
  flipped = False
  if train:
    scales = transforms.IFRAME_SCALES if modality == "iframe" else transforms.MV_RESIDUAL_SCALES
    box = transforms.sample_multiscale_crop(rng, height, width, c, scales=scales,
                                            fix_crop=spec.fix_crop)
    flipped = flip and bool(rng.random() < 0.5)  # random_hflip's draw
    view = (c, 0, c)
  elif spec.resize_size is None:
    box, view = ((height - c) // 2, (width - c) // 2, c, c), (c, 0, c)
    if c > height or c > width:
      raise ValueError(f"crop {c}x{c} exceeds frames of shape {first.shape}")
  else:
    r = spec.resize_size
    box, view = (0, 0, height, width), (r, (r - c) // 2, c)
    if c > r:
      raise ValueError(f"crop {c}x{c} exceeds frames resized to {r}x{r}")
  m = modality
  return {m + device_augment.RAW: _stacked(frames, device_augment.RAW_DTYPES[m]),
          m + device_augment.BOX: np.asarray(box, np.int32),
          m + device_augment.VIEW: np.asarray(view, np.int32),
          m + device_augment.FLIP: np.bool_(flipped)}


def _compressed(video: codec.CompressedVideo, spec: ClipSpec, train: bool,
                rng: np.random.Generator | None, flip: bool,
                jitter_rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  n, gops, s = video.num_frames, video.gop_starts, spec.num_segments
  want = set(spec.modalities)
  if spec.sampling == "fused":
    i_idx, p_idx = sampling_lib.fused_indices(n, gops, s, train=train, rng=rng)
  else:
    i_idx = sampling_lib.coviar_indices(n, gops, s, modality="iframe", train=train, rng=rng)
    p_idx = sampling_lib.coviar_indices(n, gops, s, modality="mv", train=train, rng=rng)
  # Segments stay lists of frames: the crop reads them where they are (no stacked copy).
  raw = {}
  if "residual" in want:
    reps = [video.representations(int(p)) for p in p_idx]
    raw["residual"] = [r.residual for r in reps]
    raw["mv"] = [r.motion_vectors for r in reps]
    if spec.sampling == "fused":  # the P-frame's GOP starts at the sampled I-frame
      raw["iframe"] = [r.iframe for r in reps]
  elif "mv" in want:
    raw["mv"] = [video.motion_vectors(int(p)) for p in p_idx]
  if "iframe" in want and "iframe" not in raw:
    raw["iframe"] = [video.iframe(int(i)) for i in i_idx]
  if jitter_rng is not None and "iframe" in want:  # CoViAR jitters the whole frame, before any crop
    raw["iframe"] = transforms.hls_jitter(np.stack(raw["iframe"]),
                                          transforms.sample_hls_offsets(jitter_rng, s))
  # Each modality gets its own crop and flip, as CoViAR's and PKD's loaders.
  if spec.augment == "device":
    out = {}
    for m in ("iframe", "mv", "residual"):
      if m in want:
        out.update(_raw_input(raw[m], m, spec, train, rng, flip))
    return out
  return {m: _compressed_input(raw[m], m, spec, train, rng, flip)
          for m in ("iframe", "mv", "residual") if m in want}


def _rgb(video: codec.CompressedVideo, spec: ClipSpec, train: bool,
         rng: np.random.Generator | None, flip: bool) -> dict[str, np.ndarray]:
  if spec.kind == "rgb_clip":
    idx = sampling_lib.dense_clip_indices(video.num_frames, spec.clip_len, train=train, rng=rng,
                                      stride=spec.stride)
  else:
    idx = sampling_lib.segment_indices(video.num_frames, spec.num_segments, train=train, rng=rng)
  frames = video.frames(idx)
  x = _geometry(frames, spec, train, rng, transforms.IFRAME_SCALES, flip=flip)
  return {"video": transforms.normalize_rgb(x)}


class DecodeVideo(grain.transforms.RandomMap):
  """Record -> network inputs; random sampling and augmentation when ``train``."""

  def __init__(self, spec: ClipSpec, *, train: bool, flip: bool):
    self.spec, self.train, self.flip = spec, train, flip

  def random_map(self, element, rng: np.random.Generator):
    index, record = element
    return self.decode(index, record, rng)

  def decode(self, index: int, record: Mapping[str, Any],
             rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    video = codec.CompressedVideo(record["video"], name=_video_name(record, index))
    if self.spec.kind == "compressed":
      jitter_rng = None
      if jitters_iframes(self.spec, self.train):
        jitter_rng = rng if self.train else np.random.default_rng(
            [_TEST_JITTER_STREAM, self.spec.test_jitter_seed, int(index)])
      out = _compressed(video, self.spec, self.train, rng, self.flip, jitter_rng)
    else:
      out = _rgb(video, self.spec, self.train, rng, self.flip)
    out["label"] = np.int32(record["label"])
    out["index"] = np.int32(index)
    return out


class _DecodeEval(grain.transforms.Map):
  """Padded position -> decoded element with ``mask``; positions past the end repeat real records.

  ``decoder``: anything with ``decode(index, record)`` (:class:`DecodeVideo` without augmentation,
  or another stream's decoder).
  """

  def __init__(self, source, decoder):
    self.source, self.decoder = source, decoder

  def map(self, position: int):
    index = int(position) % len(self.source)
    out = self.decoder.decode(index, self.source[index])
    out["mask"] = np.bool_(position < len(self.source))
    return out


def _video_name(record: Mapping[str, Any], index: int) -> str:
  vid = record.get("video_id", b"")
  vid = vid.decode() if isinstance(vid, bytes) else str(vid)
  return f"record {index} ({vid})" if vid else f"record {index}"


class _Lookup(grain.transforms.Map):
  """Record index -> (index, record): elements keep their identity through shuffles."""

  def __init__(self, source):
    self.source = source

  def map(self, index: int):
    return int(index), self.source[int(index)]


def _indexed(source) -> grain.MapDataset:
  return grain.MapDataset.range(len(source)).map(_Lookup(source))


# -- Datasets ------------------------------------------------------------------------------------


def _dataset_name(source) -> str | None:
  info = getattr(source, "dataset_info", None)
  return getattr(info, "name", None)


def resolve_flip(spec: ClipSpec, source) -> bool:
  """The spec's flip setting, or its default for the source's dataset."""
  if spec.flip is not None:
    return spec.flip
  return _dataset_name(source) not in DIRECTION_SENSITIVE


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} is not in [0, {count})")
  return index, count


def check_source(source, batch_size: int) -> None:
  """A ``ValueError`` for a batch size below 1 or an empty source."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if len(source) == 0:
    raise ValueError("the data source is empty")


def _finish(ds: grain.MapDataset, num_workers: int, read_threads: int,
            prefetch: int) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it


def make_train(source, spec: ClipSpec, *, batch_size: int, seed: int, num_epochs: int | None = None,
               num_workers: int = 0, read_threads: int = 1, prefetch: int = 2,
               process_index: int | None = None, process_count: int | None = None,
               decoder: grain.transforms.RandomMap | None = None) -> grain.IterDataset:
  """The training pipeline: shuffled, repeated, augmented, sharded per process, batched per host.

  Args:
    source: a random-access source of records (``builders.data_source(...)``).
    spec: what to produce (:func:`make_spec`).
    batch_size: per-host batch size (global batch = batch_size x process_count).
    seed: the same on every process; it fixes the order and the augmentation.
    num_epochs: None repeats forever. With ``train_order(spec) == 'with_replacement'`` an epoch is
      ``len(source)`` independent uniform draws (CoViAR's ``random.choice``), indexed by position
      (:class:`kd_jax.data.sampling.TrainOrder`), so restoring stays bit-identical.
    num_workers: grain worker processes (0: decode in this process).
    read_threads: threads per worker (or in this process) computing batches.
    prefetch: batches buffered per worker.
    process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.
    decoder: turns ``(index, record)`` into an element (default :class:`DecodeVideo` of ``spec``;
      another stream, e.g. optical flow, passes its own).

  Returns:
    A grain IterDataset of dict batches with a leading axis of ``batch_size`` (incomplete batches
    are dropped).
  """
  index, count = _process(process_index, process_count)
  check_source(source, batch_size)
  if decoder is None:
    decoder = DecodeVideo(spec, train=True, flip=resolve_flip(spec, source))
  if train_order(spec) == "permutation":
    ds = _indexed(source).seed(seed).shuffle().repeat(num_epochs)
  else:
    draws = sampling_lib.TrainOrder(len(source), seed, order=train_order(spec),
                                    num_epochs=num_epochs)
    ds = grain.MapDataset.source(draws).seed(seed).map(_Lookup(source))
  # Augment before slicing: an element's randomness then depends only on its global position.
  ds = ds.random_map(decoder)
  ds = ds[index::count]
  ds = ds.batch(batch_size, drop_remainder=True)
  return _finish(ds, num_workers, read_threads, prefetch)


def eval_steps(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches each process yields in evaluation: enough for every example, equal on all processes."""
  return max(1, math.ceil(num_examples / (batch_size * process_count)))


def make_eval(source, spec: ClipSpec, *, batch_size: int, num_workers: int = 0,
              read_threads: int = 1, prefetch: int = 2, process_index: int | None = None,
              process_count: int | None = None, decoder: Any = None) -> grain.IterDataset:
  """The evaluation pipeline: one deterministic pass, padded, the same batch count on every process.

  Process ``p`` of ``P`` gets positions ``p, p + P, ...`` of the padded sequence; positions past the
  end of the source repeat real records with ``mask`` False, so shapes never change and every record
  is seen exactly once with ``mask`` True.

  ``decoder``: ``decode(index, record)`` of each element (default :class:`DecodeVideo` of ``spec``
  without augmentation).

  Returns:
    A grain IterDataset of ``eval_steps(len(source), batch_size, P)`` dict batches.
  """
  index, count = _process(process_index, process_count)
  check_source(source, batch_size)
  decoder = decoder or DecodeVideo(spec, train=False, flip=False)
  total = eval_steps(len(source), batch_size, count) * batch_size * count
  ds = grain.MapDataset.range(total)[index::count].map(_DecodeEval(source, decoder))
  ds = ds.batch(batch_size, drop_remainder=True)
  return _finish(ds, num_workers, read_threads, prefetch)

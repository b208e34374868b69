"""TFDS builders of optical flow for the flow stream of two-stream I3D: ``ucf101_flow``,
``hmdb51_flow`` and ``synthetic_actions_flow`` (array_record, no TensorFlow).

Each record holds the dense flow of one video, computed from exactly the frames its RGB dataset
stores (``ucf101``, ``hmdb51``: the source re-encoded to 340 x 256 MPEG-4 at ``-q:v 1``;
``synthetic_actions``: the generated clip encoded the same way) and stored as dense_flow does
(genkd.md section 7.1): each component quantised to uint8 with bound 20 px
(:func:`kd_jax.data.flow.quantize_flow`). Why the stored frames rather than the source at its
native size (dense_flow's 320 x 240 for UCF-101): both streams then see the same pixels, field of
view and crop geometry (crop sides ``256 * (1, .875, .75)``), the flow record has exactly one
field fewer than the RGB record, and a video is skipped or kept for the same reason in both; the
price is flow ~6 % larger in pixels than at 320 x 240 and one more lossy (q 1) encode before the
flow. ``SplitConfig.width`` / ``height`` change the size.

Features: ``flow`` (bytes, the container below), ``label``, ``video_id``, ``num_frames`` (int32,
the flow fields stored: the RGB video's frame count minus one).

Container (little-endian): a 40-byte header ``b'KDFLOW\\x01\\x00'``, uint32 fields, height,
width, float32 bound, 16-byte method name; then ``fields + 1`` uint64 offsets into the payload;
then one ``zlib`` (level 6) stream per field holding the uint8 x plane then the y plane
(``[2, H, W]``). Per-field compression gives random access (a 64-field clip inflates 64 fields,
not the video). Measured on 340 x 256 TV-L1 flow of generated clips (docs/data.md): zlib 6
planar 13.3 kB a field, inflating ~1,900 fields/s per core; FFV1 (range coder, gray8) 7.2 kB but
~150 fields/s, 12x slower to read for 1.9x less disk, so zlib.

Flow method: TV-L1 with dense_flow's parameters (``DENSE_FLOW_TVL1``), 0.2-0.4 fields/s per
core at 340 x 256 on this project's (busy) 2-core machine. ``KD_JAX_FLOW_METHOD=farneback`` (or
the builder's ``flow_method``) switches to Farneback for quick builds (tests, trials); the method
is written in every record and in the summary, not in the config name, so do not mix the two in
one data_dir.

Build: ``python -m kd_jax.data.prepare ucf101_flow/split1 --manual_dir DIR [--workers N]``; the
manual directory is the RGB builder's. Skipped and damaged videos are listed exactly as there
(``skipped_videos.tsv``), plus ``too short for flow (1 frame)``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from kd_jax.data import codec
from kd_jax.data import flow as flow_lib
from kd_jax.data import synthetic
from kd_jax.data.builders import common
from kd_jax.data.builders import hmdb51
from kd_jax.data.builders import synthetic_actions
from kd_jax.data.builders import ucf101

METHOD_ENV = "KD_JAX_FLOW_METHOD"
DEFAULT_METHOD = "tvl1"
ZLIB_LEVEL = 6
TOO_SHORT = "too short for flow"
_MAGIC = b"KDFLOW\x01\x00"
_HEADER = struct.Struct("<8sIIIf16s")
_CHUNK = 48  # frames decoded at a time: memory stays bounded on long videos

# Stored bytes per flow pixel (both components), measured on 340 x 256 flow of two generated
# synthetic_actions clips after the MPEG-4 q 1 round trip (6 TV-L1, 10 Farneback fields): the disk
# estimate. Real footage may compress differently; prepare prints a measured figure as it goes.
BYTES_PER_PIXEL = {"tvl1": 0.153, "farneback": 0.320}
# Mean flow fields a UCF-101 video gives: 2,469,975 fields over 13,320 videos in
# bryanyzhu/two-stream-pytorch's dense_flow lists (train_flow_split1 + val_flow_split1).
# HMDB-51's is not recorded here; the estimate uses this one and is corrected while building.
MEAN_FIELDS_PER_VIDEO = 185.4
_MEASURE_AFTER = 20  # videos after which the estimate is printed again, measured


def resolve_method(method: str | None = None) -> str:
  """``method``, else ``$KD_JAX_FLOW_METHOD``, else ``tvl1``; checked against the known ones."""
  method = method or os.environ.get(METHOD_ENV) or DEFAULT_METHOD
  if method not in flow_lib.METHODS:
    raise common.DatasetError(f"unknown flow method {method!r} (from {METHOD_ENV} or "
                              f"flow_method); choose one of {', '.join(flow_lib.METHODS)}")
  return method


# -- Storage ----------------------------------------------------------------------------------


def pack_fields(fields: Sequence[bytes], *, height: int, width: int, method: str,
                bound: float = flow_lib.FLOW_BOUND) -> bytes:
  """The record bytes of per-field compressed planes (:func:`compress_field` outputs)."""
  offsets = np.zeros(len(fields) + 1, "<u8")
  offsets[1:] = np.cumsum([len(f) for f in fields])
  header = _HEADER.pack(_MAGIC, len(fields), height, width, bound, method.encode("ascii"))
  return b"".join([header, offsets.tobytes(), *fields])


def compress_field(q: np.ndarray) -> bytes:
  """One uint8 field ``[H, W, 2]`` as zlib of its planes ``[2, H, W]`` (x then y)."""
  return zlib.compress(np.ascontiguousarray(np.moveaxis(q, -1, 0)).tobytes(), ZLIB_LEVEL)


def pack_flow(q: np.ndarray, *, method: str, bound: float = flow_lib.FLOW_BOUND) -> bytes:
  """uint8 quantised flow ``[N, H, W, 2]`` to record bytes (see the module docstring)."""
  q = np.asarray(q)
  if q.dtype != np.uint8 or q.ndim != 4 or q.shape[-1] != 2:
    raise ValueError(f"pack_flow takes uint8 flow [N, H, W, 2], got {q.dtype} {q.shape}")
  return pack_fields([compress_field(f) for f in q], height=q.shape[1], width=q.shape[2],
                     method=method, bound=bound)


class StoredFlow:
  """Random access to the fields of one record's ``flow`` bytes.

  Attributes:
    num_frames, height, width: fields stored and their size.
    bound: the quantisation bound in pixels (20).
    method: the flow method that computed them (``tvl1`` or ``farneback``).
  """

  def __init__(self, data: bytes | np.ndarray, *, name: str = "flow record"):
    if isinstance(data, np.ndarray):
      data = data.tobytes()
    data = bytes(data)
    if len(data) < _HEADER.size or data[:8] != _MAGIC:
      raise ValueError(f"{name}: not a kd_jax flow record (prepare it with "
                       "python -m kd_jax.data.prepare NAME_flow/CONFIG)")
    _, n, h, w, bound, method = _HEADER.unpack_from(data)
    self.num_frames, self.height, self.width, self.bound = int(n), int(h), int(w), float(bound)
    self.method = method.rstrip(b"\0").decode("ascii")
    start = _HEADER.size + 8 * (n + 1)
    self._offsets = np.frombuffer(data, "<u8", n + 1, _HEADER.size).astype(np.int64) + start
    self._data, self._name = data, name

  def field(self, i: int) -> np.ndarray:
    """uint8 ``[H, W, 2]``: field ``i`` (x then y)."""
    if not 0 <= i < self.num_frames:
      raise IndexError(f"{self._name}: field {i} out of range [0, {self.num_frames})")
    planes = np.frombuffer(zlib.decompress(self._data[self._offsets[i]:self._offsets[i + 1]]),
                           np.uint8).reshape(2, self.height, self.width)
    return np.moveaxis(planes, 0, -1)

  def frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 ``[len(indices), H, W, 2]``; each distinct field is inflated once."""
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    out = np.empty((len(indices), self.height, self.width, 2), np.uint8)
    done: dict[int, int] = {}
    for k, i in enumerate(indices):
      if i in done:
        out[k] = out[done[i]]
      else:
        out[k] = self.field(i)
        done[i] = k
    return out

  def all(self) -> np.ndarray:
    """uint8 ``[N, H, W, 2]``: every field."""
    return self.frames(np.arange(self.num_frames))


def flow_features(class_names: Sequence[str]) -> tfds.features.FeaturesDict:
  """The record features of the flow datasets (TF-free, as ``common.video_features``)."""
  return tfds.features.FeaturesDict({
      "flow": tfds.features.Tensor(shape=(), dtype=np.object_),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "video_id": tfds.features.Text(),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
  })


# -- Computing ---------------------------------------------------------------------------------


def video_flow(video: codec.CompressedVideo, *, method: str) -> bytes:
  """Record bytes of the quantised flow between consecutive frames of a stored video.

  Decodes ``_CHUNK`` frames at a time (the last one carried over), so memory stays bounded;
  every pair is computed on its own, so the result equals
  ``pack_flow(quantize_flow(optical_flow(all frames)))``.
  """
  n = video.num_frames
  if n < 2:
    raise ValueError(f"{TOO_SHORT} ({n} frame)")
  fields, last = [], None
  for start in range(0, n, _CHUNK):
    frames = video.rgb(start, min(_CHUNK, n - start))
    if last is not None:
      frames = np.concatenate([last[None], frames])
    if len(frames) >= 2:
      q = flow_lib.quantize_flow(flow_lib.optical_flow(frames, method))
      fields += [compress_field(f) for f in q]
    last = frames[-1]
  return pack_fields(fields, height=video.height, width=video.width, method=method)


def _set_threads(threads: int | None) -> None:
  if threads is not None:
    flow_lib._cv2().setNumThreads(threads)  # pylint: disable=protected-access


def _flow_example(key: str, data: bytes, label: int, method: str):
  """(example or None, reason): the flow example of an encoded stream."""
  try:
    video = codec.CompressedVideo(data, name=key)
    flow = video_flow(video, method=method)
  except codec.VideoDecodeError as e:
    return None, e.reason
  except ValueError as e:
    if str(e).startswith(TOO_SHORT):
      return None, str(e)
    raise
  example = {"flow": flow, "label": label, "video_id": key,
             "num_frames": video.num_frames - 1}
  return example, ""


def encode_video_flow(job: tuple, *, width: int, height: int, gop_size: int, method: str,
                      threads: int | None = None):
  """``common.reencode_video``'s job, returning the flow example of the re-encoded frames.

  Returns ``(video_id, example or None, reason, path)`` with ``reencode_video``'s reasons (a
  truncated video keeps its reason and its flow), plus ``too short for flow (1 frame)``.
  """
  _set_threads(threads)
  key, example, reason, path = common.reencode_video(job, width=width, height=height,
                                                     gop_size=gop_size)
  if example is None:
    return key, None, reason, path
  flow, problem = _flow_example(key, example["video"], example["label"], method)
  if flow is None:
    return key, None, problem, path
  return key, flow, reason, path


def encode_synthetic_flow(job: tuple, *, spec: synthetic.SyntheticSpec, seed: int, gop_size: int,
                          method: str, threads: int | None = None):
  """A generated clip's flow example: the clip as ``synthetic_actions`` stores it, then flow."""
  _set_threads(threads)
  split, label, index = job
  key = f"{split}_{label:03d}_{index:04d}"
  frames = synthetic.generate_clip(label, index, spec=spec, split=split, seed=seed)
  example, reason = _flow_example(key, codec.encode_frames(frames, gop_size=gop_size), label,
                                  method)
  return key, example, reason


# -- Builders ----------------------------------------------------------------------------------


def _gb(num_bytes: float) -> str:
  return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.1f} MB"


class _FlowBuilder:
  """Mixed in before a video builder: flow features, the flow method, a disk estimate."""

  def __init__(self, *, flow_method: str | None = None, **kwargs):
    super().__init__(**kwargs)
    self.flow_method = resolve_method(flow_method)
    self._stored = [0, 0, 0]  # bytes, fields, videos written so far
    self._jobs_total = 0

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=flow_features(self._class_names()),
                                 supervised_keys=("flow", "label"))

  def _threads(self) -> int | None:
    return 1 if self.num_workers > 1 else None  # one OpenCV thread per encoding process

  def _size(self) -> tuple[int, int]:
    """(width, height) of the stored fields."""
    return self.builder_config.width, self.builder_config.height

  def _expected_fields(self, jobs: dict[str, list[Any]]) -> tuple[float, str]:
    """Flow fields the jobs will give, and where the figure comes from."""
    n = sum(len(j) for j in jobs.values())
    return n * MEAN_FIELDS_PER_VIDEO, (f"{n} videos x {MEAN_FIELDS_PER_VIDEO} fields (UCF-101's "
                                       "mean)")

  def disk_estimate(self, jobs: dict[str, list[Any]]) -> str:
    """One line: the expected size of the records, from :data:`BYTES_PER_PIXEL`."""
    fields, basis = self._expected_fields(jobs)
    width, height = self._size()
    per_field = BYTES_PER_PIXEL[self.flow_method] * width * height
    return (f"{self.name}/{self.builder_config.name}: disk estimate ~{_gb(fields * per_field)} "
            f"({basis}, ~{per_field / 1e3:.1f} kB per {self.flow_method} field of "
            f"{width}x{height})")

  def _split_generators(self, dl_manager):
    try:
      flow_lib._cv2()  # pylint: disable=protected-access
    except flow_lib.FlowUnavailableError as e:  # before any work, as one line
      raise common.DatasetError(f"{self.name}: {e}") from None
    jobs = self._jobs(dl_manager)
    self._jobs_total = sum(len(j) for j in jobs.values())
    tqdm.tqdm.write(self.disk_estimate(jobs))
    return {split: self._generate_examples(split, split_jobs) for split, split_jobs in jobs.items()}

  def _generate_examples(self, split: str, jobs: Sequence[Any]):
    for key, example in super()._generate_examples(split, jobs):
      self._stored[0] += len(example["flow"])
      self._stored[1] += int(example["num_frames"])
      self._stored[2] += 1
      if self._stored[2] == _MEASURE_AFTER < self._jobs_total:
        tqdm.tqdm.write(self._measured())
      yield key, example
    self.notes[:] = [n for n in self.notes if not n.startswith("flow records:")]
    self.notes.append(f"flow records: {self._measured(final=True)}")

  def _measured(self, final: bool = False) -> str:
    total, fields, videos = self._stored
    per_field = total / max(fields, 1)
    line = (f"{_gb(total)} for {videos} videos, {per_field / 1e3:.1f} kB per "
            f"{self.flow_method} field")
    if final:
      return line
    expected = total / videos * self._jobs_total
    return f"{self.name}: measured {line}; disk estimate now ~{_gb(expected)}"


def flow_split_configs(dataset: str) -> list[common.SplitConfig]:
  """``split1``, ``split2``, ``split3``: flow of the 340 x 256 re-encoded frames."""
  return [common.SplitConfig(
      name=f"split{n}", split_number=n,
      description=f"{dataset} official split {n}: optical flow (uint8, bound 20; TV-L1 unless "
                  f"${METHOD_ENV} says otherwise) of the frames re-encoded to 340x256 MPEG-4.")
      for n in (1, 2, 3)]


class _SplitFlowBuilder(_FlowBuilder):

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(encode_video_flow, width=cfg.width, height=cfg.height,
                             gop_size=cfg.gop_size, method=self.flow_method,
                             threads=self._threads())


class Ucf101Flow(_SplitFlowBuilder, ucf101.Ucf101, skip_registration=True):
  """UCF-101 optical flow (TV-L1, dense_flow's uint8 storage), official splits 1-3."""

  BUILDER_CONFIGS = flow_split_configs("UCF-101")


class Hmdb51Flow(_SplitFlowBuilder, hmdb51.Hmdb51, skip_registration=True):
  """HMDB-51 optical flow (TV-L1, dense_flow's uint8 storage), official splits 1-3."""

  BUILDER_CONFIGS = flow_split_configs("HMDB-51")


def _synthetic_flow_configs() -> list[synthetic_actions.SyntheticActionsConfig]:
  """``synthetic_actions``' configs, with descriptions that say flow."""
  return [dataclasses.replace(c, description=f"optical flow of synthetic_actions/{c.name}: "
                              f"{c.description}")
          for c in synthetic_actions.SyntheticActions.BUILDER_CONFIGS]


class SyntheticActionsFlow(_FlowBuilder, synthetic_actions.SyntheticActions,
                           skip_registration=True):
  """Optical flow of the synthetic action videos (``synthetic_actions``), same configs and sizes."""

  BUILDER_CONFIGS = _synthetic_flow_configs()

  def _size(self):
    return self.builder_config.spec.width, self.builder_config.spec.height

  def _expected_fields(self, jobs):
    n = sum(len(j) for j in jobs.values())
    frames = self.builder_config.spec.num_frames
    return n * (frames - 1), f"{n} clips x {frames - 1} fields"

  def _encode_fn(self):
    cfg = self.builder_config
    return functools.partial(encode_synthetic_flow, spec=cfg.spec, seed=cfg.seed,
                             gop_size=cfg.gop_size, method=self.flow_method,
                             threads=self._threads())

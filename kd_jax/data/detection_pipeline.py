"""grain input pipelines for temporal action detection: AFSD's windows over untrimmed videos.

From a data source of detection records (``thumos14``, ``synthetic_detection``;
``kd_jax/data/builders/_detection.py``) to per-host batches of fixed-length windows, as AFSD's
``AFSD/common/thumos_dataset.py`` (training) and ``AFSD/thumos14/test.py`` (testing) cut them
(TencentYoutuResearch/ActionDetection-AFSD; genkd.md section 3.2):

* **windows** of ``window`` (256) frames every ``stride`` frames (30 in training, 128 in testing),
  plus one flush with the video's end where the stride does not land there; a video shorter than a
  window gives one window at 0, zero-padded (``kd_jax.metrics.detection.window_offsets``);
* **targets** (``split_videos``): with ground truth ``[s, e]`` in frames and the window's
  ``left = offset + 1``, ``right = offset + window`` (AFSD's bounds), a segment is a target when
  ``ioa = (min(right, e) - max(left, s)) / (e - s) >= 0.5``, clipped to
  ``[max(s - offset, 1), min(e - offset, window)]``; a *training* window is kept only when some
  segment lies wholly inside it (``ioa >= 1``); test windows are all kept;
* **boundary masks** ``start`` / ``end`` ``[window]``: 1 within ``d / 2`` of each target's start
  (end), ``d = max((e - s) / 10, 2)``, rounded as AFSD (half to even);
* **frames**: train a random ``crop_size`` (96) crop of the stored 112 x 112 and a horizontal flip
  with p = 0.5 (the segments do not change), test the centre crop; values ``x / 255 * 2 - 1`` in
  [-1, 1]. A short video's padding is 0 *before* scaling in training (so -1) and 0 *after* it in
  testing, as AFSD's two scripts do.

Batches (dicts, leading axis ``B``):

* ``video``: float32 ``[B, window, crop, crop, 3]``;
* ``segments``: float32 ``[B, S, 3]`` (start, end, label) with start and end divided by ``window``
  (AFSD's ``annos_transform``) and label = class + 1 (AFSD: 0 is background), zero rows after
  ``num_segments`` int32 ``[B]``;
* ``start``, ``end``: float32 ``[B, window]`` boundary masks;
* ``video_id`` (bytes), ``index`` (int32 record index), ``offset`` (int32 first frame);
* eval only: ``mask`` (bool, False on padding windows);
* training with ``WindowSpec.ssl``: AFSD's boundary-consistency clip ``ssl_video`` (like
  ``video``), its three triplet segments ``ssl_segments`` float32 ``[B, 3, 2]`` in window frames
  (not normalised, as AFSD passes them to the network) and ``ssl_flag`` (bool: False where no clip
  could be made; ``ssl_video`` is then ``video`` and the segments zeros).

``S`` is ``max_segments``, or the most targets any window of the split has. Ground truth in
frames is ``segments * fps`` of the record, rounded to 1e-4 frame (the stored seconds are float32).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from kd_jax.data import codec
from kd_jax.data import pipeline
from kd_jax.metrics import detection as detection_metrics

# pipeline.py's helpers, so that both pipelines shard, prefetch and fork workers alike.
_process, _finish = pipeline._process, pipeline._finish  # pylint: disable=protected-access
# Datasets whose classes depend on left/right motion: a horizontal flip would change the label.
DIRECTION_SENSITIVE = ("synthetic_detection",) + pipeline.DIRECTION_SENSITIVE
AFSD_WINDOW = 256
AFSD_TRAIN_STRIDE = 30
AFSD_TEST_STRIDE = 128


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """What a detection pipeline cuts and how it augments.

  Attributes:
    window: frames per window (AFSD: 256).
    train_stride, test_stride: window step in training and testing (AFSD: 30, 128).
    crop_size: side of the square crop of the stored frames (AFSD: 96 of 112).
    flip: random horizontal flips in training; None: on unless the dataset is direction-sensitive
      (``synthetic_detection``, whose classes move east or west: a mirror would change them).
    min_overlap: share of a segment a window must hold for it to be a target (AFSD: 0.5).
    max_segments: ``S``, the padded number of targets per window; None: the most any window of
      the split has.
    ssl: training batches also carry AFSD's boundary-consistency clip (:func:`ssl_clip`; the
      triplet term of AFSD and of GenKD's detection stage B).
  """

  window: int = AFSD_WINDOW
  train_stride: int = AFSD_TRAIN_STRIDE
  test_stride: int = AFSD_TEST_STRIDE
  crop_size: int = 96
  flip: bool | None = None
  min_overlap: float = 0.5
  max_segments: int | None = None
  ssl: bool = False

  def __post_init__(self):
    if min(self.window, self.train_stride, self.test_stride, self.crop_size) < 1:
      raise ValueError("window, train_stride, test_stride and crop_size must be >= 1")
    if not 0.0 < self.min_overlap <= 1.0:
      raise ValueError(f"min_overlap must be in (0, 1], got {self.min_overlap}")
    if self.max_segments is not None and self.max_segments < 1:
      raise ValueError(f"max_segments must be >= 1 or None, got {self.max_segments}")


# -- Targets ---------------------------------------------------------------------------------------


def segments_in_frames(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """A record's ground truth as (float64 ``[N, 2]`` frames of its stream, int32 ``[N]`` classes).

  Segments without length (``end <= start``) are dropped: AFSD's overlap divides by the length.
  """
  fps = float(record["fps"])
  seg = np.round(np.asarray(record["segments"], np.float64).reshape(-1, 2) * fps, 4)
  labels = np.asarray(record["labels"], np.int32).reshape(-1)
  keep = seg[:, 1] > seg[:, 0]
  return seg[keep], labels[keep]


def window_targets(segments: np.ndarray, labels: np.ndarray, offset: int, window: int, *,
                   min_overlap: float = 0.5) -> tuple[np.ndarray, bool]:
  """AFSD's targets of one window (``split_videos``; module docstring).

  Args:
    segments: float ``[N, 2]`` (start, end) in frames of the video.
    labels: int ``[N]`` classes (0-based).
    offset: the window's first frame.
    window: its length.
    min_overlap: the share of a segment the window must hold.

  Returns:
    ``(targets, complete)``: float64 ``[K, 3]`` (start, end, class + 1) in frames of the window,
    in the order of ``segments``, and whether some segment lies wholly inside.
  """
  segments = np.asarray(segments, np.float64).reshape(-1, 2)
  s, e = segments[:, 0], segments[:, 1]
  left, right = offset + 1, offset + window
  ioa = (np.minimum(right, e) - np.maximum(left, s)) / (e - s)
  keep = ioa >= min_overlap
  targets = np.stack([np.maximum(s - offset, 1.0), np.minimum(e - offset, float(window)),
                      np.asarray(labels, np.float64) + 1.0], axis=-1)[keep]
  return targets, bool(np.any(ioa >= 1.0))


def boundary_targets(targets: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
  """AFSD's start and end masks (float32 ``[window]``) of window ``targets`` ``[K, 3]`` (frames)."""
  start = np.zeros(window, np.float32)
  end = np.zeros(window, np.float32)

  def at(x: float) -> int:  # Python's round (half to even), then clipped into the window
    return int(np.clip(int(round(x)), 0, window - 1))

  for s, e, _ in np.asarray(targets, np.float64).reshape(-1, 3):
    d = max((e - s) / 10.0, 2.0)
    start[at(s - d / 2.0):at(s + d / 2.0) + 1] = 1.0
    end[at(e - d / 2.0):at(e + d / 2.0) + 1] = 1.0
  return start, end


class Window(NamedTuple):
  """One window: record ``index`` from frame ``offset``, its targets in window frames, and its
  video's shortest target length ``th`` (:func:`shortest_target`)."""

  index: int
  offset: int
  targets: np.ndarray  # [K, 3] (start, end, class + 1), frames of the window
  th: int = 0


def windows(source, spec: WindowSpec, *, train: bool) -> list[Window]:
  """Every window of every record of ``source``, in record order (reads each record once).

  Training keeps the windows with a complete segment (AFSD); testing keeps all.
  """
  stride = spec.train_stride if train else spec.test_stride
  out = []
  for i in range(len(source)):
    record = source[i]
    seg, labels = segments_in_frames(record)
    num_frames = int(record["num_frames"])
    found = []
    for offset in detection_metrics.window_offsets(num_frames, spec.window, stride):
      targets, complete = window_targets(seg, labels, offset, spec.window,
                                         min_overlap=spec.min_overlap)
      found.append((offset, targets, complete))
    th = shortest_target(seg, [t for _, t, _ in found], num_frames, spec.window)
    out += [Window(i, offset, targets, th) for offset, targets, complete in found
            if complete or not train]
  return out


def shortest_target(segments: np.ndarray, window_targets_: Sequence[np.ndarray], num_frames: int,
                    window: int) -> int:
  """AFSD's ``min_anno_dict`` entry of a video: ``ceil`` of the shortest target over all its
  windows (kept or not), starting from ``window``; a video no longer than a window also counts its
  unclipped segments. The SSL clip (:func:`ssl_clip`) inserts background of this length."""
  shortest = float(window)
  if num_frames <= window and len(segments):
    shortest = min(shortest, float(np.min(segments[:, 1] - segments[:, 0])))
  for targets in window_targets_:
    if len(targets):
      shortest = min(shortest, float(np.min(targets[:, 1] - targets[:, 0])))
  return math.ceil(shortest)


def _background_regions(targets: np.ndarray, window: int, th: int) -> list[tuple[int, int]]:
  """AFSD's ``get_bg`` candidates: the gaps between consecutive boundary times (targets' starts and
  ends, 0 and ``window - 1``) that are not a target themselves and hold more than ``th`` whole
  frames, as ``(ceil(a), floor(b))``."""
  pairs = [[float(a), float(b)] for a, b in np.asarray(targets)[:, :2]]
  times = sorted([t for pair in pairs for t in pair] + [0.0, float(window - 1)])
  out = []
  for a, b in zip(times, times[1:]):
    if [a, b] not in pairs and math.floor(b) - math.ceil(a) > th:
      out.append((math.ceil(a), math.floor(b)))
  return out


def ssl_clip(clip: np.ndarray, targets: np.ndarray, th: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, bool]:
  """AFSD's boundary-consistency clip (``THUMOS_Dataset.augment_``, one try).

  A target ``g`` longer than ``2 th`` is cut at a random frame ``t`` (``th`` or more frames from
  its ends) and a random ``th``-frame stretch of background ``[b, b + th)`` is inserted there,
  shifting the frames between the cut and the background towards it. The three segments of the
  triplet are returned in window frames: with the background after the target,
  ``[g_s, t]``, ``[t + th, g_e + th]`` and the inserted ``[t + 1, t + th - 1]``; with it before,
  ``[g_s - th, t - th]``, ``[t, g_e]`` and ``[t - th + 1, t - 1]``.

  Args:
    clip: ``[T, ...]`` the window's network input (AFSD applies it after crop, flip and scaling).
    targets: ``[K, 3]`` the window's targets in frames.
    th: the video's :func:`shortest_target`.
    rng: the element's generator.

  Returns:
    ``(clip', segments [3, 2], ok)``; when no target is long enough, no background gap is, or the
    stretches do not fit in the window, ``(clip, zeros, False)`` (AFSD's ``flag`` False: no
    triplet loss for this clip).
  """
  fail = clip, np.zeros((3, 2), np.float32), False
  targets = np.asarray(targets, np.float64).reshape(-1, 3)
  long_enough = [g for g in targets if g[1] - g[0] > 2 * th]
  if not long_enough:
    return fail
  g = long_enough[int(rng.integers(len(long_enough)))]
  cuts = range(math.floor(th), math.ceil(g[1] - g[0] - th))
  regions = _background_regions(targets, len(clip), th)
  if not cuts or not regions:
    return fail
  t = cuts[int(rng.integers(len(cuts)))] + math.ceil(g[0])
  lo, hi = regions[int(rng.integers(len(regions)))]
  b = int(rng.integers(hi - lo - th)) + lo
  out = clip.copy()
  if g[1] < b:  # background after the target: insert it at t, shift [t, b) right by th
    moves = ((t, t + th, b, b + th), (t + th, b + th, t, b))
    segments = [[g[0], t], [t + th, th + g[1]], [t + 1, t + th - 1]]
  else:  # before: shift [b + th, t) left by th, insert the background just before t
    moves = ((b, t - th, b + th, t), (t - th, t, b, b + th))
    segments = [[g[0] - th, t - th], [t, g[1]], [t - th + 1, t - 1]]
  for d0, d1, s0, s1 in moves:
    # Python slices, as AFSD's: a stretch that ends before it starts is empty (nothing moves).
    dst, src = out[d0:d1], clip[s0:s1]
    if min(d0, d1, s0, s1) < 0 or dst.shape != src.shape:
      return fail  # AFSD's tensor copy would fail on these shapes
    dst[...] = src
  return out, np.asarray(segments, np.float32), True


def _num_slots(found: Sequence[Window], spec: WindowSpec) -> int:
  most = max((len(w.targets) for w in found), default=0)
  if spec.max_segments is None:
    return max(1, most)
  if most > spec.max_segments:
    raise ValueError(f"a window holds {most} target segments, more than max_segments="
                     f"{spec.max_segments}; raise max_segments (or leave it None)")
  return spec.max_segments


# -- Decoding --------------------------------------------------------------------------------------


def _frames(record: Mapping[str, Any], index: int, offset: int, window: int) -> np.ndarray:
  """uint8 ``[t, H, W, 3]``, ``t <= window``: the stored frames of the window."""
  name = pipeline._video_name(record, index)  # pylint: disable=protected-access
  video = codec.CompressedVideo(record["video"], name=name)
  stop = min(offset + window, video.num_frames)
  return video.frames(np.arange(offset, stop))


def _scale(x: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1], AFSD's ``x / 255 * 2 - 1``."""
  return x.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


def _pad(x: np.ndarray, window: int, value: float = 0.0) -> np.ndarray:
  if len(x) >= window:
    return x
  pad = np.full((window - len(x),) + x.shape[1:], value, x.dtype)
  return np.concatenate([x, pad])


def crop_window(frames: np.ndarray, spec: WindowSpec, *, train: bool,
                rng: np.random.Generator | None = None) -> np.ndarray:
  """float32 ``[window, crop, crop, 3]`` network input of a window's uint8 frames (module
  docstring: AFSD's crop, flip, scaling and padding)."""
  c = spec.crop_size
  h, w = frames.shape[1:3]
  if h < c or w < c:
    raise ValueError(f"stored frames are {h}x{w}, smaller than crop_size {c}")
  if train:
    frames = _pad(frames, spec.window)  # raw zeros: -1 after scaling (AFSD's training set)
    top, left = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    x = frames[:, top:top + c, left:left + c]
    if spec.flip and rng.random() < 0.5:
      x = x[:, :, ::-1]
    return _scale(x)
  top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
  return _pad(_scale(frames[:, top:top + c, left:left + c]), spec.window)  # zeros after scaling


def _targets_out(targets: np.ndarray, spec: WindowSpec, slots: int) -> dict[str, np.ndarray]:
  segments = np.zeros((slots, 3), np.float32)
  k = len(targets)
  if k:
    segments[:k, :2] = targets[:, :2] / spec.window
    segments[:k, 2] = targets[:, 2]
  start, end = boundary_targets(targets, spec.window)
  return {"segments": segments, "num_segments": np.int32(k), "start": start, "end": end}


def _video_id(record: Mapping[str, Any]) -> np.bytes_:
  vid = record.get("video_id", b"")
  return np.bytes_(vid if isinstance(vid, bytes) else str(vid).encode())


def resolve_flip(spec: WindowSpec, source) -> bool:
  """The spec's flip setting, or its default for the source's dataset."""
  if spec.flip is not None:
    return spec.flip
  info = getattr(source, "dataset_info", None)
  return getattr(info, "name", None) not in DIRECTION_SENSITIVE


class DecodeWindow(grain.transforms.RandomMap):
  """Window position -> network input and targets; random crop and flip when ``train``."""

  def __init__(self, source, found: Sequence[Window], spec: WindowSpec, slots: int, *,
               train: bool):
    self.source, self.found, self.slots, self.train = source, found, slots, train
    self.spec = dataclasses.replace(spec, flip=resolve_flip(spec, source))

  def random_map(self, position, rng: np.random.Generator):
    return self.decode(int(position), rng)

  def decode(self, position: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
    w = self.found[position]
    record = self.source[w.index]
    frames = _frames(record, w.index, w.offset, self.spec.window)
    out = {"video": crop_window(frames, self.spec, train=self.train, rng=rng)}
    out.update(_targets_out(w.targets, self.spec, self.slots))
    if self.train and self.spec.ssl:
      clip, segments, ok = ssl_clip(out["video"], w.targets, w.th, rng)
      out.update(ssl_video=clip, ssl_segments=segments, ssl_flag=np.bool_(ok))
    out.update(video_id=_video_id(record), index=np.int32(w.index), offset=np.int32(w.offset))
    return out


class _DecodeEvalWindow(grain.transforms.Map):
  """Padded position -> decoded window with ``mask``; positions past the end repeat real ones."""

  def __init__(self, decoder: DecodeWindow):
    self.decoder = decoder

  def map(self, position: int):
    n = len(self.decoder.found)
    out = self.decoder.decode(int(position) % n)
    out["mask"] = np.bool_(position < n)
    return out


# -- Datasets --------------------------------------------------------------------------------------


def make_train(source, spec: WindowSpec, *, batch_size: int, seed: int,
               num_epochs: int | None = None, num_workers: int = 0, read_threads: int = 1,
               prefetch: int = 2, process_index: int | None = None,
               process_count: int | None = None) -> grain.IterDataset:
  """Training windows: shuffled, repeated, cropped and flipped, sharded per process, batched.

  As ``kd_jax.data.pipeline.make_train``: every element's randomness comes from ``seed`` and its
  position in the global stream, so the data do not depend on the process or worker count.

  Raises:
    ValueError: an empty source, or no window with a complete segment.
  """
  index, count = _process(process_index, process_count)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if len(source) == 0:
    raise ValueError("the data source is empty")
  found = windows(source, spec, train=True)
  if not found:
    raise ValueError(f"no {spec.window}-frame window holds a whole ground-truth segment; "
                     "use a shorter window or check the annotations")
  decoder = DecodeWindow(source, found, spec, _num_slots(found, spec), train=True)
  ds = grain.MapDataset.range(len(found)).seed(seed).shuffle().repeat(num_epochs)
  ds = ds.random_map(decoder)  # before slicing: randomness by global position
  ds = ds[index::count].batch(batch_size, drop_remainder=True)
  return _finish(ds, num_workers, read_threads, prefetch)


def eval_steps(num_windows: int, batch_size: int, process_count: int) -> int:
  """Batches each process yields in evaluation (``pipeline.eval_steps`` of the windows)."""
  return pipeline.eval_steps(num_windows, batch_size, process_count)


def make_eval(source, spec: WindowSpec, *, batch_size: int, num_workers: int = 0,
              read_threads: int = 1, prefetch: int = 2, process_index: int | None = None,
              process_count: int | None = None) -> grain.IterDataset:
  """Every test window once, centre-cropped, padded so every process gets the same batch count
  (``mask`` False on padding), like ``kd_jax.data.pipeline.make_eval``."""
  index, count = _process(process_index, process_count)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if len(source) == 0:
    raise ValueError("the data source is empty")
  found = windows(source, spec, train=False)
  decoder = DecodeWindow(source, found, spec, _num_slots(found, spec), train=False)
  total = eval_steps(len(found), batch_size, count) * batch_size * count
  ds = grain.MapDataset.range(total)[index::count].map(_DecodeEvalWindow(decoder))
  ds = ds.batch(batch_size, drop_remainder=True)
  return _finish(ds, num_workers, read_threads, prefetch)


# -- Ground truth for evaluation -------------------------------------------------------------------


def class_names(source) -> list[str]:
  """The class names of a detection source (label ``k`` is ``names[k]``; AFSD's ``k + 1``)."""
  return list(source.dataset_info.features["labels"].feature.names)


def _seconds(x: float) -> float:
  return round(float(x), 6)  # drops the float32 noise of the stored seconds (7.0999999 -> 7.1)


def ground_truth(source) -> tuple[list[dict], list[dict]]:
  """``(ground truth, ambiguous)`` of every record, as ``kd_jax.metrics.detection`` takes them:
  dicts ``{"video", "start", "end", "label"}`` in seconds (to 1e-6 s), ``label`` the 0-based
  class (``"Ambiguous"`` for the ambiguous segments)."""
  truth, ambiguous = [], []
  for i in range(len(source)):
    record = source[i]
    vid = _video_id(record).decode()
    seg = np.asarray(record["segments"], np.float64).reshape(-1, 2)
    for (s, e), k in zip(seg, np.asarray(record["labels"]).reshape(-1)):
      truth.append({"video": vid, "start": _seconds(s), "end": _seconds(e), "label": int(k)})
    for s, e in np.asarray(record["ambiguous"], np.float64).reshape(-1, 2):
      ambiguous.append({"video": vid, "start": _seconds(s), "end": _seconds(e),
                        "label": "Ambiguous"})
  return truth, ambiguous


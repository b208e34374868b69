"""Temporal sampling: TSN segments, CoViAR I-/P-frame selection, dense RGB clips.

Pure NumPy; every random choice comes from the ``numpy.random.Generator`` passed in, so a seed fixes
the result. Frame indices are packet indices of the stored stream (``CompressedVideo`` frame
indices), and GOPs are given by their real keyframe positions ``gop_starts`` (never ``idx // 12``).

Rules (pkd_wise.md section 8.2, CoViAR ``dataset.py``; PKD ``dataset_fuse.py``; genkd.md 7.1):

* Segments: ``seg_size = (n - 1) / S``; training draws a frame uniformly from
  ``[round(seg_size * s), round(seg_size * (s + 1)))`` (at least one frame wide); testing takes
  ``round(seg_size * (s + 0.5))``. ``round`` is NumPy's (half to even), as in CoViAR.
* I-frame modality: the I-frame of the GOP holding the sampled frame.
* MV / residual modality: frame 0 is excluded (``n - 1`` frames, index + 1); a sampled I-frame is
  replaced by the frame before it (CoViAR's ``(gop - 1, 11)``: the previous GOP's last P-frame).
* Fused loader (PKD IC training): the GOP holding an I-frame-style sample, and a P position in it:
  uniform in ``1 .. min(11, len - 1)`` for training, ``min(5, len - 1)`` for testing.
* Dense RGB clips (GenKD / I3D): ``clip_len`` consecutive frames from a random (train) or centred
  (test) offset; videos shorter than the clip are loop-padded (wrap around to frame 0).
* Video order in training (:class:`TrainOrder`): a seeded permutation per epoch, or CoViAR's draws
  with replacement (``random.choice(video_list)``, ``len(list)`` times per epoch).
"""

from __future__ import annotations

import sys
import threading
from typing import Literal

import numpy as np

Modality = Literal["iframe", "mv", "residual"]
MODALITIES = ("iframe", "mv", "residual")
TRAIN_ORDERS = ("permutation", "with_replacement")


def _check_counts(num_frames: int, num_segments: int) -> None:
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if num_segments < 1:
    raise ValueError(f"num_segments must be >= 1, got {num_segments}")


def _need_rng(train: bool, rng: np.random.Generator | None) -> None:
  if train and rng is None:
    raise ValueError("training sampling needs an rng (numpy.random.Generator)")


def segment_indices(num_frames: int, num_segments: int, *, train: bool,
                    rng: np.random.Generator | None = None, skip_first: bool = False) -> np.ndarray:
  """TSN segment sampling as in CoViAR: one frame index per segment.

  Args:
    num_frames: frames in the video.
    num_segments: number of segments S.
    train: draw a random frame per segment; otherwise take segment centres.
    rng: the random generator (required when ``train``).
    skip_first: sample from frames ``1 .. n - 1`` (CoViAR's MV / residual rule; frame 0 is an
      I-frame, whose MV and residual are zero).

  Returns:
    int64 ``[S]`` frame indices in ``[0, num_frames)`` (``[1, num_frames)`` with ``skip_first``
    when the video has at least two frames), non-decreasing.
  """
  _check_counts(num_frames, num_segments)
  _need_rng(train, rng)
  offset = 1 if skip_first and num_frames > 1 else 0
  n = num_frames - offset
  seg_size = (n - 1) / num_segments
  s = np.arange(num_segments)
  if train:
    begin = np.round(seg_size * s).astype(np.int64)
    end = np.round(seg_size * (s + 1)).astype(np.int64)
    end = np.where(end == begin, begin + 1, end)
    idx = rng.integers(begin, end)
  else:
    idx = np.round(seg_size * (s + 0.5)).astype(np.int64)
  return np.clip(idx + offset, offset, num_frames - 1).astype(np.int64)


def _gop_of(frame_indices: np.ndarray, gop_starts: np.ndarray) -> np.ndarray:
  gop_starts = np.asarray(gop_starts, np.int64)
  if gop_starts.ndim != 1 or gop_starts.size == 0 or gop_starts[0] != 0:
    raise ValueError(f"gop_starts must be non-empty, ascending and start at 0, got {gop_starts}")
  return np.searchsorted(gop_starts, frame_indices, side="right") - 1


def iframe_of(frame_indices: np.ndarray, gop_starts: np.ndarray) -> np.ndarray:
  """Index of the I-frame of the GOP that holds each frame."""
  frame_indices = np.asarray(frame_indices, np.int64)
  gop_starts = np.asarray(gop_starts, np.int64)
  return gop_starts[_gop_of(frame_indices, gop_starts)]


def pframe_of(frame_indices: np.ndarray, gop_starts: np.ndarray) -> np.ndarray:
  """CoViAR's MV / residual frame: an I-frame (other than frame 0) becomes the frame before it."""
  frame_indices = np.asarray(frame_indices, np.int64)
  is_key = iframe_of(frame_indices, gop_starts) == frame_indices
  return np.where(is_key & (frame_indices > 0), frame_indices - 1, frame_indices)


def coviar_indices(num_frames: int, gop_starts: np.ndarray, num_segments: int, *,
                   modality: Modality, train: bool,
                   rng: np.random.Generator | None = None) -> np.ndarray:
  """Frame indices of CoViAR's single-modality loader (``dataset.py``), one per segment.

  For ``'iframe'`` the result is the I-frame index of the sampled frame's GOP; for ``'mv'`` and
  ``'residual'`` it is the P-frame whose accumulated MV / residual to read (pass it to
  ``CompressedVideo.representations``). A video whose only frames are I-frames yields I-frames,
  whose MV and residual are zero.
  """
  if modality not in MODALITIES:
    raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
  idx = segment_indices(num_frames, num_segments, train=train, rng=rng,
                        skip_first=modality != "iframe")
  if modality == "iframe":
    return iframe_of(idx, gop_starts)
  return pframe_of(idx, gop_starts)


def fused_indices(num_frames: int, gop_starts: np.ndarray, num_segments: int, *, train: bool,
                  rng: np.random.Generator | None = None, max_position: int = 11,
                  test_position: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """I-frame and P-frame indices of PKD's fused loader (``dataset_fuse.py``), one pair per segment.

  The GOP is the one holding an I-frame-style segment sample; the P-frame is at a position of the
  same GOP: uniform in ``1 .. max_position`` (train) or ``test_position`` (test, CoViAR's
  ``(12 - 1) // 2``), clamped to the GOP's real length. The original reads position ``p`` of a
  GOP shorter than ``p + 1`` as all-zero arrays; here a one-frame GOP gives its I-frame (zero MV
  and residual) and longer ones give a real P-frame.

  Returns:
    (iframe_indices, pframe_indices), int64 ``[S]`` each; ``pframe_indices[s]`` lies in the GOP
    that starts at ``iframe_indices[s]``, so one ``CompressedVideo.representations(p)`` call gives
    all three modalities of a segment.
  """
  if max_position < 1 or test_position < 1:
    raise ValueError("P positions must be >= 1")
  idx = segment_indices(num_frames, num_segments, train=train, rng=rng)
  gop_starts = np.asarray(gop_starts, np.int64)
  gop = _gop_of(idx, gop_starts)
  start = gop_starts[gop]
  ends = np.append(gop_starts[1:], num_frames)
  last = np.minimum(ends[gop] - start - 1, max_position)  # Last usable P position (0: none).
  if train:
    pos = np.where(last > 0, rng.integers(1, np.maximum(last, 1) + 1), 0)
  else:
    pos = np.minimum(test_position, last)
  return start, start + pos


def dense_clip_indices(num_frames: int, clip_len: int = 64, *, train: bool,
                       rng: np.random.Generator | None = None, stride: int = 1) -> np.ndarray:
  """Indices of a dense clip for 3D CNNs (I3D): ``clip_len`` frames, ``stride`` apart.

  Training takes a uniformly random start, testing the centred one ``(n - span) // 2``. A video
  shorter than the clip span is loop-padded: indices wrap around to frame 0, so a 20-frame video
  gives 0..19, 0..19, 0..19, 0..3 for a 64-frame clip.
  """
  _check_counts(num_frames, clip_len)
  _need_rng(train, rng)
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  span = (clip_len - 1) * stride + 1
  if num_frames < span:
    start = 0
  elif train:
    start = int(rng.integers(0, num_frames - span + 1))
  else:
    start = (num_frames - span) // 2
  return (start + stride * np.arange(clip_len, dtype=np.int64)) % num_frames


class TrainOrder:
  """The example index at each position of a training stream; a grain ``MapDataset`` source.

  Epoch ``e`` is positions ``[e * epoch_size, (e + 1) * epoch_size)``, drawn from
  ``numpy.random.default_rng([seed, e])``:

  * ``permutation``: ``rng.permutation(n)[:epoch_size]``, every example at most once an epoch;
  * ``with_replacement``: ``rng.integers(0, n, epoch_size)``, independent uniform draws (CoViAR's
    ``dataset.py`` picks ``random.choice(video_list)`` for each of its ``len(list)`` items an
    epoch, ignoring the index it is asked for): an epoch of ``n`` draws repeats some videos and
    misses about ``(1 - 1/n)^n ~ 37%`` of them.

  A position's index depends on ``(seed, position)`` only, so an iterator restored at a position
  continues bit-identically and every process slice agrees with the global stream.

  Args:
    num_examples: n, the examples to draw from.
    seed: fixes the order.
    order: one of ``TRAIN_ORDERS``.
    epoch_size: positions per epoch; default n (at most n for ``permutation``).
    num_epochs: the stream's length in epochs; None: endless.
  """

  def __init__(self, num_examples: int, seed: int, *, order: str = "permutation",
               epoch_size: int | None = None, num_epochs: int | None = None):
    if order not in TRAIN_ORDERS:
      raise ValueError(f"order must be one of {TRAIN_ORDERS}, got {order!r}")
    if num_examples < 1:
      raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    epoch_size = num_examples if epoch_size is None else int(epoch_size)
    if epoch_size < 1 or (order == "permutation" and epoch_size > num_examples):
      raise ValueError(f"epoch_size must be in [1, {num_examples}] for a {order}, got {epoch_size}")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    self.num_examples, self.seed, self.order = int(num_examples), int(seed), order
    self.epoch_size, self.num_epochs = epoch_size, num_epochs
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()  # grain's read threads share one source

  def __getstate__(self) -> dict:  # for grain's worker processes: a lock does not pickle
    state = dict(self.__dict__, _cache={})
    del state["_lock"]
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return sys.maxsize if self.num_epochs is None else self.epoch_size * self.num_epochs

  def epoch(self, e: int) -> np.ndarray:
    """The example indices of epoch ``e``, int64 ``[epoch_size]``."""
    with self._lock:
      cached = self._cache.get(e)
      if cached is None:
        rng = np.random.default_rng([self.seed, e])
        if self.order == "permutation":
          cached = rng.permutation(self.num_examples)[:self.epoch_size]
        else:
          cached = rng.integers(0, self.num_examples, self.epoch_size)
        if len(self._cache) >= 2:  # the epochs around a boundary: two suffice
          self._cache.pop(next(iter(self._cache)))
        self._cache[e] = cached
      return cached

  def __getitem__(self, position: int) -> int:
    position = int(position)
    if not 0 <= position < len(self):
      raise IndexError(f"position {position} is outside the stream of {len(self)}")
    e, pos = divmod(position, self.epoch_size)
    return int(self.epoch(e)[pos])

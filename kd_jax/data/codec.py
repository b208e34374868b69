"""MPEG-4 Part 2 codec with PyAV, and CoViAR's compressed-domain representations.

Videos are stored as raw MPEG-4 Part 2 elementary streams (FFmpeg's ``m4v`` format), I- and P-frames
only, like CoViAR's ``reencode.sh`` (pkd_wise.md section 8.1). The FFmpeg mpeg4 encoder repeats the
VOS/VOL headers before every I-VOP, so a fresh decoder can start at any keyframe: random access
costs one GOP of decoding.

:class:`CompressedVideo` gives, for any frame, the three CoViAR representations (section 8.3):

* the I-frame of the frame's GOP (RGB);
* the accumulated motion vector: for each pixel, current position minus the position in the I-frame
  that the block-copy motion trace leads back to (channel 0 = x);
* the accumulated residual: the frame minus the motion-traced I-frame.

Unlike CoViAR's C loader, the residual is in RGB order (CoViAR's is BGR; see
``transforms.normalize_residual`` for the matching std order), GOPs are indexed by the real
keyframes (never ``idx // 12``), and a frame index is a plain frame number, so no request can
overrun a GOP (the C loader returns silent zero arrays there).
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
import io
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union

import av
import av.video.reformatter
import numpy as np

Source = Union[bytes, str, os.PathLike]

_CODEC = "mpeg4"
_FORMAT = "m4v"
# A scene-cut threshold no frame can reach: keyframes come exactly every gop_size frames.
_NO_SCENE_CUT = "1000000000"
_EXPORT_MVS = "+export_mvs"
_PictureType = av.video.frame.PictureType


class VideoDecodeError(ValueError):
  """A video could not be read: empty, truncated, corrupt, or not a video.

  Attributes:
    reason: the short reason without the video's name or path (``empty file (0 bytes)``,
      ``not a video container``, ``no decodable frames``, ``corrupt stream at frame N``, ...), as
      ``prepare`` lists it; the message is ``'<name>: <reason>'`` unless the raiser words it so.
  """

  def __init__(self, message: str, *, reason: str | None = None):
    super().__init__(message)
    self.reason = reason if reason is not None else message


class _NoFramesError(ValueError):
  pass


def _describe(source: Source, name: str | None = None) -> str:
  if name is not None:
    return name
  if isinstance(source, (bytes, bytearray, memoryview)):
    return f"<bytes, {len(source)} bytes>"
  return os.fspath(source)


# ----------------------------------------------------------------------------------------------
# Encoding.


def _check_encoder_args(width: int, height: int, gop_size: int, qscale: int) -> None:
  if width <= 0 or height <= 0 or width % 2 or height % 2:
    raise ValueError(f"frame size must be positive and even for yuv420p, got {width}x{height}")
  if gop_size < 1:
    raise ValueError(f"gop_size must be >= 1, got {gop_size}")
  if not 1 <= qscale <= 31:
    raise ValueError(f"qscale must be in [1, 31] (MPEG-4 quantiser), got {qscale}")


def _encode_stream(frames: Iterable[av.VideoFrame], *, width: int, height: int, gop_size: int,
                   qscale: int, keyframes: Iterable[int] = (), rate: int = 25) -> bytes:
  """Encodes VideoFrames (any format; resized to width x height) into a raw m4v stream."""
  _check_encoder_args(width, height, gop_size, qscale)
  buf = io.BytesIO()
  with av.open(buf, mode="w", format=_FORMAT) as out:
    stream = out.add_stream(_CODEC, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    ctx = stream.codec_context
    ctx.gop_size = gop_size
    ctx.max_b_frames = 0
    # `-q:v N` of the ffmpeg CLI sets a fixed qscale through each frame's `quality`, which PyAV
    # frames do not expose; pinning qmin = qmax = N gives the same fixed quantiser.
    ctx.qscale = True
    ctx.global_quality = qscale
    ctx.options = {"sc_threshold": _NO_SCENE_CUT, "qmin": str(qscale), "qmax": str(qscale)}
    forced = set(int(k) for k in keyframes)
    time_base = fractions.Fraction(1, rate)
    n = 0
    for frame in frames:
      if frame.width != width or frame.height != height or frame.format.name != "yuv420p":
        # Bicubic is the default scaler of ffmpeg's `scale` filter used by CoViAR.
        frame = frame.reformat(width=width, height=height, format="yuv420p",
                               interpolation="BICUBIC")
      # A decoded frame keeps its picture type, and an I there would force an extra keyframe.
      frame.pict_type = _PictureType.I if n in forced else _PictureType.NONE
      # Fresh timestamps in the encoder's time base: PyAV rescales from the frame's own.
      frame.pts, frame.time_base = n, time_base
      n += 1
      out.mux(stream.encode(frame))
    if n == 0:
      raise _NoFramesError("no frames to encode")
    out.mux(stream.encode(None))
  return buf.getvalue()


def encode_frames(frames: np.ndarray, *, gop_size: int = 12, qscale: int = 1,
                  keyframes: Iterable[int] = ()) -> bytes:
  """Encodes RGB frames to a raw MPEG-4 Part 2 (``m4v``) stream of I- and P-frames.

  Args:
    frames: uint8 ``[T, H, W, 3]`` RGB frames; H and W must be even.
    gop_size: a keyframe every ``gop_size`` frames (scene-cut detection is off).
    qscale: fixed MPEG-4 quantiser, 1 (best, CoViAR's ``-q:v 1``) to 31.
    keyframes: frame indices to force as I-frames in addition to the regular ones (the GOP counter
      restarts there), e.g. to build streams with irregular GOPs.

  Returns:
    The encoded stream, readable by :class:`CompressedVideo`.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
  _, height, width, _ = frames.shape
  video_frames = (av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                  for rgb in frames)
  return _encode_stream(video_frames, width=width, height=height, gop_size=gop_size,
                        qscale=qscale, keyframes=keyframes)


# The first bytes of the containers a source video comes in: what a file that does not open was
# meant to be (a damaged container, not a "not a video" file), and what a raw re-encoded stream
# (CompressedVideo's input) must not be.
_CONTAINER_MAGIC = (
    (0, b"RIFF", "AVI"), (4, b"ftyp", "MP4/MOV"), (4, b"moov", "MP4/MOV"), (4, b"mdat", "MP4/MOV"),
    (4, b"wide", "MP4/MOV"), (0, b"\x1aE\xdf\xa3", "Matroska/WebM"), (0, b"FLV", "FLV"),
    (0, b"\x00\x00\x01\xba", "MPEG program stream"), (0, b"OggS", "Ogg"),
    (0, b"0&\xb2u\x8ef\xcf\x11", "ASF/WMV"),
)


def container_kind(head: bytes) -> str | None:
  """The container a file's first bytes announce (``'AVI'``, ``'MP4/MOV'``, ...), or None."""
  for offset, magic, kind in _CONTAINER_MAGIC:
    if head[offset:offset + len(magic)] == magic:
      return kind
  return None


@dataclasses.dataclass(frozen=True)
class Reencoded:
  """A re-encoded video and how completely its source decoded (:func:`reencode_checked`).

  Attributes:
    data: the raw MPEG-4 Part 2 stream.
    num_frames: frames decoded from the source (and encoded).
    declared_frames: the frame count the source's container declares (its frame count, else its
      duration times its frame rate); None when it declares neither.
    problem: '' for a complete decode; else what is wrong, e.g. ``truncated (57 of 141 frames)``
      or ``corrupt stream at frame 12 (38 of 40 frames decode)``: the video is usable but damaged.
  """

  data: bytes
  num_frames: int
  declared_frames: int | None
  problem: str = ""


class _Decoded:
  """Counts what a decode of a source gives: frames, the first one the decoder flags corrupt."""

  def __init__(self):
    self.frames = 0
    self.first_corrupt: int | None = None

  def frames_of(self, container, stream) -> Iterable[av.VideoFrame]:
    packets = container.demux(stream)
    while True:
      try:
        packet = next(packets)
        decoded = packet.decode()
      except StopIteration:
        return
      except av.FFmpegError as e:
        raise _CorruptAt(self.frames) from e
      for frame in decoded:
        if frame.is_corrupt and self.first_corrupt is None:
          self.first_corrupt = self.frames
        self.frames += 1
        yield frame


class _CorruptAt(Exception):
  def __init__(self, frame: int):
    super().__init__(frame)
    self.frame = frame


def _declared_frames(container, stream) -> tuple[int | None, str]:
  """(frames the container declares, 'count' or 'duration'); (None, '') when it says nothing."""
  if stream.frames and stream.frames > 0:
    return int(stream.frames), "count"
  rate = stream.average_rate or stream.guessed_rate
  if not rate:
    return None, ""
  if stream.duration and stream.time_base:
    seconds = float(stream.duration * stream.time_base)
  elif container.duration:
    seconds = container.duration / av.time_base
  else:
    return None, ""
  frames = int(round(seconds * float(rate)))
  return (frames, "duration") if frames > 0 else (None, "")


def _partial_problem(decoded: _Decoded, declared: int | None, basis: str) -> str:
  """'' if the decode is complete; else ``truncated (n of m frames)`` or ``corrupt stream ...``.

  A count is exact, but an MP4's edit list may hide a frame or two of it from the decoder; a
  duration times a frame rate is an estimate (rounding, audio that outlasts the video). Hence the
  tolerances: 2 % (at least two frames) of a count, 5 % (at least two) of an estimate.
  """
  n = decoded.frames
  short = False
  if declared is not None:
    tolerance = max(2, declared // 50) if basis == "count" else max(2, declared // 20)
    short = n < declared - tolerance
  corrupt = decoded.first_corrupt
  # A cut file ends in one partly written frame: corruption in the last decoded frame is the cut.
  if corrupt is not None and (not short or corrupt < n - 1):
    detail = (f"{n} of {declared} frames decode" if declared is not None and n < declared
              else "concealed by the decoder")
    return f"corrupt stream at frame {corrupt} ({detail})"
  if short:
    return f"truncated ({n} of {declared} frames)"
  return ""


class _Counted:
  """Counts the items an iterator yields (the frames encoded)."""

  def __init__(self, items: Iterable[Any]):
    self.items, self.count = items, 0

  def __iter__(self):
    for item in self.items:
      self.count += 1
      yield item


def reencode_checked(source: Source, *, width: int = 340, height: int = 256, gop_size: int = 12,
                     qscale: int = 1, name: str | None = None,
                     select: Callable[[Iterable[Any], Any], Iterable[Any]] | None = None
                     ) -> Reencoded:
  """:func:`reencode`, also saying whether the source decoded completely.

  ``select(frames, stream)``: which of the decoded PyAV frames to encode, e.g. resampled to
  another frame rate; ``Reencoded.num_frames`` then counts the frames encoded.

  The frames decoded are compared with what the container declares (frame count, else duration
  x frame rate): a source that decodes clearly fewer is ``truncated (n of m frames)``; one whose
  decoder flags corrupt frames (concealed errors) is ``corrupt stream at frame N (...)``. Both
  are returned (``Reencoded.problem``), for the caller to keep or drop.

  Raises:
    VideoDecodeError: with ``reason`` one of ``empty file (0 bytes)``, ``not a video container``,
      ``damaged <kind> container (cannot be opened)``, ``no video stream``, ``no decodable
      frames``, ``corrupt stream at frame N`` (the decoder stopped there).
  """
  what = _describe(source, name)
  _check_encoder_args(width, height, gop_size, qscale)

  def fail(reason: str, cause: Exception | None = None) -> VideoDecodeError:
    error = VideoDecodeError(f"{what}: {reason}", reason=reason)
    error.__cause__ = cause
    return error

  if isinstance(source, (bytes, bytearray, memoryview)):
    head = bytes(source[:16])
    size = len(source)
    source = io.BytesIO(bytes(source))
  else:
    try:
      size = os.path.getsize(source)
      with open(source, "rb") as f:
        head = f.read(16)
    except OSError as e:
      raise fail(f"cannot read ({e.strerror or e})", e) from e
  if size == 0:
    raise fail("empty file (0 bytes)")
  try:
    container = av.open(source, mode="r")
  except (av.FFmpegError, OSError) as e:  # FFmpeg's text ("Invalid data ...") says no more
    kind = container_kind(head)
    raise fail(f"damaged {kind} container (cannot be opened; truncated?)" if kind
               else "not a video container", e) from e
  decoded = _Decoded()
  with container:
    if not container.streams.video:
      raise fail("no video stream")
    stream = container.streams.video[0]
    declared, basis = _declared_frames(container, stream)
    frames = decoded.frames_of(container, stream)
    out = _Counted(frames if select is None else select(frames, stream))
    try:
      data = _encode_stream(out, width=width, height=height, gop_size=gop_size, qscale=qscale)
    except _NoFramesError as e:
      raise fail("no decodable frames", e) from e
    except _CorruptAt as e:
      if e.frame == 0:
        raise fail("no decodable frames", e.__cause__) from e.__cause__
      raise fail(f"corrupt stream at frame {e.frame}", e.__cause__) from e.__cause__
    except (av.FFmpegError, OSError) as e:
      raise fail(f"corrupt stream at frame {decoded.frames}", e) from e
  return Reencoded(data=data, num_frames=out.count, declared_frames=declared,
                   problem=_partial_problem(decoded, declared, basis))


def reencode(source: Source, *, width: int = 340, height: int = 256, gop_size: int = 12,
             qscale: int = 1, name: str | None = None) -> bytes:
  """Re-encodes any video PyAV can read like CoViAR's ``reencode.sh``.

  Equivalent to ``ffmpeg -i in -vf scale=W:H,setsar=1:1 -q:v 1 -c:v mpeg4 -g 12 -bf 0
  -sc_threshold 1e9 -f rawvideo out``: resized to exactly ``width x height`` (aspect ratio not
  kept), fixed quantiser, strict GOPs. A source that decodes only in part (truncated, concealed
  corruption) gives what decodes; :func:`reencode_checked` says so.

  Args:
    source: a file path or the file's bytes.
    width, height: output frame size (even).
    gop_size, qscale: as in :func:`encode_frames`.
    name: how errors refer to the video (default: the path, or ``<bytes, N bytes>``).

  Raises:
    VideoDecodeError: the source is empty, not a video, or cannot be decoded (``reason`` says
      which, as in :func:`reencode_checked`).
  """
  return reencode_checked(source, width=width, height=height, gop_size=gop_size, qscale=qscale,
                          name=name).data


# ----------------------------------------------------------------------------------------------
# Decoding.


@dataclasses.dataclass(frozen=True)
class CoviarFrame:
  """The three CoViAR representations of one frame (see :meth:`CompressedVideo.representations`).

  Attributes:
    iframe: uint8 ``[H, W, 3]``, RGB of the I-frame of the frame's GOP.
    motion_vectors: int32 ``[H, W, 2]``, accumulated motion vectors (x, y).
    residual: int32 ``[H, W, 3]``, accumulated residual, RGB order.
  """
  iframe: np.ndarray
  motion_vectors: np.ndarray
  residual: np.ndarray


def _padded_packet(data: bytes) -> av.Packet:
  # `av.Packet(bytes)` wraps the Python buffer without the zeroed AV_INPUT_BUFFER_PADDING_SIZE
  # bytes FFmpeg's bitstream readers rely on; decoding such packets fails at random. A packet of
  # a given size is allocated by av_new_packet, which pads.
  packet = av.Packet(len(data))
  packet.update(data)
  return packet


# A reformatter keeps its swscale context across frames; `to_ndarray` builds a new one every call,
# which costs ~60x the conversion itself at 340x256. It is not thread-safe (grain maps elements on
# several threads), so each thread has its own.
_THREAD_STATE = threading.local()


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
  reformatter = getattr(_THREAD_STATE, "reformatter", None)
  if reformatter is None:
    reformatter = _THREAD_STATE.reformatter = av.video.reformatter.VideoReformatter()
  # Bicubic chroma upsampling, as CoViAR's sws_getContext(..., SWS_BICUBIC, ...). One thread:
  # swscale's default (one per CPU) hands each 340x256 frame to sleeping threads, whose wake-ups
  # cost ~5x the conversion on a busy machine, and data workers already run in parallel.
  return reformatter.reformat(frame, format="rgb24", interpolation="BICUBIC",
                              threads=1).to_ndarray()


def _block_copies(mvs: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Flat (destination, source) pixel indices of the block copies of one P-frame.

  CoViAR (coviar_data_loader.c) copies, for each exported vector with dst != src, the block of
  w x h pixels around dst_x, dst_y from the same block around src_x, src_y, pixel by pixel, where
  both pixels lie inside the frame.
  """
  dst_x = mvs["dst_x"].astype(np.int32)
  dst_y = mvs["dst_y"].astype(np.int32)
  dx = mvs["src_x"].astype(np.int32) - dst_x
  dy = mvs["src_y"].astype(np.int32) - dst_y
  moved = (dx != 0) | (dy != 0)
  bws, bhs = mvs["w"].astype(np.int32), mvs["h"].astype(np.int32)
  dsts, srcs = [], []
  for bw, bh in sorted(set(zip(bws[moved].tolist(), bhs[moved].tolist()))):  # 16x16, 8x8 (4MV).
    sel = moved & (bws == bw) & (bhs == bh)
    ox = np.arange(-(bw // 2), bw // 2, dtype=np.int32)[None, None, :]
    oy = np.arange(-(bh // 2), bh // 2, dtype=np.int32)[None, :, None]
    # Blocks whose destination and source both lie inside the frame need no per-pixel bounds
    # test: their flat indices are one broadcast add (most blocks; the rest take the slow path).
    inside = np.ones_like(sel)
    for x, y in ((dst_x, dst_y), (dst_x + dx, dst_y + dy)):
      inside &= ((x - bw // 2 >= 0) & (x + bw // 2 <= width)
                 & (y - bh // 2 >= 0) & (y + bh // 2 <= height))
    fast = sel & inside
    if fast.any():
      offsets = (oy * width + ox).reshape(1, -1)
      dst = (dst_y[fast] * width + dst_x[fast])[:, None] + offsets
      dsts.append(dst.reshape(-1))
      srcs.append((dst + (dy[fast] * width + dx[fast])[:, None]).reshape(-1))
    sel = sel & ~inside
    if not sel.any():
      continue
    cx = dst_x[sel, None, None] + ox  # [M, 1, bw]
    cy = dst_y[sel, None, None] + oy  # [M, bh, 1]
    sx = cx + dx[sel, None, None]
    sy = cy + dy[sel, None, None]
    ok = ((cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
          & (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height))
    dsts.append((cy * width + cx)[ok])
    srcs.append((sy * width + sx)[ok])
  if not dsts:
    empty = np.zeros((0,), np.int32)
    return empty, empty
  return np.concatenate(dsts), np.concatenate(srcs)


# The batched trace splits every block into 8x8 cells: FFmpeg exports MPEG-4 motion as 16x16
# macroblocks and 8x8 blocks (4MV), 16x8 / 8x16 for field motion, all on the 8x8 grid.
_CELL = 8


def _concat_records(arrays: Sequence[np.ndarray]) -> np.ndarray:
  """np.concatenate of structured arrays of one dtype, through their bytes: one copy of raw memory
  (NumPy's concatenate of the exported motion-vector records costs ~20x more)."""
  if len(arrays) == 1:
    return arrays[0]
  dtype = arrays[0].dtype
  return np.concatenate([np.ascontiguousarray(a).view(np.uint8) for a in arrays]).view(dtype)


@dataclasses.dataclass(frozen=True)
class _Cells:
  """The block copies of a GOP's P-frames as 8x8 cell copies on a padded canvas (``_gop_cells``).

  The canvas is the frame with a margin of ``pad`` pixels (a multiple of 8) on every side, cut
  into 8x8 cells from its top-left corner. Frame ``k``'s copies are cells ``bounds[k]`` to
  ``bounds[k + 1]``: the cell at cell row ``dst_row``, cell column ``dst_col`` takes the 8x8
  window whose top-left canvas pixel is (``src_top``, ``src_left``). ``check_src[k]``: some
  window of frame ``k`` reaches outside the frame; ``check_dst[k]``: some cell does.
  """
  pad: int
  dst_row: np.ndarray
  dst_col: np.ndarray
  src_top: np.ndarray
  src_left: np.ndarray
  bounds: np.ndarray
  check_src: np.ndarray
  check_dst: np.ndarray


def _gop_cells(mvs: np.ndarray, counts: np.ndarray, height: int, width: int) -> _Cells | None:
  """The block copies of several P-frames (their exported vectors ``mvs``, ``counts[k]`` of frame
  ``k``, concatenated) as cell copies, or None where that is not exact.

  Each moved block is split into 8x8 cells. Copying whole cells on a canvas whose margin holds a
  sentinel does what CoViAR's per-pixel loop (``_block_copies``) does: a pixel whose source lies
  outside the frame keeps its value (the sentinel marks it), and what lands outside the frame is
  reset to the sentinel. The cells of a frame are copied at once, which equals the per-pixel
  loop when no two copies of a frame write the same pixel: true of FFmpeg's export (a partition
  of the frame into macroblocks and their 8x8 blocks, on the 8x8 grid from the top-left pixel).
  None (apply ``_block_copies`` frame by frame) unless every block is whole cells on that grid
  and no two cells of a frame coincide.
  """
  dst_x = mvs["dst_x"].astype(np.int64)
  dst_y = mvs["dst_y"].astype(np.int64)
  dx = mvs["src_x"] - dst_x
  dy = mvs["src_y"] - dst_y
  moved = np.flatnonzero((dx != 0) | (dy != 0))
  frame = np.repeat(np.arange(len(counts), dtype=np.int64), counts)[moved]
  bw = mvs["w"][moved].astype(np.int64)
  bh = mvs["h"][moved].astype(np.int64)
  if np.any(bw % _CELL) or np.any(bh % _CELL):
    return None
  dst_x, dst_y, dx, dy = dst_x[moved], dst_y[moved], dx[moved], dy[moved]
  # Cells of each block, in the block's row-major order: (a, b) = (column, row) in the block.
  ncx = bw // _CELL
  per_block = ncx * (bh // _CELL)
  block = np.repeat(np.arange(len(bw)), per_block)
  k = np.arange(len(block)) - np.repeat(np.cumsum(per_block) - per_block, per_block)
  b, a = np.divmod(k, ncx[block])
  top = dst_y[block] - bh[block] // 2 + _CELL * b  # cells' top-left pixels, in the frame
  left = dst_x[block] - bw[block] // 2 + _CELL * a
  frame, dx, dy = frame[block], dx[block], dy[block]
  if np.any(top % _CELL) or np.any(left % _CELL):
    return None
  src_top, src_left = top + dy, left + dx
  if top.size:
    row, col = top // _CELL, left // _CELL
    row, col = row - row.min(), col - col.min()
    if np.bincount((frame * (int(row.max()) + 1) + row) * (int(col.max()) + 1) + col).max() > 1:
      return None
    reach = max(0, -int(min(top.min(), left.min(), src_top.min(), src_left.min())),
                int(max(top.max(), src_top.max())) + _CELL - height,
                int(max(left.max(), src_left.max())) + _CELL - width)
  else:
    reach = 0
  pad = -(-reach // _CELL) * _CELL
  n = len(counts)
  src_out = ((src_top < 0) | (src_top + _CELL > height) | (src_left < 0)
             | (src_left + _CELL > width))
  dst_out = (top < 0) | (top + _CELL > height) | (left < 0) | (left + _CELL > width)
  return _Cells(pad=pad, dst_row=(top + pad) // _CELL, dst_col=(left + pad) // _CELL,
                src_top=src_top + pad, src_left=src_left + pad,
                bounds=np.searchsorted(frame, np.arange(n + 1)),
                check_src=np.bincount(frame[src_out], minlength=n) > 0,
                check_dst=np.bincount(frame[dst_out], minlength=n) > 0)


def _trace_blocks(moves: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
  """int32 ``[H * W]``: the trace after the P-frames' block copies, frame by frame, pixel lists
  from ``_block_copies`` (any block shapes; the general path beside ``_trace_cells``)."""
  trace = np.arange(height * width, dtype=np.int32)
  for mvs in moves:
    dst, src = _block_copies(mvs, height, width)
    # The gather makes a copy before the scatter, so every copy reads the previous frame.
    trace[dst] = trace[src]
  return trace


def _accumulated_mv(trace: np.ndarray, height: int, width: int) -> np.ndarray:
  """int32 ``[H, W, 2]``: each pixel's position minus the position its trace leads to (x, y)."""
  # row = floor((t + 0.5) / W) in float64 is exact, and twice as fast as an integer divmod:
  # (t + 0.5) / W lies at least 0.5 / W from an integer, the two roundings err by under
  # H * 2**-52.
  row = ((trace + 0.5) * (1.0 / width)).astype(np.int32)
  col = trace - row * np.int32(width)
  mv = np.empty((height, width, 2), np.int32)
  np.subtract(np.arange(width, dtype=np.int32)[None, :], col.reshape(height, width),
              out=mv[..., 0])
  np.subtract(np.arange(height, dtype=np.int32)[:, None], row.reshape(height, width),
              out=mv[..., 1])
  return mv


@functools.lru_cache(maxsize=8)
def _identity_canvas(height: int, width: int, pad: int) -> np.ndarray:
  """The canvas of ``_trace_cells`` before any copy: each frame pixel's own flat index, -1 (the
  sentinel: outside the frame) elsewhere. Read-only, shared."""
  rows = -(-height // _CELL) * _CELL + 2 * pad
  cols = -(-width // _CELL) * _CELL + 2 * pad
  canvas = np.full((rows, cols), -1, np.int32)
  canvas[pad:pad + height, pad:pad + width] = np.arange(height * width,
                                                        dtype=np.int32).reshape(height, width)
  canvas.flags.writeable = False
  return canvas


def _trace_cells(cells: _Cells, height: int, width: int) -> np.ndarray:
  """int32 ``[H * W]``: the trace (see ``CompressedVideo._trace``) after the copies of ``cells``."""
  pad = cells.pad
  rows = -(-height // _CELL) * _CELL + 2 * pad
  cols = -(-width // _CELL) * _CELL + 2 * pad
  canvas = _identity_canvas(height, width, pad).copy()
  windows = np.lib.stride_tricks.sliding_window_view(canvas, (_CELL, _CELL))
  grid = canvas.reshape(rows // _CELL, _CELL, cols // _CELL, _CELL)
  b = cells.bounds
  for k in range(len(b) - 1):
    lo, hi = b[k], b[k + 1]
    if lo == hi:
      continue
    r, c = cells.dst_row[lo:hi], cells.dst_col[lo:hi]
    values = windows[cells.src_top[lo:hi], cells.src_left[lo:hi]]  # [n, 8, 8], a copy
    if cells.check_src[k]:
      outside = values < 0
      if outside.any():  # CoViAR copies a pixel only from inside the frame: those keep their value
        values = np.where(outside, grid[r, :, c, :], values)
    grid[r, :, c, :] = values
    if cells.check_dst[k]:
      canvas[:pad] = -1
      canvas[pad + height:] = -1
      canvas[:, :pad] = -1
      canvas[:, pad + width:] = -1
  return canvas[pad:pad + height, pad:pad + width].reshape(-1)


# -- Compiled kernels (optional) ------------------------------------------------------------------
# With numba installed, the trace, the accumulated MVs and the residual are three small loops in
# machine code: CoViAR's per-pixel C loop itself, ~10x faster than the batched NumPy above (which
# stays the path without numba, and the reference the tests hold the kernels to). Compiled on first
# use and cached on disk, so worker processes load them instead of compiling.
_KERNELS_ENV = "KD_JAX_NUMBA"  # "0" turns the kernels off (the NumPy path)


def _build_kernels(cache: bool = True):
  import numba  # pylint: disable=import-outside-toplevel

  jit = numba.njit(cache=cache, nogil=True)

  @jit
  def trace_loop(bw, bh, src_x, src_y, dst_x, dst_y, counts, height, width):
    # CoViAR's loop: each P-frame copies, block by block and pixel by pixel, the previous frame's
    # trace from the pixel at the same offset around the block's source, where both pixels lie
    # inside the frame (the row and column ranges below); every copy reads the previous frame.
    # Whole-array copies are written as loops: numba's slice assignment is ~10x slower.
    size = height * width
    old = np.empty(size, np.int32)
    for p in range(size):
      old[p] = p
    new = old.copy()
    first = 0
    for n in counts:
      for b in range(first, first + n):
        mx = np.int64(src_x[b]) - dst_x[b]
        my = np.int64(src_y[b]) - dst_y[b]
        if mx == 0 and my == 0:
          continue
        r0 = max(dst_y[b] - bh[b] // 2, -my, 0)
        r1 = min(dst_y[b] + bh[b] // 2, height - my, height)
        c0 = max(dst_x[b] - bw[b] // 2, -mx, 0)
        c1 = min(dst_x[b] + bw[b] // 2, width - mx, width)
        for r in range(r0, r1):
          d = r * width
          s = (r + my) * width + mx
          for c in range(c0, c1):
            new[d + c] = old[s + c]
      first += n
      for p in range(size):
        old[p] = new[p]
    return old

  @jit
  def mv_loop(trace, height, width):
    mv = np.empty((height, width, 2), np.int32)
    inv = 1.0 / width  # the exact division of _accumulated_mv
    for y in range(height):
      for x in range(width):
        t = trace[y * width + x]
        ty = np.int64((t + 0.5) * inv)
        mv[y, x, 0] = x - (t - ty * width)
        mv[y, x, 1] = y - ty
    return mv

  @jit
  def residual_loop(trace, iframe, rgb):
    height, width = rgb.shape[0], rgb.shape[1]
    res = np.empty((height, width, 3), np.int32)
    inv = 1.0 / width
    for y in range(height):
      for x in range(width):
        t = trace[y * width + x]
        ty = np.int64((t + 0.5) * inv)
        tx = t - ty * width
        for c in range(3):
          res[y, x, c] = np.int32(rgb[y, x, c]) - np.int32(iframe[ty, tx, c])
    return res

  return trace_loop, mv_loop, residual_loop


_KERNELS: list = []  # [kernels or None], filled on first use


def _kernels():
  """(trace_loop, mv_loop, residual_loop) compiled with numba, or None (not installed, or turned
  off with KD_JAX_NUMBA=0)."""
  if not _KERNELS:
    kernels = None
    if os.environ.get(_KERNELS_ENV, "1") != "0":
      try:
        kernels = _build_kernels()
      except ImportError:
        pass
      except RuntimeError:  # numba finds no writable cache directory: compile in each process
        kernels = _build_kernels(cache=False)
    _KERNELS.append(kernels)
  return _KERNELS[0]


def _trace_compiled(kernels, mvs: np.ndarray, counts: np.ndarray, height: int,
                    width: int) -> np.ndarray:
  """int32 ``[H * W]``: ``_trace_blocks`` of the P-frames' concatenated vectors, compiled."""
  cols = [np.ascontiguousarray(mvs[k], dtype=np.int32)
          for k in ("w", "h", "src_x", "src_y", "dst_x", "dst_y")]
  return kernels[0](*cols, np.asarray(counts, np.int64), height, width)


_REENCODE_FIRST = ("pass the original video through kd_jax.data.codec.reencode first (python -m "
                   "kd_jax.data.prepare does it for datasets)")
_VOP_START = b"\x00\x00\x01\xb6"
_B_VOP = 2  # vop_coding_type: 0 I, 1 P, 2 B, 3 S (ISO/IEC 14496-2, 6.2.5)


def _vop_type(packet: bytes) -> int | None:
  """The coding type of the first VOP in a packet (the 2 bits after its start code), or None."""
  k = packet.find(_VOP_START)
  return packet[k + 4] >> 6 if 0 <= k < len(packet) - 4 else None


def _check_raw_stream(head: bytes, name: str) -> None:
  """Rejects what is not a raw MPEG-4 Part 2 stream, saying to re-encode it first.

  FFmpeg's m4v demuxer finds MPEG-4 start codes anywhere, so an original AVI (MPEG-4 inside,
  an audio track, B-frames) demuxes into packets that fail at frame 0 with nothing said about why.
  A raw stream starts with a start code (00 00 01) of a visual object sequence (B0), a visual
  object (B5), a video object (00-1F), a video object layer (20-2F) or a VOP (B6); an H.264
  Annex B stream starts with 00 00 00 01 or a NAL unit.
  """
  kind = container_kind(head)
  if kind is not None:
    raise VideoDecodeError(f"{name}: {kind} container, not the raw MPEG-4 Part 2 stream that "
                           f"reencode writes; {_REENCODE_FIRST}",
                           reason=f"{kind} file, not re-encoded")
  if head[:3] != b"\x00\x00\x01" or not (head[3] <= 0x2F or head[3] in (0xB0, 0xB5, 0xB6)):
    raise VideoDecodeError(f"{name}: not a raw MPEG-4 Part 2 stream as reencode writes (it starts "
                           f"with {head[:4].hex(' ')}); {_REENCODE_FIRST}",
                           reason="not a re-encoded stream")


class CompressedVideo:
  """Random access to a raw MPEG-4 Part 2 stream and its CoViAR representations.

  The stream is demuxed once at construction (cheap: no decoding beyond the first frame, which
  validates the input); GOPs are indexed by the real keyframes. Every request starts a fresh decoder
  at the keyframe of the GOP it needs and decodes only up to the frame it needs, so memory stays
  bounded by one GOP and nothing is cached.

  For one training/test segment, :meth:`representations` returns the I-frame, the accumulated
  motion vectors and the accumulated residual of a frame while decoding its GOP once; prefer it to
  calling :meth:`iframe`, :meth:`motion_vectors` and :meth:`residual` separately (three decodes).

  Frame indices are packet indices (one packet per frame in ``m4v``), as in CoViAR.

  Args:
    data: the stream (as written by :func:`encode_frames` / :func:`reencode`) as bytes or a uint8
      array, or a path to it.
    name: how errors refer to the video (default: the path, or ``<bytes, N bytes>``).

  Raises:
    VideoDecodeError: empty, truncated, corrupt or non-MPEG-4 input; an original video (a
      container such as AVI or MP4, or a stream with B-frames) says to run it through
      :func:`reencode` first. Corruption past the first frame is reported by the method whose
      decode meets it.
  """

  def __init__(self, data: Source | np.ndarray, *, name: str | None = None):
    if isinstance(data, np.ndarray):  # e.g. a uint8 feature read back from array_record.
      data = data.tobytes()
    self._name = _describe(data, name)
    if not isinstance(data, (bytes, bytearray, memoryview)):
      try:
        with open(data, "rb") as f:
          data = f.read()
      except OSError as e:
        raise VideoDecodeError(f"{self._name}: cannot read ({e})") from e
    if len(data) == 0:
      raise VideoDecodeError(f"{self._name}: empty input (0 bytes)", reason="empty file (0 bytes)")
    _check_raw_stream(bytes(data[:16]), self._name)
    try:
      with av.open(io.BytesIO(bytes(data)), mode="r", format=_FORMAT) as container:
        stream = container.streams.video[0]
        self._width = stream.codec_context.width
        self._height = stream.codec_context.height
        packets = [(bytes(p), p.is_keyframe) for p in container.demux(stream) if p.size > 0]
    except (av.FFmpegError, IndexError) as e:
      raise VideoDecodeError(f"{self._name}: cannot demux as an MPEG-4 Part 2 stream ({e})") from e
    if not packets or self._width <= 0 or self._height <= 0:
      raise VideoDecodeError(f"{self._name}: not an MPEG-4 Part 2 video stream (no decodable "
                             "video header)")
    if not packets[0][1]:
      raise VideoDecodeError(f"{self._name}: stream does not start with a keyframe")
    for i, (packet, _) in enumerate(packets):
      if _vop_type(packet) == _B_VOP:
        raise VideoDecodeError(
            f"{self._name}: frame {i} is a B-frame, which reencode never writes and CoViAR "
            f"representations do not support; {_REENCODE_FIRST}", reason="has B-frames")
    self._packets = [p for p, _ in packets]
    self._gop_starts = np.array([i for i, (_, key) in enumerate(packets) if key], np.int64)
    self._gop_starts.flags.writeable = False
    for _ in self._decode(0, 1):  # Validates the first frame.
      pass

  # -- Properties ---------------------------------------------------------------------------

  @property
  def name(self) -> str:
    return self._name

  @property
  def num_frames(self) -> int:
    return len(self._packets)

  @property
  def gop_starts(self) -> np.ndarray:
    """int64 ``[G]``: frame index of each GOP's I-frame (read-only), ascending, starting at 0."""
    return self._gop_starts

  @property
  def height(self) -> int:
    return self._height

  @property
  def width(self) -> int:
    return self._width

  def __repr__(self) -> str:
    return (f"CompressedVideo({self._name}, {self.num_frames} frames, {self._width}x"
            f"{self._height}, {len(self._gop_starts)} GOPs)")

  # -- Indexing -----------------------------------------------------------------------------

  def _check_index(self, frame_index: int) -> int:
    i = int(frame_index)
    if not 0 <= i < self.num_frames:
      raise IndexError(f"{self._name}: frame {i} out of range [0, {self.num_frames})")
    return i

  def gop_index(self, frame_index: int) -> tuple[int, int]:
    """(GOP number, position in the GOP) of a frame; position 0 is the I-frame."""
    i = self._check_index(frame_index)
    gop = int(np.searchsorted(self._gop_starts, i, side="right")) - 1
    return gop, i - int(self._gop_starts[gop])

  def gop_length(self, gop: int) -> int:
    """Number of frames of GOP ``gop``."""
    starts = self._gop_starts
    end = int(starts[gop + 1]) if gop + 1 < len(starts) else self.num_frames
    return end - int(starts[gop])

  # -- Decoding -----------------------------------------------------------------------------

  def _new_decoder(self, pixels: bool = True) -> av.CodecContext:
    ctx = av.CodecContext.create(_CODEC, "r")
    # Without pixels (motion vectors only) the decoder skips the inverse DCT: the vectors are parsed
    # from the bitstream alone, and the decode is about 15 % cheaper.
    ctx.options = {"flags2": _EXPORT_MVS} if pixels else {"flags2": _EXPORT_MVS, "skip_idct": "all"}
    # One slice thread: no frame-threading delay (one frame out per packet in), and data workers
    # already run in parallel.
    ctx.thread_type = "SLICE"
    ctx.thread_count = 1
    return ctx

  def _decode(self, start: int, stop: int,
              pixels: bool = True) -> Iterable[tuple[int, av.VideoFrame]]:
    """Yields (index, frame) for frames [start, stop), starting a fresh decoder at a keyframe;
    ``pixels=False``: frames whose motion vectors are right but whose pixels are not."""
    ctx = self._new_decoder(pixels)
    for i in range(start, stop):
      try:
        frames = ctx.decode(_padded_packet(self._packets[i]))
      except av.FFmpegError as e:
        raise VideoDecodeError(f"{self._name}: frame {i} does not decode ({e})") from e
      if len(frames) != 1 or frames[0].is_corrupt:
        raise VideoDecodeError(f"{self._name}: frame {i} is corrupt or truncated")
      frame = frames[0]
      if frame.width != self._width or frame.height != self._height:
        raise VideoDecodeError(f"{self._name}: frame {i} is {frame.width}x{frame.height}, "
                               f"expected {self._width}x{self._height}")
      yield i, frame

  def _trace(self, frame_index: int, *, need_rgb: bool
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Decodes a frame's GOP up to it and returns (trace, I-frame RGB, frame RGB).

    ``trace`` is int32 ``[H * W]``: for each pixel (flat index y * W + x), the flat index of the
    I-frame pixel it traces back to through the block copies of the P-frames (section 8.3). The
    copies of all the P-frames are built at once after the decode (``_gop_cells``) and applied as
    whole 8x8 cells (``_trace_cells``); blocks that do not fit that take ``_trace_blocks``. With
    numba, CoViAR's per-pixel loop compiled (``_kernels``) does it all.
    """
    i = self._check_index(frame_index)
    gop, _ = self.gop_index(i)
    start = int(self._gop_starts[gop])
    h, w = self._height, self._width
    iframe = rgb = None
    moves, movers = [], []  # the exported vectors of the P-frames that have any, and their index
    for j, frame in self._decode(start, i + 1, pixels=need_rgb):
      if j > start:
        side = frame.side_data.get("MOTION_VECTORS")
        if side is not None and len(side):
          moves.append(side.to_ndarray())
          movers.append(j)
      if need_rgb and j == start:
        iframe = _to_rgb(frame)
      if need_rgb and j == i:
        rgb = iframe if j == start else _to_rgb(frame)
    if not moves:
      return np.arange(h * w, dtype=np.int32), iframe, rgb
    allm = _concat_records(moves)
    counts = np.array([len(m) for m in moves], np.int64)
    future = allm["source"] > 0
    if future.any():
      j = movers[int(np.searchsorted(np.cumsum(counts), np.argmax(future), side="right"))]
      raise VideoDecodeError(f"{self._name}: frame {j} has B-frame (future) references, "
                             "which CoViAR representations do not support")
    kernels = _kernels()
    if kernels is not None:
      return _trace_compiled(kernels, allm, counts, h, w), iframe, rgb
    cells = _gop_cells(allm, counts, h, w)
    if cells is None:
      return _trace_blocks(moves, h, w), iframe, rgb
    return _trace_cells(cells, h, w), iframe, rgb

  def _mv_from_trace(self, trace: np.ndarray) -> np.ndarray:
    kernels = _kernels()
    if kernels is not None:
      return kernels[1](trace, self._height, self._width)
    return _accumulated_mv(trace, self._height, self._width)

  def _residual_from_trace(self, trace: np.ndarray, iframe: np.ndarray,
                           rgb: np.ndarray) -> np.ndarray:
    kernels = _kernels()
    if kernels is not None:
      return kernels[2](trace, iframe, rgb)
    warped = np.take(iframe.reshape(-1, 3), trace, axis=0).reshape(rgb.shape)
    return np.subtract(rgb, warped, dtype=np.int32)

  # -- Public accessors ---------------------------------------------------------------------

  def iframe(self, frame_index: int) -> np.ndarray:
    """uint8 ``[H, W, 3]``: RGB of the I-frame of the GOP that contains ``frame_index``."""
    gop, _ = self.gop_index(frame_index)
    start = int(self._gop_starts[gop])
    (_, frame), = self._decode(start, start + 1)
    return _to_rgb(frame)

  def motion_vectors(self, frame_index: int) -> np.ndarray:
    """int32 ``[H, W, 2]``: CoViAR accumulated motion vectors back to the GOP's I-frame.

    Channel 0 is x, 1 is y; value = current position minus traced I-frame position, so content
    moving right by v px/frame reads +k*v at GOP position k. Zero on an I-frame.
    """
    trace, _, _ = self._trace(frame_index, need_rgb=False)
    return self._mv_from_trace(trace)

  def residual(self, frame_index: int) -> np.ndarray:
    """int32 ``[H, W, 3]``: frame minus the motion-traced I-frame, RGB order. Zero on an I-frame."""
    trace, iframe, rgb = self._trace(frame_index, need_rgb=True)
    return self._residual_from_trace(trace, iframe, rgb)

  def representations(self, frame_index: int) -> CoviarFrame:
    """I-frame, accumulated motion vectors and residual of a frame, decoding its GOP once.

    This is the per-segment call of the data pipeline. For the fused (PKD IC-training) loader,
    pass ``gop_starts[g] + p``: the I-frame of GOP ``g`` and the P-frame at position ``p`` of the
    same GOP come from one decode.
    """
    trace, iframe, rgb = self._trace(frame_index, need_rgb=True)
    return CoviarFrame(iframe=iframe, motion_vectors=self._mv_from_trace(trace),
                       residual=self._residual_from_trace(trace, iframe, rgb))

  def rgb(self, start: int, count: int) -> np.ndarray:
    """uint8 ``[count, H, W, 3]``: the decoded RGB frames ``start .. start + count - 1``."""
    if count < 1 or start < 0 or start + count > self.num_frames:
      raise IndexError(f"{self._name}: frames [{start}, {start + count}) out of range "
                       f"[0, {self.num_frames})")
    return self.frames(np.arange(start, start + count))

  def frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]``: the RGB frames at ``indices`` (any order, repeats allowed).

    Each distinct frame is decoded once; a decoder runs on across consecutive needed frames and
    restarts at a keyframe only when skipping ahead pays (a gap that crosses a GOP start).
    Loop-padded clip indices therefore cost one pass over the clip.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size == 0:
      return np.zeros((0, self._height, self._width, 3), np.uint8)
    for i in (int(indices.min()), int(indices.max())):
      self._check_index(i)
    wanted = np.unique(indices)
    # Keyframe at or before each wanted frame: where a fresh decoder for it would start.
    starts = self._gop_starts[np.searchsorted(self._gop_starts, wanted, side="right") - 1]
    decoded = {}
    pos = 0
    while pos < len(wanted):
      end = pos + 1
      # Decode on while restarting at the next wanted frame's keyframe would skip nothing.
      while end < len(wanted) and starts[end] <= wanted[end - 1] + 1:
        end += 1
      want = set(wanted[pos:end].tolist())
      for j, frame in self._decode(int(starts[pos]), int(wanted[end - 1]) + 1):
        if j in want:
          decoded[j] = _to_rgb(frame)
      pos = end
    return np.stack([decoded[i] for i in indices.tolist()])

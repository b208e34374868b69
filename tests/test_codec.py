"""Tests of kd_jax.data.codec: MPEG-4 encoding and the CoViAR representations."""

import io

import av
import numpy as np
import pytest
from scipy import ndimage

from kd_jax.data import codec

H, W = 64, 96


def _texture(width: int, height: int = H, seed: int = 0) -> np.ndarray:
  """A smooth, well-textured image: strong luma detail, mild colour (survives 4:2:0)."""
  rng = np.random.default_rng(seed)
  g = ndimage.gaussian_filter(rng.normal(size=(height, width)), 1.2)
  g = g / g.std() * 50 + 128
  return np.clip(np.stack([g, 0.9 * g + 10, 0.8 * g + 30], -1), 0, 255).astype(np.uint8)


def _pan(vx: int, vy: int = 0, num_frames: int = 24, h: int = H, w: int = W) -> np.ndarray:
  """Frames of a texture whose content moves by (vx, vy) px per frame."""
  margin = 4 + num_frames * max(abs(vx), abs(vy))
  tex = _texture(w + 2 * margin, h + 2 * margin)
  return np.stack([tex[margin - t * vy:margin - t * vy + h, margin - t * vx:margin - t * vx + w]
                   for t in range(num_frames)])


def _keyframes_of(data: bytes) -> list[int]:
  """Keyframe indices read back by PyAV directly (independent of CompressedVideo)."""
  with av.open(io.BytesIO(data), format="m4v") as c:
    return [i for i, f in enumerate(c.decode(video=0)) if f.pict_type == 1]


@pytest.fixture(scope="module")
def pan_right():
  frames = _pan(2)
  return frames, codec.encode_frames(frames)


# -- Encoding and GOP indexing -------------------------------------------------------------------


def test_encode_strict_gops_despite_scene_cut():
  rng = np.random.default_rng(1)
  frames = np.concatenate([np.repeat(_texture(W)[None], 17, 0),
                           rng.integers(0, 256, (23, H, W, 3), dtype=np.uint8)])
  data = codec.encode_frames(frames)
  assert _keyframes_of(data) == [0, 12, 24, 36]
  video = codec.CompressedVideo(np.frombuffer(data, np.uint8))
  assert video.num_frames == 40
  assert (video.height, video.width) == (H, W)
  np.testing.assert_array_equal(video.gop_starts, [0, 12, 24, 36])


@pytest.mark.parametrize("gop_size,keyframes,expected", [
    (5, (), [0, 5, 10, 15, 20, 25]),
    (12, (7, 9), [0, 7, 9, 21]),
])
def test_irregular_keyframes(gop_size, keyframes, expected):
  frames = _pan(1, num_frames=30)
  data = codec.encode_frames(frames, gop_size=gop_size, keyframes=keyframes)
  assert _keyframes_of(data) == expected
  video = codec.CompressedVideo(data)
  np.testing.assert_array_equal(video.gop_starts, expected)
  starts = expected + [30]
  for g, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
    assert video.gop_length(g) == b - a
    for i in (a, b - 1):
      assert video.gop_index(i) == (g, i - a)
      # The I-frame of frame i's GOP is the source frame at the real keyframe, not i // 12 * 12.
      err = np.abs(video.iframe(i).astype(int) - frames[a]).mean()
      assert err < 4.0, (i, a, err)


def test_iframes_and_rgb_match_source(pan_right):
  frames, data = pan_right
  video = codec.CompressedVideo(data)
  for i in (0, 5, 12, 23):
    gop_start = 12 * (i // 12)  # Strict 12-frame GOPs in this stream.
    assert np.abs(video.iframe(i).astype(int) - frames[gop_start]).mean() < 4.0
  clip = video.rgb(3, 14)
  assert clip.shape == (14, H, W, 3) and clip.dtype == np.uint8
  assert np.abs(clip.astype(int) - frames[3:17]).mean() < 4.0
  # Arbitrary, repeated and wrapped indices give the same frames as a contiguous decode.
  all_frames = video.rgb(0, 24)
  idx = [20, 21, 22, 23, 0, 1, 2, 13, 13, 5]
  np.testing.assert_array_equal(video.frames(idx), all_frames[idx])


def test_qscale_controls_quality():
  frames = _pan(1, num_frames=6)
  fine = codec.encode_frames(frames, qscale=1)
  coarse = codec.encode_frames(frames, qscale=10)
  assert len(fine) > 1.5 * len(coarse)
  err = lambda d: np.abs(codec.CompressedVideo(d).rgb(0, 6).astype(int) - frames).mean()
  assert err(fine) < err(coarse)


def test_reencode_resizes_any_container(tmp_path):
  # A source in another codec and container, at another size.
  path = tmp_path / "src.avi"
  src = np.zeros((15, 80, 120, 3), np.uint8)
  src[:, :, :60] = (200, 40, 40)  # Left half red, right half blue.
  src[:, :, 60:] = (30, 60, 220)
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mjpeg", rate=25)
    stream.width, stream.height, stream.pix_fmt = 120, 80, "yuvj420p"
    for f in src:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    out.mux(stream.encode(None))
  data = codec.reencode(path, width=64, height=48, gop_size=6)
  assert _keyframes_of(data) == [0, 6, 12]
  video = codec.CompressedVideo(data)
  assert (video.num_frames, video.height, video.width) == (15, 48, 64)
  frame = video.rgb(14, 1)[0].astype(int)
  # Aspect ratio is not kept: the halves stay halves of the 64-pixel width.
  assert np.abs(frame[:, :28] - (200, 40, 40)).mean() < 12
  assert np.abs(frame[:, 36:] - (30, 60, 220)).mean() < 12
  assert codec.reencode(path.read_bytes(), width=64, height=48, gop_size=6) == data


def test_encode_rejects_bad_arguments():
  with pytest.raises(ValueError, match="uint8"):
    codec.encode_frames(np.zeros((2, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match="even"):
    codec.encode_frames(np.zeros((2, 15, 16, 3), np.uint8))
  with pytest.raises(ValueError, match="qscale"):
    codec.encode_frames(np.zeros((2, 16, 16, 3), np.uint8), qscale=0)
  with pytest.raises(ValueError, match="no frames"):
    codec.encode_frames(np.zeros((0, 16, 16, 3), np.uint8))


# -- Motion vectors and residuals ---------------------------------------------------------------


@pytest.mark.parametrize("vx,vy,h,w", [(2, 0, H, W), (-1, 0, H, W), (0, 1, H, W),
                                        (1, -1, 56, 88)])  # Not whole macroblocks: 3.5 x 5.5.
def test_accumulated_mv_of_pan(vx, vy, h, w):
  frames = _pan(vx, vy, h=h, w=w)
  video = codec.CompressedVideo(codec.encode_frames(frames))
  for frame_index in (1, 4, 11, 12, 17):
    k = frame_index % 12
    mv = video.motion_vectors(frame_index)
    assert mv.shape == (h, w, 2) and mv.dtype == np.int32
    # Textured interior: a block margin, plus the strip whose content entered the frame after the
    # I-frame (it cannot trace back into it).
    y0, y1 = 16 + max(k * vy, 0), h - 16 + min(k * vy, 0)
    x0, x1 = 16 + max(k * vx, 0), w - 16 + min(k * vx, 0)
    interior = mv[y0:y1, x0:x1]
    assert interior.size > 0
    np.testing.assert_array_equal(interior[..., 0], k * vx, err_msg=f"frame {frame_index}")
    np.testing.assert_array_equal(interior[..., 1], k * vy, err_msg=f"frame {frame_index}")


def test_iframe_representations_are_zero(pan_right):
  _, data = pan_right
  video = codec.CompressedVideo(data)
  rep = video.representations(12)
  assert not rep.motion_vectors.any()
  assert not rep.residual.any()


def test_residual_static_and_moving(pan_right):
  frames, data = pan_right
  static = codec.CompressedVideo(codec.encode_frames(np.repeat(frames[:1], 8, 0)))
  assert np.abs(static.residual(7)).mean() < 0.5
  video = codec.CompressedVideo(data)
  rep = video.representations(9)
  assert rep.residual.dtype == np.int32 and rep.residual.shape == (H, W, 3)
  naive = np.abs(frames[9].astype(int) - frames[0])
  assert np.abs(rep.residual).mean() < 0.35 * naive.mean()
  # Away from the strip that entered the frame after the I-frame (9 frames x 2 px) and the
  # borders, the motion-compensated residual is codec noise only.
  inner = np.s_[16:-16, 16 + 18:-16]
  assert np.abs(rep.residual[inner]).mean() < 0.1 * naive[inner].mean()


def test_representations_satisfy_coviar_identity(pan_right):
  """frame(i) = I(i - D(i)) + R(i): the residual is relative to the MV-traced I-frame."""
  _, data = pan_right
  video = codec.CompressedVideo(data)
  frame_index = 19
  rep = video.representations(frame_index)
  decoded = video.rgb(frame_index, 1)[0].astype(int)
  yy, xx = np.mgrid[:H, :W]
  src_y = yy - rep.motion_vectors[..., 1]
  src_x = xx - rep.motion_vectors[..., 0]
  traced = rep.iframe[src_y, src_x].astype(int)
  np.testing.assert_array_equal(decoded, traced + rep.residual)
  # The one-decode accessor agrees with the separate ones.
  np.testing.assert_array_equal(rep.iframe, video.iframe(frame_index))
  np.testing.assert_array_equal(rep.motion_vectors, video.motion_vectors(frame_index))
  np.testing.assert_array_equal(rep.residual, video.residual(frame_index))


_MV_DTYPE = np.dtype([("source", "<i4"), ("w", "u1"), ("h", "u1"), ("src_x", "<i2"),
                      ("src_y", "<i2"), ("dst_x", "<i2"), ("dst_y", "<i2"), ("flags", "<u8"),
                      ("motion_x", "<i4"), ("motion_y", "<i4"), ("motion_scale", "<u2")])


def test_block_copies_match_per_pixel_loop():
  """The vectorised trace step equals a literal per-pixel port of coviar_data_loader.c."""
  h, w = 20, 40
  rows = [  # (w, h, src_x, src_y, dst_x, dst_y)
      (16, 16, 5, 9, 8, 8),  # Partly outside at the top-left.
      (16, 16, 24, 8, 24, 8),  # No motion: ignored.
      (8, 8, 39, 14, 36, 12),  # Source partly outside at the right.
      (8, 8, 30, 5, 28, 4),
  ]
  mvs = np.zeros(len(rows), _MV_DTYPE)
  for r, (bw, bh, sx, sy, dx, dy) in enumerate(rows):
    mvs[r] = (-1, bw, bh, sx, sy, dx, dy, 0, 0, 0, 2)
  rng = np.random.default_rng(0)
  old = rng.permutation(h * w).astype(np.int32).reshape(h, w)
  expected = old.copy()
  for bw, bh, sx, sy, dx, dy in rows:
    if (sx, sy) == (dx, dy):
      continue
    for ox in range(-bw // 2, bw // 2):
      for oy in range(-bh // 2, bh // 2):
        c, r, pc, pr = dx + ox, dy + oy, sx + ox, sy + oy
        if 0 <= c < w and 0 <= r < h and 0 <= pc < w and 0 <= pr < h:
          expected[r, c] = old[pr, pc]
  dst, src = codec._block_copies(mvs, h, w)
  got = old.reshape(-1).copy()
  got[dst] = old.reshape(-1)[src]
  np.testing.assert_array_equal(got.reshape(h, w), expected)


def _coviar_step(old: np.ndarray, blocks) -> np.ndarray:
  """One P-frame of CoViAR's trace, a literal per-pixel port of coviar_data_loader.c: for each
  block (w, h, src_x, src_y, dst_x, dst_y) with dst != src, each pixel copies from the previous
  frame's pixel at the same offset around src, where both pixels lie inside the frame."""
  h, w = old.shape
  new = old.copy()
  for bw, bh, sx, sy, dx, dy in blocks:
    if (sx, sy) == (dx, dy):
      continue
    for oy in range(-(bh // 2), bh // 2):
      for ox in range(-(bw // 2), bw // 2):
        c, r, pc, pr = dx + ox, dy + oy, sx + ox, sy + oy
        if 0 <= c < w and 0 <= r < h and 0 <= pc < w and 0 <= pr < h:
          new[r, c] = old[pr, pc]
  return new


def _random_motion(rng, h, w, max_motion=20):
  """One P-frame's exported vectors as FFmpeg's mpeg4 decoder lays them out: every macroblock of
  the (partial) 16x16 grid, as one 16x16 vector or four 8x8 ones (4MV), some still, some pointing
  out of the frame."""
  rows = []
  for my in range(-(-h // 16)):
    for mx in range(-(-w // 16)):
      if rng.random() < 0.3:
        parts = [(8, 8, mx * 16 + 4 + 8 * (i & 1), my * 16 + 4 + 8 * (i >> 1)) for i in range(4)]
      else:
        parts = [(16, 16, mx * 16 + 8, my * 16 + 8)]
      for bw, bh, x, y in parts:
        mv = (0, 0) if rng.random() < 0.25 else tuple(rng.integers(-max_motion, max_motion + 1, 2))
        rows.append((bw, bh, x + mv[0], y + mv[1], x, y))
  mvs = np.zeros(len(rows), _MV_DTYPE)
  for r, (bw, bh, sx, sy, dx, dy) in enumerate(rows):
    mvs[r] = (-1, bw, bh, sx, sy, dx, dy, 0, 0, 0, 2)
  return mvs, rows


@pytest.mark.parametrize("h,w,frames", [(40, 72, 5), (48, 64, 3), (20, 36, 7)])
def test_batched_trace_matches_per_pixel_loop(h, w, frames):
  """The fast trace (8x8 cells on a padded canvas, a whole GOP at once) equals CoViAR's per-pixel
  loop on random motion fields: partial macroblocks, 4MV, vectors leaving the frame."""
  rng = np.random.default_rng(h * w + frames)
  moves, expected = [], np.arange(h * w).reshape(h, w)
  for _ in range(frames):
    mvs, rows = _random_motion(rng, h, w)
    moves.append(mvs)
    expected = _coviar_step(expected, rows)
  counts = np.array([len(m) for m in moves])
  cells = codec._gop_cells(np.concatenate(moves), counts, h, w)
  assert cells is not None  # FFmpeg's layout takes the fast path
  np.testing.assert_array_equal(codec._trace_cells(cells, h, w).reshape(h, w), expected)
  np.testing.assert_array_equal(codec._trace_blocks(moves, h, w).reshape(h, w), expected)
  mv = codec._accumulated_mv(expected.reshape(-1).astype(np.int32), h, w)
  yy, xx = np.mgrid[:h, :w]
  np.testing.assert_array_equal(mv[..., 0], xx - expected % w)
  np.testing.assert_array_equal(mv[..., 1], yy - expected // w)


def test_batched_trace_declines_overlapping_or_off_grid_blocks():
  h, w = 32, 32
  overlap = np.zeros(2, _MV_DTYPE)
  overlap[0] = (-1, 16, 16, 10, 9, 8, 8, 0, 0, 0, 2)
  overlap[1] = (-1, 8, 8, 5, 6, 4, 4, 0, 0, 0, 2)  # inside the first block
  off_grid = np.zeros(1, _MV_DTYPE)
  off_grid[0] = (-1, 8, 8, 9, 9, 6, 6, 0, 0, 0, 2)  # covers 2..9, not on the 8x8 grid
  # Neither occurs in FFmpeg's export; both go the block-by-block way (the previous code path).
  for mvs in (overlap, off_grid):
    assert codec._gop_cells(mvs, np.array([len(mvs)]), h, w) is None
  rows = [(int(m["w"]), int(m["h"]), int(m["src_x"]), int(m["src_y"]), int(m["dst_x"]),
           int(m["dst_y"])) for m in off_grid]
  np.testing.assert_array_equal(codec._trace_blocks([off_grid], h, w).reshape(h, w),
                                _coviar_step(np.arange(h * w).reshape(h, w), rows))


def test_accumulated_mv_is_exact_for_every_pixel():
  # The float64 division trick against integer arithmetic, for every flat index of large frames.
  for h, w in ((256, 340), (1080, 1920), (2160, 3840)):
    trace = np.arange(h * w, dtype=np.int32)
    assert not codec._accumulated_mv(trace, h, w).any()
    rev = trace[::-1].copy()
    mv = codec._accumulated_mv(rev, h, w)
    np.testing.assert_array_equal(mv[..., 0], np.arange(w)[None, :] - (rev % w).reshape(h, w))
    np.testing.assert_array_equal(mv[..., 1], np.arange(h)[:, None] - (rev // w).reshape(h, w))


def test_representations_match_reference_on_encoded_clip():
  """Every frame of a real encoded clip (content moving by different amounts, size not whole
  macroblocks) against a straightforward reference built from PyAV's own decode: the per-pixel
  CoViAR loop over the exported vectors, then the same gathers written plainly."""
  h, w = 40, 72
  frames = _pan(3, 2, num_frames=14, h=h, w=w).astype(np.int16)
  frames[:, 8:24, 16:40] = frames[:, 8:24, 16:40][:, :, ::-1] // 2 + 60  # a region moving otherwise
  frames = np.clip(frames + np.arange(14)[:, None, None, None] * 3, 0, 255).astype(np.uint8)
  data = codec.encode_frames(frames, gop_size=7)
  container = av.open(io.BytesIO(data), format="m4v")
  stream = container.streams.video[0]
  stream.codec_context.options = {"flags2": "+export_mvs"}
  decoded = list(container.decode(stream))
  container.close()
  video = codec.CompressedVideo(data)
  trace = iframe = None
  for i, frame in enumerate(decoded):
    rgb = frame.reformat(format="rgb24", interpolation="BICUBIC").to_ndarray()
    if i % 7 == 0:
      trace, iframe = np.arange(h * w).reshape(h, w), rgb
    else:
      side = frame.side_data.get("MOTION_VECTORS")
      rows = [] if side is None else [(int(m["w"]), int(m["h"]), int(m["src_x"]), int(m["src_y"]),
                                       int(m["dst_x"]), int(m["dst_y"])) for m in side.to_ndarray()]
      trace = _coviar_step(trace, rows)
    yy, xx = np.mgrid[:h, :w]
    ty, tx = trace // w, trace % w
    rep = video.representations(i)
    np.testing.assert_array_equal(rep.iframe, iframe, err_msg=f"frame {i}")
    np.testing.assert_array_equal(rep.motion_vectors, np.stack([xx - tx, yy - ty], -1),
                                  err_msg=f"frame {i}")
    np.testing.assert_array_equal(rep.residual, rgb.astype(np.int32) - iframe[ty, tx],
                                  err_msg=f"frame {i}")
    np.testing.assert_array_equal(video.motion_vectors(i), rep.motion_vectors)  # no-IDCT decode
  assert any(len(set(map(tuple, video.motion_vectors(i).reshape(-1, 2).tolist()))) > 2
             for i in range(14))  # the clip does move in more than one way


# -- Bad input ------------------------------------------------------------------------------------


def test_zero_bytes_and_non_video():
  with pytest.raises(codec.VideoDecodeError, match=r"<bytes, 0 bytes>.*empty"):
    codec.CompressedVideo(b"")
  with pytest.raises(codec.VideoDecodeError, match="clip.m4v"):
    codec.CompressedVideo(b"this is not a video at all " * 50, name="clip.m4v")
  noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
  with pytest.raises(codec.VideoDecodeError, match="<bytes, 4000 bytes>"):
    codec.CompressedVideo(noise)
  with pytest.raises(codec.VideoDecodeError, match="empty"):
    codec.reencode(b"")
  with pytest.raises(codec.VideoDecodeError, match="junk"):
    codec.reencode(b"junk" * 100, name="junk")
  with pytest.raises(codec.VideoDecodeError, match="missing.m4v"):
    codec.CompressedVideo("/nonexistent/missing.m4v")


def test_truncated_stream(pan_right):
  _, data = pan_right
  video = codec.CompressedVideo(data[:-200], name="cut.m4v")
  assert video.num_frames == 24
  video.rgb(0, 23)  # Everything before the cut decodes.
  with pytest.raises(codec.VideoDecodeError, match=r"cut.m4v.*frame 23"):
    video.representations(23)
  with pytest.raises(codec.VideoDecodeError, match="cut.m4v"):
    codec.CompressedVideo(data[:60], name="cut.m4v")


def test_corrupt_stream(pan_right):
  _, data = pan_right
  bad = bytearray(data)
  middle = len(bad) * 3 // 4  # Inside the second GOP.
  bad[middle:middle + 16] = np.random.default_rng(0).integers(0, 256, 16, np.uint8).tobytes()
  video = codec.CompressedVideo(bytes(bad), name="bad.m4v")
  video.rgb(0, 12)  # The first GOP is intact.
  with pytest.raises(codec.VideoDecodeError, match="bad.m4v"):
    video.rgb(0, video.num_frames)


def test_index_out_of_range(pan_right):
  _, data = pan_right
  video = codec.CompressedVideo(data)
  with pytest.raises(IndexError):
    video.iframe(24)
  with pytest.raises(IndexError):
    video.rgb(20, 5)


def test_concurrent_decoding_matches_sequential(pan_right):
  # grain maps elements on several threads; the RGB conversion keeps per-thread state.
  from concurrent.futures import ThreadPoolExecutor  # pylint: disable=g-import-not-at-top

  video = codec.CompressedVideo(pan_right[1])
  indices = [np.arange(i, min(i + 6, video.num_frames)) for i in range(0, video.num_frames, 3)]
  want = [video.frames(ix) for ix in indices]
  with ThreadPoolExecutor(max_workers=4) as pool:
    got = list(pool.map(video.frames, indices * 3))
  for a, b in zip(want * 3, got):
    np.testing.assert_array_equal(a, b)


def _source_avi(path, *, audio: bool):
  """An original video as cameras and datasets ship it: MPEG-4 in AVI, with B-frames and audio."""
  with av.open(str(path), "w") as out:
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.codec_context.max_b_frames = 2
    sound = out.add_stream("mp2", rate=44100) if audio else None
    for f in _pan(2, num_frames=12):
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
      if sound is not None:
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 1152), np.int16), format="s16",
                                             layout="stereo")
        samples.sample_rate = 44100
        out.mux(sound.encode(samples))
    out.mux(stream.encode(None))
    if sound is not None:
      out.mux(sound.encode(None))


def test_original_video_says_reencode_first(tmp_path):
  # Issue 16: a source AVI with audio used to fail with "frame 0 is corrupt or truncated".
  path = tmp_path / "v_Archery_g01_c01.avi"
  _source_avi(path, audio=True)
  for source in (path, path.read_bytes()):
    with pytest.raises(codec.VideoDecodeError) as e:
      codec.CompressedVideo(source, name="v_Archery_g01_c01.avi")
    message = str(e.value)
    assert message.startswith("v_Archery_g01_c01.avi: AVI container, not the raw MPEG-4 Part 2")
    assert "codec.reencode first" in message and "frame 0" not in message
  # What reencode makes of it is accepted, with every frame.
  video = codec.CompressedVideo(codec.reencode(path, width=W, height=H))
  assert video.num_frames == 12


def test_raw_streams_reencode_does_not_write_are_refused(tmp_path):
  # The elementary stream of an original (B-frames), without a container.
  buf = io.BytesIO()
  with av.open(buf, "w", format="m4v") as out:
    stream = out.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.codec_context.max_b_frames = 2
    for f in _pan(2, num_frames=12):
      out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    out.mux(stream.encode(None))
  # The B-frames, read back by PyAV (independently of codec's bit parsing).
  with av.open(io.BytesIO(buf.getvalue()), format="m4v") as c:
    assert any(f.pict_type == av.video.frame.PictureType.B for f in c.decode(video=0))
  with pytest.raises(codec.VideoDecodeError,
                     match=r"b\.m4v: frame \d+ is a B-frame.*reencode first"):
    codec.CompressedVideo(buf.getvalue(), name="b.m4v")
  # An H.264 Annex B stream, and other containers.
  with pytest.raises(codec.VideoDecodeError, match=r"starts with 00 00 00 01.*reencode first"):
    codec.CompressedVideo(b"\x00\x00\x00\x01\x67" + bytes(200), name="h.264")
  for head, kind in ((b"\x00\x00\x00\x20ftypisom", "MP4/MOV"), (b"\x1aE\xdf\xa3", "Matroska/WebM")):
    with pytest.raises(codec.VideoDecodeError, match=f"x: {kind} container"):
      codec.CompressedVideo(head + bytes(200), name="x")


# -- Compiled kernels (numba, optional) -------------------------------------------------------------

needs_numba = pytest.mark.skipif(codec._kernels() is None,
                                 reason="numba is not installed (the NumPy path is tested above)")


@needs_numba
@pytest.mark.parametrize("h,w,frames", [(40, 72, 5), (48, 64, 3), (20, 36, 7)])
def test_compiled_trace_matches_per_pixel_loop(h, w, frames):
  """The compiled trace equals the per-pixel port of CoViAR's loop, also on blocks that overlap or
  leave the 8x8 grid (which the batched NumPy trace declines)."""
  trace_loop, mv_loop, residual_loop = codec._kernels()
  rng = np.random.default_rng(h * w + frames + 1)
  moves, expected = [], np.arange(h * w).reshape(h, w)
  for k in range(frames):
    mvs, rows = _random_motion(rng, h, w)
    if k == 1:  # an overlapping block and an off-grid one, as in the test above
      extra = np.zeros(2, _MV_DTYPE)
      extra[0] = (-1, 8, 8, 5, 6, 4, 4, 0, 0, 0, 2)
      extra[1] = (-1, 8, 8, 9, 9, 6, 6, 0, 0, 0, 2)
      mvs = np.concatenate([mvs, extra])
      rows += [(8, 8, 5, 6, 4, 4), (8, 8, 9, 9, 6, 6)]
    moves.append(mvs)
    expected = _coviar_step(expected, rows)
  counts = np.array([len(m) for m in moves])
  trace = codec._trace_compiled(codec._kernels(), np.concatenate(moves), counts, h, w)
  np.testing.assert_array_equal(trace.reshape(h, w), expected)
  yy, xx = np.mgrid[:h, :w]
  mv = mv_loop(trace, h, w)
  np.testing.assert_array_equal(mv[..., 0], xx - expected % w)
  np.testing.assert_array_equal(mv[..., 1], yy - expected // w)
  iframe = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  res = residual_loop(trace, iframe, rgb)
  assert res.dtype == np.int32
  np.testing.assert_array_equal(res, rgb.astype(int) - iframe[expected // w, expected % w])


@needs_numba
def test_compiled_and_numpy_representations_are_identical(pan_right, monkeypatch):
  """Every frame of an encoded clip: the compiled path and the NumPy path give the same arrays."""
  _, data = pan_right
  video = codec.CompressedVideo(data)
  compiled = [video.representations(i) for i in range(video.num_frames)]
  compiled_mv = [video.motion_vectors(i) for i in (5, 13, 23)]
  monkeypatch.setattr(codec, "_KERNELS", [None])
  assert codec._kernels() is None
  for i, c in enumerate(compiled):
    n = video.representations(i)
    for field in ("iframe", "motion_vectors", "residual"):
      a, b = getattr(c, field), getattr(n, field)
      assert a.dtype == b.dtype and a.shape == b.shape, field
      np.testing.assert_array_equal(a, b, err_msg=f"frame {i} {field}")
  for i, mv in zip((5, 13, 23), compiled_mv):
    np.testing.assert_array_equal(mv, video.motion_vectors(i))


def test_kernels_can_be_turned_off(monkeypatch):
  monkeypatch.setattr(codec, "_KERNELS", [])
  monkeypatch.setenv("KD_JAX_NUMBA", "0")
  assert codec._kernels() is None


def test_rgb_conversion_is_single_threaded_and_unchanged(pan_right):
  """threads=1 (no swscale worker threads) gives the same RGB as PyAV's default conversion."""
  _, data = pan_right
  with av.open(io.BytesIO(data), format="m4v") as c:
    frames = list(c.decode(video=0))[:3]
  for f in frames:
    ref = f.reformat(format="rgb24", interpolation="BICUBIC").to_ndarray()
    np.testing.assert_array_equal(codec._to_rgb(f), ref)


@needs_numba
def test_kernels_compile_without_a_cache_directory(monkeypatch):
  build = codec._build_kernels
  calls = []

  def no_cache_dir(cache=True):
    calls.append(cache)
    if cache:
      raise RuntimeError("cannot cache function: no locator available")
    return build(cache=False)

  monkeypatch.setattr(codec, "_build_kernels", no_cache_dir)
  monkeypatch.setattr(codec, "_KERNELS", [])
  kernels = codec._kernels()
  assert calls == [True, False] and kernels is not None
  trace = np.arange(12, dtype=np.int32)
  np.testing.assert_array_equal(kernels[1](trace, 3, 4), np.zeros((3, 4, 2), np.int32))

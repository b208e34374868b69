"""Dense optical flow for the flow stream of two-stream I3D (GenKD), with dense_flow's conventions.

Flow is ``[T - 1, H, W, 2]`` float32 in pixels: entry ``t`` maps frame ``t`` to frame ``t + 1``,
channel 0 is the x displacement (positive to the right) and channel 1 the y displacement (positive
downwards), so ``frame_t[y, x] ~ frame_{t+1}[y + v, x + u]`` (OpenCV's convention).

The official GenKD recognition data (genkd.md section 7.1) are the frames and flow of
``bryanyzhu/two-stream-pytorch``, whose ``datasets/build_of.py`` runs ``yjxiong/dense_flow``'s
``extract_gpu -t 1 -b 20 -s 1``: TV-L1 (type 1) on consecutive (step 1) greyscale frames with
``cv::cuda::OpticalFlowDual_TVL1::create()``'s default parameters, then each component mapped
linearly from ``[-20, 20]`` to ``[0, 255]`` (``convertFlowToImage`` in dense_flow's
``src/common.cpp``) and stored as JPEG. The network sees ``(q / 255 - 0.5) / 0.226``
(``video_transforms.ToTensor`` then ``Normalize([0.5, 0.5], [0.226, 0.226])`` in GenKD's
``test_Top_I3D_att_fusion.py``).

Here TV-L1 runs on the CPU through OpenCV contrib's ``cv2.optflow.DualTVL1OpticalFlow`` with the
CUDA defaults translated (``DENSE_FLOW_TVL1``): the CUDA solver runs one loop of up to 300
iterations per warp and has no median filter, which on the CPU class is ``inner_iterations=300``,
``outer_iterations=1``, ``median_filtering=1`` (the CPU class defaults to 30 x 10 iterations with a
5x5 median filter between blocks). OpenCV is optional: ``pip install 'kd-jax[flow]'``.

:func:`panning_scene` makes clips of known motion for tests: a smooth, non-periodic texture moving
at a constant (sub)pixel velocity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import types
from typing import Any

import numpy as np

from kd_jax.errors import UserError

FLOW_BOUND = 20.0  # dense_flow's -b 20: +-20 px map to the ends of the uint8 range.
FLOW_MEAN = 0.5  # the official flow normalisation, on q / 255 (genkd.md section 7.1)
FLOW_STD = 0.226

# cv::cuda::OpticalFlowDual_TVL1::create() defaults (opencv_contrib cudaoptflow.hpp), which
# dense_flow's extract_gpu uses unchanged, expressed for the CPU cv2.optflow.DualTVL1OpticalFlow.
DENSE_FLOW_TVL1: Mapping[str, float | int] = types.MappingProxyType({
    "tau": 0.25,
    "lambda_": 0.15,
    "theta": 0.3,
    "nscales": 5,
    "warps": 5,
    "epsilon": 0.01,
    "inner_iterations": 300,
    "outer_iterations": 1,
    "scale_step": 0.8,
    "gamma": 0.0,
    "median_filtering": 1,  # 1 = off, as on the GPU
})

# cv::cuda::FarnebackOpticalFlow::create() defaults (dense_flow's type 0), for the CPU function.
DENSE_FLOW_FARNEBACK: Mapping[str, float | int] = types.MappingProxyType({
    "pyr_scale": 0.5,
    "levels": 5,
    "winsize": 13,
    "iterations": 10,
    "poly_n": 5,
    "poly_sigma": 1.1,
})

METHODS = ("tvl1", "farneback")

# Option name -> setter of cv2.optflow.DualTVL1OpticalFlow. Setters, not create()'s keywords,
# because the keyword names differ across OpenCV versions (4.x spells one `innnerIterations`).
_TVL1_SETTERS = {
    "tau": "setTau",
    "lambda_": "setLambda",
    "theta": "setTheta",
    "nscales": "setScalesNumber",
    "warps": "setWarpingsNumber",
    "epsilon": "setEpsilon",
    "inner_iterations": "setInnerIterations",
    "outer_iterations": "setOuterIterations",
    "scale_step": "setScaleStep",
    "gamma": "setGamma",
    "median_filtering": "setMedianFiltering",
}

_INSTALL = "pip install 'kd-jax[flow]'"


class FlowUnavailableError(UserError, ImportError):
  """OpenCV with the contrib optflow module is not installed (one line that names the extra)."""


def _cv2() -> Any:
  """Imports OpenCV, or raises one line that says which extra to install."""
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise FlowUnavailableError(
        f"optical flow needs OpenCV with its contrib modules; install it with: {_INSTALL}") from e
  if not hasattr(cv2, "optflow"):
    # opencv-python (without contrib) shadows the contrib build when both are installed.
    raise FlowUnavailableError(
        "the installed OpenCV has no contrib optflow module (TV-L1); uninstall opencv-python / "
        f"opencv-python-headless and install the contrib build with: {_INSTALL}")
  return cv2


def _check_frames(frames: np.ndarray) -> None:
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"optical_flow takes uint8 RGB frames [T, H, W, 3], got {frames.dtype} "
                     f"{frames.shape}; convert the clip to that layout first")
  if frames.shape[0] < 2:
    raise ValueError(f"optical_flow needs at least 2 frames, got {frames.shape[0]}")


def _options(method: str, defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict:
  unknown = sorted(set(options) - set(defaults))
  if unknown:
    raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
                     f"allowed: {', '.join(defaults)}")
  return {**defaults, **options}


def optical_flow(frames: np.ndarray, method: str = "tvl1", **options: Any) -> np.ndarray:
  """Dense flow between consecutive frames, in pixels (dense_flow's TV-L1 by default).

  Each pair of frames, converted to greyscale (ITU-R 601 luma, as dense_flow's ``BGR2GRAY``), gives
  ``flow[t]`` with ``frame_t[y, x] ~ frame_{t+1}[y + flow[t, y, x, 1], x + flow[t, y, x, 0]]``.

  Args:
    frames: uint8 RGB frames ``[T, H, W, 3]``, ``T >= 2``.
    method: ``"tvl1"`` (Zach, Pock and Bischof, "A Duality Based Approach for Realtime TV-L1
      Optical Flow", DAGM 2007; OpenCV contrib's dual TV-L1 with ``DENSE_FLOW_TVL1``) or
      ``"farneback"`` (Farneback, "Two-Frame Motion Estimation Based on Polynomial Expansion",
      SCIA 2003; core OpenCV with ``DENSE_FLOW_FARNEBACK``, roughly 60x faster and less accurate).
    **options: overrides of the method's parameters, by the names in ``DENSE_FLOW_TVL1`` or
      ``DENSE_FLOW_FARNEBACK``. OpenCV's thread count is global: set it with
      ``cv2.setNumThreads`` (e.g. 1 in each data-loading worker).

  Returns:
    float32 ``[T - 1, H, W, 2]``: x then y displacement from frame ``t`` to ``t + 1``.

  Raises:
    ValueError: frames of the wrong dtype or shape, an unknown method or option.
    FlowUnavailableError: OpenCV contrib is not installed.
  """
  frames = np.asarray(frames)
  if method not in METHODS:
    raise ValueError(f"unknown optical flow method {method!r}; choose one of {', '.join(METHODS)}")
  _check_frames(frames)
  cv2 = _cv2()
  grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
  out = np.empty((len(grey) - 1, *grey[0].shape, 2), np.float32)
  if method == "tvl1":
    params = _options(method, DENSE_FLOW_TVL1, options)
    alg = cv2.optflow.DualTVL1OpticalFlow_create()
    for name, value in params.items():
      getattr(alg, _TVL1_SETTERS[name])(value)
    for t in range(len(out)):
      out[t] = alg.calc(grey[t], grey[t + 1], None)
  else:
    p = _options(method, DENSE_FLOW_FARNEBACK, options)
    for t in range(len(out)):
      out[t] = cv2.calcOpticalFlowFarneback(
          grey[t], grey[t + 1], None, p["pyr_scale"], p["levels"], p["winsize"], p["iterations"],
          p["poly_n"], p["poly_sigma"], 0)
  return out


# -- Storage and network input ------------------------------------------------------------------


def _check_bound(bound: float) -> None:
  if not bound > 0:
    raise ValueError(f"bound must be a positive number of pixels, got {bound}")


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
  """Flow in pixels to uint8, dense_flow's ``convertFlowToImage``.

  ``q = clip(round(255 (v + bound) / (2 bound)), 0, 255)``: ``-bound`` -> 0, ``+bound`` -> 255,
  values beyond the bound saturate. Rounding is half to even, as ``cvRound``; the arithmetic is in
  float64, as dense_flow's (a float32 value against double bounds).
  """
  _check_bound(bound)
  v = np.asarray(flow, np.float64)
  if np.isnan(v).any():
    raise ValueError("flow contains NaN; it cannot be quantised")
  return np.clip(np.rint(255.0 * (v + bound) / (2.0 * bound)), 0, 255).astype(np.uint8)


def dequantize_flow(q: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
  """uint8 flow back to pixels: ``q / 255 * 2 bound - bound``, float32.

  Inverts :func:`quantize_flow` within half a step (``bound / 255`` px) inside ``[-bound, bound]``.
  """
  _check_bound(bound)
  q = np.asarray(q)
  if q.dtype != np.uint8:
    raise ValueError(f"dequantize_flow takes the uint8 output of quantize_flow, got {q.dtype}")
  return (q.astype(np.float64) * (2.0 * bound / 255.0) - bound).astype(np.float32)


def normalize_flow(q: np.ndarray, mean: float = FLOW_MEAN, std: float = FLOW_STD) -> np.ndarray:
  """Network input from stored uint8 flow: ``(q / 255 - mean) / std``, float32.

  The official flow transform (GenKD, two-stream-pytorch): ``ToTensor`` divides by 255, then
  ``Normalize`` with mean 0.5 and std 0.226 per channel; zero motion (q = 127.5) maps to 0 and
  ``+-bound`` to about ``+-2.21``.
  """
  q = np.asarray(q)
  if q.dtype != np.uint8:
    raise ValueError(f"normalize_flow takes uint8 (quantised) flow, got {q.dtype}; use "
                     "quantize_flow first")
  return ((q.astype(np.float32) / np.float32(255.0) - np.float32(mean))
          / np.float32(std)).astype(np.float32)


# -- Clips of known motion ----------------------------------------------------------------------


def panning_scene(num_frames: int, height: int, width: int, velocity: Sequence[float], *,
                  seed: int = 0, num_waves: int = 48,
                  wavelengths: tuple[float, float] = (6.0, 24.0)) -> np.ndarray:
  """A textured scene panning at a constant velocity: uint8 RGB ``[T, H, W, 3]``.

  Each colour channel is a sum of ``num_waves`` plane waves with random directions, wavelengths
  (uniform in ``wavelengths``, px), phases and amplitudes, evaluated exactly at
  ``(x - vx t, y - vy t)``, so frame ``t + 1`` is frame ``t`` moved by ``velocity`` px with no
  interpolation error, and the true flow is ``velocity`` everywhere except where content enters
  at the borders. Irrational frequency ratios make the texture non-periodic (no aperture or
  wrap-around ambiguity); it is rescaled to mean 128 and standard deviation 40 (clipped at 0, 255).

  Args:
    num_frames: T.
    height: H.
    width: W.
    velocity: ``(vx, vy)`` in px per frame, x to the right, y downwards.
    seed: seeds the texture.
    num_waves: plane waves per channel.
    wavelengths: range of the wavelengths, px.
  """
  vx, vy = (float(v) for v in velocity)
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width].astype(np.float64)
  t = np.arange(num_frames, dtype=np.float64)[:, None, None]
  xs, ys = x[None] - vx * t, y[None] - vy * t  # [T, H, W]: scene coordinates of each pixel
  channels = []
  for _ in range(3):
    angle = rng.uniform(0.0, np.pi, num_waves)
    k = 2.0 * np.pi / rng.uniform(*wavelengths, num_waves)
    phase = rng.uniform(0.0, 2.0 * np.pi, num_waves)
    amp = rng.uniform(0.5, 1.0, num_waves)
    v = np.zeros_like(xs)
    for i in range(num_waves):
      v += amp[i] * np.cos(k[i] * (np.cos(angle[i]) * xs + np.sin(angle[i]) * ys) + phase[i])
    channels.append(128.0 + 40.0 * (v - v.mean()) / v.std())
  return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)

"""Optical-flow speed on one core: flow fields per second of each method on a panning scene.

  python -m kd_jax.bench.flow_speed [--height 240 --width 320 --pairs 8 --repeats 3]

Prints wall-clock and CPU-time rates (best of ``--repeats``) and the median error against the
scene's known motion, with the load average before and after, since the machine is often shared.
OpenCV runs single-threaded, so the rates are per core (docs/data.md, "Optical flow").
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from kd_jax.data import flow

MOTION = (1.3, -0.7)  # pixels per frame, x then y


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--height", type=int, default=240)
  p.add_argument("--width", type=int, default=320)
  p.add_argument("--pairs", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  import cv2  # pylint: disable=g-import-not-at-top  (the flow extra; optical_flow says so if absent)
  cv2.setNumThreads(1)
  clip = flow.panning_scene(args.pairs + 1, args.height, args.width, MOTION, seed=0)
  print(f"load average before: {os.getloadavg()[0]:.2f}")
  for method in flow.METHODS:
    flow.optical_flow(clip[:2], method)  # warm-up
    wall, cpu = [], []
    for _ in range(args.repeats):
      t0, c0 = time.perf_counter(), time.process_time()
      fields = flow.optical_flow(clip, method)
      wall.append(time.perf_counter() - t0)
      cpu.append(time.process_time() - c0)
    err = np.median(np.abs(fields[:, 16:-16, 16:-16] - np.float32(MOTION)))
    print(f"{method} at {args.width}x{args.height}: {len(fields) / min(wall):.2f} fields/s "
          f"wall-clock, {len(fields) / min(cpu):.2f} per CPU-second, median |error| "
          f"{err:.3f} px")
  print(f"load average after: {os.getloadavg()[0]:.2f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())

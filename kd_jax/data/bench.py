"""Data benchmark: ``python -m kd_jax.data.bench [options]``.

Measures, on synthetic clips encoded like the real datasets (340 x 256 raw MPEG-4, GOP 12, q 1):

* ``decode_rgb``: frames/s decoding every frame to RGB (what an RGB clip needs);
* ``decode_mv_residual``: frames/s decoding every frame with motion-vector export and the CoViAR
  trace, and producing the accumulated MV and residual once per GOP (at its last frame, the most
  expensive position);
* ``sample_mv_residual``: representations/s at random P positions, the training access pattern
  (each one decodes its GOP from the I-frame);
* ``pipeline/<kind>/w<N>``: clips/s of the full training pipeline (sampling, decoding, augmentation,
  normalisation, batching) with N grain worker processes, and per worker.

Decode figures are best-of-N, in wall-clock and in CPU time (the one to trust on a shared machine);
pipeline figures are wall-clock. Prints a table and the same figures as JSON (also written to
``--json`` if given). The target is ``decode_mv_residual >= 0.5 * decode_rgb``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import numpy as np

from kd_jax.data import codec
from kd_jax.data import pipeline
from kd_jax.data import synthetic


def make_records(num_clips: int, num_frames: int, height: int, width: int) -> list[dict]:
  """In-memory records like the builders', from synthetic clips."""
  spec = synthetic.SyntheticSpec(num_classes=max(2, num_clips), num_frames=num_frames,
                                 height=height, width=width)
  records = []
  for i in range(num_clips):
    data = codec.encode_frames(synthetic.generate_clip(i % spec.num_classes, i, spec=spec))
    records.append({"video": data, "label": i % spec.num_classes, "video_id": f"bench_{i}",
                    "num_frames": num_frames})
  return records


def _best_rates(fns: dict, counts: dict, repeats: int) -> dict[str, dict[str, float]]:
  """Best of ``repeats`` runs of each function, as counts per second of wall and of CPU time.

  The functions take turns, so that load from other processes hits them alike; CPU time is the
  figure to trust on a shared machine (decoding is single-threaded).
  """
  best = {name: [float("inf"), float("inf")] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      wall, cpu = time.perf_counter(), time.process_time()
      fn()
      wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      best[name] = [min(best[name][0], wall), min(best[name][1], max(cpu, 1e-9))]
  return {name: {"wall": counts[name] / w, "cpu": counts[name] / c}
          for name, (w, c) in best.items()}


def bench_decode(records: list[dict], repeats: int = 3, samples: int = 64,
                 seed: int = 0) -> dict[str, dict[str, float]]:
  """frames/s of RGB decoding and of MV + residual decoding; representations/s at random P."""
  videos = [codec.CompressedVideo(r["video"]) for r in records]
  frames = sum(v.num_frames for v in videos)

  def rgb():
    for v in videos:
      v.frames(np.arange(v.num_frames))

  def mv_residual():
    for v in videos:
      ends = list(v.gop_starts[1:] - 1) + [v.num_frames - 1]
      for end in ends:
        v.representations(int(end))

  rng = np.random.default_rng(seed)
  picks = []
  for _ in range(samples):
    v = videos[int(rng.integers(len(videos)))]
    picks.append((v, int(rng.integers(1, v.num_frames))))

  def sample():
    for v, i in picks:
      v.representations(i)

  fns = {"decode_rgb": rgb, "decode_mv_residual": mv_residual, "sample_mv_residual": sample}
  counts = {"decode_rgb": frames, "decode_mv_residual": frames, "sample_mv_residual": samples}
  return _best_rates(fns, counts, repeats)


def bench_pipeline(records: list[dict], spec: pipeline.ClipSpec, *, workers: int, batch_size: int,
                   batches: int) -> float:
  """clips/s of the training pipeline, after a first batch that absorbs start-up costs."""
  ds = pipeline.make_train(records, spec, batch_size=batch_size, seed=0, num_workers=workers,
                           process_index=0, process_count=1)
  it = iter(ds)
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch_size / (time.perf_counter() - start)
  if hasattr(it, "close"):
    it.close()
  return rate


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m kd_jax.data.bench", description=__doc__.split("\n")[0])
  p.add_argument("--clips", type=int, default=6, help="synthetic clips to encode")
  p.add_argument("--frames", type=int, default=48, help="frames per clip")
  p.add_argument("--height", type=int, default=256)
  p.add_argument("--width", type=int, default=340)
  p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts to try")
  p.add_argument("--kinds", default="compressed,rgb_segments,rgb_clip",
                 help="pipeline kinds (compressed, rgb_segments, rgb_clip)")
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--batches", type=int, default=4, help="timed batches per pipeline run")
  p.add_argument("--repeats", type=int, default=3, help="best-of repeats for the decode figures")
  p.add_argument("--json", default=None, help="also write the JSON figures to this file")
  return p


def format_table(results: dict) -> str:
  """The figures as an aligned text table."""
  rows = [("", "wall", "CPU", ""),
          ("decode only, RGB", *_pair(results["decode_rgb"]), "frames/s"),
          ("decode + MV + residual", *_pair(results["decode_mv_residual"]), "frames/s"),
          ("MV + residual at random P", *_pair(results["sample_mv_residual"]), "samples/s"),
          ("ratio (target >= 0.5)", *_pair(results["compressed_to_rgb_ratio"], ".2f"), "")]
  for key, value in results["pipeline"].items():
    rows.append((f"train pipeline {key}", f"{value['clips_per_s']:.2f}", "",
                 f"clips/s ({value['clips_per_s_per_worker']:.2f} per worker)"))
  width = max(len(r[0]) for r in rows)
  return "\n".join(f"{a:<{width}}  {b:>8}  {c:>8}  {d}" for a, b, c, d in rows)


def _pair(value: dict, fmt: str = ".0f") -> tuple[str, str]:
  return format(value["wall"], fmt), format(value["cpu"], fmt)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from absl import flags  # grain workers read absl flags (jax_stack.md section 7.2)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  records = make_records(args.clips, args.frames, args.height, args.width)
  results = {"setup": {"clips": args.clips, "frames": args.frames,
                       "size": f"{args.width}x{args.height}", "batch_size": args.batch_size}}
  results.update(bench_decode(records, repeats=args.repeats))
  results["compressed_to_rgb_ratio"] = {
      k: results["decode_mv_residual"][k] / results["decode_rgb"][k] for k in ("wall", "cpu")}
  results["pipeline"] = {}
  for kind in args.kinds.split(","):
    spec = pipeline.make_spec(kind, flip=True)
    for workers in (int(w) for w in args.workers.split(",")):
      rate = bench_pipeline(records, spec, workers=workers, batch_size=args.batch_size,
                            batches=args.batches)
      results["pipeline"][f"{kind}/w{workers}"] = {
          "clips_per_s": rate, "clips_per_s_per_worker": rate / max(1, workers)}
  print(format_table(results))
  text = json.dumps(results, indent=1)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

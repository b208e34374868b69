"""Data benchmark: ``python -m kd_jax.data.bench [options]``.

Measures, on synthetic clips encoded like the real datasets (340 x 256 raw MPEG-4, GOP 12, q 1):

* ``decode_rgb``: frames/s decoding every frame to RGB (what an RGB clip needs);
* ``decode_mv_residual``: frames/s decoding every frame with motion-vector export and the CoViAR
  trace, and producing the accumulated MV and residual once per GOP (at its last frame, the most
  expensive position);
* ``sample_mv_residual``: representations/s at random P positions, the training access pattern
  (each one decodes its GOP from the I-frame);
* ``decode_bound``: the rate decoding alone allows that access pattern, ``decode_rgb`` over the
  mean number of frames the sampled positions decode (GOP position + 1), and
  ``sample_to_bound_ratio``, ``sample_mv_residual / decode_bound`` (target >= 0.8);
* ``pipeline/<kind>/w<N>``: clips/s of the full training pipeline (sampling, decoding, augmentation,
  normalisation, batching) with N grain worker processes, and per worker;
  ``pipeline/compressed-device/w<N>`` the same with ``augment='device'`` (the host decodes and
  draws; crops, flips and normalisation are left to the accelerator);
* ``device_augment``: that device work (:func:`kd_jax.data.device_augment.augment`, jitted, after
  compilation) per clip on the default JAX device of this run, and the host-to-device copy of
  its raw input.

``--baseline FILE`` also measures another implementation of :mod:`kd_jax.data.codec` (a copy of
the module, e.g. ``git show REV:kd_jax/data/codec.py > /tmp/codec_old.py``) in the same run, taking
turns with this one so that load from other processes hits both alike: its representations at
random P positions, and the ``compressed`` pipeline in this process with its ``CompressedVideo``
(``baseline`` in the JSON, with the speed-ups). With ``--baseline_pipeline`` and
``--baseline_transforms`` (copies of those modules of the same revision) the baseline pipeline is
that revision's whole loader: its sampling, decoding, augmentation and normalisation.

Decode figures are best-of-N, in wall-clock and in CPU time (the one to trust on a shared machine);
pipeline figures are wall-clock, and also CPU time without worker processes. The JSON records the
load average before and after. Prints a table and the same figures as JSON (also written to
``--json`` if given). Targets: ``decode_mv_residual >= 0.5 * decode_rgb``,
``sample_to_bound_ratio >= 0.8``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import sys
import time
import types
from collections.abc import Sequence

import numpy as np

from kd_jax.data import codec
from kd_jax.data import device_augment
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


def _load_module(path: str, name: str, flag: str) -> types.ModuleType:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{flag}: no such file: {path}")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def load_codec(path: str) -> types.ModuleType:
  """Another implementation of :mod:`kd_jax.data.codec` from a file (a copy of the module)."""
  return _load_module(path, "kd_jax_bench_baseline_codec", "--baseline")


def load_pipeline(pipeline_path: str, transforms_path: str,
                  codec_module: types.ModuleType) -> types.ModuleType:
  """Another :mod:`kd_jax.data.pipeline` (a copy of the module) that decodes with
  ``codec_module`` and augments with another :mod:`kd_jax.data.transforms` (a copy too)."""
  old_transforms = _load_module(transforms_path, "kd_jax_bench_baseline_transforms",
                                "--baseline_transforms")
  module = _load_module(pipeline_path, "kd_jax_bench_baseline_pipeline", "--baseline_pipeline")
  module.codec, module.transforms = codec_module, old_transforms
  return module


@contextlib.contextmanager
def codec_of_pipeline(module: types.ModuleType):
  """Makes the pipeline decode with ``module.CompressedVideo`` (this process only)."""
  saved = pipeline.codec
  pipeline.codec = module
  try:
    yield
  finally:
    pipeline.codec = saved


def bench_decode(records: list[dict], repeats: int = 3, samples: int = 64, seed: int = 0,
                 baseline: types.ModuleType | None = None) -> dict[str, dict[str, float]]:
  """frames/s of RGB decoding and of MV + residual decoding; representations/s at random P.

  Also the decode bound of the random-P pattern and the ratio to it; with ``baseline`` (another
  codec module), its representations/s at the same positions as ``sample_mv_residual_baseline``.
  """
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
    k = int(rng.integers(len(videos)))
    picks.append((k, int(rng.integers(1, videos[k].num_frames))))
  # Frames a fresh decoder goes through for each pick: its GOP from the I-frame up to it.
  mean_frames = float(np.mean([videos[k].gop_index(i)[1] + 1 for k, i in picks]))

  def sample_with(vids):
    def sample():
      for k, i in picks:
        vids[k].representations(i)
    return sample

  fns = {"decode_rgb": rgb, "decode_mv_residual": mv_residual,
         "sample_mv_residual": sample_with(videos)}
  counts = {"decode_rgb": frames, "decode_mv_residual": frames, "sample_mv_residual": samples}
  if baseline is not None:
    fns["sample_mv_residual_baseline"] = sample_with(
        [baseline.CompressedVideo(r["video"]) for r in records])
    counts["sample_mv_residual_baseline"] = samples
  results = _best_rates(fns, counts, repeats)
  results["decode_bound"] = {k: results["decode_rgb"][k] / mean_frames for k in ("wall", "cpu")}
  results["sample_to_bound_ratio"] = {
      k: results["sample_mv_residual"][k] / results["decode_bound"][k] for k in ("wall", "cpu")}
  results["frames_per_sample"] = mean_frames
  return results


def bench_pipeline(records: list[dict], spec: pipeline.ClipSpec, *, workers: int, batch_size: int,
                   batches: int) -> float:
  """clips/s of the training pipeline, after a first batch that absorbs start-up costs."""
  return pipeline_rates(records, spec, workers=workers, batch_size=batch_size,
                        batches=batches)["wall"]


def pipeline_rates(records: list[dict], spec: pipeline.ClipSpec, *, workers: int, batch_size: int,
                   batches: int, module: types.ModuleType = pipeline) -> dict[str, float | None]:
  """clips/s of the training pipeline per second of wall-clock and, without worker processes
  (all decoding in this process), of this process's CPU time (None with workers). ``module``:
  the pipeline module to run (``spec`` one of its ClipSpecs)."""
  ds = module.make_train(records, spec, batch_size=batch_size, seed=0, num_workers=workers,
                         process_index=0, process_count=1)
  it = iter(ds)
  next(it)
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu
  if hasattr(it, "close"):
    it.close()
  clips = batches * batch_size
  return {"wall": clips / wall, "cpu": clips / max(cpu, 1e-9) if workers == 0 else None}


def bench_device_augment(records: list[dict], spec: pipeline.ClipSpec, *, batch_size: int,
                         repeats: int = 3) -> dict[str, float | int | str]:
  """Seconds per clip of the device half of ``augment='device'`` on JAX's default device.

  One training batch of ``spec`` (``augment='device'``) is decoded, copied to the device
  (``put``, best of ``repeats``) and augmented by the jitted :func:`device_augment.augment`
  (compiled first, then best of ``repeats``), as the engine does it (its compiler options).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from kd_jax.train import compilation  # pylint: disable=g-import-not-at-top
  ds = pipeline.make_train(records, spec, batch_size=batch_size, seed=0, process_index=0,
                           process_count=1)
  batch = next(iter(ds))
  sizes = device_augment.output_sizes(batch)
  raw = {k: v for k, v in batch.items() if any(k in device_augment.keys(m) for m in sizes)}
  device = jax.devices()[0]
  fn = compilation.jit(functools.partial(device_augment.augment, sizes=sizes))
  x = jax.block_until_ready(jax.device_put(raw, device))
  start = time.perf_counter()
  jax.block_until_ready(fn(x))
  compile_s = time.perf_counter() - start
  put, run = float("inf"), float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    x = jax.block_until_ready(jax.device_put(raw, device))
    put = min(put, time.perf_counter() - start)
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    run = min(run, time.perf_counter() - start)
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "batch_size": batch_size, "crop_size": spec.crop_size, "compile_s": compile_s,
          "ms_per_clip": 1e3 * run / batch_size, "clips_per_s": batch_size / run,
          "put_ms_per_clip": 1e3 * put / batch_size,
          "raw_mb_per_clip": sum(v.nbytes for v in raw.values()) / batch_size / 2**20}


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
  p.add_argument("--augment", default="host,device",
                 help="where the compressed pipeline augments: host (in the loader), device (the "
                      "loader only decodes; the device half is timed too), or both")
  p.add_argument("--device_batch_size", type=int, default=0,
                 help="clips per batch when timing the device half of augment=device (0: "
                      "--batch_size)")
  p.add_argument("--batches", type=int, default=4, help="timed batches per pipeline run")
  p.add_argument("--repeats", type=int, default=3, help="best-of repeats for the decode figures")
  p.add_argument("--json", default=None, help="also write the JSON figures to this file")
  p.add_argument("--baseline", default=None,
                 help="a copy of another kd_jax/data/codec.py to measure side by side (random-P "
                      "representations and the compressed pipeline without workers)")
  p.add_argument("--pipeline_repeats", type=int, default=2,
                 help="with --baseline: alternating pipeline runs of each, best kept")
  p.add_argument("--baseline_pipeline", default=None,
                 help="with --baseline and --baseline_transforms: a copy of another "
                      "kd_jax/data/pipeline.py; the baseline pipeline then runs it with both "
                      "copies (the whole loader before a change), not this pipeline with the "
                      "baseline codec")
  p.add_argument("--baseline_transforms", default=None,
                 help="a copy of another kd_jax/data/transforms.py (see --baseline_pipeline)")
  return p


def format_table(results: dict) -> str:
  """The figures as an aligned text table."""
  rows = [("", "wall", "CPU", ""),
          ("decode only, RGB", *_pair(results["decode_rgb"]), "frames/s"),
          ("decode + MV + residual", *_pair(results["decode_mv_residual"]), "frames/s"),
          ("ratio (target >= 0.5)", *_pair(results["compressed_to_rgb_ratio"], ".2f"), ""),
          ("MV + residual at random P", *_pair(results["sample_mv_residual"]), "samples/s"),
          ("decode bound at random P", *_pair(results["decode_bound"]),
           f"samples/s (decode only / {results['frames_per_sample']:.2f} frames per sample)"),
          ("ratio to bound (target >= 0.8)", *_pair(results["sample_to_bound_ratio"], ".2f"), "")]
  base = results.get("baseline")
  if base:
    rows += [("baseline MV + residual at random P", *_pair(base["sample_mv_residual"]),
              "samples/s"),
             ("baseline ratio to bound", *_pair(base["sample_to_bound_ratio"], ".2f"), ""),
             ("speed-up at random P", *_pair(base["sample_speedup"], ".2f"), "")]
  for key, value in results["pipeline"].items():
    cpu = value.get("clips_per_cpu_s")
    rows.append((f"train pipeline {key}", f"{value['clips_per_s']:.2f}",
                 "" if cpu is None else f"{cpu:.2f}",
                 f"clips/s ({value['clips_per_s_per_worker']:.2f} per worker)"))
  if base:
    for key, value in base["pipeline"].items():
      if "-device/" not in key:  # the same baseline runs as the host variant's
        rows.append((f"baseline pipeline {key}", f"{value['clips_per_s']:.2f}",
                     f"{value['clips_per_cpu_s']:.2f}", "clips/s"))
      rows.append((f"pipeline speed-up {key}", f"{value['speedup']:.2f}",
                   f"{value['speedup_cpu']:.2f}", ""))
  dev = results.get("device_augment")
  if dev:
    rows += [(f"device half of augment=device, {dev['device_kind']} (batch {dev['batch_size']})",
              f"{dev['ms_per_clip']:.2f}", "", f"ms per clip ({dev['clips_per_s']:.1f} clips/s)"),
             ("  host-to-device copy of its input", f"{dev['put_ms_per_clip']:.2f}", "",
              f"ms per clip ({dev['raw_mb_per_clip']:.2f} MB)")]
  width = max(len(r[0]) for r in rows)
  return "\n".join(f"{a:<{width}}  {b:>8}  {c:>8}  {d}" for a, b, c, d in rows)


def _keep_best(best: dict, rates: dict) -> None:
  for k, v in rates.items():
    if v is not None:
      best[k] = max(best.get(k, 0.0), v)
    else:
      best.setdefault(k, None)


def _load_average() -> list[float] | None:
  """The machine's 1, 5 and 15 minute load averages (what else was running), where known."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _pair(value: dict, fmt: str = ".0f") -> tuple[str, str]:
  return format(value["wall"], fmt), format(value["cpu"], fmt)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from absl import flags  # grain workers read absl flags (jax_stack.md section 7.2)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  baseline = load_codec(args.baseline) if args.baseline else None
  old_pipeline = None
  if args.baseline_pipeline or args.baseline_transforms:
    if not (baseline and args.baseline_pipeline and args.baseline_transforms):
      raise SystemExit("--baseline_pipeline needs --baseline and --baseline_transforms (copies of "
                       "codec.py, pipeline.py and transforms.py of one revision)")
    old_pipeline = load_pipeline(args.baseline_pipeline, args.baseline_transforms, baseline)
  records = make_records(args.clips, args.frames, args.height, args.width)
  results = {"setup": {"clips": args.clips, "frames": args.frames,
                       "size": f"{args.width}x{args.height}", "batch_size": args.batch_size,
                       "load_average": _load_average(),
                       # The compiled trace / MV / residual kernels (codec._kernels) or NumPy.
                       "codec_kernels": (  # pylint: disable=protected-access
                           "numba" if codec._kernels() is not None else "numpy")}}
  results.update(bench_decode(records, repeats=args.repeats, baseline=baseline))
  results["compressed_to_rgb_ratio"] = {
      k: results["decode_mv_residual"][k] / results["decode_rgb"][k] for k in ("wall", "cpu")}
  if baseline is not None:
    rate = results.pop("sample_mv_residual_baseline")
    results["baseline"] = {
        "codec": os.path.abspath(args.baseline), "sample_mv_residual": rate,
        "sample_to_bound_ratio": {k: rate[k] / results["decode_bound"][k] for k in rate},
        "sample_speedup": {k: results["sample_mv_residual"][k] / rate[k] for k in rate},
        "pipeline": {},
        "pipeline_module": (os.path.abspath(args.baseline_pipeline) if old_pipeline is not None
                            else "this pipeline with the baseline codec")}
  augments = args.augment.split(",")
  if set(augments) - set(pipeline.AUGMENTS):
    raise SystemExit(f"--augment takes a comma-separated list of {', '.join(pipeline.AUGMENTS)}, "
                     f"got {args.augment!r}")
  results["pipeline"] = {}
  for kind in args.kinds.split(","):
    spec = pipeline.make_spec(kind, flip=True)
    # (name, spec) of each variant; only the compressed kind can leave augmentation to the device.
    variants = [(kind, spec)]
    if kind == "compressed":
      variants = [(kind if a == "host" else f"{kind}-device",
                   dataclasses.replace(spec, augment=a)) for a in augments]
    for workers in (int(w) for w in args.workers.split(",")):
      side_by_side = baseline is not None and kind == "compressed" and workers == 0
      rates, old = {name: {} for name, _ in variants}, {}
      # Side by side: alternating runs, the best of each (the baseline cannot reach grain workers).
      for _ in range(args.pipeline_repeats if side_by_side else 1):
        for name, variant in variants:
          _keep_best(rates[name], pipeline_rates(records, variant, workers=workers,
                                                 batch_size=args.batch_size,
                                                 batches=args.batches))
        if side_by_side and old_pipeline is not None:
          _keep_best(old, pipeline_rates(records, old_pipeline.make_spec(kind, flip=True),
                                         workers=0, batch_size=args.batch_size,
                                         batches=args.batches, module=old_pipeline))
        elif side_by_side:
          with codec_of_pipeline(baseline):
            _keep_best(old, pipeline_rates(records, spec, workers=0,
                                           batch_size=args.batch_size, batches=args.batches))
      for name, _ in variants:
        rate, key = rates[name], f"{name}/w{workers}"
        results["pipeline"][key] = {
            "clips_per_s": rate["wall"], "clips_per_s_per_worker": rate["wall"] / max(1, workers),
            "clips_per_cpu_s": rate["cpu"]}
        if side_by_side:
          results["baseline"]["pipeline"][key] = {
              "clips_per_s": old["wall"], "clips_per_cpu_s": old["cpu"],
              "speedup": rate["wall"] / old["wall"], "speedup_cpu": rate["cpu"] / old["cpu"]}
    if kind == "compressed" and "device" in augments:
      results["device_augment"] = bench_device_augment(
          records, dataclasses.replace(spec, augment="device"),
          batch_size=args.device_batch_size or args.batch_size, repeats=args.repeats)
  results["setup"]["load_average_after"] = _load_average()
  print(format_table(results))
  text = json.dumps(results, indent=1)
  print(text)
  if args.json:
    with open(args.json, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())

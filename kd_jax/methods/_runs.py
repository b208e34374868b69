"""Several runs of one experiment: ``config.seeds`` x ``config.splits``, each (split, seed) in its
own sub-workdir (``split<N>/seed<S>``, resumable like any run), then one summary of the numbers
every run reports: mean ± std with the per-run values, in ``results.json``, ``report.md`` and on
stdout.

A method takes part by giving ``summary_numbers(results) -> {name: value}`` (what its report's
tables hold) and, optionally, ``EFFECT = (distilled, baseline)``: two of those names whose
difference is the distillation effect, which the summary compares with the spread between runs.
PKD runs its seeds itself (they share the backbones of a split) and uses :func:`summarize` and
:func:`effect` for its report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import json
import math
from typing import Any

from etils import epath
import jax
import ml_collections

from kd_jax import report as R
from kd_jax.errors import UserError

SPLIT_DATASETS = ("ucf101", "hmdb51")


def plan(config: ml_collections.ConfigDict) -> list[tuple[int | None, int]]:
  """The (split, seed) of every run; ``[(None, config.seed)]`` for a single run."""
  splits = [int(s) for s in config.get("splits", ())] or [None]
  seeds = [int(s) for s in config.get("seeds", ())] or [int(config.seed)]
  if splits != [None] and config.data.name not in SPLIT_DATASETS:
    raise UserError(f"config.splits applies to {' and '.join(SPLIT_DATASETS)}, not "
                    f"{config.data.name}; leave it empty")
  if any(s not in (1, 2, 3) for s in splits if s is not None):
    raise UserError(f"config.splits must name the official splits 1, 2 and 3, got {splits}")
  if len(set(splits)) != len(splits) or len(set(seeds)) != len(seeds):
    raise UserError(f"config.splits and config.seeds must not repeat a value, got splits "
                    f"{splits} and seeds {seeds}")
  return [(split, seed) for split in splits for seed in seeds]


def sub_workdir(workdir: epath.Path, runs: Sequence[tuple[int | None, int]], split: int | None,
                seed: int) -> epath.Path:
  """Where run (split, seed) lives: ``split<N>/`` when several splits, ``seed<S>/`` below it when
  several seeds; the workdir itself for a single run."""
  out = workdir
  if len({s for s, _ in runs}) > 1 or (split is not None and len(runs) > 1):
    out = out / f"split{split}"
  if len({s for _, s in runs}) > 1:
    out = out / f"seed{seed}"
  return out


def run_config(config: ml_collections.ConfigDict, split: int | None,
               seed: int) -> ml_collections.ConfigDict:
  """``config`` for one run: its seed, its split, and no further runs."""
  sub = ml_collections.ConfigDict(config.to_dict())
  sub.seed = seed
  sub.seeds, sub.splits = (), ()
  if split is not None:
    sub.data.config = f"split{split}"
  return sub


def summarize(numbers: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
  """Per name: ``mean``, ``std`` (sample standard deviation, n - 1; 0 for one run), ``n`` and the
  per-run ``values``, over the runs that report it."""
  out = {}
  for name in dict.fromkeys(k for n in numbers for k in n):
    values = [float(n[name]) for n in numbers if name in n and n[name] is not None]
    if values:
      mean, std = R.mean_std(values)
      out[name] = {"mean": mean, "std": std, "n": len(values), "values": values}
  return out


def effect(numbers: Sequence[Mapping[str, float]], distilled: str,
           baseline: str) -> dict[str, Any] | None:
  """The distillation effect ``distilled - baseline`` per run, its mean, std and standard error,
  and whether it stands out of the run-to-run spread: ``|mean| > 2 * std / sqrt(n)`` (two standard
  errors, about a 95 % interval that excludes 0), which needs at least two runs."""
  diffs = [float(n[distilled]) - float(n[baseline]) for n in numbers
           if n.get(distilled) is not None and n.get(baseline) is not None]
  if not diffs:
    return None
  mean, std = R.mean_std(diffs)
  stderr = std / math.sqrt(len(diffs)) if len(diffs) > 1 else None
  clear = None if stderr is None else bool(abs(mean) > 2 * stderr)
  return {"distilled": distilled, "baseline": baseline, "values": diffs, "mean": mean,
          "std": std, "stderr": stderr, "n": len(diffs), "clear": clear}


def effect_sentence(e: Mapping[str, Any] | None, scale: float = 100.0, unit: str = " points"
                    ) -> str:
  """One line on :func:`effect`'s result for reports."""
  if not e:
    return ""
  head = (f"Distillation effect ({e['distilled']} - {e['baseline']}): "
          f"{scale * e['mean']:+.2f} ± {scale * e['std']:.2f}{unit} over {e['n']} run(s)")
  if e["clear"] is None:
    return head + "; one run cannot tell an effect from seed noise."
  verdict = ("larger than the spread between runs (|mean| > 2 standard errors)" if e["clear"]
             else "not distinguishable from the spread between runs (|mean| <= 2 standard "
             "errors)")
  return f"{head}, standard error {scale * e['stderr']:.2f}: {verdict}."


def _table(summary: Mapping[str, Mapping[str, Any]], scale: float) -> list[str]:
  lines = ["| | mean ± std | n | per run |", "|---|---|---|---|"]
  for name, s in summary.items():
    per_run = ", ".join(f"{scale * v:.2f}" for v in s["values"])
    lines.append(f"| {name} | {scale * s['mean']:.2f} ± {scale * s['std']:.2f} | {s['n']} | "
                 f"{per_run} |")
  return lines


def run_all(config: ml_collections.ConfigDict, workdir: str | epath.Path,
            run_one: Callable[[ml_collections.ConfigDict, str], dict[str, Any]],
            numbers: Callable[[Mapping[str, Any]], dict[str, float]],
            effect_of: tuple[str, str] | None = None, title: str = "") -> dict[str, Any]:
  """Runs ``run_one(config, workdir)`` for every (split, seed) of :func:`plan` and, for more than
  one, writes the summary; returns the single run's results or the summary."""
  runs = plan(config)
  wd = epath.Path(workdir)
  if len(runs) == 1:
    split, seed = runs[0]
    return run_one(run_config(config, split, seed) if split is not None else config, str(wd))
  per_run = []
  for split, seed in runs:
    sub = sub_workdir(wd, runs, split, seed)
    results = run_one(run_config(config, split, seed), str(sub))
    per_run.append({"split": split, "seed": seed, "workdir": str(sub),
                    "numbers": numbers(results)})
  values = [r["numbers"] for r in per_run]
  summary = {"method": config.method, "runs": per_run, "summary": summarize(values),
             "effect": effect(values, *effect_of) if effect_of else None}
  if jax.process_index() == 0:
    (wd / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    splits = sorted({s for s, _ in runs if s is not None})
    head = (f"# {title or config.method}: {len(runs)} runs (seeds "
            f"{sorted({s for _, s in runs})}" + (f", splits {splits}" if splits else "") + ")")
    text = [head, "", "Numbers in percent, mean ± std (sample std, n - 1) over the runs; each "
            "run's own report is in its sub-workdir.", "", *_table(summary["summary"], 100.0)]
    sentence = effect_sentence(summary["effect"])
    if sentence:
      text += ["", sentence]
    (wd / "report.md").write_text("\n".join(text) + "\n")
    print("\n".join(text[:1] + text[4:]), flush=True)
  return summary

"""report.md, curves.png and the console table of a GenKD run.

Part of the ``genkd`` method: it reads the stages' results (final metrics, evaluation history) and
the training terms logged in the run's ``metrics.jsonl``, and writes what a person looks at; the
generic table helper is :func:`kd_jax.report.markdown_table`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np

from kd_jax import report as R

PLOT = "curves.png"


def read_metrics(workdir: epath.Path) -> list[dict[str, Any]]:
  """Every line of ``workdir/metrics.jsonl`` (a line cut short by a kill is skipped)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return out


def epoch_summary(lines: Sequence[Mapping[str, Any]], result: Any, stage: str,
                  epoch_steps: int) -> dict[str, Any]:
  """Per-epoch eval accuracy (the stage's evaluation history) and training terms (its
  ``metrics.jsonl`` lines) of one stage; ``result`` is its ``StageResult``, ``epoch_steps`` the
  steps of one of its epochs (two passes of a GenKD stage, one of a plain flow stage)."""
  evals = {step // epoch_steps: {"top1": m["top1"], "top5": m.get("top5", float("nan"))}
           for step, m in result.history if "top1" in m}
  terms = {}
  for e in lines:
    if e.get("stage") == stage and "pass" in e:
      epoch, key = int(e["epoch"]), ("A" if e["pass"] < 0.5 else "B")
      bucket = terms.setdefault(epoch, {}).setdefault(key, {})
      for k in (("cvae", "gd") if key == "A" else ("cls", "rec", "ad")):
        bucket.setdefault(k, []).append(e[k])
  curves = {ep: {p: {k: float(np.mean(v)) for k, v in d.items()} for p, d in by.items()}
            for ep, by in sorted(terms.items())}
  best = result.best("top1")
  return {"eval": dict(sorted(evals.items())), "terms": curves,
          "best_epoch": best[0] // epoch_steps if best else None,
          "best_top1": best[1] if best else None}


def stage_epochs(config: ml_collections.ConfigDict, name: str) -> int:
  """The configured epochs of stage ``name``."""
  block = {"teacher": config.teacher, "flow_teacher": config.flow.teacher,
           "flow_student": config.flow.student}.get(name, config.student)
  return int(block.epochs)


def summarize(config: ml_collections.ConfigDict, workdir: epath.Path,
              results: Mapping[str, Any], epoch_steps: Mapping[str, int]
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, float] | None]:
  """``(summaries, rows, gain)`` of the finished stages (``results``: name -> ``StageResult``;
  ``epoch_steps``: name -> the steps of one of its epochs).

  ``summaries``: :func:`epoch_summary` per stage; ``rows``: per stage the last and best evaluation
  and the epochs; ``gain``: the distilled student minus the baseline (None without a baseline).
  """
  lines = read_metrics(workdir)
  summaries = {name: epoch_summary(lines, r, name, epoch_steps[name])
               for name, r in results.items()}
  rows = {}
  for name, r in results.items():
    # The weights handed on (config.selection): the last evaluation's, or the best one's.
    m, s = r.picked_metrics(), summaries[name]
    rows[name] = {"top1": m.get("top1"), "top5": m.get("top5"), "best_top1": s["best_top1"],
                  "step": r.pick().step,
                  "best_epoch": s["best_epoch"],
                  "epochs": stage_epochs(config, name)}
  base = rows.get("student_baseline")
  gain = None
  if base is not None:
    gain = {k: rows["student_genkd"][k] - base[k] for k in ("top1", "top5", "best_top1")
            if rows["student_genkd"][k] is not None and base[k] is not None}
  return summaries, rows, gain


def plot_curves(summaries: Mapping[str, Mapping[str, Any]], path: str) -> None:
  """``curves.png``: eval top-1 per epoch, and the training terms of each pass."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for name, s in summaries.items():
    if s["eval"]:
      ep = list(s["eval"])
      axes[0].plot(ep, [s["eval"][e]["top1"] for e in ep], marker="o", label=name)
    ep = [e for e in s["terms"] if "B" in s["terms"][e]]
    if ep:
      axes[1].plot(ep, [s["terms"][e]["B"]["cls"] for e in ep], marker=".", label=f"{name} cls")
      if any(s["terms"][e]["B"].get("ad", 0) for e in ep):
        axes[1].plot(ep, [s["terms"][e]["B"]["ad"] for e in ep], ls=":", marker=".",
                     label=f"{name} AD")
      axes[2].plot(ep, [s["terms"][e]["B"]["rec"] for e in ep], marker=".",
                   label=f"{name} L_rec (B)")
    ep = [e for e in s["terms"] if "A" in s["terms"][e]]
    if ep:
      axes[2].plot(ep, [s["terms"][e]["A"]["cvae"] for e in ep], ls="--",
                   marker=".", label=f"{name} L_CVAE (A)")
  axes[0].set(title="evaluation top-1", xlabel="epoch")
  axes[1].set(title="pass B: classification (and AD)", xlabel="epoch", yscale="log")
  axes[2].set(title="reconstruction terms", xlabel="epoch", yscale="log")
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _fmt(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.1f}"


def accuracy_table(config: ml_collections.ConfigDict, rows: Mapping[str, Mapping[str, Any]],
                   gain: Mapping[str, float] | None) -> str:
  """The Markdown table of every stage's accuracy (%), and GenKD's gain over the baseline."""
  labels = {"teacher": f"teacher ({config.teacher.model}, phase 1)",
            "student_baseline": f"student ({config.student.model}), no distillation",
            "student_genkd": f"student ({config.student.model}), GenKD "
                             f"(GD {'on' if config.loss.use_gd else 'off'}, "
                             f"AD {'on' if config.loss.use_ad else 'off'})",
            "flow_teacher": f"flow teacher ({config.flow.teacher.model})",
            "flow_student": f"flow student ({config.flow.student.model}), "
                            + ("GenKD" if config.flow.kd else "cross-entropy")}
  cells = [[labels[name], _fmt(r["top1"]), _fmt(r["top5"]),
            f"{_fmt(r['best_top1'])} ({r['best_epoch']})", r["epochs"]]
           for name, r in rows.items()]
  if gain:
    cells.append(["gain of GenKD over the baseline", f"{100 * gain['top1']:+.1f}",
                  f"{100 * gain['top5']:+.1f}", f"{100 * gain['best_top1']:+.1f}", ""])
  which = "last" if config.selection == "last" else "selected"
  return R.markdown_table(
      ["model", f"top-1 ({which})", f"top-5 ({which})", "best top-1 (epoch)", "epochs"], cells)


def two_stream_table(config: ml_collections.ConfigDict, fused: Mapping[str, Any]) -> str:
  """RGB-only, flow-only and two-stream accuracy (%) per RGB network and its flow partner."""
  flow_of = {"teacher": f"flow {config.flow.teacher.model}",
             "student_baseline": f"flow {config.flow.student.model}",
             "student_genkd": f"flow {config.flow.student.model}"}
  cells = []
  for name, r in fused.items():
    cells.append([f"{name} + {flow_of[name]}"] + [
        f"{_fmt(r[k]['top1'])} / {_fmt(r[k]['top5'])}" for k in ("rgb", "flow", "two_stream")]
        + [r["videos"]])
  kd = "GenKD from the flow teacher" if config.flow.kd else "cross-entropy (official)"
  return (f"Two streams (genkd.md 7.2: softmax(l_rgb + l_flow) per time step, summed, softmax); "
          f"flow networks trained with {kd}, flip `{config.flow.flip}`; top-1 / top-5 (%) over "
          "the test videos both streams hold:\n\n" + R.markdown_table(
              ["RGB + flow", "RGB only", "flow only", "two-stream", "videos"], cells))


def write(config: ml_collections.ConfigDict, workdir: epath.Path, description: str,
          rows: Mapping[str, Mapping[str, Any]], gain: Mapping[str, float] | None,
          timings: Mapping[str, float], ckpt_path: epath.Path,
          two_stream: Mapping[str, Any] | None = None) -> None:
  """Writes ``report.md`` and prints the tables (process 0 only; ``curves.png`` is already there)."""
  if jax.process_index() != 0:
    return
  table = accuracy_table(config, rows, gain)
  if two_stream:
    table += "\n\n" + two_stream_table(config, two_stream)
  lc = config.loss
  report = [
      "# GenKD: generative model-based feature distillation", "",
      f"Data: {description}; clips {config.data.clip_len}x{config.data.crop_size}^2. "
      f"Evaluation: one centre clip per video, attention path, {lc.eval_renorm_scope} "
      f"renormalisation, score = {lc.cls_loss}. Model selection `{config.selection}`: the "
      "table's first columns and the exported student are "
      + ("each stage's final weights." if config.selection == "last" else
         "each stage's best evaluation (on the test split for 'best_test', on held-out training "
         "videos for 'best_val'), which phase 2 also takes its teacher from."), "",
      table, "",
      f"![training curves]({PLOT})", "",
      "## Settings", "",
      f"- classification loss `{lc.cls_loss}`, renormalisation `{lc.renorm_scope}` in training",
      f"- L_rec ramp `{config.student.rec_ramp}` (max {lc.rec_max_weight}, "
      f"{lc.rec_ramp_epochs} epochs), KL weight {lc.kl_weight}, target detached: "
      f"{lc.rec_detach_target}",
      f"- generative distillation `{lc.gd_variant}` x {lc.gd_weight}, attention distillation "
      f"x {lc.ad_weight}",
      "- teacher from " + (f"`{config.teacher.checkpoint}`" if config.teacher.checkpoint
                           else "scratch"),
      f"- exported student (backbone, attention head, classifier; no CVAE): `{ckpt_path}`", "",
      f"Wall time: {timings['total']:.0f} s (" + ", ".join(
          f"{k} {v:.0f} s" for k, v in timings.items() if k != "total") + ")", "",
  ]
  (workdir / "report.md").write_text("\n".join(report))
  print("\n".join([f"GenKD ({description}), evaluation accuracy (%):", table,
                   f"report: {workdir / 'report.md'}",
                   f"results: {workdir / 'results.json'}"]), flush=True)

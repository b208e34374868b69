"""report.md, spectra.png and the console table of a spectral KD run.

Part of the ``spectral`` method: it turns the stages' metrics, the learned weights and the spectra
the method computed into what a person looks at; tables go through
:func:`kd_jax.report.markdown_table`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath
import jax
import ml_collections
import numpy as np

from kd_jax import report as R

PLOT = "spectra.png"


def ablation_rows(config: ml_collections.ConfigDict, teacher_metrics: Mapping[str, float],
                  results: Mapping[Any, Any], baseline: Any) -> list[dict[str, Any]]:
  """The ablation: the teacher, then every student stage (``results``: Entry -> StageResult).

  ``delta`` is a student's top-1 minus the CE baseline's (``baseline``, an Entry or None);
  ``agreement`` the share of evaluation videos where it predicts the teacher's class.
  """
  base_top1 = results[baseline].picked_metrics().get("top1") if baseline else None
  rows = [{"stage": "teacher", "objective": f"{config.teacher.model}, "
           + ("converted checkpoint" if config.teacher.checkpoint else "CE"),
           "top1": teacher_metrics.get("top1", float("nan")),
           "top5": teacher_metrics.get("top5", float("nan")), "delta": None, "agreement": None}]
  for e, r in results.items():
    m = r.picked_metrics()  # the evaluation of the weights model selection hands on
    rows.append({"stage": e.stage_name, "objective": e.label, "top1": m.get("top1", float("nan")),
                 "top5": m.get("top5", float("nan")),
                 "delta": None if base_top1 is None or e is baseline else m["top1"] - base_top1,
                 "agreement": m.get("teacher_agreement")})
  return rows


def ablation_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The markdown ablation table: per stage top-1/top-5 and the change from the baseline."""
  return R.markdown_table(
      ["stage", "objective", "top-1", "top-5", "top-1 vs CE", "agreement with teacher"],
      [[r["stage"], r["objective"], R.fmt(r["top1"], 3), R.fmt(r["top5"], 3),
        R.fmt(r.get("delta"), 3, signed=True), R.fmt(r.get("agreement"), 3)]
       for r in rows])


def inferred_choices(config: ml_collections.ConfigDict) -> list[str]:
  """The inferred (not paper-confirmed) settings in effect, one line each, for the report."""
  sp, pr, co = config.spec, config.param, config.collab
  reading = {"dct": "2-D DCT-II energy", "hist": "weight-value soft histogram"}.get(pr.reading,
                                                                                  "off")
  return [
      f"spectrum: taps {', '.join(sp.layers)}; {sp.mode} spectrum (rFFT over T, ortho), norm "
      f"{sp.norm}, {sp.distance} distance, "
      f"{'spatially pooled' if sp.pool_spatial else 'per location'}, "
      f"1x1 adapter{' + BN' if sp.adapter_bn else ''} on the student, weight {sp.weight:g}",
      f"parameter distribution: reading {pr.reading} ({reading}), "
      f"{pr.divergence} divergence, stages {tuple(pr.stages)}, all k >= 3 kernels of a stage "
      f"pooled, weight {pr.weight:g}",
      f"collaboration: {co.weighting} weighting (CE {'in' if co.weight_ce else 'outside'} it), "
      f"teacher {'trained online (mutual)' if co.mutual else 'frozen'} by default",
      f"logit KD: temperature {config.kd.temperature:g}, weight {config.kd.weight:g}",
      f"backbones: teacher {config.teacher.model}, student {config.student.model}, "
      f"{config.data.num_segments} segments",
  ]


def plot_spectra(curves: Mapping[str, Mapping[str, Any]], path: str, *, layer: str,
                 before: str, after: str, baseline: str | None) -> None:
  """Two panels: (a) in the teacher's channels, teacher vs student before / after distillation;
  (b) each network's own features, normalised to unit sum (the shape of the spectrum)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  t = np.asarray(curves["teacher"]["own"])
  bins = np.arange(len(t))
  ax1.plot(bins, t, "k-o", label="teacher")
  for name, style, label in ((before, "C1--s", "student before distillation"),
                             (after, "C0-^", "student after distillation")):
    if name in curves and "adapted" in curves[name]:
      ax1.plot(bins, curves[name]["adapted"], style, label=label)
  ax1.set_xticks(bins)
  ax2.set_xticks(bins)
  ax1.set_yscale("log")
  ax1.set_title(f"{layer}, in the teacher's channels (adapter)")
  ax1.set_xlabel("temporal frequency bin (0 = DC)")
  ax1.set_ylabel("mean amplitude")
  ax1.legend(fontsize=8)
  ax2.plot(bins, t / t.sum(), "k-o", label="teacher")
  for name, style, label in ((baseline, "C2:d", "student, CE only"),
                             (after, "C0-^", "student, distilled")):
    if name and name in curves:
      c = np.asarray(curves[name]["own"])
      ax2.plot(bins, c / c.sum(), style, label=label)
  ax2.set_yscale("log")
  ax2.set_title(f"{layer}, own features (normalised)")
  ax2.set_xlabel("temporal frequency bin (0 = DC)")
  ax2.set_ylabel("share of amplitude")
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(config: ml_collections.ConfigDict, workdir: epath.Path, description: str, *,
          rows: Sequence[Mapping[str, Any]], learned_weights: Mapping[str, Mapping[str, float]],
          curves: Mapping[str, Mapping[str, Any]], layer: str, students: Sequence[str],
          plot_path: str | None, pairs: Sequence[Any], timings: Mapping[str, float]) -> None:
  """Writes ``report.md`` and prints the ablation table (process 0 only).

  ``students``: the names whose spectrum loss the report lists, in order (``'init'`` first);
  ``plot_path``: the spectra plot in ``workdir``, None if there is none; ``pairs``: the
  parameter distillation's ``StagePair`` s.
  """
  if jax.process_index() != 0:
    return
  table = ablation_table(rows)
  report = [
      "# Spectral KD: collaborative distillation in the parameter and spectrum domains",
      "",
      f"Data: {description}. Teacher {config.teacher.model}, student {config.student.model}, "
      f"{config.data.num_segments} segments of {config.data.crop_size}x{config.data.crop_size}.",
      "",
      "## Ablation (evaluation split, one centre clip per video)",
      "",
      f"Model selection: `{config.selection}` ("
      + {"last": "every stage's final weights", "best_test": "each stage's best evaluation on "
         "this split, as the papers select", "best_val": "each stage's best evaluation on held-"
         "out training videos"}[config.selection] + "); the numbers are those weights'.",
      "",
      table,
      "",
  ]
  if learned_weights:
    report += ["Learned uncertainty weights exp(-s_i) at the end of training:", ""]
    report += [f"- {k}: " + ", ".join(f"{t} {w:.3g}" for t, w in v.items())
               for k, v in learned_weights.items()]
    report.append("")
  spec_rows = [[name, f"{curves[name]['spectrum_loss']:.4g}"] for name in students
               if "spectrum_loss" in curves.get(name, {})]
  if spec_rows:
    report += [f"## Temporal spectrum of {layer}", "",
               "Spectrum loss of the adapted student features against the teacher's (lower is "
               "closer; `init` is the student before training):", "",
               R.markdown_table(["student", "spectrum loss"], spec_rows), ""]
  if plot_path:
    report += [f"![temporal amplitude spectra]({plot_path})", "",
               "Left: mean amplitude per temporal frequency bin in the teacher's channel space, "
               "for the teacher and for the student (through its adapter) before and after "
               "distillation. Right: each network's own features, normalised to unit sum.", ""]
  if pairs:
    report += ["## Kernel pairing (parameter distillation)", "",
               R.markdown_table(["stage", "student kernels", "teacher kernels", "size"],
                                [[p.stage, len(p.student), len(p.teacher),
                                  f"{p.kernel_size[0]}x{p.kernel_size[1]}"] for p in pairs]),
               ""]
  report += ["## Inferred choices in effect (the paper's text was not available)", ""]
  report += [f"- {line}" for line in inferred_choices(config)]
  report += ["", f"Wall time: {timings['total']:.0f} s "
             + "(" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total") + ")",
             ""]
  (workdir / "report.md").write_text("\n".join(report))
  print("\n".join([f"spectral KD ({description}), evaluation top-1 / top-5:", table,
                   f"report: {workdir / 'report.md'}",
                   f"results: {workdir / 'results.json'}"]), flush=True)

"""The report of a ``genkd_detection`` run: the mAP table beside the paper's reference numbers and a
plot of detections against the ground truth on a few test videos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

PLOT = "detections.png"
# genkd.md 8 (unverified third-party note; the baseline is derived from the stated +1.1 gain).
PAPER = {"student_baseline": "32.6 (derived)", "student_genkd": "33.7", "teacher": "n/a"}
LABELS = {"teacher": "teacher (AFSD + I3D)", "student_baseline": "baseline student (Top-I3D)",
          "student_genkd": "GenKD student (Top-I3D)",
          "random_intervals": "random intervals (chance)"}


def table(rows: Mapping[str, Mapping[str, Any]], thresholds: Sequence[float]) -> str:
  """A markdown table: mAP (%) per tIoU and their mean, with the paper's average where known."""
  head = ("| model | " + " | ".join(f"mAP@{t:g}" for t in thresholds)
          + " | average | paper average | detections |")
  lines = [head, "|" + "---|" * (len(thresholds) + 4)]
  for name, row in rows.items():
    cells = " | ".join(f"{100 * m:.1f}" for m in row["map"])
    lines.append(f"| {LABELS.get(name, name)} | {cells} | {100 * row['average']:.1f} | "
                 f"{PAPER.get(name, '')} | {row['detections']} |")
  return "\n".join(lines)


def write(config: ml_collections.ConfigDict, workdir: Any, data: str,
          rows: Mapping[str, Mapping[str, Any]], thresholds: Sequence[float],
          timings: Mapping[str, float]) -> None:
  """Prints the table and writes ``report.md`` (process 0)."""
  text = table(rows, thresholds)
  gain = None
  if "student_baseline" in rows and "student_genkd" in rows:
    gain = 100 * (rows["student_genkd"]["average"] - rows["student_baseline"]["average"])
  lines = [
      "# GenKD detection (AFSD on THUMOS14-style windows)", "",
      f"Data: {data}.", "",
      "mAP (%) under the ActivityNet / THUMOS14 protocol after AFSD's window merging and soft-NMS "
      f"(sigma {config.eval.nms_sigma}, top-k {config.eval.top_k}); ambiguous segments are not "
      "used. Paper numbers: genkd.md 8, an unverified third-party note (THUMOS14, full size; "
      "not comparable with tiny or synthetic runs).", "",
      text, "",
  ]
  if gain is not None:
    lines.append(f"GenKD - baseline, average mAP: {gain:+.1f} points (paper: +1.1).")
  lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
            f"![detections]({PLOT})", ""]
  if jax.process_index() == 0:
    print(text)
    if gain is not None:
      print(f"gain of GenKD (average mAP): {gain:+.1f} points")
    (workdir / "report.md").write_text("\n".join(lines))


def plot_detections(truth: Sequence[Mapping[str, Any]],
                    detections: Mapping[str, Sequence[Mapping[str, Any]]],
                    class_names: Sequence[str], path: str, *, num_videos: int = 4,
                    per_model: int = 5) -> None:
  """One panel per test video (the first ``num_videos``): the ground truth and each model's
  ``per_model`` highest-scoring detections as bars coloured by class."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  videos = sorted({g["video"] for g in truth})[:max(1, num_videos)]
  rows = ["ground truth"] + list(detections)
  fig, axes = plt.subplots(len(videos), 1, figsize=(9, 0.5 + 0.45 * len(rows) * len(videos)),
                           squeeze=False)
  colours = plt.get_cmap("tab10")
  for ax, video in zip(axes[:, 0], videos):
    items = [[g for g in truth if g["video"] == video]]
    for name in detections:
      mine = sorted((d for d in detections[name] if d["video"] == video),
                    key=lambda d: -d["score"])[:per_model]
      items.append(mine)
    for y, segs in enumerate(items):
      for s in segs:
        alpha = 1.0 if y == 0 else max(0.2, min(1.0, float(s["score"]) * 2))
        ax.barh(y, s["end"] - s["start"], left=s["start"], height=0.6, alpha=alpha,
                color=colours(int(s["label"]) % 10))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([LABELS.get(r, r).split(" (")[0] for r in rows], fontsize=7)
    ax.set_title(video, fontsize=8)
    ax.invert_yaxis()
  axes[-1, 0].set_xlabel("seconds (colour: class " + ", ".join(
      f"{i}={n}" for i, n in enumerate(class_names[:10])) + ")", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)

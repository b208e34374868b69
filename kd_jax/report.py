"""Tables and plots of a finished run: Markdown tables, mean +- std over runs, trade-off curves.

Generic helpers; a method assembles its own report from them (``kd_jax.methods._pkd_report``).
Plots use matplotlib's Agg backend (no display needed) and are written as PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

from etils import epath
import numpy as np


def fmt(value: Any, digits: int = 2, *, percent: bool = False, signed: bool = False) -> str:
  """A table cell: numbers rounded (fractions as percentages with ``percent``), None as '-'."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
    v = float(value) * (100.0 if percent else 1.0)
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
  return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured Markdown table; cells are converted with ``str`` (an empty one: ``| |``)."""

  def line(cells: Sequence[Any]) -> str:
    # An empty cell is one space, not two: the form GenKD's hand-written gain row had, so the
    # reports read as before.
    return "|" + "|".join(f" {c} " if c else " " for c in map(str, cells)) + "|"

  return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|",
                    *(line(row) for row in rows)])


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation (n - 1; 0 for one value) of the values that are not None:
  the spread between runs (seeds, splits) as papers report it."""
  vals = [float(v) for v in values if v is not None]
  if not vals:
    return None, None
  return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def fmt_mean_std(values: Sequence[float | None], digits: int = 2, *, percent: bool = False,
                 signed: bool = False) -> str:
  """``m`` for one value, ``m +- s (n)`` for several."""
  mean, std = mean_std(values)
  if mean is None:
    return "-"
  n = sum(v is not None for v in values)
  if n == 1:
    return fmt(mean, digits, percent=percent, signed=signed)
  return (f"{fmt(mean, digits, percent=percent, signed=signed)} ± "
          f"{fmt(std, digits, percent=percent)} (n={n})")


def tradeoff_plot(path: str | epath.Path, curves: Mapping[str, Sequence[tuple[float, float]]],
                  points: Mapping[str, Sequence[tuple[float, float]]] | None = None, *,
                  xlabel: str, ylabel: str, title: str = "") -> None:
  """Accuracy-versus-cost curves (lines with markers) and reference points (scatter), as PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  for label, xy in curves.items():
    xy = sorted(xy)
    if xy:
      ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", ms=3, lw=1.2, label=label)
  markers = "s^vD*Xp"
  for i, (label, xy) in enumerate((points or {}).items()):
    ax.scatter([p[0] for p in xy], [p[1] for p in xy], marker=markers[i % len(markers)], s=36,
               label=label, zorder=3)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)

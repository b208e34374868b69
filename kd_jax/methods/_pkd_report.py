"""report.md, tradeoff.png and the console summary of a PKD + WISE run (one or several runs).

Part of the ``pkd`` method; the generic table and plot helpers are in :mod:`kd_jax.report`.
With several runs (seeds, splits) every number is shown as mean ± std over them. The best and last
accuracies come from the stages' evaluation histories (:func:`accuracies`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

from etils import epath

from kd_jax import report as R

# Reference points, GMACs per video and top-1 (%), pkd_wise.md sections 7.2 and 7.3.
REFERENCES = {
    "ucf101": {
        "paper: Ours + CoViAR backbone": [(45.4, 92.77), (39.3, 92.55), (23.4, 91.67),
                                          (16.0, 90.56), (13.1, 88.41)],
        "CoViAR": [(48.5, 93.1)], "TEAM-Net": [(57.7, 93.35)],
        "Wu et al.* (1 crop)": [(42.1, 88.5)],
        "MIMO": [(15.4, 85.8)],
    },
    "hmdb51": {
        "paper: Ours + CoViAR backbone": [(51.2, 68.50), (45.4, 68.10), (23.4, 65.05),
                                          (12.3, 60.31)],
        "CoViAR": [(48.5, 68.0)], "TEAM-Net": [(57.7, 66.06)],
        "Wu et al.* (1 crop)": [(42.1, 56.2)],
        "MIMO": [(15.4, 58.6)],
    },
}
SECTIONS = ("## Run", "## Modality networks", "## Internal classifiers: CE versus PKD",
            "## WISE", "## Accuracy versus compute", "## Cost model")


def _best_last(history: Sequence[tuple[int, Mapping[str, float]]], key: str, spe: int
               ) -> dict[str, float]:
  vals = [(step, m[key]) for step, m in history if key in m]
  if not vals:
    return {}
  step, best = max(vals, key=lambda sv: (sv[1], -sv[0]))
  return {"best": float(best), "best_epoch": int(math.ceil(step / spe)), "last": float(vals[-1][1]),
          "evaluations": len(vals)}


def accuracies(histories: Mapping[str, Sequence[tuple[int, Mapping[str, float]]]],
               groups: Sequence[tuple[str, Sequence[str]]], bb_spe: Mapping[str, int],
               ic_spe: int) -> tuple[dict[str, Any], dict[str, Any]]:
  """Best and last evaluation top-1 of every modality network and IC.

  Args:
    histories: every evaluation of each stage, ``StageResult.history`` by stage name.
    groups: per group of networks trained together, its stage-name suffix and their short names.
    bb_spe: steps per epoch of each network's backbone stage, by short name.
    ic_spe: steps per epoch of the IC stages.

  Returns:
    ``(networks, ic)``: the ``networks`` and ``ic`` blocks of ``results.json``; an IC row trained
    both ways also gets PKD's gain over CE (``gain_best``, ``gain_last``).
  """
  networks = {}
  for suffix, shorts in groups:
    for short in shorts:
      networks[short] = _best_last(histories["backbone" + suffix], f"{short}/top1", bb_spe[short])
  ic_table = {}
  for suffix, shorts in groups:
    for kind in ("ce", "pkd"):
      for short in shorts:
        for i in range(3):
          key = f"{short}{i + 1}"
          ic_table.setdefault(key, {})[kind] = _best_last(histories[f"ic_{kind}" + suffix],
                                                          f"{key}/top1", ic_spe)
  for key, row in ic_table.items():
    if row.get("ce") and row.get("pkd"):
      row["gain_best"] = row["pkd"]["best"] - row["ce"]["best"]
      row["gain_last"] = row["pkd"]["last"] - row["ce"]["last"]
  return networks, ic_table


def _get(d: Any, *keys: Any) -> Any:
  for k in keys:
    if isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
      d = d[k]
    elif isinstance(d, dict) and k in d:
      d = d[k]
    else:
      return None
  return d


def _cell(runs, *keys, percent=True, signed=False, digits=2):
  return R.fmt_mean_std([_get(r, *keys) for r in runs], digits, percent=percent, signed=signed)


def _ic_rows(runs: Sequence[dict]) -> list[list[str]]:
  rows = []
  for key in runs[0]["ic"]:
    rows.append([key,
                 _cell(runs, "ic", key, "ce", "best"), _cell(runs, "ic", key, "pkd", "best"),
                 _cell(runs, "ic", key, "gain_best", signed=True),
                 _cell(runs, "ic", key, "ce", "last"), _cell(runs, "ic", key, "pkd", "last"),
                 _cell(runs, "ic", key, "gain_last", signed=True)])
  return rows


def split_total(runs: Sequence[dict], *keys: Any) -> float | None:
  """A per-run total summed over the runs' splits, averaged over the seeds of each split.

  The paper's "Cost (GMACs)" is the sum over the test videos of the three splits (spec 5.5): with
  runs over splits 1-3 this is that sum; with one run, its own total. None if a run lacks it.
  """
  by_split: dict[Any, list[float]] = {}
  for r in runs:
    v = _get(r, *keys)
    if v is None:
      return None
    by_split.setdefault(r.get("split"), []).append(float(v))
  return sum(sum(v) / len(v) for v in by_split.values())


def _total_cell(runs: Sequence[dict], *keys: Any) -> str:
  total = split_total(runs, *keys)
  return "-" if total is None else f"{total:.6g}"


def wise_switches(block: Mapping[str, Any]) -> str:
  """One sentence naming the WISE switches a setting's results were computed with."""
  fit = block.get("fit_segments")
  if block.get("fit_once") and fit:
    fitted = "once, at MV/R/I " + "/".join(str(fit.get(k, "?")) for k in ("MV", "R", "I"))
  else:
    fitted = "per setting, at its own segment counts"
  return (f"weights fitted {fitted} (`wise.fit_segments`), fallback weights "
          f"`{block.get('fallback_weights_source', 'learned')}` (`wise.fallback_weights`), cost "
          f"counter `{block.get('cost_count', 'per_video')}` (`wise.cost_count`), softmax in "
          f"`{block.get('softmax_dtype', 'float64')}` (`wise.softmax_dtype`)")


def _wise_rows(runs: Sequence[dict], setting: str) -> list[list[str]]:
  first = runs[0]["wise"][setting]
  variants = list(first["variants"])
  rows = []
  for i, row in enumerate(first["variants"]["wise"] if "wise" in variants else
                          first["variants"][variants[0]]):
    cells = [f"{row['threshold']:g}"]
    n_runs = len(runs)
    row_of = lambda v, i=i: first["variants"][v][i]  # noqa: E731
    for v in variants:
      cells.append(_cell(runs, "wise", setting, "variants", v, i, "accuracy"))
      cells.append(f"{row_of(v)['gmacs_per_video']:.4g}" if n_runs == 1 else
                   _cell(runs, "wise", setting, "variants", v, i, "gmacs_per_video",
                         percent=False, digits=4))
      cells.append(_total_cell(runs, "wise", setting, "variants", v, i, "gmacs_total"))
    early = [1.0 - _get(r, "wise", setting, "variants", variants[0], i, "exit_fraction")[-1]
             for r in runs]
    cells.append(R.fmt_mean_std(early, 1, percent=True))
    rows.append(cells)
  return rows


def pkd_report(runs: Sequence[dict[str, Any]], workdir: epath.Path,
               config: dict[str, Any]) -> dict[str, Any]:
  """Writes ``report.md`` and ``tradeoff.png`` in ``workdir``; returns the aggregate results."""
  first = runs[0]
  dataset = first["dataset"]
  t = first["timing_first_run"]
  lines = ["# PKD + WISE report", ""]
  n = len(runs)
  agg = f" Numbers are mean ± std over {n} runs (seeds {sorted({r['seed'] for r in runs})}, " \
        f"splits {sorted({r['split'] for r in runs if r['split'] is not None}) or '-'})." \
        if n > 1 else ""
  lines += ["## Run", "",
            f"Dataset `{dataset}` ({first['num_classes']} classes, {first['train_videos']} train / "
            f"{first['test_videos']} test videos), input {first['input_size']}x"
            f"{first['input_size']}. Accuracies are test-split top-1 (%).{agg}", "",
            R.markdown_table(["network", "model", "initialisation", "IC heads (kernel, channels)"],
                             [[k, f"{v['model']} " + str(
                                 {a: b for a, b in v.items() if a not in ("model", "ic_heads")}),
                               first["init"].get(k, "-"), v["ic_heads"]]
                              for k, v in first["models"].items()]), "",
            f"Teacher schedule `{first['teacher_schedule']}`: teachers "
            f"{' → '.join(first['curriculum']['teachers'])} changing at PKD epochs "
            f"{first['curriculum']['boundary_epochs']} of {config['ic']['pkd_epochs']} "
            f"('own' = the network's own final classifier), frozen-backbone BatchNorm in "
            f"`{first['bn_mode']}` mode, IC epochs CE {config['ic']['ce_epochs']} / PKD "
            f"{config['ic']['pkd_epochs']}, WISE on the {first['wise_ic_variant'].upper()} ICs. "
            f"Wall time of the run that computed it: {t['total_s']:.0f} s (backbones "
            f"{t['backbones_s']:.0f} s, ICs {t['ics_s']:.0f} s, logits {t['logits_s']:.0f} s, "
            f"WISE {t['wise_s']:.0f} s).",
            ""]
  lines += ["## Modality networks", "",
            "Cross-entropy fine-tuning; test top-1 at the last evaluation and the best one. "
            + _selection_sentence(first), "",
            R.markdown_table(
                ["network", "top-1 last", "top-1 best", "best epoch"],
                [[k, _cell(runs, "networks", k, "last"), _cell(runs, "networks", k, "best"),
                  _cell(runs, "networks", k, "best_epoch", percent=False, digits=0)]
                 for k in first["networks"]]), ""]
  lines += ["## Internal classifiers: CE versus PKD", "",
            "IC1-IC3 of each network on its frozen backbone, trained from the same initialisation "
            "with cross-entropy (CE) and with progressive KD (PKD). Best = best evaluation "
            "(the paper's model selection on the test split), last = final epoch; Δ = PKD - CE in "
            "points.", "",
            R.markdown_table(["IC", "CE best", "PKD best", "Δ best", "CE last", "PKD last",
                              "Δ last"], _ic_rows(runs)), ""]
  if n > 1:
    from kd_jax.methods import _runs  # pylint: disable=g-import-not-at-top
    lines += [_runs.effect_sentence(ic_effect(runs)), ""]
  lines += ["## WISE", "",
            "Cascade in the order " + " → ".join(first["wise"][next(iter(first["wise"]))]["order"])
            + "; weights fitted on train-split logits; exit when the ensemble's softmax confidence "
            "exceeds the threshold. `wise` = learned weights (the paper's curve), `division` = "
            "ensemble divided by k, `no_scaling` = all weights 1, `no_lateral` = each exit alone. "
            "Costs in GMACs per video and, Σ, summed over the test videos (over the splits of "
            "several runs, averaged over seeds: the paper's plotted cost, spec 5.5); 'early' = "
            "share of test videos that exit before the fallback.", "",
            "Switches: " + wise_switches(next(iter(first["wise"].values()))) + ".", ""]
  for setting, block in first["wise"].items():
    variants = list(block["variants"])
    headers = ["threshold"]
    for v in variants:
      headers += [f"{v} top-1", f"{v} GMACs/video", f"{v} Σ GMACs"]
    headers.append("early")
    lines += [f"### Segments MV/R/I = {setting}", "",
              R.markdown_table(headers, _wise_rows(runs, setting)), "",
              f"Late fusion of the three final classifiers: plain sum "
              f"{_cell(runs, 'wise', setting, 'late_fusion', 'accuracy')}, fallback weights "
              f"({block.get('fallback_weights_source', 'learned')}) "
              f"{_cell(runs, 'wise', setting, 'late_fusion_learned', 'accuracy')} "
              f"(at {block['late_fusion']['gmacs_per_video']:.3f} GMACs per video). Single exits: "
              + ", ".join(f"{k} {_cell(runs, 'wise', setting, 'single_exit_top1', k)}"
                          for k in block["single_exit_top1"]) + ".", ""]
  # Trade-off plot.
  curves = {}
  for setting in first["wise"]:
    pts = []
    for i, row in enumerate(first["wise"][setting]["variants"].get("wise", [])):
      acc = R.mean_std([_get(r, "wise", setting, "variants", "wise", i, "accuracy")
                        for r in runs])[0]
      pts.append((row["gmacs_per_video"], 100 * acc))
    curves[f"WISE, segments {setting}"] = pts
  fusion = [(first["wise"][s]["late_fusion"]["gmacs_per_video"],
             100 * R.mean_std([_get(r, "wise", s, "late_fusion", "accuracy") for r in runs])[0])
            for s in first["wise"]]
  points = {"late fusion (plain sum)": fusion}
  base = dataset.split("/")[0]
  points.update(REFERENCES.get(base, {}))
  R.tradeoff_plot(workdir / "tradeoff.png", curves, points, xlabel="GMACs per video",
                  ylabel="top-1 (%)", title=f"PKD + WISE on {dataset}")
  ref_note = (" Reference points: the paper's 'Ours + CoViAR backbone' and baselines (spec 7.2, "
              "7.3), per video." if base in REFERENCES else "")
  lines += ["## Accuracy versus compute", "", "![trade-off](tradeoff.png)", "",
            "One curve per segment setting over the thresholds." + ref_note, ""]
  lines += ["## Cost model", "",
            "Cumulative GMACs per segment up to each exit, computed with "
            "`kd_jax.models.macs.exit_macs` for the networks and IC heads actually trained, at the "
            "test input size (multiply-accumulates of convolutions and linear layers; BatchNorm, "
            "ReLU and pooling, the IC heads' adaptive pools included, are not counted; exit 4 "
            "includes the three IC heads). Exiting in a later network adds the full cost of the "
            "earlier ones times their segments. These are not the spec's hard-coded table (5.5), "
            "which is ptflops's full count (BatchNorm, ReLU and pooling elements added, 0.3-1.3 % "
            "more), matches ResNet-18 only with a 7x7 second IC head and has the R and MV rows "
            "swapped.", "",
            R.markdown_table(["network", "exit 1", "exit 2", "exit 3", "exit 4"],
                             [[k] + [f"{c:.4g}" for c in v]
                              for k, v in first["exit_gmacs_per_segment"].items()]), ""]
  text = "\n".join(lines)
  (workdir / "report.md").write_text(text + "\n")
  return {"runs": list(runs), "report": str(workdir / "report.md"),
          "effect": ic_effect(runs) if n > 1 else None}


def _selection_sentence(first: Mapping[str, Any]) -> str:
  mode = first.get("selection", {}).get("mode", "last")
  if mode == "last":
    return ("Model selection `last`: every later stage, the logits and WISE use the final "
            "weights (the paper selects the best test-split epoch: `selection='best_test'`).")
  where = "test-split" if mode == "best_test" else "held-out training-video"
  return (f"Model selection `{mode}`: every network and each IC hands on the weights of its best "
          f"{where} evaluation (the steps are in results.json, `selection`), and the logits and "
          "WISE use those.")


def ic_effect(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
  """PKD's effect over CE per run (the mean over the ICs of PKD - CE at each IC's best
  evaluation), against the spread between runs (:func:`kd_jax.methods._runs.effect`)."""
  from kd_jax.methods import _runs  # pylint: disable=g-import-not-at-top
  numbers = [{kind: sum(row[kind]["best"] for row in r["ic"].values()) / len(r["ic"])
              for kind in ("pkd", "ce")} for r in runs]
  e = _runs.effect(numbers, "pkd", "ce")
  if e:
    e.update(distilled="PKD mean IC top-1 (best)", baseline="CE")
  return e


def pkd_summary(runs: Sequence[dict[str, Any]], workdir: epath.Path) -> str:
  """What the command prints at the end: the CE-versus-PKD table and the WISE summary."""
  first = runs[0]
  out = [f"PKD + WISE on {first['dataset']} ({len(runs)} run(s)); test top-1 %",
         "", "Modality networks (last evaluation): " + ", ".join(
             f"{k} {_cell(runs, 'networks', k, 'last')}" for k in first["networks"]), "",
         "Internal classifiers, CE vs PKD (best / last evaluation):",
         f"  {'IC':4} {'CE best':>9} {'PKD best':>9} {'Δ':>7}   {'CE last':>9} {'PKD last':>9} "
         f"{'Δ':>7}"]
  for row in _ic_rows(runs):
    out.append(f"  {row[0]:4} {row[1]:>9} {row[2]:>9} {row[3]:>7}   {row[4]:>9} {row[5]:>9} "
               f"{row[6]:>7}")
  out += ["", "WISE (accuracy % at GMACs per video; " + wise_switches(
      next(iter(first["wise"].values()))).replace("`", "") + "):"]
  for setting, block in first["wise"].items():
    rows = block["variants"].get("wise") or next(iter(block["variants"].values()))
    parts = [f"τ={r['threshold']:g}: "
             f"{_cell(runs, 'wise', setting, 'variants', 'wise', i, 'accuracy')}"
             f" @ {r['gmacs_per_video']:.3g}" for i, r in enumerate(rows)]
    out.append(f"  segments MV/R/I {setting}: " + "; ".join(parts))
    out.append(f"    late fusion (plain) {_cell(runs, 'wise', setting, 'late_fusion', 'accuracy')}"
               f" @ {block['late_fusion']['gmacs_per_video']:.3g}")
  if len(runs) > 1:
    from kd_jax.methods import _runs  # pylint: disable=g-import-not-at-top
    out += ["", _runs.effect_sentence(ic_effect(runs))]
  out += ["", f"Report: {workdir / 'report.md'} (plot: {workdir / 'tradeoff.png'})"]
  return "\n".join(out)

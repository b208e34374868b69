"""The temporal amplitude spectra and learned term weights that a spectral run reports, computed
from the trained stages (the report itself is :mod:`kd_jax.methods._spectral_report`).

Part of the ``spectral`` method (:mod:`kd_jax.methods.spectral`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import losses
from kd_jax.methods._spectral_setup import EvalBatches
from kd_jax.methods._spectral_setup import Setup
from kd_jax.methods._spectral_terms import Entry
from kd_jax.methods._spectral_terms import TERMS
from kd_jax.methods._spectral_terms import amplitude_curve
from kd_jax.methods._spectral_terms import switches
from kd_jax.train import compilation


# ------------------------------------------------------------------------------------------------
# Spectra for the report.


def _host(tree: Any) -> Any:
  """A pytree of (possibly replicated, multi-host) arrays as NumPy, from this process's replica."""
  def one(a):
    if isinstance(a, jax.Array):
      return np.asarray(a.addressable_data(0))
    return np.asarray(a)
  return jax.tree.map(one, tree)


def _report_clips(eval_batches: EvalBatches, num: int) -> np.ndarray:
  """Up to ``num`` real evaluation clips (this process's share), for the spectra."""
  out, have = [], 0
  for batch in eval_batches(max(1, min(num, 16))):
    keep = np.asarray(batch["mask"]).astype(bool)
    out.append(np.asarray(batch["video"])[keep])
    have += int(keep.sum())
    if have >= num:
      break
  return np.concatenate(out)[:num]


def report_spectra(setup: Setup, teacher_vars, init_fn, results: Mapping[Entry, Any],
                   eval_batches: EvalBatches) -> tuple[str, dict[str, dict[str, Any]]]:
  """The report's layer and its :func:`spectra`: the teacher, the student at initialisation
  (``'init'``, from the stages' shared ``init_fn``) and every trained student."""
  config = setup.config
  rep = config.report
  layer = rep.spectrum_layer if rep.spectrum_layer in setup.adapters else config.spec.layers[-1]
  clips = _report_clips(eval_batches, rep.num_clips)
  init_params, init_state = compilation.jit(init_fn, preset="fastest")(jax.random.key(config.seed))
  students = {"init": (init_params, init_state)}
  students.update({e.stage_name: (r.pick().params, r.pick().model_state)
                   for e, r in results.items()})
  return layer, spectra(setup, teacher_vars, students, layer, clips)


def learned_weights(config: ml_collections.ConfigDict, results: Mapping[Entry, Any]
                    ) -> dict[str, dict[str, float]]:
  """``exp(-s_i)`` of each uncertainty-weighted student at the end of training, per learned term."""
  out = {}
  for e, r in results.items():
    if e.weighting == "uncertainty" and e.terms:
      s = _host(r.pick().params["log_vars"])
      on = switches(e, config)["learned"]
      out[e.stage_name] = {t: float(np.exp(-s[i])) for i, t in enumerate(TERMS) if on[i]}
  return out


def spectra(setup: Setup, teacher_vars, students: Mapping[str, Any], layer: str,
            clips: np.ndarray) -> dict[str, dict[str, list[float]]]:
  """Mean temporal amplitude per frequency bin of ``layer`` for the teacher and each student.

  Each student (name -> ``(params, model_state)``) gets its own-feature curve and, through its
  adapter, the curve in the teacher's channel space plus the spectrum loss against the teacher.
  """
  teacher, student = setup.teacher, setup.student
  adapter = setup.adapters.get(layer)

  # One compiled function for the teacher and every student (same shapes): one compilation.
  @compilation.jit
  def curves(params, state, t_vars, x):
    t_feat = teacher.apply(t_vars, x, train=False)[1][layer]
    feats = student.apply({"params": params["student"], **state["student"]}, x, train=False)[1]
    out = {"teacher": amplitude_curve(t_feat), "own": amplitude_curve(feats[layer])}
    if adapter is not None:
      mapped = adapter.apply({"params": params["adapters"][layer], **state["adapters"][layer]},
                             feats[layer], train=False)
      out["adapted"] = amplitude_curve(mapped)
      out["spectrum_loss"] = jnp.mean(losses.temporal_spectrum_loss(mapped, t_feat))
    return out

  x = jnp.asarray(clips)
  t_vars = _host(teacher_vars)
  out = {}
  for name, (params, state) in students.items():
    params, state = _host(params), _host(state)
    t = t_vars
    if "teacher" in params:  # mutual learning: compare with the teacher as it was trained
      params = dict(params)
      t = {"params": params.pop("teacher"), **state["teacher"]}
    r = jax.device_get(curves(params, state, t, x))
    if "teacher" not in out and t is t_vars:
      out["teacher"] = {"own": np.asarray(r["teacher"]).tolist()}
    del r["teacher"]
    out[name] = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v)) for k, v in r.items()}
  return out

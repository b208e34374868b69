"""The logits of all of PKD's exits (cached as npz in the workdir) and WISE fitted and evaluated
on them.

Part of the ``pkd`` method (:mod:`kd_jax.methods.pkd`); WISE itself is
:mod:`kd_jax.methods._wise`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import train
from kd_jax.methods import _wise
from kd_jax.methods._pkd_config import parse_order
from kd_jax.methods._pkd_networks import Network
from kd_jax.methods._pkd_networks import SHORT
from kd_jax.methods._pkd_networks import _ic_forward
from kd_jax.train import mesh as mesh_lib

if TYPE_CHECKING:  # The method module imports this one.
  from kd_jax.methods.pkd import Data


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def _load_npz(path: epath.Path) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(path.read_bytes())) as f:
    return {k: f[k] for k in f.files}


def logit_segments(config, segments: Sequence[int]) -> dict[str, list[int]]:
  """The segment counts whose logits WISE reads, per split.

  The test split: ``segments`` (every count of ``wise.settings``). The train split, where the
  weights are fitted: the counts of ``wise.fit_segments`` when the weights are fitted once, else
  the same as the test split (refit per setting).
  """
  test = sorted({int(s) for s in segments})
  fit = tuple(int(x) for x in config.wise.fit_segments)
  return {"train": sorted(set(fit)) if fit else test, "test": test}


def dump_logits(runner: train.Runner, config, data: Data, nets: dict[str, Network],
                backbones: dict[str, dict], ics: dict[str, dict[str, Any]],
                segments: Sequence[int]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
  """Video-level logits of all exits, per split and segment count; cached as npz in the workdir.

  ``segments``: the counts of ``wise.settings``; the train split is dumped at the counts the
  weights are fitted at instead (:func:`logit_segments`). Each file holds ``<net>/<ce|pkd>``
  ``[N, 4, K]`` (IC1, IC2, IC3, the network's final classifier; the final always from the
  fine-tuned backbone with its own statistics) and ``label`` ``[N]``, in the source's record order.
  """
  out_dir = runner.workdir / "logits"
  batch = int(config.logits.batch_size)
  per_host = mesh_lib.per_host_batch_size(batch, runner.mesh)
  emulate = config.ic.bn_mode == "train"

  def forward(variables, batch):
    out = {"label": batch["label"], "index": batch["index"]}
    for m, net in nets.items():
      bb = variables["backbones"][m]
      final, _ = net.backbone.apply(bb, batch[m], train=False)
      for kind, v in variables["ics"][m].items():
        # With the train-mode BatchNorm quirk each IC brings the backbone statistics of its own
        # selected step (model_state['backbone'][ic<k>]), so each needs its own backbone pass.
        per_ic = sorted(v["model_state"]["backbone"]) if emulate else [None]
        columns = []
        for key in per_ic:
          stats = v["model_state"]["backbone"][key] if emulate else bb["batch_stats"]
          _, ic_logits, _, _ = _ic_forward(net, bb["params"], stats, v["params"],
                                           v["model_state"]["ic"], batch[m],
                                           train_ic=False, train_bb=False)
          columns.append(ic_logits[:, int(key[2:]) - 1] if emulate else ic_logits)
        ic_logits = jnp.stack(columns, axis=1) if emulate else columns[0]
        out[f"{m}/{kind}"] = jnp.concatenate([ic_logits, final[:, None]], axis=1)
    return out

  variables = {"backbones": backbones, "ics": ics}
  results = {}
  for split, counts in logit_segments(config, segments).items():
    for s in counts:
      path = out_dir / f"{split}_s{s}.npz"
      if path.exists():
        results[(split, s)] = _load_npz(path)
        continue
      spec = data.spec(segments=s, sampling=config.data.logits_sampling)
      t0 = time.monotonic()
      out = runner.predict(forward, variables, data.eval_batches(
          split, spec, global_batch=batch, per_host=per_host))
      idx = out.pop("index")
      parts = {}
      for k, v in out.items():  # in the source's record order
        parts[k] = np.zeros((data.size(split),) + v.shape[1:], v.dtype)
        parts[k][idx] = v
      logging.info("Logits %s, %d segment(s): %.1f s.", split, s, time.monotonic() - t0)
      if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{split}_s{s}.npz.tmp"
        tmp.write_bytes(_npz_bytes(parts))
        tmp.rename(path)
      results[(split, s)] = parts
  return results


def _run_split(config, split: int | None) -> int | None:
  """The split actually run: ``split`` (an entry of ``config.splits``) or ``data.config``."""
  if split is not None:
    return int(split)
  return _wise.dataset_split(config.data.get("config"))


def run_wise(config, logits, costs: dict[str, list[float]], *, split: int | None = None
             ) -> dict[str, Any]:
  """Fits and evaluates WISE for every segment setting; returns the ``wise`` results block.

  ``split``: the dataset split this run uses (``run_one``'s, an entry of ``config.splits``); None
  reads it from ``config.data.config``. The official fallback preset follows it.

  The WISE switches (``config.wise``): ``fit_segments`` (MV, R, I) fits the weights once, on the
  train logits at those counts, and reuses them for every setting (the official protocol), ``()``
  refits per setting; ``fallback_weights`` 'learned' | 'official' | three weights (MV, R, I);
  ``cost_count`` 'per_video' (each video's cost once) | 'official' (correct exits at MV2-MV4
  counted twice, the official counter's bug); ``softmax_dtype`` 'float64' | 'float32' (official).
  """
  w = config.wise
  order = parse_order(w.order)
  finals = [4 * i + 3 for i in range(len(order))]
  run_split = _run_split(config, split)
  fb_source, fb_weights = _wise.fallback_weights(w.fallback_weights, order,
                                                 dataset=config.data.name, split=run_split)
  double = _wise.official_double_count(order) if w.cost_count == "official" else ()
  fit_seg = tuple(int(x) for x in w.fit_segments)

  def stack(split_name, seg, variant):
    parts = [logits[(split_name, seg[m])][f"{m}/{variant}"] for m in order]
    return np.concatenate(parts, axis=1), logits[(split_name, seg[order[0]])]["label"]

  def fit(seg):
    ztr, ytr = stack("train", seg, w.ic_variant)
    return _wise.fit(ztr, ytr, finals, alpha=float(w.alpha), free_exits=int(w.free_exits),
                     fallback_alpha=float(w.fallback_alpha), lr=float(w.lr),
                     steps=int(w.steps), init=float(w.init), fallback=fb_weights)

  once_seg = dict(zip(("mv", "residual", "iframe"), fit_seg)) if fit_seg else None
  once = fit(once_seg) if once_seg else None
  out = {}
  for setting in w.settings:
    seg = dict(zip(("mv", "residual", "iframe"), (int(x) for x in setting)))
    label = "/".join(str(seg[m]) for m in ("mv", "residual", "iframe"))
    zte, yte = stack("test", seg, w.ic_variant)
    fitted = once if once is not None else fit(seg)
    cost = _wise.cascade_costs([costs[m] for m in order], [seg[m] for m in order])
    variants = _wise.evaluate(zte, yte, fitted, finals, cost, list(w.thresholds),
                              list(w.variants), fallback=w.fallback, double_count=double,
                              softmax_dtype=w.softmax_dtype)
    full = float(cost[-1])
    n = len(yte)
    single = {f"{SHORT[m]}{k + 1}": float(np.mean(zte[:, 4 * i + k].argmax(-1) == yte))
              for i, m in enumerate(order) for k in range(4)}
    fused = zte[:, finals].astype(np.float64)
    fit_at = once_seg or seg
    out[label] = {
        "segments": {SHORT[m]: seg[m] for m in order},
        "order": [SHORT[m] for m in order],
        "test_videos": n,
        "fit_once": once is not None,  # wise.fit_segments given: one fit for every setting
        "fit_segments": {SHORT[m]: fit_at[m] for m in order},  # where the weights were fitted
        "fallback_weights_source": fb_source,
        "cost_count": w.cost_count,
        "softmax_dtype": w.softmax_dtype,
        "weights": fitted.weights.tolist(),
        "fallback_weights": fitted.fallback.tolist(),
        "variants": variants,
        "exit_gmacs_per_video": cost.tolist(),
        "late_fusion": {"accuracy": float(np.mean(fused.sum(1).argmax(-1) == yte)),
                        "gmacs_per_video": full, "gmacs_total": full * n},
        # The finals weighted by the fallback weights in use (learned, official or explicit).
        "late_fusion_learned": {
            "accuracy": float(np.mean(np.einsum("nmc,m->nc", fused, fitted.fallback)
                                      .argmax(-1) == yte)),
            "gmacs_per_video": full, "gmacs_total": full * n},
        "single_exit_top1": single,
    }
  return out

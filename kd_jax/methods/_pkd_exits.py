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


def dump_logits(runner: train.Runner, config, data: Data, nets: dict[str, Network],
                backbones: dict[str, dict], ics: dict[str, dict[str, Any]],
                segments: Sequence[int]) -> dict[tuple[str, int], dict[str, np.ndarray]]:
  """Video-level logits of all exits, per split and segment count; cached as npz in the workdir.

  Each file holds ``<net>/<ce|pkd>`` ``[N, 4, K]`` (IC1, IC2, IC3, the network's final
  classifier; the final always from the fine-tuned backbone with its own statistics) and
  ``label`` ``[N]``, in the source's record order.
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
  for split in ("train", "test"):
    for s in segments:
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


def run_wise(config, logits, costs: dict[str, list[float]]) -> dict[str, Any]:
  """Fits and evaluates WISE for every segment setting; returns the ``wise`` results block."""
  w = config.wise
  order = parse_order(w.order)
  finals = [4 * i + 3 for i in range(len(order))]
  out = {}
  for setting in w.settings:
    seg = dict(zip(("mv", "residual", "iframe"), (int(x) for x in setting)))
    label = "/".join(str(seg[m]) for m in ("mv", "residual", "iframe"))

    def stack(split, variant):
      parts = [logits[(split, seg[m])][f"{m}/{variant}"] for m in order]
      return np.concatenate(parts, axis=1), logits[(split, seg[order[0]])]["label"]

    ztr, ytr = stack("train", w.ic_variant)
    zte, yte = stack("test", w.ic_variant)
    fitted = _wise.fit(ztr, ytr, finals, alpha=float(w.alpha), free_exits=int(w.free_exits),
                       fallback_alpha=float(w.fallback_alpha), lr=float(w.lr),
                       steps=int(w.steps), init=float(w.init))
    cost = _wise.cascade_costs([costs[m] for m in order], [seg[m] for m in order])
    variants = _wise.evaluate(zte, yte, fitted, finals, cost, list(w.thresholds),
                              list(w.variants), fallback=w.fallback)
    full = float(cost[-1])
    single = {f"{SHORT[m]}{k + 1}": float(np.mean(zte[:, 4 * i + k].argmax(-1) == yte))
              for i, m in enumerate(order) for k in range(4)}
    fused = zte[:, finals].astype(np.float64)
    out[label] = {
        "segments": {SHORT[m]: seg[m] for m in order},
        "order": [SHORT[m] for m in order],
        "weights": fitted.weights.tolist(),
        "fallback_weights": fitted.fallback.tolist(),
        "variants": variants,
        "exit_gmacs_per_video": cost.tolist(),
        "late_fusion": {"accuracy": float(np.mean(fused.sum(1).argmax(-1) == yte)),
                        "gmacs_per_video": full},
        "late_fusion_learned": {
            "accuracy": float(np.mean(np.einsum("nmc,m->nc", fused, fitted.fallback)
                                      .argmax(-1) == yte)),
            "gmacs_per_video": full},
        "single_exit_top1": single,
    }
  return out

"""WISE (Weighted Inference with Scaled Ensemble): weight fitting, the early-exit cascade, costs.

Part of the ``pkd`` method (pkd_wise.md section 5); a helper module, not a runnable method.

Exits are numbered in cascade order (default R1..R4, MV1..MV4, I1..I4). The ensemble at exit k is

    z~_k = sum_{j <= k} w^(k)_j z_j

with one weight vector per exit, fitted on *train-split* logits by full-batch SGD (lr 0.1, 500
steps, initialised at 1) on ``mean CE(z~_k, y) + alpha_k * ||w^(k)||_1``. The cascade runs exits
1..E-1 and stops at the first whose softmax confidence exceeds the threshold (strictly); a sample
no exit takes falls back to a weighted sum of the networks' final classifiers, whose weights are
fitted the same way (section 9 item 8) or given: :data:`OFFICIAL_FALLBACK` holds the constants the
official scripts hard-code per split.

The cost of a run is the sum over the test videos of the cumulative cost of the exit each one
took (``gmacs_total``; the paper's plots add it up over the three splits' test sets, spec 5.5) and
that sum over the number of videos (``gmacs_per_video``). ``double_count`` reproduces the official
counter's bug on purpose (:func:`official_double_count`).

Everything here is plain arrays in, arrays out. The cascade runs in float64 NumPy by default, so
thresholds such as 0.999999 are resolved exactly; ``dtype=np.float32`` follows the official
scripts, whose ensembles and softmax are float32 torch tensors (the threshold compared in float32
too), which decides a few videos near 0.999999 differently.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

VARIANTS = ("wise", "division", "no_scaling", "no_lateral")
COST_COUNTS = ("per_video", "official")
SOFTMAX_DTYPES = {"float64": np.float64, "float32": np.float32}

# The final fallback's weights hard-coded in the official cascades, per (dataset, split) and
# network. Efstathia-Soufleri/PKD, COVIAR_backbone/wise_ucf101_kinetics_pretrained.py (the `else:`
# branch of main / main_no_division; splits 1 and 2 share one triple) and COVIAR_backbone/
# hmdb_wise.py (same branch). HMDB-51 split 1 assigns the prediction twice, first with I 0.6313 /
# R 0.4611, then with I 0.4611 / R 0.6313; the second assignment is the one that counts.
OFFICIAL_FALLBACK = {
    ("ucf101", 1): {"mv": 0.5565, "residual": 1.3720, "iframe": 1.8532},
    ("ucf101", 2): {"mv": 0.5565, "residual": 1.3720, "iframe": 1.8532},
    ("ucf101", 3): {"mv": 0.9558, "residual": 1.4348, "iframe": 1.5995},
    ("hmdb51", 1): {"mv": 0.3005, "residual": 0.6313, "iframe": 0.4611},
    ("hmdb51", 2): {"mv": 0.2855, "residual": 0.7465, "iframe": 0.4077},
    ("hmdb51", 3): {"mv": 0.3450, "residual": 0.7618, "iframe": 0.3689},
}
FALLBACK_NETWORKS = ("mv", "residual", "iframe")  # the order of an explicit triple


def parse_fallback_weights(spec) -> str | tuple[float, float, float]:
  """``wise.fallback_weights`` -> 'learned', 'official' or three floats (MV, R, I).

  Accepts a string ('learned', 'official', 'w_mv,w_r,w_i') or a sequence of three numbers.
  Raises ValueError for anything else.
  """
  if isinstance(spec, str):
    name = spec.strip().lower()
    if name in ("learned", "official"):
      return name
    items = [x for x in name.strip("()[] ").split(",") if x.strip()]
  else:
    items = list(spec)
  try:
    values = tuple(float(x) for x in items)
  except (TypeError, ValueError):
    values = ()
  if len(values) != 3 or not all(np.isfinite(values)):
    raise ValueError(f"wise.fallback_weights must be 'learned', 'official' or three weights "
                     f"'w_mv,w_r,w_i', got {spec!r}")
  return values


def dataset_split(data_config: str | None) -> int | None:
  """The split number of a dataset config name ('split2' -> 2), None for any other name."""
  m = re.fullmatch(r"split(\d+)", str(data_config or ""))
  return int(m.group(1)) if m else None


def fallback_weights(spec, order: Sequence[str], *, dataset: str | None = None,
                     split: int | None = None) -> tuple[str, np.ndarray | None]:
  """The fallback weights over the final classifiers, in cascade ``order`` (network names).

  Returns ``(source, weights)``: ``('learned', None)`` (fit them), ``('official', w)`` (the
  :data:`OFFICIAL_FALLBACK` preset of ``dataset`` and ``split``) or ``('explicit', w)``.
  """
  parsed = parse_fallback_weights(spec)
  if parsed == "learned":
    return "learned", None
  if parsed == "official":
    key = (str(dataset).split("/")[0], split)
    if key not in OFFICIAL_FALLBACK:
      raise ValueError(f"no official WISE fallback weights for dataset {dataset!r} split "
                       f"{split!r}; the official scripts have them for ucf101 and hmdb51, "
                       f"splits 1-3")
    table = OFFICIAL_FALLBACK[key]
    return "official", np.array([table[m] for m in order], np.float64)
  by_net = dict(zip(FALLBACK_NETWORKS, parsed))
  return "explicit", np.array([by_net[m] for m in order], np.float64)


def official_double_count(order: Sequence[str]) -> tuple[int, ...]:
  """Cascade exits whose correct predictions the official counter counts twice.

  In every cascade function of the official scripts, a correct exit at the MV network's IC2, IC3
  or IC4 runs ``counter_IC<k>_predictions_mv += 1`` where ``correct_IC<k>_predictions_mv`` was
  meant, so those videos' cost enters the tally twice (accuracy is unaffected). Returns the
  0-based cascade positions of MV2, MV3 and MV4 for networks in ``order`` (4 exits each).
  """
  m = list(order).index("mv")
  return tuple(4 * m + k for k in (1, 2, 3))


def alphas(num_exits: int, *, alpha: float = 0.1, free_exits: int = 5) -> np.ndarray:
  """The official L1 strengths: 0 for exits 1..free_exits, ``alpha`` after (section 5.2)."""
  return np.where(np.arange(1, num_exits + 1) <= free_exits, 0.0, alpha)


def wise_combine(exit_logits: jax.Array, weights: jax.Array) -> jax.Array:
  r"""The WISE ensemble of early exits: a learned weighted sum of their logits, in JAX.

  .. math::
    \tilde z = \sum_{k=1}^{K} w_k \, z_k

  WISE (Shao et al., "Advancing Compressed Video Action Recognition through Progressive Knowledge
  Distillation", arXiv 2407.02713; pkd_wise.md section 5) learns one weight vector per exit on
  cached training logits and exits once the softmax confidence of :math:`\tilde z` passes a
  threshold. Weights are not normalised and may be negative, as in the official code. Gradients
  flow to both arguments: :func:`_fit` differentiates through the weights. (The NumPy
  :func:`combine` does the same for all exits at once, in float64, for the cascade.)

  Not a loss, so it lives here beside its one user rather than in ``kd_jax.losses``: it produces
  logits, has no teacher, and outside WISE it is a one-line ``einsum``.

  Args:
    exit_logits: ``[..., K, C]``, the logits of the first ``K`` exits (the layout of
      ``losses.progressive_kd_loss``'s classifier logits).
    weights: ``[K]``.

  Returns:
    The combined logits, ``[..., C]``, in at least float32.
  """
  if jnp.ndim(exit_logits) < 2:
    raise ValueError(f"exit_logits must be [..., K, C], got shape {tuple(jnp.shape(exit_logits))}")
  num_exits = jnp.shape(exit_logits)[-2]
  if jnp.shape(weights) != (num_exits,):
    raise ValueError(
        f"weights must have shape ({num_exits},) to match the K axis of exit_logits "
        f"{tuple(jnp.shape(exit_logits))}, got {tuple(jnp.shape(weights))}")
  z = jnp.asarray(exit_logits)
  z = z.astype(jnp.promote_types(z.dtype, jnp.float32))  # bf16 logits are summed in float32
  return jnp.einsum("...kc,k->...c", z, jnp.asarray(weights).astype(z.dtype))


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit(exit_logits, labels, mask, alpha, lr, init, *, steps: int):
  """Full-batch SGD of every exit's weights at once; rows are independent problems."""
  z = exit_logits.astype(jnp.float32)

  def objective(w):
    # w: [R, E], mask: [R, E] (which exits row r may use); each row's loss depends on its row only,
    # so the sum's gradient is every row's own gradient: R independent SGD runs.
    wm = w * mask
    combined = jax.vmap(lambda row: wise_combine(z, row), out_axes=1)(wm)  # [N, R, C]
    ce = optax.softmax_cross_entropy_with_integer_labels(
        combined, labels[:, None].repeat(combined.shape[1], 1)).mean(0)
    return jnp.sum(ce + alpha * jnp.sum(jnp.abs(wm), -1))

  grad = jax.grad(objective)

  def body(_, w):
    return w - lr * grad(w)

  w0 = jnp.full(mask.shape, init, jnp.float32) * mask
  return jax.lax.fori_loop(0, steps, body, w0) * mask


def fit_weights(exit_logits: np.ndarray, labels: np.ndarray, *, alpha: Sequence[float] | float,
                lr: float = 0.1, steps: int = 500, init: float = 1.0,
                fit_first: bool = False) -> np.ndarray:
  """WISE weights of every exit: a lower-triangular ``[E, E]`` matrix, row k = ``w^(k)``.

  Args:
    exit_logits: ``[N, E, C]`` train-split logits in cascade order.
    labels: ``[N]``.
    alpha: L1 strength per exit (``[E]``) or one value for all.
    lr, steps, init: plain SGD settings (official: 0.1, 500, 1).
    fit_first: also fit exit 1's single weight; the official code uses exit 1 as it is (w = 1).
  """
  n, e, _ = exit_logits.shape
  if len(labels) != n:
    raise ValueError(f"{n} logits but {len(labels)} labels")
  mask = np.tril(np.ones((e, e), np.float32))
  a = np.broadcast_to(np.asarray(alpha, np.float32), (e,))
  w = np.array(_fit(jnp.asarray(exit_logits), jnp.asarray(labels, jnp.int32), jnp.asarray(mask),
                      jnp.asarray(a), jnp.float32(lr), jnp.float32(init), steps=int(steps)))
  if not fit_first:
    w[0] = 0.0
    w[0, 0] = 1.0
  return w


def fit_vector(logits: np.ndarray, labels: np.ndarray, *, alpha: float, lr: float = 0.1,
               steps: int = 500, init: float = 1.0) -> np.ndarray:
  """One weight vector ``[K]`` over ``K`` classifiers ``[N, K, C]`` (the fallback weights)."""
  k = logits.shape[1]
  mask = np.ones((1, k), np.float32)
  w = _fit(jnp.asarray(logits), jnp.asarray(labels, jnp.int32), jnp.asarray(mask),
           jnp.asarray([alpha], jnp.float32), jnp.float32(lr), jnp.float32(init), steps=int(steps))
  return np.asarray(w[0])


def _softmax_max(z: np.ndarray) -> np.ndarray:
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e.max(-1) / e.sum(-1)


@dataclasses.dataclass
class CascadeResult:
  """One cascade evaluation."""

  accuracy: float
  gmacs_per_video: float  # gmacs_total / number of videos
  exit_fraction: list[float]  # per cascade exit, the fallback last
  predictions: np.ndarray
  exits: np.ndarray
  gmacs_total: float = 0.0  # summed over the videos (with ``double_count``, as the counter adds)


def combine(exit_logits: np.ndarray, weights: np.ndarray, *, divide: bool = False,
            dtype=np.float64) -> np.ndarray:
  """All ensembles at once: ``[N, E, C]`` logits, ``[E, E]`` weights -> ``[N, E, C]`` in ``dtype``.

  Sums ``w_kj z_j`` term by term in exit order j = 1, 2, ..., as the official scripts write them
  out (``w[0]*z1 + w[1]*z2 + ...``), so float32 rounds as they do; weights of 0 (j > k) add an
  exact zero.
  """
  z = np.asarray(exit_logits).astype(dtype)
  w = np.asarray(weights).astype(dtype)
  out = np.zeros(z.shape[:1] + (w.shape[0],) + z.shape[2:], dtype)
  for j in range(w.shape[1]):
    out += w[None, :, j, None] * z[:, None, j, :]
  if divide:
    out = out / np.arange(1, w.shape[0] + 1, dtype=dtype)[None, :, None]
  return out


def cascade(combined: np.ndarray, fallback: np.ndarray, labels: np.ndarray, threshold: float,
            costs: Sequence[float], *, double_count: Sequence[int] = ()) -> CascadeResult:
  """The confidence-thresholded early exit, vectorised over samples.

  The softmax and the comparison run in ``combined``'s dtype (float64, or float32 with the
  threshold rounded to float32 as a float32 torch tensor compares with a Python float).

  Args:
    combined: ``[N, X, C]`` the ensemble logits of the X cascade exits, in order.
    fallback: ``[N, C]`` logits used when no exit fires.
    labels: ``[N]``.
    threshold: exit at the first k with ``max softmax(combined[:, k]) > threshold``.
    costs: ``[X + 1]`` cumulative cost (GMACs per video) of stopping at each exit, then of the
      fallback.
    double_count: exits (0-based) whose *correct* predictions are counted twice in the cost, the
      official counter's bug (:func:`official_double_count`); empty for the true cost.

  Returns:
    Accuracy, total and per-video cost, the fraction of samples per exit, and per-sample
    predictions and exits.
  """
  n, x, _ = combined.shape
  costs = np.asarray(costs, np.float64)
  if costs.shape != (x + 1,):
    raise ValueError(f"costs must have {x + 1} entries (the exits and the fallback), got "
                     f"{costs.shape}")
  bad = [k for k in double_count if not 0 <= k < x]
  if bad:
    raise ValueError(f"double_count exits must be cascade exits 0..{x - 1}, got {bad}")
  dtype = combined.dtype if combined.dtype == np.float32 else np.float64
  fires = _softmax_max(combined.astype(dtype)) > np.asarray(threshold, dtype)  # [N, X]
  first = np.where(fires.any(1), fires.argmax(1), x)
  preds_all = np.concatenate([combined.argmax(-1), fallback.argmax(-1)[:, None]], 1)
  preds = preds_all[np.arange(n), first]
  counts = np.bincount(first, minlength=x + 1)
  correct = preds == labels
  times = 1 + (np.isin(first, list(double_count)) & correct)
  total = float(np.sum(costs[first] * times))
  return CascadeResult(
      accuracy=float(np.mean(correct)),
      gmacs_per_video=total / n,
      exit_fraction=(counts / n).tolist(),
      predictions=preds,
      exits=first,
      gmacs_total=total,
  )


def cascade_costs(exit_costs: Sequence[Sequence[float]], segments: Sequence[int]) -> np.ndarray:
  """Cumulative cost of each cascade exit and of the fallback, per video.

  Args:
    exit_costs: per network in cascade order, its four cumulative per-segment costs
      ``[C1, C2, C3, C4]`` (``kd_jax.models.macs.exit_macs``).
    segments: test segments per network, same order.

  Returns:
    ``[4 * M]`` costs: exit k of network m costs the full earlier networks (``C4 * S``) plus
    ``Ck * S_m``; the last entry (the last network's exit 4) is the fallback's cost, every network
    run to its end.
  """
  out, done = [], 0.0
  for c, s in zip(exit_costs, segments):
    out += [done + ck * s for ck in c]
    done += c[3] * s
  return np.asarray(out, np.float64)


@dataclasses.dataclass
class Fitted:
  """WISE weights of one segment setting."""

  weights: np.ndarray  # [E, E] lower triangular
  fallback: np.ndarray  # [M] over the networks' final classifiers


def fit(train_logits: np.ndarray, train_labels: np.ndarray, final_index: Sequence[int], *,
        alpha: float, free_exits: int, fallback_alpha: float, lr: float, steps: int,
        init: float, fallback: np.ndarray | None = None) -> Fitted:
  """Per-exit weights over ``[N, E, C]`` and fallback weights over the final exits.

  ``fallback``: given weights over the finals (official preset or explicit) instead of fitted ones.
  """
  e = train_logits.shape[1]
  w = fit_weights(train_logits, train_labels, alpha=alphas(e, alpha=alpha, free_exits=free_exits),
                  lr=lr, steps=steps, init=init)
  if fallback is not None:
    fb = np.asarray(fallback, np.float64)
    if fb.shape != (len(final_index),):
      raise ValueError(f"fallback weights must be one per final classifier "
                       f"({len(final_index)}), got shape {fb.shape}")
  else:
    fb = fit_vector(train_logits[:, list(final_index)], train_labels, alpha=fallback_alpha, lr=lr,
                    steps=steps, init=init)
  return Fitted(w, fb)


def evaluate(test_logits: np.ndarray, labels: np.ndarray, fitted: Fitted,
             final_index: Sequence[int], costs: Sequence[float], thresholds: Sequence[float],
             variants: Sequence[str], fallback: str = "finals", *,
             double_count: Sequence[int] = (), softmax_dtype: str = "float64"
             ) -> dict[str, list[dict]]:
  """Accuracy and cost of every variant at every threshold.

  Variants: ``wise`` (learned weights, no division: the paper's curve), ``division`` (z~_k / k),
  ``no_scaling`` (all weights 1, fallback the plain sum of the finals), ``no_lateral`` (exit k uses
  z_k alone; fallback the last network's final classifier, i.e. a plain early-exit cascade).
  ``fallback``: ``finals`` (``fitted.fallback`` over the final classifiers) or ``last_exit`` (the
  ensemble of the last exit, ``w^(E)``). ``double_count`` and ``softmax_dtype`` ('float64' or
  'float32'): see :func:`cascade` and :func:`combine`.
  """
  if softmax_dtype not in SOFTMAX_DTYPES:
    raise ValueError(f"softmax_dtype must be one of {sorted(SOFTMAX_DTYPES)}, got "
                     f"{softmax_dtype!r}")
  dtype = SOFTMAX_DTYPES[softmax_dtype]
  n, e, _ = test_logits.shape
  finals = test_logits[:, list(final_index)].astype(dtype)
  out = {}
  for variant in variants:
    if variant in ("wise", "division"):
      comb = combine(test_logits, fitted.weights, divide=variant == "division", dtype=dtype)
      fb = (comb[:, -1] if fallback == "last_exit" else
            combine(finals, fitted.fallback[None, :], dtype=dtype)[:, 0])
    elif variant == "no_scaling":
      comb = combine(test_logits, np.tril(np.ones((e, e))), dtype=dtype)
      fb = finals.sum(1)
    elif variant == "no_lateral":
      comb = test_logits.astype(dtype)
      fb = comb[:, -1]
    else:
      raise ValueError(f"unknown WISE variant {variant!r}; choose from {VARIANTS}")
    rows = []
    for t in thresholds:
      r = cascade(comb[:, :-1], fb, labels, float(t), costs, double_count=double_count)
      rows.append({"threshold": float(t), "accuracy": r.accuracy,
                   "gmacs_per_video": r.gmacs_per_video, "gmacs_total": r.gmacs_total,
                   "exit_fraction": r.exit_fraction})
    out[variant] = rows
  return out

"""Multiply-accumulate (MAC) counts of kd_jax models, for WISE's cost model and reports.

`count_macs` traces the model's inference forward pass on abstract shapes (`jax.make_jaxpr`, no
compilation, no arithmetic) and adds up the MACs of every convolution and matrix product of the
input with a learned or input-dependent operand that contributes to the requested output:
`conv_general_dilated` costs output elements x kernel window x input channels per group,
`dot_general` output elements x contracted size. Elementwise work (BatchNorm, ReLU, residual adds)
and pooling are not counted, which is the convention of the usual MAC counters' conv/linear part
(thop, ptflops) and of published GMAC figures: ResNet-18 1.82 GMACs, ResNet-50 4.09 GMACs at
224x224. Pooling written as a product with a constant matrix (the IC heads' exact PyTorch
adaptive average pool, `ic_head.adaptive_avg_pool`, two einsums with fixed averaging matrices) is
pooling too: a product whose operand is a constant of the traced program (it depends on neither
the input nor the parameters) is a fixed linear map and is not counted. Counted as einsums, the
adaptive pools of PKD's three IC heads would add 1,462,272 MACs on ResNet-18 and 2,809,856 on
ResNet-50 at 224x224 (< 0.1 % of any exit). Asking for a tap instead of the logits counts only
the computation that tap depends on (dead-code elimination on the traced program), which is what
an early exit costs.

Which convention PKD's hard-coded per-exit GMACs follow (pkd_wise.md section 5.5): ptflops's full
count, not this one. The official repository counts with ptflops (`TEAM_NET_Backbone/MACs/main.py`
calls `get_model_complexity_info`), which adds to the conv/linear MACs one operation per element
for BatchNorm (two, affine), ReLU and every pooling layer (its input elements, adaptive pools
included) and the linear biases. That full count of the 2-channel ResNet-18 with a 7x7 IC2
(1.0902 / 1.9655 / 2.4935 / 2.9049 G, units of 1e9) rounds to the table's "R" row 1.09 / 1.97 /
2.49 / 2.90 where the conv/linear MACs alone (1.084 / 1.958 / 2.485 / 2.896) do not
(`tests/test_macs.py`). So the paper's table counts the adaptive pools, as ptflops does (input
elements: 0.32 M on ResNet-18's three ICs, not the einsums' 1.46 M), together with BatchNorm and
ReLU; those extras are 0.3-1.3 % of an exit (up to 0.035 G on ResNet-50) and are not
multiply-accumulates, so they are left out here.

`exit_macs` builds PKD's cumulative per-exit table (pkd_wise.md section 5.5): exit k (k <= 3) costs
the backbone up to `layer{k}` plus IC heads 1..k; exit 4 (the backbone's own fc) costs the whole
backbone plus all three IC heads, because a sample reaching exit 4 has run every IC on the way.
"""

from collections.abc import Sequence
import math
from typing import Any

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp

from kd_jax import models


def _shape_macs(eqn: Any) -> int:
  name = eqn.primitive.name
  if name == "conv_general_dilated":
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    window = math.prod(rhs[d] for d in rhs_spec[2:])
    return math.prod(out) * window * rhs[rhs_spec[1]]
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
  return 0


def _sub_jaxprs(eqn: Any) -> list[tuple[Any, int]]:
  """Nested programs of an equation with how often they run (scan length; 1 otherwise)."""
  times = int(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1
  subs = []
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax_core.ClosedJaxpr):
        subs.append((v.jaxpr, times))
      elif isinstance(v, jax_core.Jaxpr):
        subs.append((v, times))
  if eqn.primitive.name == "cond":  # one branch runs: count the most expensive
    costs = [_jaxpr_macs(j) for j, _ in subs]
    return [(subs[costs.index(max(costs))][0], 1)] if subs else []
  return subs


def _varying(jaxpr: Any, varying_inputs: Sequence[bool] | None) -> set[Any]:
  """Variables that depend on the program's inputs; constvars and literals never do."""
  flags = [True] * len(jaxpr.invars) if varying_inputs is None else list(varying_inputs)
  varying = {v for v, f in zip(jaxpr.invars, flags) if f}
  for eqn in jaxpr.eqns:
    if any(isinstance(v, jax_core.Var) and v in varying for v in eqn.invars):
      varying.update(eqn.outvars)
  return varying


def _sub_inputs(eqn: Any, sub: Any, varying: set[Any]) -> list[bool] | None:
  """Which inputs of a nested program vary, where its inputs are the equation's (jit, cond)."""
  args = eqn.invars[1:] if eqn.primitive.name == "cond" else eqn.invars
  if eqn.primitive.name in ("scan", "while") or len(args) != len(sub.invars):
    return None  # loop carries may start constant and vary later: treat everything as varying
  return [isinstance(v, jax_core.Var) and v in varying for v in args]


def _jaxpr_macs(jaxpr: Any, live_outputs: Sequence[bool] | None = None,
                varying_inputs: Sequence[bool] | None = None) -> int:
  """MACs of the equations the (selected) outputs depend on.

  A conv or matrix product with an operand that does not vary with the inputs (a constant of the
  traced program, such as an adaptive pool's averaging matrix) is a fixed map, not counted.
  """
  outs = jaxpr.outvars if live_outputs is None else [
      v for v, keep in zip(jaxpr.outvars, live_outputs) if keep]
  live = {v for v in outs if isinstance(v, jax_core.Var)}
  varying = _varying(jaxpr, varying_inputs)
  total = 0
  for eqn in reversed(jaxpr.eqns):
    if not any(v in live for v in eqn.outvars):
      continue
    live.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
    if all(isinstance(v, jax_core.Var) and v in varying for v in eqn.invars[:2]):
      total += _shape_macs(eqn)
    total += sum(t * _jaxpr_macs(j, varying_inputs=_sub_inputs(eqn, j, varying))
                 for j, t in _sub_jaxprs(eqn))
  return total


def module_macs(model: Any, input_shape: Sequence[int], *, tap: str | None = None) -> int:
  """MACs of `model.apply(variables, x, train=False)` on an input of `input_shape` (with batch).

  Args:
    model: a kd_jax linen module returning `(logits, features)`.
    input_shape: the full input shape, e.g. `(1, 224, 224, 3)` for one frame.
    tap: count only what `features[tap]` needs (an early exit) instead of the logits.
  """
  return module_macs_per_output(model, input_shape, [tap])[0]


def module_macs_per_output(model: Any, input_shape: Sequence[int],
                           taps: Sequence[str | None]) -> list[int]:
  """Like `module_macs` for several outputs (None: the logits) from a single trace."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)

  def forward(v, x):
    logits, features = model.apply(v, x, train=False)
    missing = [t for t in taps if t is not None and t not in features]
    if missing:
      raise ValueError(f"no tap {missing[0]!r}; the model has {sorted(features)}")
    return [logits if t is None else features[t] for t in taps]

  jaxpr = jax.make_jaxpr(forward)(variables, x).jaxpr
  n = len(taps)
  return [_jaxpr_macs(jaxpr, [i == j for j in range(n)]) for i in range(n)]


def count_macs(model_name: str, input_shape: Sequence[int], *, tap: str | None = None,
               **kwargs: Any) -> int:
  """MACs of one inference pass of registered model `model_name` built with `kwargs`.

  Example: `count_macs("resnet50", (1, 224, 224, 3))` -> 4_089_184_256 (1000-way fc included).
  Convolutions and matrix products only (see the module docstring); `tap` restricts the count to
  what one feature tap needs.
  """
  return module_macs(models.get(model_name, **kwargs), input_shape, tap=tap)


def exit_macs(
    backbone: str,
    input_shape: Sequence[int] = (1, 224, 224, 3),
    *,
    num_classes: int = 101,
    ic_configs: Sequence[tuple[int, int]] | None = None,
    **backbone_kwargs: Any,
) -> list[int]:
  """Cumulative MACs up to each of PKD's four exits (IC1, IC2, IC3, the backbone's fc).

  Args:
    backbone: "resnet18" or "resnet50".
    input_shape: one segment's input, batch included (per-segment costs use batch 1).
    num_classes: classes of every exit.
    ic_configs: (kernel_size, channels) of IC1..IC3; default PKD's table (`ic_head.IC_CONFIGS`).
    **backbone_kwargs: e.g. `in_channels=2, input_norm=True` for the motion-vector network.

  Returns:
    `[C1, C2, C3, C4]`: Ck = backbone up to `layer{k}` + ICs 1..k; C4 = backbone + ICs 1..3.
  """
  from kd_jax.models import ic_head  # pylint: disable=g-import-not-at-top
  configs = tuple(ic_configs) if ic_configs is not None else ic_head.IC_CONFIGS[backbone]
  model = models.get(backbone, num_classes=num_classes, **backbone_kwargs)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  _, taps = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  heads = [
      module_macs(ic_head.ICHead(num_classes, c, k), taps[t].shape)
      for (k, c), t in zip(configs, ic_head.IC_TAPS)
  ]
  trunk = module_macs_per_output(model, input_shape, list(ic_head.IC_TAPS) + [None])
  return [trunk[k] + sum(heads[:min(k, 2) + 1]) for k in range(4)]

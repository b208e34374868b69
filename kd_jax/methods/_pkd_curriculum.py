"""PKD's curriculum of IC teachers: the schedules, the epochs where the teacher changes and the
teacher phase of an epoch or a train step.

Part of the ``pkd`` method (:mod:`kd_jax.methods.pkd`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from kd_jax.errors import UserError

# Teacher of IC1..IC3 per curriculum phase; 'own' is the student network's own final classifier.
SCHEDULES = {
    "progressive": ("mv", "residual", "own"),  # the official code (default, spec 4.2)
    "mv_r_i": ("mv", "residual", "iframe"),  # the abstract's literal order (and TEAM-Net's)
    "iframe_only": ("iframe",),  # KD-iframe ablation
    "anti_curriculum": ("own", "residual", "mv"),  # anti-curriculum ablation
}


def boundary_epochs(num_epochs: int, boundaries: Sequence[float]) -> list[int]:
  """Epochs where the teacher changes: the official 50/300 and 100/300 scaled to the budget.

  Rounded half up (Python's ``round`` would send 0.5 to 0 and drop a phase on tiny budgets).
  """
  return [int(math.floor(f * num_epochs + 0.5)) for f in boundaries]


def teacher_phase(epoch: int, num_epochs: int, boundaries: Sequence[float]) -> int:
  """Index of the curriculum phase (into the schedule) at a 0-based epoch."""
  return int(sum(epoch >= b for b in boundary_epochs(num_epochs, boundaries)))


def teacher_phase_at(step: jax.Array, steps_per_epoch: int, num_epochs: int,
                     boundaries: Sequence[float]) -> jax.Array:
  """:func:`teacher_phase` of the epoch of a 0-based train ``step``, traceable: the IC loss gets
  the engine's step and picks its teacher from it."""
  epoch = step // steps_per_epoch
  return sum((epoch >= b).astype(jnp.int32) for b in boundary_epochs(num_epochs, boundaries)
             ) + jnp.zeros((), jnp.int32)


def curriculum(schedule: str, network: str, num_epochs: int,
               boundaries: Sequence[float]) -> list[str]:
  """The teacher network of ``network``'s ICs at every epoch (``own`` resolved)."""
  phases = resolve_schedule(schedule, network)
  return [phases[min(teacher_phase(e, num_epochs, boundaries), len(phases) - 1)]
          for e in range(num_epochs)]


def resolve_schedule(schedule: str, network: str) -> tuple[str, ...]:
  """The schedule's teachers for one network's ICs, ``own`` replaced by the network."""
  if schedule not in SCHEDULES:
    raise UserError(f"unknown ic.teacher_schedule {schedule!r}; choose one of "
                    f"{', '.join(SCHEDULES)}")
  return tuple(network if t == "own" else t for t in SCHEDULES[schedule])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  return max(1, math.ceil(num_examples / batch_size))

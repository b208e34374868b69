"""The training engine: mesh and shardings, compiled steps, checkpoints, metrics, stages.

A method builds :class:`Stage` objects from its losses and models and hands them to a
:class:`Runner`, which trains, evaluates, checkpoints, resumes and reports.
"""

from kd_jax.train.arrays import eval_batches
from kd_jax.train.arrays import train_batches
from kd_jax.train.config import config_module
from kd_jax.train.config import engine_config
from kd_jax.train.config import parse_arg
from kd_jax.train.loop import NonFiniteError
from kd_jax.errors import Preempted
from kd_jax.train.loop import Runner
from kd_jax.train.loop import SELECTIONS
from kd_jax.train.loop import Selected
from kd_jax.train.loop import Stage
from kd_jax.train.loop import StageResult
from kd_jax.train.optim import optimizer_config
from kd_jax.train.steps import Switch
from kd_jax.train.steps import TrainState

__all__ = [
    "NonFiniteError", "Preempted", "Runner", "SELECTIONS", "Selected", "Stage", "StageResult", "Switch", "TrainState",
    "config_module", "engine_config", "eval_batches", "optimizer_config", "parse_arg",
    "train_batches",
]

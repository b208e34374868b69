"""Several runs of one experiment (kd_jax.methods._runs): the plan, the sub-workdirs and the
summary, against hand-computed values."""

from __future__ import annotations

import math

from etils import epath
import ml_collections
import pytest

from kd_jax.errors import UserError
from kd_jax.methods import _runs


def _config(name="ucf101", seeds=(), splits=()):
  return ml_collections.ConfigDict(dict(method="x", seed=7, seeds=seeds, splits=splits,
                                        data=dict(name=name, config="split1")))


def test_plan_and_sub_workdirs():
  assert _runs.plan(_config()) == [(None, 7)]
  runs = _runs.plan(_config(seeds=(1, 2), splits=(1, 3)))
  assert runs == [(1, 1), (1, 2), (3, 1), (3, 2)]
  wd = epath.Path("/w")
  assert _runs.sub_workdir(wd, runs, 3, 2) == epath.Path("/w/split3/seed2")
  seeds_only = _runs.plan(_config(seeds=(0, 1, 2)))
  assert _runs.sub_workdir(wd, seeds_only, None, 1) == epath.Path("/w/seed1")
  splits_only = _runs.plan(_config(splits=(2, 3)))
  assert _runs.sub_workdir(wd, splits_only, 2, 7) == epath.Path("/w/split2")
  sub = _runs.run_config(_config(seeds=(0, 1), splits=(1, 2)), 2, 1)
  assert (sub.seed, sub.data.config, tuple(sub.seeds), tuple(sub.splits)) == (1, "split2", (), ())


@pytest.mark.parametrize("kwargs, needle", [
    (dict(name="kinetics400", splits=(1,)), "config.splits applies to ucf101 and hmdb51"),
    (dict(splits=(4,)), "official splits 1, 2 and 3"),
    (dict(seeds=(1, 1)), "must not repeat"),
])
def test_bad_plans_are_one_clear_error(kwargs, needle):
  with pytest.raises(UserError, match=needle):
    _runs.plan(_config(**kwargs))


def test_summary_is_mean_and_sample_std():
  out = _runs.summarize([{"a": 0.5, "b": 0.1}, {"a": 0.7}, {"a": 0.9, "b": None}])
  assert out["a"]["mean"] == pytest.approx(0.7)
  assert out["a"]["std"] == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
  assert out["a"]["values"] == [0.5, 0.7, 0.9] and out["a"]["n"] == 3
  assert out["b"] == {"mean": 0.1, "std": 0.0, "n": 1, "values": [0.1]}


def test_effect_against_two_standard_errors():
  # Differences 0.10, 0.12, 0.08: mean 0.10, std 0.02, stderr 0.02 / sqrt(3) = 0.01155.
  runs = [{"kd": 0.60, "ce": 0.50}, {"kd": 0.62, "ce": 0.50}, {"kd": 0.58, "ce": 0.50}]
  e = _runs.effect(runs, "kd", "ce")
  assert e["mean"] == pytest.approx(0.10) and e["std"] == pytest.approx(0.02)
  assert e["stderr"] == pytest.approx(0.02 / math.sqrt(3)) and e["clear"] is True
  assert "larger than the spread" in _runs.effect_sentence(e)
  # Differences +0.05, -0.04, +0.02: mean 0.01, std 0.0458, 2 stderr = 0.053: not clear.
  noisy = [{"kd": 0.55, "ce": 0.50}, {"kd": 0.46, "ce": 0.50}, {"kd": 0.52, "ce": 0.50}]
  e = _runs.effect(noisy, "kd", "ce")
  assert e["mean"] == pytest.approx(0.01) and e["clear"] is False
  assert "not distinguishable" in _runs.effect_sentence(e)
  one = _runs.effect(runs[:1], "kd", "ce")
  assert one["clear"] is None and "one run cannot tell" in _runs.effect_sentence(one)
  assert _runs.effect([{"kd": 0.5}], "kd", "ce") is None

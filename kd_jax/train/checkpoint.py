"""Checkpoints of a stage: train state, data-iterator state and metadata, saved together by orbax;
and the weights a run exports (:func:`save_variables`, :func:`load_variables`).

All orbax use of the engine and the methods lives here (jax_stack.md section 6), so a later move
to orbax's v1 API stays local (``kd_jax.models.convert`` keeps its own: models do not import the
engine). Stage saves are asynchronous; a checkpoint becomes visible only once complete, so a
process killed mid-save resumes from the previous one. The metadata records the structure of the
state, and a checkpoint whose structure differs from what the config builds is refused, never
reinterpreted.
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from kd_jax.errors import UserError
from kd_jax.train import optim


def structure(tree: Any) -> dict[str, str]:
  """``{path: 'dtype[shape]'}`` of every leaf: what a checkpoint must match to be restored."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[optim.path_str(path)] = f"{jax.numpy.dtype(leaf.dtype).name}{list(leaf.shape)}"
  return out


def _diff(saved: dict[str, str], wanted: dict[str, str], limit: int = 3) -> str:
  def order(keys):  # Parameters first: they say most about what changed.
    return sorted(keys, key=lambda k: (not k.startswith("params/"), k))

  missing = order(set(wanted) - set(saved))
  extra = order(set(saved) - set(wanted))
  changed = order(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  parts = []
  if missing:
    parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:limit])})")
  if extra:
    parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:limit])})")
  if changed:
    parts.append("changed: " + ", ".join(f"{k} {saved[k]} -> {wanted[k]}" for k in changed[:limit]))
  return "; ".join(parts)


def _check_structure(meta: dict[str, Any], abstract: Any, directory: epath.Path, step: int) -> None:
  saved, wanted = meta.get("structure", {}), structure(abstract)
  if saved != wanted:
    raise UserError(
        f"the checkpoint {directory / str(step)} does not match this config's model or "
        f"optimizer ({_diff(saved, wanted)}); use a new --workdir, or delete {directory} to start "
        "this stage over")


class Checkpointer:
  """One orbax ``CheckpointManager`` for one stage's directory."""

  def __init__(self, directory: str | epath.Path, *, max_to_keep: int, save_every: int):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=max(1, save_every), create=True,
        enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iter: Any, meta: dict[str, Any], *,
           force: bool = False) -> bool:
    """Saves if the interval (or ``force``) says so; returns whether a save started."""
    meta = dict(meta, structure=structure(state))
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self._manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, abstract_state: Any, data_iter: Any) -> tuple[Any, dict[str, Any]]:
    """The state (with the shardings of ``abstract_state``) and metadata saved at ``step``.

    ``data_iter`` is restored in place. Raises ``UserError`` if the saved state does not have the
    structure of ``abstract_state``.
    """
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    _check_structure(meta, abstract_state, self.directory, step)
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"], meta

  def delete_all(self) -> None:
    """Removes every checkpoint of the stage (a finished stage keeps its weights elsewhere)."""
    self._manager.wait_until_finished()
    for step in self._manager.all_steps():
      self._manager.delete(step)

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class Kept:
  """The weights (``params`` and ``model_state``, no optimiser state) of a stage at its best
  evaluation by one metric: one orbax step per directory, saved synchronously, so that a stage's
  regular checkpoint at a step is never complete before the best weights it implies are.
  """

  def __init__(self, directory: str | epath.Path):
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("weights", "meta"))

  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, weights: Any, meta: dict[str, Any]) -> None:
    if step in self._manager.all_steps():  # saved before an interruption: the same weights
      return
    meta = dict(meta, structure=structure(weights))
    self._manager.save(step, args=ocp.args.Composite(
        weights=ocp.args.StandardSave(weights), meta=ocp.args.JsonSave(meta)), force=True)

  def drop_after(self, step: int) -> None:
    """Forgets weights kept after ``step``: a resume from ``step`` evaluates those steps again."""
    for s in self._manager.all_steps():
      if s > step:
        self._manager.delete(s)

  def meta(self, step: int) -> dict[str, Any]:
    return dict(self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def restore(self, step: int, abstract_weights: Any) -> Any:
    if step not in self._manager.all_steps():
      raise UserError(
          f"{self.directory} has no weights of step {step}, the best evaluation in this stage's "
          "history (was the stage run with selection 'last', or with another config?); rerun with "
          "a new --workdir, or delete this stage's checkpoints to train it again")
    _check_structure(self.meta(step), abstract_weights, self.directory, step)
    return self._manager.restore(step, args=ocp.args.Composite(
        weights=ocp.args.StandardRestore(abstract_weights)))["weights"]

  def close(self) -> None:
    self._manager.close()


# ----------------------------------------------------------------------------- exported weights


def save_variables(path: str | os.PathLike[str], variables: Any, meta: dict[str, Any]) -> None:
  """Writes ``variables`` and the JSON ``meta`` as one orbax checkpoint at ``path`` (replaced).

  For weights a run hands out (GenKD's ``student.ckpt``), read back by :func:`load_variables`.
  """
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(os.path.abspath(os.fspath(path)),
               ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                  meta=ocp.args.JsonSave(dict(meta))), force=True)


def load_variables(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(variables, meta)`` of a checkpoint written by :func:`save_variables`."""
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    meta = ckptr.restore(path, ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    variables = ckptr.restore(
        path, ocp.args.Composite(variables=ocp.args.StandardRestore())).variables
  return dict(variables), dict(meta)

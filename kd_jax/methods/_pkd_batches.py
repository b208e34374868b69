"""The training batches of PKD's stages: a checkpointable iterator built on first use, so that
restoring a finished stage decodes nothing.

Part of the ``pkd`` method (:mod:`kd_jax.methods.pkd`, whose ``Data`` makes the inner iterators).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np


class Batches:
  """A checkpointable batch iterator built on first use, so that restoring a finished stage
  decodes nothing."""

  def __init__(self, factory: Callable[[], Any]):
    self._factory = factory
    self._it, self._pending = None, None

  def _inner(self):
    if self._it is None:
      self._it = self._factory()
      if self._pending is not None:
        self._it.set_state(self._pending)
    return self._it

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._inner())

  def get_state(self) -> bytes:
    # grain's checkpoint handler stores bytes; the inner state is bytes or a JSON-able
    # dict (grain's iterators).
    inner = self._pending if self._it is None else self._inner().get_state()
    enc = ({"bytes": inner.decode()} if isinstance(inner, bytes) else {"json": inner})
    return json.dumps({"inner": enc}).encode()

  def set_state(self, state: bytes) -> None:
    enc = json.loads(state)["inner"]
    inner = enc["bytes"].encode() if "bytes" in enc else enc["json"]
    if self._it is None:
      self._pending = inner
    else:
      self._it.set_state(inner)

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore."""

"""What a run shows: metrics.jsonl, TensorBoard events (tensorboardX, no TensorFlow), a progress bar.

Only process 0 writes; the others get a writer that does nothing, so callers need no checks.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import tqdm


class MetricWriter:
  """Appends ``{"stage", "step", ...}`` lines to ``workdir/metrics.jsonl`` and TensorBoard events."""

  def __init__(self, workdir: str | epath.Path, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top

      self._tb = tensorboardX.SummaryWriter(logdir=str(epath.Path(workdir) / "tb"))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("TensorBoard events disabled (%s); metrics.jsonl is still written.", e)

  def write(self, stage: str, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    line = json.dumps({"stage": stage, "step": int(step), **clean}, sort_keys=True)
    with self.path.open("a") as f:
      f.write(line + "\n")
    if self._tb is not None:
      for key, value in clean.items():
        if math.isfinite(value):
          self._tb.add_scalar(f"{stage}/{key}", value, int(step))

  def drop_after(self, stage: str, step: int) -> None:
    """Forgets the lines of ``stage`` past ``step``: a resumed run logs those steps again."""
    if not self.enabled or not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:
        continue  # A line cut short by a kill.
      # The stage's evaluations ("<stage>/eval") past the checkpoint are logged again too.
      own = entry.get("stage") == stage or str(entry.get("stage", "")).startswith(stage + "/")
      if not own or entry.get("step", 0) <= step:
        kept.append(line)
    self.path.write_text("".join(k + "\n" for k in kept))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class Progress:
  """A console progress bar for one stage: loss, steps/s, clips/s and the ETA."""

  def __init__(self, stage: str, start: int, total: int, clips_per_step: int):
    self._bar = tqdm.tqdm(
        total=total, initial=start, desc=stage, unit="step", dynamic_ncols=True, file=sys.stderr,
        disable=jax.process_index() != 0, mininterval=1.0, smoothing=0.1)
    self._clips = clips_per_step
    self._last_step, self._last_time = start, time.monotonic()

  def update(self, step: int, loss: float | None = None) -> None:
    now = time.monotonic()
    self._bar.update(step - self._bar.n)
    if loss is not None and now > self._last_time:
      rate = (step - self._last_step) / (now - self._last_time)
      self._bar.set_postfix(loss=f"{loss:.4g}", clips_s=f"{rate * self._clips:.1f}", refresh=False)
      self._last_step, self._last_time = step, now

  def write(self, message: str) -> None:
    if not self._bar.disable:
      self._bar.write(message, file=sys.stderr)

  def close(self) -> None:
    self._bar.close()

"""A method's dataset as the engine takes it: training and evaluation streams from ``config.data``.

Every method opens its data with :func:`open_streams`: the dataset of ``config.data``
(:func:`kd_jax.data.sources.open_data_config`), one clip spec built from the shared fields
(``crop_size``, ``resize_size``, ``flip``) and the method's own (``clip_len``, ``num_segments``),
and the grain pipelines over it with the block's workers and threads::

  data = streams.open_streams(config.data, "rgb_clip", sized=False, clip_len=16)
  stage = train.Stage(..., train_data=lambda per_host: data.train(per_host, seed=0),
                      eval_data=data.eval)

A stage that needs another clip spec than the default one passes it (PKD: several segment counts
and samplings from one dataset). Problems with the dataset end in a one-line :class:`UserError`.
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
from typing import Any

import numpy as np

from kd_jax.data import pipeline
from kd_jax.data import sources
from kd_jax.data.builders.common import DatasetError
from kd_jax.errors import UserError


@dataclasses.dataclass
class Streams:
  """The opened dataset of a method's ``config.data`` and its streams.

  Attributes:
    opened: the builder, the train and eval sources and the class names.
    spec: the default clip spec of :meth:`train` and :meth:`eval`.
    num_workers, read_threads: grain workers and threads per worker.
    cache_eval: decode the evaluation set once and keep it in memory (small eval sets).
    val: training videos held out from ``opened.train`` for model selection, or None.
  """

  opened: sources.Splits
  spec: pipeline.ClipSpec
  num_workers: int = 0
  read_threads: int = 1
  cache_eval: bool = False
  val: Any = None
  _cache: dict[Any, list[dict[str, np.ndarray]]] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    return len(self.opened.class_names)

  @property
  def description(self) -> str:
    return self.opened.description

  def train(self, per_host: int, *, seed: int, spec: pipeline.ClipSpec | None = None) -> Any:
    """Endless, shuffled, augmented per-host training batches; a checkpointable iterator."""
    return iter(pipeline.make_train(self.opened.train, spec or self.spec, batch_size=per_host,
                                    seed=seed, num_workers=self.num_workers,
                                    read_threads=self.read_threads))

  def eval(self, per_host: int, *, spec: pipeline.ClipSpec | None = None, split: str = "eval"
           ) -> Iterable[dict[str, np.ndarray]]:
    """Every video of the eval split (or, ``split='train'``, of the training split, e.g. for
    logits; ``'val'``, the held-out training videos) once, unaugmented, padded to whole batches
    (``mask``: 1.0 real, 0.0 padding)."""
    spec = spec or self.spec
    source = {"eval": self.opened.eval, "train": self.opened.train, "val": self.val}[split]
    if source is None:
      raise ValueError("no held-out videos: open the streams with holdout > 0")

    def make():
      ds = pipeline.make_eval(source, spec, batch_size=per_host, num_workers=self.num_workers,
                              read_threads=self.read_threads)
      return ({**b, "mask": np.asarray(b["mask"], np.float32)} for b in ds)

    if not self.cache_eval:
      return make()
    key = (per_host, spec, split)
    if key not in self._cache:
      self._cache[key] = list(make())
    return self._cache[key]


def open_streams(dcfg: Any, kind: pipeline.Kind, *, sized: bool | None = None,
                 holdout: float = 0.0, **spec_fields: Any) -> Streams:
  """Opens the dataset of ``config.data`` (``dcfg``) with a ``kind`` clip spec.

  Args:
    dcfg: a method's ``config.data`` (:func:`kd_jax.data.sources.data_config`).
    kind: ``compressed``, ``rgb_clip`` or ``rgb_segments``.
    sized: a ``synthetic_actions`` of the size in ``dcfg.synthetic``; None: when the config is
      ``custom``.
    holdout: hold this share of the training videos out of training, as :attr:`Streams.val`
      (:mod:`kd_jax.data.holdout`); 0 for none.
    **spec_fields: the method's own clip fields (``clip_len``, ``num_segments``, ...).

  Raises:
    UserError: the dataset is unknown, not prepared, or lacks a split; ``flip`` is invalid.
  """
  if sized is None:
    sized = dcfg.name == "synthetic_actions" and dcfg.config == "custom"
  loader = pipeline.loader_options(dcfg)  # iframe_color_jitter, train_order (UserError if bad)
  try:
    opened = sources.open_data_config(dcfg, sized=sized)
    flip = sources.parse_flip(dcfg.flip)
  except DatasetError as e:
    raise UserError(str(e)) from None
  spec = pipeline.make_spec(kind, crop_size=dcfg.crop_size, resize_size=dcfg.resize_size or None,
                            flip=flip, **loader, **spec_fields)
  val = None
  if holdout > 0:
    from kd_jax.data import holdout as holdout_lib  # pylint: disable=g-import-not-at-top
    train, val = holdout_lib.split_holdout(opened.train, holdout)
    opened = opened._replace(train=train)
  return Streams(opened, spec, num_workers=int(dcfg.num_workers),
                 read_threads=int(dcfg.get("read_threads", 1)),
                 cache_eval=bool(dcfg.get("cache_eval", False)), val=val)

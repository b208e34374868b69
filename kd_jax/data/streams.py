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

Training comes in two forms. By default an endless stream (:func:`pipeline.make_train`): batches
are cut from one shuffled sequence, so batch boundaries and epoch boundaries need not agree.
``train(..., whole_epochs=True)`` gives what a PyTorch ``DataLoader(shuffle=True,
drop_last=False)`` gives epoch after epoch: each epoch a fresh permutation of the training videos
(:class:`PaddedEpochs`), ``ceil(N / G)`` global batches of ``G``, the last one filled up with
repeated videos marked ``mask`` 0 (1 on real ones), so every batch has the same shape and a
step compiles once; losses and statistics that honour ``mask`` see exactly the partial batch.
"""

from __future__ import annotations

from collections.abc import Iterable
import dataclasses
import math
import sys
from typing import Any

import grain
import jax
import numpy as np

from kd_jax.data import pipeline
from kd_jax.data import sampling
from kd_jax.data import sources
from kd_jax.data.builders.common import DatasetError
from kd_jax.errors import UserError


def epoch_steps(num_examples: int, global_batch_size: int) -> int:
  """Global batches of one whole epoch, the last one partial: ``ceil(N / G)``."""
  if num_examples < 1 or global_batch_size < 1:
    raise ValueError(f"need num_examples >= 1 and global_batch_size >= 1, got {num_examples} and "
                     f"{global_batch_size}")
  return math.ceil(num_examples / global_batch_size)


class PaddedEpochs:
  """``(example index, real)`` at each position of a stream of whole epochs; a grain source.

  Epoch ``e`` is positions ``[e * L, (e + 1) * L)`` with ``L = ceil(N / G) * G``: first the
  permutation ``numpy.random.default_rng([seed, e]).permutation(N)`` (every example once, real),
  then ``L - N`` padding positions that repeat examples of the same permutation from its start
  (not real). A position's value depends on ``(seed, position)`` only, so a restored iterator
  continues bit-identically and process slices agree with the global stream.

  Args:
    num_examples: N.
    global_batch_size: G, the examples of one global batch.
    seed: fixes the orders.
  """

  def __init__(self, num_examples: int, global_batch_size: int, seed: int):
    self.num_examples = int(num_examples)
    self.epoch_size = epoch_steps(num_examples, global_batch_size) * int(global_batch_size)
    self._order = sampling.TrainOrder(self.num_examples, seed, order="permutation")

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, position: int) -> tuple[int, bool]:
    epoch, pos = divmod(int(position), self.epoch_size)
    order = self._order.epoch(epoch)
    if pos < self.num_examples:
      return int(order[pos]), True
    return int(order[(pos - self.num_examples) % self.num_examples]), False


class _LookupPadded(grain.transforms.Map):
  """``(index, real)`` -> ``((index, record), real)``."""

  def __init__(self, source):
    self.source = source

  def map(self, element):
    index, real = element
    return (int(index), self.source[int(index)]), real


class _DecodePadded(grain.transforms.RandomMap):
  """Decodes and augments as the training pipeline does, and adds ``mask`` (float32)."""

  def __init__(self, decoder: pipeline.DecodeVideo):
    self.decoder = decoder

  def random_map(self, element, rng: np.random.Generator):
    item, real = element
    out = self.decoder.random_map(item, rng)
    out["mask"] = np.float32(real)
    return out


def make_train_epochs(source, spec: pipeline.ClipSpec, *, batch_size: int, seed: int,
                      num_workers: int = 0, read_threads: int = 1, prefetch: int = 2,
                      process_index: int | None = None, process_count: int | None = None,
                      decoder: grain.transforms.RandomMap | None = None) -> grain.IterDataset:
  """Training batches in whole epochs (:class:`PaddedEpochs`), endless; a grain IterDataset.

  Like :func:`pipeline.make_train` (augmentation seeded by the global position, then process
  ``p`` of ``P`` takes positions ``p, p + P, ...``, batched per host), except for the order:
  every epoch covers each video exactly once in ``ceil(N / (batch_size * P))`` global batches,
  the last padded; batches carry ``mask`` (float32, 1 real, 0 padding). ``decoder``: as for
  :func:`pipeline.make_train`.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  pipeline.check_source(source, batch_size)
  if decoder is None:
    decoder = pipeline.DecodeVideo(spec, train=True, flip=pipeline.resolve_flip(spec, source))
  ds = grain.MapDataset.source(PaddedEpochs(len(source), batch_size * count, seed)).seed(seed)
  ds = ds.map(_LookupPadded(source)).random_map(_DecodePadded(decoder))
  ds = ds[index::count].batch(batch_size, drop_remainder=True)
  return pipeline._finish(ds, num_workers, read_threads, prefetch)  # pylint: disable=protected-access


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

  def decoder(self, spec: Any, source: Any, *, train: bool) -> Any:
    """The element decoder of ``spec`` (None: the RGB / compressed :class:`pipeline.DecodeVideo`);
    a stream of another kind of record overrides it."""
    del spec, source, train
    return None

  @property
  def num_classes(self) -> int:
    return len(self.opened.class_names)

  @property
  def description(self) -> str:
    return self.opened.description

  def train(self, per_host: int, *, seed: int, spec: pipeline.ClipSpec | None = None,
            whole_epochs: bool = False) -> Any:
    """Endless, shuffled, augmented per-host training batches; a checkpointable iterator.

    ``whole_epochs``: epoch after epoch, each a fresh permutation in ``ceil(N / G)`` global
    batches of ``G = per_host * process_count``, the last one padded, and a ``mask`` (float32)
    in every batch (:func:`make_train_epochs`); otherwise one continuous stream without ``mask``
    (:func:`pipeline.make_train`).
    """
    fn = make_train_epochs if whole_epochs else pipeline.make_train
    spec = spec or self.spec
    return iter(fn(self.opened.train, spec, batch_size=per_host, seed=seed,
                   num_workers=self.num_workers, read_threads=self.read_threads,
                   decoder=self.decoder(spec, self.opened.train, train=True)))

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
                              read_threads=self.read_threads,
                              decoder=self.decoder(spec, source, train=False))
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
  # iframe_color_jitter, train_order, augment (UserError if bad or not for this kind)
  loader = pipeline.loader_options(dcfg, kind)
  try:
    opened = sources.open_data_config(dcfg, sized=sized)
    flip = sources.parse_flip(dcfg.flip)
  except DatasetError as e:
    raise UserError(str(e)) from None
  spec = pipeline.make_spec(kind, crop_size=dcfg.crop_size, resize_size=dcfg.resize_size or None,
                            flip=flip, **loader, **spec_fields)
  return make_streams(dcfg, opened, spec, holdout=holdout)


def make_streams(dcfg: Any, opened: sources.Splits, spec: Any, *, holdout: float = 0.0,
                 cls: type[Streams] = Streams) -> Streams:
  """``cls`` (a :class:`Streams`) over an opened dataset, as every ``open_*streams`` builds it.

  Args:
    dcfg: the method's ``config.data``: ``num_workers``, ``read_threads`` (default 1) and
      ``cache_eval`` (default False).
    opened: the opened dataset.
    spec: the default clip spec.
    holdout: hold this share of ``opened.train`` out of training, as :attr:`Streams.val`
      (:mod:`kd_jax.data.holdout`); 0 for none.
    cls: :class:`Streams` or a subclass (another kind of record, another decoder).

  Raises:
    ValueError: ``holdout >= 1``, or a training split of fewer than two videos to hold out from.
  """
  val = None
  if holdout > 0:
    from kd_jax.data import holdout as holdout_lib  # pylint: disable=g-import-not-at-top
    train, val = holdout_lib.split_holdout(opened.train, holdout)
    opened = opened._replace(train=train)
  return cls(opened, spec, num_workers=int(dcfg.num_workers),
             read_threads=int(dcfg.get("read_threads", 1)),
             cache_eval=bool(dcfg.get("cache_eval", False)), val=val)

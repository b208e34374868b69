"""I3D (Inception-v1 3-D) and Top-heavy I3D, the GenKD teacher and student (genkd.md 3.1).

A port of piergiaj/pytorch-i3d ``InceptionI3d`` (itself a port of DeepMind's kinetics-i3d) and of
GenKD's ``Top_heavy_i3d_backbone.py``, channels-last: clips are ``[B, T, H, W, C]``.

Builders (registered as ``"i3d"`` and ``"top_i3d"`` in :mod:`kd_jax.models`):

* :func:`i3d`: I3D. ``Conv3d_1a_7x7`` is 7x7x7 / stride 2, ``Conv3d_2c_3x3`` 3x3x3, every inception
  block has 3x3x3 convolutions and a 3x3x3 max-pool branch.
* :func:`top_i3d`: Top-heavy I3D (Xie et al. 2018): identical except that the lower layers are 2-D:
  ``Conv3d_1a_7x7`` is 1x7x7 (stride still (2, 2, 2), so T halves), ``Conv3d_2c_3x3`` 1x3x3, and
  ``Mixed_3b``, ``Mixed_3c``, ``Mixed_4b``, ``Mixed_4c`` use 1x3x3 convolutions and a 1x3x3 pool
  branch. ``Mixed_4d`` ... ``Mixed_5c`` and all stand-alone max-pools are unchanged.

Input channels: 3 for RGB clips, 2 for optical flow (x then y displacement; pytorch-i3d's
``flow_imagenet.pt`` and GenKD's flow Top-I3D, genkd.md 3.1 and 7.2). Flax sizes ``Conv3d_1a_7x7``
from the first clip it sees, so one module serves both; ``in_channels`` (None: any) pins the count,
which a converted flow checkpoint records so that clips of the other modality fail with a clear
error instead of a shape mismatch deep inside the stem.

Both return ``(logits, features)``:

* ``logits``: ``[B, T', num_classes]``, **per time step**, from the classifier head of pytorch-i3d:
  ``AvgPool3d([2, 7, 7], stride 1)`` (VALID) -> dropout(0.5) -> 1x1x1 conv with bias. For a
  ``[B, 64, 224, 224, 3]`` clip ``T' = 7``. How the time steps are combined is the caller's choice
  (GenKD sums per-step softmaxes, genkd.md 4.2).
* ``features``: every pytorch-i3d endpoint, ``Conv3d_1a_7x7`` ... ``Mixed_5c`` (max-pools included),
  each ``[B, T, H, W, C]``. The GenKD taps are ``Mixed_4f`` (``[B, 16, 14, 14, 832]`` for a
  64x224x224 clip) and ``Mixed_5c`` (``[B, 8, 7, 7, 1024]``).

The head can also be run on its own, e.g. on GenKD's foreground feature ``F * A``:
``model.apply(variables, f, train=..., method="classify")``; and the backbone alone with
``method="extract_features"``.

Parameter names (for :mod:`kd_jax.models.convert`): top-level submodules are named after the
pytorch-i3d endpoints and inside inception blocks after its branches, and every conv unit holds a
``conv3d`` Conv and a ``bn`` BatchNorm, so a PyTorch state-dict key maps mechanically::

  Conv3d_1a_7x7.conv3d.weight [O, I, t, h, w] -> params/Conv3d_1a_7x7/conv3d/kernel [t, h, w, I, O]
  Conv3d_1a_7x7.bn.weight / .bias             -> params/Conv3d_1a_7x7/bn/scale / bias
  Conv3d_1a_7x7.bn.running_mean / running_var -> batch_stats/Conv3d_1a_7x7/bn/mean / var
  (same for Conv3d_2b_1x1, Conv3d_2c_3x3)
  Mixed_3b.{b0,b1a,b1b,b2a,b2b,b3b}.conv3d/bn  -> params/Mixed_3b/{b0,...,b3b}/conv3d/... , /bn/...
  (Mixed_3b, 3c, 4b, 4c, 4d, 4e, 4f, 5b, 5c; the pool branch b3a has no parameters)
  logits.conv3d.weight / .bias                 -> params/logits/conv3d/kernel / bias

(``bn.num_batches_tracked`` has no counterpart.) In the GenKD checkpoints these keys carry the
prefix ``backbone._model.``.

BatchNorm is PyTorch ``BatchNorm3d(eps=1e-3, momentum=0.01)`` = Flax ``momentum=0.99,
epsilon=1e-3``, with PyTorch's exact running-variance update (:class:`kd_jax.models.layers.BatchNorm`). Padding is TF-"SAME" and max-pools are zero-padded, as in pytorch-i3d (see
:mod:`kd_jax.models.layers3d`).

Parameter counts (measured with ``jax.eval_shape``, whatever ``init_scheme``): the *backbone*
count is every entry of the ``params`` collection except ``logits``, i.e. conv kernels plus
BatchNorm scale and bias; BatchNorm running statistics (``batch_stats``) and the head are not
counted:

===========  =============  ==============================  ====================
model        backbone       of which BN scale + bias        head (101 classes)
===========  =============  ==============================  ====================
``i3d``      12,287,264     14,560                          103,525
``top_i3d``  10,429,088     14,560                          103,525
===========  =============  ==============================  ====================

(``batch_stats`` holds another 14,560 numbers.) With 2 input channels (flow) the stem kernel
loses one input plane: 7x7x7x64 = 21,952 weights fewer for ``i3d`` (12,265,312), 1x7x7x64 =
3,136 fewer for ``top_i3d`` (10,425,952).

Tiny setting for tests and the quickstart: ``tiny=True`` (= ``width=1/16, head_pool=None``): every
channel count divided by 16 (``Mixed_5c`` has 64 channels) and a head pool that covers the whole
``Mixed_5c`` map in H and W, so a 16x64x64 clip works.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers3d

Array = jax.Array

ENDPOINTS = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
)

# Branch widths of each inception block, in pytorch-i3d's order:
# (b0, b1a, b1b, b2a, b2b, b3b); the block outputs b0 + b1b + b2b + b3b channels.
MIXED_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# Blocks that Top-heavy I3D makes 2-D (genkd.md 3.1, Top_heavy_i3d_backbone.py L264-292).
TOP_HEAVY_2D_BLOCKS = frozenset({"Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c"})

# Stand-alone max-pools: (kernel, stride); the same in both models.
POOLS = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}

DEFAULT_HEAD_POOL = (2, 7, 7)

# What a channel count means, for error messages.
_MODALITY = {3: "RGB", 2: "optical-flow"}


@dataclasses.dataclass(frozen=True)
class _ConvSpec:
  features: int
  kernel: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)


def _stem(top_heavy: bool) -> dict[str, _ConvSpec]:
  return {
      "Conv3d_1a_7x7": _ConvSpec(64, (1, 7, 7) if top_heavy else (7, 7, 7), (2, 2, 2)),
      "Conv3d_2b_1x1": _ConvSpec(64, (1, 1, 1)),
      "Conv3d_2c_3x3": _ConvSpec(192, (1, 3, 3) if top_heavy else (3, 3, 3)),
  }


def scale_channels(channels: int, width: float) -> int:
  """Channel count of a layer under the width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


class InceptionBlock(nn.Module):
  """An I3D inception block (``InceptionModule`` / ``InceptionModule_2D`` of the PyTorch code).

  Four branches, concatenated on channels in this order: ``b0`` (1x1x1); ``b1a`` (1x1x1) -> ``b1b``
  (3x3x3); ``b2a`` (1x1x1) -> ``b2b`` (3x3x3); ``b3a`` (3x3x3 SAME max-pool, stride 1, no
  parameters) -> ``b3b`` (1x1x1). With ``temporal=False`` the 3x3x3 kernels and the pool are 1x3x3.

  Attributes:
    channels: (b0, b1a, b1b, b2a, b2b, b3b) output channels.
    temporal: 3-D (True) or the Top-heavy 2-D form (False).
    init_scheme: 'pytorch' or 'flax'.
    dtype: computation dtype.
    bn_momentum: Flax momentum of every BatchNorm's running statistics.
  """

  channels: Sequence[int]
  temporal: bool = True
  init_scheme: str = "pytorch"
  dtype: Any = None
  bn_momentum: float = layers3d.I3D_BN_MOMENTUM

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    c0, c1a, c1b, c2a, c2b, c3b = self.channels
    k3 = (3, 3, 3) if self.temporal else (1, 3, 3)

    def unit(features: int, kernel: Sequence[int], name: str) -> layers3d.Unit3D:
      return layers3d.Unit3D(
          features, kernel, init_scheme=self.init_scheme, dtype=self.dtype,
          bn_momentum=self.bn_momentum, name=name
      )

    b0 = unit(c0, (1, 1, 1), "b0")(x, train=train, mask=mask)
    b1 = unit(c1a, (1, 1, 1), "b1a")(x, train=train, mask=mask)
    b1 = unit(c1b, k3, "b1b")(b1, train=train, mask=mask)
    b2 = unit(c2a, (1, 1, 1), "b2a")(x, train=train, mask=mask)
    b2 = unit(c2b, k3, "b2b")(b2, train=train, mask=mask)
    b3 = layers3d.max_pool3d_same(x, k3, (1, 1, 1))
    b3 = unit(c3b, (1, 1, 1), "b3b")(b3, train=train, mask=mask)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionI3d(nn.Module):
  """I3D or Top-heavy I3D with the per-time-step classifier head; see the module docstring.

  Attributes:
    num_classes: classes of the 1x1x1 logits conv (GenKD: 101 for UCF-101, 51 for HMDB-51).
    in_channels: channels of the clips the model takes (3 RGB, 2 optical flow); None accepts any
      count (the stem is sized by the first clip, as in Flax generally).
    top_heavy: build Top-heavy I3D (2-D lower layers) instead of I3D.
    width: multiplier on every channel count (1.0 = the published model).
    dropout_rate: drop probability before the logits conv (pytorch-i3d passes its
      ``dropout_keep_prob=0.5`` to ``nn.Dropout`` as the *drop* probability; at 0.5 they agree).
    head_pool: (t, h, w) window of the head's VALID average pool, stride 1. ``None`` means
      ``(2, H, W)`` of the ``Mixed_5c`` map (equal to the default for 224x224 clips).
    init_scheme: 'pytorch' (PyTorch default init, as the from-scratch GenKD student) or 'flax'.
    dtype: computation dtype; parameters and BatchNorm statistics stay float32.
    bn_momentum: Flax momentum of the BatchNorm running statistics; the default is I3D's
      (PyTorch momentum 0.01). Short from-scratch runs need a faster one (the GenKD quickstart
      uses 0.9): at 0.99 the statistics of a few hundred steps still carry their initial values
      and evaluation collapses onto one class.
  """

  num_classes: int = 101
  in_channels: int | None = None
  top_heavy: bool = False
  width: float = 1.0
  dropout_rate: float = 0.5
  head_pool: Sequence[int] | None = DEFAULT_HEAD_POOL
  init_scheme: str = "pytorch"
  dtype: Any = None
  bn_momentum: float = layers3d.I3D_BN_MOMENTUM

  def setup(self):
    layers3d.check_init(self.init_scheme)
    if self.width <= 0:
      raise ValueError(f"width must be positive, got {self.width}")
    if self.in_channels is not None and (
        isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int)
        or self.in_channels < 1):
      raise ValueError(f"in_channels must be a positive int or None, got {self.in_channels!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
    # Endpoint modules are attributes named after the endpoints, which names their parameters.
    for name, spec in _stem(self.top_heavy).items():
      setattr(
          self,
          name,
          layers3d.Unit3D(
              scale_channels(spec.features, self.width),
              spec.kernel,
              spec.strides,
              init_scheme=self.init_scheme,
              dtype=self.dtype,
              bn_momentum=self.bn_momentum,
          ),
      )
    for name, channels in MIXED_CHANNELS.items():
      setattr(
          self,
          name,
          InceptionBlock(
              tuple(scale_channels(c, self.width) for c in channels),
              temporal=not (self.top_heavy and name in TOP_HEAVY_2D_BLOCKS),
              init_scheme=self.init_scheme,
              dtype=self.dtype,
              bn_momentum=self.bn_momentum,
          ),
      )
    self.dropout = nn.Dropout(self.dropout_rate)
    self.logits = layers3d.Unit3D(
        self.num_classes,
        (1, 1, 1),
        use_batch_norm=False,
        use_bias=True,
        activation=None,
        init_scheme=self.init_scheme,
        dtype=self.dtype,
    )

  def extract_features(self, x: Array, *, train: bool, mask: Array | None = None
                       ) -> dict[str, Array]:
    """All endpoints ``Conv3d_1a_7x7`` ... ``Mixed_5c`` of a ``[B, T, H, W, C]`` clip.

    ``mask`` (``[B]``, 1 real / 0 padding; None: all real): in training, every BatchNorm takes
    its statistics from the real clips only, so a batch padded to a fixed size gives the real
    clips the features (and the running statistics the update) of the unpadded batch.
    """
    if x.ndim != 5:
      raise ValueError(f"expected a clip [B, T, H, W, C], got shape {tuple(x.shape)}")
    if self.in_channels is not None and x.shape[-1] != self.in_channels:
      kind = _MODALITY.get(self.in_channels)
      raise ValueError(
          f"this I3D was built with in_channels={self.in_channels}"
          f"{f' ({kind} clips)' if kind else ''} but got {x.shape[-1]} channels (shape "
          f"{tuple(x.shape)}); feed {kind or f'{self.in_channels}-channel'} clips or build it "
          "with the in_channels of your clips")
    features = {}
    for name in ENDPOINTS:
      if name in POOLS:
        x = layers3d.max_pool3d_same(x, *POOLS[name])
      else:
        x = getattr(self, name)(x, train=train, mask=mask)
      features[name] = x
    return features

  def classify(self, mixed_5c: Array, *, train: bool) -> Array:
    """The head: VALID average pool, dropout, 1x1x1 conv; ``[B, T, H, W, C] -> [B, T', K]``.

    Dropout draws from the ``'dropout'`` RNG stream when ``train`` is true.
    """
    _, t, h, w, _ = mixed_5c.shape
    window = (2, h, w) if self.head_pool is None else tuple(self.head_pool)
    pooled = tuple(n - k + 1 for n, k in zip((t, h, w), window))
    if min(pooled) < 1 or pooled[1:] != (1, 1):
      raise ValueError(
          f"the head's average pool {window} does not reduce the Mixed_5c map (T, H, W) = "
          f"{(t, h, w)} to T' >= 1 and 1x1 in space; use 224x224 clips of >= 16 frames, or "
          "head_pool=None to pool the whole map in H and W"
      )
    x = nn.avg_pool(mixed_5c, window, strides=(1, 1, 1), padding="VALID")
    x = self.dropout(x, deterministic=not train)
    x = self.logits(x, train=train)
    return x[:, :, 0, 0, :]

  def __call__(self, x: Array, *, train: bool, mask: Array | None = None
               ) -> tuple[Array, dict[str, Array]]:
    features = self.extract_features(x, train=train, mask=mask)
    return self.classify(features["Mixed_5c"], train=train), features


def _build(top_heavy: bool, tiny: bool, kwargs: dict[str, Any]) -> InceptionI3d:
  if tiny:
    kwargs = {"width": 1 / 16, "head_pool": None, **kwargs}
  return InceptionI3d(top_heavy=top_heavy, **kwargs)


def i3d(*, tiny: bool = False, **kwargs: Any) -> InceptionI3d:
  """I3D (the GenKD teacher).

  Args:
    tiny: shorthand for ``width=1/16, head_pool=None`` (tests, quickstart); explicit keyword
      arguments win.
    **kwargs: :class:`InceptionI3d` attributes: ``num_classes`` (101), ``in_channels`` (None:
      any; 2 for optical flow), ``width`` (1.0), ``dropout_rate`` (0.5), ``head_pool``
      ((2, 7, 7)), ``init_scheme`` ('pytorch'), ``dtype``, ``bn_momentum`` (0.99).

  Returns:
    An unbound linen module; ``apply(variables, clip, train=...)`` gives ``(logits, features)``.
  """
  return _build(False, tiny, kwargs)


def top_i3d(*, tiny: bool = False, **kwargs: Any) -> InceptionI3d:
  """Top-heavy I3D (the GenKD student); arguments as for :func:`i3d`."""
  return _build(True, tiny, kwargs)

"""TSM-MobileNetV2 (the spectral-KD student), following TSM's `archs/mobilenet_v2.py`.

MobileNetV2 (Sandler et al. 2018): a 3x3/2 stem of 32 channels, inverted residual blocks
(t, c, n, s) = (1,16,1,1), (6,24,2,2), (6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1),
a 1x1 conv to 1280 channels, global average pool, linear classifier; ReLU6; BatchNorm with
PyTorch's momentum 0.1 / eps 1e-5. Depthwise convs are Flax kernels `(3, 3, 1, C)` with
`feature_group_count=C`.

Temporal shift (TSM): in every block that has both an expansion conv and a residual connection,
the input of the expansion 1x1 conv is shifted (`layers.temporal_shift`), as TSM does with
`m.conv[0] = TemporalShift(m.conv[0], ...)`.

Input clips `[B, T, H, W, C]` (frames folded into the batch, logits averaged over T). Taps, with
the time axis restored: `layer1` (24 channels, stride 4), `layer2` (32, stride 8), `layer3` (96,
stride 16), `layer4` (1280, stride 32: the final 1x1 conv, before pooling; the ResNet stage
outputs of equal stride carry the same names) and `pooled` (`[B, T, 1280]`).
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers

Array = jax.Array

# (expand ratio t, channels c, repeats n, stride s)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))
# Stage index (into SETTINGS) whose output is tap layer1 / layer2 / layer3.
TAP_STAGES = {1: "layer1", 2: "layer2", 4: "layer3"}
TINY_REPEATS = (1, 2, 2, 1, 2, 1, 1)


def make_divisible(x: float, divisor: int = 8) -> int:
  """TSM's rounding of scaled channel counts: up to a multiple of `divisor`."""
  return int(math.ceil(x / divisor) * divisor)


class InvertedResidual(nn.Module):
  """MobileNetV2 block: [1x1 expand, BN, ReLU6], 3x3 depthwise, BN, ReLU6, 1x1 project, BN."""

  inp: int
  oup: int
  stride: int
  expand_ratio: int
  shift_div: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, segments: int | None = None) -> Array:
    hidden = int(self.inp * self.expand_ratio)
    use_res = self.stride == 1 and self.inp == self.oup
    y = x
    if self.expand_ratio != 1:
      if self.shift_div and use_res:
        y = layers.temporal_shift(y, segments, self.shift_div)
      y = layers.conv(hidden, 1, dtype=self.dtype, name="expand_conv")(y)
      y = nn.relu6(layers.BatchNorm(name="expand_bn")(y, train=train))
    y = layers.conv(hidden, 3, self.stride, groups=hidden, dtype=self.dtype, name="dw_conv")(y)
    y = nn.relu6(layers.BatchNorm(name="dw_bn")(y, train=train))
    y = layers.conv(self.oup, 1, dtype=self.dtype, name="project_conv")(y)
    y = layers.BatchNorm(name="project_bn")(y, train=train)
    return x + y if use_res else y


class MobileNetV2(nn.Module):
  """(TSM-)MobileNetV2 returning `(logits, features)`; see the module docstring.

  Attributes:
    num_classes: classifier width.
    width_mult: channel multiplier of the blocks (stem and the t=1 block stay as in TSM's code).
    stage_repeats: n of each of the 7 settings.
    last_channel: channels of the final 1x1 conv (1280).
    in_channels: expected input channels.
    temporal_shift: TSM shift; the input must then be `[B, T, H, W, C]`.
    shift_div: 1/shift_div of the channels move each way.
    dropout_rate: dropout before the classifier (TSM: 0.5; needs a 'dropout' rng in training).
    dtype: computation dtype.
  """

  num_classes: int = 1000
  width_mult: float = 1.0
  stage_repeats: Sequence[int] = tuple(s[2] for s in SETTINGS)
  last_channel: int = 1280
  in_channels: int = 3
  temporal_shift: bool = True
  shift_div: int = 8
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, dict[str, Array]]:
    x, segments = layers.fold_frames(x, model=type(self).__name__, in_channels=self.in_channels,
                                     temporal_shift=self.temporal_shift)
    x = layers.conv(32, 3, 2, dtype=self.dtype, name="stem_conv")(x.astype(self.dtype))
    x = nn.relu6(layers.BatchNorm(name="stem_bn")(x, train=train))
    features = {}
    inp, k = 32, 0
    for stage, ((t, c, _, s), n) in enumerate(zip(SETTINGS, self.stage_repeats)):
      oup = make_divisible(c * self.width_mult) if t > 1 else c
      for i in range(n):
        x = InvertedResidual(inp, oup, s if i == 0 else 1, t,
                             shift_div=self.shift_div if self.temporal_shift else 0,
                             dtype=self.dtype, name=f"block{k}")(x, train=train, segments=segments)
        inp, k = oup, k + 1
      if stage in TAP_STAGES:
        features[TAP_STAGES[stage]] = x
    x = layers.conv(self.last_channel, 1, dtype=self.dtype, name="head_conv")(x)
    x = nn.relu6(layers.BatchNorm(name="head_bn")(x, train=train))
    features["layer4"] = x
    return layers.pooled_classifier(x, features, segments, num_classes=self.num_classes,
                                    dropout_rate=self.dropout_rate, dtype=self.dtype, train=train,
                                    name="classifier")


def tsm_mobilenet_v2(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    width_mult: float | None = None,
    stage_repeats: Sequence[int] | None = None,
    last_channel: int | None = None,
    shift_div: int = 8,
    temporal_shift: bool = True,
    tiny: bool = False,
    dropout_rate: float = 0.0,
    dtype: Any = jnp.float32,
) -> MobileNetV2:
  """TSM-MobileNetV2 on clips `[B, T, H, W, C]`.

  `tiny=True` defaults width_mult 0.25, repeats (1, 2, 2, 1, 2, 1, 1) (every shifted stage keeps a
  residual block) and last_channel 64. `temporal_shift=False` gives the plain per-frame network
  (TSN-MobileNetV2), which also accepts frames `[B, H, W, C]`.
  """
  width_mult = width_mult if width_mult is not None else (0.25 if tiny else 1.0)
  if not width_mult > 0:
    raise ValueError(f"width_mult must be positive, got {width_mult!r}")
  repeats = layers.check_stage_sizes(
      stage_repeats if stage_repeats is not None else
      (TINY_REPEATS if tiny else tuple(s[2] for s in SETTINGS)), len(SETTINGS))
  last = last_channel if last_channel is not None else (64 if tiny else 1280)
  return MobileNetV2(
      num_classes=layers.check_positive_int("num_classes", num_classes),
      width_mult=float(width_mult),
      stage_repeats=repeats,
      last_channel=layers.check_positive_int("last_channel", last),
      in_channels=layers.check_positive_int("in_channels", in_channels),
      temporal_shift=bool(temporal_shift),
      shift_div=layers.check_positive_int("shift_div", shift_div),
      dropout_rate=layers.check_rate("dropout_rate", dropout_rate),
      dtype=jnp.dtype(dtype),
  )

"""torchvision-style ResNet-18 / ResNet-50 (v1.5) for frames or TSN segments, channels-last.

Parity with torchvision (so converted weights give the same outputs, see `convert.py`):

* stem conv 7x7/2 pad 3, BN, ReLU, max-pool 3x3/2 pad 1; stages of 64, 128, 256, 512 planes;
* v1.5 bottleneck: the stride sits on the 3x3 conv; projection shortcut (1x1 conv + BN) whenever
  the shape changes;
* BatchNorm with PyTorch's momentum 0.1 / eps 1e-5 and unbiased running variance (`layers.py`);
* global average pool, fc.

CoViAR / PKD options: `in_channels=2` for accumulated motion vectors and `input_norm=True` for the
`data_bn` BatchNorm applied to the raw input before `conv1`. TSM options: `temporal_shift=True`
shifts 1/`shift_div` of the channels each way in the residual branch of every block ("blockres").

Flax module names mirror torchvision's (`conv1`, `bn1`, `layer2_0/conv1`,
`layer2_0/downsample_conv`, `fc`, ...), which keeps the weight mapping mechanical.

Taps (`features`): `layer1`..`layer4` (post-ReLU outputs of the last block of each stage, the PKD IC
attachment points) and `pooled` (the globally pooled vector fed to `fc`). For segment input
`[B, S, H, W, C]` every tap has its segment axis restored (`[B, S, h, w, c]`, `[B, S, C]`) and the
logits are the TSN mean over segments.
"""

from collections.abc import Callable
from collections.abc import Sequence
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import layers

Array = jax.Array

TINY_WIDTH = 8
TINY_STAGES = (1, 1, 1, 1)


class BasicBlock(nn.Module):
  """torchvision BasicBlock: two 3x3 convs; output channels = `planes`."""

  planes: int
  stride: int = 1
  shift_div: int = 0  # 0: no temporal shift
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x: Array, *, train: bool, segments: int | None = None) -> Array:
    y = layers.temporal_shift(x, segments, self.shift_div) if self.shift_div else x
    y = layers.conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(y)
    y = nn.relu(layers.BatchNorm(name="bn1")(y, train=train))
    y = layers.conv(self.planes, 3, dtype=self.dtype, name="conv2")(y)
    y = layers.BatchNorm(name="bn2")(y, train=train)
    return nn.relu(y + _shortcut(self, x, self.planes, train))


class Bottleneck(nn.Module):
  """torchvision v1.5 Bottleneck: 1x1, 3x3 (strided), 1x1; output channels = 4 * `planes`."""

  planes: int
  stride: int = 1
  shift_div: int = 0
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x: Array, *, train: bool, segments: int | None = None) -> Array:
    out = self.planes * self.expansion
    y = layers.temporal_shift(x, segments, self.shift_div) if self.shift_div else x
    y = layers.conv(self.planes, 1, dtype=self.dtype, name="conv1")(y)
    y = nn.relu(layers.BatchNorm(name="bn1")(y, train=train))
    y = layers.conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(layers.BatchNorm(name="bn2")(y, train=train))
    y = layers.conv(out, 1, dtype=self.dtype, name="conv3")(y)
    y = layers.BatchNorm(name="bn3")(y, train=train)
    return nn.relu(y + _shortcut(self, x, out, train))


def _shortcut(block: nn.Module, x: Array, out: int, train: bool) -> Array:
  # Called inside the block's compact __call__, so the submodules are the block's own.
  if block.stride == 1 and x.shape[-1] == out:
    return x
  r = layers.conv(out, 1, block.stride, dtype=block.dtype, name="downsample_conv")(x)
  return layers.BatchNorm(name="downsample_bn")(r, train=train)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """A torchvision-compatible 2-D ResNet returning `(logits, features)`.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: "basic" or "bottleneck".
    num_classes: classifier width.
    width: planes of the first stage (64 in torchvision); later stages double it.
    in_channels: expected input channels (3 RGB / residual, 2 motion vectors).
    input_norm: apply CoViAR's `data_bn` BatchNorm to the raw input.
    temporal_shift: TSM residual shift in every block; the input must then be `[B, T, H, W, C]`.
    shift_div: 1/shift_div of the channels move each way.
    dropout_rate: dropout on the pooled vector before `fc` (needs a 'dropout' rng when training).
    dtype: computation dtype of convs and fc; parameters and BN statistics stay float32.
  """

  stage_sizes: Sequence[int]
  block: str = "basic"
  num_classes: int = 1000
  width: int = 64
  in_channels: int = 3
  input_norm: bool = False
  temporal_shift: bool = False
  shift_div: int = 8
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, dict[str, Array]]:
    x, segments = layers.fold_frames(x, model=type(self).__name__, in_channels=self.in_channels,
                                     temporal_shift=self.temporal_shift)
    block_cls = BLOCKS[self.block]
    if self.input_norm:
      x = layers.BatchNorm(name="data_bn")(x, train=train)
    x = layers.conv(self.width, 7, 2, dtype=self.dtype, name="conv1")(x.astype(self.dtype))
    x = nn.relu(layers.BatchNorm(name="bn1")(x, train=train))
    x = layers.max_pool_3x3_s2(x)

    features = {}
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = block_cls(
            self.width * 2**i,
            stride=2 if i > 0 and j == 0 else 1,
            shift_div=self.shift_div if self.temporal_shift else 0,
            dtype=self.dtype,
            name=f"layer{i + 1}_{j}",
        )(x, train=train, segments=segments)
      features[f"layer{i + 1}"] = x
    return layers.pooled_classifier(x, features, segments, num_classes=self.num_classes,
                                    dropout_rate=self.dropout_rate, dtype=self.dtype, train=train,
                                    name="fc")


def build_resnet(
    block: str,
    default_stages: Sequence[int],
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_norm: bool = False,
    # Ahead of `width` so that `depth_builder` gives the TSM builders their documented order.
    shift_div: int = 8,
    width: int | None = None,
    stage_sizes: Sequence[int] | None = None,
    tiny: bool = False,
    temporal_shift: bool = False,
    dropout_rate: float = 0.0,
    dtype: Any = jnp.float32,
) -> ResNet:
  """Validates the options and builds a `ResNet`; `tiny`: width 8, one block per stage."""
  width = layers.check_positive_int("width", width if width is not None else
                                    (TINY_WIDTH if tiny else 64))
  stages = layers.check_stage_sizes(
      stage_sizes if stage_sizes is not None else (TINY_STAGES if tiny else default_stages), 4)
  return ResNet(
      stage_sizes=stages,
      block=block,
      num_classes=layers.check_positive_int("num_classes", num_classes),
      width=width,
      in_channels=layers.check_positive_int("in_channels", in_channels),
      input_norm=bool(input_norm),
      temporal_shift=bool(temporal_shift),
      shift_div=layers.check_positive_int("shift_div", shift_div),
      dropout_rate=layers.check_rate("dropout_rate", dropout_rate),
      dtype=jnp.dtype(dtype),
  )


def depth_builder(
    name: str,
    block: str,
    default_stages: Sequence[int],
    doc: str,
    *,
    temporal_shift: bool = False,
    module: str = __name__,
) -> Callable[..., ResNet]:
  """The public builder of one ResNet depth: `build_resnet` with the block type and stages fixed.

  A plain ResNet takes every option but the TSM ones; a TSM ResNet (`temporal_shift=True`) takes
  `shift_div` but not `input_norm`. `models.get` lists and checks a builder's arguments from its
  signature, so the builder carries that subset of `build_resnet`'s signature instead of showing a
  bare `**kwargs`, and binds its arguments to it, rejecting the others as a plain function would.
  """
  dropped = ("temporal_shift", "input_norm" if temporal_shift else "shift_div")
  signature = inspect.signature(build_resnet)
  signature = signature.replace(parameters=[
      p for p in signature.parameters.values()
      if p.kind is p.KEYWORD_ONLY and p.name not in dropped])

  def builder(**kwargs: Any) -> ResNet:
    options = signature.bind(**kwargs).arguments
    return build_resnet(block, default_stages, temporal_shift=temporal_shift, **options)

  builder.__signature__ = signature
  builder.__name__ = builder.__qualname__ = name
  builder.__module__ = module
  builder.__doc__ = doc
  return builder


resnet18 = depth_builder("resnet18", "basic", (2, 2, 2, 2), """\
ResNet-18 (BasicBlock, stages 2-2-2-2); `tiny=True` gives width 8 and stages 1-1-1-1.

PKD's motion-vector network is `resnet18(in_channels=2, input_norm=True)`, its residual network
`resnet18(input_norm=True)`.
""")
resnet50 = depth_builder(
    "resnet50", "bottleneck", (3, 4, 6, 3),
    "ResNet-50 v1.5 (Bottleneck, stages 3-4-6-3); `tiny=True` gives width 8 and stages 1-1-1-1.")

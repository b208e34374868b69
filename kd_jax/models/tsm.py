"""TSM (Temporal Shift Module, Lin et al. 2019) networks for spectral KD.

A TSM network is a 2-D per-frame network whose residual branches shift 1/8 of the channels one
frame back and 1/8 one frame forward in time (`layers.temporal_shift`, placement "blockres": at
the input of each residual branch's first conv; the shortcut keeps the unshifted input). It takes
clips `[B, T, H, W, C]`, folds the T frames into the batch, averages the logits over T (TSN
consensus) and returns every tap with the time axis restored, `[B, T, h, w, c]`, for the temporal
spectrum loss (spectral_kd.md 3.3).

Builders: `tsm_resnet18`, `tsm_resnet50` (here) and `tsm_mobilenet_v2` (`mobilenet_v2.py`). The
ResNets share `resnet.ResNet` and its parameter names, so torchvision ImageNet weights and TSM's
own checkpoints (`base_model.layer1.0.conv1.net.weight`, `new_fc`) convert with `convert.py`.
Taps: `layer1`..`layer4` (ResNet-18: 64/128/256/512 channels, ResNet-50: 256/512/1024/2048, at
strides 4/8/16/32) and `pooled` (`[B, T, C]`).

TSM's `n_round = 2` (shift only every second block) applies to ResNet-101's 23-block stage, not to
these depths.
"""

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from kd_jax.models.layers import temporal_shift
from kd_jax.models.resnet import ResNet
from kd_jax.models.resnet import build_resnet

__all__ = ["temporal_shift", "tsm_resnet18", "tsm_resnet50"]


def tsm_resnet18(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    shift_div: int = 8,
    width: int | None = None,
    stage_sizes: Sequence[int] | None = None,
    tiny: bool = False,
    dropout_rate: float = 0.0,
    dtype: Any = jnp.float32,
) -> ResNet:
  """TSM ResNet-18 on clips `[B, T, H, W, C]`; `tiny=True` gives width 8 and stages 1-1-1-1.

  `dropout_rate`: TSM's recipe uses 0.5 before the classifier (needs a 'dropout' rng in training).
  """
  return build_resnet("basic", (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels,
                      width=width, stage_sizes=stage_sizes, tiny=tiny, temporal_shift=True,
                      shift_div=shift_div, dropout_rate=dropout_rate, dtype=dtype)


def tsm_resnet50(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    shift_div: int = 8,
    width: int | None = None,
    stage_sizes: Sequence[int] | None = None,
    tiny: bool = False,
    dropout_rate: float = 0.0,
    dtype: Any = jnp.float32,
) -> ResNet:
  """TSM ResNet-50 (v1.5) on clips `[B, T, H, W, C]`; `tiny=True`: width 8, stages 1-1-1-1."""
  return build_resnet("bottleneck", (3, 4, 6, 3), num_classes=num_classes,
                      in_channels=in_channels, width=width, stage_sizes=stage_sizes, tiny=tiny,
                      temporal_shift=True, shift_div=shift_div, dropout_rate=dropout_rate,
                      dtype=dtype)

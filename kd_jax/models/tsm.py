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

from kd_jax.models.layers import temporal_shift
from kd_jax.models.resnet import depth_builder

__all__ = ["temporal_shift", "tsm_resnet18", "tsm_resnet50"]

tsm_resnet18 = depth_builder("tsm_resnet18", "basic", (2, 2, 2, 2), """\
TSM ResNet-18 on clips `[B, T, H, W, C]`; `tiny=True` gives width 8 and stages 1-1-1-1.

`dropout_rate`: TSM's recipe uses 0.5 before the classifier (needs a 'dropout' rng in training).
""", temporal_shift=True, module=__name__)
tsm_resnet50 = depth_builder(
    "tsm_resnet50", "bottleneck", (3, 4, 6, 3),
    "TSM ResNet-50 (v1.5) on clips `[B, T, H, W, C]`; `tiny=True`: width 8, stages 1-1-1-1.",
    temporal_shift=True, module=__name__)

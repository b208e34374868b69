"""PyTorch twins of the kd_jax networks that `kd_jax.bench` times against the JAX ones.

Same architectures as `kd_jax.models` (checked by parameter counts in tests/test_bench_torch.py),
written the way a PyTorch user would: NCHW / NCTHW layouts, `nn.BatchNorm2d/3d` with PyTorch's own
momentum and epsilon, `nn.GroupNorm`, PyTorch default initialisation (plus torchvision's He init for
the ResNets). They exist for timing; no weights are converted in either direction.

* `ResNet`: torchvision ResNet-18/50 (v1.5), optional CoViAR input BatchNorm (`data_bn`), optional
  TSM temporal shift ("blockres", 1/`shift_div` of the channels each way), dropout before `fc`, TSN
  segments folded into the batch and logits averaged over them (`kd_jax.models.resnet`).
* `ICHeads`: PKD's internal classifiers on `layer1..3` (`kd_jax.models.ic_head`).
* `InceptionI3d`: I3D / Top-heavy I3D with TF-SAME padding (`kd_jax.models.i3d`).
* `AttentionHead`, `ConditionalVAE`: GenKD's generative attention
  (`kd_jax.models.generative_attention`).

Width: every builder takes the same multiplier `width` as `StepSize.width` and scales channels as
the JAX models do (`resnet_width` for the ResNets' int `width=`, `i3d.scale_channels` for I3D),
so counts agree exactly at any width. Channel tables and the TF-SAME rule are imported from
`kd_jax.models`, so the two sides cannot drift apart.

One deliberate difference from a line-by-line port of pytorch-i3d: TF-SAME padding that happens to
be symmetric is passed to the conv / pool op itself instead of an explicit `F.pad` (what a PyTorch
user tuning for speed would write); asymmetric padding still goes through a zero `F.pad`. Max-pools
pad with -inf when symmetric, pytorch-i3d with zeros; every I3D max-pool reads a post-ReLU map, so
the results are identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from kd_jax.models.i3d import ENDPOINTS
from kd_jax.models.i3d import MIXED_CHANNELS
from kd_jax.models.i3d import POOLS
from kd_jax.models.i3d import scale_channels
from kd_jax.models.i3d import TOP_HEAVY_2D_BLOCKS
from kd_jax.models.ic_head import IC_CONFIGS
from kd_jax.models.layers3d import I3D_BN_EPSILON
from kd_jax.models.layers3d import I3D_BN_MOMENTUM
from kd_jax.models.layers3d import tf_same_padding

Tensor = torch.Tensor

I3D_BN = dict(eps=I3D_BN_EPSILON, momentum=1.0 - I3D_BN_MOMENTUM)  # Flax momentum -> PyTorch
ATTENTION_HIDDEN = 512
GROUPS = 32


def resnet_width(width: float) -> int:
  """First-stage planes of a ResNet under the multiplier (64 at 1.0), as the JAX `width=` int."""
  return max(1, int(round(64 * width)))


def ic_channels(backbone: str, width: float) -> tuple[tuple[int, int], ...]:
  """(kernel, channels) of IC1..IC3: `ic_head._scaled_configs` at the backbone's int width."""
  w = resnet_width(width)
  return tuple((k, max(1, c * w // 64)) for k, c in IC_CONFIGS[backbone])


# ------------------------------------------------------------------------------------------------
# 2-D: ResNet / TSM ResNet, IC heads.


def temporal_shift(x: Tensor, segments: int, shift_div: int) -> Tensor:
  """TSM's shift on `[N*T, C, H, W]`, as mit-han-lab's `TemporalShift.shift` writes it."""
  nt, c, h, w = x.shape
  fold = c // shift_div
  if fold == 0:  # as kd_jax: too few channels to shift
    return x
  v = x.view(nt // segments, segments, c, h, w)
  out = torch.zeros_like(v)
  out[:, :-1, :fold] = v[:, 1:, :fold]  # towards the past
  out[:, 1:, fold:2 * fold] = v[:, :-1, fold:2 * fold]  # towards the future
  out[:, :, 2 * fold:] = v[:, :, 2 * fold:]
  return out.view(nt, c, h, w)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, shift_div: int = 0):
    super().__init__()
    self.shift_div = shift_div
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = _downsample(inplanes, planes, stride)

  def forward(self, x: Tensor, segments: int) -> Tensor:
    y = temporal_shift(x, segments, self.shift_div) if self.shift_div else x
    y = F.relu(self.bn1(self.conv1(y)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, shift_div: int = 0):
    super().__init__()
    self.shift_div = shift_div
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = _downsample(inplanes, planes * 4, stride)

  def forward(self, x: Tensor, segments: int) -> Tensor:
    y = temporal_shift(x, segments, self.shift_div) if self.shift_div else x
    y = F.relu(self.bn1(self.conv1(y)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _downsample(inplanes: int, out: int, stride: int) -> nn.Module | None:
  if stride == 1 and inplanes == out:
    return None
  return nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNet(nn.Module):
  """ResNet / TSM ResNet on TSN segments folded into the batch: `[N*S, C, H, W]` in.

  `forward(x, segments)` returns the segment-averaged logits `[N, K]` and the taps
  `layer1..layer4` (folded, `[N*S, c, h, w]`).
  """

  def __init__(self, depth: int, *, num_classes: int, width: float = 1.0, in_channels: int = 3,
               input_norm: bool = False, temporal_shift: bool = False, shift_div: int = 8,
               dropout_rate: float = 0.0):
    super().__init__()
    block, stages = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}[depth]
    planes = resnet_width(width)
    self.data_bn = nn.BatchNorm2d(in_channels) if input_norm else None
    self.conv1 = nn.Conv2d(in_channels, planes, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    inplanes = planes
    for i, n in enumerate(stages):
      blocks = []
      for j in range(n):
        blocks.append(block(inplanes, planes * 2**i, 2 if i > 0 and j == 0 else 1,
                            shift_div if temporal_shift else 0))
        inplanes = planes * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.ModuleList(blocks))
    self.dropout = nn.Dropout(dropout_rate) if dropout_rate else None
    self.fc = nn.Linear(inplanes, num_classes)
    self.out_channels = inplanes
    for m in self.modules():  # torchvision's init, as kd_jax.models.layers.conv_init
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x: Tensor, segments: int) -> tuple[Tensor, dict[str, Tensor]]:
    if self.data_bn is not None:
      x = self.data_bn(x)
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    taps = {}
    for i in range(4):
      for blk in getattr(self, f"layer{i + 1}"):
        x = blk(x, segments)
      taps[f"layer{i + 1}"] = x
    pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    if self.dropout is not None:
      pooled = self.dropout(pooled)
    logits = self.fc(pooled)
    return logits.view(-1, segments, logits.shape[-1]).mean(1), taps

  def spatial_kernels(self, stage: int) -> list[Tensor]:
    """The k >= 3 conv weights of blocks `layer<stage>_*` (spectral's kernel pairing)."""
    return [m.weight for m in getattr(self, f"layer{stage}").modules()
            if isinstance(m, nn.Conv2d) and min(m.kernel_size) >= 3]


class ICHead(nn.Module):
  """PKD's IC: conv (padding 1, no bias), BN, adaptive average pool to 4x4, flatten, linear."""

  def __init__(self, in_channels: int, channels: int, kernel: int, num_classes: int,
               pool: int = 4):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, channels, kernel, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(channels)
    self.pool = pool
    self.fc = nn.Linear(channels * pool * pool, num_classes)
    nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x: Tensor, segments: int) -> Tensor:
    y = F.adaptive_avg_pool2d(self.bn(self.conv(x)), self.pool)
    logits = self.fc(torch.flatten(y, 1))  # (C, H, W) order, as PKD's code
    return logits.view(-1, segments, logits.shape[-1]).mean(1)


class ICHeads(nn.Module):
  """IC1..IC3 of a PKD backbone on its `layer1..3` taps; logits `[N, 3, K]`."""

  def __init__(self, backbone: str, *, num_classes: int, width: float = 1.0):
    super().__init__()
    expansion = 4 if backbone == "resnet50" else 1
    tap_channels = [resnet_width(width) * 2**i * expansion for i in range(3)]
    self.heads = nn.ModuleList(
        ICHead(cin, c, k, num_classes)
        for cin, (k, c) in zip(tap_channels, ic_channels(backbone, width)))

  def forward(self, taps: dict[str, Tensor], segments: int) -> Tensor:
    return torch.stack([h(taps[f"layer{i + 1}"], segments) for i, h in enumerate(self.heads)], 1)


# ------------------------------------------------------------------------------------------------
# 3-D: I3D / Top-heavy I3D.


def _same(x: Tensor, kernel: Sequence[int], stride: Sequence[int]) -> tuple[Tensor, list[int]]:
  """Pads `x` [N, C, T, H, W] where TF-SAME is asymmetric; returns the symmetric rest."""
  pads = [tf_same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]
  if all(a == b for a, b in pads):
    return x, [a for a, _ in pads]
  flat = [p for a, b in reversed(pads) for p in (a, b)]  # F.pad: last axis first
  return F.pad(x, flat), [0, 0, 0]


class Unit3D(nn.Module):
  """pytorch-i3d's Unit3D: Conv3d (TF-SAME, no bias unless asked), BatchNorm3d, ReLU."""

  def __init__(self, cin: int, cout: int, kernel: Sequence[int] = (1, 1, 1),
               stride: Sequence[int] = (1, 1, 1), *, bn: bool = True, bias: bool = False,
               relu: bool = True):
    super().__init__()
    self.kernel, self.stride = tuple(kernel), tuple(stride)
    self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
    self.bn = nn.BatchNorm3d(cout, **I3D_BN) if bn else None
    self.relu = relu

  def forward(self, x: Tensor) -> Tensor:
    x, pad = _same(x, self.kernel, self.stride)
    x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, pad)
    if self.bn is not None:
      x = self.bn(x)
    return F.relu(x) if self.relu else x


def max_pool3d_same(x: Tensor, kernel: Sequence[int], stride: Sequence[int]) -> Tensor:
  x, pad = _same(x, kernel, stride)
  return F.max_pool3d(x, kernel, stride, pad)


class InceptionBlock(nn.Module):
  def __init__(self, cin: int, channels: Sequence[int], temporal: bool):
    super().__init__()
    c0, c1a, c1b, c2a, c2b, c3b = channels
    self.k3 = (3, 3, 3) if temporal else (1, 3, 3)
    self.b0 = Unit3D(cin, c0)
    self.b1a = Unit3D(cin, c1a)
    self.b1b = Unit3D(c1a, c1b, self.k3)
    self.b2a = Unit3D(cin, c2a)
    self.b2b = Unit3D(c2a, c2b, self.k3)
    self.b3b = Unit3D(cin, c3b)
    self.out_channels = c0 + c1b + c2b + c3b

  def forward(self, x: Tensor) -> Tensor:
    b3 = self.b3b(max_pool3d_same(x, self.k3, (1, 1, 1)))
    return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), b3], 1)


class InceptionI3d(nn.Module):
  """I3D (`top_heavy=False`) or Top-heavy I3D on clips `[N, 3, T, H, W]`.

  `features(x)` returns `Mixed_5c` `[N, C, T', H', W']`; `classify(f)` is the head (VALID average
  pool `(2, H', W')` stride 1, dropout, 1x1x1 conv with bias) giving per-step logits `[N, T'', K]`.
  The JAX model's default head pool is `(2, 7, 7)`, which equals `(2, H', W')` at 224x224; the
  pool has no parameters, so counts agree at any crop.
  """

  def __init__(self, *, num_classes: int, top_heavy: bool = False, width: float = 1.0,
               dropout_rate: float = 0.5):
    super().__init__()
    s = lambda c: scale_channels(c, width)  # noqa: E731
    self.Conv3d_1a_7x7 = Unit3D(3, s(64), (1, 7, 7) if top_heavy else (7, 7, 7), (2, 2, 2))
    self.Conv3d_2b_1x1 = Unit3D(s(64), s(64))
    self.Conv3d_2c_3x3 = Unit3D(s(64), s(192), (1, 3, 3) if top_heavy else (3, 3, 3))
    cin = s(192)
    for name, channels in MIXED_CHANNELS.items():
      block = InceptionBlock(cin, [s(c) for c in channels],
                             temporal=not (top_heavy and name in TOP_HEAVY_2D_BLOCKS))
      setattr(self, name, block)
      cin = block.out_channels
    self.out_channels = cin
    self.dropout = nn.Dropout(dropout_rate)
    self.logits = Unit3D(cin, num_classes, bn=False, bias=True, relu=False)

  def features(self, x: Tensor) -> Tensor:
    for name in ENDPOINTS:
      x = max_pool3d_same(x, *POOLS[name]) if name in POOLS else getattr(self, name)(x)
    return x

  def classify(self, f: Tensor) -> Tensor:
    x = F.avg_pool3d(f, (2,) + tuple(f.shape[3:]), 1)
    x = self.logits(self.dropout(x))
    return x.flatten(2).transpose(1, 2)  # [N, T'', K]


def i3d_feature_shape(frames: int, crop: int, channels: int) -> tuple[int, int, int, int]:
  """(C, T, H, W) of `Mixed_5c`: TF-SAME makes every strided op a ceil division."""
  t, h = frames, crop
  for st, sh in ((2, 2), (1, 2), (1, 2), (2, 2), (2, 2)):  # 1a, pools 2a, 3a, 4a, 5a
    t, h = -(-t // st), -(-h // sh)
  return channels, t, h, h


# ------------------------------------------------------------------------------------------------
# GenKD's generative attention.


class AttentionHead(nn.Module):
  """`F [N, C, T, H, W] -> A [N, T, C]` (`kd_jax.models.generative_attention.AttentionHead`)."""

  def __init__(self, feature_shape: Sequence[int], hidden: int = ATTENTION_HIDDEN,
               groups: int = GROUPS):
    super().__init__()
    c, t, h, w = feature_shape
    self.channels = c
    self.conv3d = nn.Conv3d(c, hidden, (1, h, w))
    self.gn3d = nn.GroupNorm(groups, hidden)
    self.conv1d = nn.Conv1d(hidden, c, 3, padding=1)  # TF-SAME for k=3, stride 1
    self.gn1d = nn.GroupNorm(groups, c)
    self.linear = nn.Linear(c, t)

  def forward(self, f: Tensor) -> Tensor:
    x = F.relu(self.gn3d(self.conv3d(f))).flatten(2)  # [N, hidden, T]
    # Time is resized to length C so the 1-D conv sees one position per channel (GenKD's code).
    x = F.interpolate(x, size=self.channels, mode="nearest")
    x = F.relu(self.gn1d(self.conv1d(x)))  # [N, C, L=C]
    return torch.sigmoid(self.linear(x)).transpose(1, 2)  # [N, T, C]


class ConditionalVAE(nn.Module):
  """GenKD's CVAE over `F` given `A`, prior `N(A, I)` (`generative_attention.ConditionalVAE`)."""

  def __init__(self, feature_shape: Sequence[int], groups: int = GROUPS):
    super().__init__()
    c, _, h, w = feature_shape
    self.enc_conv3d = nn.Conv3d(c, c, (1, h, w))
    self.enc_gn = nn.GroupNorm(groups, c)
    self.enc_fc1 = nn.Linear(2 * c, c)
    self.enc_fc2 = nn.Linear(c, c)
    self.enc_fc3 = nn.Linear(c, 2 * c)
    self.dec_fc1 = nn.Linear(2 * c, c)
    self.dec_fc2 = nn.Linear(c, c)
    self.dec_fc3 = nn.Linear(c, c)
    self.dec_deconv3d = nn.ConvTranspose3d(c, c, (1, h, w))
    self.dec_gn = nn.GroupNorm(groups, c)

  def encode(self, f: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    x = F.relu(self.enc_gn(self.enc_conv3d(f))).flatten(2).transpose(1, 2)  # [N, T, C]
    x = torch.cat([x, a.to(x.dtype)], -1)
    x = F.relu(self.enc_fc2(F.relu(self.enc_fc1(x))))
    return self.enc_fc3(x).chunk(2, -1)

  def decode(self, z: Tensor, a: Tensor) -> Tensor:
    x = torch.cat([z, a.to(z.dtype)], -1)
    x = self.dec_fc3(F.relu(self.dec_fc2(F.relu(self.dec_fc1(x)))))  # [N, T, C]
    x = self.dec_deconv3d(x.transpose(1, 2)[..., None, None])
    return F.relu(self.dec_gn(x))

  def posterior(self, f: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`(mean, log_var, reconstruction)` with `z = mean + exp(log_var / 2) eps`."""
    mean, log_var = self.encode(f, a)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    return mean, log_var, self.decode(z, a)

  def prior(self, a: Tensor) -> Tensor:
    """The reconstruction from `z = A + eps`."""
    return self.decode(a + torch.randn_like(a), a)


def count(module: nn.Module) -> int:
  """Parameters of a module (BatchNorm running statistics are buffers and not counted)."""
  return sum(p.numel() for p in module.parameters())


__all__ = [
    "AttentionHead", "ConditionalVAE", "ICHeads", "InceptionI3d", "ResNet", "count",
    "i3d_feature_shape", "ic_channels", "resnet_width", "scale_channels", "temporal_shift",
]

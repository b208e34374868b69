"""Small PyTorch reference modules for the parity tests (imported only where torch is installed).

Written from scratch after torchvision's ResNet layout, CoViAR's wrapper and pytorch-i3d's Unit3D /
InceptionModule, so the tests need neither torchvision nor pytorch-i3d.
"""

import torch
from torch import nn


class TorchBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    out = planes * 4
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = None
    if stride != 1 or inplanes != out:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """torchvision's ResNet layout: conv1, bn1, maxpool, layer1..4, avgpool, fc."""

  def __init__(self, block, stages, width, num_classes, in_channels=3):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = width
    for i, n in enumerate(stages):
      blocks = []
      for j in range(n):
        blocks.append(block(inplanes, width * 2**i, 2 if i > 0 and j == 0 else 1))
        inplanes = width * 2**i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    taps = {}
    for i in range(4):
      x = getattr(self, f"layer{i + 1}")(x)
      taps[f"layer{i + 1}"] = x
    return self.fc(x.mean((2, 3))), taps


class TorchCoviar(nn.Module):
  """CoViAR's `Model`: `data_bn` on the raw input, then `base_model`."""

  def __init__(self, base, in_channels):
    super().__init__()
    self.base_model = base
    self.data_bn = nn.BatchNorm2d(in_channels)

  def forward(self, x):
    return self.base_model(self.data_bn(x))


def randomize(module, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(0.5 + torch.rand(t.shape, generator=g))
      elif name.endswith("running_mean"):
        t.copy_(0.2 * torch.randn(t.shape, generator=g))
      elif t.ndim == 1 and name.endswith("weight"):  # BatchNorm scale
        t.copy_(0.5 + torch.rand(t.shape, generator=g))
      elif t.ndim >= 2:  # conv / linear weight: keep activations O(1) in eval mode too
        t.copy_(torch.randn(t.shape, generator=g) * (1.5 / t[0].numel()) ** 0.5)
      else:
        t.copy_(0.3 * torch.randn(t.shape, generator=g))
  return module


class TorchUnit3D(nn.Module):
  """pytorch-i3d's Unit3D: TF-SAME padding computed from the input size, conv, BN, ReLU."""

  def __init__(self, cin, cout, k):
    super().__init__()
    self.k = k
    self.conv3d = nn.Conv3d(cin, cout, k, 1, padding=0, bias=False)
    self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

  def forward(self, x):
    return torch.relu(self.bn(self.conv3d(torch_same_pad(x, self.k))))


def torch_same_pad(x, k, stride=(1, 1, 1)):
  pads = []
  for dim in (2, 1, 0):  # F.pad takes the last axis first: w, h, t
    n, kk, s = x.shape[2 + dim], k[dim], stride[dim]
    p = max(kk - s, 0) if n % s == 0 else max(kk - n % s, 0)
    pads += [p // 2, p - p // 2]
  return torch.nn.functional.pad(x, pads)


class TorchInception(nn.Module):
  def __init__(self, cin, c):
    super().__init__()
    self.b0 = TorchUnit3D(cin, c[0], (1, 1, 1))
    self.b1a = TorchUnit3D(cin, c[1], (1, 1, 1))
    self.b1b = TorchUnit3D(c[1], c[2], (3, 3, 3))
    self.b2a = TorchUnit3D(cin, c[3], (1, 1, 1))
    self.b2b = TorchUnit3D(c[3], c[4], (3, 3, 3))
    self.b3b = TorchUnit3D(cin, c[5], (1, 1, 1))

  def forward(self, x):
    pooled = nn.functional.max_pool3d(torch_same_pad(x, (3, 3, 3)), 3, 1)  # zero-padded, as i3d
    return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)],
                     dim=1)

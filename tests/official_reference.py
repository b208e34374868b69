"""The official modules whose checkpoints kd_jax imports, re-written with their exact names.

Imported only where torch is installed. Written from the official code (read, not copied):

* PKD, ``COVIAR_backbone/train_freeze_backbone_IC_KD_progressive.py``: ``IC_Model`` (ResNet-18) and
  ``IC_Model_Resnet50`` hold ``net`` (CoViAR's ``Model``: ``base_model`` = torchvision ResNet,
  ``data_bn`` for MV and residual input, ``COVIAR_backbone/model.py``) and per IC ``IC{k}_features
  = Sequential(Conv2d(k x k, stride 1, padding 1, no bias), BatchNorm2d)`` and ``IC{k}_classifier =
  Linear(16 C, K)``, with one ``AdaptiveAvgPool2d(4)``; they are trained inside ``DataParallel``
  and saved as ``{'epoch', 'arch', 'state_dict': model_IC.state_dict(), 'best_prec1'}``.
* GenKD, ``recognition/BDNet_student.py`` / ``BDNet_teacher.py``: ``deconv1 = Sequential(Conv3d(C,
  512, [1, H, W]), GroupNorm(32, 512), ReLU)``, ``Att_Head_5c = Sequential(Unit1D(512, C, 3),
  GroupNorm(32, C), ReLU, Linear(C, T), Sigmoid)`` (``Unit1D`` holds ``conv1d`` and pads SAME), and
  ``CVAE_student`` / ``CVAE_teacher`` = ``cencoder`` (``con1``, ``fc1..3``), ``cdecoder``
  (``fc1..3``, ``deconv``) and the unused 832 branch ``cencoder_832`` (``con2``) /
  ``cdecoder_832``. The training script saves ``model.module.state_dict()`` (no prefix).
"""

import torch
from torch import nn
import torch.nn.functional as F

from torch_reference import randomize  # noqa: F401  (the tests randomise these modules with it)

# (in, out, kernel) of IC1..IC3, from IC_Model and IC_Model_Resnet50.
IC_TABLE = {
    "resnet18": ((64, 64, 7), (128, 128, 3), (256, 256, 3)),
    "resnet50": ((256, 64, 3), (512, 256, 3), (1024, 1024, 3)),
}


def ic_table(arch: str, width: int = 64):
  return tuple((cin * width // 64, cout * width // 64, k) for cin, cout, k in IC_TABLE[arch])


class CoviarModel(nn.Module):
  """CoViAR's ``Model`` as PKD uses it: ``base_model``, and ``data_bn`` for MV and residual."""

  def __init__(self, base, representation):
    super().__init__()
    self.base_model = base
    if representation == "mv":
      self.data_bn = nn.BatchNorm2d(2)
    if representation == "residual":
      self.data_bn = nn.BatchNorm2d(3)

  def forward(self, x):
    if hasattr(self, "data_bn"):
      x = self.data_bn(x)
    return self.base_model(x)  # the reference ResNet returns (logits, taps)


class ICModel(nn.Module):
  """PKD's ``IC_Model`` / ``IC_Model_Resnet50``; returns ``([IC1, IC2, IC3] logits, final)``."""

  def __init__(self, net, table, num_classes):
    super().__init__()
    self.net = net
    for k, (cin, cout, ks) in enumerate(table, 1):
      setattr(self, f"IC{k}_features", nn.Sequential(
          nn.Conv2d(cin, cout, ks, stride=1, padding=1, bias=False), nn.BatchNorm2d(cout)))
      setattr(self, f"IC{k}_classifier", nn.Linear(cout * 16, num_classes))
    self.IC_adaptive_avg_pool = nn.AdaptiveAvgPool2d(4)

  def forward(self, x):
    final, taps = self.net(x)
    ics = []
    for k in (1, 2, 3):
      y = getattr(self, f"IC{k}_features")(taps[f"layer{k}"])
      y = torch.flatten(self.IC_adaptive_avg_pool(y), 1)
      ics.append(getattr(self, f"IC{k}_classifier")(y))
    return ics, final


class Unit1D(nn.Module):
  """GenKD's ``common/layers.py`` ``Unit1D`` without activation: ``conv1d`` with SAME padding."""

  def __init__(self, cin, cout, k):
    super().__init__()
    self.k = k
    self.conv1d = nn.Conv1d(cin, cout, k, 1, padding=0, bias=True)

  def forward(self, x):
    pad = max(self.k - 1, 0)
    return self.conv1d(F.pad(x, [pad // 2, pad - pad // 2]))


class AttentionModules(nn.Module):
  """The recognition attention head of ``BDNet_student`` / ``BDNet_teacher`` (mode 'att')."""

  def __init__(self, c, hidden, t, h, w, groups=32):
    super().__init__()
    self.c = c
    self.deconv1 = nn.Sequential(nn.Conv3d(c, hidden, [1, h, w]), nn.GroupNorm(groups, hidden),
                                 nn.ReLU())
    self.Att_Head_5c = nn.Sequential(Unit1D(hidden, c, 3), nn.GroupNorm(groups, c), nn.ReLU(),
                                     nn.Linear(c, t), nn.Sigmoid())

  def forward(self, f):  # f: [B, C, T, H, W] -> A: [B, C, T]
    x = self.deconv1(f).squeeze(-1)
    x = F.interpolate(x, [self.c, 1]).squeeze(-1)
    return self.Att_Head_5c(x)


class _Encoder(nn.Module):
  def __init__(self, c, h, w, conv_name, groups=32):
    super().__init__()
    self.c = c
    setattr(self, conv_name, nn.Sequential(nn.Conv3d(c, c, [1, h, w]), nn.GroupNorm(groups, c),
                                           nn.ReLU()))
    self.conv_name = conv_name
    self.fc1, self.fc2, self.fc3 = nn.Linear(2 * c, c), nn.Linear(c, c), nn.Linear(c, 2 * c)

  def forward(self, x, att):
    x = getattr(self, self.conv_name)(x).squeeze(-1).squeeze(-1)
    x = torch.cat([x, att], dim=1).permute(0, 2, 1)
    x = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
    return x[:, :, :self.c], x[:, :, self.c:]


class _Decoder(nn.Module):
  def __init__(self, c, h, w, groups=32):
    super().__init__()
    self.fc1, self.fc2, self.fc3 = nn.Linear(2 * c, c), nn.Linear(c, c), nn.Linear(c, c)
    self.deconv = nn.Sequential(nn.ConvTranspose3d(c, c, [1, h, w]), nn.GroupNorm(groups, c),
                                nn.ReLU())

  def forward(self, z, att):
    x = torch.cat([z, att.permute(0, 2, 1)], dim=-1)
    x = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
    return self.deconv(x.permute(0, 2, 1).unsqueeze(-1).unsqueeze(-1))


class CVAE(nn.Module):
  """``CVAE_student`` / ``CVAE_teacher``: the 1024 branch and the 832 branch (sizes given)."""

  def __init__(self, c, h, w, c832, h832, w832):
    super().__init__()
    self.cencoder = _Encoder(c, h, w, "con1")
    self.cdecoder = _Decoder(c, h, w)
    self.cencoder_832 = _Encoder(c832, h832, w832, "con2")
    self.cdecoder_832 = _Decoder(c832, h832, w832)

  def posterior(self, x, att, eps):  # mode 'forward' with the noise given
    mean, log_var = self.cencoder(x, att)
    return mean, log_var, self.cdecoder(mean + torch.exp(0.5 * log_var) * eps, att)

  def prior(self, att, eps):  # mode 'inference' with the noise given
    return self.cdecoder(att.permute(0, 2, 1) + eps, att)

"""What each benchmarked step is, and at which sizes it runs; shared by the JAX and PyTorch sides.

Pure Python (no JAX, no PyTorch), so that both sides, and the command line before it starts any
accelerator, can import it.

The steps (one full training step each: forward, backward, optimiser update, on one device):

* ``pkd_backbone_r18`` / ``pkd_backbone_r50``: PKD stage 1, a modality network fine-tuned with
  cross-entropy on TSN segments (pkd_wise.md 6.1): the residual network (ResNet-18 with the input
  BatchNorm ``data_bn``, 3 channels) and the I-frame network (ResNet-50); Adam (eps 1e-3) with
  coupled L2 1e-4 and the per-group learning-rate multipliers.
* ``pkd_ic_r18`` / ``pkd_ic_r50``: PKD stage 2, IC1..IC3 trained with PKD on the frozen backbone of
  the residual network (ResNet-18) / I-frame network (ResNet-50), in the curriculum's last and
  longest phase (epochs 100-300 of 300), where the network's own final classifier is the teacher:
  one frozen forward pass (eval mode), the heads trained with ``progressive_kd_loss`` (T = 1)
  (pkd_wise.md 4.2, 6.2); Adam eps 1e-3, no weight decay.
* ``genkd_phase2``: GenKD phase 2, the Top-I3D student with its attention head and CVAE against the
  frozen I3D teacher (with its own attention head and CVAE), generative and attention distillation
  on (genkd.md 5, 6). An epoch alternates a CVAE pass (pass A: student forward, CVAE trained with
  Adam, teacher CVAE on the student's features) and a network pass (pass B: student trained with
  SGD, frozen CVAE reconstruction, teacher forward for attention distillation) of equally many
  steps; both are timed, and the step's figures are their mean.
* ``spectral_r18_r50``: the spectral method's student step, TSM-ResNet-18 student and frozen
  TSM-ResNet-50 teacher on 8 segments, every term on (CE, logit KD, temporal spectrum of ``layer4``
  through the 1x1 adapter, DCT kernel-frequency distribution of stages 1-4), learned uncertainty
  weights (spectral_kd.md 3, 8.2); SGD momentum 0.9, coupled L2 5e-4, gradient clip 20, dropout 0.5.

Parameter counts (:data:`NETWORKS`) are the elements of the networks' learnable tensors (Flax
``params``, PyTorch ``nn.Parameter``; BatchNorm running statistics are buffers and do not count),
per network, frozen networks included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

STEPS: tuple[str, ...] = ("pkd_backbone_r18", "pkd_backbone_r50", "pkd_ic_r18", "pkd_ic_r50",
                          "genkd_phase2", "spectral_r18_r50")
DTYPES: tuple[str, ...] = ("float32", "bfloat16")

# The keys of `param_count` on both sides. `student`: the network the step trains or, for PKD's
# IC stage, whose frozen backbone the heads read; `teacher`: the frozen teacher network, 0 when the
# step has none (PKD: the backbone stage, and the IC stage's own-classifier phase); `heads`: IC1-3;
# GenKD's `attention` / `cvae`: the student's attention head and CVAE, its `teacher` the I3D with
# its own attention head and CVAE; spectral's `adapter`: the 1x1 spectrum adapter (the 4 learned
# uncertainty log-variances are not counted).
NETWORKS: dict[str, tuple[str, ...]] = {
    "pkd_backbone_r18": ("student", "teacher"),
    "pkd_backbone_r50": ("student", "teacher"),
    "pkd_ic_r18": ("student", "teacher", "heads"),
    "pkd_ic_r50": ("student", "teacher", "heads"),
    "genkd_phase2": ("student", "attention", "cvae", "teacher"),
    "spectral_r18_r50": ("student", "teacher", "adapter"),
}


@dataclasses.dataclass(frozen=True)
class StepSize:
  """The input and network size of one step.

  Attributes:
    frames: frames per clip: TSN segments for the 2D steps (3 for PKD, 8 for spectral), the clip
      length for GenKD (64; at least 16, the I3D head needs a time step after the 8x reduction).
    crop: side of the square input (224 at paper size).
    num_classes: 101 (UCF-101) for PKD and GenKD, 174 (Something-Something V2) for spectral.
    width: channel multiplier: 1.0 is the real network. ResNets get ``round(64 * width)``
      first-stage planes (IC heads scale with them), I3D and Top-I3D ``width`` on every layer, the
      GenKD attention head ``round(512 * width)`` hidden channels (its GroupNorm(32) needs a
      multiple of 32, as the CVAE does of I3D's scaled ``Mixed_5c`` channels: 1, 1/2, 1/4, 1/8 and
      1/16 work).
  """

  frames: int
  crop: int
  num_classes: int
  width: float = 1.0

  def __post_init__(self):
    for name in ("frames", "crop", "num_classes"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"StepSize.{name} must be a positive int, got {value!r}")
    if not 0 < float(self.width) <= 4:
      raise ValueError(f"StepSize.width must be in (0, 4], got {self.width!r}")

  def replace(self, **changes: Any) -> StepSize:
    """A copy with ``changes`` applied (and validated)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_PKD = StepSize(frames=3, crop=224, num_classes=101)
PAPER: dict[str, StepSize] = {
    # pkd_wise.md 6.1-6.2: 3 TSN segments; 224 crops (the size for both stages; the IC
    # stage of the official code trains on 256x256 crops, spec 6.2).
    "pkd_backbone_r18": _PKD,
    "pkd_backbone_r50": _PKD,
    "pkd_ic_r18": _PKD,
    "pkd_ic_r50": _PKD,
    # genkd.md 6: 3x64x224x224 RGB clips, UCF-101.
    "genkd_phase2": StepSize(frames=64, crop=224, num_classes=101),
    # spectral_kd.md 7, 8.2: 8 segments of 224, Something-Something V2 (174 classes).
    "spectral_r18_r50": StepSize(frames=8, crop=224, num_classes=174),
}

# The CPU preset, at the papers' batch sizes: every step compiles and runs a few steps in a minute
# or two on a 2-core CPU (GenKD about three: 100 s of it compile its two-pass program, at any size).
# XLA reaches 5-15 GFLOP/s there (GenKD's 3D backward pass under 2), so steps must stay far below
# real size (ResNet-50 at 112x112, batch 40 of 3 segments, real width: 730 GFLOP, 54 s a step).
# Reductions from PAPER: 2D steps at 112x112 with a quarter of the width (16 first-stage planes),
# spectral 4 segments instead of 8; GenKD 16 frames (the least the I3D head takes) at 64x64 and a
# quarter of the width (Mixed_5c 256 channels, attention head 128 wide).
CPU: dict[str, StepSize] = {
    "pkd_backbone_r18": _PKD.replace(crop=112, width=0.25),
    "pkd_backbone_r50": _PKD.replace(crop=112, width=0.25),
    "pkd_ic_r18": _PKD.replace(crop=112, width=0.25),
    "pkd_ic_r50": _PKD.replace(crop=112, width=0.25),
    "genkd_phase2": StepSize(frames=16, crop=64, num_classes=101, width=0.25),
    "spectral_r18_r50": StepSize(frames=4, crop=112, num_classes=174, width=0.25),
}

PAPER_BATCH: dict[str, int] = {
    "pkd_backbone_r18": 80,  # pkd_wise.md 6.1: MV and residual ResNet-18, batch 80
    "pkd_backbone_r50": 40,  # pkd_wise.md 6.1: I-frame ResNet-50, batch 40
    "pkd_ic_r18": 32,  # pkd_wise.md 6.2: IC training, batch 32
    "pkd_ic_r50": 32,  # pkd_wise.md 6.2
    "genkd_phase2": 6,  # genkd.md 6: recognition RGB, batch 6
    # spectral_kd.md 8.1: the paper gives no batch size and has no released code; 8.2: TSM's
    # public Something-Something recipe (mit-han-lab/temporal-shift-module), lr 0.01 at batch 64,
    # which configs/spectral_ssv2.py uses.
    "spectral_r18_r50": 64,
}

PRESETS: dict[str, dict[str, StepSize]] = {"paper": PAPER, "cpu": CPU}


def size_of(step: str, preset: str, **overrides: Any) -> StepSize:
  """The preset's size of ``step`` with ``overrides`` (e.g. ``crop=32``) applied."""
  if step not in STEPS:
    raise ValueError(f"unknown step {step!r}; choose from {', '.join(STEPS)}")
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
  return PRESETS[preset][step].replace(**overrides) if overrides else PRESETS[preset][step]

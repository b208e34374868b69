r"""GenKD on THUMOS14 detection: AFSD with the I3D teacher and the Top-heavy I3D student, both
``Mixed_4f`` and ``Mixed_5c`` distilled (genkd.md 3.2, 4.1-4.3, 5.3, 6, 7.3).

  python -m kd_jax.models.convert rgb_imagenet.pt runs/i3d_rgb_imagenet --model i3d
  python -m kd_jax.main --config configs/genkd_thumos14.py \
      --config.teacher.checkpoint=runs/i3d_rgb_imagenet [--workdir runs/genkd_thumos14]
  python -m kd_jax.main --config configs/genkd_thumos14.py:smoke   # CPU check on the prepared data

Data: ``python -m kd_jax.data.prepare thumos14 --manual_dir DIR`` first (the validation set trains,
the test set evaluates; 10 fps, 112x112). Windows of 256 frames, stride 30 in training (kept when
a segment lies wholly inside) and 128 at test; a random 96 crop in training, the centre crop at
test; values in [-1, 1]; AFSD's boundary-consistency (SSL) clip in every training batch.

Stages: phase 1 (teacher + attention heads + CVAEs, GAF's recipe: Adam 1e-5, coupled L2 1e-3,
batch 8, 300 epochs, CVAE Adam 1e-3 b1 0.8, ramp 0.5 e / 300); the Top-I3D student without
distillation (baseline), and with GenKD (Adam 1e-6, L2 1e-3, batch 1, 50 epochs, CVAE Adam 1e-4
b1 0.8, GD 0.01, AD beta 10 on the clip and on the SSL clip, ramp 0.5 min(e, 20) / 20,
``cost_fg + 35 cost_bg``, triplet 0.1, lw 10, cw 1, piou 0.5). Both students start from the
teacher's pyramid / heads and attention heads (dev v8, ``config.student_init='teacher_head'``);
give a converted Top-I3D with ``--config.student.checkpoint`` for the backbone (the official
student is untrainable at lr 1e-6 from random, genkd.md 9 B1). BatchNorm frozen (statistics and
affine). Evaluation: soft-NMS sigma 0.1, top-k 5000, conf 0.01; mAP at tIoU 0.3:0.1:0.7.

Cost: not measured at full size (I3D 82 GMACs, Top-I3D 33 GMACs per 256x96x96 window, plus the
attention heads and CVAEs; pass B runs the network on the clip and the SSL clip, and the teacher
on both for the GenKD student).

Variants: ``smoke`` (tiny networks, 64-frame 32x32 windows, two steps per pass, one epoch per
stage, batch 2; attention GroupNorm with 4 groups, as the tiny ``Mixed_4f`` has 52 channels).
"""

import ml_collections

from kd_jax import train
from kd_jax.methods import genkd_detection


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = train.parse_arg(arg, allowed={"smoke"}, config_file="configs/genkd_thumos14.py")
  config = genkd_detection.base_config()
  return genkd_detection.smoke_variant(config) if "smoke" in variant else config

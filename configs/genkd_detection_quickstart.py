r"""GenKD detection quickstart: phase 1, the baseline student, the GenKD student, evaluation and a
report on generated untrimmed videos, on a CPU.

  python -m kd_jax.main --config configs/genkd_detection_quickstart.py \
      [--workdir runs/genkd_detection_quickstart]
  python -m kd_jax.main --config configs/genkd_detection_quickstart.py:smoke   # test-sized

Data: none to download. ``synthetic_detection`` (4 classes, 64 train + 16 test videos of 256
frames at 64x64, actions of the ``synthetic_actions`` kinds at random times) is generated on first
use into ``data.data_dir`` (default ``data/tfds``); the smoke variant uses its ``tiny`` config.

Networks: tiny AFSD (``tiny=True``: backbone width / 16, pyramid 128 channels) on I3D (teacher)
and Top-heavy I3D (student), tiny attention heads (32 hidden channels, GroupNorm with 4 groups:
the tiny ``Mixed_4f`` has 52 channels) and CVAEs, from random initialisation; 64-frame 48x48
windows (train stride 30, test stride 32), batch 4, 16 steps per pass; phase 1 for 4 epochs, each
student for 1 epoch (both start from the teacher's pyramid and attention heads). Unlike the
THUMOS14 recipe: Adam lr 2e-3 (1e-6 would not move them in minutes), ``bg_weight`` 1 instead of
35, the ``L_rec`` ramp at 0.5 after 2 epochs, and ``fg_norm='none'`` (``F*A`` without the division
by ``sum A``, keeping the head's input at the backbone's scale).

Prints the mAP table of teacher, baseline student, GenKD student and random intervals (chance);
writes ``results.json``, ``report.md`` and ``detections.png`` in the workdir.

Measured on a shared 2-core CPU (load about 5), from nothing (data generation included): 11.5 min;
mAP@0.5 teacher 5.1 %, baseline student 6.1 %, GenKD student 4.6 %, random intervals 2.5 %
(average over tIoU 0.3:0.7: 4.8, 8.2, 6.9 and 3.3 %). The detectors are barely trained at this
budget. Variants: ``smoke``.
"""

import ml_collections

from kd_jax import train
from kd_jax.methods import genkd_detection


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = train.parse_arg(arg, allowed={"smoke"},
                            config_file="configs/genkd_detection_quickstart.py")
  config = genkd_detection.smoke_variant(genkd_detection.base_config())
  config.seed = 0
  d = config.data
  d.name, d.config, d.data_dir, d.auto_prepare = "synthetic_detection", "default", "data/tfds", True
  d.train_split, d.eval_split = "train", "test"
  d.window, d.train_stride, d.test_stride, d.crop_size = 64, 30, 32, 48
  config.steps_per_pass = 16
  # Most of the budget goes to phase 1: the students start from its pyramid and attention heads.
  for block, epochs in ((config.teacher, 4), (config.student, 1)):
    block.epochs = epochs
    block.batch_size = 4
    block.optimizer.learning_rate = 2e-3
  config.teacher.rec_ramp = "official"
  config.loss.rec_ramp_epochs = 2
  config.loss.fg_norm = "none"
  # Measured with the official 35 x cost_bg (lr 1e-3, 30 pass-B steps): foreground cost flat at
  # about 20 and teacher mAP@0.5 0.4 % against 2.5 % for random intervals.
  config.loss.bg_weight = 1.0
  config.eval.batch_size = 8
  config.train.log_every = 4
  # Hundreds of steps: XLA's usual CPU optimisation pays for its longer compilation.
  config.train.cpu_compile = "fast"
  if "smoke" in variant:
    d.config = "tiny"
    d.crop_size = 32
    config.steps_per_pass = 2
    for block in (config.teacher, config.student):
      block.epochs, block.batch_size = 1, 2
    config.eval.batch_size = 2
    config.train.cpu_compile = "fastest"
  return config

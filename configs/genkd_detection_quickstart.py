r"""GenKD detection quickstart: phase 1, the baseline student, the GenKD student, evaluation and a
report on generated untrimmed videos, on a CPU.

  python -m kd_jax.main --config configs/genkd_detection_quickstart.py \
      [--workdir runs/genkd_detection_quickstart]
  python -m kd_jax.main --config configs/genkd_detection_quickstart.py:smoke   # test-sized

Data: none to download. ``synthetic_detection/small`` (4 distinct classes, ``synthetic_actions``
0, 3, 6, 9; 64 train + 16 test videos of 256 frames at 32x32, actions at random times) is
generated on first use into ``data.data_dir`` (default ``data/tfds``); the smoke variant uses its
``tiny`` config.

Networks: tiny AFSD (``tiny=True``: backbone width / 16, pyramid 128 channels) on I3D (teacher)
and Top-heavy I3D (student), tiny attention heads (32 hidden channels, GroupNorm with 4 groups:
the tiny ``Mixed_4f`` has 52 channels) and CVAEs, from random initialisation; 64-frame 32x32
windows (train stride 30, test stride 32), batch 4, 16 steps per pass; phase 1 for 12 epochs, each
student for 1 epoch (both start from the teacher's pyramid and attention heads). Unlike the
THUMOS14 recipe: Adam lr 2e-3 (1e-6 would not move them in minutes), ``bg_weight`` 1 instead of
35, the ``L_rec`` ramp at 0.5 after 2 epochs, ``fg_norm='none'`` (``F*A`` without the division
by ``sum A``, keeping the head's input at the backbone's scale), no SSL clip (``data.ssl``: half
the cost of a network step, no measured loss of mAP), and the backbone BatchNorm trained
(``freeze_bn=False``, ``freeze_bn_affine=False``, running statistics at PyTorch momentum 0.1;
the official backbone is pretrained and frozen, a random one under frozen statistics barely
trains: teacher mAP@0.5 6.2 % with them, 14.0-16.1 % without), its running statistics measured
on 8 training windows at initialisation (``bn_calibration``).

Prints the mAP table of teacher, baseline student, GenKD student and random intervals (chance);
writes ``results.json``, ``report.md`` and ``detections.png`` in the workdir.

Measured on the idle 2-core CPU, from nothing (data generation and an empty XLA cache included):
7 min 9 s (teacher 250 s, baseline student 105 s, GenKD student 35 s, evaluation 22 s).
mAP@0.5 teacher 14.0 %, baseline student 5.3 %, GenKD student 6.1 %, random intervals 2.5 %
(average over tIoU 0.3:0.7: 13.2, 5.9, 5.6 and 3.3 %). The students get one epoch each and stay
near chance; the README has the table. Variants: ``smoke``.
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
  d.name, d.config, d.data_dir, d.auto_prepare = "synthetic_detection", "small", "data/tfds", True
  d.train_split, d.eval_split = "train", "test"
  d.window, d.train_stride, d.test_stride, d.crop_size = 64, 30, 32, 32
  # Measured: the SSL clip doubles the backbone's batch in pass B; without it a step costs about
  # half and the teacher scores as well (mAP@0.5 9.4 % without, 7.8 % with, at 48x48).
  d.ssl = False
  config.steps_per_pass = 16
  # Most of the budget goes to phase 1: the students start from its pyramid and attention heads.
  for block, epochs in ((config.teacher, 12), (config.student, 1)):
    block.epochs = epochs
    block.batch_size = 4
    block.optimizer.learning_rate = 2e-3
    # A random backbone must learn its BatchNorm (measured: teacher mAP@0.5 6.2 % frozen, 14.0-16.1
    # % trained): batch statistics in training, running statistics at PyTorch momentum 0.1 (I3D's
    # 0.01 would barely move them in these few hundred steps), starting from those of 8 training
    # windows (at mean 0 / variance 1 the tiny I3D's Mixed_5c has a standard deviation of about
    # 1e-6, below the pyramid's GroupNorm epsilon, until the statistics catch up).
    block.bn_calibration = 8
    block.kwargs.update(dict(freeze_bn=False, freeze_bn_affine=False, bn_momentum=0.9))
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
    config.steps_per_pass = 2
    for block in (config.teacher, config.student):
      block.epochs, block.batch_size, block.bn_calibration = 1, 2, 2
    config.eval.batch_size = 2
    config.train.cpu_compile = "fastest"
  return config

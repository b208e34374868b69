r"""Smoke run: a short teacher/student distillation on generated sequences, no dataset.

Runs three stages on the full training engine (sharded jit steps, orbax checkpoints, metrics.jsonl,
TensorBoard, results.json): a wide teacher, a narrow student with cross-entropy, and the same student
with cross-entropy + Hinton KD from the frozen teacher.

  python -m kd_jax.main --config configs/smoke.py [--workdir runs/smoke]

Cost: about 30 s on a 2-core CPU. Measured test top-1 (seeds 0/1/2): teacher 0.91/0.92/0.90, CE
student 0.65/0.70/0.66, KD student 0.73/0.78/0.74 (+8 points from distillation). Rerunning on the
same workdir resumes, or re-prints a finished run.
Variants: none (the config is already cheap).
"""

import ml_collections

from kd_jax import train


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"configs/smoke.py has no variant {arg!r}; use configs/smoke.py")
  config = train.engine_config(log_every=50, checkpoint_every=100, max_to_keep=2)
  config.method = "smoke"
  config.seed = 0

  config.smoke = ml_collections.ConfigDict()
  config.smoke.class_seed = 1234
  config.smoke.num_classes = 10
  config.smoke.num_frames = 16
  config.smoke.num_channels = 8
  config.smoke.noise = 2.0
  config.smoke.num_train = 300
  config.smoke.num_test = 2000
  config.smoke.teacher_width = 256
  config.smoke.student_width = 8
  config.smoke.num_steps = 300
  config.smoke.batch_size = 64
  config.smoke.eval_every = 0
  config.smoke.optimizer = train.optimizer_config(name="adam", learning_rate=3e-3)
  config.smoke.temperature = 4.0
  config.smoke.kd_weight = 1.0
  return config

r"""Smoke test: a seconds-long teacher/student distillation on generated sequences, no dataset.

Checks an installation end to end (config, CLI, jit, optax, kd_jax.losses, results.json):

  python -m kd_jax.main --config configs/smoke.py [--workdir runs/smoke]

Cost: about 15 s on a 2-core CPU (teacher ~0.93, CE student ~0.75, KD student ~0.79 top-1). It prints the teacher's, the CE student's and the KD student's
test accuracy. Variants: none (the config is already cheap).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "smoke"):
    raise ValueError(f"configs/smoke.py has no variant {arg!r}; use configs/smoke.py")
  config = ml_collections.ConfigDict()
  config.method = "smoke"
  config.seed = 0

  config.smoke = ml_collections.ConfigDict()
  config.smoke.num_classes = 10
  config.smoke.num_frames = 16
  config.smoke.num_channels = 8
  config.smoke.noise = 1.5
  config.smoke.num_train = 400
  config.smoke.num_test = 2000
  config.smoke.teacher_width = 256
  config.smoke.student_width = 8
  config.smoke.num_steps = 300
  config.smoke.batch_size = 64
  config.smoke.learning_rate = 3e-3
  config.smoke.temperature = 4.0
  config.smoke.kd_weight = 1.0
  return config

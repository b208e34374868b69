r"""Smoke run: a short teacher/student distillation on generated sequences, no dataset.

Runs three stages on the full training engine (sharded jit steps, orbax checkpoints, metrics.jsonl,
TensorBoard, results.json): a wide teacher, a narrow student with cross-entropy, and the same student
with cross-entropy + Hinton KD from the frozen teacher.

  python -m kd_jax.main --config configs/smoke.py [--workdir runs/smoke]

Cost: about 30 s on a 2-core CPU. Measured test top-1 (seeds 0/1/2): teacher 0.91/0.92/0.90, CE
student 0.65/0.70/0.66, KD student 0.73/0.78/0.74 (+8 points from distillation). Rerunning on the
same workdir resumes, or re-prints a finished run.
Variants: ``smoke`` is accepted and changes nothing (the config is already cheap).
"""

import ml_collections

from kd_jax import train


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  train.parse_arg(arg, allowed={"smoke"}, config_file="configs/smoke.py")  # already cheap
  config = train.engine_config(log_every=50, checkpoint_every=100, max_to_keep=2)
  config.method = "smoke"
  config.seed = 0

  config.smoke = ml_collections.ConfigDict(dict(
      # The data: noisy sinusoids, each class with its own frequency, phase and channel mixing.
      class_seed=1234, num_classes=10, num_frames=16, num_channels=8, noise=2.0, num_train=300,
      num_test=2000,
      # The networks and their training.
      teacher_width=256, student_width=8, num_steps=300, batch_size=64, eval_every=0,
      optimizer=train.optimizer_config(name="adam", learning_rate=3e-3),
      temperature=4.0, kd_weight=1.0))
  return config

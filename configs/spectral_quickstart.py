r"""Spectral KD quickstart: the whole method and its ablation on generated videos, on a laptop CPU.

  python -m kd_jax.main --config configs/spectral_quickstart.py [--workdir runs/spectral_quickstart]
  python -m kd_jax.main --config configs/spectral_quickstart.py:smoke   # the test-sized run
  python -m kd_jax.main --config configs/spectral_quickstart.py:seeds   # 3 seeds, mean ± std

Data: ``synthetic_actions`` at a small size (12 classes, 32 train / 12 test clips per class, 32
frames of 64x48), generated and encoded on first use into ``--config.data.data_dir``
(default ``~/tensorflow_datasets``); the smoke variant uses ``synthetic_actions/tiny``.

Runs a tiny TSM-ResNet-50 teacher (CE, 300 steps), then the tiny TSM-ResNet-18 student (150 steps
each, same initialisation and data order) with CE only, with each distillation term alone (logit
KD, temporal spectrum, parameter frequency distribution) and with all of them under learned
uncertainty weighting (the spec's reading of the paper's "collaborative" strategy). ``:full`` adds
all terms under fixed weights and all terms under online mutual learning. It prints the ablation
table and writes ``report.md`` and ``spectra.png`` in the workdir.

Cost on a 2-core CPU: see the README (measured, with the first-use data preparation and
compilation); the smoke variant (2 student stages, 3 steps each) is compilation-bound.
Rerunning on the same workdir resumes, or re-prints a finished run; compiled steps are kept in
``~/.cache/kd_jax/xla``.
``:seeds`` runs seeds 0, 1 and 2 (each in ``seed<S>/`` of the workdir) and reports every number as
mean ± std with whether the distillation effect stands out of the spread between seeds.
Variants: none (the quickstart), ``full``, ``smoke``, ``seeds`` (combinable).
"""

import ml_collections

from kd_jax import train
from kd_jax.methods import spectral


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = train.parse_arg(arg, allowed={"full", "smoke", "seeds"},
                            config_file="configs/spectral_quickstart.py")
  config = spectral.base_config()
  config.train.log_every = 20
  config.train.checkpoint_every = 200
  config.data.crop_size = 48
  config.data.resize_size = 56
  config.data.cache_eval = True
  config.teacher.kwargs = ml_collections.ConfigDict(dict(tiny=True, width=16))
  config.student.kwargs = ml_collections.ConfigDict(dict(tiny=True))
  config.student.model = "tsm_resnet18"  # MobileNetV2's depthwise convs are slow on CPU
  for block, steps in ((config.teacher, 300), (config.student, 150)):
    block.num_steps = steps
    block.batch_size = 16
    block.optimizer = train.optimizer_config(
        name="adam", learning_rate=3e-3, schedule="cosine", warmup_steps=10,
        no_decay=("bias$", "scale$"), grad_clip_norm=20.0)
  config.collab.teacher_lr_multiplier = 0.3
  config.shared_step = True  # one compiled student step for the six non-mutual stages
  config.ablation = ("ce", "kd", "spec", "param", "all")
  if "full" in variant:  # + fixed weights and online mutual learning (about 60 % more time)
    config.ablation += ("all@fixed", "all@mutual")
  if "smoke" in variant:
    config = spectral.smoke_variant(config)
    config.data.config = "tiny"
  if "seeds" in variant:
    config.seeds = (0, 1, 2)
  return config

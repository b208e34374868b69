r"""Spectral KD on Kinetics-400: TSM-ResNet-50 teacher, TSM-MobileNetV2 (or -ResNet-18) student.

  python -m kd_jax.data.prepare kinetics400 --manual_dir ~/downloads/kinetics400 --workers 32
  python -m kd_jax.main --config configs/spectral_kinetics.py[:VARIANT] --workdir gs://bucket/k400

Data: ``kinetics400`` prepared with kd_jax.data.prepare (annotation CSVs + downloaded clips; see
docs/data.md), in ``--config.data.data_dir`` if given,
else ``$KD_JAX_DATA_DIR``, else ``$TFDS_DATA_DIR``, else ~/tensorflow_datasets (docs/data.md).

Recipe (TSM's public Kinetics recipe, spec section 8.2; the paper's own hyper-parameters are
unknown): 8 uniform segments, 224 multi-scale crops with flips, SGD momentum 0.9, lr 0.02 at batch
128, weight decay 1e-4, 50 epochs with x0.1 at epochs 20 and 40, gradient clip 20, dropout 0.5; eval
centre crop 224 of 256, one clip. Start the networks from ImageNet with
``--config.teacher.init_checkpoint`` / ``--config.student.init_checkpoint`` (converted torchvision
weights), or skip the teacher stage with a converted TSM checkpoint
(``--config.teacher.checkpoint``).

Stages: teacher (CE), then the student with CE, KD, spectrum, parameter distribution and all
together (learned uncertainty weighting); every inferred choice is a field of ``config.spec``,
``config.param``, ``config.collab`` and ``config.kd``.

Built by ``tsm_config`` of ``configs/spectral_ssv2.py`` with the numbers below.

Cost: about 94k steps per stage at batch 128 (a TPU pod or a GPU cluster; days on 8 GPUs for the six
stages). Variants: ``r18`` (TSM-ResNet-18 student), ``smoke`` (tiny models, 3 steps per stage, on a
prepared kinetics400; a CPU check of the wiring).
"""

import pathlib

import ml_collections

from kd_jax import train

spectral_ssv2 = train.config_module(pathlib.Path(__file__).with_name("spectral_ssv2.py"))

NUM_TRAIN = 240_436  # Kinetics-400 train clips in the official list (fewer once downloaded)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return spectral_ssv2.tsm_config(
      arg, config_file="configs/spectral_kinetics.py", name="kinetics400",
      num_train=NUM_TRAIN, flip="on",
      epochs=50, batch=128, lr=0.02, weight_decay=1e-4)

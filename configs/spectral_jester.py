r"""Spectral KD on 20BN-Jester V1: TSM-ResNet-50 teacher, TSM-MobileNetV2 (or -ResNet-18) student.

  python -m kd_jax.data.prepare jester --manual_dir ~/downloads/jester --workers 32
  python -m kd_jax.main --config configs/spectral_jester.py[:VARIANT] --workdir gs://bucket/jester

Data: ``jester`` prepared with kd_jax.data.prepare (the official JPEG frame folders are encoded to
MPEG-4 streams; see docs/data.md), in ``--config.data.data_dir`` if given,
else ``$KD_JAX_DATA_DIR``, else ``$TFDS_DATA_DIR``, else ~/tensorflow_datasets (docs/data.md).

Recipe: the spec gives no Jester recipe, so this uses TSM's Something recipe (an inference): 8
uniform segments, 224 multi-scale crops, **no horizontal flip** ("Swiping Left" / "Right"), SGD
momentum 0.9, lr 0.01 at batch 64, weight decay 5e-4, 50 epochs with x0.1 at epochs 20 and 40,
gradient clip 20, dropout 0.5; eval centre crop 224 of 256, one clip. ImageNet initialisation:
``--config.teacher.init_checkpoint`` / ``--config.student.init_checkpoint``; a trained teacher:
``--config.teacher.checkpoint``.

Stages: teacher (CE), then the student with CE, KD, spectrum, parameter distribution and all
together (learned uncertainty weighting).

Built by ``tsm_config`` of ``configs/spectral_ssv2.py`` with the numbers below.

Cost: about 93k steps per stage at batch 64. Variants: ``r18`` (TSM-ResNet-18 student), ``smoke``
(tiny models, 3 steps per stage, on a prepared dataset).
"""

import pathlib

import ml_collections

from kd_jax import train

spectral_ssv2 = train.config_module(pathlib.Path(__file__).with_name("spectral_ssv2.py"))

NUM_TRAIN = 118_562  # Jester V1 train videos


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return spectral_ssv2.tsm_config(
      arg, config_file="configs/spectral_jester.py", name="jester",
      num_train=NUM_TRAIN, flip="off",  # "Swiping Left" / "Swiping Right"
      epochs=50, batch=64, lr=0.01, weight_decay=5e-4)

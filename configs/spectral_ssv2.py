r"""Spectral KD on Something-Something V2: TSM-ResNet-50 teacher, TSM-MobileNetV2 (or -ResNet-18).

  python -m kd_jax.data.prepare something_something_v2 --manual_dir ~/downloads/ssv2 --workers 32
  python -m kd_jax.main --config configs/spectral_ssv2.py[:VARIANT] --workdir gs://bucket/ssv2

Data: ``something_something_v2`` prepared with kd_jax.data.prepare (official webm videos + label
JSONs; see docs/data.md), in ``--config.data.data_dir`` (default ~/tensorflow_datasets).

Recipe (TSM's public Something recipe, spec section 8.2; the paper's own hyper-parameters are
unknown): 8 uniform segments, 224 multi-scale crops, **no horizontal flip** (labels such as "from
left to right"), SGD momentum 0.9, lr 0.01 at batch 64, weight decay 5e-4, 50 epochs with x0.1 at
epochs 20 and 40, gradient clip 20, dropout 0.5; eval centre crop 224 of 256, one clip. ImageNet
initialisation (recommended by TSM): ``--config.teacher.init_checkpoint`` /
``--config.student.init_checkpoint``; a trained teacher: ``--config.teacher.checkpoint``.

Stages: teacher (CE), then the student with CE, KD, spectrum, parameter distribution and all
together (learned uncertainty weighting).

Cost: about 132k steps per stage at batch 64 (a TPU pod or a GPU cluster). Variants: ``r18``
(TSM-ResNet-18 student), ``smoke`` (tiny models, 3 steps per stage, on a prepared dataset).
"""

import ml_collections

from kd_jax.methods import spectral

NUM_TRAIN = 168_913  # Something-Something V2 train videos


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return spectral.paper_config(
      arg, config_file="configs/spectral_ssv2.py", dataset="something_something_v2", flip="off",
      num_train=NUM_TRAIN, epochs=50, batch=64, lr=0.01, weight_decay=5e-4)

r"""Spectral KD on Something-Something V2: TSM-ResNet-50 teacher, TSM-MobileNetV2 (or -ResNet-18).

  python -m kd_jax.data.prepare something_something_v2 --manual_dir ~/downloads/ssv2 --workers 32
  python -m kd_jax.main --config configs/spectral_ssv2.py[:VARIANT] --workdir gs://bucket/ssv2

Data: ``something_something_v2`` prepared with kd_jax.data.prepare (official webm videos + label
JSONs; see docs/data.md), in ``--config.data.data_dir`` if given,
else ``$KD_JAX_DATA_DIR``, else ``$TFDS_DATA_DIR``, else ~/tensorflow_datasets (docs/data.md).

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
``configs/spectral_jester.py`` and ``configs/spectral_kinetics.py`` use this file's ``tsm_config``.
"""

import ml_collections

from kd_jax import train
from kd_jax.methods import spectral

NUM_TRAIN = 168_913  # Something-Something V2 train videos


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return tsm_config(arg, config_file="configs/spectral_ssv2.py", name="something_something_v2",
                    num_train=NUM_TRAIN, flip="off",  # labels such as "from left to right"
                    epochs=50, batch=64, lr=0.01, weight_decay=5e-4)


def tsm_config(arg: str | None, *, config_file: str, name: str, num_train: int, flip: str,
               epochs: int, batch: int, lr: float, weight_decay: float
               ) -> ml_collections.ConfigDict:
  """TSM's public recipe (spec 8.2) on the prepared ``name`` (``num_train`` training videos), and
  its variants ``r18`` (TSM-ResNet-18 student) and ``smoke`` (``spectral.smoke_variant``)."""
  variant = train.parse_arg(arg, allowed={"r18", "smoke"}, config_file=config_file)
  config = spectral.base_config()
  d = config.data
  d.name, d.config, d.eval_split = name, "default", "validation"
  d.flip = flip
  d.num_workers = 8
  # SGD momentum 0.9, ``lr`` at ``batch``, x0.1 at 40 % and 80 % of the epochs, gradient clip 20.
  config = spectral.tsm_recipe(config, num_train=num_train, epochs=epochs, batch=batch, lr=lr,
                               weight_decay=weight_decay)
  config.ablation = ("ce", "kd", "spec", "param", "all")  # after the teacher
  if "r18" in variant:
    config.student.model = "tsm_resnet18"
  if "smoke" in variant:
    config = spectral.smoke_variant(config)
    config.data.num_workers = 0
  return config

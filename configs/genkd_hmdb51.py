r"""GenKD on HMDB-51 (split 1): as ``configs/genkd_ucf101.py`` with 51 classes.

  python -m kd_jax.models.convert rgb_imagenet.pt runs/i3d_rgb_imagenet --model i3d
  python -m kd_jax.models.convert flow_imagenet.pt runs/i3d_flow_imagenet
  python -m kd_jax.main --config configs/genkd_hmdb51.py \
      --config.teacher.checkpoint=runs/i3d_rgb_imagenet \
      --config.flow.teacher.checkpoint=runs/i3d_flow_imagenet [--workdir runs/genkd_hmdb51]
  python -m kd_jax.main --config configs/genkd_hmdb51.py:smoke   # CPU check on the prepared data

Data: ``python -m kd_jax.data.prepare hmdb51/split1 --manual_dir DIR`` and
``python -m kd_jax.data.prepare hmdb51_flow/split1 --manual_dir DIR`` first (docs/data.md).
Both streams, fused as in ``configs/genkd_ucf101.py``; the official HMDB-51 test loads the RGB
student by a 344-entry positional copy, which leaves its attention head random (genkd.md 9.B.4):
here every weight is loaded.
The class count comes from the dataset (51): the official code's hard-coded
``replace_logits(101)`` is a bug (genkd.md 9.B.4) and is not copied; the teacher's converted
Kinetics classifier is replaced by a fresh 51-way one. The official HMDB-51 script additionally
scales frames to a short side of 240 before cropping; the prepared records are used as stored.
Data directory: ``--config.data.data_dir=DIR`` if given, else ``$KD_JAX_DATA_DIR``, else
``$TFDS_DATA_DIR``, else ~/tensorflow_datasets (docs/data.md, "Where the data goes").

Hyper-parameters: the ``recipe`` of ``configs/genkd_ucf101.py`` (loaded here). Cost as that
config's (3.6k training clips per split, so about 40 % of its time).
Variants: ``smoke``, as ``configs/genkd_ucf101.py``'s.
"""

import pathlib

import ml_collections

from kd_jax import train
from kd_jax.methods import genkd

genkd_ucf101 = train.config_module(pathlib.Path(__file__).with_name("genkd_ucf101.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = train.parse_arg(arg, allowed={"smoke"}, config_file="configs/genkd_hmdb51.py")
  config = genkd_ucf101.recipe("hmdb51", "split1")
  return genkd.smoke_variant(config) if "smoke" in variant else config

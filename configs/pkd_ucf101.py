r"""PKD + WISE on UCF-101: the paper's recipe of ``configs/pkd_hmdb.py`` with UCF-101's WISE settings.

  python -m kd_jax.main --config configs/pkd_ucf101.py[:split=N] [--workdir gs://bucket/pkd_ucf1]
  python -m kd_jax.main --config configs/pkd_ucf101.py:smoke   # a few real steps of every stage

Split N is 1, 2 or 3 (default 1); ``--config.splits=1,2,3 --config.seeds=4711,1,736`` runs several
and reports mean and std. The smoke variant trains the full-size networks at 112x112 on the
prepared data, to check a set-up.

Data: UCF-101 prepared once per split (docs/data.md):
  python -m kd_jax.data.prepare ucf101/split1 --manual_dir ~/downloads/ucf101 --workers 8
Data directory: ``--config.data.data_dir=DIR`` if given, else ``$KD_JAX_DATA_DIR``, else
``$TFDS_DATA_DIR``, else ~/tensorflow_datasets (docs/data.md, "Where the data goes").
Initialisation and pipeline: the ``recipe`` of ``configs/pkd_hmdb.py`` (loaded here; converted
Kinetics-400 checkpoints in ``networks.*.init_checkpoint``), with UCF-101's WISE settings (MV/R/I
segments) 3/5/3, 3/3/3, 1/1/1, 1/2/1 and 1/2/2, the weights fitted once per split at 1/1/1 (the
official command line, ``wise.fit_segments``). The protocol switches and the departures from the
official code, with their reasons, are those of ``configs/pkd_hmdb.py``.

Cost: the backbones dominate (510 epochs x 9 537 videos x 3 segments per network): on the order of
a day per split on one modern GPU with enough data-loading cores (``data.num_workers``); decoding
is CPU-bound (docs/data.md). Several splits or seeds multiply it.
"""

import pathlib

import ml_collections

from kd_jax import train
from kd_jax.methods import pkd

pkd_hmdb = train.config_module(pathlib.Path(__file__).with_name("pkd_hmdb.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: '' | 'split=N' | 'smoke' | 'split=N,smoke'."""
  variant = train.parse_arg(arg, allowed=pkd_hmdb.VARIANTS, config_file="configs/pkd_ucf101.py")
  config = pkd_hmdb.recipe("ucf101", split=variant.get("split", 1))
  config.wise.settings = ((3, 5, 3), (3, 3, 3), (1, 1, 1), (1, 2, 1), (1, 2, 2))  # spec 5.4
  # MV/R/I of the official command line (README, wise_ucf101_kinetics_pretrained.py)
  config.wise.fit_segments = (1, 1, 1)
  return pkd.smoke_variant(config) if variant.get("smoke") else config

r"""PKD + WISE on HMDB-51 with the paper's settings (arXiv 2407.02713; specs/pkd_wise.md 6.1-6.3).

  python -m kd_jax.main --config configs/pkd_hmdb.py [--workdir gs://bucket/pkd_hmdb1]
  python -m kd_jax.main --config configs/pkd_hmdb.py:split=2              # split 2 (1, 2 or 3)
  python -m kd_jax.main --config configs/pkd_hmdb.py --config.splits=1,2,3 --config.seeds=4711,1,736
  python -m kd_jax.main --config configs/pkd_hmdb.py:smoke   # a few real steps of every stage (112x112)

Data: HMDB-51 prepared once per split (docs/data.md):
  python -m kd_jax.data.prepare hmdb51/split1 --manual_dir ~/downloads/hmdb51 --workers 8
Initialisation: set ``networks.{residual,mv,iframe}.init_checkpoint`` to converted PyTorch
checkpoints (``python -m kd_jax.models.convert``; the paper starts from Kinetics-400 compressed-domain
checkpoints, spec 9 item 13); left empty, the networks start from random weights and will be far
below the paper's accuracies.

Pipeline: residual ResNet-18, MV ResNet-18 (batch 80) and I-frame ResNet-50 (batch 40) fine-tuned
for 510 epochs (Adam eps 1e-3, coupled L2 1e-4, lr 0.005 / 0.01 / 3e-4 with x0.1 / x0.01 groups,
x0.1 at epochs 150/270/390); ICs for 150 (CE) and 300 (PKD, curriculum MV 0-49, R 50-99, own
100-299) epochs, batch 32, 256x256 training crops; logits and WISE for (MV/R/I segments) 3/5/3,
5/5/3, 1/1/1 and 1/2/2. Model selection: best test-split evaluation reported beside the last.

Cost: the backbones dominate (510 epochs x 3 570 videos x 3 segments per network): on the order of
a day per split on one modern GPU with enough data-loading cores (``data.workers``); decoding is
CPU-bound (docs/data.md). Several splits or seeds multiply it.
"""

import ml_collections

from kd_jax.methods import pkd


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg``: '' | 'split=N' | 'smoke' (a few real steps of every stage, for checking a set-up)."""
  return pkd.paper_config(arg, dataset="hmdb51", display_name="HMDB-51", config_file="configs/pkd_hmdb.py",
                          wise_settings=((3, 5, 3), (5, 5, 3), (1, 1, 1), (1, 2, 2)))  # spec 5.4

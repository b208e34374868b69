r"""Quickstart: the whole PKD + WISE pipeline on generated ``synthetic_actions`` videos, on a CPU.

  python -m kd_jax.main --config configs/quickstart.py [--workdir runs/quickstart]
  python -m kd_jax.main --config configs/quickstart.py:smoke        # < 1 min, for tests
  python -m kd_jax.main --config configs/quickstart.py:seeds        # 3 IC-training seeds

Data: none to download. On first use ``synthetic_actions`` is generated and encoded to real MPEG-4
into ``data.data_dir`` (default ``data/tfds``): 12 classes x (24 train + 12 test) clips of 24 frames
at 64x48 (about 20 s on 2 cores; the smoke variant uses the 4-class ``tiny`` config). The clips
are decoded once into memory (``data.cache_views`` augmented views of each training clip).

Pipeline: tiny residual / motion-vector ResNet-18s and I-frame ResNet-50 (width 8, one block per
stage, random init, 48x48 crops) trained jointly with cross-entropy; IC1-IC3 of each trained with
CE and with PKD (teacher curriculum MV -> R -> own, scaled to the budget; the same number of
epochs for both, the spec's fairness run); logits of the 12 exits for 1, 2 and 3 test segments;
WISE with its ablations. Prints the CE-versus-PKD table and the WISE summary and writes
``results.json``, ``report.md`` and ``tradeoff.png`` in the workdir.

Cost: about 10 minutes on a 2-core CPU (smoke: under a minute). Rerunning on the same workdir
resumes, or re-prints a finished run. ``:seeds`` trains the ICs with seeds 0, 1 and 2 on the same
networks (each in ``seed<S>/``) and reports every number as mean ± std, with whether PKD's gain
over CE stands out of the spread between seeds. Variants: ``smoke``, ``seeds`` (combinable).
"""

import ml_collections

from kd_jax import train
from kd_jax.methods import pkd


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = train.parse_arg(arg, allowed={"smoke", "seeds"}, config_file="configs/quickstart.py")
  config = pkd.base_config()
  config.seed = 0
  config.joint_networks = True
  config.train.log_every = 20
  config.train.checkpoint_every = 100

  d = config.data
  d.name, d.config, d.data_dir, d.auto_prepare = "synthetic_actions", "custom", "data/tfds", True
  d.crop_size, d.resize_size = 48, 0  # eval: centre crop of the stored 64x48 frames
  d.train_sampling = d.ic_train_sampling = "fused"  # one decoded cache serves every stage
  d.eval_sampling = d.logits_sampling = "coviar"
  d.cache_views, d.num_workers = 4, 0

  for name in pkd.NETWORKS:
    n = config.networks[name]
    n.model_kwargs = ml_collections.ConfigDict(dict(width=8, stage_sizes=(1, 1, 1, 1)))
    # Random init: train every layer at the full rate (the paper's x0.01 groups assume a
    # Kinetics-pretrained start).
    n.lr_groups = ((r".*", 1.0),)
    n.lr, n.ic_lr, n.batch_size = 0.005, 0.005, 32
    n.epochs, n.decay_at = 30, (0.6, 0.85)
  config.backbone.eval_every_epochs = 5
  ic = config.ic
  ic.pkd_epochs = ic.ce_epochs = 24
  ic.pkd_decay_at = ic.ce_decay_at = (0.5, 0.75)
  ic.train_crop_size = 0
  ic.eval_every_epochs = 2
  config.wise.settings = ((1, 1, 1), (1, 2, 1), (3, 3, 3))
  config.wise.thresholds = (1.0, 0.9999, 0.999, 0.99, 0.95, 0.9, 0.8)

  if "smoke" in variant:
    d.config = "tiny"  # 4 classes x (3 train + 2 test) clips
    d.crop_size, d.cache_views = 32, 1
    d.train_segments, d.eval_segments = 2, 1
    for name in pkd.NETWORKS:
      n = config.networks[name]
      n.batch_size, n.epochs = 8, 2
    ic.ce_epochs = 2
    ic.pkd_epochs = 6  # teachers: MV for epoch 0, R for epoch 1, own for epochs 2-5
    config.train.log_every = 1
    ic.batch_size = 8
    ic.eval_every_epochs = 1
    config.backbone.eval_every_epochs = 0
    config.logits.batch_size = 8
    config.wise.settings = ((1, 1, 1),)
    config.wise.steps = 50
    config.wise.thresholds = (1.0, 0.9, 0.5)
  if "seeds" in variant:
    config.seeds = (0, 1, 2)
  return config

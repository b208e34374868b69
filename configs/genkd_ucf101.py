r"""GenKD on UCF-101 (split 1): the paper's recognition setting, RGB and flow streams (genkd.md 5-7).

  python -m kd_jax.models.convert rgb_imagenet.pt runs/i3d_rgb_imagenet --model i3d
  python -m kd_jax.models.convert flow_imagenet.pt runs/i3d_flow_imagenet
  python -m kd_jax.main --config configs/genkd_ucf101.py \
      --config.teacher.checkpoint=runs/i3d_rgb_imagenet \
      --config.flow.teacher.checkpoint=runs/i3d_flow_imagenet [--workdir runs/genkd_ucf101]
  python -m kd_jax.main --config configs/genkd_ucf101.py:smoke   # CPU check on the prepared data

Data: ``python -m kd_jax.data.prepare ucf101/split1 --manual_dir DIR`` and, for the flow stream,
``python -m kd_jax.data.prepare ucf101_flow/split1 --manual_dir DIR`` (TV-L1 on the CPU: days for
the whole set, docs/data.md) first; the splits 2 and 3 with ``--config.data.config=split2``.
``--config.flow.enabled=False`` runs the RGB stream alone. Clips: 64 consecutive frames at 224x224, TSN
multi-scale corner crops and flips in training, a centre crop at test; short videos loop-padded.
Data directory: ``--config.data.data_dir=DIR`` if given, else ``$KD_JAX_DATA_DIR``, else
``$TFDS_DATA_DIR``, else ~/tensorflow_datasets (docs/data.md, "Where the data goes").

Stages: phase 1, the I3D teacher from pytorch-i3d's ``rgb_imagenet.pt`` (ImageNet-inflated,
Kinetics-400-trained; the official code's teacher start) with its attention head and CVAE, 40
epochs (the phase-1 recipe is not released: the official student's SGD settings, epochs our
choice, genkd.md 9.B.2); the Top-I3D student from scratch without distillation (baseline), and with
GenKD for 200 epochs. Each epoch is a CVAE pass and a network pass. Official hyper-parameters
(genkd.md 6): SGD lr 1e-3, momentum 0.9, coupled L2 5e-4 on every parameter, constant rate,
batch 6; CVAE Adam lr 1e-4, b1 0.8; GD weight 0.01 (released v8 variant), AD weight 0.1, L_rec
ramp 0.5 * min(e, 20) / 20, KL weight 0.1, double-softmax cross-entropy, batch-global
renormalisation. Every alternative of genkd.md 10 is a ``config.loss`` field (defaults in
``kd_jax.methods.genkd.base_config``).

Cost (analytic): Top-I3D 45 GMACs and I3D 111 GMACs per clip, the attention head 1.8 G and the CVAE
(training only) about 0.1 G; per epoch two passes over 9.5k clips plus the teacher's forward in
pass B: about 1-2 GPU-days on one H100 for the whole run (not measured). The batch of 6 must
divide by the device count (``--config.student.batch_size``). Each pass is one whole data epoch
(``pass_length='epoch'``, the official ``DataLoader(drop_last=False)``: ceil(N / 6) steps, the
partial last batch padded and masked). A device without room for 6 clips trains the same batch
of 6 in micro-batches with ``--config.train.grad_accum_steps=2`` (or 3): the official
``iter_size`` (1 here); the official batch B with iter_size k is batch_size B * k with
grad_accum_steps k here, BatchNorm statistics per micro-batch as there.
Flow stream: after the RGB stages, the flow I3D (from ``flow_imagenet.pt``) and the flow Top-I3D
(from scratch) train with cross-entropy on their plain ``Mixed_5c`` logits, as the official flow
yamls (no teacher or CVAE paths there; ``--config.flow.kd=True`` distils the flow student with
GenKD instead, not the paper's setting). The report gives RGB-only, flow-only and two-stream
top-1 / top-5 of the teacher, the baseline and the GenKD student, each fused with its flow
partner as the official test script (``softmax(l_rgb + l_flow)`` per time step, summed, softmax).
Variants: ``smoke`` (tiny networks from scratch, 16x32x32 clips, one epoch per stage with Adam,
the paper's losses, both streams; a few minutes on a CPU with the prepared datasets).
"""

import ml_collections

from kd_jax import train
from kd_jax.methods import genkd


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = train.parse_arg(arg, allowed={"smoke"}, config_file="configs/genkd_ucf101.py")
  config = recipe("ucf101", "split1")
  return genkd.smoke_variant(config) if "smoke" in variant else config


def recipe(name: str, builder_config: str) -> ml_collections.ConfigDict:
  """The official recognition recipe (genkd.md 5-7) on the prepared ``name/builder_config``."""
  config = genkd.base_config()
  config.seed = 2020  # the official scripts' seed
  d = config.data
  d.name, d.config = name, builder_config
  # 64 consecutive frames; training crops of 224 from the stored frames (no resize), centre at test.
  d.clip_len, d.crop_size, d.resize_size = 64, 224, 0
  d.num_workers, d.read_threads = 8, 2
  # Phase 1 (not released): the student's optimiser; 40 epochs our choice (genkd.md 9.B.2).
  config.teacher.epochs = 40
  config.student.epochs = 200  # phase 2, baseline and GenKD
  config.teacher.batch_size = config.student.batch_size = 6
  # Each pass one whole epoch of DataLoader(shuffle=True, drop_last=False): ceil(N / 6) steps, the
  # last batch partial (padded, masked out); 'stream' for floor(N / 6) steps of one stream.
  config.pass_length = "epoch"
  # iter_size 1. On a smaller device keep batch_size 6 and split it, e.g. 2 micro-batches of 3.
  config.train.grad_accum_steps = 1
  config.teacher.eval_every_epochs = config.student.eval_every_epochs = 5
  for block in (config.teacher, config.student):
    # PyTorch SGD(lr 1e-3, momentum 0.9, weight_decay 5e-4): coupled L2 on every parameter, and a
    # constant rate (the official code has no schedule).
    block.optimizer = train.optimizer_config(name="sgd", learning_rate=1e-3, momentum=0.9,
                                             weight_decay=5e-4)
    block.cvae_optimizer = train.optimizer_config(name="adam", learning_rate=1e-4, b1=0.8,
                                                  b2=0.999, eps=1e-8)
  loss = config.loss
  loss.gd_weight = 0.01  # the released v8 variant's GD weight
  loss.ad_weight, loss.kl_weight = 0.1, 0.1
  loss.rec_max_weight, loss.rec_ramp_epochs = 0.5, 20  # L_rec weight 0.5 * min(e, 20) / 20
  # The second stream (genkd.md 7.2): flow I3D and flow Top-I3D trained with cross-entropy at the
  # official flow recipe (SGD lr 1e-2, momentum 0.9, weight decay 5e-4, batch 12, 200 epochs),
  # fused with each RGB network at test time.
  config.flow.enabled = True
  config.flow.flip = "negate_x"  # 'mirror': the official loader's flip, x not negated
  return config

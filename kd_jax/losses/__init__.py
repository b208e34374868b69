"""kd_jax.losses: knowledge-distillation losses as pure JAX functions, in the style of optax.losses.

Arguments come student first, then teacher, then keyword hyper-parameters. Losses on activations
and logits return per-example values, shape ``[B]`` (or the logits' shape without the class axis),
so the caller picks the reduction; losses with no batch axis return a scalar and say why in their
docstring: ``parameter_frequency_loss`` and ``distribution_divergence`` compare weights, and
``uncertainty_weighted_sum`` combines already reduced terms. The detection losses (AFSD's, in
``detection``) return per-anchor values; ``multisegment_loss`` returns AFSD's scalars, normalised by
the batch's positive count. Everything is computed in at least float32 whatever the input dtype,
and is jit-, vmap- and grad-safe. The teacher side is wrapped in
``jax.lax.stop_gradient`` by the loss itself. Hyper-parameters are validated with a ``ValueError``.
This package imports nothing else of kd_jax, so other JAX projects can use it alone, e.g. inside
their own jitted step:
``kd_jax.losses.hinton_kd_loss(student_logits, teacher_logits, temperature=4.0).mean()``.
"""

from .detection import boundary_bce_loss
from .detection import match_anchors
from .detection import multisegment_loss
from .detection import quality_loss
from .detection import refine_segments
from .detection import refinement_l1_loss
from .detection import refinement_targets
from .detection import segment_iou
from .detection import segment_iou_loss
from .detection import softmax_focal_loss
from .detection import triplet_margin_loss
from .distributions import distribution_divergence
from .distributions import pooled_frequency_distribution
from .distributions import weight_value_distribution
from .generative import attention_distillation_loss
from .generative import cvae_loss
from .generative import generative_distillation_loss
from .logits import hinton_kd_loss
from .logits import progressive_kd_loss
from .logits import soft_target_cross_entropy
from .spectral import dct_matrix
from .spectral import kernel_frequency_distribution
from .spectral import parameter_frequency_loss
from .spectral import temporal_amplitude
from .spectral import temporal_spectrum_loss
from .weighting import uncertainty_weighted_sum

__all__ = [
    "attention_distillation_loss",
    "boundary_bce_loss",
    "cvae_loss",
    "dct_matrix",
    "distribution_divergence",
    "generative_distillation_loss",
    "hinton_kd_loss",
    "kernel_frequency_distribution",
    "match_anchors",
    "multisegment_loss",
    "parameter_frequency_loss",
    "pooled_frequency_distribution",
    "progressive_kd_loss",
    "quality_loss",
    "refine_segments",
    "refinement_l1_loss",
    "refinement_targets",
    "segment_iou",
    "segment_iou_loss",
    "soft_target_cross_entropy",
    "softmax_focal_loss",
    "temporal_amplitude",
    "temporal_spectrum_loss",
    "triplet_margin_loss",
    "uncertainty_weighted_sum",
    "weight_value_distribution",
]

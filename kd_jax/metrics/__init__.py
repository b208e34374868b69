"""kd_jax.metrics: pure evaluation functions (NumPy), e.g. temporal action detection mAP.

    from kd_jax.metrics import mean_average_precision
    maps = mean_average_precision(ground_truth, detections, [0.3, 0.4, 0.5, 0.6, 0.7])
"""

from .detection import average_precision_per_class
from .detection import decode_window
from .detection import interpolated_average_precision
from .detection import mean_average_precision
from .detection import merge_window_detections
from .detection import segment_iou
from .detection import soft_nms
from .detection import window_offsets

__all__ = [
    "average_precision_per_class",
    "decode_window",
    "interpolated_average_precision",
    "mean_average_precision",
    "merge_window_detections",
    "segment_iou",
    "soft_nms",
    "window_offsets",
]

"""Evaluation metrics on panoptic maps: panoptic quality and semantic mean IoU."""

from axial_keras.metrics.mean_iou import MeanIoU
from axial_keras.metrics.panoptic_quality import PanopticQuality

__all__ = ["MeanIoU", "PanopticQuality"]

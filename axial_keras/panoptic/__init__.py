"""Panoptic segmentation: targets, losses, post-processing, the predictor, visualization."""

from axial_keras.panoptic.losses import (BootstrappedCrossEntropy, CenterHeatmapMSE, OffsetL1,
                                         PanopticDeepLabLoss)
from axial_keras.panoptic.postprocessing import PanopticPostProcessor, PostProcessingSettings
from axial_keras.panoptic.predictor import PanopticPredictor
from axial_keras.panoptic.targets import PanopticTargets, panoptic_targets
from axial_keras.panoptic.visualization import (colorize_panoptic, overlay, side_by_side,
                                                write_png)

__all__ = [
    "BootstrappedCrossEntropy", "CenterHeatmapMSE", "OffsetL1", "PanopticDeepLabLoss",
    "PanopticPostProcessor", "PanopticPredictor", "PanopticTargets", "PostProcessingSettings",
    "colorize_panoptic", "overlay", "panoptic_targets", "side_by_side", "write_png",
]

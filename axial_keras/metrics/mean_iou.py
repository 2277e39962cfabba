"""Mean IoU of the semantic part of panoptic maps."""

import keras
from keras import ops

from axial_keras.labels import PanopticLabels
from axial_keras.metrics.panoptic_quality import check_panoptic_maps, widest_int


@keras.saving.register_keras_serializable(package="axial_keras")
class MeanIoU(keras.metrics.IoU):
    """Mean over classes of the semantic IoU, read from panoptic maps.

    `update_state` takes panoptic maps (`class * label_divisor + instance`; pass
    `label_divisor=1` for semantic maps) and compares their classes. Ground-truth pixels of
    `ignore_label` are left out. A predicted `ignore_label` pixel on a labelled ground-truth
    pixel counts against that ground-truth class (a false negative) and for no other class.
    The mean runs over the classes other than `ignore_label` that appear in the ground truth
    or the prediction, as `keras.metrics.MeanIoU` does.

    Args:
        labels: PanopticLabels. Classes `0 .. num_classes - 1`, the label divisor
            (panoptic id = `class * label_divisor + instance`) and the void class.
        name: str. Name of the metric.

    Example:
    >>> miou = MeanIoU(PanopticLabels.from_ids(3, label_divisor=100))
    >>> miou.update_state([[[0, 101], [201, 25500]]], [[[0, 100], [0, 100]]])
    >>> round(float(miou.result()), 4)
    0.5
    """

    def __init__(self, labels: PanopticLabels, name: str = "mean_iou"):
        if not isinstance(labels, PanopticLabels):
            raise TypeError(f"`labels` must be a PanopticLabels, got {type(labels).__name__}.")
        self.labels = labels
        self.label_divisor = labels.label_divisor
        self.ignore_label = labels.ignore_label
        self.num_semantic_classes = labels.num_classes
        # One more confusion-matrix column, `num_classes`, holds void predictions.
        super().__init__(
            num_classes=self.num_semantic_classes + 1,
            target_class_ids=[c for c in range(self.num_semantic_classes)
                              if c != self.ignore_label],
            name=name,
            ignore_class=self.ignore_label,
            dtype=widest_int(),
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the pixels of a batch of panoptic maps to the confusion matrix.

        Args:
            y_true: int array `[batch, height, width]`. Ground-truth panoptic ids.
            y_pred: int array `[batch, height, width]`. Predicted panoptic ids.
            sample_weight: optional weights broadcastable to `y_true`.

        Raises:
            ValueError: the maps differ in shape or hold a class `>= num_classes` other than
                `ignore_label`.
        """
        y_true, y_pred = check_panoptic_maps(
            y_true, y_pred, self.num_semantic_classes, self.label_divisor, self.ignore_label)
        true_class = y_true // self.label_divisor
        pred_class = y_pred // self.label_divisor
        pred_class = ops.where(ops.equal(pred_class, self.ignore_label),
                               self.num_semantic_classes, pred_class)
        super().update_state(true_class, pred_class, sample_weight)

    def get_config(self) -> dict:
        """The constructor arguments."""
        return {"labels": self.labels.get_config(), "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> "MeanIoU":
        return cls(PanopticLabels.from_config(config["labels"]), name=config["name"])

"""Panoptic quality (PQ, SQ, RQ) of panoptic maps, as the COCO and Cityscapes evaluators count it."""

from typing import Any, Dict, Sequence

import keras
import numpy as np
from keras import ops

from axial_keras.labels import PanopticLabels


def widest_int() -> str:
    """The widest integer dtype of the backend: int64, or int32 on JAX without x64."""
    if keras.backend.backend() == "jax":
        import jax
        return "int64" if jax.config.read("jax_enable_x64") else "int32"
    return "int64"


def widest_float() -> str:
    """The widest float dtype of the backend: float64, or float32 on JAX without x64."""
    return "float64" if widest_int() == "int64" else "float32"


def _known_values(x) -> np.ndarray | None:
    """Returns the values of `x` as a NumPy array, or None when `x` is traced (graph, jit)."""
    if isinstance(x, np.ndarray):
        return x
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        if tf.is_symbolic_tensor(x):
            return None
    elif backend == "jax":
        import jax
        if isinstance(x, jax.core.Tracer):
            return None
    return ops.convert_to_numpy(x)


def check_panoptic_maps(y_true, y_pred, num_classes: int, label_divisor: int, ignore_label: int):
    """Converts a pair of panoptic maps to int32 tensors and checks them.

    Shapes are always checked; values only when they are known (eager calls), since a traced
    function cannot raise on them.

    Args:
        y_true: int array `[batch, height, width]`. Ground-truth panoptic ids,
            `class * label_divisor + instance`.
        y_pred: int array `[batch, height, width]`. Predicted panoptic ids.
        num_classes: int. Classes are `0 .. num_classes - 1`.
        label_divisor: int. Panoptic id of (class, instance) is `class * label_divisor + instance`.
        ignore_label: int. The void class; it may lie outside `0 .. num_classes - 1`.

    Returns:
        `(y_true, y_pred)` as int32 tensors.

    Raises:
        ValueError: the shapes differ or are not `[batch, height, width]`, an id is negative,
            or a class other than `ignore_label` is `>= num_classes`.
    """
    checked = []
    for name, x in (("y_true", y_true), ("y_pred", y_pred)):
        values = _known_values(x)
        if values is not None:
            values = np.asarray(values)
            if values.size and values.min() < 0:
                raise ValueError(f"{name} holds the negative panoptic id {values.min()}.")
            classes = values // label_divisor
            bad = classes[(classes >= num_classes) & (classes != ignore_label)]
            if bad.size:
                raise ValueError(
                    f"{name} holds class {bad.min()} (panoptic ids {bad.min() * label_divisor} "
                    f"to {(bad.min() + 1) * label_divisor - 1}), which is neither below "
                    f"num_classes={num_classes} nor ignore_label={ignore_label}.")
        x = ops.cast(x if values is None else values.astype(np.int32), "int32")
        if len(x.shape) != 3:
            raise ValueError(f"{name} must be [batch, height, width]; got shape {x.shape}.")
        checked.append(x)
    y_true, y_pred = checked
    if not all(a is None or b is None or a == b for a, b in zip(y_true.shape, y_pred.shape)):
        raise ValueError(f"y_true shape {y_true.shape} and y_pred shape {y_pred.shape} differ.")
    return y_true, y_pred


def _dense_ranks(ids):
    """Numbers the distinct values of each row.

    Args:
        ids: int tensor `[batch, pixels]`.

    Returns:
        `(ranks, first)`: int32 `[batch, pixels]`, the index of each value among the sorted
        distinct values of its row, and bool `[batch, pixels]`, true at exactly one pixel per
        distinct value of a row (its representative).
    """
    order = ops.argsort(ids, axis=-1)
    sorted_ids = ops.take_along_axis(ids, order, axis=-1)
    starts = ops.not_equal(sorted_ids[:, 1:], sorted_ids[:, :-1])
    starts = ops.pad(starts, [[0, 0], [1, 0]], constant_values=True)
    sorted_ranks = ops.cumsum(ops.cast(starts, "int32"), axis=-1) - 1
    inverse = ops.argsort(order, axis=-1)
    return (ops.take_along_axis(sorted_ranks, inverse, axis=-1),
            ops.take_along_axis(starts, inverse, axis=-1))


@keras.saving.register_keras_serializable(package="axial_keras")
class PanopticQuality(keras.metrics.Metric):
    """Panoptic quality (PQ = SQ x RQ) accumulated over images (PAPER.md section 4).

    Counts exactly what COCO's `panopticapi.evaluation.pq_compute` and Cityscapes'
    `evalPanopticSemanticLabeling` count when each distinct panoptic id of an image is one
    segment:

    - void: every pixel whose class (`id // label_divisor`) is `ignore_label`, in the ground
      truth and in the prediction. Void predicted pixels belong to no segment.
    - crowd: ground-truth pixels of a thing class with instance 0 form that class's crowd
      region of the image. Crowd regions are never matched and are no false negatives. In the
      prediction, a thing pixel with instance 0 is an ordinary segment.
    - a ground-truth and a predicted segment of the same class match (true positive) when
      IoU > 0.5, where the union leaves out the ground-truth void pixels of the predicted
      segment; the match is unique.
    - unmatched non-crowd ground-truth segments are false negatives; an unmatched predicted
      segment is a false positive unless more than half of it lies on ground-truth void or on
      the crowd region of its own class.

    Per class, PQ = sum(IoU of matches) / (TP + FP / 2 + FN / 2), SQ = sum(IoU) / TP (0 without
    matches) and RQ = TP / (TP + FP / 2 + FN / 2). The reported PQ, SQ and RQ are means over the
    classes with TP + FP + FN > 0: all of them, the thing classes (`*_things`) and the others
    (`*_stuff`). Where no class of a group appears its means are 0 (the official scripts
    divide by zero there).

    The statistics are computed with `keras.ops` on fixed shapes (sorts, cumulative sums and
    segment sums, no Python loop over segments), so `update_state` runs eagerly on NumPy
    arrays or tensors, inside `tf.function` (the batch size may be unknown) and under
    `jax.jit`. State and IoUs are float64, pair keys int64; on JAX without `jax_enable_x64`
    they are float32 and int32, which stays exact while (ground-truth segments) x (predicted
    segments) of one image is below 2**31.

    Args:
        labels: PanopticLabels. Classes `0 .. num_classes - 1` (things and stuff), the
            label divisor (panoptic id = `class * label_divisor + instance`) and the void
            class.
        name: str. Name of the metric.
        dtype: str or None. Dtype of the state and results; None: float64 (float32 on JAX
            without x64).

    Example:
    >>> pq = PanopticQuality(PanopticLabels.from_ids(3, [2], label_divisor=100))
    >>> pq.update_state(np.full((1, 4, 4), 201), np.full((1, 4, 4), 205))
    >>> float(pq.result()["pq"])
    1.0
    """

    def __init__(self, labels: PanopticLabels, name: str = "panoptic_quality",
                 dtype: str | None = None):
        if not isinstance(labels, PanopticLabels):
            raise TypeError(f"`labels` must be a PanopticLabels, got {type(labels).__name__}; "
                            "use PanopticQuality.from_ids for loose arguments.")
        super().__init__(name=name, dtype=dtype or widest_float())
        self.labels = labels
        self.num_classes = labels.num_classes
        self.thing_class_ids = labels.thing_class_ids
        self.label_divisor = labels.label_divisor
        self.ignore_label = labels.ignore_label
        self._direction = "up"
        shape = (self.num_classes,)
        self.iou_sum = self.add_variable(shape, "zeros", dtype=self.dtype, name="iou_sum")
        self.true_positives = self.add_variable(shape, "zeros", dtype=self.dtype, name="tp")
        self.false_positives = self.add_variable(shape, "zeros", dtype=self.dtype, name="fp")
        self.false_negatives = self.add_variable(shape, "zeros", dtype=self.dtype, name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds the matches, false positives and false negatives of a batch of images.

        Args:
            y_true: int array `[batch, height, width]`. Ground-truth panoptic ids.
            y_pred: int array `[batch, height, width]`. Predicted panoptic ids.
            sample_weight: unsupported; must be None (kept for the `Metric` signature).

        Raises:
            ValueError: see `check_panoptic_maps`; or a `sample_weight` was given.
        """
        if sample_weight is not None:
            raise ValueError("PanopticQuality takes no sample_weight.")
        y_true, y_pred = check_panoptic_maps(
            y_true, y_pred, self.num_classes, self.label_divisor, self.ignore_label)
        shape = ops.shape(y_true)
        batch, pixels = shape[0], shape[1] * shape[2]
        total = batch * pixels
        gt = ops.reshape(y_true, (-1, pixels))
        pred = ops.reshape(y_pred, (-1, pixels))

        gt_class, pred_class = gt // self.label_divisor, pred // self.label_divisor
        gt_void = ops.equal(gt_class, self.ignore_label)
        pred_void = ops.equal(pred_class, self.ignore_label)
        # Every void pixel gets the same id, -1 (valid ids are >= 0).
        gt = ops.where(gt_void, -1, gt)
        pred = ops.where(pred_void, -1, pred)
        gt_class = ops.where(gt_void, 0, gt_class)
        pred_class = ops.where(pred_void, 0, pred_class)
        is_thing = ops.take(np.isin(np.arange(self.num_classes), self.thing_class_ids), gt_class)
        gt_crowd = is_thing & ops.equal(gt % self.label_divisor, 0) & ~gt_void

        # Segments and (ground truth, prediction) pairs, numbered per image, then made
        # unique over the batch by an offset of `pixels` per image.
        gt_rank, gt_first = _dense_ranks(gt)
        pred_rank, pred_first = _dense_ranks(pred)
        wide = widest_int()
        pred_count = ops.max(pred_rank, axis=-1, keepdims=True) + 1
        pair_key = ops.cast(gt_rank, wide) * ops.cast(pred_count, wide) + ops.cast(pred_rank, wide)
        pair_rank, pair_first = _dense_ranks(pair_key)
        offsets = ops.expand_dims(ops.arange(batch, dtype="int32") * pixels, -1)
        gt_seg, pred_seg, pair_seg = (
            ops.reshape(r + offsets, (-1,)) for r in (gt_rank, pred_rank, pair_rank))
        gt_first, pred_first, pair_first, gt_void, pred_void, gt_crowd = (
            ops.reshape(m, (-1,))
            for m in (gt_first, pred_first, pair_first, gt_void, pred_void, gt_crowd))
        gt_class, pred_class = ops.reshape(gt_class, (-1,)), ops.reshape(pred_class, (-1,))

        def per_segment(values, segments):
            """Sums `values` per segment and hands each pixel its segment's sum."""
            sums = ops.segment_sum(ops.cast(values, "int32"), segments, num_segments=total)
            return ops.take(sums, segments)

        ones = ops.ones_like(gt_seg)
        gt_area = per_segment(ones, gt_seg)
        pred_area = per_segment(ones, pred_seg)
        intersection = per_segment(ones, pair_seg)
        pred_on_void = per_segment(gt_void, pred_seg)
        same_class = ops.equal(gt_class, pred_class)
        pred_on_own_crowd = per_segment(gt_crowd & same_class, pred_seg)

        union = gt_area + pred_area - intersection - pred_on_void
        match = (~gt_void & ~pred_void & ~gt_crowd & same_class
                 & ops.greater(2 * intersection, union))
        gt_matched = per_segment(match, gt_seg) > 0
        pred_matched = per_segment(match, pred_seg) > 0
        true_positive = match & pair_first
        false_negative = gt_first & ~gt_void & ~gt_crowd & ~gt_matched
        false_positive = (pred_first & ~pred_void & ~pred_matched
                          & ops.less_equal(2 * (pred_on_void + pred_on_own_crowd), pred_area))
        # The union is >= 1 wherever `match` holds; the floor only keeps other pixels finite.
        iou = ops.divide(ops.cast(intersection, self.dtype),
                         ops.cast(ops.maximum(union, 1), self.dtype))

        def per_class(values, classes):
            return ops.segment_sum(ops.cast(values, self.dtype), classes,
                                   num_segments=self.num_classes)

        self.iou_sum.assign_add(per_class(ops.where(true_positive, iou, 0), gt_class))
        self.true_positives.assign_add(per_class(true_positive, gt_class))
        self.false_negatives.assign_add(per_class(false_negative, gt_class))
        self.false_positives.assign_add(per_class(false_positive, pred_class))

    def result(self) -> dict:
        """PQ, SQ and RQ: means over all, thing and stuff classes, and per class.

        Returns:
            dict of floats in [0, 1]: `pq, sq, rq, pq_things, sq_things, rq_things, pq_stuff,
            sq_stuff, rq_stuff`, and `per_class_pq, per_class_sq, per_class_rq` of shape
            `[num_classes]` (0 for classes that never appeared).
        """
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        classes = np.arange(self.num_classes)
        appears = ops.greater(tp + fp + fn, 0)
        denominator = tp + 0.5 * fp + 0.5 * fn
        per_class = {
            "pq": ops.divide_no_nan(self.iou_sum, denominator),
            "sq": ops.divide_no_nan(self.iou_sum, tp),
            "rq": ops.divide_no_nan(tp, denominator),
        }
        per_class = {k: ops.where(appears, v, 0) for k, v in per_class.items()}
        things = ops.convert_to_tensor(np.isin(classes, self.thing_class_ids))
        groups = {"": appears,
                  "_things": ops.logical_and(appears, things),
                  "_stuff": ops.logical_and(appears, ops.logical_not(things))}
        results = {}
        for suffix, members in groups.items():
            count = ops.sum(ops.cast(members, self.dtype))
            for key, values in per_class.items():
                results[key + suffix] = ops.divide_no_nan(
                    ops.sum(ops.where(members, values, 0)), count)
        results.update({f"per_class_{k}": v for k, v in per_class.items()})
        return results

    def reset_state(self):
        """Forgets everything accumulated."""
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    @classmethod
    def from_ids(cls, num_classes: int, thing_class_ids: Sequence[int], label_divisor: int,
                 ignore_label: int, **kwargs) -> "PanopticQuality":
        """The DESIGN.md loose-argument form (`PanopticLabels.from_ids` of the arguments)."""
        return cls(PanopticLabels.from_ids(num_classes, thing_class_ids, label_divisor,
                                           ignore_label), **kwargs)

    def get_config(self) -> dict:
        """The constructor arguments."""
        return {"labels": self.labels.get_config(), **super().get_config()}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PanopticQuality":
        config = dict(config)
        return cls(PanopticLabels.from_config(config.pop("labels")), **config)

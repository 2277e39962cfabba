"""Panoptic-DeepLab training targets built from panoptic label maps.

Reference: Cheng et al., "Panoptic-DeepLab", CVPR 2020, as used by Axial-DeepLab
(Wang et al., ECCV 2020). The semantics follow the official implementation
(google-research/deeplab2, `data/sample_generator.py` and `data/dataset_utils.py`),
computed here for a whole batch at once with `keras.ops` only, so the same code runs
under every Keras backend, inside a `tf.data` map and inside a compiled train step.
"""

import math
from typing import Any, Dict, Optional

import keras
from keras import ops

from axial_keras.labels import PanopticLabels

# Stands for "no centre in the window" in the integer squared-distance maps. Adding
# a squared window offset (at most radius ** 2) to it stays inside int32.
_NO_CENTER = 2 ** 30
# Pixel coordinates are summed per instance as `64 * (c // 64) + c % 64` so that the
# exact mean stays in int32 (see `_fits_int32`).
_COORD_BASE = 64


def _concrete_value(x: Any) -> Optional[Any]:
    """Returns `x` as a NumPy value when it is concrete (eager), else None.

    Inside `tf.function` (and so inside `tf.data` maps) or `jax.jit` a tensor has no
    value yet; converting it raises, which is how symbolic tensors are recognised.
    """
    try:
        return ops.convert_to_numpy(x)
    except (NotImplementedError, TypeError):
        return None


def _fits_int32(height: int, width: int) -> bool:
    """Whether the per-instance coordinate sums of a height x width image fit int32."""
    pixels = height * width
    largest_high_sum = pixels * ((max(height, width) - 1) // _COORD_BASE)
    largest_partial = (2 * _COORD_BASE - 1) * pixels
    return max(largest_high_sum, largest_partial) < 2 ** 31


def _rounded_mean(high: Any, low: Any, count: Any) -> Any:
    """Rounds `(_COORD_BASE * high + low) / count` half to even, exactly in int32.

    Args:
        high: int32 tensor [segments], per-segment sums of `coordinate // _COORD_BASE`.
        low: int32 tensor [segments], per-segment sums of `coordinate % _COORD_BASE`.
        count: int32 tensor [segments], pixels per segment (0 gives 0).

    Returns:
        int32 tensor [segments]: the mean coordinate, rounded as `tf.round` rounds
        (ties to even), the way deeplab2 rounds the instance centre.
    """
    count = ops.maximum(count, 1)
    remainder_high = ops.mod(high, count)
    partial = _COORD_BASE * remainder_high + low
    floor = _COORD_BASE * ops.floor_divide(high, count) + ops.floor_divide(partial, count)
    twice_remainder = 2 * ops.mod(partial, count)
    round_up = ops.logical_or(
        twice_remainder > count,
        ops.logical_and(twice_remainder == count, ops.mod(floor, 2) == 1))
    return floor + ops.cast(round_up, "int32")


def _window_min_plus(distance: Any, axis: int, radius: int) -> Any:
    """Min-plus filter along one axis: `min over |d| <= radius of distance[i + d] + d ** 2`.

    Args:
        distance: int32 tensor [batch, height, width] of squared distances.
        axis: 1 (height) or 2 (width).
        radius: half-width of the window in pixels.

    Returns:
        int32 tensor [batch, height, width]; positions beyond the border count as
        `_NO_CENTER`.
    """
    pad_width = [[0, 0], [0, 0], [0, 0]]
    pad_width[axis] = [radius, radius]
    padded = ops.pad(distance, pad_width, constant_values=_NO_CENTER)
    lead = (slice(None),) * axis
    result = distance
    for shift in range(1, radius + 1):
        forward = padded[lead + (slice(radius + shift, (shift - radius) or None),)]
        backward = padded[lead + (slice(radius - shift, -(radius + shift)),)]
        result = ops.minimum(result, ops.minimum(forward, backward) + shift * shift)
    return result


class PanopticTargets:
    """Builds the Panoptic-DeepLab targets and loss weights from panoptic label maps.

    A label id is `class * label_divisor + instance`; void pixels have class
    `ignore_label`; a pixel of a thing class with instance 0 belongs to a crowd region.
    As in deeplab2, each non-crowd thing instance (one panoptic id in one image, even
    if its pixels are not connected) gets:

    - a centre at the mean pixel coordinate of its pixels, rounded half to even;
    - a 2-D Gaussian of standard deviation `sigma` px at that centre, truncated to the
      square window of half-width `radius = floor(3 sigma + 1)` (deeplab2's
      `6 sigma + 3` px kernel); the heatmap is the maximum over instances;
    - offsets (dy, dx) from each of its pixels to the centre;
    - semantic weight `small_instance_weight` on its pixels when it has fewer than
      `small_instance_area` pixels.

    Crowd regions keep their class in `semantic` (weight 1) but get no centre,
    centre weight 0 and offset weight 0. Void pixels get weight 0 in every map.

    Because the heatmap is a maximum of Gaussians it equals
    `exp(-d ** 2 / (2 sigma ** 2))` with `d` the distance to the nearest centre whose
    window holds the pixel; that distance is computed as a separable min-plus filter
    (2 radius + 1 shifts per axis), so no loop runs over instances or images.

    Validation: a wrong rank or a non-integer dtype raises `ValueError` in every
    mode (both are static). A class outside `[0, num_classes)` other than
    `ignore_label` raises `ValueError` when the labels are concrete (eager); inside
    `tf.function`, `tf.data` maps or `jax.jit` values cannot be inspected, and such
    pixels are treated as void (semantic `ignore_label`, all weights 0).

    Limits: centres are computed exactly in int32, which holds for images of up to
    about 16 M pixels (e.g. 4096 x 4096; a larger static shape raises `ValueError`);
    the instance statistics use `batch * (len(thing_class_ids) * label_divisor + 1)`
    segments.

    Args:
        labels: `PanopticLabels`. Valid classes are `[0, num_classes)`; its ignore label
            must be in `[0, label_divisor)`.
        sigma: float. Standard deviation of the centre Gaussian in pixels.
        small_instance_area: int. Instances with fewer pixels are "small".
        small_instance_weight: float. Semantic weight on pixels of small instances.

    Example:

    ```python
    targets = PanopticTargets(PanopticLabels.from_ids(3, thing_class_ids=[1, 2]))
    out = targets(np.full((2, 64, 64), 1001, "int32"))  # one car per image
    out["center_heatmap"].shape  # (2, 64, 64, 1), peak 1.0 at (32, 32) (31.5 rounds to 32)
    ```
    """

    def __init__(self, labels: PanopticLabels, sigma: float = 8.0,
                 small_instance_area: int = 4096, small_instance_weight: float = 3.0):
        if not isinstance(labels, PanopticLabels):
            raise TypeError(f"`labels` must be a PanopticLabels, got {type(labels).__name__}.")
        if not 0 <= labels.ignore_label < labels.label_divisor:
            raise ValueError(f"ignore_label must be in [0, label_divisor={labels.label_divisor}), "
                             f"got {labels.ignore_label}.")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}.")
        self.labels = labels
        self.num_classes = labels.num_classes
        thing_class_ids = list(labels.thing_class_ids)
        self.thing_class_ids = thing_class_ids
        self.label_divisor = labels.label_divisor
        self.ignore_label = labels.ignore_label
        self.sigma = float(sigma)
        self.small_instance_area = int(small_instance_area)
        self.small_instance_weight = float(small_instance_weight)
        self.radius = int(math.floor(3.0 * self.sigma + 1.0))
        thing_index = [-1] * self.num_classes
        for index, class_id in enumerate(thing_class_ids):
            thing_index[class_id] = index
        self._thing_index = thing_index

    def get_config(self) -> Dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            "labels": self.labels.get_config(),
            "sigma": self.sigma,
            "small_instance_area": self.small_instance_area,
            "small_instance_weight": self.small_instance_weight,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PanopticTargets":
        """Creates the builder from `get_config()` output."""
        config = dict(config)
        return cls(PanopticLabels.from_config(config.pop("labels")), **config)

    def _validated(self, panoptic: Any) -> Any:
        """Checks rank, dtype and (when concrete) classes; returns int32 labels."""
        panoptic = ops.convert_to_tensor(panoptic)
        rank = ops.ndim(panoptic)
        if rank != 3:
            raise ValueError("panoptic labels must have shape [batch, height, width], got "
                             f"shape {tuple(panoptic.shape)} (rank {rank}).")
        dtype = keras.backend.standardize_dtype(panoptic.dtype)
        if not dtype.startswith(("int", "uint")):
            raise ValueError(f"panoptic labels must have an integer dtype, got {dtype}.")
        height, width = panoptic.shape[1:]
        if height is not None and width is not None and not _fits_int32(height, width):
            raise ValueError(f"panoptic label shape {tuple(panoptic.shape)} is too large: "
                             "instance coordinate sums would overflow int32.")
        panoptic = ops.cast(panoptic, "int32")
        semantic = ops.floor_divide(panoptic, self.label_divisor)
        invalid = ops.logical_and(
            ops.logical_or(semantic < 0, semantic >= self.num_classes),
            semantic != self.ignore_label)
        # A scalar reduction, so the eager check copies only one value to the host.
        has_invalid = _concrete_value(ops.any(invalid))
        if has_invalid is not None and bool(has_invalid):
            offending = int(ops.convert_to_numpy(
                ops.max(ops.where(invalid, panoptic, -2 ** 31))))
            raise ValueError(
                f"panoptic label {offending} has class {offending // self.label_divisor}, "
                f"outside [0, {self.num_classes}) and not ignore_label={self.ignore_label} "
                f"(label_divisor={self.label_divisor}).")
        return panoptic

    def __call__(self, panoptic: Any) -> Dict[str, Any]:
        """Builds the targets for a batch of panoptic label maps.

        Args:
            panoptic: integer tensor [batch, height, width] of panoptic ids.

        Returns:
            A dict of tensors:
            - `semantic`: int32 [batch, height, width], class per pixel, void (and, in
              graph mode, out-of-range classes) as `ignore_label`.
            - `semantic_weights`: float32 [batch, height, width], 0 on void,
              `small_instance_weight` on small thing instances, 1 elsewhere.
            - `center_heatmap`: float32 [batch, height, width, 1].
            - `center_weights`: float32 [batch, height, width], 0 on void and crowd.
            - `offsets`: float32 [batch, height, width, 2], (dy, dx) from each
              non-crowd thing pixel to its instance centre, 0 elsewhere.
            - `offset_weights`: float32 [batch, height, width], 1 on non-crowd thing
              pixels, 0 elsewhere.

        Raises:
            ValueError: wrong rank, non-integer dtype, or (eagerly) a class outside
                `[0, num_classes)` other than `ignore_label`.
        """
        panoptic = self._validated(panoptic)
        batch, height, width = ops.shape(panoptic)
        divisor = self.label_divisor

        semantic = ops.floor_divide(panoptic, divisor)
        instance = ops.mod(panoptic, divisor)
        void = ops.logical_or(
            semantic == self.ignore_label,
            ops.logical_or(semantic < 0, semantic >= self.num_classes))
        semantic = ops.where(void, self.ignore_label, semantic)
        thing_index = ops.take(ops.convert_to_tensor(self._thing_index, "int32"),
                               ops.clip(semantic, 0, self.num_classes - 1))
        thing = ops.logical_and(thing_index >= 0, ops.logical_not(void))
        crowd = ops.logical_and(thing, instance == 0)
        instance_pixel = ops.logical_and(thing, instance != 0)

        # One segment per (image, thing class, instance id), plus a last one per image
        # that collects every other pixel.
        segments_per_image = len(self.thing_class_ids) * divisor + 1
        num_segments = batch * segments_per_image
        local_segment = ops.where(instance_pixel, thing_index * divisor + instance,
                                  segments_per_image - 1)
        image_index = ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1, 1))
        segment = ops.reshape(local_segment + image_index * segments_per_image, (-1,))

        rows = ops.broadcast_to(ops.reshape(ops.arange(height, dtype="int32"), (1, -1, 1)),
                                ops.shape(panoptic))
        cols = ops.broadcast_to(ops.reshape(ops.arange(width, dtype="int32"), (1, 1, -1)),
                                ops.shape(panoptic))

        def segment_total(values: Any) -> Any:
            return ops.segment_sum(ops.reshape(values, (-1,)), segment, num_segments)

        area = segment_total(ops.ones_like(panoptic))
        center_row = _rounded_mean(segment_total(ops.floor_divide(rows, _COORD_BASE)),
                                   segment_total(ops.mod(rows, _COORD_BASE)), area)
        center_col = _rounded_mean(segment_total(ops.floor_divide(cols, _COORD_BASE)),
                                   segment_total(ops.mod(cols, _COORD_BASE)), area)

        def per_pixel(values: Any) -> Any:
            return ops.reshape(ops.take(values, segment), ops.shape(panoptic))

        offsets = ops.stack([
            ops.where(instance_pixel, per_pixel(center_row) - rows, 0),
            ops.where(instance_pixel, per_pixel(center_col) - cols, 0),
        ], axis=-1)
        small = ops.logical_and(instance_pixel, per_pixel(area) < self.small_instance_area)
        semantic_weights = ops.where(
            void, 0.0, ops.where(small, self.small_instance_weight, 1.0))

        segment_ids = ops.arange(num_segments, dtype="int32")
        is_center = ops.logical_and(
            area > 0, ops.mod(segment_ids, segments_per_image) != segments_per_image - 1)
        center_index = ops.stack(
            [ops.floor_divide(segment_ids, segments_per_image), center_row, center_col],
            axis=-1)
        centers = ops.scatter(center_index, ops.cast(is_center, "float32"),
                              (batch, height, width)) > 0

        squared_distance = ops.where(centers, 0, _NO_CENTER)
        squared_distance = _window_min_plus(squared_distance, 2, self.radius)
        squared_distance = _window_min_plus(squared_distance, 1, self.radius)
        heatmap = ops.where(
            squared_distance < _NO_CENTER,
            ops.exp(ops.cast(squared_distance, "float32") / (-2.0 * self.sigma ** 2)), 0.0)

        return {
            "semantic": semantic,
            "semantic_weights": ops.cast(semantic_weights, "float32"),
            "center_heatmap": ops.expand_dims(heatmap, -1),
            "center_weights": ops.cast(
                ops.logical_not(ops.logical_or(void, crowd)), "float32"),
            "offsets": ops.cast(offsets, "float32"),
            "offset_weights": ops.cast(instance_pixel, "float32"),
        }


def panoptic_targets(panoptic: Any, labels: PanopticLabels, sigma: float = 8.0,
                     small_instance_area: int = 4096,
                     small_instance_weight: float = 3.0) -> Dict[str, Any]:
    """Builds Panoptic-DeepLab targets for a batch of panoptic label maps.

    A functional form of `PanopticTargets`; see that class for the exact semantics.

    Args:
        panoptic: integer tensor [batch, height, width], id = class * label_divisor +
            instance; void = ignore_label * label_divisor; thing instance 0 = crowd.
        labels: `PanopticLabels`. Classes, label divisor and void class.
        sigma: float. Standard deviation of the centre Gaussian in pixels.
        small_instance_area: int. Instances with fewer pixels get a larger weight.
        small_instance_weight: float. Semantic weight on pixels of small instances.

    Returns:
        A dict with `semantic` int32 [batch, height, width], `semantic_weights`
        float32 [batch, height, width], `center_heatmap` float32
        [batch, height, width, 1], `center_weights` float32 [batch, height, width],
        `offsets` float32 [batch, height, width, 2] as (dy, dx) and `offset_weights`
        float32 [batch, height, width].

    Raises:
        ValueError: wrong rank, non-integer dtype, or (eagerly) a class outside
            `[0, num_classes)` other than `ignore_label`.
    """
    return PanopticTargets(labels, sigma=sigma, small_instance_area=small_instance_area,
                           small_instance_weight=small_instance_weight)(panoptic)

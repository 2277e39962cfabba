"""Panoptic-DeepLab post-processing as batched graph ops (no custom op, no Python loop
over images): semantic argmax, centre NMS and top-k, offset-based grouping, majority
class voting, stuff area filtering (PAPER.md section 3, "Post-processing")."""

from typing import Dict, Sequence

import keras
from keras import ops

_FAR = 1e30


class PanopticPostProcessor:
    """Turns Axial-DeepLab outputs into panoptic maps, one image at a time but batched.

    Every step is per image (segment ids are offset by the image index, top-k runs per
    row), so an image's result never depends on its batch mates, and every op is a
    plain `keras.ops` op, so it runs eagerly, inside `tf.function` / a SavedModel, and
    under JAX. The result is deterministic (ties resolve to the lowest index).

    Steps: semantic = argmax of the logits; centre candidates are heatmap pixels above
    `center_threshold` that equal the max-pool of size `nms_kernel` around them; the
    `keep_k_centers` best are kept; every thing pixel moves by its offset (dy, dx) and
    joins the nearest centre; each instance takes the majority thing class of its
    pixels; stuff segments smaller than `stuff_area_limit` pixels, and thing pixels when
    no centre was found, become void.

    Args:
        thing_class_ids: ints. Classes that have instances.
        label_divisor: int. Panoptic id = class * label_divisor + instance (1-based).
        ignore_label: int. Void class; void pixels get `ignore_label * label_divisor`.
        center_threshold: float. Minimum centre score.
        nms_kernel: int. Max-pool window of the centre NMS (odd).
        keep_k_centers: int. Centres kept per image (top-k by score).
        stuff_area_limit: int. Stuff segments with fewer pixels become void.

    Example:
    >>> post = PanopticPostProcessor(thing_class_ids=range(11, 19), label_divisor=1000)
    >>> result = post(model(images))
    >>> result["panoptic"].shape  # [batch, height, width] int32
    """

    def __init__(self, thing_class_ids: Sequence[int], label_divisor: int,
                 ignore_label: int = 255, center_threshold: float = 0.1, nms_kernel: int = 7,
                 keep_k_centers: int = 200, stuff_area_limit: int = 0):
        self.thing_class_ids = tuple(int(c) for c in thing_class_ids)
        if nms_kernel < 1 or nms_kernel % 2 == 0:
            raise ValueError(f"`nms_kernel` must be a positive odd int, got {nms_kernel!r}.")
        if not 0 < keep_k_centers < label_divisor:
            raise ValueError(
                f"`keep_k_centers` ({keep_k_centers}) must be in [1, label_divisor="
                f"{label_divisor}) so instance ids fit in the panoptic id.")
        self.label_divisor = int(label_divisor)
        self.ignore_label = int(ignore_label)
        self.center_threshold = float(center_threshold)
        self.nms_kernel = int(nms_kernel)
        self.keep_k_centers = int(keep_k_centers)
        self.stuff_area_limit = int(stuff_area_limit)

    def get_config(self) -> Dict:
        return {"thing_class_ids": list(self.thing_class_ids),
                "label_divisor": self.label_divisor, "ignore_label": self.ignore_label,
                "center_threshold": self.center_threshold, "nms_kernel": self.nms_kernel,
                "keep_k_centers": self.keep_k_centers, "stuff_area_limit": self.stuff_area_limit}

    def find_centers(self, center_heatmap):
        """Top-k NMS centres: (scores [B, K], y [B, K], x [B, K], valid [B, K])."""
        heat = ops.cast(center_heatmap, "float32")
        if len(heat.shape) == 4:
            heat = heat[..., 0]
        pooled = ops.max_pool(heat[..., None], pool_size=self.nms_kernel, strides=1,
                              padding="same")[..., 0]
        peak = ops.logical_and(ops.equal(heat, pooled), heat > self.center_threshold)
        shape = ops.shape(heat)
        width = shape[2]
        scores = ops.reshape(ops.where(peak, heat, -_FAR), (shape[0], -1))
        # Pad so top-k works on images with fewer pixels than keep_k_centers.
        scores = ops.concatenate(
            [scores, ops.full((shape[0], self.keep_k_centers), -_FAR, dtype="float32")], axis=1)
        values, index = ops.top_k(scores, self.keep_k_centers, sorted=True)
        valid = values > self.center_threshold
        index = ops.cast(index, "int32")
        return values, index // width, index % width, valid

    def __call__(self, outputs: Dict) -> Dict:
        """Post-processes a batch.

        Args:
            outputs: dict with `semantic_logits [B, H, W, C]` (or probabilities),
                `center_heatmap [B, H, W, 1]` and `center_offsets [B, H, W, 2]` (dy, dx).

        Returns:
            dict of int32 `[B, H, W]` maps `panoptic`, `semantic` (void = ignore_label),
            `instance` (0 for stuff and void), float32 `instance_scores [B, H, W]` (the
            centre score of each pixel's instance, 0 elsewhere) and the kept centres
            `center_points [B, K, 2]` (y, x; -1 where fewer were found).
        """
        logits = outputs["semantic_logits"]
        num_classes = logits.shape[-1]
        semantic = ops.cast(ops.argmax(logits, axis=-1), "int32")
        offsets = ops.cast(outputs["center_offsets"], "float32")
        shape = ops.shape(semantic)
        batch, height, width = shape[0], shape[1], shape[2]

        scores, center_y, center_x, valid = self.find_centers(outputs["center_heatmap"])
        k = self.keep_k_centers
        grid_y = ops.cast(ops.arange(height), "float32")[None, :, None]
        grid_x = ops.cast(ops.arange(width), "float32")[None, None, :]
        target_y = grid_y + offsets[..., 0]
        target_x = grid_x + offsets[..., 1]
        cy = ops.where(valid, ops.cast(center_y, "float32"), _FAR)
        cx = ops.where(valid, ops.cast(center_x, "float32"), _FAR)

        def nearest(i, state):
            best, best_index = state
            y = ops.take(cy, i, axis=1)[:, None, None]
            x = ops.take(cx, i, axis=1)[:, None, None]
            distance = ops.square(target_y - y) + ops.square(target_x - x)
            closer = distance < best
            return ops.where(closer, distance, best), ops.where(closer, i, best_index)

        start = (ops.full((batch, height, width), 2 * _FAR * _FAR, dtype="float32"),
                 ops.zeros((batch, height, width), dtype="int32"))
        _, nearest_index = ops.fori_loop(0, k, nearest, start)

        thing_table = ops.convert_to_tensor(
            [c in self.thing_class_ids for c in range(num_classes)], dtype="bool")
        is_thing = ops.take(thing_table, semantic)
        any_center = ops.any(valid, axis=1)[:, None, None]
        instance = ops.where(ops.logical_and(is_thing, any_center), nearest_index + 1, 0)

        # Majority thing class of every instance: counts per (image, instance, class).
        image = ops.arange(batch, dtype="int32")[:, None, None]
        segment = (image * (k + 1) + instance) * num_classes + semantic
        counts = ops.segment_sum(ops.ones((batch * height * width,), dtype="float32"),
                                 ops.reshape(segment, (-1,)), num_segments=batch * (k + 1) * num_classes)
        counts = ops.reshape(counts, (batch, k + 1, num_classes))
        counts = ops.where(thing_table[None, None, :], counts, -1.0)
        instance_class = ops.cast(ops.argmax(counts, axis=-1), "int32")  # [B, K + 1]
        pixel_class = ops.take_along_axis(instance_class, ops.reshape(instance, (batch, -1)), axis=1)
        pixel_class = ops.reshape(pixel_class, (batch, height, width))

        # Stuff area per (image, class).
        stuff_segment = image * num_classes + semantic
        area = ops.segment_sum(ops.ones((batch * height * width,), dtype="float32"),
                               ops.reshape(stuff_segment, (-1,)), num_segments=batch * num_classes)
        pixel_area = ops.take(area, stuff_segment)
        big_stuff = ops.logical_and(ops.logical_not(is_thing),
                                    pixel_area >= float(self.stuff_area_limit))

        void = self.ignore_label * self.label_divisor
        panoptic = ops.where(instance > 0, pixel_class * self.label_divisor + instance,
                             ops.where(big_stuff, semantic * self.label_divisor, void))
        out_semantic = ops.where(ops.equal(panoptic, void), self.ignore_label,
                                 panoptic // self.label_divisor)
        score_table = ops.concatenate([ops.zeros((batch, 1), "float32"),
                                       ops.where(valid, scores, 0.0)], axis=1)
        instance_scores = ops.reshape(
            ops.take_along_axis(score_table, ops.reshape(instance, (batch, -1)), axis=1),
            (batch, height, width))
        points = ops.where(valid[..., None], ops.stack([center_y, center_x], axis=-1), -1)
        return {
            "panoptic": ops.cast(panoptic, "int32"),
            "semantic": ops.cast(out_semantic, "int32"),
            "instance": ops.cast(ops.where(instance > 0, instance, 0), "int32"),
            "instance_scores": instance_scores,
            "center_points": ops.cast(points, "int32"),
        }

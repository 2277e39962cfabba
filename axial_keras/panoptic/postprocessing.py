"""Panoptic-DeepLab post-processing as batched graph ops (no custom op, no Python loop
over images): semantic argmax, centre NMS and top-k, offset-based grouping, majority
class voting, stuff area filtering (PAPER.md section 3, "Post-processing")."""

import dataclasses
from typing import Any, Dict, Optional, Sequence

from keras import ops

from axial_keras.labels import PanopticLabels

_FAR = 1e30
# How the maps are numbered and which semantic map is returned.
CONVENTIONS = {
    "axial_keras": "the `keep_k_centers` best centres by score; instance i is the i-th best "
                   "centre and its panoptic id is class * divisor + i (unique across classes); "
                   "`semantic` is the class of the panoptic map (ignore_label where void).",
    "deeplab2": "deeplab2's evaluation (model/post_processor/panoptic_deeplab.py, pure-TF "
                "merge): centres in raster order; with more than `keep_k_centers` peaks only "
                "those strictly above the k-th best score; nearest centre by float32 "
                "Euclidean norm (first index on ties); instance i is the i-th centre in raster "
                "order; panoptic ids number each class's instances 1, 2, ... in order of their "
                "first pixel (raster order); `semantic` is the plain argmax.",
}


def _max_pool_2d(x, size: int):
    """k x k max-pool ('same') of [B, H, W] as a k x 1 then a 1 x k pool (same maxima).

    Each 1-D pool runs with the other image axis as channels: pooling kernels are
    vectorized over channels, and a single-channel image is their slowest case.
    """
    shape = ops.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    pooled = ops.max_pool(ops.reshape(x, (batch, height, 1, width)), pool_size=(size, 1),
                          strides=1, padding="same")  # over H, W as channels
    pooled = ops.transpose(ops.reshape(pooled, (batch, height, width, 1)), (0, 2, 3, 1))
    pooled = ops.max_pool(pooled, pool_size=(size, 1), strides=1, padding="same")  # over W
    return ops.transpose(pooled, (0, 3, 1, 2))[..., 0]


def _is_in(labels, classes: Sequence[int], num_classes: int):
    """Boolean map of `labels` in `classes`, as comparisons with the runs of consecutive ids."""
    runs = []
    for c in sorted(set(classes)):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    if len(runs) > 4:  # many runs: one table lookup is cheaper than the comparisons
        table = ops.convert_to_tensor([c in classes for c in range(num_classes)], dtype="bool")
        return ops.take(table, labels)
    mask = ops.zeros_like(labels, dtype="bool")
    for first, last in runs:
        mask = ops.logical_or(mask, ops.logical_and(labels >= first, labels <= last))
    return mask


@dataclasses.dataclass(frozen=True)
class PostProcessingSettings:
    """How model outputs become panoptic maps: the one place these settings live.

    The experiment config holds one, a trainer run writes it beside the model
    (`axial_keras.saving`), and export, `export.predict` and the demo read it back.

    Args:
        center_threshold: float. Minimum centre score.
        nms_kernel: int. Max-pool window of the centre NMS (odd).
        keep_k_centers: int. Centres kept per image (top-k by score).
        stuff_area_limit: int. Stuff segments with fewer pixels become void.
        grouping_tile: int. Side of the pixel tiles of the grouping step (speed only:
            every value gives the same result; `PanopticPostProcessor.nearest_center`).
        convention: str. "axial_keras" (default): centres numbered by score, instances
            numbered by centre, `semantic` derived from the panoptic map (void where it
            is void). "deeplab2": deeplab2's evaluation maps bit for bit (`CONVENTIONS`).
    """

    center_threshold: float = 0.1
    nms_kernel: int = 7
    keep_k_centers: int = 200
    stuff_area_limit: int = 0
    grouping_tile: int = 32
    convention: str = "axial_keras"

    def __post_init__(self):
        for name in ("nms_kernel", "keep_k_centers", "stuff_area_limit", "grouping_tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"`{name}` must be an int, got {value!r}.")
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"`nms_kernel` must be a positive odd int, got {self.nms_kernel!r}.")
        if self.keep_k_centers < 1:
            raise ValueError(f"`keep_k_centers` must be positive, got {self.keep_k_centers!r}.")
        if self.grouping_tile < 1:
            raise ValueError(f"`grouping_tile` must be a positive int, got {self.grouping_tile!r}.")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"`convention` must be one of {sorted(CONVENTIONS)}, "
                             f"got {self.convention!r}.")
        object.__setattr__(self, "center_threshold", float(self.center_threshold))

    def get_config(self) -> Dict[str, Any]:
        """A JSON-ready dict; `PostProcessingSettings(**settings.get_config()) == settings`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PostProcessingSettings":
        return cls(**config)


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

    The grouping step compares every thing pixel with its tile's candidate centres in
    a loop of as many rounds as the busiest tile has candidates (`ops.fori_loop` with a
    tensor trip count). With `unroll=True` it runs `keep_k_centers` rounds as a Python
    loop instead (absent candidates never win, so the result is the same): graphs for
    converters (LiteRT, ONNX, the int8 quantizer) then hold no WHILE loop.

    Args:
        labels: `PanopticLabels`. Thing classes, label divisor and void class.
        settings: `PostProcessingSettings` (None: the defaults).
        unroll: bool. Unroll the grouping loop (static trip count, for export).

    Example:
    >>> post = PanopticPostProcessor(CITYSCAPES, PostProcessingSettings(nms_kernel=13))
    >>> result = post(model(images))
    >>> result["panoptic"].shape  # [batch, height, width] int32
    """

    def __init__(self, labels: PanopticLabels, settings: Optional[PostProcessingSettings] = None,
                 unroll: bool = False):
        settings = settings or PostProcessingSettings()
        if not isinstance(labels, PanopticLabels):
            raise TypeError(f"`labels` must be a PanopticLabels, got {type(labels).__name__}; "
                            "use PanopticPostProcessor.from_ids for loose arguments.")
        if settings.keep_k_centers >= labels.label_divisor:
            raise ValueError(
                f"`keep_k_centers` ({settings.keep_k_centers}) must be in [1, label_divisor="
                f"{labels.label_divisor}) so instance ids fit in the panoptic id.")
        self.labels = labels
        self.settings = settings
        self.unroll = bool(unroll)

    @classmethod
    def from_ids(cls, thing_class_ids: Sequence[int], label_divisor: int,
                 ignore_label: int = 255, num_classes: Optional[int] = None,
                 **settings) -> "PanopticPostProcessor":
        """The DESIGN.md loose-argument form: `from_ids(thing_class_ids, label_divisor, ...)`.

        Args:
            thing_class_ids: ints. Classes that have instances.
            label_divisor: int. Panoptic id = class * label_divisor + instance.
            ignore_label: int. Void class.
            num_classes: int. Classes (default: up to the largest thing id).
            **settings: `PostProcessingSettings` fields.
        """
        things = tuple(int(c) for c in thing_class_ids)
        if num_classes is None:
            num_classes = max(things, default=0) + 1
        labels = PanopticLabels.from_ids(num_classes, things, label_divisor, ignore_label)
        return cls(labels, PostProcessingSettings(**settings))

    def get_config(self) -> Dict[str, Any]:
        return {"labels": self.labels.get_config(), "settings": self.settings.get_config(),
                "unroll": self.unroll}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PanopticPostProcessor":
        return cls(PanopticLabels.from_config(config["labels"]),
                   PostProcessingSettings.from_config(config["settings"]), config["unroll"])

    def find_centers(self, center_heatmap):
        """Top-k NMS centres: (scores [B, K], y [B, K], x [B, K], valid [B, K]).

        Ordered by decreasing score, or in raster order under the "deeplab2" convention.
        """
        heat = ops.cast(center_heatmap, "float32")
        if len(heat.shape) == 4:
            heat = heat[..., 0]
        k = self.settings.keep_k_centers
        pooled = _max_pool_2d(heat, self.settings.nms_kernel)
        peak = ops.logical_and(ops.equal(heat, pooled), heat > self.settings.center_threshold)
        shape = ops.shape(heat)
        width = shape[2]
        peak = ops.reshape(peak, (shape[0], -1))
        scores = ops.where(peak, ops.reshape(heat, (shape[0], -1)), -_FAR)
        # Pad so top-k works on images with fewer pixels than keep_k_centers.
        pad = ops.full((shape[0], k), -_FAR, dtype="float32")
        scores = ops.concatenate([scores, pad], axis=1)
        if self.settings.convention == "deeplab2":
            kth = ops.top_k(scores, k, sorted=True)[0][:, k - 1:]
            few = ops.sum(ops.cast(peak, "int32"), axis=1, keepdims=True) <= k
            kept = ops.logical_and(scores > -_FAR, ops.logical_or(few, scores > kth))
            position = ops.cast(ops.arange(ops.shape(scores)[1]), "float32")[None]
            key, index = ops.top_k(ops.where(kept, -position, -_FAR), k, sorted=True)
            valid = key > -_FAR
            values = ops.take_along_axis(scores, index, axis=1)
        else:
            values, index = ops.top_k(scores, k, sorted=True)
            valid = values > self.settings.center_threshold
        index = ops.cast(index, "int32")
        return values, index // width, index % width, valid

    def nearest_center(self, target_y, target_x, is_thing, center_y, center_x, valid):
        """Index of the nearest valid centre of every pixel's offset target, [B, H, W] int32.

        Equals comparing every pixel with every centre in index order and keeping a
        strictly smaller squared distance (float32; under the "deeplab2" convention its
        square root, as deeplab2's `tf.norm`), starting from index 0 at infinite
        distance; only thing pixels' results are meaningful.

        The image is cut into `grouping_tile`-sided tiles. For each tile and centre, the
        squared distance from the centre to the bounding box of the tile's finite
        thing-pixel targets is bounded below and above; a centre whose lower bound
        exceeds the smallest upper bound (with a relative margin far above float32
        rounding) is farther than another centre from every such target, so it can
        neither win nor tie. Each round of the loop compares every pixel with the next
        remaining candidate of its tile, in index order, so there are as many rounds as
        the largest candidate count of a tile.

        Args:
            target_y, target_x: float32 [B, H, W]. Offset targets (pixel + offset).
            is_thing: bool [B, H, W]. Pixels to group.
            center_y, center_x: int32 [B, K]. Centres; valid: bool [B, K].
        """
        tile = self.settings.grouping_tile
        shape = ops.shape(target_y)
        batch, height, width = shape[0], shape[1], shape[2]
        tiles_y = (height + tile - 1) // tile
        tiles_x = (width + tile - 1) // tile
        pad = [[0, 0], [0, tiles_y * tile - height], [0, tiles_x * tile - width]]

        def to_tiles(x):  # [B, H, W] -> [B, tiles, tile * tile]
            x = ops.reshape(ops.pad(x, pad), (batch, tiles_y, tile, tiles_x, tile))
            x = ops.transpose(x, (0, 1, 3, 2, 4))
            return ops.reshape(x, (batch, tiles_y * tiles_x, tile * tile))

        ty, tx = to_tiles(target_y), to_tiles(target_x)
        used = to_tiles(ops.logical_and(is_thing, ops.logical_and(
            ops.isfinite(target_y), ops.isfinite(target_x))))
        y_min = ops.min(ops.where(used, ty, _FAR), axis=-1)[..., None]  # [B, T, 1]
        y_max = ops.max(ops.where(used, ty, -_FAR), axis=-1)[..., None]
        x_min = ops.min(ops.where(used, tx, _FAR), axis=-1)[..., None]
        x_max = ops.max(ops.where(used, tx, -_FAR), axis=-1)[..., None]
        cy = ops.cast(center_y, "float32")[:, None, :]  # [B, 1, K]
        cx = ops.cast(center_x, "float32")[:, None, :]

        def gap(low, high, c):  # distance from c to [low, high], and to its farther end
            near = ops.maximum(ops.maximum(low - c, c - high), 0.0)
            return near, ops.maximum(ops.abs(low - c), ops.abs(high - c))

        near_y, far_y = gap(y_min, y_max, cy)
        near_x, far_x = gap(x_min, x_max, cx)
        lower = ops.square(near_y) + ops.square(near_x)  # [B, T, K]
        upper = ops.where(valid[:, None, :], ops.square(far_y) + ops.square(far_x), _FAR)
        bound = ops.min(upper, axis=-1, keepdims=True)
        candidate = ops.logical_and(
            ops.logical_and(valid[:, None, :], ops.any(used, axis=-1)[..., None]),
            lower <= bound * (1.0 + 1e-4) + 1e-3)
        # Candidates of each tile first, in increasing centre index.
        k = self.settings.keep_k_centers
        index = ops.arange(k, dtype="int32")
        order = ops.where(candidate, k - index, 0)
        _, order = ops.top_k(order, k, sorted=True)
        order = ops.cast(order, "int32")  # [B, T, K]
        count = ops.sum(ops.cast(candidate, "int32"), axis=-1)
        order_y = ops.take_along_axis(ops.broadcast_to(cy, ops.shape(order)), order, axis=-1)
        order_x = ops.take_along_axis(ops.broadcast_to(cx, ops.shape(order)), order, axis=-1)
        euclidean = self.settings.convention == "deeplab2"

        def compare(j, state):
            best, best_index = state
            present = (count > j)[..., None]
            y = ops.where(present, ops.take(order_y, j, axis=2)[..., None], _FAR)
            x = ops.where(present, ops.take(order_x, j, axis=2)[..., None], _FAR)
            distance = ops.square(ty - y) + ops.square(tx - x)
            if euclidean:  # deeplab2 compares norms: a square root can make a tie
                distance = ops.sqrt(distance)
            closer = distance < best
            # minimum == where(closer, distance, best): a distance is NaN only for a NaN
            # target, and then it is NaN for every centre (the pixel keeps index 0).
            return (ops.minimum(best, distance),
                    ops.where(closer, ops.take(order, j, axis=2)[..., None], best_index))

        start = (ops.full(ops.shape(ty), float("inf"), dtype="float32"),
                 ops.zeros(ops.shape(ty), dtype="int32"))
        if self.unroll:  # every centre slot, as a Python loop: absent ones never win
            state = start
            for j in range(k):
                state = compare(j, state)
            nearest = state[1]
        else:
            _, nearest = ops.fori_loop(0, ops.max(count), compare, start)
        nearest = ops.reshape(nearest, (batch, tiles_y, tiles_x, tile, tile))
        nearest = ops.reshape(ops.transpose(nearest, (0, 1, 3, 2, 4)),
                              (batch, tiles_y * tile, tiles_x * tile))
        return nearest[:, :height, :width]

    def _numbers_in_class(self, instance, instance_class, counts):
        """deeplab2's instance numbers, [B, K + 1] int32: 1, 2, ... within each class, in
        order of every instance's first pixel in raster order (slot 0: unused).

        Args:
            instance: int32 [B, H, W]. Instance slot of every pixel (0: none).
            instance_class: int32 [B, K + 1]. Class of every slot.
            counts: float32 [B, K + 1, C]. Pixels of every (slot, class).
        """
        shape = ops.shape(instance)
        batch, pixels = shape[0], shape[1] * shape[2]
        slots = self.settings.keep_k_centers + 1
        image = ops.arange(batch, dtype="int32")[:, None]
        position = ops.cast(ops.arange(pixels), "float32")[None]
        # First pixel of every slot, as minus the largest negated position.
        first = -ops.segment_max(
            ops.reshape(ops.broadcast_to(-position, (batch, pixels)), (-1,)),
            ops.reshape(image * slots + ops.reshape(instance, (batch, pixels)), (-1,)),
            num_segments=batch * slots)
        first = ops.reshape(first, (batch, slots))
        present = ops.logical_and(ops.sum(counts, axis=-1) > 0,
                                  ops.arange(slots, dtype="int32")[None] > 0)
        before = ops.logical_and(
            ops.logical_and(present[:, None, :], first[:, None, :] < first[:, :, None]),
            ops.equal(instance_class[:, None, :], instance_class[:, :, None]))  # [B, i, j]
        return 1 + ops.sum(ops.cast(before, "int32"), axis=-1)

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
        if num_classes is not None and max(self.labels.thing_class_ids, default=-1) >= num_classes:
            raise ValueError(f"The logits have {num_classes} classes but thing class "
                             f"{max(self.labels.thing_class_ids)} is named by the labels.")
        # First index of the largest logit. Top-1 is one pass over the logits, where
        # ops.argmax adds three more (it orders -0.0 below +0.0, which top-1 calls a tie).
        semantic = ops.cast(ops.top_k(logits, 1)[1][..., 0], "int32")
        offsets = ops.cast(outputs["center_offsets"], "float32")
        shape = ops.shape(semantic)
        batch, height, width = shape[0], shape[1], shape[2]

        scores, center_y, center_x, valid = self.find_centers(outputs["center_heatmap"])
        k = self.settings.keep_k_centers
        grid_y = ops.cast(ops.arange(height), "float32")[None, :, None]
        grid_x = ops.cast(ops.arange(width), "float32")[None, None, :]
        target_y = grid_y + offsets[..., 0]
        target_x = grid_x + offsets[..., 1]
        is_thing = _is_in(semantic, self.labels.thing_class_ids, num_classes)
        nearest_index = self.nearest_center(target_y, target_x, is_thing, center_y, center_x,
                                            valid)
        any_center = ops.any(valid, axis=1)[:, None, None]
        instance = ops.where(ops.logical_and(is_thing, any_center), nearest_index + 1, 0)

        # Every pixel's result depends only on its (image, instance, class) segment:
        # count the segments, decide each one's panoptic id, and look the ids up.
        image = ops.arange(batch, dtype="int32")[:, None, None]
        segment = (image * (k + 1) + instance) * num_classes + semantic
        counts = ops.segment_sum(ops.ones((batch * height * width,), dtype="float32"),
                                 ops.reshape(segment, (-1,)), num_segments=batch * (k + 1) * num_classes)
        counts = ops.reshape(counts, (batch, k + 1, num_classes))
        thing_table = ops.convert_to_tensor(
            [c in self.labels.thing_class_ids for c in range(num_classes)], dtype="bool")
        # Majority thing class of every instance (ties to the lowest class).
        instance_class = ops.cast(ops.top_k(ops.where(thing_table, counts, -1.0), 1)[1][..., 0],
                                  "int32")  # [B, K + 1]
        # Stuff pixels all have instance 0, so counts[:, 0] holds every stuff class's area.
        big_stuff = ops.logical_and(ops.logical_not(thing_table),
                                    counts[:, 0, :] >= float(self.settings.stuff_area_limit))  # [B, C]
        void = self.labels.void_id
        instance_ids = ops.arange(k + 1, dtype="int32")[None, :, None]
        class_ids = ops.arange(num_classes, dtype="int32")[None, None, :]
        numbers = instance_ids
        if self.settings.convention == "deeplab2":
            numbers = self._numbers_in_class(instance, instance_class, counts)[:, :, None]
        table = ops.where(instance_ids > 0,
                          instance_class[:, :, None] * self.labels.label_divisor + numbers,
                          ops.where(big_stuff[:, None, :], class_ids * self.labels.label_divisor, void))
        panoptic = ops.take(ops.reshape(table, (-1,)), segment)
        if self.settings.convention == "deeplab2":
            out_semantic = semantic
        else:
            out_semantic = ops.where(ops.equal(panoptic, void), self.labels.ignore_label,
                                     panoptic // self.labels.label_divisor)
        score_table = ops.concatenate([ops.zeros((batch, 1), "float32"),
                                       ops.where(valid, scores, 0.0)], axis=1)
        instance_scores = ops.take(ops.reshape(score_table, (-1,)), image * (k + 1) + instance)
        points = ops.where(valid[..., None], ops.stack([center_y, center_x], axis=-1), -1)
        return {
            "panoptic": ops.cast(panoptic, "int32"),
            "semantic": ops.cast(out_semantic, "int32"),
            "instance": ops.cast(instance, "int32"),
            "instance_scores": instance_scores,
            "center_points": ops.cast(points, "int32"),
        }

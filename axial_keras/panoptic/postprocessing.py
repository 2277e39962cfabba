"""Panoptic-DeepLab post-processing as batched graph ops (no custom op, no Python loop
over images): semantic argmax, centre NMS and top-k, offset-based grouping, majority
class voting, stuff area filtering (PAPER.md section 3, "Post-processing")."""

import dataclasses
from typing import Any, Dict, Optional, Sequence

import keras
from keras import ops

from axial_keras.labels import PanopticLabels

_FAR = 1e30
# Centres tried as dominators of each grouping row (`PanopticPostProcessor._row_candidates`).
_DOMINATORS = 4
# Stages of the grouping rounds, each on 3/4 of the rows of the last (`_staged_rounds`).
_STAGES = 16
# Runs of rows the semantic argmax is cut into (`_first_argmax`).
_ARGMAX_CHUNKS = 32
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


def _first_argmax(x):
    """First index of the largest value along the last axis: [..., C] -> int32 [...].

    Top-1 is the cheapest exact argmax (ops.argmax adds three passes to order -0.0 below
    +0.0, which top-1 calls a tie), but TensorFlow's top-1 finds the indices in one serial
    loop: it runs on `_ARGMAX_CHUNKS` runs of rows, which the inter-op threads take side by
    side.
    """
    shape = ops.shape(x)
    rows = ops.reshape(x, (-1, shape[-1]))
    size = ops.shape(rows)[0]
    cuts = [size * i // _ARGMAX_CHUNKS for i in range(_ARGMAX_CHUNKS + 1)]
    parts = [ops.top_k(rows[first:last], 1)[1][:, 0] for first, last in zip(cuts[:-1], cuts[1:])]
    return ops.reshape(ops.cast(ops.concatenate(parts, axis=0), "int32"), shape[:-1])


def _count(ids, length: int, builtin_only: bool):
    """How often each of [0, length) occurs in int32 `ids` (any shape): [length] int32.

    TensorFlow counts with `bincount` (a parallel histogram, some 25x faster on CPU than
    the serial scatter of `segment_sum`), except in graphs for converters
    (`builtin_only`), which know `segment_sum` only; JAX takes `segment_sum`, since
    Keras' JAX `bincount` cannot be traced (its length comes from the values).
    """
    ids = ops.reshape(ids, (-1,))
    if keras.backend.backend() == "tensorflow" and not builtin_only:
        return ops.bincount(ids, minlength=length)
    return ops.segment_sum(ops.ones_like(ids), ids, num_segments=length)


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


def _to_rows(x, tile: int):
    """[B, H, W] -> [B, tiles, tile * tile]: the image's tile-sided tiles, padded at the
    bottom and right, one row each in raster order."""
    shape = ops.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    tiles_y, tiles_x = (height + tile - 1) // tile, (width + tile - 1) // tile
    x = ops.pad(x, [[0, 0], [0, tiles_y * tile - height], [0, tiles_x * tile - width]])
    x = ops.transpose(ops.reshape(x, (batch, tiles_y, tile, tiles_x, tile)), (0, 1, 3, 2, 4))
    return ops.reshape(x, (batch, tiles_y * tiles_x, tile * tile))


def _tile_centres(height, width, tile: int):
    """Centres (y, x) of the tiles of `_to_rows`, float32 [1, tiles, 1] each."""
    tiles_x = (width + tile - 1) // tile
    index = ops.arange(((height + tile - 1) // tile) * tiles_x)
    return tuple(ops.cast(i * tile, "float32")[None, :, None] + (tile - 1) / 2
                 for i in (index // tiles_x, index % tiles_x))


def _from_rows(rows, tile: int, height, width):
    """The inverse of `_to_rows`: [B, tiles, tile * tile] -> [B, height, width]."""
    batch = ops.shape(rows)[0]
    tiles_y, tiles_x = (height + tile - 1) // tile, (width + tile - 1) // tile
    x = ops.reshape(rows, (batch, tiles_y, tiles_x, tile, tile))
    x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4)), (batch, tiles_y * tile, tiles_x * tile))
    return x[:, :height, :width]


def _staged_rounds(count, compare, start, rows):
    """`compare(j, state, rows)` for j in [0, count[r]) on every row r, batched.

    The rows are sorted by decreasing count; stage s runs on the first N (3/4)^s of
    them (all of them at s = 0), up to the largest count of the rows it is the last to
    run on, so that a row runs little more than the rounds it needs (the rows of the last
    of the `_STAGES` stages excepted). A round a row does not need must leave its state
    as it is (compare it with an absent candidate, which never wins).

    Args:
        count: int32 [N]. Rounds each row needs.
        compare: callable(j, state, rows) -> state. One round of every given row.
        start: callable(rows[0]) -> state. The start state: a tuple of [N, ...] tensors.
        rows: tuple of [N, ...] tensors. What the rounds read.

    Returns:
        The final state, rows in their given order.
    """
    order = ops.argsort(-count)
    rows = tuple(ops.take(x, order, axis=0) for x in rows)
    count = ops.concatenate([ops.take(count, order), ops.zeros((1,), "int32")])
    state, size, first, done = start(rows[0]), ops.shape(order)[0], 0, []
    for stage in range(_STAGES):
        keep = (3 * size + 3) // 4
        if stage == _STAGES - 1 or (isinstance(size, int) and keep == size):
            keep = 0  # the last stage (known early when the row count is static)
        last = count[keep]  # the most rounds among the rows this stage is the last to run
        part = tuple(x[:size] for x in rows)
        state = ops.fori_loop(first, last, lambda j, s, part=part: compare(j, s, part), state)
        done.append(tuple(x[keep:] for x in state))
        state, size, first = tuple(x[:keep] for x in state), keep, last
        if isinstance(size, int) and size == 0:
            break
    restore = ops.argsort(order)
    return tuple(ops.take(ops.concatenate(parts[::-1], axis=0), restore, axis=0)
                 for parts in zip(*done))


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

    The grouping step compares every thing pixel with its tile's candidate centres, in
    loops (`ops.fori_loop` with tensor trip counts) that run each tile about as many
    rounds as it has candidates. With `unroll=True` it runs `keep_k_centers` rounds as a
    Python loop instead (absent candidates never win, so the result is the same) and
    counts with builtin ops only: graphs for converters (LiteRT, ONNX, the int8
    quantizer) then hold no WHILE loop.

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

        The image is cut into `grouping_tile`-sided tiles, one row of pixels each; each
        row gets its candidate centres (`_row_candidates`), and round j compares every
        pixel of a row with the row's j-th candidate (`_staged_rounds` runs as many rounds
        per row as it has candidates). With `unroll=True` every row runs
        `keep_k_centers` rounds in a Python loop instead (absent candidates never win, so
        the result is the same): graphs for converters then hold no WHILE loop.

        Args:
            target_y, target_x: float32 [B, H, W]. Offset targets (pixel + offset).
            is_thing: bool [B, H, W]. Pixels to group.
            center_y, center_x: int32 [B, K]. Centres; valid: bool [B, K].
        """
        tile = self.settings.grouping_tile
        shape = ops.shape(target_y)
        height, width = shape[1], shape[2]
        ty, tx = _to_rows(target_y, tile), _to_rows(target_x, tile)
        # A target whose coordinates overflow their sum is at infinite distance from every
        # centre (it keeps index 0, like a NaN one): it is left out of the row boxes.
        used = _to_rows(ops.logical_and(is_thing, ops.isfinite(target_y + target_x)), tile)
        # The row boxes hold the tiles' centres too (one masked copy per axis finds both
        # ends), as good as the targets' own boxes wherever offsets point near the pixel.
        centre_y, centre_x = _tile_centres(height, width, tile)
        box_y, box_x = ops.where(used, ty, centre_y), ops.where(used, tx, centre_x)
        order, order_y, order_x, count = self._row_candidates(box_y, box_x, used, center_y,
                                                              center_x, valid)
        euclidean = self.settings.convention == "deeplab2"

        def compare(j, state, rows):
            best, best_index = state
            ty, tx, order_y, order_x, order = rows
            y = ops.take(order_y, j, axis=1)[:, None]
            x = ops.take(order_x, j, axis=1)[:, None]
            distance = ops.square(ty - y) + ops.square(tx - x)
            if euclidean:  # deeplab2 compares norms: a square root can make a tie
                distance = ops.sqrt(distance)
            closer = distance < best
            # minimum == where(closer, distance, best): a distance is NaN only for a NaN
            # target, and then it is NaN for every centre (the pixel keeps index 0).
            return (ops.minimum(best, distance),
                    ops.where(closer, ops.take(order, j, axis=1)[:, None], best_index))

        def start(ty):  # every pixel at infinite distance from centre 0
            return (ops.full(ops.shape(ty), float("inf"), dtype="float32"),
                    ops.zeros(ops.shape(ty), dtype="int32"))

        rows = tuple(ops.reshape(x, (-1, ops.shape(x)[-1]))
                     for x in (ty, tx, order_y, order_x, order))
        if self.unroll:
            state = start(rows[0])
            for j in range(self.settings.keep_k_centers):
                state = compare(j, state, rows)
            nearest = state[1]
        else:
            nearest = _staged_rounds(ops.reshape(count, (-1,)), compare, start, rows)[1]
        return _from_rows(ops.reshape(nearest, ops.shape(ty)), tile, height, width)

    def _row_candidates(self, box_y, box_x, used, center_y, center_x, valid):
        """The centres that can be nearest to a row's targets, in increasing index.

        The box of a row's points (its used targets and any others) bounds every used
        target's squared distance to a centre c' by that of the box's farthest corner
        (`upper`). A centre c is dominated by c' when, at each of the four corners, its
        squared distance exceeds c''s by more than a margin (relative 1e-4, far above
        float32 rounding): the difference of the two squared distances is affine in the
        target, so it is then above the margin at every target of the box, where c is
        strictly farther than c' (also after a square root) and can neither win nor tie.
        The `_DOMINATORS` valid centres of smallest `upper` are tried as c'; the valid
        centres none of them dominates are the candidates (none in a row without used
        targets).

        Args:
            box_y, box_x: float32 [B, T, P]. Points of each row's box.
            used: bool [B, T, P]. Whether the row has used targets (any over P).
            center_y, center_x: int32 [B, K]. Centres; valid: bool [B, K].

        Returns:
            `order` int32 [B, T, K] (the candidates' indices first), their coordinates
            `order_y`, `order_x` float32 [B, T, K] (_FAR after the last candidate) and
            the candidate `count` int32 [B, T].
        """
        k = self.settings.keep_k_centers
        cy = ops.cast(center_y, "float32")[:, None, :]  # [B, 1, K]
        cx = ops.cast(center_x, "float32")[:, None, :]
        # Squared distances along y and x from every centre to the box's ends: [B, T, K].
        y_low = ops.square(ops.min(box_y, axis=-1)[..., None] - cy)
        y_high = ops.square(ops.max(box_y, axis=-1)[..., None] - cy)
        x_low = ops.square(ops.min(box_x, axis=-1)[..., None] - cx)
        x_high = ops.square(ops.max(box_x, axis=-1)[..., None] - cx)
        upper = ops.where(valid[:, None, :],
                          ops.maximum(y_low, y_high) + ops.maximum(x_low, x_high), float("inf"))
        dominators = ops.top_k(-upper, min(_DOMINATORS, k), sorted=False)[1]  # [B, T, D]

        def at_dominators(x):  # [B, T, K] -> [B, T, D, 1]
            return ops.take_along_axis(x, dominators, axis=-1)[..., None]

        def each(x):  # [B, T, K] -> [B, T, 1, K]
            return x[:, :, None, :]

        # The smallest excess over the four corners (the y end and the x end of the corner
        # minimize their own terms), [B, T, D, K].
        excess = (ops.minimum(each(y_low) - at_dominators(y_low),
                              each(y_high) - at_dominators(y_high))
                  + ops.minimum(each(x_low) - at_dominators(x_low),
                                each(x_high) - at_dominators(x_high)))
        # Below 1e37 every term above is finite (centres lie in the image).
        bound = at_dominators(upper)
        margin = ops.where(bound < 1e37, bound * 1e-4 + 1e-3, float("inf"))
        candidate = ops.logical_and(
            ops.logical_and(valid[:, None, :], ops.any(used, axis=-1)[..., None]),
            ops.logical_not(ops.any(excess > margin, axis=2)))
        index = ops.arange(k, dtype="int32")
        order = ops.cast(ops.top_k(ops.where(candidate, k - index, 0), k, sorted=True)[1], "int32")
        count = ops.sum(ops.cast(candidate, "int32"), axis=-1)
        present = index < count[..., None]
        # The candidates' coordinates, looked up in the centres of all images at once.
        flat = order + ops.arange(ops.shape(order)[0], dtype="int32")[:, None, None] * k

        def coordinate(c):
            return ops.where(present, ops.take(ops.reshape(c, (-1,)), flat), _FAR)

        return order, coordinate(cy), coordinate(cx), count

    def _numbers_in_class(self, instance, instance_class, counts):
        """deeplab2's instance numbers, [B, K + 1] int32: 1, 2, ... within each class, in
        order of every instance's first pixel in raster order (slot 0: unused).

        Args:
            instance: int32 [B, H, W]. Instance slot of every pixel (0: none).
            instance_class: int32 [B, K + 1]. Class of every slot.
            counts: int32 [B, K + 1, C]. Pixels of every (slot, class).
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
        semantic = _first_argmax(logits)
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
        segments = (k + 1) * num_classes
        image = ops.arange(batch, dtype="int32")[:, None, None]
        segment = instance * num_classes + semantic + image * segments
        counts = ops.reshape(_count(segment, batch * segments, self.unroll),
                             (batch, k + 1, num_classes))
        thing_table = ops.convert_to_tensor(
            [c in self.labels.thing_class_ids for c in range(num_classes)], dtype="bool")
        # Majority thing class of every instance (ties to the lowest class).
        instance_class = ops.cast(ops.top_k(ops.where(thing_table, counts, -1), 1)[1][..., 0],
                                  "int32")  # [B, K + 1]
        # Stuff pixels all have instance 0, so counts[:, 0] holds every stuff class's area.
        big_stuff = ops.logical_and(ops.logical_not(thing_table),
                                    counts[:, 0, :] >= self.settings.stuff_area_limit)  # [B, C]
        void = self.labels.void_id
        instance_ids = ops.arange(k + 1, dtype="int32")[None, :, None]
        class_ids = ops.arange(num_classes, dtype="int32")[None, None, :]
        numbers = instance_ids
        if self.settings.convention == "deeplab2":
            numbers = self._numbers_in_class(instance, instance_class, counts)[:, :, None]
        table = ops.where(instance_ids > 0,
                          instance_class[:, :, None] * self.labels.label_divisor + numbers,
                          ops.where(big_stuff[:, None, :], class_ids * self.labels.label_divisor, void))
        if self.settings.convention == "deeplab2":
            semantic_table = ops.broadcast_to(class_ids, ops.shape(table))
        else:
            semantic_table = ops.where(ops.equal(table, void), self.labels.ignore_label,
                                       table // self.labels.label_divisor)
        score_table = ops.concatenate([ops.zeros((batch, 1), "float32"),
                                       ops.where(valid, scores, 0.0)], axis=1)
        score_table = ops.broadcast_to(score_table[:, :, None], ops.shape(table))
        # One lookup of both ids (a two-column take costs little more than one column).
        ids = ops.take(ops.reshape(ops.stack([table, semantic_table], axis=-1), (-1, 2)),
                       segment, axis=0)
        points = ops.where(valid[..., None], ops.stack([center_y, center_x], axis=-1), -1)
        return {
            "panoptic": ids[..., 0],
            "semantic": ids[..., 1],
            "instance": ops.cast(instance, "int32"),
            "instance_scores": ops.take(ops.reshape(score_table, (-1,)), segment),
            "center_points": ops.cast(points, "int32"),
        }

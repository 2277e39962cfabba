"""Synthetic Cityscapes-like scenes: model outputs for timing the panoptic post-processing,
panoptic labels for timing a training step.

`street_scene` imitates what a trained model gives on a Cityscapes frame: stuff bands
(road, building, sky, ...), `num_instances` thing instances (boxes of thing classes),
one Gaussian centre peak per instance (sigma 8, as the training targets), offsets that
point from every instance pixel to its centre with a little noise, and noisy logits.
`street_panoptic` is the panoptic label map of the same layout (`class * label_divisor +
instance`). `noise_scene` is the adversarial input: random logits, a random heatmap
(every local maximum is a centre) and random offsets, so that thing pixels of one tile
point far and wide.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

CITYSCAPES_THINGS = tuple(range(11, 19))
# One thing instance: centre (y, x), box rows [top, bottom) and columns [left, right), class.
Box = Tuple[int, int, int, int, int, int, int]


def _street_layout(rng: np.random.RandomState, height: int, width: int, num_classes: int,
                   thing_class_ids: Sequence[int], num_instances: int
                   ) -> Tuple[np.ndarray, List[Box]]:
    """Stuff bands painted over by thing boxes: (semantic int64 [H, W], the boxes in paint
    order; a later box covers an earlier one)."""
    stuff = [c for c in range(num_classes) if c not in thing_class_ids]
    semantic = np.zeros((height, width), np.int64)
    bands = np.sort(rng.choice(np.arange(1, height), size=len(stuff) - 1, replace=False))
    for band, (top, bottom) in enumerate(zip(np.r_[0, bands], np.r_[bands, height])):
        semantic[top:bottom] = stuff[band]
    centres: List[Tuple[int, int]] = []
    for _ in range(1000 * num_instances):
        if len(centres) == num_instances:
            break
        cy, cx = rng.randint(8, height - 8), rng.randint(8, width - 8)
        if any(abs(cy - y) < 14 and abs(cx - x) < 14 for y, x in centres):
            continue  # peaks closer than the NMS window would merge
        centres.append((cy, cx))
    if len(centres) < num_instances:
        raise ValueError(f"{num_instances} centres 14 px apart do not fit in {height}x{width}.")
    boxes = []
    for cy, cx in centres:
        half_h, half_w = rng.randint(6, 40), rng.randint(6, 30)
        top, bottom = max(cy - half_h, 0), min(cy + half_h + 1, height)
        left, right = max(cx - half_w, 0), min(cx + half_w + 1, width)
        thing = int(rng.choice(thing_class_ids))
        semantic[top:bottom, left:right] = thing
        boxes.append((cy, cx, top, bottom, left, right, thing))
    return semantic, boxes


def street_scene(height: int = 1025, width: int = 2049, num_classes: int = 19,
                 thing_class_ids: Sequence[int] = CITYSCAPES_THINGS, num_instances: int = 200,
                 seed: int = 0) -> Dict[str, np.ndarray]:
    """Model-like outputs of one image: dict of `[1, H, W, *]` float32 arrays."""
    rng = np.random.RandomState(seed)
    semantic, boxes = _street_layout(rng, height, width, num_classes, thing_class_ids,
                                     num_instances)
    offsets = rng.normal(scale=2.0, size=(height, width, 2)).astype("float32")
    heat = np.zeros((height, width), "float32")
    yy, xx = np.mgrid[-24:25, -24:25]
    peak = np.exp(-(yy ** 2 + xx ** 2) / (2 * 8.0 ** 2)).astype("float32")
    for cy, cx, top, bottom, left, right, _ in boxes:
        box_y, box_x = np.mgrid[top:bottom, left:right]
        offsets[top:bottom, left:right, 0] += cy - box_y
        offsets[top:bottom, left:right, 1] += cx - box_x
        y0, x0 = max(cy - 24, 0), max(cx - 24, 0)
        y1, x1 = min(cy + 25, height), min(cx + 25, width)
        window = peak[y0 - cy + 24: y1 - cy + 24, x0 - cx + 24: x1 - cx + 24]
        heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], window)
    logits = rng.normal(scale=0.5, size=(height, width, num_classes)).astype("float32")
    logits[np.arange(height)[:, None], np.arange(width)[None, :], semantic] += 4.0
    return {"semantic_logits": logits[None], "center_heatmap": heat[None, ..., None],
            "center_offsets": offsets[None]}


def street_panoptic(height: int, width: int, num_classes: int = 19,
                    thing_class_ids: Sequence[int] = CITYSCAPES_THINGS,
                    num_instances: int = 20, label_divisor: int = 1000,
                    seed: int = 0) -> np.ndarray:
    """Panoptic labels int32 `[H, W]` of a street layout: stuff `class * label_divisor`,
    the i-th box `class * label_divisor + i + 1` where no later box covers it."""
    semantic, boxes = _street_layout(np.random.RandomState(seed), height, width, num_classes,
                                     thing_class_ids, num_instances)
    panoptic = semantic.astype(np.int32) * label_divisor
    for instance, (_, _, top, bottom, left, right, thing) in enumerate(boxes, 1):
        panoptic[top:bottom, left:right] = thing * label_divisor + instance
    return panoptic


def noise_scene(height: int = 1025, width: int = 2049, num_classes: int = 19,
                offset_scale: float = 20.0, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random outputs of one image (worst case for the grouping): dict of `[1, H, W, *]`."""
    rng = np.random.RandomState(seed)
    return {
        "semantic_logits": rng.normal(size=(1, height, width, num_classes)).astype("float32"),
        "center_heatmap": rng.uniform(size=(1, height, width, 1)).astype("float32"),
        "center_offsets": rng.normal(scale=offset_scale,
                                     size=(1, height, width, 2)).astype("float32"),
    }

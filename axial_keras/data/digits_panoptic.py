"""Digits-panoptic: a small panoptic segmentation set built from scikit-learn's digits.

Every image is generated on the fly from the 1797 8x8 handwritten digits bundled with
scikit-learn (no download), deterministically from `(split, seed, image index)`.

Scene, painted back to front:

1. Two textured "stuff" regions split by a random wavy boundary: `sand` (grainy, warm
   beige) and `water` (blue, striped).
2. In half of the images, a small grey ellipse of void pixels (`ignore_label`).
3. In 30% of the images, a crowd: a cluster of 3-5 small overlapping digits of one class,
   labelled as a single group with instance id 0.
4. 2-6 digits, the "thing" instances. Each one is an 8x8 digit upsampled bilinearly to a
   random side of 22-44% of the image (14-28 px at 64x64), given a random colour and pasted
   at a position that is random, just touching an earlier digit, or overlapping one. Later
   digits occlude earlier ones. A digit's mask is its upsampled intensity > 0.3.

The panoptic map holds the visible pixels only: `class_id * label_divisor + instance_id`,
with instance ids numbered 1, 2, ... per image over all classes together, in paste order
(so an instance id alone identifies an instance within its image). Stuff pixels and crowd
pixels have instance id 0; void pixels are `ignore_label * label_divisor`. A digit or crowd
whose visible area falls below `MIN_VISIBLE_AREA` pixels is dropped: its remaining pixels
become void, since they show digit strokes that are neither stuff nor a usable instance.

The train and test splits draw their digits from disjoint pools, the same stratified split
of the 1797 digits that `axial_keras.data.load_digits` uses, so held-out evaluation never
sees a training digit.

Example:
>>> images, panoptic = generate_digits_panoptic(8, split="train")
>>> images.shape, panoptic.shape
((8, 64, 64, 3), (8, 64, 64))
"""

import functools
from typing import TYPE_CHECKING, List, NamedTuple, Optional, Tuple

import numpy as np

from axial_keras.data.digits import test_mask
from axial_keras.labels import PanopticClass, PanopticLabels
from axial_keras.panoptic.postprocessing import PostProcessingSettings

if TYPE_CHECKING:
    import tensorflow as tf


DIGITS_PANOPTIC = PanopticLabels(
    classes=tuple(PanopticClass(digit, f"digit_{digit}", True) for digit in range(10))
    + (PanopticClass(10, "sand", False), PanopticClass(11, "water", False)),
    label_divisor=256,
    ignore_label=255,
)
"""The digits-panoptic label space: things `digit_0` .. `digit_9`, stuff `sand`, `water`."""

DIGITS_POST_PROCESSING = PostProcessingSettings(
    center_threshold=0.5, nms_kernel=11, keep_k_centers=16, stuff_area_limit=16)
"""Post-processing of digits-panoptic scenes (at most 6 digits and a crowd, 14-28 px):
the settings of the `digits_panoptic` experiment and of the `model.fit` demo."""

DIGITS_AXIAL_BEYOND_STRIDE = 16
"""`axial_beyond_stride` of the `axial_deeplab_tiny` backbone that the `digits_panoptic`
experiment and the `model.fit` demo train: 3x3 convolutions below stride 16 and axial
attention in the stride-16 stage (deeplab2's Axial-SWideRNet layout). Digits of 14-28 px
are told apart by local stroke shapes, which the convolutions learn much faster than
attention from stride 4 on (the registry default)."""

SAND_CLASS_ID = 10
WATER_CLASS_ID = 11
VOID_ID = DIGITS_PANOPTIC.void_id
SPLITS = ("train", "test")
MIN_IMAGE_SIZE = 32
MIN_VISIBLE_AREA = 10
MASK_THRESHOLD = 0.3
VOID_PROBABILITY = 0.5
CROWD_PROBABILITY = 0.3

_DIGIT_SIZE = (0.22, 0.44)  # Digit side as a fraction of the image side.
_CROWD_DIGIT_SIZE = (0.14, 0.2)
_PLACEMENT_MODES = ("random", "touch", "overlap")
_PLACEMENT_PROBABILITIES = (0.4, 0.3, 0.3)


class _Digit(NamedTuple):
    """One pasted digit: where it went, its full (amodal) mask, and its final label."""

    class_id: int
    source: int  # Index into scikit-learn's digits.
    top: int
    left: int
    mask: np.ndarray  # bool [size, size], before occlusion.
    segment_id: int  # Final panoptic id of its visible pixels (VOID_ID if dropped).
    is_crowd: bool


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    """Returns scikit-learn's digits as float32 [1797, 8, 8] in [0, 1] and int32 labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=2)
def _split_indices(split: str) -> np.ndarray:
    """Indices into scikit-learn's digits of one split's pool.

    The same stratified split as `axial_keras.data.load_digits` (20% of each class held out
    for the test split, fixed seed).
    """
    _, labels = _sklearn_digits()
    test = test_mask(labels)
    indices = np.flatnonzero(test if split == "test" else ~test)
    indices.flags.writeable = False
    return indices


@functools.lru_cache(maxsize=None)
def _resize_matrix(size: int) -> np.ndarray:
    """Bilinear (half-pixel centres) interpolation matrix float32 [size, 8]."""
    source = np.clip((np.arange(size) + 0.5) * 8.0 / size - 0.5, 0.0, 7.0)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, 7)
    weight = (source - low).astype(np.float32)
    matrix = np.zeros((size, 8), np.float32)
    rows = np.arange(size)
    np.add.at(matrix, (rows, low), 1.0 - weight)
    np.add.at(matrix, (rows, high), weight)
    return matrix


def _validate(num_images: int, split: str, image_size: int, seed: int) -> None:
    """Raises ValueError for arguments `generate_digits_panoptic` cannot use."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) \
            or num_images <= 0:
        raise ValueError(f"`num_images` must be a positive int, got {num_images!r}.")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"`image_size` must be an int >= {MIN_IMAGE_SIZE}, "
                         f"got {image_size!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")


def _background(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Paints the two stuff regions; returns float32 [size, size, 3] and int32 labels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    centre_y, centre_x = rng.uniform(0.3, 0.7, 2) * size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    across = (x - centre_x) * np.cos(angle) + (y - centre_y) * np.sin(angle)
    along = (y - centre_y) * np.cos(angle) - (x - centre_x) * np.sin(angle)
    wave = rng.uniform(0.02, 0.1) * size * np.sin(
        rng.uniform(1.0, 3.0) * 2.0 * np.pi * along / size + rng.uniform(0.0, 2.0 * np.pi))
    water = (across + wave) > 0

    sand = np.array([196.0, 176.0, 128.0]) + rng.uniform(-12.0, 12.0, 3)
    blotches = 14.0 * (np.sin(2.0 * np.pi * rng.uniform(2.0, 4.0) * x / size
                              + rng.uniform(0.0, 2.0 * np.pi))
                       * np.sin(2.0 * np.pi * rng.uniform(2.0, 4.0) * y / size
                                + rng.uniform(0.0, 2.0 * np.pi)))
    sand = sand + (blotches + rng.normal(0.0, 10.0, (size, size)))[..., None]

    stripe_angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(6.0, 10.0) * size / 64.0
    stripes = 28.0 * np.sin(2.0 * np.pi * (x * np.cos(stripe_angle) + y * np.sin(stripe_angle))
                            / period + rng.uniform(0.0, 2.0 * np.pi))
    sea = np.array([48.0, 98.0, 168.0]) + rng.uniform(-12.0, 12.0, 3)
    sea = sea + stripes[..., None] + rng.normal(0.0, 5.0, (size, size, 3))

    image = np.where(water[..., None], sea, sand).astype(np.float32)
    label = np.where(water, WATER_CLASS_ID, SAND_CLASS_ID) * DIGITS_PANOPTIC.label_divisor
    return image, label.astype(np.int32)


def _paint_void(rng: np.random.Generator, image: np.ndarray, label: np.ndarray) -> None:
    """Paints a small grey ellipse of void pixels in place."""
    size = label.shape[0]
    y, x = np.mgrid[0:size, 0:size]
    centre_y, centre_x = rng.uniform(0.0, size, 2)
    radius_y, radius_x = rng.uniform(2.0, 5.0, 2) * size / 64.0
    blob = ((y - centre_y) / radius_y) ** 2 + ((x - centre_x) / radius_x) ** 2 <= 1.0
    image[blob] = rng.uniform(100.0, 150.0) + rng.normal(0.0, 20.0, (int(blob.sum()), 1))
    label[blob] = VOID_ID


def _render_digit(source: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Upsamples one digit; returns its intensity float32 [size, size] and bool mask."""
    images, _ = _sklearn_digits()
    matrix = _resize_matrix(size)
    intensity = matrix @ images[source] @ matrix.T
    return intensity, intensity > MASK_THRESHOLD


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random fairly bright RGB colour, float [3] in [0, 255]."""
    colour = rng.uniform(20.0, 255.0, 3)
    return colour * (rng.uniform(200.0, 255.0) / colour.max())


def _paint(image: np.ndarray, label: np.ndarray, intensity: np.ndarray, mask: np.ndarray,
           top: int, left: int, colour: np.ndarray, segment_id: int) -> None:
    """Pastes a shaded digit over `image` and `label` (in place) where `mask` holds."""
    size = mask.shape[0]
    window = (slice(top, top + size), slice(left, left + size))
    image[window][mask] = (0.55 + 0.45 * np.clip(intensity[mask], 0.0, 1.0))[:, None] * colour
    label[window][mask] = segment_id


def _row_extents(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a bool [h, w] mask: any pixel set, first and last set column."""
    any_set = mask.any(axis=1)
    first = np.argmax(mask, axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    return any_set, first, last


def _touching_position(rng: np.random.Generator, target: _Digit, mask: np.ndarray,
                       image_size: int) -> Optional[Tuple[int, int]]:
    """A top-left corner where `mask` touches `target`'s mask without overlapping it.

    The new digit is slid along one axis (side picked at random) against the target until
    the two masks are 4-adjacent in at least one row (or column). Returns None when no such
    position keeps the digit inside the image.
    """
    vertical = bool(rng.integers(2))
    before = bool(rng.integers(2))  # Left of (or above) the target.
    target_mask, new_mask = target.mask, mask
    target_cross, target_along = target.top, target.left
    if vertical:
        target_mask, new_mask = target_mask.T, new_mask.T
        target_cross, target_along = target.left, target.top
    size, target_size = new_mask.shape[0], target_mask.shape[0]
    low = max(0, target_cross - size + 1)
    high = min(image_size - size, target_cross + target_size - 1)
    if low > high:
        return None
    cross = int(rng.integers(low, high + 1))
    start = max(cross, target_cross)
    stop = min(cross + size, target_cross + target_size)
    target_any, target_first, target_last = _row_extents(
        target_mask[start - target_cross:stop - target_cross])
    new_any, new_first, new_last = _row_extents(new_mask[start - cross:stop - cross])
    shared = target_any & new_any
    if not shared.any():
        return None
    if before:
        along = int(np.min(target_along + target_first[shared] - new_last[shared] - 1))
    else:
        along = int(np.max(target_along + target_last[shared] - new_first[shared] + 1))
    if not 0 <= along <= image_size - size:
        return None
    return (along, cross) if vertical else (cross, along)


def _position(rng: np.random.Generator, placed: List[_Digit], mask: np.ndarray,
              image_size: int) -> Tuple[int, int]:
    """Top-left corner for the next digit: random, touching or overlapping an earlier one."""
    size = mask.shape[0]
    mode = rng.choice(_PLACEMENT_MODES, p=_PLACEMENT_PROBABILITIES) if placed else "random"
    if mode != "random":
        target = placed[int(rng.integers(len(placed)))]
        if mode == "touch":
            position = _touching_position(rng, target, mask, image_size)
            if position is not None:
                return position
        else:
            target_size = target.mask.shape[0]
            centre = (np.array([target.top, target.left]) + target_size / 2.0
                      + rng.uniform(-0.5, 0.5, 2) * target_size)
            top, left = np.clip(np.round(centre - size / 2.0), 0, image_size - size).astype(int)
            return int(top), int(left)
    top, left = rng.integers(0, image_size - size + 1, 2)
    return int(top), int(left)


def _render(rng: np.random.Generator, pool: np.ndarray, pool_labels: np.ndarray,
            image_size: int) -> Tuple[np.ndarray, np.ndarray, List[_Digit]]:
    """Renders one image.

    Returns:
        uint8 RGB `[image_size, image_size, 3]`, its int32 panoptic map
        `[image_size, image_size]`, and its digits in paste order (crowd members first).
    """
    divisor = DIGITS_PANOPTIC.label_divisor
    image, label = _background(rng, image_size)
    if rng.random() < VOID_PROBABILITY:
        _paint_void(rng, image, label)

    crowd: List[_Digit] = []
    if rng.random() < CROWD_PROBABILITY:
        class_id = int(rng.integers(10))
        members = pool[pool_labels == class_id]
        centre = rng.uniform(0.25, 0.75, 2) * image_size
        low, high = (max(6, round(f * image_size)) for f in _CROWD_DIGIT_SIZE)
        for source in rng.choice(members, size=int(rng.integers(3, 6)), replace=False):
            size = int(rng.integers(low, high + 1))
            corner = centre - size / 2.0 + rng.uniform(-0.5, 0.5, 2) * size
            top, left = np.clip(np.round(corner), 0, image_size - size).astype(int)
            intensity, mask = _render_digit(int(source), size)
            _paint(image, label, intensity, mask, top, left, _random_colour(rng),
                   class_id * divisor)
            crowd.append(_Digit(class_id, int(source), int(top), int(left), mask,
                                class_id * divisor, True))

    low, high = (max(8, round(f * image_size)) for f in _DIGIT_SIZE)
    things: List[_Digit] = []  # Provisional ids: class * divisor + paste number.
    for number in range(1, int(rng.integers(2, 7)) + 1):
        choice = int(rng.integers(len(pool)))
        source, class_id = int(pool[choice]), int(pool_labels[choice])
        intensity, mask = _render_digit(source, int(rng.integers(low, high + 1)))
        top, left = _position(rng, things, mask, image_size)
        segment_id = class_id * divisor + number
        _paint(image, label, intensity, mask, top, left, _random_colour(rng), segment_id)
        things.append(_Digit(class_id, source, top, left, mask, segment_id, False))

    # Drop segments that are too small to learn from; renumber the rest 1, 2, ...
    if crowd:
        visible = label == crowd[0].segment_id
        if np.count_nonzero(visible) < MIN_VISIBLE_AREA:
            label[visible] = VOID_ID
            crowd = [digit._replace(segment_id=VOID_ID) for digit in crowd]
    next_instance = 1
    for index, digit in enumerate(things):
        visible = label == digit.segment_id
        if np.count_nonzero(visible) < MIN_VISIBLE_AREA:
            segment_id = VOID_ID
        else:
            segment_id = digit.class_id * divisor + next_instance
            next_instance += 1
        label[visible] = segment_id
        things[index] = digit._replace(segment_id=segment_id)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label, crowd + things


def _generate(num_images: int, split: str, image_size: int,
              seed: int) -> Tuple[np.ndarray, np.ndarray, List[List[_Digit]]]:
    """`generate_digits_panoptic`, also returning each image's digits (for tests)."""
    _validate(num_images, split, image_size, seed)
    _, labels = _sklearn_digits()
    pool = _split_indices(split)
    pool_labels = labels[pool]
    images = np.empty((num_images, image_size, image_size, 3), np.uint8)
    panoptic = np.empty((num_images, image_size, image_size), np.int32)
    scenes = []
    for index in range(num_images):
        rng = np.random.default_rng([int(seed), SPLITS.index(split), index])
        images[index], panoptic[index], digits = _render(rng, pool, pool_labels,
                                                         int(image_size))
        scenes.append(digits)
    return images, panoptic, scenes


def generate_digits_panoptic(num_images: int, split: str = "train", image_size: int = 64,
                             seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Generates digits-panoptic images and their panoptic maps.

    Image `i` depends only on `(split, seed, i)`: the same arguments give identical arrays,
    and a longer request extends a shorter one.

    Args:
        num_images: Number of images (> 0).
        split: `"train"` or `"test"`; the two draw from disjoint digit pools.
        image_size: Side of the square images in pixels (>= 32).
        seed: Non-negative int selecting the scenes.

    Returns:
        `(images, panoptic)`: uint8 RGB `[num_images, image_size, image_size, 3]` and int32
        `[num_images, image_size, image_size]` panoptic ids encoded with `DIGITS_PANOPTIC`.

    Raises:
        ValueError: If an argument is out of range.
    """
    images, panoptic, _ = _generate(num_images, split, image_size, seed)
    return images, panoptic


def digits_panoptic_dataset(split: str, num_images: int, image_size: int = 64, seed: int = 0,
                            batch_size: Optional[int] = None,
                            shuffle: bool = False) -> "tf.data.Dataset":
    """A `tf.data.Dataset` of `(image, panoptic)` pairs from `generate_digits_panoptic`.

    Args:
        split: `"train"` or `"test"`.
        num_images: Number of images (> 0).
        image_size: Side of the square images in pixels (>= 32).
        seed: Seed of the scenes, and of the shuffle order when `shuffle` is set.
        batch_size: If set, batch elements (the last batch may be smaller).
        shuffle: Whether to shuffle (over all images, a new order every epoch).

    Returns:
        A dataset of uint8 `[image_size, image_size, 3]` images and int32
        `[image_size, image_size]` panoptic maps (with a leading batch dimension when
        `batch_size` is set).

    Raises:
        ValueError: If an argument is out of range.
    """
    import tensorflow as tf

    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, (int, np.integer)) or batch_size <= 0):
        raise ValueError(f"`batch_size` must be None or a positive int, got {batch_size!r}.")
    images, panoptic = generate_digits_panoptic(num_images, split, image_size, seed)
    dataset = tf.data.Dataset.from_tensor_slices((images, panoptic))
    if shuffle:
        dataset = dataset.shuffle(num_images, seed=seed, reshuffle_each_iteration=True)
    if batch_size is not None:
        dataset = dataset.batch(int(batch_size))
    return dataset

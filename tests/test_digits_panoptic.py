"""The embedded digits-panoptic set: determinism, label encoding, occlusion, splits, tf.data."""

import numpy as np
import pytest

from axial_keras.data import digits_panoptic
from axial_keras.data.digits import load_digits
from axial_keras.data.digits_panoptic import (DIGITS_PANOPTIC, MIN_VISIBLE_AREA, VOID_ID,
                                              digits_panoptic_dataset,
                                              generate_digits_panoptic)

pytestmark = pytest.mark.xdist_group("test_digits_panoptic")  # one worker builds the generated set fixture once

DIVISOR = DIGITS_PANOPTIC.label_divisor
THINGS = np.array(DIGITS_PANOPTIC.thing_class_ids)
STUFF = np.array(DIGITS_PANOPTIC.stuff_class_ids)


@pytest.fixture(scope="module")
def train_set():
    return digits_panoptic._generate(150, "train", 64, 0)


def _amodal(digit, size):
    """A digit's full mask in image coordinates."""
    mask = np.zeros((size, size), bool)
    side = digit.mask.shape[0]
    mask[digit.top:digit.top + side, digit.left:digit.left + side] = digit.mask
    return mask


def test_metadata():
    meta = DIGITS_PANOPTIC
    assert meta.num_classes == len(meta.class_names) == 12
    assert meta.thing_class_ids == tuple(range(10)) and meta.stuff_class_ids == (10, 11)
    assert meta.label_divisor == 256 and meta.ignore_label == 255
    assert meta.class_names[:2] == ("digit_0", "digit_1") and meta.class_names[10:] == (
        "sand", "water")
    assert VOID_ID == meta.void_id == 255 * 256
    settings = digits_panoptic.DIGITS_POST_PROCESSING
    assert (settings.center_threshold, settings.nms_kernel, settings.keep_k_centers,
            settings.stuff_area_limit) == (0.5, 11, 16, 16)


def test_deterministic_and_prefix_stable():
    images, panoptic = generate_digits_panoptic(12, "train", seed=5)
    again_images, again_panoptic = generate_digits_panoptic(12, "train", seed=5)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(panoptic, again_panoptic)
    head_images, head_panoptic = generate_digits_panoptic(4, "train", seed=5)
    np.testing.assert_array_equal(head_images, images[:4])
    np.testing.assert_array_equal(head_panoptic, panoptic[:4])
    other_images, _ = generate_digits_panoptic(12, "train", seed=6)
    test_images, _ = generate_digits_panoptic(12, "test", seed=5)
    assert not np.array_equal(images, other_images)
    assert not np.array_equal(images, test_images)


@pytest.mark.parametrize("image_size", [32, 64, 100])
def test_shapes_and_dtypes(image_size):
    images, panoptic = generate_digits_panoptic(3, "test", image_size=image_size)
    assert images.shape == (3, image_size, image_size, 3) and images.dtype == np.uint8
    assert panoptic.shape == (3, image_size, image_size) and panoptic.dtype == np.int32


def test_ids_are_valid_and_instances_numbered_per_image(train_set):
    _, panoptic, _ = train_set
    classes, instances = panoptic // DIVISOR, panoptic % DIVISOR
    void = panoptic == VOID_ID
    assert np.isin(classes[~void], np.arange(DIGITS_PANOPTIC.num_classes)).all()
    assert (instances[np.isin(classes, STUFF)] == 0).all()
    for segments in map(np.unique, panoptic):
        things = segments[np.isin(segments // DIVISOR, THINGS) & (segments % DIVISOR > 0)]
        # One numbering over all classes: 1..K, each instance id used once per image.
        np.testing.assert_array_equal(np.sort(things % DIVISOR), np.arange(1, len(things) + 1))
    for image in panoptic:
        segments, areas = np.unique(image, return_counts=True)
        assert (areas[(segments != VOID_ID) & (segments // DIVISOR < 10)] >=
                MIN_VISIBLE_AREA).all()


def test_panoptic_map_shows_the_last_painted_digit(train_set):
    _, panoptic, scenes = train_set
    for image, digits in zip(panoptic, scenes):
        owner = np.full(image.shape, -1, np.int64)
        for digit in digits:  # Paste order: crowd first, then things.
            owner[_amodal(digit, image.shape[0])] = digit.segment_id
        covered = owner >= 0
        np.testing.assert_array_equal(image[covered], owner[covered])
        assert np.isin(image[~covered], [VOID_ID, 10 * DIVISOR, 11 * DIVISOR]).all()


def test_some_instances_touch_and_some_occlude(train_set):
    _, panoptic, scenes = train_set
    touching = occluding = 0
    for image, digits in zip(panoptic, scenes):
        kept = [d for d in digits if not d.is_crowd and d.segment_id != VOID_ID]
        for i, first in enumerate(kept):
            for second in kept[i + 1:]:
                a, b = _amodal(first, 64), _amodal(second, 64)
                if (a & b).any():
                    occluding += (image[a & b] == second.segment_id).any()
                    continue
                seen_a, seen_b = image == first.segment_id, image == second.segment_id
                touching += bool((seen_a[:, :-1] & seen_b[:, 1:]).any()
                                 or (seen_a[:, 1:] & seen_b[:, :-1]).any()
                                 or (seen_a[:-1] & seen_b[1:]).any()
                                 or (seen_a[1:] & seen_b[:-1]).any())
    assert touching >= 10 and occluding >= 10, (touching, occluding)


def test_void_crowd_and_both_stuff_classes_present(train_set):
    _, panoptic, scenes = train_set
    classes, instances = panoptic // DIVISOR, panoptic % DIVISOR
    assert (panoptic == VOID_ID).any()
    assert (np.isin(classes, THINGS) & (instances == 0)).any()
    assert any(d.is_crowd and d.segment_id != VOID_ID for digits in scenes for d in digits)
    assert all((classes == stuff).any() for stuff in STUFF)


def test_train_and_test_digit_pools_are_disjoint():
    train, test = digits_panoptic._split_indices("train"), digits_panoptic._split_indices("test")
    assert not set(train) & set(test) and len(train) + len(test) == 1797
    # The same split as the classification data.
    images, _ = digits_panoptic._sklearn_digits()
    (x_train, _), (x_test, _) = load_digits(8)
    np.testing.assert_array_equal(images[train], x_train[..., 0])
    np.testing.assert_array_equal(images[test], x_test[..., 0])
    for split, pool in (("train", train), ("test", test)):
        _, _, scenes = digits_panoptic._generate(40, split, 64, 1)
        assert {d.source for digits in scenes for d in digits} <= set(pool)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_images=2, split="val"), "split"),
    (dict(num_images=0), "num_images"),
    (dict(num_images=-3), "num_images"),
    (dict(num_images=2.0), "num_images"),
    (dict(num_images=2, image_size=16), "image_size"),
    (dict(num_images=2, seed=-1), "seed"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_digits_panoptic(**kwargs)


def test_tf_dataset_yields_the_generated_arrays():
    import tensorflow as tf

    images, panoptic = generate_digits_panoptic(5, "test", image_size=32, seed=3)
    dataset = digits_panoptic_dataset("test", 5, image_size=32, seed=3)
    assert dataset.element_spec[0].dtype == tf.uint8 and dataset.element_spec[1].dtype == tf.int32
    pairs = [(x.numpy(), y.numpy()) for x, y in dataset]
    np.testing.assert_array_equal(np.stack([x for x, _ in pairs]), images)
    np.testing.assert_array_equal(np.stack([y for _, y in pairs]), panoptic)

    batched = digits_panoptic_dataset("test", 5, image_size=32, seed=3, batch_size=2)
    assert [tuple(x.shape) for x, _ in batched] == [(2, 32, 32, 3)] * 2 + [(1, 32, 32, 3)]

    def order(dataset):
        return [int(np.flatnonzero((images == x.numpy()).all(axis=(1, 2, 3)))[0])
                for x, _ in dataset]

    shuffled = order(digits_panoptic_dataset("test", 5, image_size=32, seed=3, shuffle=True))
    assert sorted(shuffled) == list(range(5))
    assert shuffled == order(digits_panoptic_dataset("test", 5, image_size=32, seed=3,
                                                     shuffle=True))
    with pytest.raises(ValueError, match="batch_size"):
        digits_panoptic_dataset("test", 5, batch_size=0)

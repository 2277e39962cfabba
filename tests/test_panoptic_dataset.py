"""The tf.data pipeline: evaluation batches, augmentation alignment, flips and targets, seeds."""

import os

import numpy as np
import pytest
import tensorflow as tf

from axial_keras.data import load_metadata, pad_and_batch, panoptic_dataset
from axial_keras.data import tfrecord
from axial_keras.data.convert import convert_dataset
from axial_keras.data.panoptic_dataset import photometric_jitter
from axial_keras.labels import CITYSCAPES, PanopticClass, PanopticLabels
from axial_keras.panoptic.targets import PanopticTargets
from axial_keras.pixels import MID_GREY
from dataset_fixtures import write_cityscapes_panoptic_fixture

pytestmark = pytest.mark.xdist_group("test_panoptic_dataset")  # one worker builds the record files fixture once

VOID = 255 * 1000
# A toy label encoding for hand-written records: classes 0 (stuff), 1, 2 (things).
TOY = PanopticLabels((PanopticClass(0, "ground", False), PanopticClass(1, "a", True),
                      PanopticClass(2, "b", True)), label_divisor=1000, ignore_label=255)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """Converted Cityscapes fixture: (shard pattern, {image_id: panoptic})."""
    root = tmp_path_factory.mktemp("cityscapes")
    expected = write_cityscapes_panoptic_fixture(str(root / "source"), "val")
    convert_dataset("cityscapes_panoptic", str(root / "source"), "val", str(root / "records"),
                    num_shards=2, progress_stream=None)
    return str(root / "records" / "val-*.tfrecord"), expected


def _colour(ids):
    """A distinct colour per panoptic id, float [..., 3]."""
    ids = np.asarray(ids, np.int64)
    return np.stack([(37 * ids) % 251, (91 * ids) % 241, 40 + (13 * ids) % 200],
                    axis=-1).astype(np.float32)


def _toy_panoptic(height, width, shift=0):
    panoptic = np.zeros((height, width), np.int32)  # Class 0, stuff.
    panoptic[3:12, 2 + shift:11 + shift] = 1001
    panoptic[3:12, 11 + shift:17 + shift] = 1002  # Touches 1001.
    panoptic[14:height - 2, width - 12:width - 3] = 2001
    panoptic[height - 6:height - 1, 1:6] = 2000  # Crowd.
    panoptic[0:3, width - 5:width] = VOID
    return panoptic


def _write_toy_records(path, sizes):
    """Records whose image colour is a function of the panoptic id (PNG images)."""
    panoptics = {}
    with tf.io.TFRecordWriter(path) as writer:
        for index, (height, width) in enumerate(sizes):
            panoptic = _toy_panoptic(height, width, shift=index)
            image = tf.io.encode_png(_colour(panoptic).astype(np.uint8)).numpy()
            writer.write(tfrecord.encode_example(f"toy{index}", image, "png", panoptic))
            panoptics[f"toy{index}"] = panoptic
    return panoptics


def test_evaluation_batches_pad_images_and_void_labels(tmp_path, cityscapes):
    path = str(tmp_path / "toy.tfrecord")
    panoptics = _write_toy_records(path, [(20, 30), (25, 22), (21, 23)])
    batches = list(panoptic_dataset(path, labels=TOY, batch_size=2))
    assert [tuple(b["image"].shape) for b in batches] == [(2, 25, 30, 3), (1, 21, 23, 3)]
    first = batches[0]
    assert first["image"].dtype == tf.float32 and first["panoptic"].dtype == tf.int32
    np.testing.assert_array_equal(first["image_id"].numpy(), [b"toy0", b"toy1"])
    for index, (height, width) in enumerate([(20, 30), (25, 22)]):
        panoptic = first["panoptic"][index].numpy()
        image = first["image"][index].numpy()
        np.testing.assert_array_equal(panoptic[:height, :width], panoptics[f"toy{index}"])
        np.testing.assert_array_equal(image[:height, :width],
                                      _colour(panoptics[f"toy{index}"]).astype(np.uint8))
        padded = np.ones((25, 30), bool)
        padded[:height, :width] = False
        assert np.all(panoptic[padded] == VOID) and np.all(image[padded] == MID_GREY)

    fixed = pad_and_batch(panoptic_dataset(path, labels=TOY), 3, TOY, padded_size=(33, 40))
    batch = next(iter(fixed))
    assert batch["image"].shape == (3, 33, 40, 3) and batch["panoptic"].shape == (3, 33, 40)
    assert np.all(batch["panoptic"].numpy()[:, 25:] == VOID)

    targets = PanopticTargets(TOY)
    with_targets = next(iter(panoptic_dataset(path, labels=TOY, batch_size=2,
                                              targets=targets)))
    assert with_targets["semantic"].shape == (2, 25, 30)
    assert np.all(with_targets["semantic"].numpy()[0, 20:] == 255)
    assert np.all(with_targets["semantic_weights"].numpy()[0, 20:] == 0)
    np.testing.assert_array_equal(with_targets["semantic"].numpy()[0, :20, :30],
                                  panoptics["toy0"] // 1000)

    pattern, expected = cityscapes
    full = next(iter(panoptic_dataset(pattern, batch_size=3, crop_size=(40, 70))))
    assert full["panoptic"].shape == (3, 40, 70)
    for image_id, panoptic in zip(full["image_id"].numpy(), full["panoptic"].numpy()):
        np.testing.assert_array_equal(panoptic[:33, :65], expected[image_id.decode()])
        assert np.all(panoptic[33:] == VOID) and np.all(panoptic[:, 65:] == VOID)


def test_scale_crop_and_flip_keep_image_and_labels_aligned(tmp_path):
    path = str(tmp_path / "toy.tfrecord")
    panoptics = _write_toy_records(path, [(33, 45), (40, 37)])
    known = set(np.unique(np.concatenate([p.ravel() for p in panoptics.values()])))
    dataset = panoptic_dataset(path, training=True, labels=TOY, crop_size=(41, 41),
                               photometric=False, seed=3, deterministic=True)
    checked = 0
    for example in dataset.take(24):
        image, panoptic = example["image"].numpy(), example["panoptic"].numpy()
        assert set(np.unique(panoptic)) <= known  # Nearest neighbour invents no id.
        padded = np.all(image == MID_GREY, axis=-1) & (panoptic == VOID)
        # Inner pixels whose 3x3 label neighbourhood is one segment show its colour.
        window = np.lib.stride_tricks.sliding_window_view(panoptic, (3, 3))
        inner = (slice(1, -1), slice(1, -1))
        uniform = np.all(window == panoptic[inner][:, :, None, None], axis=(2, 3))
        uniform &= ~padded[inner]
        np.testing.assert_allclose(image[inner][uniform], _colour(panoptic[inner][uniform]),
                                   atol=1e-3)
        checked += int(uniform.sum())
    assert checked > 24 * 300


def test_flip_keeps_offsets_pointing_to_the_flipped_centres(cityscapes):
    pattern, expected = cityscapes
    targets = PanopticTargets(CITYSCAPES, sigma=2.0, small_instance_area=64)
    dataset = panoptic_dataset(pattern, training=True, crop_size=(33, 65), min_scale=1.0,
                               max_scale=1.0, photometric=False, seed=0, deterministic=True,
                               targets=targets)
    flips = []
    for example in dataset.take(12):
        panoptic = example["panoptic"].numpy()
        original = expected[example["image_id"].numpy().decode()]
        flipped = not np.array_equal(panoptic, original)
        if flipped:
            np.testing.assert_array_equal(panoptic, original[:, ::-1])
        flips.append(flipped)
        reference = targets(panoptic[None])
        for key, value in reference.items():
            np.testing.assert_array_equal(example[key].numpy(), value[0].numpy(), err_msg=key)
        offsets = example["offsets"].numpy()
        for segment in np.unique(panoptic):
            if segment // 1000 not in range(11, 19) or segment % 1000 == 0:
                assert np.all(offsets[panoptic == segment] == 0)
                continue
            rows, cols = np.nonzero(panoptic == segment)
            centre = np.round([rows.mean(), cols.mean()])  # Half to even, as deeplab2.
            pointed = np.stack([rows, cols], -1) + offsets[rows, cols]
            np.testing.assert_array_equal(pointed, np.broadcast_to(centre, pointed.shape))
    assert any(flips) and not all(flips)


def test_targets_match_the_target_builder_on_the_augmented_batch(cityscapes):
    pattern, _ = cityscapes
    targets = PanopticTargets(CITYSCAPES, sigma=3.0)
    batch = next(iter(panoptic_dataset(pattern, training=True, crop_size=(41, 49),
                                       batch_size=4, seed=1, targets=targets)))
    assert batch["image"].shape == (4, 41, 49, 3) and batch["image"].dtype == tf.float32
    reference = targets(batch["panoptic"])
    assert set(reference) < set(batch)
    for key, value in reference.items():
        np.testing.assert_array_equal(batch[key].numpy(), value.numpy(), err_msg=key)


def test_photometric_jitter_changes_pixels_not_padding(cityscapes):
    pattern, expected = cityscapes
    dataset = panoptic_dataset(pattern, training=True, crop_size=(40, 70), min_scale=1.0,
                               max_scale=1.0, flip=False, seed=2, deterministic=True)
    plain = panoptic_dataset(pattern, training=True, crop_size=(40, 70), min_scale=1.0,
                             max_scale=1.0, flip=False, photometric=False, seed=2,
                             deterministic=True)
    for example, reference in zip(dataset.take(3), plain.take(3)):
        image, panoptic = example["image"].numpy(), example["panoptic"].numpy()
        np.testing.assert_array_equal(panoptic[:33, :65],
                                      expected[example["image_id"].numpy().decode()])
        assert np.all(image[33:] == MID_GREY) and np.all(image[:, 65:] == MID_GREY)
        assert np.all(panoptic[33:] == VOID) and np.all(panoptic[:, 65:] == VOID)
        content, original = image[:33, :65], reference["image"].numpy()[:33, :65]
        assert 0.0 <= content.min() and content.max() <= 255.0
        assert 0.5 < np.abs(content - original).mean() < 40.0

    grey = tf.fill([4, 5, 3], 100.0)
    for seed in range(5):
        jittered = photometric_jitter(grey, tf.constant([seed, 7])).numpy()
        # Hue and saturation keep grey grey; contrast keeps a flat image flat.
        np.testing.assert_allclose(jittered, np.full_like(jittered, jittered[0, 0, 0]),
                                   atol=1e-3)
        assert abs(jittered[0, 0, 0] - 100.0) <= 0.1 * 255 + 1e-3


def test_seed_and_deterministic_reproduce_the_stream(cityscapes):
    pattern, _ = cityscapes

    def first(seed):
        dataset = panoptic_dataset(pattern, training=True, crop_size=(25, 31), seed=seed,
                                   deterministic=True, batch_size=2)
        return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(4)]

    one, again, other = first(5), first(5), first(6)
    for a, b in zip(one, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(one, other))
    assert one[0]["image"].shape == (2, 25, 31, 3)  # 8 examples from 3: it repeats.


@pytest.mark.parametrize("pipelines", [2, 3])
def test_input_pipelines_read_disjoint_parts(cityscapes, pipelines):
    pattern, expected = cityscapes  # 2 shards: files split for 2 pipelines, records for 3.
    seen = []
    for index in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                             input_pipeline_id=index)
        seen += [example["image_id"].numpy().decode()
                 for example in panoptic_dataset(pattern, input_context=context)]
    assert sorted(seen) == sorted(expected)


def test_errors_name_the_problem(tmp_path, cityscapes):
    pattern, _ = cityscapes
    with pytest.raises(ValueError, match="No TFRecord file matches"):
        panoptic_dataset(str(tmp_path / "missing-*.tfrecord"))
    with pytest.raises(ValueError, match="crop_size"):
        panoptic_dataset(pattern, training=True)
    path = str(tmp_path / "toy.tfrecord")
    _write_toy_records(path, [(20, 30)])
    with pytest.raises(ValueError, match="No metadata.json"):
        panoptic_dataset(path)
    assert load_metadata(os.path.dirname(pattern)) == CITYSCAPES


def test_a_training_batch_feeds_the_model_and_its_loss(cityscapes):
    from axial_keras.models import get_model
    from axial_keras.panoptic.losses import PanopticDeepLabLoss

    pattern, _ = cityscapes
    labels = load_metadata(os.path.dirname(pattern))
    model = get_model("axial_deeplab_tiny", labels=labels)
    batch = next(iter(panoptic_dataset(pattern, training=True, crop_size=(33, 65),
                                       batch_size=2, seed=0)))
    outputs = model(batch["image"], training=True)
    assert outputs["semantic_logits"].shape == (2, 33, 65, 19)
    loss = PanopticDeepLabLoss(labels, sigma=2.0)
    terms = loss.loss_terms(batch["panoptic"], outputs)
    total = float(loss(batch["panoptic"], outputs))
    assert total == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-5)

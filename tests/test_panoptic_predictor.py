"""PanopticPredictor: test-time augmentation undoes flips and scales; the same maps as the
post-processor on the model's outputs; the semantic probability it reports."""

import keras
import numpy as np
import pytest
from keras import ops

from axial_keras.labels import PanopticLabels
from axial_keras.panoptic import PanopticPostProcessor, PanopticPredictor, PostProcessingSettings

LABELS = PanopticLabels.from_ids(2, thing_class_ids=[1], label_divisor=1000)
HEIGHT, WIDTH = 8, 12


def equivariant_model(images, training=False):
    """A flip- and scale-equivariant model.

    Its semantic logits follow the pixel brightness; every pixel's offset points 1 px
    down (in the pixels of the input it sees) and to the brightness-weighted mean column
    (the "centre" of the bright half). Un-flipping must negate dx and un-scaling must
    rescale both offsets, or the average moves away from the plain prediction.
    """
    del training
    brightness = images[..., :1] / 255.0
    width = images.shape[2]
    columns = ops.reshape(ops.cast(ops.arange(width), "float32"), (1, 1, width, 1))
    centre = ops.sum(brightness * columns, axis=(1, 2), keepdims=True) \
        / ops.sum(brightness, axis=(1, 2), keepdims=True)
    down = images.shape[1] / HEIGHT * ops.ones_like(brightness)
    return {"semantic_logits": 20.0 * ops.concatenate([1.0 - brightness, brightness], -1),
            "center_heatmap": brightness,
            "center_offsets": ops.concatenate([down, centre - columns + 0.0 * brightness], -1)}


def _images():
    return ops.concatenate([ops.zeros((1, HEIGHT, WIDTH // 2, 3)),
                            ops.full((1, HEIGHT, WIDTH - WIDTH // 2, 3), 255.0)], axis=2)


def test_multiscale_flip_averaging_undoes_flip_and_scale():
    images = _images()
    plain = PanopticPredictor(equivariant_model, LABELS).network_outputs(images)
    averaged = PanopticPredictor(equivariant_model, LABELS, scales=(1.0, 2.0),
                                 flip=True).network_outputs(images)
    offsets = ops.convert_to_numpy(averaged["center_offsets"])
    assert offsets.shape == (1, HEIGHT, WIDTH, 2)
    np.testing.assert_allclose(offsets, ops.convert_to_numpy(plain["center_offsets"]),
                               atol=0.05)
    np.testing.assert_allclose(ops.convert_to_numpy(plain["center_offsets"])[0, 0, :, 1],
                               8.5 - np.arange(WIDTH))
    np.testing.assert_array_equal(
        np.argmax(ops.convert_to_numpy(averaged["semantic_logits"]), -1),
        np.argmax(ops.convert_to_numpy(plain["semantic_logits"]), -1))
    np.testing.assert_allclose(ops.convert_to_numpy(averaged["center_heatmap"])[0, :, :3, 0],
                               0.0, atol=1e-6)
    # The averaged semantic output is a probability: each pixel's classes sum to 1.
    np.testing.assert_allclose(
        ops.convert_to_numpy(averaged["semantic_probabilities"]).sum(-1), 1.0, atol=1e-6)


def test_single_scale_prediction_is_the_post_processor_on_the_model_outputs():
    settings = PostProcessingSettings(center_threshold=0.5, nms_kernel=3, keep_k_centers=4)
    images = _images()
    got = PanopticPredictor(equivariant_model, LABELS, settings)(images)
    want = PanopticPostProcessor(LABELS, settings)(equivariant_model(images))
    for key in ("panoptic", "semantic", "instance", "instance_scores"):
        np.testing.assert_array_equal(ops.convert_to_numpy(got[key]),
                                      ops.convert_to_numpy(want[key]))
    # The bright half is one thing instance (class 1), the dark half stuff (class 0).
    panoptic = ops.convert_to_numpy(got["panoptic"])[0]
    bright = np.unique(panoptic[:, WIDTH // 2:])
    assert len(bright) == 1 and bright[0] // 1000 == 1 and bright[0] % 1000 >= 1
    assert set(np.unique(panoptic[:, :WIDTH // 2])) == {0}
    # Logits +-20 apart: the chosen class has probability 1 / (1 + e^-20).
    np.testing.assert_allclose(ops.convert_to_numpy(got["semantic_probability"]),
                               1.0 / (1.0 + np.exp(-20.0)), rtol=1e-6)


def two_instance_model(images, training=False):
    """Class 1 on the bright half, with one heatmap peak per half-height band of it and
    offsets pointing at the peak of their band (no distance ties)."""
    outputs = equivariant_model(images, training)
    rows = np.arange(HEIGHT)[:, None]
    columns = np.arange(WIDTH)[None, :]
    peak_y = np.where(rows < HEIGHT // 2, 1, 6) + 0 * columns
    heat = np.exp(-((rows - peak_y) ** 2 + (columns - 9) ** 2) / 2.0)
    offsets = np.stack([peak_y - rows + 0 * columns, 9 - columns + 0 * rows], -1)
    outputs["center_heatmap"] = ops.convert_to_tensor(heat[None, :, :, None], "float32")
    outputs["center_offsets"] = ops.convert_to_tensor(offsets[None], "float32")
    return outputs


def test_unrolled_predictor_gives_the_same_maps_compiled():
    settings = PostProcessingSettings(center_threshold=0.5, nms_kernel=3, keep_k_centers=4)
    images = _images()
    want = PanopticPredictor(two_instance_model, LABELS, settings)(images)
    assert len(np.unique(ops.convert_to_numpy(want["instance"]))) == 3  # stuff + 2 instances
    unrolled = PanopticPredictor(two_instance_model, LABELS, settings, unroll=True)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        got = tf.function(unrolled)(images)
    else:
        import jax

        got = jax.jit(unrolled)(images)
    for key in want:
        np.testing.assert_array_equal(ops.convert_to_numpy(got[key]),
                                      ops.convert_to_numpy(want[key]))


def test_bad_scales_are_refused():
    with pytest.raises(ValueError, match="scales"):
        PanopticPredictor(equivariant_model, LABELS, scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="scales"):
        PanopticPredictor(equivariant_model, LABELS, scales=())

"""Panoptic-DeepLab losses: hand-computed values, deeplab2's top-k and normalization,
gradients inside compiled steps, serialization, and the same numbers under JAX.

Runs under the TensorFlow backend; the JAX backend is checked by a subprocess.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from axial_keras.panoptic.losses import (BootstrappedCrossEntropy, CenterHeatmapMSE, OffsetL1,
                                         PanopticDeepLabLoss)
from axial_keras.labels import CITYSCAPES
from test_panoptic_targets import DIVISOR, IGNORE, LABELS, NUM_CLASSES, random_labels, \
    reference_targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def value(x):
    return ops.convert_to_numpy(x)


def reference_top_k_average(pixel_losses, top_k_percent):
    """deeplab2's compute_average_top_k_loss in NumPy: [batch, ...] -> [batch]."""
    flat = pixel_losses.reshape(len(pixel_losses), -1).astype(np.float32)
    if top_k_percent != 1.0:
        k = int(np.round(np.float32(top_k_percent) * np.float32(flat.shape[1])))
        flat = -np.sort(-flat, axis=1)[:, :k]
    non_zero = np.count_nonzero(flat, axis=1)
    return np.where(non_zero > 0, flat.sum(1) / np.maximum(non_zero, 1), 0.0)


def reference_cross_entropy(labels, logits):
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    safe = np.where((labels >= 0) & (labels < logits.shape[-1]), labels, 0)
    return -np.take_along_axis(log_softmax, safe[..., None], -1)[..., 0]


def predictions(seed, batch, height, width, classes=NUM_CLASSES):
    rng = np.random.default_rng(seed)
    return {"semantic_logits": rng.normal(size=(batch, height, width, classes)).astype(np.float32),
            "center_heatmap": rng.random((batch, height, width, 1)).astype(np.float32),
            "center_offsets": rng.normal(0, 3, (batch, height, width, 2)).astype(np.float32)}


def test_bootstrapped_cross_entropy_by_hand():
    # Zero logits: every pixel costs log(3); weights 3, 1 (x8) and one ignored pixel.
    labels = np.array([[[0, 1, 2, 0, 1], [2, 0, 1, IGNORE, 0]]], np.int32)
    weights = np.ones((1, 2, 5), np.float32)
    weights[0, 0, 0] = 3.0
    loss = BootstrappedCrossEntropy(top_k_percent=0.2, ignore_label=IGNORE)
    got = loss(labels, np.zeros((1, 2, 5, 3), np.float32), sample_weight=weights)
    # k = 2 of 10 pixels: 3 log 3 and log 3, averaged.
    np.testing.assert_allclose(value(got), 2.0 * math.log(3.0), rtol=1e-6)
    everything = BootstrappedCrossEntropy(top_k_percent=1.0, ignore_label=IGNORE)
    got = everything(labels, np.zeros((1, 2, 5, 3), np.float32), sample_weight=weights)
    np.testing.assert_allclose(value(got), 11.0 * math.log(3.0) / 9.0, rtol=1e-6)


def test_bootstrapped_cross_entropy_matches_deeplab2_top_k_on_random_values():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (3, 6, 7)).astype(np.int32)
    labels[0, :2] = IGNORE
    labels[2] = IGNORE  # an image without any loss
    logits = rng.normal(0, 2, (3, 6, 7, 5)).astype(np.float32)
    weights = rng.choice([0.0, 1.0, 3.0], (3, 6, 7)).astype(np.float32)
    pixel = np.where(labels == IGNORE, 0.0, reference_cross_entropy(labels, logits) * weights)
    for top_k in (0.2, 0.35, 0.5, 1.0):
        want = reference_top_k_average(pixel, top_k)
        loss = BootstrappedCrossEntropy(top_k, IGNORE, reduction=None)
        np.testing.assert_allclose(value(loss(labels, logits, weights)), want, rtol=1e-5)
        mean = BootstrappedCrossEntropy(top_k, IGNORE)
        np.testing.assert_allclose(value(mean(labels, logits, weights)), want.mean(), rtol=1e-5)
    assert value(loss(labels, logits, weights))[2] == 0.0


def test_top_k_count_is_rounded_in_float32_like_deeplab2():
    # 0.3 * 95 is 28.5 in float64 (rounds to 28) but 28.500002 in float32: deeplab2 keeps 29.
    k = int(tf.cast(tf.math.round(0.3 * tf.cast(95, tf.float32)), tf.int32))
    assert k == 29 and round(0.3 * 95) == 28
    labels = np.zeros((1, 5, 19), np.int32)
    weights = np.arange(1, 96, dtype=np.float32).reshape(1, 5, 19)
    logits = np.zeros((1, 5, 19, 2), np.float32)
    loss = BootstrappedCrossEntropy(top_k_percent=0.3, ignore_label=IGNORE)
    want = 81.0 * math.log(2.0)  # mean of the weights 67..95, times log 2
    np.testing.assert_allclose(value(loss(labels, logits, weights)), want, rtol=1e-6)
    dynamic = tf.function(loss, input_signature=[
        tf.TensorSpec([None, None, None], tf.int32),
        tf.TensorSpec([None, None, None, 2], tf.float32),
        tf.TensorSpec([None, None, None], tf.float32)])
    np.testing.assert_allclose(value(dynamic(labels, logits, weights)), want, rtol=1e-6)


def test_zero_losses_inside_the_top_k_are_not_counted():
    labels = np.zeros((1, 2, 5), np.int32)
    weights = np.zeros((1, 2, 5), np.float32)
    weights[0, 1, 3] = 2.0  # one weighted pixel; k = 2 keeps it and a zero
    logits = np.zeros((1, 2, 5, 4), np.float32)
    loss = BootstrappedCrossEntropy(top_k_percent=0.2, ignore_label=IGNORE)
    np.testing.assert_allclose(value(loss(labels, logits, weights)), 2.0 * math.log(4.0),
                               rtol=1e-6)


def test_center_mse_by_hand_counts_only_non_zero_weighted_errors():
    target = np.array([[[1.0, 0.5], [0.0, 0.25]]], np.float32)[..., None]
    pred = np.array([[[0.5, 0.5], [1.0, 0.0]]], np.float32)[..., None]
    weights = np.array([[[1.0, 1.0], [0.0, 1.0]]], np.float32)
    # Squared errors 0.25, 0 (exact, not counted), 1 (weight 0), 0.0625.
    got = CenterHeatmapMSE()(target, pred, sample_weight=weights)
    np.testing.assert_allclose(value(got), (0.25 + 0.0625) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(value(CenterHeatmapMSE()(target[..., 0], pred)),
                               (0.25 + 1.0 + 0.0625) / 3.0, rtol=1e-6)


def test_offset_l1_by_hand_averages_the_two_channels():
    target = np.zeros((2, 1, 2, 2), np.float32)
    target[0, 0, 0] = [3.0, -4.0]
    pred = np.zeros((2, 1, 2, 2), np.float32)
    pred[0, 0, 1] = [1.0, 1.0]  # on a pixel of weight 0
    pred[1, 0, 0] = [0.0, 2.0]
    weights = np.array([[[1.0, 0.0]], [[1.0, 1.0]]], np.float32)
    got = OffsetL1(reduction=None)(target, pred, sample_weight=weights)
    np.testing.assert_allclose(value(got), [3.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(value(OffsetL1(reduction="sum")(target, pred, weights)), 4.5)
    assert value(OffsetL1()(target, target, weights)) == 0.0


def test_panoptic_loss_matches_the_deeplab2_pipeline_in_numpy():
    labels = random_labels(3, 2, 24, 30)
    pred = predictions(1, 2, 24, 30)
    loss = PanopticDeepLabLoss(LABELS, sigma=3.0,
                               small_instance_area=40)
    want = reference_targets(labels, sigma=3.0, small_instance_area=40)
    semantic = reference_cross_entropy(want["semantic"], pred["semantic_logits"])
    semantic = np.where(want["semantic"] == IGNORE, 0.0, semantic * want["semantic_weights"])
    center = np.square(pred["center_heatmap"] - want["center_heatmap"])[..., 0]
    offset = np.abs(pred["center_offsets"] - want["offsets"]).mean(-1)
    expected = {
        "semantic_loss": reference_top_k_average(semantic, 0.2).mean(),
        "center_loss": 200.0 * reference_top_k_average(center * want["center_weights"], 1.0).mean(),
        "offset_loss": 0.01 * reference_top_k_average(offset * want["offset_weights"], 1.0).mean(),
    }
    terms = loss.loss_terms(labels, pred)
    assert set(terms) == set(expected)
    for key, want_value in expected.items():
        np.testing.assert_allclose(value(terms[key]), want_value, rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(value(loss(labels, pred)), sum(expected.values()), rtol=1e-5)
    np.testing.assert_allclose(value(ops.mean(loss.call(labels, pred))),
                               sum(expected.values()), rtol=1e-5)


def test_panoptic_loss_is_zero_for_a_perfect_prediction():
    labels = random_labels(4, 2, 20, 26)
    loss = PanopticDeepLabLoss(LABELS, sigma=2.0)
    targets = loss.targets(labels)
    semantic = np.minimum(value(targets["semantic"]), NUM_CLASSES - 1)
    perfect = {"semantic_logits": 100.0 * np.eye(NUM_CLASSES, dtype=np.float32)[semantic],
               "center_heatmap": value(targets["center_heatmap"]),
               "center_offsets": value(targets["offsets"])}
    terms = loss.loss_terms(labels, perfect)
    assert value(terms["center_loss"]) == 0.0 and value(terms["offset_loss"]) == 0.0
    assert value(terms["semantic_loss"]) < 1e-6
    assert value(loss(labels, perfect)) < 1e-6


def test_pixel_sample_weight_masks_every_term():
    labels = random_labels(5, 2, 16, 16)
    pred = predictions(2, 2, 16, 16)
    loss = PanopticDeepLabLoss(LABELS, sigma=2.0)
    assert value(loss(labels, pred, sample_weight=np.zeros((2, 16, 16), np.float32))) == 0.0
    mask = np.zeros((2, 16, 16), np.float32)
    mask[:, :8] = 1.0
    terms = loss.loss_terms(labels, pred, sample_weight=mask)
    top_half = loss.loss_terms(labels, pred)
    assert all(np.isfinite(value(v)) for v in terms.values())
    assert value(terms["semantic_loss"]) != value(top_half["semantic_loss"])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradients_are_finite_and_select_the_top_k_pixels(jit_compile):
    labels = random_labels(6, 2, 20, 20)
    labels[1] = IGNORE * DIVISOR  # no loss at all in image 1
    pred = {k: tf.constant(v) for k, v in predictions(3, 2, 20, 20).items()}
    loss = PanopticDeepLabLoss(LABELS, sigma=2.0)

    @tf.function(jit_compile=jit_compile)
    def step(labels, pred):
        with tf.GradientTape() as tape:
            tape.watch(pred)
            total = loss(labels, pred)
        return total, tape.gradient(total, pred)

    total, grads = step(labels, pred)
    assert np.isfinite(value(total))
    for key, grad in grads.items():
        assert np.all(np.isfinite(value(grad))), key
        assert not np.any(value(grad)[1]), key  # the all-void image adds nothing
    pixels_with_gradient = np.any(value(grads["semantic_logits"])[0] != 0, axis=-1)
    assert np.count_nonzero(pixels_with_gradient) == 80  # 20% of 400 pixels


def test_panoptic_loss_trains_a_keras_model_with_fit():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = keras.layers.Conv2D(NUM_CLASSES + 3, 3, padding="same")
            self.panoptic_loss = PanopticDeepLabLoss(LABELS,
                                                     sigma=2.0)

        def call(self, images):
            out = self.head(images)
            return {"semantic_logits": out[..., :NUM_CLASSES],
                    "center_heatmap": out[..., NUM_CLASSES:NUM_CLASSES + 1],
                    "center_offsets": out[..., NUM_CLASSES + 1:]}

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return self.panoptic_loss(y, y_pred)

    labels = random_labels(8, 4, 16, 16)
    images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
    model = Tiny()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(images, labels, batch_size=2, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_losses_serialize_and_validate_arguments():
    losses = [BootstrappedCrossEntropy(0.3, ignore_label=0, reduction="sum"),
              CenterHeatmapMSE(top_k_percent=0.5), OffsetL1(name="off"),
              PanopticDeepLabLoss(CITYSCAPES, center_weight=100.0)]
    for loss in losses:
        config = keras.saving.serialize_keras_object(loss)
        restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
        assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert losses[-1].get_config()["labels"] == CITYSCAPES.get_config()
    with pytest.raises(ValueError, match="top_k_percent"):
        BootstrappedCrossEntropy(1.5)
    with pytest.raises(ValueError, match="reduction"):
        OffsetL1(reduction="mean_with_sample_weight")
    loss = PanopticDeepLabLoss(LABELS)
    pred = predictions(0, 1, 8, 8)
    with pytest.raises(ValueError, match="center_offsets"):
        loss(np.zeros((1, 8, 8), np.int32), {k: pred[k] for k in list(pred)[:2]})
    with pytest.raises(ValueError, match="does not match label shape"):
        loss(np.zeros((1, 8, 9), np.int32), pred)
    with pytest.raises(ValueError, match="integer dtype"):
        loss(np.zeros((1, 8, 8), np.float32), pred)


JAX_SCRIPT = """
import json, sys
import jax
import numpy as np
from axial_keras.panoptic.losses import PanopticDeepLabLoss
data = json.loads(sys.stdin.read())
labels = np.array(data["labels"], np.int32)
pred = {k: np.array(v, np.float32) for k, v in data["pred"].items()}
from axial_keras.labels import PanopticLabels
loss = PanopticDeepLabLoss(PanopticLabels.from_ids(4, (2, 3), 1000, 255), sigma=3.0,
                           small_instance_area=40)
terms = jax.jit(loss.loss_terms)(labels, pred)
total, grads = jax.jit(jax.value_and_grad(lambda p: loss(labels, p)))(pred)
print(json.dumps({"terms": {k: float(v) for k, v in terms.items()}, "total": float(total),
                  "grads": {k: np.asarray(v).tolist() for k, v in grads.items()}}))
"""


def test_jax_backend_gives_the_same_losses_and_gradients():
    labels = random_labels(9, 2, 18, 22)
    pred = predictions(4, 2, 18, 22)
    payload = json.dumps({"labels": labels.tolist(),
                          "pred": {k: v.tolist() for k, v in pred.items()}})
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], input=payload, cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jax_out = json.loads(result.stdout)
    loss = PanopticDeepLabLoss(LABELS, sigma=3.0,
                               small_instance_area=40)
    tf_pred = {k: tf.constant(v) for k, v in pred.items()}
    with tf.GradientTape() as tape:
        tape.watch(tf_pred)
        total = loss(labels, tf_pred)
    grads = tape.gradient(total, tf_pred)
    for key, term in loss.loss_terms(labels, pred).items():
        np.testing.assert_allclose(jax_out["terms"][key], value(term), rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(jax_out["total"], value(total), rtol=1e-5)
    for key, grad in grads.items():
        np.testing.assert_allclose(np.array(jax_out["grads"][key]), value(grad), rtol=1e-4,
                                   atol=1e-7, err_msg=key)

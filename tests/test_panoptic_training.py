"""model.compile + model.fit on (image, panoptic label) batches, and the demo pipeline."""

import os

import keras
import numpy as np
import pytest

from axial_keras.data import DIGITS_PANOPTIC, DIGITS_POST_PROCESSING, generate_digits_panoptic
from axial_keras.demo import train_digits_panoptic
from axial_keras.metrics import PanopticQuality
from axial_keras.models import get_model
from axial_keras.panoptic import PanopticDeepLabLoss, PanopticPredictor
from axial_keras.saving import read_model_artifacts

pytestmark = pytest.mark.long  # each test traces and runs a panoptic training step


def _model():
    return get_model("axial_deeplab_tiny", labels=DIGITS_PANOPTIC)


def test_fit_on_panoptic_labels_lowers_the_loss():
    keras.utils.set_random_seed(0)
    images, labels = generate_digits_panoptic(8, "train", 64)
    model = _model()
    model.compile(keras.optimizers.Adam(3e-3), panoptic_loss_args=dict(sigma=3.0))
    x = images.astype("float32")
    losses = [float(model.train_on_batch(x, labels)) for _ in range(10)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_fit_accepts_a_tf_data_dataset_and_user_losses_still_work():
    import tensorflow as tf

    images, labels = generate_digits_panoptic(4, "train", 64)
    model = _model()
    model.compile("adam", panoptic_loss_args=dict(sigma=3.0))
    dataset = tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels)).batch(2)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1
    # After fit, evaluate on the dataset is the Panoptic-DeepLab loss of the inference outputs.
    loss = PanopticDeepLabLoss(DIGITS_PANOPTIC, sigma=3.0)
    want = np.mean([float(loss(y, model(x, training=False))) for x, y in dataset])
    assert model.evaluate(dataset, verbose=0, return_dict=True)["loss"] == pytest.approx(
        want, rel=1e-4)
    model.compile("adam", loss={"semantic_logits": "mse", "center_heatmap": "mse",
                                "center_offsets": "mse"})
    x = images[:2].astype("float32")
    targets = {k: np.zeros(v.shape, "float32") for k, v in model(x).items()}
    # User losses replace the panoptic one: the step's loss is the sum of the three MSEs.
    outputs = model(x, training=True)
    want = sum(float(np.mean(np.square(np.asarray(v)))) for v in outputs.values())
    step = model.train_on_batch(x, targets, return_dict=True)
    assert float(step["loss"]) == pytest.approx(want, rel=1e-4)


def test_demo_pipeline_trains_evaluates_and_writes_overlays(tmp_path):
    model, result, seconds, paths = train_digits_panoptic(
        epochs=1, num_train=32, num_test=8, batch_size=8, verbose=0, output_dir=str(tmp_path))
    assert len(paths) == 8 and all(os.path.getsize(p) > 0 for p in paths)
    # The demo evaluates with the experiment's post-processing and says so beside the model.
    artifacts = read_model_artifacts(str(tmp_path))
    assert artifacts.labels == DIGITS_PANOPTIC
    assert artifacts.post_processing == DIGITS_POST_PROCESSING
    images, labels = generate_digits_panoptic(8, "test", 64, seed=1)
    predictor = PanopticPredictor(model, DIGITS_PANOPTIC, DIGITS_POST_PROCESSING)
    metric = PanopticQuality(DIGITS_PANOPTIC)
    metric.update_state(labels, np.asarray(predictor(images)["panoptic"]))
    assert float(result["pq"]) == pytest.approx(float(metric.result()["pq"]), abs=1e-9)

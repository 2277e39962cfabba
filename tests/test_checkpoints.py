"""TensorFlow checkpoints (the trainer's format) of every registered model hold all its weights.

TF only: `tf.train.Checkpoint` follows object attributes, so a layer kept in a Python list
would silently miss every checkpoint. (Not in the JAX rerun of test_jax_backend.py.)
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_keras.models import get_model, list_models


def _checkpoint_model(name):
    """The full-size registered model (backbone variants with a 1000-class head)."""
    if name.startswith(("axial_resnet", "full_axial")):
        return get_model(name, num_classes=1000)
    return get_model(name)


@pytest.mark.parametrize("name", list_models())
def test_tf_checkpoint_holds_every_weight(name):
    """`tf.train.Checkpoint(model=m)` (the trainer's format) saves every weight of `m`.

    `Checkpoint.save` writes the variables of exactly the objects of its object graph,
    `tf.train.TrackableView(checkpoint).descendants()`; comparing that list with
    `model.weights` is exact without writing gigabytes of XL weights. Layers kept in
    Python lists are invisible to it (the decoders once lost their low-level and fusion
    convolutions that way). The save/restore test below runs the real round trip.
    """
    model = _checkpoint_model(name)
    checkpoint = tf.train.Checkpoint(model=model)
    saved = [obj for obj in tf.train.TrackableView(checkpoint).descendants()
             if isinstance(obj, keras.Variable)]
    assert sorted(id(v) for v in saved) == sorted(id(w) for w in model.weights)


@pytest.mark.parametrize("name, overrides", [
    ("axial_resnet_tiny", dict(num_classes=4)),
    ("axial_deeplab_tiny", dict(num_classes=5, thing_class_ids=(1, 2))),
])
def test_tf_checkpoint_restores_every_weight(name, overrides, tmp_path):
    def build(seed):
        keras.utils.set_random_seed(seed)
        return get_model(name, **overrides)

    source, target = build(0), build(1)
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    saved = [key for key, _ in tf.train.list_variables(path) if key.startswith("model/")]
    assert len(saved) == len(source.weights)
    tf.train.Checkpoint(model=target).restore(path).assert_consumed()
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)

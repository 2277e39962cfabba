"""Axial-ResNet family: registry, backbone / classifier split, parameter and multiply-add
counts against the paper, strides and endpoints, dtype policies, the Keras battery, and
TF checkpoints of every registered model. Backend-agnostic (also run under JAX) except
the checkpoint tests."""

import inspect

import keras
import numpy as np
import pytest

from axial_keras.models import (AxialResNetBackbone, AxialResNetClassifier, count_madds,
                                get_model, list_models)
from keras_battery import run_model_battery, weight_owners


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_registry_lists_the_family():
    names = list_models()
    for name in ("axial_resnet_s", "axial_resnet_m", "axial_resnet_l", "axial_resnet_xl",
                 "full_axial_resnet_s", "full_axial_resnet_m", "full_axial_resnet_l",
                 "axial_resnet_tiny"):
        assert name in names


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown model 'axial_resnet_q'.*axial_resnet_s"):
        get_model("axial_resnet_q")


@pytest.mark.parametrize("name, paper_params, paper_madds, overrides", [
    ("axial_resnet_s", 12.4e6, 2.8e9, dict(stem_pool=True)),
    ("full_axial_resnet_s", 12.5e6, 3.3e9, {}),
])
def test_params_and_madds_match_the_paper(name, paper_params, paper_madds, overrides):
    model = get_model(name, num_classes=1000, **overrides)
    assert abs(_trainable(model) / paper_params - 1) < 0.03
    assert abs(count_madds(model, (224, 224, 3)) / paper_madds - 1) < 0.05


def test_official_layout_counts():
    # The official code's axial_resnet_s (no stem max-pool, stage 2 strided in its
    # first block): 11,466,912 trainable backbone weights (shared/fixtures README).
    backbone = get_model("axial_resnet_s", output_stride=16)
    assert _trainable(backbone) == 11_466_912
    assert backbone.count_params() == 11_555_488
    assert count_madds(get_model("axial_resnet_s", num_classes=1000), (224, 224, 3)) == 3_250_120_704


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith(("axial_resnet", "full_axial"))])
def test_every_variant_runs_a_small_forward_pass(name):
    model = get_model(name, num_classes=10)
    out = np.asarray(model(np.random.RandomState(0).rand(1, 32, 32, 3).astype("float32")))
    assert out.shape == (1, 10) and np.all(np.isfinite(out))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_endpoint_strides(output_stride):
    model = get_model("axial_resnet_tiny", output_stride=output_stride)
    out = model(np.zeros((1, 33, 47, 3), "float32"))
    strides = {1: 2, 2: 4, 3: 8, 4: 16, 5: 32}
    for stage, stride in strides.items():
        stride = min(stride, output_stride)
        size = (-(-33 // stride), -(-47 // stride))
        for key in (f"stage{stage}", f"res{stage}"):
            assert tuple(out[key].shape[1:3]) == size, (key, out[key].shape)
    assert out["res5"].shape[-1] == 4 * int(round(32 * 16 * 0.25))
    assert np.all(np.asarray(out["res5"]) >= 0)


def test_bad_model_arguments_are_named():
    with pytest.raises(ValueError, match="stem"):
        AxialResNetBackbone(stem="pyramid")
    with pytest.raises(ValueError, match="output_stride"):
        AxialResNetBackbone(output_stride=12)
    with pytest.raises(ValueError, match="odd"):
        AxialResNetBackbone(spans=(None, 4, None, None, None))
    model = get_model("axial_resnet_tiny", num_classes=3)
    with pytest.raises(ValueError):
        model(np.zeros((1, 16, 16), "float32"))


def test_drop_path_schedule():
    model = get_model("axial_resnet_tiny", drop_path_rate=0.2, drop_path_schedule="linear",
                      drop_path_beyond_stride=4)
    rates = {l.name: l.drop_path.rate for l in model.layers if hasattr(l, "drop_path")}
    assert rates["stage2_block1"] == 0.0  # input stride 2 < 4
    assert rates["stage3_block1"] == pytest.approx(0.2 * 1 / 4)
    assert rates["stage5_block1"] == pytest.approx(0.2 * 3 / 4)


@pytest.mark.parametrize("kwargs, input_shape, weights, params", [
    (dict(num_classes=5), (2, 24, 20, 3), (121, 74), 1_056_469),
    (dict(stem="axial", spans=(3, 3, None, None, None), output_stride=16), (2, 16, 20, 3),
     (197, 122), 1_085_760),
])
def test_keras_battery(kwargs, input_shape, weights, params):
    run_model_battery(lambda dtype: get_model("axial_resnet_tiny", dtype=dtype, **kwargs),
                      input_shape, weights, params)


def test_registry_builds_a_backbone_or_a_classifier_on_it():
    backbone = get_model("axial_resnet_tiny")
    classifier = get_model("axial_resnet_tiny", num_classes=7)
    assert (backbone.name, classifier.name, classifier.backbone.name) == (
        "axial_resnet_tiny", "axial_resnet_tiny", "backbone")
    channels = 4 * int(round(32 * 16 * 0.25))  # res5 of the tiny variant
    assert classifier.count_params() == backbone.count_params() + channels * 7 + 7
    x = np.random.RandomState(5).normal(size=(2, 32, 32, 3)).astype("float32")
    features = np.asarray(classifier.backbone(x)["res5"]).mean(axis=(1, 2))
    head = classifier.get_layer("classifier")
    want = features @ np.asarray(head.kernel) + np.asarray(head.bias)
    np.testing.assert_allclose(np.asarray(classifier(x)), want, rtol=1e-5, atol=1e-5)


def _constructor_arguments(cls):
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    return names | {"name", "dtype"}


def test_get_config_returns_exactly_the_constructor_arguments():
    classifier = get_model("axial_resnet_tiny", num_classes=3, dtype="mixed_bfloat16")
    backbone = classifier.backbone
    assert set(backbone.get_config()) == _constructor_arguments(AxialResNetBackbone)
    assert set(classifier.get_config()) == _constructor_arguments(AxialResNetClassifier)
    rebuilt = AxialResNetClassifier.from_config(classifier.get_config())
    assert rebuilt.get_config() == classifier.get_config()
    assert rebuilt.backbone.get_config() == backbone.get_config()
    assert rebuilt.dtype_policy.name == rebuilt.backbone.dtype_policy.name == "mixed_bfloat16"


def test_unknown_overrides_are_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"Unknown override\(s\) \['widht_multiplier'\].*"
                                         r"'width_multiplier'"):
        get_model("axial_resnet_tiny", widht_multiplier=0.5)


def test_the_model_dtype_reaches_every_weighted_sublayer():
    # The example: each of its 59 weight-creating layers computes in bfloat16.
    model = get_model("axial_resnet_tiny", num_classes=10, dtype="mixed_bfloat16")
    owners = weight_owners(model)
    assert len(owners) == 59
    assert {layer.compute_dtype for layer in owners} == {"bfloat16"}
    assert {w.dtype for w in model.weights} == {"float32"}
    assert model(np.zeros((1, 32, 32, 3), "float32")).dtype == "bfloat16"

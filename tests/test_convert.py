"""deeplab2 checkpoint -> our models: every weight mapped, outputs equal the official code's
on its fixtures (shared/fixtures/deeplab2: A = axial_resnet_s, B = axial_deeplab_s), and
every bad input refused before anything is assigned."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from axial_keras.models import get_model
from axial_keras.models.convert import (checkpoint_prefix, from_deeplab2,
                                        load_deeplab2_weights, weight_keys)
from zoo_fixtures import ENDPOINTS, FIXTURES, TOLERANCE, numeric_path, relative_errors

FIXTURE = os.environ.get("DEEPLAB2_FIXTURE_A", os.path.join(FIXTURES, "deeplab2", "axial_resnet_s"))
FIXTURE_B = os.path.join(os.path.dirname(FIXTURE), "axial_deeplab_s")
SWIDERNET = numeric_path("axial_swidernet_1_1_1_w0.125")
pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURE),
                                reason=f"deeplab2 fixture not found at {FIXTURE}")
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def test_backbone_reproduces_every_official_endpoint():
    model = from_deeplab2(os.path.join(FIXTURE, "checkpoint", "ckpt-0"), output_stride=16)
    assert model.name == "axial_resnet_s"
    errors = relative_errors(model, FIXTURE)
    assert sorted(errors) == sorted(ENDPOINTS)
    assert max(errors.values()) <= 1e-5


def test_panoptic_checkpoint_reproduces_every_official_output():
    model = from_deeplab2(os.path.join(FIXTURE_B, "checkpoint"))
    assert model.name == "axial_deeplab_s"
    assert len(model.weights) == 808
    errors = relative_errors(model, FIXTURE_B)
    # 11 encoder endpoints, 2 decoder features, 3 raw heads, 3 upsampled heads, probs.
    assert len(errors) == 20
    assert {k: e for k, e in errors.items() if e > TOLERANCE} == {}


def test_a_checkpoint_that_does_not_fit_fails_loudly():
    prefix = os.path.join(FIXTURE, "checkpoint", "ckpt-0")
    wrong = get_model("axial_resnet_m", output_stride=16)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_deeplab2_weights(wrong, prefix)
    deeper = get_model("axial_resnet_s", num_blocks=(3, 4, 6, 4))
    with pytest.raises(ValueError, match="not in the checkpoint"):
        load_deeplab2_weights(deeper, prefix)
    shallower = get_model("axial_resnet_s", num_blocks=(3, 4, 6, 2))
    with pytest.raises(ValueError, match="unused"):
        load_deeplab2_weights(shallower, prefix)


def test_mismatched_overrides_are_refused_and_nothing_is_assigned():
    with pytest.raises(ValueError, match=r"num_classes=21 does not fit the checkpoint, which "
                                         r"holds num_classes=19"):
        from_deeplab2(os.path.join(SWIDERNET, "checkpoint"), num_classes=21)
    with pytest.raises(ValueError, match=r"backbone.width_multiplier=0.25 does not fit .*=0.125"):
        from_deeplab2(os.path.join(SWIDERNET, "checkpoint"), backbone={"width_multiplier": 0.25})
    model = get_model("axial_swidernet_1_1_1_os16", num_classes=21,
                      backbone={"width_multiplier": 0.125, "stem_width_multiplier": 0.125})
    before = [np.array(w) for w in model.weights]
    with pytest.raises(ValueError,
                       match=r"2 shape mismatches.*\(21,\) vs semantic_last_layer/bias \[19\]"):
        load_deeplab2_weights(model, os.path.join(SWIDERNET, "checkpoint"))
    assert all(np.array_equal(a, np.array(w)) for a, w in zip(before, model.weights))


def test_a_name_of_another_family_is_refused_naming_the_difference():
    with pytest.raises(ValueError, match=r"not a max_deeplab_s_backbone_os16: stem: checkpoint "
                                         r"'wide', max_deeplab_s_backbone_os16 'inception'.*"
                                         r"first differing keys"):
        from_deeplab2(os.path.join(SWIDERNET, "checkpoint"), "max_deeplab_s_backbone_os16")


def _write_checkpoint(prefix, tensors):
    """A TF checkpoint holding `tensors` (key -> array) under deeplab2-style keys."""
    names = list(tensors) + ["global_step" + SUFFIX]
    values = [tf.constant(v) for v in tensors.values()] + [tf.constant(0, tf.int64)]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=values)
    return prefix


def test_a_checkpoint_of_no_known_architecture_names_the_closest(tmp_path):
    # A deeplab2 ResNet-50-beta without attention: no registry variant has that layout.
    plain = get_model("max_deeplab_s_backbone", axial_beyond_stride=0, width_multiplier=0.125)
    tensors = {k + SUFFIX: np.array(w) for k, w in weight_keys(plain).items()}
    prefix = _write_checkpoint(str(tmp_path / "ckpt-0"), tensors)
    with pytest.raises(ValueError, match=r"matches no known architecture; the closest is "
                                         r"(max_deeplab_s_backbone|axial_resnet_50_gelu) "
                                         r"\(axial_beyond_stride: checkpoint 0, .* 16\).*"
                                         r"first differing keys: expected but absent "
                                         r"\['encoder/_stage4/_block2/_attention"):
        from_deeplab2(prefix)


def test_foreign_and_truncated_checkpoints_are_named(tmp_path):
    foreign = _write_checkpoint(str(tmp_path / "foreign"), {
        "model/dense/kernel" + SUFFIX: np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match=r"Not a deeplab2 Axial-ResNet checkpoint: no encoder/ "
                                         r"keys \(top-level names: \['model'\]\)"):
        from_deeplab2(foreign)
    with pytest.raises(ValueError, match="No TensorFlow checkpoint at"):
        from_deeplab2(str(tmp_path / "missing"))
    copy = tmp_path / "truncated"
    shutil.copytree(os.path.join(SWIDERNET, "checkpoint"), copy)
    data = copy / "ckpt-0.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with pytest.raises(ValueError, match=r"truncated/ckpt-0.data-00000-of-00001: the checkpoint "
                                         r"data is truncated"):
        from_deeplab2(str(copy))


def test_the_checkpoint_is_found_in_any_folder_layout(tmp_path):
    nested = tmp_path / "archive" / "some_name"
    shutil.copytree(os.path.join(SWIDERNET, "checkpoint"), nested)
    os.remove(nested / "checkpoint")
    assert checkpoint_prefix(str(tmp_path / "archive")) == str(nested / "ckpt-0")
    assert checkpoint_prefix(str(nested / "ckpt-0.index")) == str(nested / "ckpt-0")


@pytest.mark.parametrize("name,overrides", [
    ("full_axial_resnet_s", dict(width_multiplier=0.125, num_heads=4)),
    ("axial_resnet_tiny", {}),
    ("axial_deeplab_tiny", {}),
])
def test_families_without_a_fixture_are_recognised_from_their_keys(tmp_path, name, overrides):
    model = get_model(name, **overrides)
    tensors = {k + SUFFIX: np.array(w) for k, w in weight_keys(model).items()}
    loaded = from_deeplab2(_write_checkpoint(str(tmp_path / "ckpt-0"), tensors))
    assert loaded.name == name
    assert all(np.array_equal(np.array(a), np.array(b))
               for a, b in zip(model.weights, loaded.weights))

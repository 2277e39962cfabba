"""deeplab2's published model zoo, full size: our registry variants hold exactly the
checkpoint keys deeplab2 writes (shared/fixtures/deeplab2_zoo/structure), with equal
shapes and deeplab2's trainable parameter counts; the converter recognises each
architecture from the keys alone. Models are built, never called (no weights needed)."""

import gc
import json
import os

import numpy as np
import pytest

import keras

from axial_keras.models import get_model
from axial_keras.models.convert import read_architecture, recognise, weight_keys
from axial_keras.labels import CITYSCAPES
from axial_keras.models.registry import get_variant
from axial_keras.panoptic import PostProcessingSettings

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                     "shared", "fixtures", "deeplab2_zoo", "structure"))
ROOT = os.environ.get("DEEPLAB2_ZOO_STRUCTURE", ROOT)
pytestmark = pytest.mark.skipif(not os.path.isdir(ROOT),
                                reason=f"deeplab2 zoo structure records not found at {ROOT}")

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
NON_MODEL = ("_CHECKPOINTABLE_OBJECT_GRAPH", "global_step", "save_counter")
BACKBONES = ("axial_swidernet_1_1_1", "axial_swidernet_1_1_3", "axial_swidernet_1_1_4.5",
             "max_deeplab_s_backbone", "max_deeplab_l_backbone")


def _record(name):
    """(key -> shape of every model tensor, summary) of a structure record."""
    shapes = {}
    with open(os.path.join(ROOT, name, "variables.txt")) as f:
        for line in f:
            key, shape, _ = line.rstrip("\n").split("\t")
            if key.split("/")[0] in NON_MODEL:
                continue
            assert key.endswith(SUFFIX), key
            shapes[key[: -len(SUFFIX)]] = tuple(json.loads(shape))
    with open(os.path.join(ROOT, name, "summary.json")) as f:
        return shapes, json.load(f)


def _squeezed(shape):
    return tuple(int(d) for d in shape if d != 1)


def _assert_same_structure(model, shapes, prefix=""):
    mapping = {k: w for k, w in weight_keys(model).items()}
    wanted = {k: v for k, v in shapes.items() if k.startswith(prefix)}
    assert sorted(set(mapping) - set(wanted))[:5] == []
    assert sorted(set(wanted) - set(mapping))[:5] == []
    assert len(mapping) == len(wanted)
    # deeplab2 keeps broadcast unit axes in its attention batch norms ([3, 1, 8, 1, 1]
    # where we hold [3, 8]); every other shape is identical.
    wrong = [(k, tuple(w.shape), wanted[k]) for k, w in mapping.items()
             if _squeezed(w.shape) != _squeezed(wanted[k])]
    assert wrong == []
    differ = sum(tuple(w.shape) != wanted[k] for k, w in mapping.items())
    assert differ == sum("batch_norm_similarity" in k or "batch_norm_retrieved_output" in k
                         for k in mapping)


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _free(model):
    del model
    keras.backend.clear_session()
    gc.collect()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_cityscapes_model_and_its_imagenet_encoder_match_deeplab2(backbone):
    name = f"{backbone}_os16"
    shapes, summary = _record(f"cityscapes_{name}")
    encoder_shapes, encoder_summary = _record(f"imagenet_{backbone}")
    model = get_model(name)
    _assert_same_structure(model, shapes)
    assert _trainable(model) == summary["trainable_params"]
    # The registry's backbone variant is the panoptic model's backbone, as data; the
    # ImageNet record is its encoder.
    assert get_variant(backbone) == get_variant(name).backbone
    assert get_variant(name).postprocessing == PostProcessingSettings(
        center_threshold=0.1, nms_kernel=13, keep_k_centers=400, stuff_area_limit=2048,
        convention="deeplab2")
    assert model.labels == CITYSCAPES
    _assert_same_structure(model.backbone, encoder_shapes, "encoder/")
    assert _trainable(model.backbone) == encoder_summary["trainable_params"]
    assert len(model.backbone.weights) == encoder_summary["variables"]
    _free(model)


def test_axial_resnet_50_gelu_matches_the_kmax_pixel_encoder():
    shapes, summary = _record("imagenet_maxs_gelu")
    model = get_model("axial_resnet_50_gelu")
    _assert_same_structure(model, shapes)
    assert _trainable(model) == summary["trainable_params"] == 41_343_424
    assert model.activation == "gelu" and model.output_stride == 32
    _free(model)


@pytest.mark.parametrize("backbone,multiplier,blocks", [
    ("axial_swidernet_1_1_1", 1.0, (3, 6, 3, 3)),
    ("axial_swidernet_1_1_3", 3.0, (3, 6, 3, 3)),
    ("axial_swidernet_1_1_4.5", 4.5, (3, 6, 3, 3)),
    ("max_deeplab_l_backbone", 1.0, (3, 6, 3, 3)),
    ("max_deeplab_s_backbone", 1.0, (3, 4, 6, 3)),
])
def test_the_converter_recognises_each_record_from_its_keys(backbone, multiplier, blocks):
    for record, expected in ((f"cityscapes_{backbone}_os16", f"{backbone}_os16"),
                             (f"imagenet_{backbone}", backbone)):
        shapes, _ = _record(record)
        arch = read_architecture(shapes)
        assert arch.backbone["layer_multiplier"] == multiplier
        assert tuple(arch.backbone["num_blocks"]) == blocks
        assert arch.backbone["width_multiplier"] == 1.0
        if backbone == "max_deeplab_s_backbone" and record.startswith("imagenet"):
            with pytest.raises(ValueError, match="activation cannot be read"):
                recognise(arch)
            assert recognise(arch, "axial_resnet_50_gelu") == "axial_resnet_50_gelu"
        else:
            assert recognise(arch) == expected
        if arch.panoptic:
            assert arch.heads["num_classes"] == 19
            assert arch.heads["semantic_head_channels"] == 256
            assert arch.heads["instance_head_channels"] == 32


def test_max_l_output_stride_is_read_from_its_stacked_decoder():
    shapes, _ = _record("imagenet_max_deeplab_l_backbone")
    assert read_architecture(shapes).backbone["output_stride"] == 16
    stages = {k.split("/")[1] for k in shapes if k.startswith("encoder/_decoder_stage")}
    assert stages == {f"_decoder_stage{i}{tail}" for i in range(1, 5)
                      for tail in ("", "_resized_fuse")}

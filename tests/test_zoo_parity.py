"""Converted deeplab2 zoo checkpoints reproduce deeplab2's own outputs
(shared/fixtures/deeplab2_zoo/numeric): every encoder endpoint, decoder feature, raw and
upsampled head within 1e-4 of the reference's scale, under TensorFlow and under JAX; the
"deeplab2" post-processing convention reproduces deeplab2's int maps bit for bit."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from axial_keras.labels import CITYSCAPES
from axial_keras.models.convert import from_deeplab2
from axial_keras.models.presets import preset_post_processing
from axial_keras.models.registry import get_variant
from axial_keras.panoptic import PanopticPostProcessor, PanopticPredictor, PostProcessingSettings
from zoo_fixtures import (ENDPOINTS, FIXTURES, NUMERIC, TOLERANCE, numeric_path,
                          relative_errors)

pytestmark = pytest.mark.skipif(not os.path.isdir(numeric_path("maxs_gelu_w0.25")),
                                reason="deeplab2 zoo numeric fixtures not found")
FIXTURE_B = os.path.join(FIXTURES, "deeplab2", "axial_deeplab_s")
# Float arrays each fixture holds (encoder endpoints, decoder features, raw heads,
# upsampled heads and probabilities); every one is compared.
EXPECTED_OUTPUTS = {"maxs_gelu_w0.25": 11}
# The panoptic fixtures (fixture B is deeplab2's Cityscapes config on axial_deeplab_s).
PANOPTIC = [numeric_path(f) for f in sorted(NUMERIC) if NUMERIC[f][0].endswith("_os16")] + [
    FIXTURE_B]
# Our map -> deeplab2's.
MAPS = (("panoptic", "panoptic_pred"), ("semantic", "semantic_pred"),
        ("instance", "instance_pred"))
# Pixels our converted model may label otherwise: the tie the zoo README names (a 1-ulp
# input change already moves it in deeplab2 itself).
TIE_PIXELS = {"max_deeplab_s_backbone_w0.25": 1}


def _cityscapes_settings() -> PostProcessingSettings:
    """The settings of the zoo's `*_os16` variants, from their registry record."""
    return get_variant("axial_swidernet_1_1_1_os16").postprocessing


@pytest.mark.parametrize("fixture", sorted(NUMERIC))
def test_converted_checkpoint_reproduces_deeplab2(fixture):
    expected_name, name = NUMERIC[fixture]
    model = from_deeplab2(os.path.join(numeric_path(fixture), "checkpoint"), name)
    assert model.name == expected_name
    errors = relative_errors(model, numeric_path(fixture))
    assert len(errors) == EXPECTED_OUTPUTS.get(fixture, 11 + 2 + 3 + 4)
    assert {k: e for k, e in errors.items() if e > TOLERANCE} == {}
    encoder = [e for k, e in errors.items() if k.split("/")[-1] in ENDPOINTS
               and not k.startswith(("raw/", "decoder/"))]
    assert len(encoder) == 11
    assert max(encoder) <= 1e-5


def test_gelu_is_decided_by_the_name():
    checkpoint = os.path.join(numeric_path("maxs_gelu_w0.25"), "checkpoint")
    with pytest.raises(ValueError, match="activation cannot be read from the checkpoint"):
        from_deeplab2(checkpoint)
    # The same weights in the ReLU model load (the keys are identical) but compute
    # something else: res5 moves by a large fraction of its scale.
    relu = from_deeplab2(checkpoint, "max_deeplab_s_backbone", output_stride=32)
    assert relu.activation == "relu"
    assert relative_errors(relu, numeric_path("maxs_gelu_w0.25"))["res5"] > 0.1


_JAX_SCRIPT = """
import json, sys
import keras
import axial_keras.models  # registers the layers
from zoo_fixtures import relative_errors
result = {}
for path, fixture in json.loads(sys.argv[1]):
    result[fixture] = relative_errors(keras.saving.load_model(path), fixture)
print("RESULT" + json.dumps(result))
"""


# Loading and first calls under JAX cost about a minute per model on a 2-core CPU, so by
# default the JAX run covers MaX-L, the fixture with the most layer types (wide stem, basic
# and axial blocks, stacked decoder, Panoptic-DeepLab decoders and heads; the exact GeLU
# runs under JAX in test_zoo_layers); ZOO_JAX_FIXTURES=all runs the four zoo fixtures and
# fixture B (all within 3.5e-5, README "Model zoo").
_JAX_DEFAULT = ("max_deeplab_l_backbone_w0.125",)


def test_converted_models_reproduce_deeplab2_under_jax(tmp_path):
    pytest.importorskip("jax")
    everything = os.environ.get("ZOO_JAX_FIXTURES") == "all"
    jobs = []
    for fixture in (sorted(NUMERIC) + ["B"]) if everything else _JAX_DEFAULT:
        folder = FIXTURE_B if fixture == "B" else numeric_path(fixture)
        name = "axial_deeplab_s" if fixture == "B" else NUMERIC[fixture][1]
        path = str(tmp_path / f"{fixture}.keras")
        from_deeplab2(os.path.join(folder, "checkpoint"), name).save(path)
        jobs.append((path, folder))
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(tests), tests]))
    run = subprocess.run([sys.executable, "-c", _JAX_SCRIPT, json.dumps(jobs)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [l for l in run.stdout.splitlines() if l.startswith("RESULT")][-1]
    result = json.loads(line[len("RESULT"):])
    assert len(result) == len(jobs)
    for folder, errors in result.items():
        assert len(errors) >= 11, folder
        assert {k: e for k, e in errors.items() if e > TOLERANCE} == {}, folder
    print(json.dumps(result, indent=1))


def test_a_local_span_can_be_set_on_a_converted_model():
    checkpoint = os.path.join(numeric_path("axial_swidernet_1_1_1_w0.125"), "checkpoint")
    x = np.load(os.path.join(numeric_path("axial_swidernet_1_1_1_w0.125"), "input.npy"))
    ref = np.load(os.path.join(numeric_path("axial_swidernet_1_1_1_w0.125"), "outputs.npz"))
    # The paper's m = 65 covers every axis of this input (7 x 9 at stride 16): the same
    # numbers as deeplab2's global attention.
    wide = from_deeplab2(checkpoint, spans=(None, 65, 65, 65, 65))
    assert wide.backbone.spans == (None, 65, 65, 65, 65)
    logits = np.asarray(wide(x)["semantic_logits"])
    assert np.abs(logits - ref["semantic_logits"]).max() <= TOLERANCE * np.abs(
        ref["semantic_logits"]).max()
    # A 3-wide window does not: attention then sees only neighbours.
    narrow = from_deeplab2(checkpoint, spans=(None, None, None, 3, 3))
    moved = np.abs(np.asarray(narrow(x)["semantic_logits"]) - ref["semantic_logits"]).max()
    assert moved > 100 * TOLERANCE * np.abs(ref["semantic_logits"]).max()


@pytest.mark.parametrize("unroll", [False, True])
@pytest.mark.parametrize("folder", PANOPTIC, ids=os.path.basename)
def test_deeplab2_convention_reproduces_deeplab2_maps(folder, unroll):
    # deeplab2's own float outputs in, so only the post-processing is compared.
    ref = np.load(os.path.join(folder, "outputs.npz"))
    outputs = {"semantic_logits": ref["semantic_logits"],
               "center_heatmap": ref["center_heatmap"][..., None],
               "center_offsets": ref["offset_map"]}
    settings = _cityscapes_settings()
    assert settings.convention == "deeplab2"
    got = PanopticPostProcessor(CITYSCAPES, settings, unroll=unroll)(outputs)
    for ours, theirs in MAPS:
        np.testing.assert_array_equal(np.asarray(got[ours]), ref[theirs], err_msg=ours)
    np.testing.assert_array_equal(np.asarray(got["instance_scores"]), ref["instance_scores"])
    # Our default convention finds the same segments under other ids.
    default = PanopticPostProcessor(
        CITYSCAPES, dataclasses.replace(settings, convention="axial_keras"))(outputs)
    ours = np.asarray(default["panoptic"]).ravel()
    pairs = set(zip(ours.tolist(), ref["panoptic_pred"].ravel().tolist()))
    assert len(pairs) == len(np.unique(ours)) == len(np.unique(ref["panoptic_pred"]))
    assert (ours != ref["panoptic_pred"].ravel()).sum() > 0


@pytest.mark.parametrize("folder", PANOPTIC, ids=os.path.basename)
def test_converted_model_gives_deeplab2_maps(folder):
    model = from_deeplab2(os.path.join(folder, "checkpoint"))
    settings = _cityscapes_settings() if folder == FIXTURE_B else preset_post_processing(model)
    got = PanopticPredictor(model, model.labels, settings)(
        np.load(os.path.join(folder, "input.npy")))
    ref = np.load(os.path.join(folder, "outputs.npz"))
    allowed = TIE_PIXELS.get(os.path.basename(folder), 0)
    for ours, theirs in MAPS:
        assert (np.asarray(got[ours]) != ref[theirs]).sum() <= allowed, ours

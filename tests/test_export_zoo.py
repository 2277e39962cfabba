"""Export of a converted model zoo preset (a local deeplab2 archive built from a numeric
fixture; no network): `python -m export.saved_model --preset`, LiteRT float32 at the
fixture's size, `python -m export.predict --preset`, parity with the Keras predictor."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from axial_keras.models import from_preset
from axial_keras.models.presets import preset_post_processing
from axial_keras.panoptic import PanopticPredictor, write_png
from export import tflite
from export.metadata import read_saved_model_metadata
from export.runtime import load_exported
from export.saved_model import parse_spans
from zoo_fixtures import deeplab2_archive, numeric_path

SWIDERNET = numeric_path("axial_swidernet_1_1_1_w0.125")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPANS = (None, 65, 65, 65, 65)
MAPS = ("panoptic", "semantic", "instance")
FLOATS = ("semantic_probability", "instance_scores")
pytestmark = [pytest.mark.skipif(not os.path.isdir(SWIDERNET),
                                 reason="deeplab2 zoo numeric fixtures not found"),
              pytest.mark.xdist_group("test_export_zoo")]  # one worker exports the zoo model


def _run(*args):
    process = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(archive, SavedModel directory, uint8 image [1, 97, 129, 3], Keras maps)."""
    folder = tmp_path_factory.mktemp("zoo_export")
    archive = deeplab2_archive(SWIDERNET, folder / "axial_swidernet.tar.gz")
    output = str(folder / "saved_model")
    _run("export.saved_model", f"--preset={archive}", "--spans=none,65,65,65,65",
         f"--output_dir={output}")
    image = np.load(os.path.join(SWIDERNET, "input.npy")).astype(np.uint8)
    model = from_preset(archive, spans=SPANS)
    predictor = PanopticPredictor(model, model.labels, preset_post_processing(model))
    reference = {k: np.asarray(v) for k, v in predictor(image.astype(np.float32)).items()}
    return archive, output, image, reference


def test_the_saved_model_is_the_converted_model_with_deeplab2_post_processing(exported):
    _, output, image, reference = exported
    metadata = read_saved_model_metadata(output)
    assert metadata.post_processing.convention == "deeplab2"
    assert metadata.post_processing.nms_kernel == 13
    assert metadata.post_processing.keep_k_centers == 400
    assert metadata.experiment == "axial_swidernet_1_1_1_os16"
    assert metadata.model_config["config"]["backbone"]["config"]["spans"] == list(SPANS)
    outputs = load_exported(output)(image)
    for key in MAPS:
        np.testing.assert_array_equal(outputs[key], reference[key], err_msg=key)
    for key in FLOATS:
        assert np.abs(outputs[key] - reference[key]).max() <= 1e-4, key
    # Deeplab2 panoptic ids: the fixture's 97 x 129 scene has many instances.
    assert len(np.unique(outputs["instance"])) > 20


def test_litert_float32_matches_keras_and_has_no_while_loop(exported, tmp_path):
    _, output, image, reference = exported
    content = tflite.convert(output, "none", input_size=image.shape[1:3])
    assert "WHILE" not in set(tflite.operator_names(content))
    path = tmp_path / "zoo.tflite"
    path.write_bytes(content)
    outputs = load_exported(str(path))(image)
    for key in MAPS:
        np.testing.assert_array_equal(outputs[key], reference[key], err_msg=key)
    for key in FLOATS:
        assert np.abs(outputs[key] - reference[key]).max() <= 1e-4, key


def test_predict_runs_a_preset(exported, tmp_path):
    archive, _, image, reference = exported
    image_path = str(tmp_path / "street.png")
    write_png(image_path, image[0])
    _run("export.predict", f"--preset={archive}", "--spans=none,65,65,65,65",
         f"--output_dir={tmp_path}", image_path)
    with open(tmp_path / "street_segments.json") as f:
        found = json.load(f)
    ids, areas = np.unique(reference["panoptic"], return_counts=True)
    want = {int(i): int(a) for i, a in zip(ids, areas) if i // 1000 != 255}
    assert {segment["id"]: segment["area"] for segment in found} == want


def test_bad_spans_are_named():
    assert parse_spans(["none", "65"]) == (None, 65)
    assert parse_spans(None) is None
    with pytest.raises(ValueError, match="'-3'"):
        parse_spans(["none", "-3"])

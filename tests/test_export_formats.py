"""Export: the SavedModel's contract (signatures, mixed sizes, bad input), parity with the
trainer's evaluation, serving it the way TF Serving does from a TF-only process, LiteRT
(float32 parity, int8, no WHILE loop) and ONNX parity, the predict tool, and loading
weights from .keras / .weights.h5 / TF checkpoints.

One model and one SavedModel serve the whole module: fresh weights (seeded) of the
digits_panoptic experiment, with the centre threshold set from the model's own heatmap so
that every image has several instances and the parity checks compare real panoptic maps.
The model is exported the way `make demo` does it: from a trainer-style model_dir
(config.json, model.json, labels.json, post_processing.json and a TF checkpoint).
"""

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_keras import saving
from axial_keras.data import DIGITS_PANOPTIC, generate_digits_panoptic
from axial_keras.panoptic import write_png
from export import images as export_images
from export import onnx as export_onnx
from export import predict, rest_api, saved_model, tflite
from export.metadata import read_saved_model_metadata, read_tflite_metadata
from export.runtime import load_exported
from trainer.experiments import build_model, get_experiment, save_config
from trainer.tasks import create_task

pytestmark = pytest.mark.xdist_group("test_export_formats")  # one worker builds the exported model fixture once

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
AGREEMENT = 0.999


def _png(image: np.ndarray) -> bytes:
    return tf.io.encode_png(image).numpy()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(
        ">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _zero_size_png() -> bytes:
    """A well-formed PNG whose header declares 0 x 0 pixels."""
    header = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b""))
            + _chunk(b"IEND", b""))


def b64(data: bytes) -> dict:
    """A REST API binary value."""
    return {"b64": base64.b64encode(data).decode()}


def _bmp(image: np.ndarray) -> bytes:
    """A 24-bit bottom-up BMP (lossless, unlike JPEG)."""
    height, width = image.shape[:2]
    row = (width * 3 + 3) // 4 * 4
    pixels = b"".join(image[y, :, ::-1].tobytes().ljust(row, b"\0")
                      for y in range(height - 1, -1, -1))
    return (b"BM" + struct.pack("<IHHI", 54 + len(pixels), 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835,
                          0, 0) + pixels)


@pytest.fixture(scope="module")
def images():
    return generate_digits_panoptic(8, "test", SIZE, seed=1)[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images):
    """(config, model_dir, SavedModel dir, SavedModel runner, the trained-side model)."""
    root = tmp_path_factory.mktemp("export")
    config = get_experiment("digits_panoptic")
    keras.utils.set_random_seed(config.trainer.seed)
    model = build_model(config)
    # Fresh weights give nearly constant class maps; a unit-variance semantic prediction
    # layer spreads the argmax over several classes, so agreement is tested on real maps.
    kernel = model.get_layer("semantic_head").final_conv.kernel
    kernel.assign(np.random.default_rng(0).normal(0.0, 1.0, kernel.shape).astype("float32"))
    heat = np.asarray(model(images.astype("float32"))["center_heatmap"])
    threshold = float(np.quantile(heat, 0.9))
    config = get_experiment("digits_panoptic",
                            [f"task.post_processing.center_threshold={threshold}"])
    model_dir = str(root / "model_dir")
    save_config(config, model_dir)
    saving.write_model_artifacts(model_dir, model, config.task.labels,
                                 config.task.post_processing)
    tf.train.CheckpointManager(saving.model_checkpoint(model), model_dir, 1).save(
        checkpoint_number=300)
    directory = str(root / "saved_model" / "1")
    saved_model.export_saved_model(model_dir, directory)
    return config, model_dir, directory, load_exported(directory), model


@pytest.fixture(scope="module")
def reference(exported, images):
    """The SavedModel's uint8-signature outputs on `images`."""
    return exported[3](images)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def test_saved_model_serves_encoded_and_uint8_batches_identically(exported, images, reference):
    runner = exported[3]
    assert set(runner.model.signatures) == {"serving_default", "serving_uint8"}
    encoded = runner.encoded([_png(image) for image in images])
    for key in ("panoptic", "semantic", "instance", "instance_scores", "semantic_probability"):
        assert encoded[key].shape == (len(images), SIZE, SIZE)
        np.testing.assert_array_equal(encoded[key], reference[key])
    np.testing.assert_array_equal(encoded["image_size"], [[SIZE, SIZE]] * len(images))
    # The maps are not trivial: several classes and instances per image.
    assert len(np.unique(reference["semantic"])) >= 3
    assert all(len(np.unique(instance)) >= 3 for instance in reference["instance"])
    divisor = exported[0].task.labels.label_divisor
    np.testing.assert_array_equal(reference["instance"], reference["panoptic"] % divisor)
    probability = reference["semantic_probability"]
    assert np.all((probability > 0) & (probability <= 1))


def test_the_saved_model_gives_the_trainer_evaluation_maps(exported, images, reference):
    """What is evaluated is what is served: the trainer task's `predict` (a
    `PanopticPredictor` with the experiment's settings) on the model before export, and
    the SavedModel rebuilt from the model_dir, give identical panoptic maps."""
    config, model = exported[0], exported[4]
    task = create_task(config)
    evaluated = tf.function(lambda x: task.predict(model, x))(images.astype(np.float32))
    np.testing.assert_array_equal(evaluated.numpy(), reference["panoptic"])
    encoded = exported[3].encoded([_png(image) for image in images])
    np.testing.assert_array_equal(evaluated.numpy(), encoded["panoptic"])
    assert len(np.unique(reference["panoptic"])) >= 10  # many segments, not a trivial map


def _graph_op_types(graph_def) -> set:
    """Op types of a GraphDef's nodes and of every function in its library."""
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def test_the_uint8_signature_and_the_tflite_graph_have_no_while_loop(exported, tmp_path):
    signature = exported[3].model.signatures["serving_uint8"]
    types = _graph_op_types(signature.graph.as_graph_def())
    assert "Conv2D" in types and "TopKV2" in types  # the network and the post-processor
    assert not {op for op in types if "While" in op}
    content = tflite.convert(exported[2], "none")
    operators = set(tflite.operator_names(content))
    assert "CONV_2D" in operators and "WHILE" not in operators


def test_mixed_sizes_are_padded_and_each_image_keeps_its_own_result(exported, images):
    runner = exported[3]
    small = images[1][:60, :50]  # Pads to 65 x 65 like the 64 x 64 image: same network input.
    together = runner.encoded([_png(images[0]), _bmp(small)])
    alone = runner.encoded([_bmp(small)])
    np.testing.assert_array_equal(together["image_size"], [[64, 64], [60, 50]])
    for key in ("panoptic", "semantic", "instance", "semantic_probability"):
        np.testing.assert_array_equal(together[key][1, :60, :50], alone[key][0])
    labels = exported[0].task.labels
    assert np.all(together["panoptic"][1, 60:] == labels.void_id)
    assert np.all(together["panoptic"][1, :, 50:] == labels.void_id)
    assert np.all(together["semantic"][1, :, 50:] == labels.ignore_label)
    assert np.all(together["semantic_probability"][1, :, 50:] == 0)


@pytest.mark.parametrize("data, message", [
    (b"", "images[1] is an empty string"),
    (b"%PDF-1.4 not an image", "images[1] is not an image file"),
    (b"\x89PNG\r\n\x1a\n\0\0", "images[1] is truncated"),
    (_zero_size_png(), "images[1] is a zero-size image"),
    (_png(np.full((16, 16, 3), 7, np.uint8))[:-16], "Invalid PNG"),
], ids=["empty", "not_an_image", "truncated_header", "zero_size", "corrupt"])
def test_bad_images_raise_invalid_argument_naming_the_problem(exported, images, data, message):
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        exported[3].encoded([_png(images[0]), data])
    assert message in rest_api.error_message(error.value)


def test_an_empty_request_is_an_invalid_argument(exported):
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds no images"):
        exported[3].model.signatures["serving_default"](images=tf.constant([], tf.string))


def test_tf_only_process_answers_rest_requests_and_survives_bad_ones(exported, images,
                                                                      reference, tmp_path):
    """TF Serving's REST payloads, answered by a process that can import only TensorFlow."""
    script = tmp_path / "rest_api.py"
    shutil.copy(os.path.join(REPO, "export", "rest_api.py"), script)
    requests = [
        {"instances": [b64(_png(images[0])), b64(_png(images[1]))]},
        {"instances": [b64(_png(images[0])), b64(_png(images[0])[:60])]},
        {"inputs": [b64(b"")]},
        {"inputs": {"images": [b64(_zero_size_png())]}},
        {"instances": [{"images": b64(b"GIF is what this is not")}]},
        {"signature_name": "serving_uint8", "inputs": [[1, 2, 3]]},
        {"signature_name": "serving_uint8", "inputs": images[2:3].tolist()},
        {"inputs": [b64(_png(images[2]))]},
    ]
    body = "".join(json.dumps(request) + "\n" for request in requests)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.run(
        [sys.executable, "-X", "importtime", str(script), "--saved_model_dir", exported[2]],
        input=body, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in process.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tensorflow" in imported
    assert not {name for name in imported
                if name.split(".")[0] in ("axial_keras", "trainer", "export")}
    responses = [json.loads(line) for line in process.stdout.splitlines()]
    assert len(responses) == len(requests)
    first = responses[0]["predictions"]
    for i in range(2):
        np.testing.assert_array_equal(first[i]["panoptic"], reference["panoptic"][i])
        assert first[i]["image_size"] == [SIZE, SIZE]
    errors = [response.get("error", "") for response in responses[1:6]]
    assert all(response.get("type") == "InvalidArgumentError" for response in responses[1:6])
    assert "PNG" in errors[0]
    assert errors[1].startswith("images[0] is an empty string")
    assert errors[2].startswith("images[0] is a zero-size image")
    assert errors[3].startswith("images[0] is not an image file")
    assert errors[4] == ("Input 'images' has shape [1, 3]; the signature takes "
                         "[None, None, None, 3].")
    for response in responses[6:]:
        np.testing.assert_array_equal(response["outputs"]["panoptic"], reference["panoptic"][2:3])


def test_tflite_float32_is_builtin_only_and_matches_the_saved_model(exported, images, reference,
                                                                    tmp_path):
    path = tflite.write_tflite(exported[2], str(tmp_path / "model.tflite"))
    with open(path, "rb") as f:
        content = f.read()
    assert not [op for op in tflite.operator_names(content) if op.startswith("CUSTOM")]
    metadata = read_tflite_metadata(content)
    assert (metadata.input_size, metadata.batch_size) == ((SIZE, SIZE), 1)
    assert metadata.quantization == "none"
    runner = load_exported(path)
    details = runner.runner.get_input_details()["images"]
    assert details["dtype"] == np.uint8 and list(details["shape"]) == [1, SIZE, SIZE, 3]
    assert set(runner.runner.get_output_details()) == set(reference)
    outputs = runner(images)
    assert _agreement(outputs["panoptic"], reference["panoptic"]) >= AGREEMENT
    assert _agreement(outputs["semantic"], reference["semantic"]) >= AGREEMENT
    np.testing.assert_allclose(outputs["semantic_probability"],
                               reference["semantic_probability"], atol=1e-4)


def test_tflite_int8_runs_and_gives_valid_panoptic_ids(exported, images, reference, tmp_path):
    config = exported[0]
    calibration = [export_images.fit_image(image, (SIZE, SIZE))[0] for image in
                   generate_digits_panoptic(8, "train", SIZE, seed=0)[0]]
    content = tflite.convert(exported[2], "int8", representative_images=calibration)
    assert not [op for op in tflite.operator_names(content) if op.startswith("CUSTOM")]
    assert "QUANTIZE" in tflite.operator_names(content)
    path = tmp_path / "int8.tflite"
    path.write_bytes(content)
    float32_bytes = 4 * sum(int(np.prod(shape)) for _, shape in tf.train.list_variables(
        os.path.join(exported[2], "variables", "variables")))
    assert os.path.getsize(path) < 0.5 * float32_bytes
    outputs = load_exported(str(path))(images)
    labels, settings = config.task.labels, config.task.post_processing
    classes = outputs["panoptic"] // labels.label_divisor
    assert np.all((classes < labels.num_classes) | (classes == labels.ignore_label))
    assert np.all(outputs["panoptic"] % labels.label_divisor <= settings.keep_k_centers)
    assert np.all((outputs["semantic_probability"] > 0) & (outputs["semantic_probability"] <= 1))
    # Agreement is measured, not tested: these fresh weights give near-tied logits
    # (benchmarks/export_formats.py measures a trained model).
    print(f"int8 agreement with the SavedModel: semantic "
          f"{_agreement(outputs['semantic'], reference['semantic']):.4f}, panoptic "
          f"{_agreement(outputs['panoptic'], reference['panoptic']):.4f}")


def test_onnx_matches_the_saved_model(exported, images, reference, tmp_path):
    path = export_onnx.write_onnx(exported[2], str(tmp_path / "model.onnx"))
    runner = load_exported(path)
    assert runner.metadata.format == "onnx" and runner.input_size == (SIZE, SIZE)
    outputs = runner(images)
    assert _agreement(outputs["panoptic"], reference["panoptic"]) >= AGREEMENT
    assert _agreement(outputs["semantic"], reference["semantic"]) >= AGREEMENT


def test_predict_writes_pictures_and_segments(exported, images, tmp_path):
    image_path = str(tmp_path / "scene.png")
    write_png(image_path, images[3][:50])
    runner = exported[3]
    result = predict.predict_file(runner, image_path)
    assert result["panoptic"].shape == (50, SIZE)
    paths, found = predict.write_outputs(str(tmp_path), "scene", result, runner.metadata)
    assert all(os.path.getsize(path) > 0 for path in paths)
    assert export_images.read_image(paths[1]).shape == (50, 2 * SIZE + 2, 3)
    with open(paths[2]) as f:
        assert json.load(f) == found
    labels = runner.metadata.labels
    assert labels == DIGITS_PANOPTIC
    assert sum(segment["area"] for segment in found) == int(np.sum(
        result["panoptic"] // labels.label_divisor != labels.ignore_label))
    assert [segment for segment in found if segment["is_thing"]]
    for segment in found:
        assert segment["class_name"] == DIGITS_PANOPTIC.classes[segment["class"]].name
        assert segment["id"] == segment["class"] * 256 + segment["instance"]
        mask = result["panoptic"] == segment["id"]
        if segment["is_thing"]:
            assert segment["center_score"] == round(float(result["instance_scores"][mask].max()), 4)
        else:
            assert "center_score" not in segment and segment["instance"] == 0


def test_export_cli_rebuilds_from_the_model_dir_in_a_fresh_process(exported, images,
                                                                   reference, tmp_path):
    """`python -m export.saved_model --checkpoint=MODEL_DIR` (the `make demo` command) needs
    nothing but the model_dir: no experiment, no earlier import of the model classes."""
    output = str(tmp_path / "saved_model" / "1")
    process = subprocess.run(
        [sys.executable, "-m", "export.saved_model", f"--checkpoint={exported[1]}",
         f"--output_dir={output}"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    outputs = load_exported(output)(images)
    np.testing.assert_array_equal(outputs["panoptic"], reference["panoptic"])


def test_segments_name_classes_and_score_things_only(exported):
    metadata = read_saved_model_metadata(exported[2])
    panoptic = np.array([[10 * 256, 10 * 256, 3 * 256 + 1],
                         [255 * 256, 11 * 256, 3 * 256 + 1]])
    scores = np.array([[0.0, 0.0, 1.0312], [0.0, 0.0, 0.9]], np.float32)
    assert predict.segments(panoptic, scores, metadata) == [
        {"id": 769, "class": 3, "class_name": "digit_3", "is_thing": True, "instance": 1,
         "area": 2, "center_score": 1.0312},
        {"id": 2560, "class": 10, "class_name": "sand", "is_thing": False, "instance": 0,
         "area": 2},
        {"id": 2816, "class": 11, "class_name": "water", "is_thing": False, "instance": 0,
         "area": 1}]


def test_fit_image_pads_small_and_shrinks_large_images():
    image = np.random.RandomState(0).randint(0, 255, (30, 20, 3)).astype(np.uint8)
    frame, content = export_images.fit_image(image, (64, 64))
    assert content == (30, 20)
    np.testing.assert_array_equal(frame[:30, :20], image)
    assert np.all(frame[30:] == export_images.PAD_PIXEL)
    frame, content = export_images.fit_image(np.zeros((128, 64, 3), np.uint8), (64, 64))
    assert content == (64, 32) and frame.shape == (64, 64, 3)
    ids = np.arange(64 * 32).reshape(64, 32)
    back = export_images.unfit_map(np.pad(ids, ((0, 0), (0, 32))), content, (128, 64))
    assert back.shape == (128, 64)
    np.testing.assert_array_equal(back[::2, ::2], ids)


def test_weights_load_from_keras_files_and_tf_checkpoints(exported, images, tmp_path):
    config, source = exported[0], exported[4]
    expected = np.asarray(source(images[:1].astype("float32"))["semantic_logits"])
    source.save_weights(str(tmp_path / "model.weights.h5"))
    source.save(str(tmp_path / "model.keras"))
    for path in (str(tmp_path / "model.weights.h5"), str(tmp_path / "model.keras")):
        target = build_model(config)
        assert saving.load_weights(target, path) == path
        np.testing.assert_array_equal(
            np.asarray(target(images[:1].astype("float32"))["semantic_logits"]), expected)
    optimizer = keras.optimizers.AdamW()
    optimizer.build(source.trainable_variables)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=source, optimizer=optimizer), str(tmp_path / "ckpt"), 1)
    prefix = manager.save(checkpoint_number=300)
    target = build_model(config)
    assert not saving.untracked_variables(target)
    assert saving.load_weights(target, str(tmp_path / "ckpt")) == prefix
    np.testing.assert_array_equal(
        np.asarray(target(images[:1].astype("float32"))["semantic_logits"]), expected)
    with pytest.raises(FileNotFoundError):
        saving.load_weights(target, str(tmp_path / "missing.keras"))


def test_export_metadata_and_the_model_dir_it_rebuilds_from(exported, tmp_path):
    config, model_dir, directory = exported[:3]
    metadata = read_saved_model_metadata(directory)
    assert metadata.experiment == "digits_panoptic"
    assert metadata.checkpoint == os.path.join(model_dir, "ckpt-300")
    assert metadata.labels == config.task.labels == DIGITS_PANOPTIC
    assert metadata.post_processing == config.task.post_processing
    assert metadata.model_config == saving.read_model_artifacts(model_dir).model_config
    assert metadata.default_input_size() == (64, 64)
    # Export rebuilt the model with row chunking off, through its own config.
    backbone = metadata.model_config["config"]["backbone"]["config"]
    assert backbone["attention_chunk_elements"] is not None
    rebuilt = saving.rebuild_model(metadata.model_config, saved_model.EXPORT_CONFIG)
    assert rebuilt.backbone.attention_chunk_elements is None
    with pytest.raises(FileNotFoundError, match="model.json"):
        saved_model.export_saved_model(str(tmp_path), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_a_bfloat16_export_computes_in_bfloat16_and_serves_float32_outputs(exported, images,
                                                                         reference, tmp_path):
    model_dir = exported[1]
    directory = str(tmp_path / "bf16")
    metadata = saved_model.export_saved_model(model_dir, directory, dtype="mixed_bfloat16")
    assert metadata.model_config["config"]["dtype"]["config"]["name"] == "mixed_bfloat16"
    assert metadata.model_config["config"]["backbone"]["config"]["dtype"]["config"][
        "name"] == "mixed_bfloat16"
    runner = load_exported(directory)
    assert runner.metadata.model_config == metadata.model_config
    # The network's convolutions run in bfloat16; the variables stay float32.
    graph = runner.model.signatures["serving_uint8"].graph.as_graph_def()
    conv_types = {node.attr["T"].type for function in graph.library.function
                  for node in function.node_def if node.op == "Conv2D"}
    assert conv_types == {tf.bfloat16.as_datatype_enum}
    stored = tf.train.load_checkpoint(os.path.join(directory, "variables", "variables"))
    assert {dtype for name, dtype in stored.get_variable_to_dtype_map().items()
            if "VARIABLE_VALUE" in name and "save_counter" not in name} == {tf.float32}
    outputs = runner(images)
    for key in ("panoptic", "semantic", "instance", "instance_scores", "semantic_probability"):
        assert outputs[key].dtype == reference[key].dtype, key
        assert outputs[key].shape == reference[key].shape, key
    # bfloat16 rounding (8 significant bits) moves the probabilities a little and flips
    # only near-tied pixels of the class map.
    difference = np.abs(outputs["semantic_probability"] - reference["semantic_probability"])
    assert _agreement(outputs["semantic"], reference["semantic"]) >= 0.97
    assert difference.mean() < 1e-3
    with pytest.raises(ValueError, match="Unknown export dtype 'float16'; expected one of "
                                         "float32, mixed_bfloat16"):
        saved_model.export_saved_model(model_dir, str(tmp_path / "f16"), dtype="float16")
    assert not os.path.exists(tmp_path / "f16")

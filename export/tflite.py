r"""Converts an exported SavedModel to a LiteRT `.tflite` model of builtin ops only.

    python -m export.tflite --saved_model_dir=models/digits/1 --output=digits.tflite \
        --quantization=none|float16|dynamic|int8 [--input_size=64,64] [--batch_size=1]

The SavedModel's `serving_uint8` signature (model and post-processing) is traced at a
fixed `[batch_size, height, width, 3]` uint8 input (`--input_size` defaults to the
experiment's crop size) and converted with `TFLITE_BUILTINS` only: no Flex, no custom
op, so any LiteRT runtime runs it. Image decoding stays outside (it would need Flex):
`export.images.fit_image` prepares pixels. The `.tflite` has one signature,
`serving_default`, input `images` and the SavedModel's output names (`panoptic`,
`semantic`, `instance`, `instance_scores`, `semantic_probability`, `image_size`), and
carries the export metadata (`export.metadata`).

Quantization: `none` (float32), `float16` (float16 weights, float32 compute), `dynamic`
(int8 weights, activations quantized on the fly) and `int8` (int8 weights and
activations calibrated on `--num_calibration_images` of the experiment's own training
data; ops without an int8 kernel stay float).
"""

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from axial_keras import cli
from axial_keras.files import write_atomically
from export.images import fit_image
from export.serving import POST_PROCESSING_SCOPE
from export.metadata import (ExportMetadata, embed_tflite_metadata, parse_input_size,
                             read_saved_model_metadata)

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
SIGNATURE = "serving_default"

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("saved_model_dir", None, "A SavedModel written by export.saved_model.")
    flags.DEFINE_string("output", None, "The .tflite file to write.")
    flags.DEFINE_enum("quantization", "none", QUANTIZATIONS, "Weight/activation quantization.")
    flags.DEFINE_list("input_size", None, "height,width of the fixed input (default: the "
                      "experiment's crop size).")
    flags.DEFINE_integer("batch_size", 1, "Fixed batch size of the input.")
    flags.DEFINE_integer("num_calibration_images", 64, "int8: calibration images.")
    flags.mark_flags_as_required(["saved_model_dir", "output"])


def calibration_images(metadata: ExportMetadata, input_size: Tuple[int, int],
                       count: int) -> List[np.ndarray]:
    """`count` uint8 `[height, width, 3]` training images of the experiment, fitted to
    `input_size`.

    Raises:
        ValueError: for a dataset kind without images to calibrate on.
    """
    data = metadata.training_data
    if not data:
        raise ValueError("The SavedModel does not say what it was trained on, so there are "
                         "no int8 calibration images; export from a trainer model_dir.")
    if data["dataset"] == "digits_panoptic":
        from axial_keras.data import generate_digits_panoptic

        images, _ = generate_digits_panoptic(count, "train", data["image_size"],
                                             seed=data["seed"])
    elif data["dataset"] == "tfrecord":
        from axial_keras.data import panoptic_dataset

        examples = panoptic_dataset(data["train_file_pattern"], training=False).take(count)
        images = [example["image"].numpy() for example in examples]
    else:
        raise ValueError(f"No calibration images for dataset {data['dataset']!r}.")
    return [fit_image(image, input_size)[0] for image in images]


def _fixed_size_function(saved_model, input_size: Tuple[int, int], batch_size: int):
    """`serving_uint8` traced at `uint8 [batch_size, height, width, 3]`."""
    signature = saved_model.signatures["serving_uint8"]
    spec = tf.TensorSpec([batch_size, *input_size, 3], tf.uint8, name="images")

    @tf.function(input_signature=[spec])
    def serve(images):
        return signature(images=images)

    return serve.get_concrete_function()


def convert(saved_model_dir: str, quantization: str = "none",
            input_size: Optional[Tuple[int, int]] = None, batch_size: int = 1,
            representative_images: Optional[Sequence[np.ndarray]] = None,
            num_calibration_images: int = 64) -> bytes:
    """Converts `saved_model_dir` (module docstring); returns the `.tflite` bytes.

    Args:
        saved_model_dir: a SavedModel from `export.saved_model`.
        quantization: one of `QUANTIZATIONS`.
        input_size: fixed `(height, width)`; None: the experiment's crop size.
        batch_size: fixed batch size.
        representative_images: int8 only: uint8 `[height, width, 3]` images of
            `input_size`; None: `calibration_images` of the experiment.
        num_calibration_images: int8 only: how many of the experiment's images.

    Raises:
        ValueError: for an unknown quantization.
        tf.lite ConverterError: when the graph needs a non-builtin op.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; expected one of "
                         f"{', '.join(QUANTIZATIONS)}.")
    metadata = read_saved_model_metadata(saved_model_dir)
    input_size = tuple(input_size or metadata.default_input_size())
    saved_model = tf.saved_model.load(saved_model_dir)
    function = _fixed_size_function(saved_model, input_size, batch_size)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], saved_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        images = (list(representative_images) if representative_images is not None else
                  calibration_images(metadata, input_size, num_calibration_images))
        content = _quantize_network(converter, images, batch_size)
    else:
        content = converter.convert()
    return embed_tflite_metadata(content, dataclasses.replace(
        metadata, format="tflite", input_size=input_size, batch_size=batch_size,
        quantization=quantization))


def _quantize_network(converter, images: Sequence[np.ndarray], batch_size: int) -> bytes:
    """int8 weights and activations for the network; post-processing stays float.

    Post-processing compares distances to centres that start at 1e30 (their squares
    overflow to inf, and an infinite calibration range crashes TF 2.21's quantizer) and
    needs peaks that tie exactly, so int8 would wreck it anyway. TF has no public switch
    to keep chosen ops float, so this runs the converter's own two steps: calibrate, drop
    the ranges of every tensor in `serving.POST_PROCESSING_SCOPE` and of the outputs
    (an op without a range is not quantized), then quantize.
    """
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils

    def dataset():
        for start in range(0, len(images) - batch_size + 1, batch_size):
            yield [np.stack(images[start:start + batch_size])]

    converter.representative_dataset = dataset
    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(converter.convert()))
    prefix = POST_PROCESSING_SCOPE + "/"
    for subgraph in model.subgraphs:
        outputs = set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if tensor.name.decode().startswith(prefix) or index in outputs:
                tensor.quantization = None
    return mlir_quantize(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def operator_names(content: bytes) -> List[str]:
    """The operators a `.tflite` model uses: builtin names, `CUSTOM:<code>` otherwise."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {value: name for name, value in vars(schema.BuiltinOperator).items()
             if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    result = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            result.append(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            result.append(names[builtin])
    return sorted(result)


def write_tflite(saved_model_dir: str, output: str, quantization: str = "none",
                 input_size: Optional[Tuple[int, int]] = None, batch_size: int = 1,
                 num_calibration_images: int = 64) -> str:
    """`convert`s and writes the `.tflite` file atomically; returns its path."""
    content = convert(saved_model_dir, quantization, input_size, batch_size,
                      num_calibration_images=num_calibration_images)
    custom = [name for name in operator_names(content) if name.startswith("CUSTOM")]
    if custom:
        raise ValueError(f"The converted model needs non-builtin ops: {custom}.")
    write_atomically(output, content)
    logging.info("%s (%s, %d bytes) written", output, quantization, len(content))
    return output


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        input_size = parse_input_size(FLAGS.input_size)
    except ValueError as error:
        raise app.UsageError(str(error))
    write_tflite(FLAGS.saved_model_dir, FLAGS.output, FLAGS.quantization, input_size,
                 FLAGS.batch_size, FLAGS.num_calibration_images)
    print(f"{FLAGS.output}: {os.path.getsize(FLAGS.output):,} bytes ({FLAGS.quantization})")


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

r"""Converts an exported SavedModel to ONNX with tf2onnx.

    python -m export.onnx --saved_model_dir=models/digits/1 --output=digits.onnx \
        [--input_size=64,64] [--batch_size=1] [--opset=17]

The SavedModel's `serving_uint8` signature (model and post-processing) is converted at a
fixed input, `images` uint8 `[batch_size, height, width, 3]` (`--input_size` defaults to
the experiment's crop size), with the SavedModel's output names. The shape is fixed
because tf2onnx 1.17 mis-converts shape arithmetic that depends on it: integer floor
division and modulo of negative numbers become truncating ones (mis-sizing the model's
internal padding to `16k + 1`), and with an unknown batch the post-processor's
per-instance class vote disagrees with TensorFlow; with a static shape TensorFlow folds
that arithmetic before conversion, and the outputs equal the SavedModel's. The file
carries the export metadata (`export.metadata`) in its `metadata_props`. Run it with
onnxruntime (`export.runtime.OnnxRunner`).
"""

import dataclasses
import os
from typing import Optional, Tuple

import tensorflow as tf
from absl import app, flags, logging

from axial_keras import cli
from axial_keras.files import write_atomically
from export.metadata import METADATA_KEY, parse_input_size, read_saved_model_metadata

DEFAULT_OPSET = 17

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("saved_model_dir", None, "A SavedModel written by export.saved_model.")
    flags.DEFINE_string("output", None, "The .onnx file to write.")
    flags.DEFINE_list("input_size", None, "height,width of the fixed input (default: the "
                      "experiment's crop size).")
    flags.DEFINE_integer("batch_size", 1, "Fixed batch size of the input.")
    flags.DEFINE_integer("opset", DEFAULT_OPSET, "ONNX opset.")
    flags.mark_flags_as_required(["saved_model_dir", "output"])


def convert(saved_model_dir: str, input_size: Optional[Tuple[int, int]] = None,
            batch_size: int = 1, opset: int = DEFAULT_OPSET):
    """Converts `saved_model_dir` (module docstring); returns the ONNX `ModelProto`."""
    import tf2onnx

    metadata = read_saved_model_metadata(saved_model_dir)
    input_size = tuple(input_size or metadata.default_input_size())
    saved_model = tf.saved_model.load(saved_model_dir)
    signature = saved_model.signatures["serving_uint8"]
    spec = [tf.TensorSpec([batch_size, *input_size, 3], tf.uint8, name="images")]

    @tf.function(input_signature=spec)
    def serve(images):
        return signature(images=images)

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    described = dataclasses.replace(metadata, format="onnx", input_size=input_size,
                                    batch_size=batch_size)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, described.to_json()
    return proto


def write_onnx(saved_model_dir: str, output: str, input_size: Optional[Tuple[int, int]] = None,
               batch_size: int = 1, opset: int = DEFAULT_OPSET) -> str:
    """`convert`s and writes the `.onnx` file atomically; returns its path."""
    proto = convert(saved_model_dir, input_size, batch_size, opset)
    write_atomically(output, proto.SerializeToString())
    logging.info("%s (%d bytes) written", output, os.path.getsize(output))
    return output


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        input_size = parse_input_size(FLAGS.input_size)
    except ValueError as error:
        raise app.UsageError(str(error))
    write_onnx(FLAGS.saved_model_dir, FLAGS.output, input_size, FLAGS.batch_size, FLAGS.opset)
    print(f"{FLAGS.output}: {os.path.getsize(FLAGS.output):,} bytes")


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

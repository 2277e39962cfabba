r"""Exports a SavedModel for TF Serving: encoded images in, panoptic maps out, no custom op.

    python -m export.saved_model --checkpoint=demo_output/digits_panoptic \
        --output_dir=models/digits/1

`--checkpoint` is a trainer `model_dir` (its latest checkpoint), a checkpoint in it
(`DIR/ckpt-900`, `DIR/best/ckpt-900`) or a `.keras` / `.weights.h5` file in it. The
model is rebuilt from the model's own description that the trainer wrote there
(`model.json`, `labels.json`, `post_processing.json`: `axial_keras.saving`), not from an
experiment, with attention row chunking off (no loop in the graph); the weights are
loaded into it, and `keras.export.ExportArchive` writes a SavedModel with two signatures
(`export.serving` has the contract):

- `serving_default`: `images` `tf.string [batch]` of encoded PNG / JPEG / BMP / GIF;
- `serving_uint8`: `images` `uint8 [batch, height, width, 3]` (no WHILE loop: it
  converts to LiteRT builtins and ONNX).

Both run the `axial_keras.panoptic.PanopticPredictor` the trainer evaluates with and
return `panoptic`, `semantic`, `instance`, `instance_scores`, `semantic_probability`
(`[batch, height, width]`) and `image_size` (`[batch, 2]`). The SavedModel loads in a
process that imports only TensorFlow, and carries `export.metadata` (labels,
post-processing, model config). TF Serving serves `--model_base_path=models/digits`
(versions are numbered sub-directories).
"""

import os
from typing import Optional

import keras
import tensorflow as tf
from absl import app, flags, logging

from axial_keras import cli
from axial_keras.files import atomic_path, read_json
from axial_keras.labels import PanopticLabels
from axial_keras.panoptic import PanopticPredictor, PostProcessingSettings
from axial_keras.saving import (find_model_directory, load_weights, read_model_artifacts,
                                rebuild_model)
from export import serving
from export.metadata import ExportMetadata, write_saved_model_metadata

FLAGS = flags.FLAGS
# Serialized-config keys set for export, at any depth of the model's config: every
# attention layer attends all its rows at once (no `ops.map` loop in the graph).
EXPORT_CONFIG = {"attention_chunk_elements": None, "chunk_elements": None}


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("checkpoint", None, "A trainer model_dir (its latest checkpoint), a "
                        "TF checkpoint prefix in one, or a .keras / .weights.h5 file in one.")
    flags.DEFINE_string("model_dir", None, "The directory holding model.json, labels.json and "
                        "post_processing.json (default: found from --checkpoint).")
    flags.DEFINE_string("output_dir", None, "The SavedModel directory (replaced if it exists).")
    flags.mark_flags_as_required(["checkpoint", "output_dir"])


def write_saved_model(model: keras.Model, labels: PanopticLabels,
                      settings: PostProcessingSettings, output_dir: str,
                      metadata: ExportMetadata) -> str:
    """Writes `model` with its predictor as a SavedModel with both signatures.

    The SavedModel is written next to `output_dir` and renamed into place
    (`axial_keras.files.atomic_path`), so a server watching the directory never loads a
    partial export. The archive tracks only the variables the signatures use
    (`ExportArchive.track(model)` would store every variable a second time).

    Args:
        model: keras.Model. The panoptic model.
        labels: PanopticLabels. Its label space.
        settings: PostProcessingSettings. Its post-processing.
        output_dir: str. The SavedModel directory (replaced if it exists).
        metadata: ExportMetadata. Written into `assets.extra`.

    Returns:
        `output_dir`.
    """
    encoded = PanopticPredictor(model, labels, settings)
    pixels = PanopticPredictor(model, labels, settings, unroll=True)
    with atomic_path(os.path.abspath(output_dir)) as temporary:
        archive = keras.export.ExportArchive()
        archive.add_endpoint(
            "serving_default", lambda images: serving.serve_encoded(encoded, images),
            input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        archive.add_endpoint(
            "serving_uint8", lambda images: serving.serve_pixels(pixels, images),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        archive.write_out(temporary, verbose=False)
        write_saved_model_metadata(temporary, metadata)
    return output_dir


def export_saved_model(checkpoint: str, output_dir: str,
                       model_dir: Optional[str] = None) -> ExportMetadata:
    """Rebuilds a trainer run's model, loads `checkpoint` and writes the SavedModel.

    Args:
        checkpoint: str. Weights (`axial_keras.saving.load_weights`).
        output_dir: str. The SavedModel directory (replaced if it exists).
        model_dir: str. Where `model.json`, `labels.json` and `post_processing.json` are
            (default: `checkpoint` or its nearest parent directory holding them).

    Returns:
        The metadata written with the SavedModel.

    Raises:
        FileNotFoundError: no model description or no checkpoint.
        ValueError: a model that is not panoptic, or weights that do not fit.
    """
    model_dir = model_dir or find_model_directory(checkpoint)
    if model_dir is None:
        raise FileNotFoundError(f"No model.json in or above {checkpoint!r}: pass the model_dir "
                                "of a trainer run (or --model_dir).")
    artifacts = read_model_artifacts(model_dir)
    if artifacts.labels is None or artifacts.post_processing is None:
        raise ValueError(f"{model_dir} describes a model without panoptic labels; export "
                         "serves panoptic models.")
    model = rebuild_model(artifacts.model_config, EXPORT_CONFIG)
    checkpoint = load_weights(model, checkpoint)
    logging.info("Loaded weights from %s", checkpoint)
    run_config = os.path.join(model_dir, "config.json")
    run = read_json(run_config) if os.path.isfile(run_config) else {}
    metadata = ExportMetadata(
        labels=artifacts.labels, post_processing=artifacts.post_processing,
        model_config=artifacts.model_config, training_data=run.get("data"),
        experiment=run.get("name"), checkpoint=checkpoint)
    write_saved_model(model, artifacts.labels, artifacts.post_processing, output_dir, metadata)
    logging.info("SavedModel of %s written to %s", model.name, output_dir)
    return metadata


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        export_saved_model(FLAGS.checkpoint, FLAGS.output_dir, FLAGS.model_dir)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    print(f"SavedModel written to {FLAGS.output_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

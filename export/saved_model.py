r"""Exports a SavedModel for TF Serving: encoded images in, panoptic maps out, no custom op.

    python -m export.saved_model --experiment=digits_panoptic \
        --checkpoint=demo_output/axial_deeplab_tiny_digits.keras --output_dir=models/digits/1

The model is rebuilt from the experiment config (`trainer.experiments.build_model`),
`--checkpoint` weights are loaded into it (`export.weights`; without one, freshly
initialized weights are exported with a warning), and `keras.export.ExportArchive`
writes a SavedModel with two signatures (`export.serving` has the contract):

- `serving_default`: `images` `tf.string [batch]` of encoded PNG / JPEG / BMP / GIF;
- `serving_uint8`: `images` `uint8 [batch, height, width, 3]`.

Both return `panoptic`, `semantic`, `instance`, `instance_scores`, `semantic_probability`
(`[batch, height, width]`) and `image_size` (`[batch, 2]`); post-processing runs inside
the graph. The SavedModel loads in a process that imports only TensorFlow. TF Serving
serves `--model_base_path=models/digits` (versions are numbered sub-directories).
The experiment can also come from a trainer `model_dir`: `--checkpoint=MODEL_DIR` with no
`--experiment` reads `MODEL_DIR/config.json`.
"""

import os
import shutil
from typing import Optional

import keras
import tensorflow as tf
from absl import app, flags, logging

from axial_keras import cli
from axial_keras.panoptic import PanopticPostProcessor
from export import serving
from export.metadata import ExportMetadata, write_saved_model_metadata
from export.weights import load_weights
from trainer.experiments import (ExperimentConfig, apply_overrides, build_model,
                                 get_experiment, load_config, post_processor_args, to_dict)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("experiment", None, "A registered experiment name (default: the "
                        "config.json of a --checkpoint directory).")
    flags.DEFINE_multi_string("override", [], "section.field=value (repeatable).")
    flags.DEFINE_string("checkpoint", None, "Weights: a .keras / .weights.h5 file, a TF "
                        "checkpoint prefix or a directory of TF checkpoints. Without one, "
                        "freshly initialized weights are exported.")
    flags.DEFINE_string("output_dir", None, "The SavedModel directory (replaced if it exists).")
    flags.mark_flag_as_required("output_dir")


def metadata_for(config: ExperimentConfig, checkpoint: Optional[str]) -> ExportMetadata:
    """The `ExportMetadata` of a SavedModel of `config`."""
    task = config.task
    return ExportMetadata(
        experiment=config.name, config=to_dict(config), num_classes=task.num_classes,
        thing_class_ids=tuple(task.thing_class_ids), label_divisor=task.label_divisor,
        ignore_label=task.ignore_label, post_processing=post_processor_args(task),
        checkpoint=checkpoint)


def write_saved_model(model, post: PanopticPostProcessor, output_dir: str,
                      metadata: ExportMetadata) -> str:
    """Writes `model` + `post` as a SavedModel with both signatures; returns `output_dir`.

    The SavedModel is written next to `output_dir` and renamed into place, so a server
    watching the directory never loads a partial export. The archive tracks only the
    variables the signatures use (`ExportArchive.track(model)` would store every
    variable a second time).
    """
    output_dir = os.path.abspath(output_dir)
    temporary = f"{output_dir}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    with serving.portable_tracing():
        archive = keras.export.ExportArchive()
        archive.add_endpoint(
            "serving_default", lambda images: serving.serve_encoded(model, post, images),
            input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        archive.add_endpoint(
            "serving_uint8", lambda images: serving.serve_pixels(model, post, images),
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
        archive.write_out(temporary, verbose=False)
    write_saved_model_metadata(temporary, metadata)
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    os.rename(temporary, output_dir)
    return output_dir


def export_saved_model(config: ExperimentConfig, output_dir: str,
                       checkpoint: Optional[str] = None) -> ExportMetadata:
    """Rebuilds `config`'s model, loads `checkpoint` and writes the SavedModel.

    Args:
        config: a panoptic experiment.
        output_dir: the SavedModel directory (replaced if it exists).
        checkpoint: weights (see `export.weights`); None exports fresh weights.

    Returns:
        The metadata written with the SavedModel.

    Raises:
        ValueError: for a classification experiment or weights that do not fit.
    """
    if config.task.kind != "panoptic":
        raise ValueError(f"Experiment {config.name!r} is a {config.task.kind} experiment; "
                         "export serves panoptic models.")
    keras.utils.set_random_seed(config.trainer.seed)
    model = build_model(config)
    if checkpoint:
        checkpoint = load_weights(model, checkpoint)
        logging.info("Loaded weights from %s", checkpoint)
    else:
        logging.warning("No checkpoint given: exporting freshly initialized weights of %s "
                        "(the outputs are meaningless).", config.name)
    post = PanopticPostProcessor(**post_processor_args(config.task))
    metadata = metadata_for(config, checkpoint)
    write_saved_model(model, post, output_dir, metadata)
    logging.info("SavedModel of %s written to %s", config.name, output_dir)
    return metadata


def config_from_flags(experiment: Optional[str], overrides, checkpoint: Optional[str]
                      ) -> ExperimentConfig:
    """The experiment `--experiment` names, else the config.json of a checkpoint directory."""
    if experiment:
        return get_experiment(experiment, overrides)
    if checkpoint and os.path.isfile(os.path.join(checkpoint, "config.json")):
        return apply_overrides(load_config(checkpoint), overrides)
    raise ValueError("Pass --experiment, or a --checkpoint directory holding config.json.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags(FLAGS.experiment, FLAGS.override, FLAGS.checkpoint)
    except ValueError as error:
        raise app.UsageError(str(error))
    try:
        export_saved_model(config, FLAGS.output_dir, FLAGS.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    print(f"SavedModel written to {FLAGS.output_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

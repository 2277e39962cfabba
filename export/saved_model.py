r"""Exports a SavedModel for TF Serving: encoded images in, panoptic maps out, no custom op.

    python -m export.saved_model --checkpoint=demo_output/digits_panoptic \
        --output_dir=models/digits/1
    python -m export.saved_model --preset=max_deeplab_s_backbone_os16_cityscapes \
        --spans=none,65,65,65,65 --output_dir=models/max_s/1
    python -m export.saved_model --preset=axial_swidernet_1_1_1_os16_cityscapes \
        --dtype=mixed_bfloat16 --output_dir=models/swidernet_bf16/1

`--preset` is a name of `axial_keras.models.list_presets()` or a local archive,
checkpoint, `.keras` file or preset folder (`axial_keras.models.from_preset`); the model
is rebuilt from its own config the same way, with the post-processing its published
numbers were evaluated with (`presets.preset_post_processing`: deeplab2's convention).

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

`--dtype=mixed_bfloat16` exports the network computing in bfloat16 (weights stored in
float32, the post-processing and every output in float32): on a CPU with AVX512_BF16 it
served the zoo's Axial-SWideRNet 1.4-1.7x faster than the float32 export, and the demo
model's held-out PQ went from 58.94 to 58.50 (the README's figures); on a CPU without
bfloat16 instructions it is slower than float32. `float32` (the default) computes what
deeplab2 computes.
"""

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf
from absl import app, flags, logging

from axial_keras import cli
from axial_keras.files import atomic_path, read_json
from axial_keras.labels import PanopticLabels
from axial_keras.panoptic import PanopticPredictor, PostProcessingSettings
from axial_keras.saving import (find_model_directory, load_weights, read_model_artifacts,
                                rebuild_model, replace_config_values)
from export import serving
from export.metadata import ExportMetadata, write_saved_model_metadata

FLAGS = flags.FLAGS
# Serialized-config keys set for export, at any depth of the model's config: every
# attention layer attends all its rows at once (no `ops.map` loop in the graph).
EXPORT_CONFIG = {"attention_chunk_elements": None, "chunk_elements": None}
# The Keras dtype policies a model can be exported with (`--dtype`).
EXPORT_DTYPES = ("float32", "mixed_bfloat16")


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("checkpoint", None, "A trainer model_dir (its latest checkpoint), a "
                        "TF checkpoint prefix in one, or a .keras / .weights.h5 file in one.")
    flags.DEFINE_string("model_dir", None, "The directory holding model.json, labels.json and "
                        "post_processing.json (default: found from --checkpoint).")
    flags.DEFINE_string("output_dir", None, "The SavedModel directory (replaced if it exists).")
    flags.DEFINE_enum("dtype", "float32", EXPORT_DTYPES, "Keras dtype policy the network "
                      "computes in (mixed_bfloat16: bfloat16 compute, float32 weights and "
                      "outputs).")
    define_preset_flags()
    flags.mark_flags_as_required(["output_dir"])
    flags.mark_flags_as_mutual_exclusive(["checkpoint", "preset"], required=True)


def define_preset_flags() -> None:
    """`--preset` and `--spans` (shared with `export.predict`)."""
    flags.DEFINE_string("preset", None, "A model zoo preset name, or a local deeplab2 "
                        ".tar.gz, checkpoint, .keras file or preset folder.")
    flags.DEFINE_list("spans", None, "Attention span per stage for --preset, e.g. "
                      "none,65,65,65,65 (the paper's local m = 65; default: the model's).")


def parse_spans(values: Optional[Sequence[str]]) -> Optional[Tuple[Optional[int], ...]]:
    """`--spans` values as the `spans` override (`none` -> None); None without the flag.

    Raises:
        ValueError: naming a value that is neither `none` nor a positive int.
    """
    if not values:
        return None
    spans = []
    for value in values:
        if value.strip().lower() == "none":
            spans.append(None)
        elif value.strip().isdigit() and int(value) > 0:
            spans.append(int(value))
        else:
            raise ValueError(f"--spans takes positive ints or `none`, got {value!r}.")
    return tuple(spans)


def with_dtype(model_config: Dict[str, Any], dtype: str) -> Dict[str, Any]:
    """`model_config` with every layer's dtype policy set to `dtype` (`EXPORT_DTYPES`): the
    config an export is rebuilt from and its metadata records.

    Raises:
        ValueError: naming a dtype outside `EXPORT_DTYPES`.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"Unknown export dtype {dtype!r}; expected one of "
                         f"{', '.join(EXPORT_DTYPES)}.")
    policy = keras.dtype_policies.serialize(keras.DTypePolicy(dtype))
    return replace_config_values(model_config, {"dtype": policy})


def model_for_export(model_config: Dict[str, Any], weights: Optional[keras.Model] = None
                     ) -> keras.Model:
    """The model `model_config` describes, rebuilt for export (`EXPORT_CONFIG`), with the
    weights of `weights` when given.

    Args:
        model_config: dict. `keras.saving.serialize_keras_object(model)` (its dtype policy,
            `with_dtype`, is the one the export computes in; variables stay float32).
        weights: keras.Model or None. A model of that config whose weights are copied.
    """
    model = rebuild_model(model_config, EXPORT_CONFIG)
    if weights is not None:
        for target, source in zip(model.weights, weights.weights):
            target.assign(source)
    return model


def load_preset_for_export(preset: str, spans: Optional[Sequence[Optional[int]]] = None,
                           dtype: str = "float32") -> Tuple[keras.Model, ExportMetadata]:
    """A zoo preset's model rebuilt for export, and the metadata it is exported with.

    Args:
        preset: str. `from_preset`'s argument (a name or a local path).
        spans: attention spans per stage (the `spans` override) or None.
        dtype: str. The dtype policy it computes in (`EXPORT_DTYPES`).

    Raises:
        ValueError: an unknown preset, an unreadable archive, or a model without panoptic
            labels or recorded post-processing.
    """
    from axial_keras.models import from_preset
    from axial_keras.models.presets import preset_post_processing

    converted = from_preset(preset, **({"spans": tuple(spans)} if spans else {}))
    labels = getattr(converted, "labels", None)
    if not isinstance(labels, PanopticLabels):
        raise ValueError(f"Preset {preset!r} is not a panoptic model ({converted.name}); "
                         "export serves panoptic models.")
    metadata = ExportMetadata(
        labels=labels, post_processing=preset_post_processing(converted),
        model_config=with_dtype(keras.saving.serialize_keras_object(converted), dtype),
        experiment=converted.name, checkpoint=preset)
    return model_for_export(metadata.model_config, converted), metadata


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


def export_saved_model(checkpoint: str, output_dir: str, model_dir: Optional[str] = None,
                       dtype: str = "float32") -> ExportMetadata:
    """Rebuilds a trainer run's model, loads `checkpoint` and writes the SavedModel.

    Args:
        checkpoint: str. Weights (`axial_keras.saving.load_weights`).
        output_dir: str. The SavedModel directory (replaced if it exists).
        model_dir: str. Where `model.json`, `labels.json` and `post_processing.json` are
            (default: `checkpoint` or its nearest parent directory holding them).
        dtype: str. The dtype policy the network computes in (`EXPORT_DTYPES`).

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
    model_config = with_dtype(artifacts.model_config, dtype)
    model = model_for_export(model_config)
    checkpoint = load_weights(model, checkpoint)
    logging.info("Loaded weights from %s", checkpoint)
    run_config = os.path.join(model_dir, "config.json")
    run = read_json(run_config) if os.path.isfile(run_config) else {}
    metadata = ExportMetadata(
        labels=artifacts.labels, post_processing=artifacts.post_processing,
        model_config=model_config, training_data=run.get("data"),
        experiment=run.get("name"), checkpoint=checkpoint)
    write_saved_model(model, artifacts.labels, artifacts.post_processing, output_dir, metadata)
    logging.info("SavedModel of %s written to %s", model.name, output_dir)
    return metadata


def export_preset(preset: str, output_dir: str,
                  spans: Optional[Sequence[Optional[int]]] = None,
                  dtype: str = "float32") -> ExportMetadata:
    """Writes the SavedModel of a model zoo preset (`load_preset_for_export`).

    Args:
        preset: str. A preset name or a local archive, checkpoint or preset path.
        output_dir: str. The SavedModel directory (replaced if it exists).
        spans: attention spans per stage (the `spans` override) or None.
        dtype: str. The dtype policy the network computes in (`EXPORT_DTYPES`).

    Returns:
        The metadata written with the SavedModel.
    """
    model, metadata = load_preset_for_export(preset, spans, dtype)
    write_saved_model(model, metadata.labels, metadata.post_processing, output_dir, metadata)
    logging.info("SavedModel of preset %s written to %s", preset, output_dir)
    return metadata


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        if FLAGS.preset:
            export_preset(FLAGS.preset, FLAGS.output_dir, parse_spans(FLAGS.spans),
                          FLAGS.dtype)
        else:
            export_saved_model(FLAGS.checkpoint, FLAGS.output_dir, FLAGS.model_dir,
                               FLAGS.dtype)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    print(f"SavedModel written to {FLAGS.output_dir}")


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

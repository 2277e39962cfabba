"""Self-describing model directories and TensorFlow checkpoints of Keras 3 models.

A trainer run writes, beside its checkpoints (`write_model_artifacts`):

- `model.json`: the model's own config, `keras.saving.serialize_keras_object(model)`;
- `labels.json`: its `PanopticLabels` (panoptic models);
- `post_processing.json`: its `PostProcessingSettings` (panoptic models).

`read_model_artifacts` + `rebuild_model` + `load_weights` turn such a directory back into
the trained model with no experiment registry (what `python -m export.saved_model
--checkpoint=DIR` does).

Checkpoints: `tf.train.Checkpoint` follows object attributes only, so a Keras 3 layer
kept in a Python list is invisible to it and its variables would silently miss every
checkpoint; `untracked_variables` lists them, `model_checkpoint` refuses such a model and
`load_weights` refuses to restore one from a TF checkpoint.

Example:
>>> write_model_artifacts(model_dir, model, labels, settings)
>>> artifacts = read_model_artifacts(model_dir)
>>> model = rebuild_model(artifacts.model_config)
>>> load_weights(model, model_dir)
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional

import keras
import tensorflow as tf

from axial_keras.files import read_json, write_json
from axial_keras.labels import PanopticLabels
from axial_keras.panoptic.postprocessing import PostProcessingSettings

MODEL_FILE = "model.json"
LABELS_FILE = "labels.json"
POST_PROCESSING_FILE = "post_processing.json"


@dataclasses.dataclass(frozen=True)
class ModelArtifacts:
    """What a model directory says about its model.

    Args:
        model_config: dict. `keras.saving.serialize_keras_object(model)`.
        labels: PanopticLabels or None (not a panoptic model).
        post_processing: PostProcessingSettings or None (not a panoptic model).
    """

    model_config: Dict[str, Any]
    labels: Optional[PanopticLabels] = None
    post_processing: Optional[PostProcessingSettings] = None


def write_model_artifacts(directory: str, model: keras.Model,
                          labels: Optional[PanopticLabels] = None,
                          post_processing: Optional[PostProcessingSettings] = None
                          ) -> List[str]:
    """Writes `model.json` (and `labels.json`, `post_processing.json`) into `directory`.

    Args:
        directory: str. The model directory (created if missing).
        model: keras.Model. Its serialized config is written.
        labels: PanopticLabels. The model's label space (panoptic models).
        post_processing: PostProcessingSettings. How its outputs become panoptic maps.

    Returns:
        The paths written.
    """
    paths = [write_json(os.path.join(directory, MODEL_FILE),
                        keras.saving.serialize_keras_object(model))]
    if labels is not None:
        paths.append(write_json(os.path.join(directory, LABELS_FILE), labels.get_config()))
    if post_processing is not None:
        paths.append(write_json(os.path.join(directory, POST_PROCESSING_FILE),
                                post_processing.get_config()))
    return paths


def find_model_directory(path: str) -> Optional[str]:
    """The directory holding `model.json` for a checkpoint `path`: `path` itself (a
    directory), or the nearest of its parent directories; None when there is none."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for _ in range(3):
        if os.path.isfile(os.path.join(directory, MODEL_FILE)):
            return directory
        directory = os.path.dirname(directory)
    return None


def read_model_artifacts(directory: str) -> ModelArtifacts:
    """The `ModelArtifacts` that `write_model_artifacts` wrote into `directory`.

    Raises:
        FileNotFoundError: naming the missing `model.json`.
    """
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No {MODEL_FILE} in {directory!r}: it is not the model_dir "
                                "of a trainer run.")
    labels_path = os.path.join(directory, LABELS_FILE)
    settings_path = os.path.join(directory, POST_PROCESSING_FILE)
    return ModelArtifacts(
        model_config=read_json(path),
        labels=(PanopticLabels.from_config(read_json(labels_path))
                if os.path.isfile(labels_path) else None),
        post_processing=(PostProcessingSettings.from_config(read_json(settings_path))
                         if os.path.isfile(settings_path) else None))


def replace_config_values(config: Any, values: Mapping[str, Any]) -> Any:
    """`config` (nested dicts and lists) with every key named in `values` set to its value.

    Example: `replace_config_values(config, {"attention_chunk_elements": None})` turns off
    row chunking in every attention layer of a serialized model, wherever it sits.
    """
    if isinstance(config, dict):
        return {key: values[key] if key in values else replace_config_values(value, values)
                for key, value in config.items()}
    if isinstance(config, list):
        return [replace_config_values(value, values) for value in config]
    return config


def rebuild_model(model_config: Dict[str, Any],
                  replacements: Optional[Mapping[str, Any]] = None) -> keras.Model:
    """The model `model_config` (a `serialize_keras_object` dict) describes, freshly built.

    Args:
        model_config: dict. The serialized model.
        replacements: config key -> value, applied at every depth first
            (`replace_config_values`).
    """
    import axial_keras.models  # noqa: F401 (registers the model classes it deserializes)

    if replacements:
        model_config = replace_config_values(model_config, replacements)
    return keras.saving.deserialize_keras_object(model_config)


def untracked_variables(model: keras.Model) -> List[str]:
    """Paths of `model`'s variables that `tf.train.Checkpoint(model=model)` cannot reach."""
    root = tf.train.Checkpoint(model=model)
    reachable = {id(node) for node in tf.train.TrackableView(root).descendants()}
    return [variable.path for variable in model.variables if id(variable) not in reachable]


def model_checkpoint(model: keras.Model, **extra) -> tf.train.Checkpoint:
    """`tf.train.Checkpoint(model=model, **extra)`, checked to reach every model variable.

    Args:
        model: keras.Model. The model.
        **extra: further objects to track (`optimizer=...`).

    Raises:
        ValueError: naming model variables that TensorFlow's object graph cannot reach.
    """
    missing = untracked_variables(model)
    if missing:
        raise ValueError(f"{len(missing)} variables of {model.name} are outside TensorFlow's "
                         f"object graph (layers held in a Python list?), so checkpoints would "
                         f"miss them: {', '.join(missing[:3])}.")
    return tf.train.Checkpoint(model=model, **extra)


def resolve_checkpoint(path: str) -> str:
    """The file or TF checkpoint prefix `path` names (a directory's latest checkpoint).

    Raises:
        FileNotFoundError: when nothing loadable is there.
    """
    if path.endswith((".keras", ".weights.h5")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No Keras weights file at {path!r}.")
        return path
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"No TensorFlow checkpoint in directory {path!r}.")
        return latest
    if tf.io.gfile.exists(path + ".index"):
        return path
    raise FileNotFoundError(
        f"{path!r} is neither a .keras / .weights.h5 file, a TensorFlow checkpoint prefix "
        "(with a .index file) nor a directory holding checkpoints.")


def load_weights(model: keras.Model, path: str) -> str:
    """Restores `model`'s weights from `path`; returns the checkpoint read.

    `path` is a Keras file (`.keras`, whose weights only are read, or `.weights.h5`), a
    TF checkpoint prefix written with `tf.train.Checkpoint(model=model, ...)` (as the
    trainer's checkpoints are), or a directory (its latest TF checkpoint). Only `model`
    is read from a TF checkpoint (optimizer and step are ignored), and every model
    variable must be found in it.

    Raises:
        FileNotFoundError: when `path` holds no checkpoint.
        ValueError: when the checkpoint does not fit the model, or a TF checkpoint cannot
            hold every model variable.
        AssertionError: when a TF checkpoint lacks some model variables.
    """
    resolved = resolve_checkpoint(path)
    if resolved.endswith((".keras", ".weights.h5")):
        model.load_weights(resolved)
    else:
        missing = untracked_variables(model)
        if missing:
            raise ValueError(
                f"{len(missing)} variables of {model.name} are outside TensorFlow's object "
                f"graph, so no TF checkpoint holds them (e.g. {', '.join(missing[:3])}); "
                "load a .keras / .weights.h5 file instead.")
        status = tf.train.Checkpoint(model=model).restore(resolved).expect_partial()
        status.assert_existing_objects_matched()
    return resolved

"""Loads trained weights into a model rebuilt from its experiment config.

Accepted checkpoints:

- a Keras file: `.keras` (a saved model; only its weights are read) or `.weights.h5`;
- a TensorFlow checkpoint written with `tf.train.Checkpoint(model=model, ...)` (as the
  Orbit trainer's `tf.train.CheckpointManager` writes): its prefix (`.../ckpt-300`) or a
  directory, whose latest checkpoint is used. Only the `model` is read (the optimizer
  and step are ignored), and every model variable must be found in it.

A TF checkpoint holds only the variables reachable through TensorFlow's object graph.
Keras 3 keeps layers stored in a Python list (`self.convs = [...]`) out of that graph, so
their weights are never written; `untracked_variables` lists them, and `load_weights`
refuses such a model rather than exporting freshly initialized weights in their place.
"""

import os
from typing import List

import tensorflow as tf


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


def untracked_variables(model) -> List[str]:
    """Paths of `model`'s variables that `tf.train.Checkpoint(model=model)` cannot reach."""
    root = tf.train.Checkpoint(model=model)
    reachable = {id(node) for node in tf.train.TrackableView(root).descendants()}
    return [variable.path for variable in model.variables if id(variable) not in reachable]


def load_weights(model, path: str) -> str:
    """Restores `model`'s weights from `path` (module docstring); returns what was read.

    Raises:
        FileNotFoundError: when `path` holds no checkpoint.
        ValueError: when the checkpoint does not fit the model (a Keras file of another
            architecture), or a TF checkpoint cannot hold every model variable.
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
                "export from a .keras / .weights.h5 file instead.")
        status = tf.train.Checkpoint(model=model).restore(resolved).expect_partial()
        status.assert_existing_objects_matched()
    return resolved

"""Checkpoints: the rolling training checkpoints, the best-metric export, weight fingerprints.

Training checkpoints (`model_dir/ckpt-STEP.*`, written by a `tf.train.CheckpointManager`)
hold `model`, `weights` and `optimizer` (with its step counter, moments and Lookahead slow
weights); TensorFlow writes each one to temporary files and renames them, and updates the
`checkpoint` index last, so a run killed while saving resumes from the previous one.

`weights` maps every model variable's path to the variable (drop-path seed states
included). `tf.train.Checkpoint` follows
object attributes, and Keras 3 layers held in Python lists (the decoders' low-level and
fusion convolutions) are not attributes it sees: `model` alone misses their batch-norm
moving statistics (the trainable ones only travel through the optimizer). Read these
checkpoints with `model_checkpoint(model)` (or `model_checkpoint(model, optimizer=...)`).

`BestCheckpointExporter` keeps `model_dir/best/`: the model (`best/ckpt-STEP`, read it
with `model_checkpoint(model)`)
of the evaluation with the best metric so far and `best/best.json` (metric, value, step,
checkpoint, all metrics). The new checkpoint is complete before `best.json` is replaced
(written to a temporary file, then renamed), and older weights are deleted only after
that, so a reader that follows `best.json` always finds complete weights.

Example:
>>> exporter = BestCheckpointExporter(os.path.join(model_dir, "best"), model, step, "pq")
>>> exporter({"pq": 0.41, "miou": 0.8})
"""

import hashlib
import json
import os
from typing import Dict, Optional

from absl import logging
import numpy as np
import tensorflow as tf

BEST_FILE = "best.json"


def model_checkpoint(model, **extra) -> tf.train.Checkpoint:
    """A `tf.train.Checkpoint` that saves and restores every variable of `model`.

    Args:
        model: a Keras model.
        **extra: further objects to track (`optimizer=...`).

    Raises:
        ValueError: when two model variables share a path.
    """
    weights = {variable.path: variable for variable in model.variables}
    if len(weights) != len(model.variables):
        raise ValueError(f"Model {model.name} has variables with equal paths.")
    return tf.train.Checkpoint(model=model, weights=weights, **extra)


def checkpoint_step(path: Optional[str]) -> Optional[int]:
    """The step of a `.../ckpt-STEP` checkpoint path, or None."""
    if not path:
        return None
    return int(path.rsplit("-", 1)[-1])


def weights_fingerprint(variables) -> str:
    """SHA-256 over the values of `variables` (in order): equal iff the bytes are equal."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    return digest.hexdigest()


def read_best(directory: str) -> Optional[Dict]:
    """The contents of `directory/best.json`, or None."""
    path = os.path.join(directory, BEST_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_json(path: str, values: Dict) -> None:
    """Writes `values` as JSON to `path` atomically (temporary file, then rename)."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    tf.io.gfile.rename(temporary, path, overwrite=True)


class BestCheckpointExporter:
    """An Orbit eval action that exports the weights of the best evaluation so far.

    Args:
        directory: the export folder (`model_dir/best`).
        model: the model whose weights are exported.
        global_step: the step variable.
        metric: the evaluation output key to maximize.
    """

    def __init__(self, directory: str, model, global_step: tf.Variable, metric: str):
        self.directory = directory
        self.checkpoint = model_checkpoint(model)
        self.global_step = global_step
        self.metric = metric
        best = read_best(directory)
        self.best_value = best["value"] if best else None

    def __call__(self, output: Dict) -> None:
        if self.metric not in output:
            raise KeyError(f"trainer.best_metric {self.metric!r} is not an evaluation output; "
                           f"outputs: {', '.join(sorted(output))}.")
        value = float(output[self.metric])
        if self.best_value is not None and not value > self.best_value:
            return
        step = int(self.global_step.numpy())
        tf.io.gfile.makedirs(self.directory)
        previous = read_best(self.directory)
        prefix = self.checkpoint.write(os.path.join(self.directory, f"ckpt-{step}"))
        write_json(os.path.join(self.directory, BEST_FILE), {
            "metric": self.metric, "value": value, "step": step,
            "checkpoint": os.path.basename(prefix),
            "metrics": {key: float(v) for key, v in output.items() if np.ndim(v) == 0}})
        if previous and previous["checkpoint"] != os.path.basename(prefix):
            for path in tf.io.gfile.glob(os.path.join(self.directory, previous["checkpoint"])
                                         + ".*"):
                tf.io.gfile.remove(path)
        self.best_value = value
        logging.info("New best %s %.4f at step %d: exported to %s", self.metric, value, step,
                     prefix)

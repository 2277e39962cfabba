"""Checkpoints: the rolling training checkpoints, the best-metric export, weight fingerprints.

Training checkpoints (`model_dir/ckpt-STEP.*`, written by a `tf.train.CheckpointManager`)
hold `model` and `optimizer` (with its step counter, moments and Lookahead slow weights);
TensorFlow writes each one to temporary files and renames them, and updates the
`checkpoint` index last, so a run killed while saving resumes from the previous one. Read
the model with `axial_keras.saving.load_weights` (as `export` does).

`axial_keras.saving.model_checkpoint` builds the checkpoint object (it refuses a model
whose variables TensorFlow's object graph cannot reach).

`BestCheckpointExporter` keeps `model_dir/best/`: the model (`best/ckpt-STEP`)
of the evaluation with the best metric so far and `best/best.json` (metric, value, step,
checkpoint, all metrics). The new checkpoint is complete before `best.json` is replaced
(written to a temporary file, then renamed), and older weights are deleted only after
that, so a reader that follows `best.json` always finds complete weights.

Example:
>>> exporter = BestCheckpointExporter(os.path.join(model_dir, "best"), model, step, "pq")
>>> exporter({"pq": 0.41, "miou": 0.8})
"""

import hashlib
import os
from typing import Dict, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from axial_keras.files import read_json, write_json
from axial_keras.saving import model_checkpoint

BEST_FILE = "best.json"


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
    return read_json(path)


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

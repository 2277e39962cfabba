"""Shared pieces of the trainer tests: tiny experiment overrides, TensorBoard readers, CLI."""

import glob
import os
import subprocess
import sys
from typing import Dict, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny digits-panoptic run: 32 x 32 images, few steps, every interval 2 steps.
TINY_PANOPTIC = [
    "data.image_size=32", "data.num_train_examples=32", "data.num_eval_examples=12",
    "data.batch_size=4", "data.eval_batch_size=4", "trainer.train_steps=4",
    "trainer.steps_per_loop=2", "trainer.checkpoint_interval=2", "trainer.summary_interval=2",
    "trainer.eval_interval=4", "optimizer.warmup_steps=1",
]
# A tiny digits classifier run.
TINY_CLASSIFIER = [
    "data.batch_size=8", "data.eval_batch_size=128", "trainer.train_steps=4",
    "trainer.steps_per_loop=2", "trainer.checkpoint_interval=2", "trainer.summary_interval=2",
    "trainer.eval_interval=4",
]


def image_summaries(directory: str) -> Dict[str, List[np.ndarray]]:
    """TensorBoard image summaries under `directory`: tag -> decoded uint8 images."""
    import tensorflow as tf

    images: Dict[str, List[np.ndarray]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if tensor.dtype.kind in "SO" and tensor.ndim == 1 and len(tensor) > 2:
                    images.setdefault(value.tag, []).extend(
                        tf.io.decode_png(encoded).numpy() for encoded in tensor[2:])
    return images


def checkpoint_values(prefix: str) -> Dict[str, np.ndarray]:
    """Every saved tensor of a checkpoint (the object graph left out)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def trainer_command(model_dir: str, experiment: str, overrides: List[str],
                    *flags: str) -> List[str]:
    """The `python -m trainer.train` command line."""
    return [sys.executable, "-m", "trainer.train", f"--experiment={experiment}",
            f"--model_dir={model_dir}", *flags, *(f"--override={o}" for o in overrides)]


def environment(**extra: str) -> Dict[str, str]:
    """The subprocess environment: this repository importable, quiet TensorFlow."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_trainer(model_dir: str, experiment: str, overrides: List[str], *flags: str,
                timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Runs the trainer CLI to completion; returns the finished process (text output)."""
    return subprocess.run(trainer_command(model_dir, experiment, overrides, *flags),
                          cwd=REPO, env=environment(**env), capture_output=True, text=True,
                          timeout=timeout)


def fingerprint(log: str) -> str:
    """The weights fingerprint a trainer run logged."""
    marker = "weights fingerprint "
    line = [line for line in log.splitlines() if marker in line][-1]
    return line.split(marker)[1].split()[0]


def evaluate_model_dir(config, model_dir: str) -> Dict[str, float]:
    """The evaluation metrics of `model_dir`'s latest checkpoint, recomputed outside the
    trainer's loop: the model rebuilt from the `model.json` the run wrote, then the task's
    `predict` and evaluation over its whole evaluation set."""
    import tensorflow as tf

    from axial_keras.saving import load_weights, read_model_artifacts, rebuild_model
    from trainer.tasks import create_task

    task = create_task(config)
    model = rebuild_model(read_model_artifacts(model_dir).model_config)
    load_weights(model, model_dir)
    evaluation = task.new_evaluation()
    predict = tf.function(lambda images: task.predict(model, images))
    for images, labels in task.eval_dataset(tf.distribute.InputContext()):
        evaluation.update(labels.numpy(), predict(images).numpy())
    return evaluation.result()

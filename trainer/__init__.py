"""Orbit trainer for axial_keras models: `python -m trainer.train` (see trainer/train.py).

Modules: `experiments` (the registry of frozen dataclass configs and typed overrides),
`strategies` (tf.distribute), `optimization` (optimizer and learning-rate schedule),
`inputs` (step-addressed tf.data input), `tasks` (panoptic and classification: model,
data, loss, prediction, metrics), `runners` (Orbit's inner train and eval loops),
`checkpointing` (checkpoints, best-metric export), `reliability` (non-finite loss,
SIGTERM), `monitoring` (progress line, TensorBoard scalars) and `train` (the CLI, also the
console command `axial-keras-train`).

Orbit ships only inside tf-models-official, whose own pins would replace TensorFlow, so it
is installed on its own without dependencies; importing `trainer` without it is an
ImportError that says so.
"""

import importlib.util

from axial_keras import cli as _cli

ORBIT_MISSING = ("the trainer needs Orbit, which ships only inside tf-models-official: "
                 "pip install --no-deps tf-models-official==2.20.0")

_cli.quiet_start_under_python_m()
if importlib.util.find_spec("orbit") is None:
    raise ImportError(ORBIT_MISSING, name="orbit")

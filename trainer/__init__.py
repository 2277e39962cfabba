"""Orbit trainer for axial_keras models: `python -m trainer.train` (see trainer/train.py).

Modules: `experiments` (the registry of frozen dataclass configs and typed overrides),
`strategies` (tf.distribute), `optimization` (optimizer and learning-rate schedule),
`inputs` (step-addressed tf.data input), `tasks` (panoptic and classification: model,
data, loss, prediction, metrics), `runners` (Orbit's inner train and eval loops),
`checkpointing` (checkpoints, best-metric export), `reliability` (non-finite loss,
SIGTERM), `monitoring` (progress line, TensorBoard scalars) and `train` (the CLI).
"""

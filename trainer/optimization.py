"""The optimizer and learning-rate schedule an experiment's `optimizer` section describes.

Schedules (all with a linear warm-up from 0 over `warmup_steps`, counted in `train_steps`):
"polynomial" decays to `end_learning_rate` with power `decay_power` (the paper's "poly"),
"cosine" follows a half cosine to `end_learning_rate`, "constant" stays at the peak.

Optimizers: "radam_lookahead" (the paper's: `Lookahead(RAdam)`), "radam", "adamw",
"adam", "sgd" (with `momentum`). Decoupled weight decay (`weight_decay`) skips biases and
normalization parameters; `global_clipnorm` > 0 clips the gradient norm (per replica, as
Keras clips before the cross-replica sum).

Example:
>>> optimizer = build_optimizer(get_experiment("digits_panoptic").optimizer, train_steps=2100)
"""

from typing import Optional

import keras

from axial_keras.optimizers import Lookahead, RAdam, WarmupPolynomialDecay
from trainer.experiments import OptimizerConfig

OPTIMIZERS = ("radam_lookahead", "radam", "adamw", "adam", "sgd")
SCHEDULES = ("polynomial", "cosine", "constant")
# Variables whose name holds one of these get no weight decay.
NO_DECAY_NAMES = ("bias", "beta", "gamma", "moving_mean", "moving_variance")


def build_learning_rate(config: OptimizerConfig, train_steps: int):
    """The learning-rate schedule of `config` over `train_steps` optimizer steps.

    Raises:
        ValueError: an unknown schedule, or warm-up longer than training.
    """
    if config.schedule not in SCHEDULES:
        raise ValueError(f"Unknown optimizer.schedule {config.schedule!r}; expected one of "
                         f"{', '.join(SCHEDULES)}.")
    warmup = int(config.warmup_steps)
    decay_steps = max(int(train_steps), warmup + 1)
    if config.schedule == "cosine":
        alpha = config.end_learning_rate / config.learning_rate if config.learning_rate else 0.0
        if warmup == 0:
            return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps,
                                                          alpha=alpha)
        return keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps - warmup, alpha=alpha, warmup_target=config.learning_rate,
            warmup_steps=warmup)
    if config.schedule == "constant":
        # Decaying from the peak to the peak: constant after the warm-up.
        return WarmupPolynomialDecay(config.learning_rate, decay_steps, warmup,
                                     end_learning_rate=config.learning_rate)
    return WarmupPolynomialDecay(config.learning_rate, decay_steps, warmup,
                                 power=config.decay_power,
                                 end_learning_rate=config.end_learning_rate)


def build_optimizer(config: OptimizerConfig, train_steps: int,
                    learning_rate: Optional[object] = None) -> keras.optimizers.Optimizer:
    """The optimizer of `config`, driven by `learning_rate` (default: `build_learning_rate`).

    Raises:
        ValueError: an unknown optimizer name.
    """
    if config.name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer.name {config.name!r}; expected one of "
                         f"{', '.join(OPTIMIZERS)}.")
    if learning_rate is None:
        learning_rate = build_learning_rate(config, train_steps)
    common = dict(weight_decay=config.weight_decay or None,
                  global_clipnorm=config.global_clipnorm or None)
    if config.name in ("radam", "radam_lookahead"):
        optimizer = RAdam(learning_rate, **common)
    elif config.name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay,
                                           global_clipnorm=common["global_clipnorm"])
    elif config.name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, **common)
    else:
        optimizer = keras.optimizers.SGD(learning_rate, momentum=config.momentum, **common)
    if config.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    if config.name == "radam_lookahead":
        optimizer = Lookahead(optimizer, sync_period=config.lookahead_sync_period,
                              slow_step_size=config.lookahead_slow_step_size)
    return optimizer

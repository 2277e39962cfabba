"""Lookahead: slow weights that follow an inner optimizer's fast weights every k steps."""

from typing import Any, Optional

import keras
from keras import ops


def _copy_of(variable: Any):
    """An initializer that returns a copy of the current value of `variable`."""

    def initializer(shape, dtype=None):
        del shape
        # A copy, not the same buffer: JAX's training step donates every variable's
        # buffer and refuses one buffer passed twice.
        return ops.copy(ops.cast(ops.convert_to_tensor(variable), dtype or variable.dtype))

    return initializer


@keras.saving.register_keras_serializable(package="axial_keras")
class Lookahead(keras.optimizers.Optimizer):
    """Wraps an optimizer so that every k steps its weights are pulled towards slow weights.

    Reference: Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back",
    NeurIPS 2019 (arXiv:1907.08610), Algorithm 1. Axial-DeepLab (Wang et al., ECCV 2020)
    trains with Lookahead around RAdam.

    The inner optimizer updates the model weights (the fast weights) at every step as it
    would alone. The slow weights phi start as a copy of the model weights when the
    optimizer is built; after every `sync_period`-th step

        phi = phi + slow_step_size * (theta - phi);   theta = phi

    where theta are the fast weights after that step's inner update.

    The slow weights are optimizer variables: they are in `variables`, so `.keras` files
    (`model.save`) and `tf.train.Checkpoint(optimizer=...)` save and restore them.
    `iterations` and `learning_rate` (get and set) are the inner optimizer's, so the
    learning-rate schedule, `LearningRateScheduler`/TensorBoard callbacks and Orbit's
    `global_step` (`optimizer.iterations.value`) all see one counter, which advances once
    per `apply`. A sync follows the step that brings `iterations` to a multiple of
    `sync_period`.

    Gradient clipping, decoupled weight decay and `exclude_from_weight_decay` are the
    inner optimizer's too. The step goes through this wrapper's own Keras `apply` path
    (and the inner optimizer's `update_step` per variable), so it runs under
    `tf.distribute` strategies and inside JAX's stateless training step; inner optimizers
    that rely on their own `apply` (EMA, gradient accumulation, a static loss scale,
    `LossScaleOptimizer`, another `Lookahead`) are refused. For mixed precision, wrap
    the other way round: `LossScaleOptimizer(Lookahead(...))` (which `compile` does by
    itself under a `mixed_float16` policy).

    Each step reads and writes both weight sets (a `where` instead of a conditional, so
    the same code runs compiled on every backend): about two extra weight-sized reads and
    writes per step.

    Args:
        optimizer: `keras.optimizers.Optimizer` or an identifier for
            `keras.optimizers.get`. The inner (fast) optimizer, e.g. `RAdam`.
        sync_period: int >= 1. k, the number of inner steps between syncs.
        slow_step_size: float in (0, 1]. alpha, the fraction of the way the slow weights
            move towards the fast weights at a sync (1 makes Lookahead a no-op).
        name: str or None. Name of the optimizer and prefix of its variables.

    Example:
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> optimizer = Lookahead(RAdam(learning_rate=1e-3), sync_period=6, slow_step_size=0.5)
    >>> model.compile(optimizer=optimizer, loss="mse")
    >>> optimizer.build(model.trainable_variables)
    >>> len(optimizer.slow_weights)
    2
    """

    def __init__(
        self,
        optimizer: Any,
        sync_period: int = 6,
        slow_step_size: float = 0.5,
        name: Optional[str] = None,
    ):
        optimizer = keras.optimizers.get(optimizer)
        if isinstance(optimizer, (Lookahead, keras.optimizers.LossScaleOptimizer)):
            raise ValueError(
                f"Lookahead cannot wrap a {type(optimizer).__name__}; wrap the other way "
                "round, e.g. LossScaleOptimizer(Lookahead(RAdam())).")
        for attribute in ("use_ema", "gradient_accumulation_steps", "loss_scale_factor"):
            if getattr(optimizer, attribute, None):
                raise ValueError(
                    f"Lookahead does not support an inner optimizer with `{attribute}` "
                    f"set (got {getattr(optimizer, attribute)!r}).")
        if int(sync_period) != sync_period or sync_period < 1:
            raise ValueError(f"`sync_period` must be an integer >= 1. Received: {sync_period}")
        if not 0.0 < slow_step_size <= 1.0:
            raise ValueError(f"`slow_step_size` must be in (0, 1]. Received: {slow_step_size}")
        # A callable learning rate keeps the base class from creating a variable of its
        # own; `learning_rate` below is the inner optimizer's.
        super().__init__(learning_rate=lambda: optimizer.learning_rate, name=name)
        self.inner_optimizer = optimizer
        self.sync_period = int(sync_period)
        self.slow_step_size = float(slow_step_size)

    def build(self, var_list):
        """Builds the inner optimizer and one slow weight per variable, a copy of its value.

        Args:
            var_list: list of model variables the optimizer will update.
        """
        if self.built:
            return
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)
        self._slow_weights = [
            None if self._overwrite_variable_with_gradient(variable)
            else self.add_variable_from_reference(variable, "slow", _copy_of(variable))
            for variable in var_list
        ]

    @property
    def variables(self):
        """This wrapper's variables (the base class's step counter, kept in step with the
        inner one, and the slow weights), then the inner optimizer's."""
        return self._variables + self.inner_optimizer.variables

    @property
    def slow_weights(self):
        """The slow weights, in the order of the variables the optimizer was built with."""
        return list(self._slow_weights)

    @property
    def iterations(self):
        """The inner optimizer's step counter (advances once per `apply`)."""
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        """The inner optimizer's current learning rate."""
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def apply(self, grads, trainable_variables=None):
        """Applies one inner step, then the slow-weight sync on every `sync_period`-th step.

        Args:
            grads: list of gradient tensors, one per variable.
            trainable_variables: list of variables, or None once the optimizer is built.
        """
        if len(grads) == 0:
            return
        super().apply(grads, trainable_variables)
        self.inner_optimizer.iterations.assign_add(1)

    def update_step(self, gradient, variable, learning_rate):
        """The inner optimizer's step on `variable`, then this variable's sync if due.

        Args:
            gradient: tensor shaped like `variable`.
            variable: the model variable to update.
            learning_rate: float tensor [], this step's learning rate.
        """
        self.inner_optimizer.update_step(gradient, variable, learning_rate)
        slow = self._slow_weights[self._get_variable_index(variable)]
        sync = ops.equal(ops.mod(self.iterations + 1, self.sync_period), 0)
        fast = ops.convert_to_tensor(variable)
        slow_value = ops.convert_to_tensor(slow)
        alpha = ops.cast(self.slow_step_size, fast.dtype)
        synced = slow_value + alpha * (fast - slow_value)
        self.assign(slow, ops.where(sync, synced, slow_value))
        self.assign(variable, ops.where(sync, synced, fast))

    def _clip_gradients(self, grads):
        return self.inner_optimizer._clip_gradients(grads)

    def _apply_weight_decay(self, variables):
        self.inner_optimizer._apply_weight_decay(variables)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Excludes variables from the inner optimizer's weight decay (before building).

        Args:
            var_list: list of variables to exclude, or None.
            var_names: list of str, or None. Variables whose name contains one are excluded.
        """
        self.inner_optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "sync_period": self.sync_period,
            "slow_step_size": self.slow_step_size,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)

"""Batch-norm weights with one entry per index of several axes, applied as an affine map."""

import keras
from keras import ops

from axial_keras.layers.attention_statistics import folded_affine


@keras.saving.register_keras_serializable(package="axial_keras")
class MultiAxisBatchNormalization(keras.layers.Layer):
    """One (gamma, beta, moving mean, moving variance) per entry of a multi-axis shape.

    Keras' `BatchNormalization` keeps statistics along a single axis. Axial attention
    normalizes each similarity term per (term, head), shape `[3, heads]`, and each
    retrieved term per (term, head, channel), `[2, heads, value_dim]` (PAPER.md section
    1; deeplab2 holds its weights in these shapes). The attention computes the batch
    statistics itself (`attention_statistics`), without the tensors they describe, so
    this layer holds the weights, moves the moving statistics and gives the normalization
    as `x * scale + shift`; it has no `call`. It is built with the weights' shape.

    Args:
        momentum: float. Momentum of the moving statistics.
        epsilon: float. Added to the variance.
        **kwargs: base `Layer` arguments.

    Example:
    >>> bn = MultiAxisBatchNormalization()
    >>> bn.build((3, 8))
    >>> scale, shift = bn.scale_and_shift(bn.moving_mean, bn.moving_variance)
    """

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        shape = tuple(input_shape)
        if any(d is None for d in shape):
            raise ValueError(
                f"{self.name}: the statistics' shape must be fully known, got {shape}.")
        self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones",
                                     autocast=False)
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros", autocast=False)
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, initializer="zeros", trainable=False, autocast=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, initializer="ones", trainable=False,
            autocast=False)

    def update_moving_statistics(self, mean, variance) -> None:
        """Moves the moving statistics towards batch `mean` and `variance` (weights' shape)."""
        m = self.momentum
        self.moving_mean.assign(
            self.moving_mean * m + ops.cast(mean, self.moving_mean.dtype) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + ops.cast(variance, self.moving_variance.dtype) * (1.0 - m))

    def scale_and_shift(self, mean, variance):
        """float32 `(scale, shift)` of the normalization, so that `y = x * scale + shift`."""
        return folded_affine(self.gamma, self.beta, mean, variance, self.epsilon)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "epsilon": self.epsilon})
        return config

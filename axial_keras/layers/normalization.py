"""Batch normalization whose statistics are kept per entry of several axes."""

from typing import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="axial_keras")
class MultiAxisBatchNormalization(keras.layers.Layer):
    """Batch normalization with one (gamma, beta, mean, variance) per index of `axis`.

    Keras' `BatchNormalization` keeps statistics along a single axis. Axial attention
    normalizes each similarity term per (term, head) and each retrieved output per
    (term, head, channel) (PAPER.md section 1; deeplab2 does the same with a
    multi-axis BN), which this layer provides. Statistics are computed in float32
    whatever the compute dtype, and an optional boolean `valid` argument of `call` leaves entries out of
    the batch statistics (a local attention window that runs past the image border).

    Args:
        axis: int or sequence of int. The axes that keep their own statistics; all
            other axes are reduced. Negative values count from the end.
        momentum: float. Momentum of the moving statistics.
        epsilon: float. Added to the variance.
        gamma_initializer: initializer for the scale.
        synchronized: bool. Whether batch statistics are all-reduced across replicas
            under a `tf.distribute` strategy (TF backend).
        **kwargs: base `Layer` arguments.

    Example:
    >>> bn = MultiAxisBatchNormalization(axis=(0, 2))
    >>> y = bn(keras.random.normal((3, 2, 8, 5, 5)))
    """

    def __init__(
        self,
        axis: int | Sequence[int] = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        gamma_initializer="ones",
        synchronized: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.axis = tuple(axis) if isinstance(axis, (list, tuple)) else (int(axis),)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.synchronized = bool(synchronized)
        self.supports_masking = False

    def build(self, input_shape):
        rank = len(input_shape)
        axes = sorted(a % rank for a in self.axis)
        for a in axes:
            if input_shape[a] is None:
                raise ValueError(
                    f"MultiAxisBatchNormalization: axis {a} of input shape {input_shape} "
                    "must be known to create its statistics.")
        self._axes = axes
        self._reduce = [a for a in range(rank) if a not in axes]
        shape = [input_shape[a] for a in axes]
        self._param_shape = tuple(shape)
        self._broadcast = [input_shape[a] if a in axes else 1 for a in range(rank)]
        self.gamma = self.add_weight(
            name="gamma", shape=shape, initializer=self.gamma_initializer, autocast=False)
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros", autocast=False)
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, initializer="zeros", trainable=False, autocast=False)
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape, initializer="ones", trainable=False, autocast=False)

    def _moments(self, x, valid):
        if valid is None:
            return ops.moments(x, self._reduce, synchronized=self.synchronized)
        weights = ops.cast(ops.broadcast_to(valid, ops.shape(x)), "float32")
        count = ops.maximum(ops.sum(weights, axis=self._reduce), 1.0)
        mean = ops.sum(x * weights, axis=self._reduce) / count
        centred = (x - ops.reshape(mean, self._broadcast)) * weights
        variance = ops.sum(ops.square(centred), axis=self._reduce) / count
        return mean, variance

    def update_moving_statistics(self, mean, variance):
        """Moves the moving statistics towards batch `mean` and `variance` (param shape)."""
        m = self.momentum
        self.moving_mean.assign(
            self.moving_mean * m + ops.cast(mean, self.moving_mean.dtype) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + ops.cast(variance, self.moving_variance.dtype) * (1.0 - m))

    def scale_and_shift(self, mean, variance):
        """float32 `(scale, shift)` of the normalization, so that `y = x * scale + shift`."""
        gamma = ops.cast(self.gamma, "float32")
        beta = ops.cast(self.beta, "float32")
        scale = gamma * ops.rsqrt(ops.cast(variance, "float32") + self.epsilon)
        shift = beta - ops.cast(mean, "float32") * scale
        return scale, shift

    def call(self, inputs, training=None, valid=None):
        x = ops.cast(inputs, "float32")
        if training:
            mean, variance = self._moments(x, valid)
            self.update_moving_statistics(mean, variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale, shift = self.scale_and_shift(mean, variance)
        y = x * ops.reshape(scale, self._broadcast) + ops.reshape(shift, self._broadcast)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "axis": list(self.axis),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "synchronized": self.synchronized,
        })
        return config

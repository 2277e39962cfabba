"""Batch norms applied as affine maps: multi-axis weights, and folding into a convolution."""

import keras
from keras import ops

from axial_keras.layers.attention_statistics import folded_affine


def uses_batch_statistics(batch_norm, training) -> bool:
    """Whether a keras `BatchNormalization` normalizes with the batch (as its `call` decides)."""
    return bool(training) and batch_norm.trainable


def folded_convolution(batch_norm, kernel, compute_dtype, depthwise: bool = False):
    """(kernel, bias) of `batch_norm(conv(x))` in inference mode, as one biased convolution.

    The inference batch norm is `conv(x) * scale + shift` per output channel, so it folds
    into the kernel (scaled per output channel, in float32) and a bias: one pass over the
    output instead of a convolution plus a multiply-add at full resolution.

    Args:
        batch_norm: a built keras `BatchNormalization` over the convolution's channels.
        kernel: the convolution's kernel, [kh, kw, in, out] (or [kh, kw, in, 1] when
            `depthwise`, one output channel per input channel).
        compute_dtype: dtype of the returned kernel and bias.
        depthwise: bool. `kernel` is a depthwise kernel with depth multiplier 1.
    """
    gamma = batch_norm.gamma if batch_norm.gamma is not None else ops.ones_like(batch_norm.moving_mean)
    beta = batch_norm.beta if batch_norm.beta is not None else ops.zeros_like(batch_norm.moving_mean)
    scale, shift = folded_affine(gamma, beta, batch_norm.moving_mean, batch_norm.moving_variance,
                                 batch_norm.epsilon)
    if depthwise:
        scale = scale[:, None]
    folded = ops.cast(ops.cast(kernel, "float32") * scale, compute_dtype)
    return folded, ops.cast(shift, compute_dtype)


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

"""Feature fusion across strides for MaX-DeepLab-L's stacked decoder (deeplab2's ResizedFuse).

Each input is brought to the output's stride and width, and the results are summed:
an input that already has the output width is taken as it is (bilinearly resized with
align corners when its stride differs); one at half the output's stride is activated
and projected by a 1x1 stride-2 convolution + BN; any other is activated, projected by
a 1x1 convolution + BN and resized. The sum is activated. Inputs are the
non-activated block outputs (deeplab2 sums before the activation, as a ResNet block
does).
"""

from typing import Sequence

import keras

from axial_keras.layers.blocks import ConvNormAct
from axial_keras.layers.madds import layer_madds
from axial_keras.layers.resize import resize_align_corners


def _check_stride(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"`{name}` must be a power of two, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="axial_keras")
class ResizedFuse(keras.layers.Layer):
    """Sums features of several strides at one stride and channel count.

    Args:
        channels: int. Output channels.
        input_strides: ints. Stride of each input (relative to the image).
        output_stride: int. Stride of the output; one input must have it (its spatial
            size is the output's).
        activation: str. Keras activation ("relu").
        kernel_regularizer, momentum, epsilon, synchronized: as in `ConvNormAct`.
        **kwargs: base `Layer` arguments.

    Call args:
        inputs: list of `[batch, h_i, w_i, c_i]` tensors, in `input_strides` order.

    Example:
    >>> fuse = ResizedFuse(8, input_strides=(16, 8), output_stride=8)
    >>> fuse([keras.ops.ones((1, 5, 5, 32)), keras.ops.ones((1, 9, 9, 8))]).shape
    (1, 9, 9, 8)
    """

    def __init__(self, channels: int, input_strides: Sequence[int], output_stride: int,
                 activation: str = "relu", kernel_regularizer=None, momentum: float = 0.99,
                 epsilon: float = 1e-3, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"`channels` must be a positive integer, got {channels!r}.")
        self.channels = channels
        self.input_strides = tuple(_check_stride("input_strides", s) for s in input_strides)
        self.output_stride = _check_stride("output_stride", output_stride)
        if self.output_stride not in self.input_strides:
            raise ValueError(
                f"{self.name}: one input must be at the output stride {output_stride} (its "
                f"size is the output size); got input strides {self.input_strides}.")
        self.reference = self.input_strides.index(self.output_stride)
        self.activation = activation
        self.act = keras.activations.get(activation)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.momentum, self.epsilon, self.synchronized = momentum, epsilon, synchronized
        self.modes = ()

    def _mode(self, channels: int, stride: int) -> str:
        if channels == self.channels:
            return "identity"
        if 2 * stride == self.output_stride:
            return "strided"
        return "resized"

    def build(self, input_shapes):
        if len(input_shapes) != len(self.input_strides):
            raise ValueError(f"{self.name} expects {len(self.input_strides)} inputs "
                             f"(strides {self.input_strides}), got {len(input_shapes)}.")
        modes = []
        for index, (shape, stride) in enumerate(zip(input_shapes, self.input_strides)):
            if len(shape) != 4 or shape[-1] is None:
                raise ValueError(f"{self.name}: input {index} must be [batch, h, w, channels] "
                                 f"with known channels, got {tuple(shape)}.")
            mode = self._mode(shape[-1], stride)
            modes.append(mode)
            if mode == "identity":
                continue
            conv = ConvNormAct(
                self.channels, 1, strides=2 if mode == "strided" else 1,
                kernel_regularizer=self.kernel_regularizer, momentum=self.momentum,
                epsilon=self.epsilon, synchronized=self.synchronized,
                name=f"{mode}_conv{index + 1}", dtype=self.dtype_policy)
            conv.build(shape)
            setattr(self, f"{mode}_conv{index + 1}", conv)
        self.modes = tuple(modes)

    def call(self, inputs, training=None):
        reference = keras.ops.shape(inputs[self.reference])
        total = None
        for index, (x, mode, stride) in enumerate(zip(inputs, self.modes, self.input_strides)):
            if mode != "identity":
                x = getattr(self, f"{mode}_conv{index + 1}")(self.act(x), training=training)
            if mode != "strided" and stride != self.output_stride:
                x = resize_align_corners(x, reference[1], reference[2])
            total = x if total is None else total + x
        return self.act(total)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[self.reference][:-1]) + (self.channels,)

    def madds(self, input_shapes) -> int:
        total = 0
        for index, (shape, stride) in enumerate(zip(input_shapes, self.input_strides)):
            mode = self._mode(shape[-1], stride)
            if mode != "identity":
                total += layer_madds(getattr(self, f"{mode}_conv{index + 1}"), shape)
        return total

    def get_config(self):
        config = super().get_config()
        config.update({
            "channels": self.channels, "input_strides": list(self.input_strides),
            "output_stride": self.output_stride, "activation": self.activation,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "momentum": self.momentum, "epsilon": self.epsilon,
            "synchronized": self.synchronized,
        })
        return config

"""Panoptic-DeepLab decoders and heads, as Axial-DeepLab uses them (PAPER.md section 3).

Each decoder projects the stride-16 backbone output with a 1x1 convolution (Axial-DeepLab
drops ASPP), then twice upsamples (align-corners bilinear), concatenates a projected
lower-level feature (stride 8, then stride 4) and fuses with a 5x5 depthwise-separable
convolution. Heads are a 5x5 depthwise-separable convolution and a 1x1 prediction.
Layouts and defaults follow the official implementation (deeplab2).
"""

from typing import Sequence

import keras
from keras import ops

from axial_keras.layers.blocks import ConvNormAct
from axial_keras.layers.madds import layer_madds
from axial_keras.layers.normalization import folded_convolution, uses_batch_statistics
from axial_keras.layers.resize import resize_align_corners


@keras.saving.register_keras_serializable(package="axial_keras")
class SeparableConvNormAct(keras.layers.Layer):
    """Depthwise conv + BN + ReLU, then 1x1 conv + BN + ReLU ('same' padding).

    Args:
        filters: int. Output channels of the pointwise convolution.
        kernel_size: int. Depthwise kernel size.
        momentum, epsilon, synchronized: batch-norm options.
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, filters: int, kernel_size: int = 5, momentum: float = 0.99,
                 epsilon: float = 1e-3, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.momentum, self.epsilon, self.synchronized = momentum, epsilon, synchronized
        norm = dict(momentum=momentum, epsilon=epsilon, synchronized=synchronized,
                    dtype=self.dtype_policy)
        self.depthwise_conv = keras.layers.DepthwiseConv2D(
            kernel_size, padding="same", use_bias=False, name="depthwise_conv",
            dtype=self.dtype_policy)
        self.depthwise_bn = keras.layers.BatchNormalization(name="depthwise_bn", **norm)
        self.pointwise = ConvNormAct(filters, 1, activation="relu", name="pointwise", **norm)

    def build(self, input_shape):
        self.depthwise_conv.build(input_shape)
        self.depthwise_bn.build(input_shape)
        self.pointwise.build(input_shape)

    def call(self, inputs, training=None):
        if uses_batch_statistics(self.depthwise_bn, training):
            x = self.depthwise_bn(self.depthwise_conv(inputs), training=training)
        else:  # fold the inference batch norm into the depthwise kernel
            conv = self.depthwise_conv
            kernel, bias = folded_convolution(self.depthwise_bn, conv.kernel, self.compute_dtype,
                                              depthwise=True)
            x = ops.depthwise_conv(ops.cast(inputs, self.compute_dtype), kernel,
                                   strides=conv.strides, padding=conv.padding,
                                   data_format=conv.data_format,
                                   dilation_rate=conv.dilation_rate) + bias
        return self.pointwise(ops.relu(x), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def madds(self, input_shape) -> int:
        return layer_madds(self.depthwise_conv, input_shape) + layer_madds(self.pointwise, input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "kernel_size": self.kernel_size,
                       "momentum": self.momentum, "epsilon": self.epsilon,
                       "synchronized": self.synchronized})
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class PanopticDecoder(keras.layers.Layer):
    """One Panoptic-DeepLab decoder branch without ASPP (Axial-DeepLab).

    Args:
        projection_channels: int. Channels of the 1x1 projection of the high-level
            feature (deeplab2's degenerate ASPP, `aspp_use_only_1x1_proj_conv`).
        low_level_channels: ints. Projection channels of each low-level feature,
            highest level first (stride 8, then stride 4).
        decoder_channels: int. Output channels of each fusion convolution.
        momentum, epsilon, synchronized: batch-norm options.
        **kwargs: base `Layer` arguments.

    Call args:
        inputs: list `[high_level, low_level_1, low_level_2, ...]` of
            `[batch, h, w, c]` tensors, each level larger than the previous.
    """

    def __init__(self, projection_channels: int = 256,
                 low_level_channels: Sequence[int] = (64, 32), decoder_channels: int = 256,
                 momentum: float = 0.99, epsilon: float = 1e-3, synchronized: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.projection_channels = projection_channels
        self.low_level_channels = tuple(low_level_channels)
        self.decoder_channels = decoder_channels
        self.momentum, self.epsilon, self.synchronized = momentum, epsilon, synchronized
        norm = dict(momentum=momentum, epsilon=epsilon, synchronized=synchronized,
                    dtype=self.dtype_policy)
        self.projection = ConvNormAct(projection_channels, 1, activation="relu",
                                      name="projection", **norm)
        # One attribute per sub-layer: TensorFlow checkpoints (tf.train.Checkpoint) do not
        # see layers held in Python lists, and would silently skip their variables.
        for i, c in enumerate(self.low_level_channels):
            setattr(self, f"low_level_conv{i + 1}",
                    ConvNormAct(c, 1, activation="relu", name=f"low_level_conv{i + 1}", **norm))
            setattr(self, f"fusion_conv{i + 1}",
                    SeparableConvNormAct(decoder_channels, 5, name=f"fusion_conv{i + 1}", **norm))

    @property
    def low_level_convs(self) -> list:
        """The 1x1 projections of the low-level features, highest level first."""
        return [getattr(self, f"low_level_conv{i + 1}")
                for i in range(len(self.low_level_channels))]

    @property
    def fusion_convs(self) -> list:
        """The separable convolutions fusing each upsampled level with its low-level feature."""
        return [getattr(self, f"fusion_conv{i + 1}") for i in range(len(self.low_level_channels))]

    def build(self, input_shapes):
        if len(input_shapes) != len(self.low_level_channels) + 1:
            raise ValueError(
                f"{self.name} expects {len(self.low_level_channels) + 1} features "
                f"(high level first), got {len(input_shapes)}.")
        self.projection.build(input_shapes[0])
        channels = self.projection_channels
        for shape, low, fusion in zip(input_shapes[1:], self.low_level_convs, self.fusion_convs):
            low.build(shape)
            fusion.build(tuple(shape[:-1]) + (channels + low.filters,))
            channels = self.decoder_channels

    def call(self, inputs, training=None):
        x = self.projection(inputs[0], training=training)
        for feature, low, fusion in zip(inputs[1:], self.low_level_convs, self.fusion_convs):
            low_level = low(feature, training=training)
            shape = ops.shape(low_level)
            x = resize_align_corners(x, shape[1], shape[2])
            x = fusion(ops.concatenate([x, low_level], axis=-1), training=training)
        return x

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[-1][:-1]) + (self.decoder_channels,)

    def madds(self, input_shapes) -> int:
        total = layer_madds(self.projection, input_shapes[0])
        channels = self.projection_channels
        for shape, low, fusion in zip(input_shapes[1:], self.low_level_convs, self.fusion_convs):
            total += layer_madds(low, shape)
            total += layer_madds(fusion, tuple(shape[:-1]) + (channels + low.filters,))
            channels = self.decoder_channels
        return total

    def get_config(self):
        config = super().get_config()
        config.update({"projection_channels": self.projection_channels,
                       "low_level_channels": list(self.low_level_channels),
                       "decoder_channels": self.decoder_channels,
                       "momentum": self.momentum, "epsilon": self.epsilon,
                       "synchronized": self.synchronized})
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class PanopticHead(keras.layers.Layer):
    """A 5x5 depthwise-separable conv block and a 1x1 prediction with bias.

    Args:
        intermediate_channels: int. Channels of the separable convolution.
        output_channels: int. Predicted channels.
        momentum, epsilon, synchronized: batch-norm options.
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, intermediate_channels: int, output_channels: int,
                 momentum: float = 0.99, epsilon: float = 1e-3, synchronized: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.intermediate_channels, self.output_channels = intermediate_channels, output_channels
        self.momentum, self.epsilon, self.synchronized = momentum, epsilon, synchronized
        self.conv_block = SeparableConvNormAct(
            intermediate_channels, 5, momentum=momentum, epsilon=epsilon,
            synchronized=synchronized, name="conv_block", dtype=self.dtype_policy)
        self.final_conv = keras.layers.Conv2D(
            output_channels, 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
            name="final_conv", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.conv_block.build(input_shape)
        self.final_conv.build(tuple(input_shape[:-1]) + (self.intermediate_channels,))

    def call(self, inputs, training=None):
        return self.final_conv(self.conv_block(inputs, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def madds(self, input_shape) -> int:
        mid = tuple(input_shape[:-1]) + (self.intermediate_channels,)
        return layer_madds(self.conv_block, input_shape) + layer_madds(self.final_conv, mid)

    def get_config(self):
        config = super().get_config()
        config.update({"intermediate_channels": self.intermediate_channels,
                       "output_channels": self.output_channels, "momentum": self.momentum,
                       "epsilon": self.epsilon, "synchronized": self.synchronized})
        return config

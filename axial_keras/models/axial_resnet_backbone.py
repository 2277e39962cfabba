"""Axial-ResNet backbone: a ResNet-50 layout whose 3x3 convolutions are axial-attention pairs."""

import math
from typing import Optional, Sequence

import keras
from keras import ops

from axial_keras.layers.axial_attention import CHUNK_ELEMENTS, check_span
from axial_keras.layers.blocks import (AxialBottleneck, ConvBottleneck, ConvStem,
                                       FullAxialStem, InceptionStem)
from axial_keras.models.madds import functional_madds

STEMS = ("conv", "inception", "axial")
DROP_PATH_SCHEDULES = ("constant", "linear")
# Input stride of the five stages of the official layout: stage1 is the stem (or the
# three full-axial stem blocks); stages 2-5 hold the ResNet-50 block groups.
_STAGE_INPUT_STRIDES = (1, 2, 4, 8, 16)


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialResNetBackbone(keras.Model):
    """Axial-ResNet backbone: the feature pyramid (Wang et al., Axial-DeepLab, ECCV 2020).

    A ResNet-50 layout ([3, 4, 6, 3] bottleneck blocks) in which the 3x3 convolution
    of every block at stride >= `axial_beyond_stride` is replaced by height- and
    width-axis attention (`AxialBottleneck`). Stage widths follow the official code:
    a stage whose input has stride s uses `round(32 * s * width_multiplier)` base
    filters (L: 8 heads of 16 value channels at stride 4; blocks output 256, 512, 1024,
    2048), with the stage stride in its first block. Stems: `"conv"` (7x7 stride-2
    convolution, conv-stem models), `"inception"` (three 3x3 convolutions, the
    Axial-DeepLab backbones) or `"axial"` (three axial blocks, Full Axial-ResNet).

    Output: a dict of endpoints keyed as the official code keys them: `stage1`..`stage5`
    (block sums before the ReLU) and `res1`..`res5` (after it), at strides 2, 4, 8, 16,
    32 (or capped at `output_stride`). Tasks (`AxialResNetClassifier`, `AxialDeepLab`)
    take a backbone instance and add their heads.

    The model is built at `input_shape` with dynamic batch and (by default) spatial
    sizes, and takes its input as given (add your own rescaling). Its `dtype` policy
    reaches every layer it creates.

    Args:
        stem: str. One of "conv", "inception", "axial".
        width_multiplier: float. Channel multiplier of the residual stages
            (S 0.5, M 0.75, L 1.0, XL 2.0).
        stem_width_multiplier: float. Channel multiplier of the stem (64 channels at 1).
        stem_pool: bool. Keep ResNet's stem max-pool (the paper's conv stem) instead of
            striding the first stage-2 block (the official code and its checkpoints).
        num_blocks: four ints. Blocks in stages 2-5.
        output_stride: int. 8, 16 or 32; stages beyond it keep the resolution.
        axial_beyond_stride: int. Blocks whose input stride is at least this use axial
            attention, the others 3x3 convolutions (2: all residual stages; 1 is
            implied by the axial stem).
        spans: five entries, None or odd int: the attention span of stages 1 (axial
            stem) to 5. None everywhere is global attention.
        num_heads: int. Attention heads.
        key_expansion, value_expansion, bottleneck_expansion: floats. Channel ratios of
            the axial blocks (1, 2, 2 in the paper).
        drop_path_rate: float. Stochastic-depth rate of the last stage.
        drop_path_schedule: "constant" or "linear" (rate grows linearly with the stage).
        drop_path_beyond_stride: int. Only blocks at this input stride or beyond drop.
        input_shape: tuple. `(height, width, channels)`, None for dynamic sizes.
        kernel_regularizer: optional regularizer of all kernels.
        momentum, epsilon: batch-norm options.
        synchronized_bn: bool. Synchronized batch norm across replicas.
        max_span: int. Relative-position table reach of the attention layers.
        attention_chunk_elements: None or int. The attention layers' `chunk_elements`
            (rows in chunks of about this many elements; None: all at once, no loop,
            as export sets it).
        **kwargs: `keras.Model` arguments (`name`, `dtype`).

    Example:
    >>> backbone = AxialResNetBackbone(width_multiplier=0.125, num_blocks=(1, 1, 1, 1),
    ...                                num_heads=4, stem_width_multiplier=0.25)
    >>> backbone(keras.random.normal((2, 32, 32, 3)))["res5"].shape
    (2, 1, 1, 256)
    """

    def __init__(
        self,
        stem: str = "conv",
        width_multiplier: float = 1.0,
        stem_width_multiplier: float = 1.0,
        stem_pool: bool = False,
        num_blocks: Sequence[int] = (3, 4, 6, 3),
        output_stride: int = 32,
        axial_beyond_stride: int = 2,
        spans: Sequence[Optional[int]] = (None, None, None, None, None),
        num_heads: int = 8,
        key_expansion: float = 1.0,
        value_expansion: float = 2.0,
        bottleneck_expansion: float = 2.0,
        drop_path_rate: float = 0.0,
        drop_path_schedule: str = "constant",
        drop_path_beyond_stride: int = 16,
        input_shape: Sequence[Optional[int]] = (None, None, 3),
        kernel_regularizer=None,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        synchronized_bn: bool = False,
        max_span: int = 255,
        attention_chunk_elements: Optional[int] = CHUNK_ELEMENTS,
        **kwargs,
    ):
        if stem not in STEMS:
            raise ValueError(f"Unknown stem {stem!r}; expected one of {STEMS}.")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"`output_stride` must be 8, 16 or 32, got {output_stride!r}.")
        if drop_path_schedule not in DROP_PATH_SCHEDULES:
            raise ValueError(f"Unknown drop_path_schedule {drop_path_schedule!r}; expected "
                             f"one of {DROP_PATH_SCHEDULES}.")
        num_blocks, spans = tuple(num_blocks), tuple(spans)
        if len(num_blocks) != 4 or any(not isinstance(n, int) or n < 1 for n in num_blocks):
            raise ValueError(f"`num_blocks` must be four positive ints, got {num_blocks!r}.")
        if len(spans) != 5:
            raise ValueError(f"`spans` must have five entries (stages 1-5), got {spans!r}.")
        for span in spans:
            check_span(span, max_span)
        if len(input_shape) != 3:
            raise ValueError(
                f"`input_shape` must be (height, width, channels), got {tuple(input_shape)!r}.")

        if stem_pool and stem != "conv":
            raise ValueError("`stem_pool` applies to the 'conv' stem only.")
        dtype = keras.dtype_policies.get(kwargs.pop("dtype", None))
        norm = dict(kernel_regularizer=keras.regularizers.get(kernel_regularizer),
                    momentum=momentum, epsilon=epsilon, synchronized=synchronized_bn,
                    dtype=dtype)
        axial = dict(num_heads=num_heads, key_expansion=key_expansion,
                     value_expansion=value_expansion,
                     bottleneck_expansion=bottleneck_expansion, max_span=max_span,
                     attention_chunk_elements=attention_chunk_elements)

        def filters_at(stride):
            return int(round(32 * stride * width_multiplier))

        def drop_rate_at(stride):
            if drop_path_rate == 0.0 or stride < drop_path_beyond_stride:
                return 0.0
            if drop_path_schedule == "constant":
                return drop_path_rate
            return drop_path_rate * (math.log2(stride) - 1) / 4

        inputs = keras.Input(shape=tuple(input_shape), name="images")
        endpoints = {}
        stem_filters = int(round(64 * stem_width_multiplier))
        if stem == "conv":
            stem_layer = ConvStem(stem_filters, pool=stem_pool, activate_output=False,
                                  name="stem", **norm)
        elif stem == "inception":
            stem_layer = InceptionStem(stem_filters, activate_output=False, name="stem", **norm)
        else:
            stem_layer = FullAxialStem(filters_at(1), span=spans[0], activate_output=False,
                                       drop_path_rate=drop_rate_at(1), name="stem",
                                       **axial, **norm)
        x = stem_layer(inputs)
        endpoints["stage1"] = x
        x = ops.relu(x)
        endpoints["res1"] = x

        current_stride = 4 if stem_pool else 2
        for stage, (blocks, input_stride) in enumerate(zip(num_blocks, _STAGE_INPUT_STRIDES[1:])):
            filters = filters_at(input_stride)
            original_stride = input_stride
            for index in range(blocks):
                strides = 2 if (index == 0 and current_stride == input_stride
                                and current_stride < output_stride) else 1
                name = f"stage{stage + 2}_block{index + 1}"
                drop_rate = drop_rate_at(original_stride)
                if original_stride >= axial_beyond_stride:
                    block = AxialBottleneck(filters, strides=strides, span=spans[stage + 1],
                                            drop_path_rate=drop_rate, activate_output=False,
                                            name=name, **axial, **norm)
                else:
                    dilation = max(original_stride // output_stride, 1)
                    block = ConvBottleneck(filters, strides=strides, dilation_rate=dilation,
                                           drop_path_rate=drop_rate, activate_output=False,
                                           name=name, **norm)
                x = block(x)
                if index == 0:
                    current_stride *= strides
                    original_stride *= 2
                preactivation = x
                x = ops.relu(x)
            endpoints[f"stage{stage + 2}"] = preactivation
            endpoints[f"res{stage + 2}"] = x

        super().__init__(inputs=inputs, outputs=endpoints, **kwargs)
        # A functional model ignores `dtype=`; its layers above were given the policy.
        self.dtype_policy = dtype
        self.stem = stem
        self.width_multiplier = width_multiplier
        self.stem_width_multiplier = stem_width_multiplier
        self.stem_pool = stem_pool
        self.num_blocks = num_blocks
        self.output_stride = output_stride
        self.axial_beyond_stride = axial_beyond_stride
        self.spans = spans
        self.num_heads = num_heads
        self.key_expansion = key_expansion
        self.value_expansion = value_expansion
        self.bottleneck_expansion = bottleneck_expansion
        self.drop_path_rate = drop_path_rate
        self.drop_path_schedule = drop_path_schedule
        self.drop_path_beyond_stride = drop_path_beyond_stride
        self.image_shape = tuple(input_shape)
        self.kernel_regularizer = norm["kernel_regularizer"]
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized_bn = synchronized_bn
        self.max_span = max_span
        self.attention_chunk_elements = attention_chunk_elements

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "stem": self.stem,
            "width_multiplier": self.width_multiplier,
            "stem_width_multiplier": self.stem_width_multiplier,
            "stem_pool": self.stem_pool,
            "num_blocks": list(self.num_blocks),
            "output_stride": self.output_stride,
            "axial_beyond_stride": self.axial_beyond_stride,
            "spans": list(self.spans),
            "num_heads": self.num_heads,
            "key_expansion": self.key_expansion,
            "value_expansion": self.value_expansion,
            "bottleneck_expansion": self.bottleneck_expansion,
            "drop_path_rate": self.drop_path_rate,
            "drop_path_schedule": self.drop_path_schedule,
            "drop_path_beyond_stride": self.drop_path_beyond_stride,
            "input_shape": list(self.image_shape),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "synchronized_bn": self.synchronized_bn,
            "max_span": self.max_span,
            "attention_chunk_elements": self.attention_chunk_elements,
        }

    def madds(self, input_shape) -> int:
        """Multiply-adds on a `[batch, height, width, channels]` input."""
        return functional_madds(self, input_shape)

    @classmethod
    def from_config(cls, config: dict) -> "AxialResNetBackbone":
        return cls(**config)

"""Axial-ResNet backbone: a ResNet-50 layout whose 3x3 convolutions are axial-attention pairs.

Also deeplab2's wider family on the same skeleton: Axial-SWideRNet and MaX-DeepLab-L
(3x3 stem, a stage-1 group and basic blocks; MaX-L with a stacked decoder) and
Axial-ResNet-50 with exact GeLU. The block layout comes from `layout.encoder_plan`.
"""

from typing import Optional, Sequence

import keras

from axial_keras.layers.axial_attention import CHUNK_ELEMENTS, check_span
from axial_keras.layers.blocks import (AxialBottleneck, BasicBlock, ConvBottleneck, ConvStem,
                                       FullAxialStem, InceptionStem)
from axial_keras.layers.resized_fuse import ResizedFuse
from axial_keras.models.layout import (CONV_BLOCKS, DROP_PATH_SCHEDULES, STEMS,
                                       drop_path_rate_at, encoder_plan, stacked_decoder_plan)
from axial_keras.models.madds import functional_madds
from axial_keras.models.predict_jit import PredictJitCompile


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialResNetBackbone(PredictJitCompile, keras.Model):
    """Axial-ResNet backbone: the feature pyramid (Wang et al., Axial-DeepLab, ECCV 2020).

    A ResNet-50 layout ([3, 4, 6, 3] bottleneck blocks) in which the 3x3 convolution
    of every block at stride >= `axial_beyond_stride` is replaced by height- and
    width-axis attention (`AxialBottleneck`). Stage widths follow the official code:
    a stage whose input has stride s uses `round(32 * s * width_multiplier)` base
    filters (L: 8 heads of 16 value channels at stride 4; blocks output 256, 512, 1024,
    2048), with the stage stride in its first block. Stems: `"conv"` (7x7 stride-2
    convolution, conv-stem models), `"inception"` (three 3x3 convolutions, the
    Axial-DeepLab backbones), `"axial"` (three axial blocks, Full Axial-ResNet) or
    `"wide"` (deeplab2's `wider_resnet`: a 3x3 stride-2 convolution without activation,
    then a stage-1 group of three basic blocks of `128 * stem_width_multiplier`
    channels; Axial-SWideRNet, MaX-DeepLab-L). Each block's type follows deeplab2: axial
    where the ResNet stride before it is >= `axial_beyond_stride`, otherwise
    `conv_block` (bottleneck or basic).

    Output: a dict of endpoints keyed as the official code keys them: `stage1`..`stage5`
    (block sums before the activation) and `res1`..`res5` (after it), at strides 2, 4,
    8, 16, 32 (or capped at `output_stride`), and `backbone_output`: `res5`, or with
    `stacked_decoder` the activated output of MaX-DeepLab's stacked decoder (one
    hour-glass stack down to stride 4 and back, `ResizedFuse` + one block per stage).
    Tasks (`AxialResNetClassifier`, `AxialDeepLab`) take a backbone instance and add
    their heads.

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
        num_blocks: four ints. Blocks in stages 2-5 (before `layer_multiplier`).
        layer_multiplier: float. Stages 2-5 hold `int(n * layer_multiplier)` blocks
            (SWideRNet-(1, 1, x)'s x; the wide stage 1 is never scaled).
        conv_block: str. "bottleneck" (1x1, 3x3, 1x1) or "basic" (two 3x3) where
            there is no attention.
        activation: str. "relu", or "gelu" (exact erf, deeplab2's Axial-ResNet-50)
            everywhere deeplab2 activates (not the attention softmax).
        stacked_decoder: bool. Add MaX-DeepLab-L's stacked decoder (`backbone_output`).
        output_stride: int. 8, 16 or 32; stages beyond it keep the resolution.
        axial_beyond_stride: int. Blocks whose input stride is at least this use axial
            attention, the others 3x3 convolutions (2: all residual stages; 1 is
            implied by the axial stem).
        spans: five entries, None or odd int: the attention span of stages 1 (axial
            stem) to 5 (the stacked decoder's axial blocks take stage 5's). None
            everywhere is global attention.
        num_heads: int. Attention heads.
        key_expansion, value_expansion, bottleneck_expansion: floats. Channel ratios of
            the axial blocks (1, 2, 2 in the paper; 2, 4, 4 in SWideRNet / MaX-L).
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
        layer_multiplier: float = 1.0,
        conv_block: str = "bottleneck",
        activation: str = "relu",
        stacked_decoder: bool = False,
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
        if conv_block not in CONV_BLOCKS:
            raise ValueError(f"Unknown conv_block {conv_block!r}; expected one of {CONV_BLOCKS}.")
        if stem_pool and stem != "conv":
            raise ValueError("`stem_pool` applies to the 'conv' stem only.")
        keras.activations.get(activation)
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

        dtype = keras.dtype_policies.get(kwargs.pop("dtype", None))
        norm = dict(kernel_regularizer=keras.regularizers.get(kernel_regularizer),
                    momentum=momentum, epsilon=epsilon, synchronized=synchronized_bn,
                    dtype=dtype)
        axial = dict(num_heads=num_heads, key_expansion=key_expansion,
                     value_expansion=value_expansion,
                     bottleneck_expansion=bottleneck_expansion, max_span=max_span,
                     attention_chunk_elements=attention_chunk_elements)

        options = dict(axial_beyond_stride=axial_beyond_stride, conv_block=conv_block,
                       drop_path_rate=drop_path_rate, drop_path_schedule=drop_path_schedule,
                       drop_path_beyond_stride=drop_path_beyond_stride)
        stages = encoder_plan(stem, width_multiplier, stem_width_multiplier, num_blocks,
                              layer_multiplier, output_stride, stem_pool=stem_pool, **options)
        act = keras.activations.get(activation)
        block_args = dict(activation=activation, **norm)

        def make_block(plan, span):
            args = dict(strides=plan.strides, drop_path_rate=plan.drop_path_rate,
                        activate_output=False, name=plan.name, **block_args)
            if plan.kind == "axial":
                return AxialBottleneck(plan.filters, span=span, **args, **axial)
            if plan.kind == "basic":
                return BasicBlock(plan.filters, dilation_rate=plan.dilation_rate,
                                  second_dilation_rate=plan.second_dilation_rate, **args)
            return ConvBottleneck(plan.filters, dilation_rate=plan.dilation_rate, **args)

        inputs = keras.Input(shape=tuple(input_shape), name="images")
        endpoints = {}
        stem_filters = int(round(64 * stem_width_multiplier))
        if stem in ("conv", "wide"):
            stem_layer = ConvStem(stem_filters, kernel_size=7 if stem == "conv" else 3,
                                  pool=stem_pool, activate_output=False, name="stem",
                                  **block_args)
        elif stem == "inception":
            stem_layer = InceptionStem(stem_filters, activate_output=False, name="stem",
                                       **block_args)
        else:
            stem_layer = FullAxialStem(
                int(round(32 * width_multiplier)), span=spans[0], activate_output=False,
                drop_path_rate=drop_path_rate_at(drop_path_rate, drop_path_schedule, 1,
                                                 drop_path_beyond_stride),
                name="stem", **axial, **block_args)
        x = stem_layer(inputs)
        endpoints["stage1"] = x
        x = act(x)
        endpoints["res1"] = x
        for stage, blocks in stages:
            for plan in blocks:
                x = make_block(plan, spans[stage - 1])(x)
                preactivation = x
                x = act(x)
            endpoints[f"stage{stage}"] = preactivation
            endpoints[f"res{stage}"] = x
        backbone_output = x
        if stacked_decoder:
            features = dict(endpoints)
            for decoder_stage in stacked_decoder_plan(width_multiplier, output_stride,
                                                      **options):
                fused = ResizedFuse(
                    decoder_stage.channels, [s for _, s in decoder_stage.inputs],
                    decoder_stage.stride, name=f"{decoder_stage.name}_fuse", **block_args)(
                    [features[name] for name, _ in decoder_stage.inputs])
                # deeplab2 activates the fused sum and its block activates its input
                # again (a no-op for ReLU).
                y = act(fused)
                for plan in decoder_stage.blocks:
                    y = make_block(plan, spans[4])(y)
                features[decoder_stage.name] = y
            backbone_output = act(y)
        endpoints["backbone_output"] = backbone_output

        super().__init__(inputs=inputs, outputs=endpoints, **kwargs)
        # A functional model ignores `dtype=`; its layers above were given the policy.
        self.dtype_policy = dtype
        self.stem = stem
        self.width_multiplier = width_multiplier
        self.stem_width_multiplier = stem_width_multiplier
        self.stem_pool = stem_pool
        self.num_blocks = num_blocks
        self.layer_multiplier = layer_multiplier
        self.conv_block = conv_block
        self.activation = activation
        self.stacked_decoder = stacked_decoder
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

    @property
    def xla_predict_faster(self) -> bool:
        """Global axial attention from stride 4 on (the Axial-ResNet layouts): its float32
        forward ran 1.1-1.45x faster under XLA than as a graph on a CPU (axial_resnet_s,
        224 and 449 px), so `predict` compiles it there (predict_jit.py). Not where
        convolutions dominate or attention is banded (Axial-SWideRNet-(1, 1, 1) 0.94x,
        axial_deeplab_s with span 65 0.55x)."""
        return (self.axial_beyond_stride <= 4 and not self.stacked_decoder
                and all(span is None for span in self.spans))

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "stem": self.stem,
            "width_multiplier": self.width_multiplier,
            "stem_width_multiplier": self.stem_width_multiplier,
            "stem_pool": self.stem_pool,
            "num_blocks": list(self.num_blocks),
            "layer_multiplier": self.layer_multiplier,
            "conv_block": self.conv_block,
            "activation": self.activation,
            "stacked_decoder": self.stacked_decoder,
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

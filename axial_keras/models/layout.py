"""Block layout of deeplab2's Axial-ResNet family, as data (stages, blocks, stacked decoder).

One function computes, from a backbone's options, every residual block it holds: its
type (basic, bottleneck or axial, chosen per block from the ResNet stride before it, as
deeplab2's `BlockGroup` chooses), width, stride, atrous rates and drop-path rate; another
the stages of MaX-DeepLab-L's stacked decoder (deeplab2's `AxialResNet`
`call_stacked_decoder`). The backbone model only instantiates what these return.
"""

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

STEMS = ("conv", "inception", "axial", "wide")
CONV_BLOCKS = ("bottleneck", "basic")
DROP_PATH_SCHEDULES = ("constant", "linear")
# Blocks of the stage-1 group that follows the 3x3 "wide" stem (never layer-scaled).
WIDE_STAGE1_BLOCKS = 3
# Stride of the stacked decoder's highest-resolution stage (deeplab2's default).
DECODER_HIGH_RESOLUTION_STRIDE = 4


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """One residual block: what deeplab2's BlockGroup builds at this position.

    Attributes:
        name: str. Our layer name (`stage2_block1`, `decoder_stage1_block1`).
        kind: str. "basic", "bottleneck" or "axial".
        filters: int. Base width (the block outputs `4 * filters` channels).
        strides: int. 1 or 2.
        dilation_rate: int. Atrous rate of the (first) 3x3 convolution.
        second_dilation_rate: int. Atrous rate of a basic block's second convolution.
        drop_path_rate: float. Stochastic-depth rate (training only).
        stage_stride: int. ResNet stride before the block (deeplab2's
            `original_resnet_current_stride`; decides the type and the span).
    """

    name: str
    kind: str
    filters: int
    strides: int
    dilation_rate: int
    second_dilation_rate: int
    drop_path_rate: float
    stage_stride: int


@dataclasses.dataclass(frozen=True)
class DecoderStagePlan:
    """One stage of the stacked decoder: a `ResizedFuse` of `inputs`, then `blocks`.

    Attributes:
        name: str. `decoder_stage{n}`.
        stride: int. Output stride of the stage.
        channels: int. Output channels of the fusion.
        inputs: tuple of (feature name, stride): the previous output (`current`), then
            the last two features of this stride (`stageN` endpoints or earlier
            `decoder_stageN` outputs).
        blocks: the stage's residual blocks.
    """

    name: str
    stride: int
    channels: int
    inputs: Tuple[Tuple[str, int], ...]
    blocks: Tuple[BlockPlan, ...]


def drop_path_rate_at(rate: float, schedule: str, stride: int, beyond: int) -> float:
    if rate == 0.0 or stride < beyond:
        return 0.0
    if schedule == "constant":
        return rate
    return rate * (math.log2(stride) - 1) / 4


def _group(name: str, filters: int, num_blocks: int, stage_stride: int, input_stride: int,
           actual_stride: int, output_stride: int, options: Dict) -> Tuple[List[BlockPlan], int]:
    """deeplab2's BlockGroup: the blocks of one group and the stride after it."""
    blocks = []
    current = input_stride
    for index in range(num_blocks):
        strides = 1
        if (index == 0 and stage_stride > 1 and actual_stride == input_stride
                and actual_stride < output_stride):
            strides = stage_stride
        dilation = current // output_stride if current > output_stride else 1
        second = dilation
        if index == 0 and input_stride * stage_stride > output_stride:
            second = input_stride * stage_stride // output_stride
        axial_beyond = options["axial_beyond_stride"]
        if axial_beyond > 0 and current >= axial_beyond:
            kind = "axial"
        elif options["conv_block"] == "basic" and input_stride * stage_stride >= 32:
            raise ValueError(
                f"{name}: deeplab2's wide ResNet puts a [f, 2f, 4f] bottleneck at stride 32 "
                f"without attention, which this package does not implement; keep "
                f"`axial_beyond_stride` <= 16 with `conv_block='basic'`.")
        else:
            kind = options["conv_block"]
        blocks.append(BlockPlan(
            name=f"{name}_block{index + 1}", kind=kind, filters=filters, strides=strides,
            dilation_rate=dilation, second_dilation_rate=second,
            drop_path_rate=drop_path_rate_at(
                options["drop_path_rate"], options["drop_path_schedule"], current,
                options["drop_path_beyond_stride"]),
            stage_stride=current))
        if index == 0:
            actual_stride *= strides
            current *= stage_stride
    return blocks, actual_stride


def scale_blocks(num_blocks: Sequence[int], layer_multiplier: float) -> Tuple[int, ...]:
    """deeplab2's layer multiplier: `int(n * multiplier)` blocks (truncated) per stage.

    Args:
        num_blocks: ints. Blocks per stage at multiplier 1.
        layer_multiplier: float. SWideRNet's depth multiplier.
    """
    scaled = tuple(int(n * layer_multiplier) for n in num_blocks)
    if any(n < 1 for n in scaled):
        raise ValueError(f"layer_multiplier={layer_multiplier} leaves a stage of {num_blocks} "
                         f"without blocks ({scaled}).")
    return scaled


def encoder_plan(stem: str, width_multiplier: float, stem_width_multiplier: float,
                 num_blocks: Sequence[int], layer_multiplier: float, output_stride: int,
                 stem_pool: bool = False, **options) -> List[Tuple[int, List[BlockPlan]]]:
    """The residual stages of a backbone: `[(stage number, [BlockPlan, ...]), ...]`.

    Args:
        stem: str. One of `STEMS`; "wide" adds deeplab2's stage-1 group of three basic
            blocks at stride 2 (width `128 * stem_width_multiplier`).
        width_multiplier: float. Stage k (input stride s) has base width
            `round(32 * s * width_multiplier)`.
        stem_width_multiplier: float. Width of the stem (and the wide stage 1).
        num_blocks: four ints. Blocks of stages 2-5 before the layer multiplier.
        layer_multiplier: float. Scales `num_blocks` (truncated).
        output_stride: int. Stages beyond it keep the resolution (atrous rates grow).
        stem_pool: bool. The conv stem's max-pool (stride 4 after the stem).
        **options: `axial_beyond_stride`, `conv_block`, `drop_path_rate`,
            `drop_path_schedule`, `drop_path_beyond_stride`.
    """
    stages = []
    actual = 4 if stem_pool else 2
    if stem == "wide":
        blocks, actual = _group("stage1", int(round(32 * stem_width_multiplier)),
                                WIDE_STAGE1_BLOCKS, 1, 2, actual, output_stride, options)
        stages.append((1, blocks))
    for stage, (count, input_stride) in enumerate(
            zip(scale_blocks(num_blocks, layer_multiplier), (2, 4, 8, 16))):
        filters = int(round(32 * input_stride * width_multiplier))
        blocks, actual = _group(f"stage{stage + 2}", filters, count, 2, input_stride, actual,
                                output_stride, options)
        stages.append((stage + 2, blocks))
    return stages


def stacked_decoder_plan(width_multiplier: float, output_stride: int,
                         **options) -> List[DecoderStagePlan]:
    """MaX-DeepLab-L's stacked decoder (one stack): down to stride 4 and back up.

    Stages run at strides os/2, ..., 4, 8, ..., os; each fuses the previous output with
    the last two features of its stride (stage outputs first, then earlier decoder
    outputs), then applies one block of deeplab2's type for that stride.

    Args:
        width_multiplier: float. Stage width `round(s * 64 * width_multiplier)` at
            stride s (32 for the last stage).
        output_stride: int. Stride of the backbone (and of the last decoder stage).
        **options: as in `encoder_plan`.
    """
    features = {}
    for stage, stride in enumerate((2, 4, 8, 16, 32)):
        features[min(stride, output_stride)] = [(f"stage{stage + 1}", min(stride, output_stride))]
    stages = []
    stride, going_down = output_stride, True
    current = ("stage5", output_stride)
    while True:
        stride = stride // 2 if going_down else stride * 2
        number = len(stages) + 1
        resnet_stride = 32 if stride == output_stride else stride
        channels = int(round(resnet_stride * 64 * width_multiplier))
        filters = int(resnet_stride * 64 * width_multiplier // 4)
        blocks, _ = _group(f"decoder_stage{number}", filters, 1, 1, resnet_stride, stride,
                           output_stride, options)
        stages.append(DecoderStagePlan(
            name=f"decoder_stage{number}", stride=stride, channels=channels,
            inputs=(current,) + tuple(features[stride][-2:]), blocks=tuple(blocks)))
        if stride == output_stride:
            return stages
        current = (f"decoder_stage{number}", stride)
        features[stride].append(current)
        if stride == DECODER_HIGH_RESOLUTION_STRIDE:
            going_down = False

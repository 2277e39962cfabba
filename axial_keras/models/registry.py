"""Named model variants as data: `get_model(name, **overrides)` and `list_models()`.

A variant is one typed frozen config (timm style): `AxialResNetConfig` holds the
`AxialResNetBackbone` arguments, `AxialDeepLabConfig` a backbone config plus the
decoder and head widths. `get_model` turns a config (with overrides) into models.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import keras

from axial_keras.labels import CITYSCAPES, PanopticLabels
from axial_keras.layers.axial_attention import CHUNK_ELEMENTS
from axial_keras.models.axial_deeplab import OUTPUT_STRIDE, AxialDeepLab
from axial_keras.models.axial_resnet_backbone import AxialResNetBackbone
from axial_keras.models.axial_resnet_classifier import AxialResNetClassifier
from axial_keras.panoptic.postprocessing import PostProcessingSettings


@dataclasses.dataclass(frozen=True)
class AxialResNetConfig:
    """The `AxialResNetBackbone` arguments of a variant (see that class for their meaning)."""

    stem: str = "conv"
    width_multiplier: float = 1.0
    stem_width_multiplier: float = 1.0
    stem_pool: bool = False
    num_blocks: Tuple[int, ...] = (3, 4, 6, 3)
    layer_multiplier: float = 1.0
    conv_block: str = "bottleneck"
    activation: str = "relu"
    stacked_decoder: bool = False
    output_stride: int = 32
    axial_beyond_stride: int = 2
    spans: Tuple[Optional[int], ...] = (None, None, None, None, None)
    num_heads: int = 8
    key_expansion: float = 1.0
    value_expansion: float = 2.0
    bottleneck_expansion: float = 2.0
    drop_path_rate: float = 0.0
    drop_path_schedule: str = "constant"
    drop_path_beyond_stride: int = 16
    input_shape: Tuple[Optional[int], ...] = (None, None, 3)
    kernel_regularizer: Any = None
    momentum: float = 0.99
    epsilon: float = 1e-3
    synchronized_bn: bool = False
    max_span: int = 255
    attention_chunk_elements: Optional[int] = CHUNK_ELEMENTS


@dataclasses.dataclass(frozen=True)
class AxialDeepLabConfig:
    """An Axial-DeepLab variant: its backbone config, the `AxialDeepLab` widths and (for the
    published models) the post-processing their numbers were evaluated with."""

    backbone: AxialResNetConfig
    projection_channels: int = 256
    semantic_decoder_channels: int = 256
    semantic_low_level_channels: Tuple[int, ...] = (64, 32)
    semantic_head_channels: int = 256
    instance_projection_channels: int = 256
    instance_decoder_channels: int = 128
    instance_low_level_channels: Tuple[int, ...] = (32, 16)
    instance_head_channels: int = 32
    input_shape: Tuple[Optional[int], ...] = (None, None, 3)
    momentum: float = 0.99
    epsilon: float = 1e-3
    synchronized_bn: bool = False
    postprocessing: Optional[PostProcessingSettings] = None


ModelConfig = Union[AxialResNetConfig, AxialDeepLabConfig]
_REGISTRY: Dict[str, ModelConfig] = {}
# Overrides every variant takes besides its config fields: `keras.Model` arguments.
_MODEL_ARGS = ("name", "dtype")
# Overrides of a backbone variant that make it a classifier.
_CLASSIFIER_ARGS = ("num_classes",)
# Overrides of a panoptic variant that define its label space.
_LABEL_ARGS = ("labels", "num_classes", "thing_class_ids", "label_divisor", "ignore_label")

# Full Axial-ResNet: local 15 x 15 windows in the stem blocks and the stride-4 stage
# ("local constraints in the first few blocks", PAPER.md section 2), global beyond.
_FULL_AXIAL_SPANS: Tuple = (15, 15, None, None, None)


def register(name: str, config: ModelConfig) -> None:
    """Adds a variant; `get_model(name)` then builds `config`."""
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    if not isinstance(config, (AxialResNetConfig, AxialDeepLabConfig)):
        raise ValueError(f"A variant is an AxialResNetConfig or AxialDeepLabConfig, "
                         f"got {type(config).__name__}.")
    _REGISTRY[name] = config


def list_models() -> List[str]:
    """Names of every registered variant, sorted."""
    return sorted(_REGISTRY)


def get_variant(name: str) -> ModelConfig:
    """The registered config of variant `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}.")
    return _REGISTRY[name]


def _replace(config, overrides: Dict[str, Any], extra=()):
    """`config` with `overrides` applied; unknown keys raise naming the allowed ones."""
    fields = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(k for k in overrides if k not in fields)
    if unknown:
        raise ValueError(f"Unknown override(s) {unknown} for {type(config).__name__}; "
                         f"allowed: {sorted(fields + list(extra))}.")
    return dataclasses.replace(config, **overrides)


def _pop(overrides: Dict[str, Any], keys) -> Dict[str, Any]:
    return {k: overrides.pop(k) for k in keys if k in overrides}


def build_backbone(config: AxialResNetConfig, **kwargs) -> AxialResNetBackbone:
    """An `AxialResNetBackbone` from `config` (`kwargs`: `name`, `dtype`)."""
    return AxialResNetBackbone(**dataclasses.asdict(config), **kwargs)


def _labels(args: Dict[str, Any]) -> PanopticLabels:
    if "labels" in args:
        if len(args) > 1:
            raise ValueError(f"Pass either `labels` or {sorted(set(_LABEL_ARGS) - {'labels'})}, "
                             f"not both (got {sorted(args)}).")
        return args["labels"]
    if not args:
        return CITYSCAPES
    defaults = dict(num_classes=CITYSCAPES.num_classes,
                    thing_class_ids=CITYSCAPES.thing_class_ids, label_divisor=1000,
                    ignore_label=255)
    return PanopticLabels.from_ids(**{**defaults, **args})


def get_model(name: str, **overrides) -> keras.Model:
    """Builds the variant `name`; keyword arguments override its registered config.

    A backbone variant (`AxialResNetConfig`) builds an `AxialResNetBackbone` (a dict of
    endpoints), or with `num_classes` an `AxialResNetClassifier` on it. A panoptic
    variant builds an `AxialDeepLab`; its label space comes from `labels=` or from
    `num_classes`, `thing_class_ids`, `label_divisor`, `ignore_label` (default
    Cityscapes), and `backbone=` takes a dict of backbone fields merged into the
    variant's (or a whole `AxialResNetConfig`). Every model is named `name` unless
    `name=` is given; `dtype=` sets every model's dtype policy.

    Example:
    >>> model = get_model("axial_resnet_s", num_classes=1000)
    >>> model = get_model("axial_deeplab_s", backbone={"spans": (None, 65, 65, 65, 65)})
    """
    config = get_variant(name)
    overrides = dict(overrides)
    model_args = {"name": name, **_pop(overrides, _MODEL_ARGS)}
    if isinstance(config, AxialResNetConfig):
        head = _pop(overrides, _CLASSIFIER_ARGS)
        config = _replace(config, overrides, _MODEL_ARGS + _CLASSIFIER_ARGS)
        if head.get("num_classes") is None:
            return build_backbone(config, **model_args)
        backbone = build_backbone(config, name="backbone", dtype=model_args.get("dtype"))
        return AxialResNetClassifier(backbone, head["num_classes"],
                                     kernel_regularizer=config.kernel_regularizer, **model_args)
    labels = _labels(_pop(overrides, _LABEL_ARGS))
    backbone = overrides.pop("backbone", {})
    if isinstance(backbone, dict):
        backbone = _replace(config.backbone, backbone)
    if not isinstance(backbone, AxialResNetConfig):
        raise ValueError(f"`backbone` must be a dict of AxialResNetConfig fields or an "
                         f"AxialResNetConfig, got {type(backbone).__name__}.")
    config = _replace(config, overrides, _MODEL_ARGS + _LABEL_ARGS)
    kwargs = dataclasses.asdict(config)
    kwargs.pop("postprocessing")
    kwargs["backbone"] = build_backbone(backbone, name="backbone", dtype=model_args.get("dtype"))
    return AxialDeepLab(labels=labels, **kwargs, **model_args)


for _size, _width in (("s", 0.5), ("m", 0.75), ("l", 1.0), ("xl", 2.0)):
    # Conv-stem Axial-ResNet: global axial attention in every residual stage.
    register(f"axial_resnet_{_size}", AxialResNetConfig(stem="conv", width_multiplier=_width))
for _size, _width in (("s", 0.5), ("m", 0.75), ("l", 1.0)):
    register(f"full_axial_resnet_{_size}",
             AxialResNetConfig(stem="axial", width_multiplier=_width, spans=_FULL_AXIAL_SPANS))

# For tests and the digits demo: one block per stage, 4 heads, stride 16, batch-norm
# momentum 0.9 for short runs.
register("axial_resnet_tiny", AxialResNetConfig(
    stem="conv", width_multiplier=0.25, stem_width_multiplier=0.25, num_blocks=(1, 1, 1, 1),
    num_heads=4, output_stride=16, momentum=0.9))

# Axial-DeepLab (PAPER.md section 3): inception-stem Axial-ResNet at output stride 16,
# drop path 0.2 growing linearly to the last stage (deeplab2's configs). Global span by
# default (what the official checkpoints were trained with); pass
# backbone={"spans": (None, 65, 65, 65, 65)} for the paper's local span on large inputs.
for _size, _width in (("s", 0.5), ("m", 0.75), ("l", 1.0), ("xl", 2.0)):
    register(f"axial_deeplab_{_size}", AxialDeepLabConfig(backbone=AxialResNetConfig(
        stem="inception", width_multiplier=_width, output_stride=OUTPUT_STRIDE,
        drop_path_rate=0.2, drop_path_schedule="linear")))

register("axial_deeplab_tiny", AxialDeepLabConfig(
    backbone=AxialResNetConfig(stem="inception", width_multiplier=0.25,
                               stem_width_multiplier=0.25, num_blocks=(1, 1, 1, 1),
                               num_heads=4, output_stride=OUTPUT_STRIDE, momentum=0.9),
    projection_channels=64, semantic_decoder_channels=64, semantic_low_level_channels=(32, 16),
    semantic_head_channels=64, instance_projection_channels=64, instance_decoder_channels=32,
    instance_low_level_channels=(16, 8), instance_head_channels=16, momentum=0.9))

# deeplab2's model zoo (model/encoder/axial_resnet_instances.py, pixel_encoder/axial_resnet.py)
# with the backbone options of its Cityscapes configs (output stride 16, drop path keep 0.8
# linear). Axial-SWideRNet-(1, 1, x) is (stem width, backbone width, layer multiplier): a
# 3x3 stem, a stage-1 group of 3 basic blocks, basic blocks up to stage 4 block 1, axial
# blocks beyond stride 16 with expansions 2 / 4 / 4. MaX-DeepLab-L is Axial-SWideRNet-(1, 1,
# 1) with a stacked decoder; Axial-ResNet-50 is MaX-DeepLab-S with exact GeLU at output
# stride 32 (kMaX-DeepLab's pixel encoder).
_WIDE = AxialResNetConfig(
    stem="wide", conv_block="basic", num_blocks=(3, 6, 3, 3), axial_beyond_stride=16,
    key_expansion=2.0, value_expansion=4.0, bottleneck_expansion=4.0,
    output_stride=OUTPUT_STRIDE, drop_path_rate=0.2, drop_path_schedule="linear",
    drop_path_beyond_stride=4)
_MAX_S = AxialResNetConfig(
    stem="inception", conv_block="bottleneck", num_blocks=(3, 4, 6, 3), axial_beyond_stride=16,
    key_expansion=1.0, value_expansion=2.0, bottleneck_expansion=2.0,
    output_stride=OUTPUT_STRIDE, drop_path_rate=0.2, drop_path_schedule="linear",
    drop_path_beyond_stride=16)
ZOO_BACKBONES: Mapping[str, AxialResNetConfig] = {
    "axial_swidernet_1_1_1": _WIDE,
    "axial_swidernet_1_1_3": dataclasses.replace(_WIDE, layer_multiplier=3.0),
    "axial_swidernet_1_1_4.5": dataclasses.replace(_WIDE, layer_multiplier=4.5),
    "max_deeplab_s_backbone": _MAX_S,
    "max_deeplab_l_backbone": dataclasses.replace(_WIDE, stacked_decoder=True),
    "axial_resnet_50_gelu": dataclasses.replace(_MAX_S, activation="gelu", output_stride=32,
                                                drop_path_schedule="constant"),
}
# deeplab2's Cityscapes evaluator_options (identical in the five configs); the labels are
# the default, axial_keras.labels.CITYSCAPES (19 classes, things 11-18, divisor 1000).
# The post-processing deeplab2's Cityscapes numbers were evaluated with, in its convention.
CITYSCAPES_POSTPROCESSING = PostProcessingSettings(center_threshold=0.1, nms_kernel=13,
                                                   keep_k_centers=400, stuff_area_limit=2048,
                                                   convention="deeplab2")
for _name, _config in ZOO_BACKBONES.items():
    register(_name, _config)
for _name in ("axial_swidernet_1_1_1", "axial_swidernet_1_1_3", "axial_swidernet_1_1_4.5",
              "max_deeplab_s_backbone", "max_deeplab_l_backbone"):
    # deeplab2's Cityscapes config `<name>_os16`: Panoptic-DeepLab heads on the backbone.
    register(f"{_name}_os16", AxialDeepLabConfig(backbone=ZOO_BACKBONES[_name],
                                                 postprocessing=CITYSCAPES_POSTPROCESSING))

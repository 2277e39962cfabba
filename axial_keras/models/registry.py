"""Named model variants as data: `get_model(name, **overrides)` and `list_models()`."""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Tuple

import keras

from axial_keras.models.axial_deeplab import AxialDeepLab
from axial_keras.models.axial_resnet import AxialResNet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered variant: the model class and its constructor arguments."""

    builder: Callable[..., keras.Model]
    kwargs: Mapping[str, Any]
    description: str


_REGISTRY: Dict[str, ModelSpec] = {}

# Full Axial-ResNet: local 15 x 15 windows in the stem blocks and the stride-4 stage
# ("local constraints in the first few blocks", PAPER.md section 2), global beyond.
_FULL_AXIAL_SPANS: Tuple = (15, 15, None, None, None)


def register(name: str, builder: Callable[..., keras.Model], description: str, **kwargs):
    """Adds a variant; `get_model(name)` then calls `builder(**kwargs)`."""
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = ModelSpec(builder, dict(kwargs), description)


def list_models() -> List[str]:
    """Names of every registered variant, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}. Known models: {', '.join(list_models())}.")
    return _REGISTRY[name]


def get_model(name: str, **overrides) -> keras.Model:
    """Builds the variant `name`; keyword arguments override its registered ones.

    Example:
    >>> model = get_model("axial_resnet_s", num_classes=1000)
    """
    spec = get_spec(name)
    return spec.builder(**{**spec.kwargs, "name": name, **overrides})


for _size, _width in (("s", 0.5), ("m", 0.75), ("l", 1.0), ("xl", 2.0)):
    register(f"axial_resnet_{_size}", AxialResNet,
             f"Conv-stem Axial-ResNet-{_size.upper()}: global axial attention in every "
             f"residual stage, width {_width}.",
             stem="conv", width_multiplier=_width)
for _size, _width in (("s", 0.5), ("m", 0.75), ("l", 1.0)):
    register(f"full_axial_resnet_{_size}", AxialResNet,
             f"Full Axial-ResNet-{_size.upper()}: three axial stem blocks, local span 15 "
             f"up to stride 4, global beyond; width {_width}.",
             stem="axial", width_multiplier=_width, spans=_FULL_AXIAL_SPANS)

register("axial_resnet_tiny", AxialResNet,
         "A tiny conv-stem Axial-ResNet for tests and the digits demo (one block per stage, "
         "batch-norm momentum 0.9 for short runs, "
         "4 heads, stride 16).",
         stem="conv", width_multiplier=0.25, stem_width_multiplier=0.25,
         num_blocks=(1, 1, 1, 1), num_heads=4, output_stride=16, momentum=0.9)

# Axial-DeepLab (PAPER.md section 3): inception-stem Axial-ResNet at output stride 16,
# drop path 0.2 growing linearly to the last stage (deeplab2's configs). Global span by
# default (what the official checkpoints were trained with); pass
# backbone={"spans": (None, 65, 65, 65, 65), ...} for the paper's local span on large
# inputs.
for _size, _width in (("s", 0.5), ("m", 0.75), ("l", 1.0), ("xl", 2.0)):
    register(f"axial_deeplab_{_size}", AxialDeepLab,
             f"Axial-DeepLab-{_size.upper()}: Panoptic-DeepLab heads on an inception-stem "
             f"Axial-ResNet (width {_width}, output stride 16).",
             backbone=dict(stem="inception", width_multiplier=_width, drop_path_rate=0.2,
                           drop_path_schedule="linear"))

register("axial_deeplab_tiny", AxialDeepLab,
         "A tiny Axial-DeepLab for tests and the digits-panoptic demo.",
         backbone=dict(stem="inception", width_multiplier=0.25, stem_width_multiplier=0.25,
                       num_blocks=(1, 1, 1, 1), num_heads=4, momentum=0.9),
         projection_channels=64, semantic_decoder_channels=64,
         semantic_low_level_channels=(32, 16), semantic_head_channels=64,
         instance_projection_channels=64, instance_decoder_channels=32,
         instance_low_level_channels=(16, 8), instance_head_channels=16, momentum=0.9)

"""Loads official deeplab2 (TF2, Keras 2) checkpoints of the Axial-ResNet family into our models.

Covers deeplab2's model zoo (Axial-SWideRNet, MaX-DeepLab-S/L backbones, Axial-ResNet-50
with GeLU, and Panoptic-DeepLab on each) and the Axial-ResNet / Axial-DeepLab instances.
The checkpoint is read with `tf.train.load_checkpoint` (object-based keys such as
`encoder/_stage2/_block1/_attention/_height_axis/qkv_kernel/.ATTRIBUTES/VARIABLE_VALUE`);
no deeplab2 code and no tf-keras are needed.

`from_deeplab2(checkpoint)` reads the architecture from the checkpoint itself: the
family from its keys (stem, block types, where attention starts, a stacked decoder,
Panoptic-DeepLab heads), widths, depths, expansions and head sizes from its shapes and
block counts. Every model weight must find exactly one checkpoint tensor of the same
shape (deeplab2's broadcast unit axes aside) and every model tensor of the checkpoint
must be used; all of it is checked before the first weight is assigned, and tensors
are then assigned one at a time from the reader (never two copies of the model).

CLI:
    python -m axial_keras.models.convert --deeplab2_checkpoint=PATH [--model=NAME] \
        --output=FILE.keras
"""

import dataclasses
import glob
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import flags, logging

import keras

from axial_keras import cli
from axial_keras.labels import CITYSCAPES, PanopticLabels
from axial_keras.layers.blocks import AxialBottleneck, BasicBlock, ConvBottleneck
from axial_keras.models.layout import encoder_plan
from axial_keras.models.registry import AxialDeepLabConfig, get_model, get_variant, list_models

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Checkpoint entries that hold training state rather than model weights.
_NON_MODEL = re.compile(r"^(_CHECKPOINTABLE_OBJECT_GRAPH|global_step|save_counter|optimizer)"
                        r"|/\.OPTIMIZER_SLOT/")

# Our block sub-layer names -> deeplab2's attribute names, per block class.
_BLOCK_CONVS = {
    BasicBlock: {"conv1": "_conv1_bn_act", "conv2": "_conv2_bn", "shortcut": "_shortcut"},
    ConvBottleneck: {"conv1": "_conv1_bn_act", "conv2": "_conv2_bn_act", "conv3": "_conv3_bn",
                     "shortcut": "_shortcut"},
    AxialBottleneck: {"conv1": "_conv1_bn_act", "conv3": "_conv3_bn", "shortcut": "_shortcut"},
}
_STEM_CONVS = {"conv1": "_conv1_bn_act", "conv2": "_conv2_bn_act", "conv3": "_conv3_bn"}
_ATTENTION_NAMES = {
    "qkv_kernel": "qkv_kernel",
    "query_rpe": "_query_rpe/embeddings",
    "key_rpe": "_key_rpe/embeddings",
    "value_rpe": "_value_rpe/embeddings",
}
_HEADS = {
    "semantic_head": ("semantic_head_without_last_layer", "semantic_last_layer"),
    "center_head": ("instance_center_head_without_last_layer", "instance_center_head_last_layer"),
    "offset_head": ("instance_regression_head_without_last_layer",
                    "instance_regression_head_last_layer"),
}
_GELU_NOTE = (
    "deeplab2's MaX-DeepLab-S backbone (ReLU) and its Axial-ResNet-50 (exact GeLU) have "
    "identical checkpoint keys and shapes, so the activation cannot be read from the "
    "checkpoint: pass the name, from_deeplab2(path, 'max_deeplab_s_backbone') or "
    "from_deeplab2(path, 'axial_resnet_50_gelu')")


def _conv_tail(parts: List[str]) -> List[str]:
    """[conv|batch_norm, var] of a ConvNormAct -> deeplab2's Conv2DSame attributes."""
    return ["_conv" if parts[0] == "conv" else "_batch_norm"] + parts[1:]


def _separable_tail(parts: List[str]) -> List[str]:
    """A SeparableConvNormAct's [sub-layer, ...] -> deeplab2's SeparableConv2DSame."""
    if parts[0] == "depthwise_conv":
        return ["_conv1_bn_act", "_depthwise", "_depthwise_conv", "depthwise_kernel"]
    if parts[0] == "depthwise_bn":
        return ["_conv1_bn_act", "_depthwise", "_batch_norm"] + parts[1:]
    return ["_conv1_bn_act", "_pointwise"] + _conv_tail(parts[1:])


def _decoder_key(parts: List[str]) -> str:
    head = parts.pop(0)
    if head in _HEADS:
        without_last, last = _HEADS[head]
        if parts[0] == "final_conv":
            return "/".join([last] + parts[1:])
        return "/".join([without_last] + _separable_tail(parts[1:]))
    name = parts.pop(0)
    if name == "projection":
        return "/".join([head, "_aspp", "_proj_conv_bn_act"] + _conv_tail(parts))
    if name.startswith("low_level_conv"):
        return "/".join([head, f"_{name}"] + _conv_tail(parts))
    return "/".join([head, f"_{name}"] + _separable_tail(parts))


def _attention_key(parts: List[str]) -> List[str]:
    axis, leaf = parts[0], parts[1]
    tail = [_ATTENTION_NAMES[leaf]] if leaf in _ATTENTION_NAMES else [f"_{leaf}"] + parts[2:]
    return ["_attention", f"_{axis}"] + tail


def _block_key(parts: List[str], block_type: type, path: str) -> List[str]:
    names = _BLOCK_CONVS[block_type]
    if parts[0] == "attention":
        return _attention_key(parts[1:])
    if parts[0] in names:
        return [names[parts[0]]] + _conv_tail(parts[1:])
    raise ValueError(f"No deeplab2 counterpart for weight {path!r}.")


def deeplab2_key(path: str, backbone: keras.Model) -> str:
    """Maps one of our weight paths to its deeplab2 checkpoint key (without the suffix).

    Backbone weights live under `encoder/` (`stage2_block1/conv1/conv/kernel` ->
    `encoder/_stage2/_block1/_conv1_bn_act/_conv/kernel`), decoders and heads under
    deeplab2's checkpoint item names.

    Args:
        path: str. `weight.path` of one of the model's weights.
        backbone: the model's `AxialResNetBackbone` (block types decide the names).
    """
    parts = path.split("/")
    if parts[0] in ("semantic_decoder", "instance_decoder") or parts[0] in _HEADS:
        return _decoder_key(parts)
    head = parts.pop(0)
    block = re.fullmatch(r"(decoder_stage|stage)(\d)_block(\d+)", head)
    fuse = re.fullmatch(r"decoder_stage(\d)_fuse", head)
    if block:
        out = [f"_{block.group(1)}{block.group(2)}", f"_block{block.group(3)}"]
        out += _block_key(parts, type(backbone.get_layer(head)), path)
    elif fuse:
        mode, index = re.fullmatch(r"(strided|resized)_conv(\d+)", parts[0]).groups()
        out = [f"_decoder_stage{fuse.group(1)}_resized_fuse", f"_{mode}_conv_bn{index}"]
        out += _conv_tail(parts[1:])
    elif head == "stem" and backbone.stem == "axial":
        # The full-axial stem's three blocks are deeplab2's stage 1.
        out = ["_stage1", f"_{parts[0]}"] + _block_key(parts[1:], AxialBottleneck, path)
    elif head == "stem" and backbone.stem in ("conv", "wide"):
        out = ["_stem"] + _conv_tail(parts[1:])  # our ConvStem wraps one ConvNormAct "conv"
    elif head == "stem":
        out = ["_stem", _STEM_CONVS[parts[0]]] + _conv_tail(parts[1:])
    else:
        raise ValueError(f"No deeplab2 counterpart for weight {path!r}.")
    return "/".join(["encoder"] + out)


def _backbone_of(model: keras.Model) -> keras.Model:
    return getattr(model, "backbone", model)


def weight_keys(model: keras.Model) -> Dict[str, keras.Variable]:
    """deeplab2 checkpoint key -> our weight, for every weight of `model`.

    Args:
        model: keras.Model. A backbone or `AxialDeepLab` of this package.
    """
    backbone = _backbone_of(model)
    mapping = {}
    for weight in model.weights:
        key = deeplab2_key(weight.path, backbone)
        if key in mapping:
            raise ValueError(f"Two weights map onto {key}: {mapping[key].path}, {weight.path}.")
        mapping[key] = weight
    return mapping


def _squeezed(shape) -> Tuple[int, ...]:
    return tuple(int(d) for d in shape if d != 1)


def checkpoint_prefix(path: str) -> str:
    """The checkpoint prefix for `path`: a prefix, a `.index` file or a directory holding one.

    A directory is searched for its `checkpoint` state file, else for exactly one
    `*.index` file anywhere below it (deeplab2's archives use various folder names).

    Args:
        path: str. A checkpoint prefix, its `.index` file or a directory.
    """
    if path.endswith(".index") and os.path.isfile(path):
        return path[: -len(".index")]
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest and os.path.isfile(latest + ".index"):
            return latest
        found = sorted(glob.glob(os.path.join(path, "**", "*.index"), recursive=True))
        if len(found) == 1:
            return found[0][: -len(".index")]
        if found:
            raise ValueError(f"{path} holds {len(found)} checkpoints ({found[:4]}); pass one "
                             f"prefix.")
    raise ValueError(f"No TensorFlow checkpoint at {path} (expected a prefix with a .index "
                     f"file, or a directory holding one).")


def read_shapes(prefix: str) -> Dict[str, Tuple[int, ...]]:
    """Model tensors of a checkpoint: key (without the suffix) -> shape.

    Args:
        prefix: str. Checkpoint prefix; its data shards must hold every tensor.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError(f"Cannot read the checkpoint {prefix}: {error}") from error
    _check_data_size(prefix, reader)
    return {k[: -len(_SUFFIX)]: tuple(v) for k, v in reader.get_variable_to_shape_map().items()
            if k.endswith(_SUFFIX) and not _NON_MODEL.search(k)}


def _check_data_size(prefix: str, reader) -> None:
    """Refuses data shards smaller than the tensors their index lists (a cut download)."""
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    needed = sum(int(np.prod(shapes[k])) * dtypes[k].size for k in shapes
                 if dtypes[k] != tf.string)
    shards = sorted(glob.glob(glob.escape(prefix) + ".data-*"))
    held = sum(os.path.getsize(s) for s in shards)
    if held < needed:
        raise ValueError(f"{', '.join(shards) or prefix + '.data-*'}: the checkpoint data is "
                         f"truncated ({held} bytes; its index lists {needed} bytes of tensors).")


def _compare(mapping: Mapping[str, keras.Variable], shapes: Mapping[str, Tuple[int, ...]]):
    """(missing, mismatched, unused) between our weights and the checkpoint's tensors."""
    missing = sorted(k for k in mapping if k not in shapes)
    mismatched = sorted(
        f"{mapping[k].path} {tuple(mapping[k].shape)} vs {k} {list(shapes[k])}"
        for k in mapping if k in shapes
        and _squeezed(mapping[k].shape) != _squeezed(shapes[k]))
    unused = sorted(k for k in shapes if k not in mapping)
    return missing, mismatched, unused


def load_deeplab2_weights(model: keras.Model, checkpoint: str) -> None:
    """Assigns every weight of `model` (a backbone or `AxialDeepLab`) from a checkpoint.

    Everything is checked first; then tensors are read and assigned one at a time.

    Args:
        model: keras.Model. The model to fill.
        checkpoint: str. Checkpoint prefix, `.index` file or directory.

    Raises:
        ValueError: naming model weights with no checkpoint tensor, shape mismatches,
            and checkpoint model tensors that no weight used (nothing is assigned).
    """
    prefix = checkpoint_prefix(checkpoint)
    mapping = weight_keys(model)
    missing, mismatched, unused = _compare(mapping, read_shapes(prefix))
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights not in the checkpoint: {missing[:10]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {mismatched[:10]}")
    if unused:
        problems.append(f"{len(unused)} checkpoint variables unused: {unused[:10]}")
    if problems:
        raise ValueError(f"Cannot load {prefix} into {model.name}: " + "; ".join(problems))
    reader = tf.train.load_checkpoint(prefix)
    for key, weight in mapping.items():
        weight.assign(reader.get_tensor(key + _SUFFIX).reshape(weight.shape))


# --- Reading the architecture from a checkpoint ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What a checkpoint's keys and shapes say about the model that wrote it.

    Attributes:
        family: dict. Fields that tell architectures apart (`_FAMILY_FIELDS`).
        backbone: dict. `AxialResNetBackbone` arguments read from the shapes (widths, depths,
            expansions, heads, output stride where the keys fix it).
        heads: dict. `AxialDeepLab` arguments (empty for a backbone checkpoint).
        keys: the checkpoint's model tensor keys.
    """

    family: Mapping[str, Any]
    backbone: Mapping[str, Any]
    heads: Mapping[str, Any]
    keys: Tuple[str, ...]

    @property
    def panoptic(self) -> bool:
        return self.family["panoptic"]


_FAMILY_FIELDS = ("panoptic", "stem", "conv_block", "axial_beyond_stride", "stacked_decoder")
_BASE_BLOCKS = {"wide": (3, 6, 3, 3)}
_DEFAULT_BLOCKS = (3, 4, 6, 3)


def _block_kinds(shapes) -> Dict[Tuple[int, int], str]:
    """(stage, block) -> "axial", "bottleneck" or "basic", from each block's sub-layers."""
    parts: Dict[Tuple[int, int], set] = {}
    for key in shapes:
        match = re.match(r"encoder/_stage(\d)/_block(\d+)/(_\w+)", key)
        if match:
            parts.setdefault((int(match.group(1)), int(match.group(2))), set()).add(match.group(3))
    kinds = {}
    for index, attrs in parts.items():
        if "_attention" in attrs:
            kinds[index] = "axial"
        elif "_conv3_bn" in attrs:
            kinds[index] = "bottleneck"
        elif "_conv2_bn" in attrs:
            kinds[index] = "basic"
        else:
            raise ValueError(f"Not a deeplab2 Axial-ResNet checkpoint: block "
                             f"encoder/_stage{index[0]}/_block{index[1]} holds {sorted(attrs)}.")
    return kinds


def _shape(shapes, key: str) -> Tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"Not a deeplab2 Axial-ResNet checkpoint: no {key}.")
    return shapes[key]


def _layer_multiplier(counts: Tuple[int, ...], base: Tuple[int, ...]):
    for candidate in sorted({c / b for c, b in zip(counts, base)}):
        if tuple(int(b * candidate) for b in base) == counts:
            return base, candidate
    return counts, 1.0


def read_architecture(shapes: Mapping[str, Tuple[int, ...]]) -> Architecture:
    """Reads family, widths, depths, expansions and head sizes from checkpoint shapes.

    Args:
        shapes: dict. Checkpoint key (without the suffix) -> shape (`read_shapes`).

    Raises:
        ValueError: when the keys are not those of a deeplab2 Axial-ResNet (naming what
            is missing or what was found instead).
    """
    if not any(k.startswith("encoder/") for k in shapes):
        tops = sorted({k.split("/")[0] for k in shapes})
        raise ValueError(f"Not a deeplab2 Axial-ResNet checkpoint: no encoder/ keys (top-level "
                         f"names: {tops[:12]}).")
    backbone: Dict[str, Any] = {}
    if "encoder/_stem/_conv1_bn_act/_conv/kernel" in shapes:
        stem = "inception"
        stem_channels = shapes["encoder/_stem/_conv1_bn_act/_conv/kernel"][-1]
    elif "encoder/_stem/_conv/kernel" in shapes:
        kernel = shapes["encoder/_stem/_conv/kernel"]
        stem = {7: "conv", 3: "wide"}.get(kernel[0])
        if stem is None:
            raise ValueError(f"Not a deeplab2 Axial-ResNet checkpoint: a {kernel[0]}x{kernel[1]} "
                             f"stem convolution.")
        stem_channels = kernel[-1]
    elif any(k.startswith("encoder/_stage1/_block1/_attention") for k in shapes):
        stem, stem_channels = "axial", None
    else:
        raise ValueError("Not a deeplab2 Axial-ResNet checkpoint: no encoder/_stem and no "
                         "axial stage 1.")
    kinds = _block_kinds(shapes)
    if stem == "axial":  # the full-axial stem's blocks are deeplab2's stage 1
        kinds = {index: kind for index, kind in kinds.items() if index[0] != 1}
    counts = tuple(max((b for s, b in kinds if s == stage), default=0) for stage in (2, 3, 4, 5))
    if min(counts) == 0:
        raise ValueError(f"Not a deeplab2 Axial-ResNet checkpoint: residual stages 2-5 hold "
                         f"{counts} blocks.")
    widest = _shape(shapes, "encoder/_stage5/_block1/_shortcut/_conv/kernel")[-1]
    width = widest / 2048
    backbone["width_multiplier"] = width
    if stem_channels is not None:
        backbone["stem_width_multiplier"] = stem_channels / 64
    num_blocks, multiplier = _layer_multiplier(counts, _BASE_BLOCKS.get(stem, _DEFAULT_BLOCKS))
    backbone["num_blocks"], backbone["layer_multiplier"] = num_blocks, multiplier
    conv_kinds = {k for (s, _), k in kinds.items() if s >= 2 and k != "axial"}
    conv_block = "basic" if "basic" in conv_kinds else "bottleneck"
    decoder_stages = {int(m.group(1)) for m in
                      (re.match(r"encoder/_decoder_stage(\d+)/", k) for k in shapes) if m}
    stacked = bool(decoder_stages)
    if stacked:
        backbone["output_stride"] = 4 * 2 ** (len(decoder_stages) // 2)
    axial_beyond = _axial_beyond_stride(kinds, stem, conv_block, backbone)
    axial_key = next((f"encoder/_stage{s}/_block{b}" for (s, b), k in sorted(kinds.items())
                      if k == "axial"), None)
    if axial_key is None and stem == "axial":
        axial_key = "encoder/_stage1/_block1"
    if axial_key is not None:
        stage = int(axial_key.split("_stage")[1][0])
        base = int(round(32 * 2 ** (stage - 1) * width))
        heads = _shape(shapes, f"{axial_key}/_attention/_height_axis/_batch_norm_similarity/gamma")
        num_heads = heads[2] if len(heads) == 5 else heads[-1]
        key_depth = _shape(shapes, f"{axial_key}/_attention/_height_axis/_query_rpe/embeddings")
        value_depth = _shape(shapes, f"{axial_key}/_attention/_height_axis/_value_rpe/embeddings")
        conv1 = _shape(shapes, f"{axial_key}/_conv1_bn_act/_conv/kernel")[-1]
        backbone.update(num_heads=num_heads, key_expansion=key_depth[1] * num_heads / base,
                        value_expansion=value_depth[1] * num_heads / base,
                        bottleneck_expansion=conv1 / base, max_span=(key_depth[0] + 1) // 2)
    family = dict(panoptic="semantic_last_layer/kernel" in shapes, stem=stem,
                  conv_block=conv_block, axial_beyond_stride=axial_beyond,
                  stacked_decoder=stacked)
    heads = _read_heads(shapes) if family["panoptic"] else {}
    return Architecture(family, backbone, heads, tuple(shapes))


def _axial_beyond_stride(kinds, stem, conv_block, backbone) -> int:
    """The `axial_beyond_stride` whose layout puts attention exactly where the checkpoint has it."""
    for candidate in (16, 8, 4, 2, 32, 0):
        stages = encoder_plan(stem, backbone["width_multiplier"],
                              backbone.get("stem_width_multiplier", 1.0),
                              backbone["num_blocks"], backbone["layer_multiplier"],
                              backbone.get("output_stride", 16), axial_beyond_stride=candidate,
                              conv_block=conv_block, drop_path_rate=0.0,
                              drop_path_schedule="constant", drop_path_beyond_stride=16)
        planned = {(s, int(p.name.rsplit("block", 1)[1])): p.kind for s, blocks in stages
                   for p in blocks}
        if planned == kinds:
            return candidate
    raise ValueError(f"Not a deeplab2 Axial-ResNet checkpoint: no attention placement gives its "
                     f"block types {sorted(kinds.items())[:8]}...")


def _read_heads(shapes) -> Dict[str, Any]:
    def out(key):
        return _shape(shapes, key)[-1]

    center = _shape(shapes, "instance_center_head_last_layer/kernel")
    regression = _shape(shapes, "instance_regression_head_last_layer/kernel")
    if center[3] != 1 or regression[3] != 2 or center[2] != regression[2]:
        raise ValueError(f"Unsupported instance heads: centre kernel {list(center)}, regression "
                         f"kernel {list(regression)} (expected 1 and 2 outputs of one width).")
    return dict(
        num_classes=out("semantic_last_layer/kernel"),
        semantic_head_channels=_shape(shapes, "semantic_last_layer/kernel")[2],
        instance_head_channels=regression[2],
        projection_channels=out("semantic_decoder/_aspp/_proj_conv_bn_act/_conv/kernel"),
        semantic_decoder_channels=out(
            "semantic_decoder/_fusion_conv1/_conv1_bn_act/_pointwise/_conv/kernel"),
        semantic_low_level_channels=(out("semantic_decoder/_low_level_conv1/_conv/kernel"),
                                     out("semantic_decoder/_low_level_conv2/_conv/kernel")),
        instance_projection_channels=out("instance_decoder/_aspp/_proj_conv_bn_act/_conv/kernel"),
        instance_decoder_channels=out(
            "instance_decoder/_fusion_conv1/_conv1_bn_act/_pointwise/_conv/kernel"),
        instance_low_level_channels=(out("instance_decoder/_low_level_conv1/_conv/kernel"),
                                     out("instance_decoder/_low_level_conv2/_conv/kernel")),
    )


def _spec_arguments(name: str) -> Tuple[Dict[str, Any], Dict[str, Any], bool]:
    """(backbone config fields, head config fields, panoptic) of a registry variant."""
    config = get_variant(name)
    if isinstance(config, AxialDeepLabConfig):
        heads = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                 if f.name not in ("backbone", "postprocessing")}
        heads["num_classes"] = CITYSCAPES.num_classes
        return dataclasses.asdict(config.backbone), heads, True
    return dataclasses.asdict(config), {}, False


def _family_of(name: str) -> Dict[str, Any]:
    backbone, _, panoptic = _spec_arguments(name)
    return dict(panoptic=panoptic, stem=backbone["stem"], conv_block=backbone["conv_block"],
                axial_beyond_stride=backbone["axial_beyond_stride"],
                stacked_decoder=backbone["stacked_decoder"])


def _differences(family: Mapping[str, Any], name: str) -> List[str]:
    theirs = _family_of(name)
    return [f"{f}: checkpoint {family[f]!r}, {name} {theirs[f]!r}" for f in _FAMILY_FIELDS
            if family[f] != theirs[f]]


def _closeness(arch: Architecture, name: str) -> float:
    """0 for an exact size match; grows with the size and block-count differences."""
    backbone, heads, _ = _spec_arguments(name)
    score = 0.0
    for field in ("width_multiplier", "stem_width_multiplier", "layer_multiplier",
                  "key_expansion", "value_expansion", "bottleneck_expansion", "num_heads"):
        if field in arch.backbone:
            score += abs(float(arch.backbone[field]) - float(backbone[field]))
    if tuple(arch.backbone["num_blocks"]) != tuple(backbone["num_blocks"]):
        score += 1.0
    if arch.heads and arch.heads["num_classes"] != heads.get("num_classes"):
        score += 0.5
    return score


def recognise(arch: Architecture, name: Optional[str] = None) -> str:
    """The registry variant a checkpoint's architecture is, or `name` if it fits its family.

    Args:
        arch: Architecture. What `read_architecture` read.
        name: str or None. A registry name that fixes the family.

    Raises:
        ValueError: for a name of another family, a checkpoint matching no variant
            (naming the closest and how it differs) and the GeLU/ReLU ambiguity.
    """
    if name is not None:
        differences = _differences(arch.family, name)
        if differences:
            raise ValueError(f"The checkpoint is not a {name}: " + "; ".join(differences)
                             + _first_differing_keys(arch, name) + ".")
        return name
    names = [n for n in list_models() if not _differences(arch.family, n)]
    if not names:
        closest = min(list_models(), key=lambda n: (len(_differences(arch.family, n)),
                                                   _closeness(arch, n)))
        raise ValueError(
            f"The checkpoint matches no known architecture; the closest is {closest} ("
            + "; ".join(_differences(arch.family, closest)) + ")"
            + _first_differing_keys(arch, closest) + ".")
    activations = {_spec_arguments(n)[0]["activation"] for n in names}
    if len(activations) > 1:
        raise ValueError(f"The checkpoint fits {', '.join(names)}: {_GELU_NOTE}.")
    return min(names, key=lambda n: (_closeness(arch, n), n))


def _first_differing_keys(arch: Architecture, name: str) -> str:
    """`; first differing keys: ...` of the checkpoint against `name` built at its sizes."""
    try:
        model = _build(name, arch, {})
    except ValueError as error:
        return f"; it cannot be built at the checkpoint's sizes ({error})"
    expected = weight_keys(model)
    del model
    keras.backend.clear_session()
    only_model = sorted(set(expected) - set(arch.keys))
    only_checkpoint = sorted(set(arch.keys) - set(expected))
    return (f"; first differing keys: expected but absent {only_model[:5]}, present but "
            f"unexpected {only_checkpoint[:5]}")


def _overrides_for(name: str, arch: Architecture) -> Dict[str, Any]:
    backbone_spec, _, panoptic = _spec_arguments(name)
    backbone = dict(arch.backbone)
    if not panoptic and "output_stride" not in backbone:
        backbone["output_stride"] = backbone_spec["output_stride"]
    if panoptic:
        backbone.pop("output_stride", None)
        heads = dict(arch.heads)
        classes = heads.pop("num_classes")
        if classes != CITYSCAPES.num_classes:
            # The checkpoint holds the class count, not the classes: all stuff unless the
            # caller passes `labels` (or `num_classes` and `thing_class_ids`).
            logging.warning("%s: %d classes (not Cityscapes'); pass labels= to name them and "
                            "mark the things.", name, classes)
            heads["labels"] = PanopticLabels.from_ids(classes)
        return dict(heads, backbone=backbone)
    return backbone


def _check_overrides(name: str, read: Mapping[str, Any], overrides: Mapping[str, Any],
                     where: str = "") -> None:
    for key, value in overrides.items():
        if key == "backbone" and isinstance(value, Mapping) and isinstance(read.get(key), Mapping):
            _check_overrides(name, read[key], value, "backbone.")
            continue
        if key not in read:
            continue
        have = read[key]
        same = (tuple(value) == tuple(have)) if isinstance(have, (tuple, list)) else (
            value == have if not isinstance(have, float) else np.isclose(float(value), have))
        if not same:
            raise ValueError(f"Override {where}{key}={value!r} does not fit the checkpoint, which "
                             f"holds {where}{key}={have!r} ({name}); nothing was loaded.")


def _build(name: str, arch: Architecture, overrides: Mapping[str, Any]) -> keras.Model:
    read = dict(arch.heads, backbone=dict(arch.backbone)) if arch.panoptic else arch.backbone
    overrides = dict(overrides)
    if "labels" in overrides:
        overrides["num_classes"] = overrides["labels"].num_classes
    _check_overrides(name, read, overrides)
    kwargs = _overrides_for(name, arch)
    if "labels" in overrides or "num_classes" in overrides:
        kwargs.pop("labels", None)
    if "labels" in overrides:
        overrides.pop("num_classes")
    for key, value in overrides.items():
        if key == "backbone":
            kwargs["backbone"] = {**kwargs.get("backbone", {}), **value}
        elif key == "spans" and "backbone" in kwargs:
            kwargs["backbone"] = {**kwargs["backbone"], "spans": value}
        else:
            kwargs[key] = value
    return get_model(name, **kwargs)


def from_deeplab2(checkpoint: str, name: Optional[str] = None, **overrides) -> keras.Model:
    """Builds the model a deeplab2 checkpoint holds and loads its weights.

    The architecture is read from the checkpoint (family from its keys; widths, depths,
    expansions, class count and head sizes from its shapes and block counts). `name`
    only fixes the family (and the activation, which no checkpoint shows: GeLU or
    ReLU); overrides that change what the checkpoint fixes are refused.

    Args:
        checkpoint: str. A checkpoint prefix, its `.index` file, or a directory holding
            one (found anywhere below it).
        name: str or None. Registry variant (e.g. "axial_swidernet_1_1_1_os16").
        **overrides: constructor arguments (e.g. `output_stride=16`, `spans=(None, 65,
            65, 65, 65)`, `input_shape`); `spans` reaches a panoptic model's backbone.

    Raises:
        ValueError: for an unreadable or foreign checkpoint, a name of another family,
            the GeLU/ReLU ambiguity without a name, or overrides the checkpoint
            contradicts; nothing is loaded then.

    Example:
    >>> model = from_deeplab2("axial_swidernet_1_1_1_os16/ckpt-60000")
    """
    prefix = checkpoint_prefix(checkpoint)
    shapes = read_shapes(prefix)
    arch = read_architecture(shapes)
    chosen = recognise(arch, name)
    logging.info("%s: %s %s (backbone %s)", prefix,
                 "loading as" if name else "recognised as", chosen, dict(arch.backbone))
    model = _build(chosen, arch, overrides)
    load_deeplab2_weights(model, prefix)
    return model


FLAGS = flags.FLAGS


def define_flags():
    """CLI flags, defined only when run as a program (so importing this module is free)."""
    flags.DEFINE_string("deeplab2_checkpoint", None, "deeplab2 checkpoint prefix or directory.")
    flags.DEFINE_string("model", None, "Registry name (optional: read from the checkpoint).")
    flags.DEFINE_string("output", None, "Where to write the converted .keras file.")
    flags.DEFINE_integer("output_stride", None, "Override a backbone's output stride.")
    flags.mark_flags_as_required(["deeplab2_checkpoint", "output"])


def main(argv) -> Optional[int]:
    del argv
    overrides: Dict = {}
    if FLAGS.output_stride:
        overrides["output_stride"] = FLAGS.output_stride
    model = from_deeplab2(FLAGS.deeplab2_checkpoint, FLAGS.model, **overrides)
    model.save(FLAGS.output)
    logging.info("Wrote %s (%d weights).", FLAGS.output, len(model.weights))
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

"""Loads official deeplab2 (TF2, Keras 2) Axial-ResNet checkpoints into our Keras models.

The checkpoint is read with `tf.train.load_checkpoint` (object-based keys such as
`encoder/_stage2/_block1/_attention/_height_axis/qkv_kernel/.ATTRIBUTES/VARIABLE_VALUE`);
no deeplab2 code and no tf-keras are needed. Every model weight must find exactly one
checkpoint tensor of the same size, and every model tensor of the checkpoint must be
used, otherwise the conversion fails naming the culprits.

CLI:
    python -m axial_keras.models.convert --deeplab2_checkpoint=PATH --model=NAME \
        --output=FILE.keras
"""

import re
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
from absl import flags, logging

import keras

from axial_keras import cli
from axial_keras.models.registry import get_model

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Checkpoint entries that hold training state rather than model weights.
_NON_MODEL = re.compile(r"^(_CHECKPOINTABLE_OBJECT_GRAPH|global_step|save_counter|optimizer)"
                        r"|/\.OPTIMIZER_SLOT/")

# Our sub-layer names -> deeplab2's attribute names.
_CONV_NAMES = {"conv1": "_conv1_bn_act", "conv2": "_conv2_bn_act", "conv3": "_conv3_bn",
               "shortcut": "_shortcut"}
_ATTENTION_NAMES = {
    "qkv_kernel": "qkv_kernel",
    "query_rpe": "_query_rpe/embeddings",
    "key_rpe": "_key_rpe/embeddings",
    "value_rpe": "_value_rpe/embeddings",
}


def _conv_tail(parts):
    """[conv|batch_norm, var] of a ConvNormAct -> deeplab2's Conv2DSame attributes."""
    if parts[0] == "conv":
        return ["_conv"] + parts[1:]
    return ["_batch_norm"] + parts[1:]


_HEADS = {
    "semantic_head": ("semantic_head_without_last_layer", "semantic_last_layer"),
    "center_head": ("instance_center_head_without_last_layer", "instance_center_head_last_layer"),
    "offset_head": ("instance_regression_head_without_last_layer",
                    "instance_regression_head_last_layer"),
}


def _separable_tail(parts):
    """A SeparableConvNormAct's [sub-layer, ...] -> deeplab2's SeparableConv2DSame."""
    if parts[0] == "depthwise_conv":
        return ["_conv1_bn_act", "_depthwise", "_depthwise_conv", "depthwise_kernel"]
    if parts[0] == "depthwise_bn":
        return ["_conv1_bn_act", "_depthwise", "_batch_norm"] + parts[1:]
    return ["_conv1_bn_act", "_pointwise"] + _conv_tail(parts[1:])


def _decoder_key(path: str) -> str:
    parts = path.split("/")
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


def deeplab2_key(path: str, stem: str) -> str:
    """Maps one of our weight paths (e.g. `stage2_block1/conv1/conv/kernel`) to its
    deeplab2 checkpoint key (without the `.ATTRIBUTES` suffix): backbone weights live
    under `encoder/`, decoders and heads under deeplab2's checkpoint item names."""
    parts = path.split("/")
    if parts[0] in ("semantic_decoder", "instance_decoder") or parts[0] in _HEADS:
        return _decoder_key(path)
    out = []
    head = parts.pop(0)
    match = re.fullmatch(r"stage(\d)_block(\d+)", head)
    if match:
        out += [f"_stage{match.group(1)}", f"_block{match.group(2)}"]
    elif head == "stem" and stem == "axial":
        out += ["_stage1", f"_{parts.pop(0)}"]
    elif head == "stem" and stem == "conv":
        parts.pop(0)  # our ConvStem wraps one ConvNormAct named "conv"
        return "/".join(["encoder", "_stem"] + _conv_tail(parts))
    elif head == "stem":
        out += ["_stem"]
    else:
        raise ValueError(f"No deeplab2 counterpart for weight {path!r}.")
    while parts:
        name = parts.pop(0)
        if name in _CONV_NAMES:
            out += [_CONV_NAMES[name]] + _conv_tail(parts)
            break
        if name == "attention":
            axis = parts.pop(0)
            out += ["_attention", f"_{axis}"]
            leaf = parts.pop(0)
            if leaf in _ATTENTION_NAMES:
                out.append(_ATTENTION_NAMES[leaf])
            else:
                out += [f"_{leaf}"] + parts
            break
        raise ValueError(f"No deeplab2 counterpart for weight {path!r}.")
    return "/".join(["encoder"] + out)


def load_deeplab2_weights(model: keras.Model, checkpoint_path: str) -> None:
    """Assigns every weight of `model` (an Axial-ResNet model or `AxialDeepLab`) from a
    deeplab2 checkpoint.

    Raises:
        ValueError: naming model weights with no checkpoint tensor, size mismatches,
            and checkpoint model tensors that no weight used.
    """
    reader = tf.train.load_checkpoint(checkpoint_path)
    shapes = reader.get_variable_to_shape_map()
    available = {k[: -len(_SUFFIX)]: k for k in shapes if k.endswith(_SUFFIX)}
    stem = getattr(model, "backbone", model).stem
    used, missing, mismatched, values = set(), [], [], {}
    for weight in model.weights:
        key = deeplab2_key(weight.path, stem)
        if key not in available:
            missing.append(f"{weight.path} (expected {key})")
            continue
        value = reader.get_tensor(available[key])
        if value.size != int(np.prod(weight.shape)):
            mismatched.append(f"{weight.path} {tuple(weight.shape)} vs {key} {value.shape}")
            continue
        used.add(key)
        values[weight.path] = (weight, value.reshape(weight.shape))
    unused = sorted(k for k in available if k not in used and not _NON_MODEL.search(k))
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights not in the checkpoint: {missing[:10]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {mismatched[:10]}")
    if unused:
        problems.append(f"{len(unused)} checkpoint variables unused: {unused[:10]}")
    if problems:
        raise ValueError(f"Cannot load {checkpoint_path} into {model.name}: " + "; ".join(problems))
    for weight, value in values.values():
        weight.assign(value)


def from_deeplab2(checkpoint_path: str, name: str, **kwargs) -> keras.Model:
    """Builds registry model `name` (with `kwargs` overrides) holding the checkpoint's weights.

    Example:
    >>> model = from_deeplab2("ckpt-0", "axial_resnet_s", output_stride=16)
    """
    model = get_model(name, **kwargs)
    load_deeplab2_weights(model, checkpoint_path)
    return model


FLAGS = flags.FLAGS


def define_flags():
    """CLI flags, defined only when run as a program (so importing this module is free)."""
    flags.DEFINE_string("deeplab2_checkpoint", None, "deeplab2 checkpoint prefix or directory.")
    flags.DEFINE_string("model", None, "Registry name of the model to build.")
    flags.DEFINE_string("output", None, "Where to write the converted .keras file.")
    flags.DEFINE_integer("output_stride", None, "Override the model's output stride.")
    flags.mark_flags_as_required(["deeplab2_checkpoint", "model", "output"])


def main(argv) -> Optional[int]:
    del argv
    path = FLAGS.deeplab2_checkpoint
    if tf.io.gfile.isdir(path):
        path = tf.train.latest_checkpoint(path)
    overrides: Dict = {}
    if FLAGS.output_stride:
        overrides["output_stride"] = FLAGS.output_stride
    model = from_deeplab2(path, FLAGS.model, **overrides)
    model.save(FLAGS.output)
    logging.info("Wrote %s (%d weights from %s).", FLAGS.output, len(model.weights), path)
    return 0


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

"""Layers of deeplab2's wider zoo models: the basic block, the stacked decoder's ResizedFuse,
the exact-erf GeLU in blocks and stems, and the block layout that picks each block's type.
Backend-agnostic (also run under JAX)."""

import math

import numpy as np
import pytest

import keras

from axial_keras.layers.blocks import BasicBlock, ConvStem, InceptionStem
from axial_keras.layers.resize import resize_align_corners
from axial_keras.layers.resized_fuse import ResizedFuse
from axial_keras.models.layout import encoder_plan, scale_blocks, stacked_decoder_plan


def _randomize(layer, seed=0):
    """Well-conditioned weights: kernels N(0, 1/fan_in), BN gamma U(0.5, 1.5), var U(0.5, 2)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        shape = tuple(w.shape)
        if w.path.endswith("kernel"):
            value = rng.normal(0, 1 / math.sqrt(np.prod(shape[:-1])), shape)
        elif w.path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5 if "gamma" in w.path else 2.0, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        w.assign(value.astype("float32"))


def _conv_bn(layer, x):
    return np.asarray(layer(x, training=False))


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_basic_block_is_two_3x3_convolutions_and_a_projection():
    x = np.random.default_rng(1).normal(size=(2, 9, 11, 8)).astype("float32")
    block = BasicBlock(4, strides=2, activate_output=False)
    block(x)
    _randomize(block)
    expected = _conv_bn(block.conv2, _conv_bn(block.conv1, x)) + _conv_bn(block.shortcut, x)
    np.testing.assert_allclose(np.asarray(block(x)), expected, rtol=1e-5, atol=1e-5)
    assert block(x).shape == (2, 5, 6, 16)
    assert block.conv1.kernel_size == block.conv2.kernel_size == 3
    assert block.conv1.strides == 2 and block.conv2.strides == 1
    same = BasicBlock(2, dilation_rate=2, second_dilation_rate=4)
    assert same(x).shape == (2, 9, 11, 8) and same.shortcut is None
    assert (same.conv1.dilation_rate, same.conv2.dilation_rate) == (2, 4)
    clone = BasicBlock.from_config(same.get_config())
    assert clone.second_dilation_rate == 4 and clone.activation == "relu"


def test_gelu_is_the_exact_erf_form_in_stems_and_blocks():
    x = np.random.default_rng(2).normal(size=(1, 9, 9, 3)).astype("float32")
    stem = InceptionStem(8, activation="gelu", activate_output=True)
    stem(x)
    _randomize(stem)
    pre1 = _conv_bn(stem.conv1.conv, stem.conv1.pad(x))
    pre1 = np.asarray(stem.conv1.batch_norm(pre1, training=False))
    np.testing.assert_allclose(np.asarray(stem.conv1(x)), _gelu(pre1), rtol=1e-5, atol=1e-6)
    tanh_form = np.asarray(keras.ops.gelu(pre1, approximate=True))
    assert np.abs(tanh_form - _gelu(pre1)).max() > 1e-4
    # A fresh block's residual branch is zero (its last BN has gamma 0): the output is
    # GeLU of the identity shortcut.
    block = BasicBlock(2, activation="gelu", activate_output=True)
    inputs = -np.abs(np.repeat(x[..., :1], 8, axis=-1))
    np.testing.assert_allclose(np.asarray(block(inputs)), _gelu(inputs), rtol=1e-5, atol=1e-6)


def test_conv_stem_of_the_wide_family_is_3x3_stride_2_without_activation():
    stem = ConvStem(16, kernel_size=3, activate_output=False)
    x = np.random.default_rng(3).normal(size=(1, 97, 129, 3)).astype("float32")
    y = np.asarray(stem(x))
    assert y.shape == (1, 49, 65, 16)
    assert stem.conv.kernel_size == 3 and np.any(y < 0)


def test_resized_fuse_takes_each_input_as_deeplab2_does():
    rng = np.random.default_rng(4)
    low = rng.normal(size=(1, 5, 9, 32)).astype("float32")  # stride 16, other width
    same = rng.normal(size=(1, 9, 17, 8)).astype("float32")  # stride 8, output width
    high = rng.normal(size=(1, 17, 33, 4)).astype("float32")  # stride 4, other width
    fuse = ResizedFuse(8, input_strides=(16, 8, 4), output_stride=8)
    fuse([low, same, high])
    _randomize(fuse)
    assert fuse.modes == ("resized", "identity", "strided")
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    resized = np.asarray(resize_align_corners(_conv_bn(fuse.resized_conv1, relu(low)), 9, 17))
    strided = _conv_bn(fuse.strided_conv3, relu(high))
    expected = relu(resized + same + strided)
    np.testing.assert_allclose(np.asarray(fuse([low, same, high])), expected, rtol=1e-5,
                               atol=1e-5)
    assert fuse.strided_conv3.strides == 2
    with pytest.raises(ValueError, match="one input must be at the output stride 8"):
        ResizedFuse(8, input_strides=(16, 4), output_stride=8)


def test_block_layout_follows_deeplab2():
    options = dict(axial_beyond_stride=16, conv_block="basic", drop_path_rate=0.2,
                   drop_path_schedule="linear", drop_path_beyond_stride=4)
    stages = dict(encoder_plan("wide", 1.0, 1.0, (3, 6, 3, 3), 4.5, 16, **options))
    assert [len(stages[s]) for s in range(1, 6)] == [3, 13, 27, 13, 13]
    assert scale_blocks((3, 6, 3, 3), 3.0) == (9, 18, 9, 9)
    kinds = {s: [p.kind for p in blocks] for s, blocks in stages.items()}
    assert kinds[3] == ["basic"] * 27
    assert kinds[4] == ["basic"] + ["axial"] * 12  # attention from stage 4, block 2
    assert kinds[5] == ["axial"] * 13
    assert [p.strides for p in stages[5]] == [1] * 13  # output stride 16
    assert stages[1][0].filters == 32 and stages[5][0].filters == 512
    assert stages[4][0].drop_path_rate == pytest.approx(0.2 * 2 / 4)
    decoder = stacked_decoder_plan(1.0, 16, **options)
    assert [(d.stride, d.channels, d.blocks[0].kind) for d in decoder] == [
        (8, 512, "basic"), (4, 256, "basic"), (8, 512, "basic"), (16, 2048, "axial")]
    assert [tuple(n for n, _ in d.inputs) for d in decoder] == [
        ("stage5", "stage3"), ("decoder_stage1", "stage2"),
        ("decoder_stage2", "stage3", "decoder_stage1"), ("decoder_stage3", "stage5")]
    assert len(stacked_decoder_plan(1.0, 32, **options)) == 6

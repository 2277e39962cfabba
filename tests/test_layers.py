"""AxialAttention, its 2D pair and the blocks: numbers, window locality, shapes, errors,
and the shared Keras battery. Backend-agnostic (also run under KERAS_BACKEND=jax)."""

import os

import keras
import numpy as np
import pytest

from attention_reference import axial_attention_reference, randomize_weights
from axial_keras.layers import (AxialAttention, AxialAttention2D, AxialBottleneck,
                                ConvBottleneck, ConvNormAct, ConvStem, DropPath,
                                FullAxialStem, InceptionStem)
from keras_battery import run_layer_battery


def test_backend_is_the_requested_one():
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]


def _layer(axis, span, x, heads=2, key_dim=3, value_dim=4, seed=0, **kwargs):
    layer = AxialAttention(num_heads=heads, key_dim=key_dim, value_dim=value_dim, axis=axis,
                           span=span, **kwargs)
    layer.build(x.shape)
    randomize_weights(layer, seed)
    return layer


@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("span", [None, 3, 5])
def test_attention_matches_the_formula(axis, span):
    x = np.random.RandomState(1).normal(size=(2, 7, 6, 5)).astype("float32")
    layer = _layer(axis, span, x)
    got = np.asarray(layer(x, training=False))
    want = axial_attention_reference(x, layer)
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_global_offsets_beyond_the_table_are_clipped():
    # max_span=4 keeps offsets -3..3; a 9-long axis needs clipping at the table's edges.
    x = np.random.RandomState(2).normal(size=(1, 9, 1, 4)).astype("float32")
    layer = _layer(1, None, x, max_span=4)
    np.testing.assert_allclose(np.asarray(layer(x, training=False)),
                               axial_attention_reference(x, layer), atol=2e-4, rtol=1e-4)
    assert layer.query_rpe.shape == (7, 3)


@pytest.mark.parametrize("axis", [1, 2])
def test_local_output_ignores_everything_outside_its_window(axis):
    span, radius = 5, 2
    rng = np.random.RandomState(3)
    x = rng.normal(size=(1, 12, 11, 4)).astype("float32")
    layer = _layer(axis, span, x)
    base = np.asarray(layer(x, training=False))
    length = x.shape[axis]
    for o in (0, 5, length - 1):
        changed = x.copy()
        outside = [p for p in range(length) if abs(p - o) > radius]
        index = [slice(None)] * 4
        index[axis] = outside
        changed[tuple(index)] += rng.normal(scale=100.0, size=changed[tuple(index)].shape)
        out = np.asarray(layer(changed, training=False))
        take = [slice(None)] * 4
        take[axis] = o
        np.testing.assert_array_equal(out[tuple(take)], base[tuple(take)])
        # and the window itself matters: changing an in-window neighbour changes o.
        inside = [slice(None)] * 4
        inside[axis] = min(o + 1, length - 1) if o < length - 1 else o - 1
        poked = x.copy()
        poked[tuple(inside)] += 10.0
        assert not np.allclose(np.asarray(layer(poked, training=False))[tuple(take)], base[tuple(take)])


def test_local_span_covering_the_axis_equals_global():
    x = np.random.RandomState(4).normal(size=(2, 8, 5, 6)).astype("float32")
    glob = _layer(1, None, x, seed=7)
    local = _layer(1, 15, x, seed=7)  # 15 >= 2 * 8 - 1: every window covers the axis
    np.testing.assert_allclose(np.asarray(local(x, training=False)),
                               np.asarray(glob(x, training=False)), atol=1e-5, rtol=1e-5)


def test_one_layer_runs_on_any_axis_length_and_dynamic_shapes():
    layer = AxialAttention(num_heads=2, key_dim=2, value_dim=3, axis=2, span=7)
    inputs = keras.Input(shape=(None, None, 4))
    model = keras.Model(inputs, layer(inputs))
    assert model.output.shape == (None, None, None, 6)
    for shape in ((1, 3, 5, 4), (2, 4, 300, 4)):
        out = model(np.zeros(shape, "float32"))
        assert out.shape == shape[:3] + (6,)


def test_attention_2d_strides_each_axis_after_its_attention():
    x = np.random.RandomState(6).normal(size=(1, 9, 7, 4)).astype("float32")
    pair = AxialAttention2D(num_heads=2, key_dim=2, value_dim=2, strides=2)
    out = np.asarray(pair(x, training=False))
    assert out.shape == (1, 5, 4, 4)
    h = np.asarray(pair.height_axis(x, training=False))[:, ::2]
    want = np.asarray(pair.width_axis(h, training=False))[:, :, ::2]
    np.testing.assert_allclose(out, want, atol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (dict(span=4), "odd"), (dict(span=0), "odd"), (dict(span=-3), "odd"),
    (dict(span=601), "exceeds"), (dict(axis=3), "axis"), (dict(num_heads=0), "num_heads"),
    (dict(chunk_elements=0), "chunk_elements"), (dict(chunk_elements=2.5), "chunk_elements"),
])
def test_bad_arguments_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        AxialAttention(**{"num_heads": 2, "key_dim": 2, "value_dim": 2, **bad})


def test_bad_inputs_are_named():
    layer = AxialAttention(num_heads=2, key_dim=2, value_dim=2)
    with pytest.raises(ValueError, match="rank 4"):
        layer(np.zeros((2, 5, 3), "float32"))
    layer(np.zeros((1, 4, 4, 3), "float32"))
    with pytest.raises(ValueError, match="axis -1|incompatible|expected"):
        layer(np.zeros((1, 4, 4, 5), "float32"))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        AxialBottleneck(filters=12, num_heads=8)


def _sublayers(layer):
    """The layers `layer` holds as attributes, and theirs."""
    found = [v for v in vars(layer).values() if isinstance(v, keras.layers.Layer)]
    return found + [s for v in found for s in _sublayers(v)]


# Largest |difference| to the float32 layer, relative to the largest float32 value.
TOLERANCE = {"float32": 1e-6, "mixed_float16": 5e-3, "mixed_bfloat16": 4e-2}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16", "float32"])
@pytest.mark.parametrize("cls, kwargs", [
    (AxialAttention, dict(axis=1, span=None)), (AxialAttention, dict(axis=2, span=3)),
    (AxialAttention2D, dict(span=5, strides=2)),
])
def test_attention_computes_in_its_own_dtype_policy(policy, cls, kwargs):
    # Per instance, with the global policy left at float32: the layer and every sublayer
    # compute in the policy's dtype, weights stay float32, the numbers (outputs and the
    # moving statistics of a training step) stay those of the float32 layer.
    assert keras.config.dtype_policy().name == "float32"
    x = np.random.RandomState(9).normal(size=(2, 7, 6, 5)).astype("float32")
    args = dict(num_heads=2, key_dim=3, value_dim=4, momentum=0.0, **kwargs)
    layers = {}
    for name in ("float32", policy):
        layers[name] = cls(dtype=name, **args)
        layers[name].build(x.shape)
        randomize_weights(layers[name], seed=10)
    layer, reference = layers[policy], layers["float32"]
    compute = keras.DTypePolicy(policy).compute_dtype
    assert len(_sublayers(layer)) == (3 if cls is AxialAttention else 8)
    for sub in [layer] + _sublayers(layer):
        assert (sub.compute_dtype, sub.variable_dtype) == (compute, "float32"), sub.name
    assert {w.dtype for w in layer.weights} == {"float32"}
    for training in (False, True):
        want = np.asarray(reference(x, training=training))
        got = layer(x, training=training)
        assert keras.backend.standardize_dtype(got.dtype) == compute
        got = np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(got, "float32")))
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE[policy] * np.abs(want).max())
    for w, v in zip(layer.non_trainable_weights, reference.non_trainable_weights):
        want = np.asarray(v)
        np.testing.assert_allclose(np.asarray(w), want, rtol=0,
                                   atol=TOLERANCE[policy] * np.abs(want).max(), err_msg=w.path)


@pytest.mark.parametrize("matmul_min_channels", [1, 10 ** 9])
@pytest.mark.parametrize("kernel, strides, dilation", [(1, 1, 1), (3, 1, 1), (3, 1, 2), (5, 1, 1),
                                                       (3, 2, 1), (1, 2, 1)])
def test_conv_norm_act_equals_conv_then_batch_norm(monkeypatch, matmul_min_channels, kernel,
                                                   strides, dilation):
    # The inference batch norm folded into the kernel (native convolution), and with batch
    # statistics both forms of the convolution (matrix products of shifted views when the
    # threshold is 1, the native op otherwise) give conv -> batch norm's numbers.
    from axial_keras.layers import blocks
    monkeypatch.setattr(blocks, "MATMUL_MIN_CHANNELS", matmul_min_channels)
    rng = np.random.RandomState(kernel + 10 * dilation + 100 * strides)
    x = rng.normal(size=(2, 9, 7, 16)).astype("float32")
    layer = ConvNormAct(8, kernel, strides=strides, dilation_rate=dilation, activation="relu")
    layer.build(x.shape)
    bn = layer.batch_norm
    bn.gamma.assign(rng.uniform(0.5, 1.5, 8).astype("float32"))
    bn.beta.assign(rng.normal(size=8).astype("float32"))
    bn.moving_mean.assign(rng.normal(size=8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype("float32"))

    def reference(training):
        padded = layer.pad(x) if layer.pad is not None else x
        return np.maximum(np.asarray(bn(layer.conv(padded), training=training)), 0.0)

    want = reference(False)
    got = np.asarray(layer(x, training=False))
    assert got.shape == want.shape == (2, -(-9 // strides), -(-7 // strides), 8)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    got_train = np.asarray(layer(x, training=True))   # batch statistics
    np.testing.assert_allclose(got_train, reference(True), atol=1e-5, rtol=1e-5)
    assert np.abs(got_train - got).max() > 1e-2   # the two modes differ: both were checked


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    layer = DropPath(0.5, seed=1)
    x = np.ones((4000, 2, 2, 1), "float32")
    out = np.asarray(layer(x, training=True))
    per_sample = out.reshape(4000, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert abs(out.mean() - 1.0) < 0.1
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


BATTERY = [
    (AxialAttention, dict(num_heads=2, key_dim=2, value_dim=3, axis=1), (2, 6, 5, 4), (2, 6, 5, 6),
     (10, 6), 3747),
    (AxialAttention, dict(num_heads=2, key_dim=2, value_dim=3, axis=2, span=3), (2, 6, 5, 4), (2, 6, 5, 6),
     (10, 6), 3747),
    (AxialAttention, dict(num_heads=2, key_dim=2, value_dim=3, axis=1, span=3, chunk_elements=None),
     (2, 6, 5, 4), (2, 6, 5, 6), (10, 6), 3747),
    (AxialAttention2D, dict(num_heads=2, key_dim=2, value_dim=2, strides=2, span=5), (2, 7, 6, 4), (2, 4, 3, 4),
     (20, 12), 6412),
    (ConvNormAct, dict(filters=4, kernel_size=3, strides=2, activation="relu"), (2, 7, 6, 3), (2, 4, 3, 4),
     (3, 2), 124),
    (AxialBottleneck, dict(filters=4, strides=2, num_heads=2), (2, 6, 5, 8), (2, 3, 3, 16),
     (29, 18), 9184),
    (AxialBottleneck, dict(filters=4, span=3, num_heads=2, drop_path_rate=0.2), (2, 6, 5, 16), (2, 6, 5, 16),
     (26, 16), 9056),
    (ConvBottleneck, dict(filters=4, strides=2), (2, 6, 5, 8), (2, 3, 3, 16),
     (12, 8), 528),
    (ConvStem, dict(filters=4), (2, 9, 8, 3), (2, 5, 4, 4),
     (3, 2), 604),
    (ConvStem, dict(filters=4, pool=True), (2, 9, 8, 3), (2, 3, 2, 4),
     (3, 2), 604),
    (InceptionStem, dict(filters=4), (2, 9, 8, 3), (2, 5, 4, 8),
     (9, 6), 604),
    (FullAxialStem, dict(filters=2, span=3, num_heads=2), (2, 9, 8, 3), (2, 5, 4, 8),
     (81, 50), 13308),
    (DropPath, dict(rate=0.3, seed=2), (2, 5, 4, 3), (2, 5, 4, 3),
     (0, 0), 0),
]


@pytest.mark.parametrize("cls, kwargs, input_shape, output_shape, weights, params", BATTERY,
                         ids=[f"{c.__name__}-{i}" for i, (c, *_rest) in enumerate(BATTERY)])
def test_keras_battery(cls, kwargs, input_shape, output_shape, weights, params):
    # DropPath has no weights, so there is nothing for fit to lower.
    run_layer_battery(cls, kwargs, input_shape, output_shape, weights, params,
                      fit=cls is not DropPath)

"""AxialAttention, its 2D pair and the blocks: numbers, window locality, shapes, errors,
and the shared Keras battery. Backend-agnostic (also run under KERAS_BACKEND=jax)."""

import os

import keras
import numpy as np
import pytest

from attention_reference import axial_attention_reference, randomize_weights
from axial_keras.layers import (AxialAttention, AxialAttention2D, AxialBottleneck,
                                ConvBottleneck, ConvNormAct, ConvStem, DropPath,
                                FullAxialStem, InceptionStem, MultiAxisBatchNormalization)
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


def test_masked_batch_statistics_ignore_entries_past_the_border():
    rng = np.random.RandomState(5)
    x = rng.normal(size=(3, 2, 4, 6, 5)).astype("float32")
    rows = np.arange(6)[:, None] + np.arange(-2, 3)[None, :]
    valid = (rows >= 0) & (rows < 6)  # [length, span] as a local window sees it
    garbage = x.copy()
    garbage[..., ~valid] = 1e6
    bn = MultiAxisBatchNormalization(axis=(0, 2), momentum=0.0)
    bn(garbage, training=True, valid=valid[None, None, None])
    kept = np.where(valid[None, None, None], x, np.nan)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.nanmean(kept, axis=(1, 3, 4)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.nanvar(kept, axis=(1, 3, 4)), rtol=1e-4)


def test_local_attention_trains_with_finite_statistics():
    x = np.random.RandomState(5).normal(size=(2, 6, 4, 4)).astype("float32")
    layer = AxialAttention(num_heads=2, key_dim=2, value_dim=2, axis=1, span=5, momentum=0.0)
    out = np.asarray(layer(x, training=True))
    assert np.all(np.isfinite(out))
    assert np.all(np.isfinite(np.asarray(layer.batch_norm_similarity.moving_variance)))


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


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    layer = DropPath(0.5, seed=1)
    x = np.ones((4000, 2, 2, 1), "float32")
    out = np.asarray(layer(x, training=True))
    per_sample = out.reshape(4000, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert abs(out.mean() - 1.0) < 0.1
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)


def test_multi_axis_batch_norm_statistics():
    x = np.random.RandomState(8).normal(2.0, 3.0, size=(3, 4, 2, 5)).astype("float32")
    bn = MultiAxisBatchNormalization(axis=(0, 2), momentum=0.0)
    y = np.asarray(bn(x, training=True))
    np.testing.assert_allclose(np.asarray(bn.moving_mean), x.mean(axis=(1, 3)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), x.var(axis=(1, 3)), rtol=1e-4)
    np.testing.assert_allclose(y.mean(axis=(1, 3)), 0.0, atol=1e-5)


BATTERY = [
    (AxialAttention, dict(num_heads=2, key_dim=2, value_dim=3, axis=1), (2, 6, 5, 4), (2, 6, 5, 6),
     (10, 6), 3747),
    (AxialAttention, dict(num_heads=2, key_dim=2, value_dim=3, axis=2, span=3), (2, 6, 5, 4), (2, 6, 5, 6),
     (10, 6), 3747),
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
    (MultiAxisBatchNormalization, dict(axis=(-1,)), (2, 5, 4, 3), (2, 5, 4, 3),
     (2, 2), 12),
    (DropPath, dict(rate=0.3, seed=2), (2, 5, 4, 3), (2, 5, 4, 3),
     (0, 0), 0),
]


@pytest.mark.parametrize("cls, kwargs, input_shape, output_shape, weights, params", BATTERY,
                         ids=[f"{c.__name__}-{i}" for i, (c, *_rest) in enumerate(BATTERY)])
def test_keras_battery(cls, kwargs, input_shape, output_shape, weights, params):
    # DropPath has no weights, so there is nothing for fit to lower.
    run_layer_battery(cls, kwargs, input_shape, output_shape, weights, params,
                      fit=cls is not DropPath)

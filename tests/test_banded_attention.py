"""Banded local attention equals the straightforward masked O(L^2) computation.

The layer computes a local span in banded form (blocks of queries against their keys,
skewed into an [L, m] band) and takes the similarity batch statistics from q, k and the
tables instead of from the similarity tensors. The reference below is the plain
formulation, written here and sharing nothing with the layer: every (query, key) pair of
the axis, a mask for the pairs outside the window, batch norms computed on the masked
tensors, softmax. Both must give the same outputs, moving statistics and gradients on
random weights, in training and inference mode, for several spans and lengths (window
longer than the axis included), on both axes, in one chunk or many, with static or
dynamic shapes.
"""

import keras
import numpy as np
import pytest
from keras import ops

from attention_reference import randomize_weights
from axial_keras.layers import AxialAttention
from axial_keras.layers.attention_kernels import even_rows, rows_per_chunk
from axial_keras.layers.axial_attention import CHUNK_ELEMENTS

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="TensorFlow graphs and tapes")


def _normalize(x, mean, variance, gamma, beta, epsilon):
    return (x - mean) * ops.rsqrt(variance + epsilon) * gamma + beta


def masked_reference(layer, x, training):
    """Output of `layer` on `x` and the batch statistics it uses, via [n, h, L, L] masks.

    Returns:
        (output [B, H, W, heads * value_dim], dict of batch statistics by sub-layer).
    """
    heads, key_dim, value_dim = layer.num_heads, layer.key_dim, layer.value_dim
    eps = layer.epsilon
    x = ops.convert_to_tensor(x)
    if layer.axis == 1:
        x = ops.transpose(x, (0, 2, 1, 3))
    batch, other, length, channels = x.shape
    x = ops.reshape(x, (batch * other, length, channels))
    stats = {}

    bn = layer.batch_norm_qkv
    qkv = ops.matmul(x, layer.qkv_kernel)
    if training:
        mean, variance = ops.moments(qkv, axes=(0, 1))
        stats["qkv"] = (mean, variance)
    else:
        mean, variance = bn.moving_mean, bn.moving_variance
    qkv = _normalize(qkv, mean, variance, bn.gamma, bn.beta, eps)
    q = ops.reshape(qkv[..., : heads * key_dim], (-1, length, heads, key_dim))
    k = ops.reshape(qkv[..., heads * key_dim: 2 * heads * key_dim], (-1, length, heads, key_dim))
    v = ops.reshape(qkv[..., 2 * heads * key_dim:], (-1, length, heads, value_dim))

    offsets = np.arange(length)[None, :] - np.arange(length)[:, None]  # [o, p] = p - o
    rows = np.clip(offsets, 1 - layer.max_span, layer.max_span - 1) + layer.max_span - 1
    r_q, r_k, r_v = (ops.take(t, rows, axis=0)
                     for t in (layer.query_rpe, layer.key_rpe, layer.value_rpe))
    if layer.span is None:
        valid = np.ones((length, length), bool)
    else:
        valid = np.abs(offsets) <= (layer.span - 1) // 2

    similarity = ops.stack([
        ops.einsum("nlhd,nmhd->nhlm", q, k),
        ops.einsum("nlhd,lmd->nhlm", q, r_q),
        ops.einsum("nmhd,lmd->nhlm", k, r_k),
    ])  # [3, n, h, L, L]
    bn = layer.batch_norm_similarity
    if training:
        weight = ops.cast(ops.broadcast_to(valid, similarity.shape), "float32")
        count = ops.sum(weight, axis=(1, 3, 4))[:, None, :, None, None]
        mean = ops.sum(similarity * weight, axis=(1, 3, 4), keepdims=True) / count
        variance = ops.sum(ops.square(similarity - mean) * weight, axis=(1, 3, 4),
                           keepdims=True) / count
        stats["similarity"] = (mean[:, 0, :, 0, 0], variance[:, 0, :, 0, 0])
    else:
        mean = ops.reshape(bn.moving_mean, (3, 1, heads, 1, 1))
        variance = ops.reshape(bn.moving_variance, (3, 1, heads, 1, 1))
    gamma = ops.reshape(bn.gamma, (3, 1, heads, 1, 1))
    beta = ops.reshape(bn.beta, (3, 1, heads, 1, 1))
    logits = ops.sum(_normalize(similarity, mean, variance, gamma, beta, eps), axis=0)
    weights = ops.softmax(ops.where(valid, logits, -1e9), axis=-1)

    retrieved = ops.stack([
        ops.einsum("nhlm,nmhd->nlhd", weights, v),
        ops.einsum("nhlm,lmd->nlhd", weights, r_v),
    ])  # [2, n, L, h, value_dim]
    bn = layer.batch_norm_output
    if training:
        mean, variance = ops.moments(retrieved, axes=(1, 2), keepdims=True)
        stats["output"] = (mean[:, 0, 0], variance[:, 0, 0])
    else:
        mean, variance = bn.moving_mean[:, None, None], bn.moving_variance[:, None, None]
    out = ops.sum(_normalize(retrieved, mean, variance, bn.gamma[:, None, None],
                             bn.beta[:, None, None], eps), axis=0)
    out = ops.reshape(out, (batch, other, length, heads * value_dim))
    if layer.axis == 1:
        out = ops.transpose(out, (0, 2, 1, 3))
    return out, stats


def _layer(shape, axis, span, heads=2, key_dim=3, value_dim=4, seed=0, **kwargs):
    layer = AxialAttention(num_heads=heads, key_dim=key_dim, value_dim=value_dim, axis=axis,
                           span=span, momentum=0.0, **kwargs)
    layer.build(shape)
    randomize_weights(layer, seed)
    return layer


def _moving(layer):
    return {"qkv": layer.batch_norm_qkv, "similarity": layer.batch_norm_similarity,
            "output": layer.batch_norm_output}


# (input shape, axis, span): the attended axis is dimension `axis`.
CASES = [
    ((2, 7, 5, 6), 1, 3),
    ((2, 40, 3, 6), 1, 5),
    ((1, 4, 70, 6), 2, 15),
    ((1, 100, 2, 6), 1, 65),   # several query blocks
    ((2, 3, 40, 6), 2, 65),    # window longer than the axis, shorter than 2 L - 1
    ((1, 20, 3, 6), 1, 65),    # window covers the axis everywhere (global route)
    ((2, 33, 4, 6), 1, 31),    # window wider than one block of queries
    ((1, 1, 9, 6), 1, 5),      # a one-pixel-long axis
]


@pytest.mark.parametrize("shape, axis, span", CASES)
@pytest.mark.parametrize("training", [False, True])
def test_banded_equals_masked(shape, axis, span, training):
    x = np.random.RandomState(1).normal(size=shape).astype("float32")
    layer = _layer(shape, axis, span)
    want, stats = masked_reference(layer, x, training)
    got = layer(x, training=training)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-4, rtol=2e-4)
    for name, (mean, variance) in stats.items():
        bn = _moving(layer)[name]  # momentum 0: the moving statistics are the batch ones
        np.testing.assert_allclose(np.asarray(bn.moving_mean), np.asarray(mean),
                                   atol=2e-4, rtol=2e-4)
        np.testing.assert_allclose(np.asarray(bn.moving_variance), np.asarray(variance),
                                   atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("span", [None, 7])
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("chunk_rows", [8, 13, None])
def test_many_chunks_with_padding_rows_equal_one(span, training, chunk_rows):
    # 2 x 13 = 26 rows. Chunks of 8 rows (no size in 4..8 divides 26) leave 6 padding rows
    # in the last chunk; 13 rows divide 26 (2 chunks, nothing padded); None attends all
    # 26 rows at once.
    shape = (2, 23, 13, 6)
    x = np.random.RandomState(2).normal(size=shape).astype("float32")
    chunk_elements = None if chunk_rows is None else chunk_rows * 2 * 23 * 23
    layer = _layer(shape, 1, span, seed=3, chunk_elements=chunk_elements)
    want, _ = masked_reference(layer, x, training)
    if chunk_rows is not None:
        rows = rows_per_chunk(chunk_elements, 2, 23, None if span is None else 3)
        assert rows == chunk_rows and even_rows(26, rows) == chunk_rows
    got = layer(x, training=training)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-4, rtol=2e-4)


def test_even_rows_divides_the_rows_when_it_can():
    assert even_rows(896, 10) == 8      # 112 chunks instead of 90 with 4 padding rows
    assert even_rows(448, 41) == 32
    assert even_rows(26, 8) == 8        # nothing in 4..8 divides 26: padded
    assert even_rows(5, 16) == 5        # fewer rows than a chunk: one chunk
    assert even_rows(7, 1) == 1


@tensorflow_only
@pytest.mark.parametrize("span", [None, 5])
@pytest.mark.parametrize("training", [False, True])
def test_chunk_elements_none_traces_no_loop(span, training):
    # Converters (LiteRT, the int8 quantizer) take no WHILE loop: with chunk_elements=None,
    # restored from its config, the traced graph has none; the default chunks with one.
    import tensorflow as tf

    def op_types(chunk_elements):
        config = AxialAttention(num_heads=2, key_dim=3, value_dim=4, axis=1, span=span,
                                chunk_elements=chunk_elements).get_config()
        layer = AxialAttention.from_config(config)
        fn = tf.function(lambda t: layer(t, training=training),
                         input_signature=[tf.TensorSpec([None, None, None, 6])])
        graph = fn.get_concrete_function().graph.as_graph_def()
        nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        return {node.op for node in nodes}

    assert {"While", "StatelessWhile"} & op_types(CHUNK_ELEMENTS)
    assert not [op for op in op_types(None) if "While" in op]


def test_global_offsets_beyond_the_table_are_clipped_as_the_masked_form():
    shape = (1, 12, 3, 6)
    x = np.random.RandomState(4).normal(size=shape).astype("float32")
    layer = _layer(shape, 1, None, max_span=4)
    want, _ = masked_reference(layer, x, True)
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), np.asarray(want),
                               atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("span", [None, 5, 65])
def test_dynamic_shapes_give_the_static_result(span):
    shape = (2, 30, 7, 6)
    x = np.random.RandomState(5).normal(size=shape).astype("float32")
    layer = _layer(shape, 1, span, seed=6)
    want = np.asarray(layer(x, training=False))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda t: layer(t, training=False),
                         input_signature=[tf.TensorSpec([None, None, None, 6])])
    else:
        import jax

        fn = jax.jit(lambda t: layer(t, training=False))
    np.testing.assert_allclose(np.asarray(fn(x)), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape, axis, span", [((2, 9, 4, 6), 1, 5), ((1, 3, 50, 6), 2, 15),
                                               ((2, 6, 5, 6), 2, None)])
def test_gradients_equal_the_masked_form(shape, axis, span):
    x = np.random.RandomState(7).normal(size=shape).astype("float32")
    layer = _layer(shape, axis, span, seed=8)
    weights = [w for w in layer.trainable_weights if "batch_norm_similarity/beta" not in w.path]

    def loss_of(out):
        return ops.sum(out * ops.sin(out))

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        def gradients(fn):
            inputs = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                loss = loss_of(fn(inputs))
            return [tf.convert_to_tensor(g) for g in tape.gradient(loss, [inputs] + weights)]

        got = gradients(lambda t: layer(t, training=True))
        want = gradients(lambda t: masked_reference(layer, t, True)[0])
    else:
        import jax

        got = [jax.grad(lambda t: loss_of(layer(t, training=True)))(x)]
        want = [jax.grad(lambda t: loss_of(masked_reference(layer, t, True)[0]))(x)]
    for g, w in zip(got, want):
        scale = float(np.abs(np.asarray(w)).max()) + 1e-6
        np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(w) / scale, atol=2e-4)


@tensorflow_only
def test_the_similarity_shift_gets_a_zero_gradient_not_none():
    # Softmax ignores the per-head shift of the normalized similarities, so its gradient
    # is exactly zero; optimizers must still see the variable.
    import tensorflow as tf

    shape = (1, 6, 5, 4)
    layer = _layer(shape, 1, 3)
    with tf.GradientTape() as tape:
        loss = ops.sum(ops.square(layer(np.ones(shape, "float32"), training=True)))
    grad = tape.gradient(loss, layer.batch_norm_similarity.beta)
    assert grad is not None and np.all(np.asarray(grad) == 0.0)



@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize("length", [9, 12])
@pytest.mark.parametrize("span", [None, 5])
@pytest.mark.parametrize("chunk_elements", [None, 3 * 2 * 12 * 12])
def test_query_stride_keeps_the_strided_positions(axis, length, span, chunk_elements):
    # Inference with a global span attends only positions 0, 2, 4, ...; anything else
    # attends all and slices. Both return what the full output keeps at those positions.
    shape = (2, length, 7, 5) if axis == 1 else (2, 7, length, 5)
    x = np.random.RandomState(4).normal(size=shape).astype("float32")
    layer = _layer(shape, axis, span, seed=5, chunk_elements=chunk_elements)
    full = np.asarray(layer(x, training=False))
    want = full[:, ::2] if axis == 1 else full[:, :, ::2]
    got = np.asarray(layer(x, training=False, query_stride=2))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # The sum over the kept queries moves with a small change of an odd-position input
    # too (it is a key), smoothly.
    step = np.zeros_like(x)
    step[(slice(None), 1) if axis == 1 else (slice(None), slice(None), 1)] = 1e-3
    moved = np.asarray(layer(x + step, training=False, query_stride=2))
    change = np.abs(moved - got).max()
    assert 0 < change < 1e-1


def test_query_stride_in_training_equals_the_sliced_full_output():
    shape = (2, 10, 6, 5)
    x = np.random.RandomState(6).normal(size=shape).astype("float32")
    layer = _layer(shape, 1, None, seed=7)
    full = np.asarray(layer(x, training=True))
    got = np.asarray(layer(x, training=True, query_stride=2))
    np.testing.assert_allclose(got, full[:, ::2], atol=1e-5, rtol=1e-5)

"""Position-sensitive axial attention (Axial-DeepLab, Wang et al., ECCV 2020)."""

from typing import Optional

import keras
from keras import ops

from axial_keras.control_flow import static_loops_enabled
from axial_keras.layers.normalization import MultiAxisBatchNormalization

# Offsets -(MAX_SPAN - 1) .. MAX_SPAN - 1 have their own relative embedding, i.e. a
# table of 2 * 255 - 1 = 509 rows, as in the official code (deeplab2), so that its
# checkpoints load and one set of weights serves any input size.
MAX_SPAN = 255


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def check_span(span: Optional[int], max_span: int = MAX_SPAN) -> Optional[int]:
    """Validates an attention span: None (global) or an odd int within the table."""
    if span is None:
        return None
    if isinstance(span, bool) or not isinstance(span, int) or span <= 0 or span % 2 == 0:
        raise ValueError(
            f"`span` must be None (global attention) or a positive odd integer (a window "
            f"centred on each position), got {span!r}.")
    if span > 2 * max_span - 1:
        raise ValueError(
            f"`span`={span} exceeds the relative-position table, which covers offsets up "
            f"to +-{max_span - 1} (span <= {2 * max_span - 1}).")
    return span


def _large_negative(dtype: str) -> float:
    return -6.0e4 if dtype == "float16" else -1.0e9


# Rows of the attention are processed in chunks whose largest tensor has about this many
# elements (4 MiB in float32), so the similarity, softmax and retrieval passes of a chunk
# run in cache; measured 3x faster than whole-tensor passes on a 2-core CPU (benchmarks/).
_CHUNK_ELEMENTS = 1 << 20


def _block_size(radius: int) -> int:
    """Query block of the banded local attention: keys per block are block + 2 * radius.

    Measured on a 2-core CPU (CPU time of one layer, benchmarks/): span 65 is fastest
    with blocks of 32 (16: +8%, 64: +17%, 128: +24%), span 15 with 16 (8: +7%, 32: +6%).
    """
    return max(16, min(64, radius))


def _core_tables(tables, radius, dtype):
    """Relative tables in the layouts the cores multiply with."""
    r_q, r_k, r_v = (ops.cast(t, dtype) for t in tables)
    if radius is None:
        # r_q [l, m, d] -> [l, d, m]; r_k [l, m, d] -> [m, d, l]; r_v stays [l, m, dv].
        return ops.transpose(r_q, (0, 2, 1)), ops.transpose(r_k, (1, 2, 0)), r_v
    return r_q, r_k, r_v


def _global_core(q_key, q_rpe, k, k_rpe, v, r_q, r_k, r_v):
    """Full-axis attention of a chunk of rows, before the output batch norm.

    Args:
        q_key, q_rpe, k, k_rpe: [rows, heads, L, key_dim]: q and k scaled by the
            similarity batch norm of the q.k, q.r_q and k.r_k terms.
        v: [rows, heads, L, value_dim].
        r_q: [L(query), key_dim, L(key)], r_k: [L(key), key_dim, L(query)],
        r_v: [L(query), L(key), value_dim]: relative embeddings per position pair.

    Returns:
        (sum_p w v_p, sum_p w r^v_{p-o}), each [rows, heads, L, value_dim].
    """
    shape = ops.shape(q_key)
    rows, heads, length = shape[0], q_key.shape[1], shape[2]
    value_dim = v.shape[-1]
    similarity = ops.matmul(q_key, ops.transpose(k, (0, 1, 3, 2)))  # [rows, h, L, L]
    # Relative terms: matmuls batched over the query (q.r_q) or the key (k.r_k) position.
    by_position = (2, 0, 1, 3)
    q_pos = ops.reshape(ops.transpose(q_rpe, by_position), (length, -1, q_rpe.shape[-1]))
    by_query = ops.reshape(ops.matmul(q_pos, r_q), (length, rows, heads, length))
    k_pos = ops.reshape(ops.transpose(k_rpe, by_position), (length, -1, k_rpe.shape[-1]))
    by_key = ops.reshape(ops.matmul(k_pos, r_k), (length, rows, heads, length))
    similarity = (similarity + ops.transpose(by_query, (1, 2, 0, 3))
                  + ops.transpose(by_key, (1, 2, 3, 0)))
    weights = ops.softmax(similarity, axis=-1)
    y_v = ops.matmul(weights, v)
    w_pos = ops.reshape(ops.transpose(weights, by_position), (length, -1, length))
    y_rv = ops.reshape(ops.matmul(w_pos, r_v), (length, rows, heads, value_dim))
    return y_v, ops.transpose(y_rv, (1, 2, 0, 3))


def _skew(x, width):
    """[..., a, b] -> [..., a, width] with out[i, j] = x[i, i + j] (needs i + j < b)."""
    shape = ops.shape(x)
    lead = tuple(shape[:-2])
    a, b = shape[-2], shape[-1]
    flat = ops.reshape(x, lead + (a * b,))
    flat = ops.pad(flat, [[0, 0]] * len(lead) + [[0, a]])
    return ops.reshape(flat, lead + (a, b + 1))[..., :width]


def _unskew(x, width):
    """[..., a, m] -> [..., a, width] with out[i, i + j] = x[i, j], zero elsewhere."""
    shape = ops.shape(x)
    lead = tuple(shape[:-2])
    a, m = shape[-2], x.shape[-1]
    x = ops.pad(x, [[0, 0]] * (len(lead) + 1) + [[0, width + 1 - m]])
    flat = ops.reshape(x, lead + (a * (width + 1),))[..., : a * width]
    return ops.reshape(flat, lead + (a, width))


def _blocks(x, radius, block, blocks):
    """[rows, h, L, d] -> overlapping key blocks [rows, h, blocks, block + 2 radius, d].

    Block i holds positions i * block - radius .. (i + 1) * block + radius - 1 (zero past
    the axis), made of whole `block`-long pieces of the padded axis (slices, no gather).
    """
    length = ops.shape(x)[2]
    pieces = -(-(block + 2 * radius) // block)
    padded = ops.pad(x, [[0, 0], [0, 0], [radius, (blocks + pieces - 1) * block - length - radius],
                         [0, 0]])
    rows, heads, depth = ops.shape(x)[0], x.shape[1], x.shape[-1]
    parts = [ops.reshape(padded[:, :, j * block: j * block + blocks * block],
                         (rows, heads, blocks, block, depth)) for j in range(pieces)]
    return ops.concatenate(parts, axis=3)[:, :, :, : block + 2 * radius]


def _banded_core(q_key, q_rpe, k, k_rpe, v, r_q, r_k, r_v, radius, length, large_negative):
    """Local attention (window of 2 * radius + 1) of a chunk of rows in banded form.

    Cost and memory are O(L x m) per row: q.k is one matmul per block of queries
    against its block + 2 * radius keys, then skewed into the [L, m] band; q.r_q and
    w.r_v are plain matmuls with the m-row window tables; k.r_k is a matmul with the
    table skewed along the keys; w.v unskews the band back into blocks. Window
    positions past the axis are excluded from the softmax.

    Args:
        q_key, q_rpe, k, k_rpe, v: as `_global_core`.
        r_q, r_k [m, key_dim], r_v [m, value_dim]: window rows of the relative tables.
        radius: int. Window radius.
        length: the axis length L (int or scalar tensor).
        large_negative: float. Logit of the excluded window positions.

    Returns:
        (sum_p w v_p, sum_p w r^v_{p-o}), each [rows, heads, L, value_dim].
    """
    window = 2 * radius + 1
    block = _block_size(radius)
    blocks = (length + block - 1) // block
    padded_length = blocks * block
    rows, heads = ops.shape(q_key)[0], q_key.shape[1]
    key_dim, value_dim = q_key.shape[-1], v.shape[-1]

    def pad_queries(x):
        return ops.pad(x, [[0, 0], [0, 0], [0, padded_length - length], [0, 0]])

    # q.k: [rows, h, blocks, block, block + 2r] -> band [rows, h, Lp, m].
    q_blocks = ops.reshape(pad_queries(q_key), (rows, heads, blocks, block, key_dim))
    k_blocks = _blocks(k, radius, block, blocks)
    similarity = ops.matmul(q_blocks, ops.transpose(k_blocks, (0, 1, 2, 4, 3)))
    similarity = ops.reshape(_skew(similarity, window), (rows, heads, padded_length, window))
    # q.r_q: one matmul with the window table.
    similarity = similarity + ops.matmul(pad_queries(q_rpe), ops.transpose(r_q))
    # k.r_k: [m, keys] products, skewed so that row j reads key o + j - r.
    k_rpe = ops.pad(k_rpe, [[0, 0], [0, 0], [radius, padded_length - length + radius], [0, 0]])
    by_key = ops.matmul(r_k, ops.transpose(k_rpe, (0, 1, 3, 2)))  # [rows, h, m, Lp + 2r]
    similarity = similarity + ops.transpose(_skew(by_key, padded_length), (0, 1, 3, 2))
    positions = ops.arange(padded_length, dtype="int32")[:, None]
    keys = positions + ops.arange(window, dtype="int32")[None, :] - radius
    inside = ops.logical_and(keys >= 0, keys < length)  # [Lp, m]
    similarity = ops.where(inside, similarity, large_negative)
    weights = ops.softmax(similarity, axis=-1)  # [rows, h, Lp, m]
    y_rv = ops.matmul(weights, r_v)
    weight_blocks = _unskew(ops.reshape(weights, (rows, heads, blocks, block, window)),
                            block + 2 * radius)
    y_v = ops.matmul(weight_blocks, _blocks(v, radius, block, blocks))
    y_v = ops.reshape(y_v, (rows, heads, padded_length, value_dim))
    return y_v[:, :, :length], y_rv[:, :, :length]


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialAttention(keras.layers.Layer):
    """Multi-head position-sensitive self-attention along one spatial axis.

    For an output position `o` and the positions `p` of its window on the axis
    (PAPER.md section 1):

        y_o = sum_p softmax_p(q_o.k_p + q_o.r^q_{p-o} + k_p.r^k_{p-o}) (v_p + r^v_{p-o})

    `q, k, v` come from one bias-free 1x1 projection followed by batch normalization.
    The relative embeddings `r^q, r^k, r^v` are shared by the heads. Each of the three
    similarity terms is batch-normalized per head and each of the two retrieved terms
    per head and channel before they are summed; there is no 1/sqrt(d) scaling. This is
    the layout of the official implementation (deeplab2), so its weights load.

    Span: `span=None` attends the whole axis. An odd `span=m` attends only the `1 x m`
    window centred on each position; window positions past the border are left out of
    the softmax (never padded into it) and out of the batch statistics, so the output at
    `o` does not depend on any input outside its window. The relative-position table
    always has `2 * max_span - 1` rows (offsets up to +-(max_span - 1)); a local span
    uses only the `m` rows of its window. With global span, offsets beyond the table
    (axes longer than `max_span`) are clipped to its edge row, as deeplab2 does. One
    layer therefore runs on any axis length; batch and spatial sizes may be dynamic.

    Cost: a local span is computed in banded form, O(L x m) time and memory per row
    (blocks of queries against their keys, skewed into an [L, m] band), never as a
    masked [L, L] product; the global span costs O(L^2). Rows are processed in chunks
    that stay in cache. The batch statistics of the similarity terms come from q, k
    and the tables (no [L, L] or [L, m] tensor is normalized), and at inference every
    batch norm is folded into scales, so the numbers equal the straightforward
    formulation (tests/test_banded_attention.py) at a fraction of its memory traffic.

    Args:
        num_heads: int. Number of attention heads.
        key_dim: int. Query/key depth per head.
        value_dim: int. Value depth per head; the output has `num_heads * value_dim`
            channels.
        axis: int. 1 attends along height, 2 along width of a `[batch, height, width,
            channels]` input.
        span: None or odd int. Global attention, or the local window length.
        max_span: int. Relative offsets up to `max_span - 1` have their own embedding.
        kernel_initializer: initializer of the `[channels, num_heads * (2 * key_dim +
            value_dim)]` projection; defaults to truncated normal with std
            `channels ** -0.5`.
        kernel_regularizer: optional regularizer of the projection.
        rpe_initializer: initializer of the relative embeddings (truncated normal, std 1).
        momentum: float. Batch-norm momentum.
        epsilon: float. Batch-norm epsilon.
        synchronized: bool. Synchronize batch statistics across replicas.
        **kwargs: base `Layer` arguments.

    Example:
    >>> layer = AxialAttention(num_heads=8, key_dim=4, value_dim=8, axis=1, span=15)
    >>> layer(keras.random.normal((2, 32, 24, 16))).shape
    (2, 32, 24, 64)
    """

    def __init__(
        self,
        num_heads: int = 8,
        key_dim: int = 16,
        value_dim: int = 32,
        axis: int = 1,
        span: Optional[int] = None,
        max_span: int = MAX_SPAN,
        kernel_initializer=None,
        kernel_regularizer=None,
        rpe_initializer=None,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        synchronized: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = _check_positive_int("num_heads", num_heads)
        self.key_dim = _check_positive_int("key_dim", key_dim)
        self.value_dim = _check_positive_int("value_dim", value_dim)
        if axis not in (1, 2):
            raise ValueError(
                f"`axis` must be 1 (height) or 2 (width) of a [batch, height, width, "
                f"channels] input, got {axis!r}.")
        self.axis = axis
        self.max_span = _check_positive_int("max_span", max_span)
        self.span = check_span(span, self.max_span)
        self.kernel_initializer = (
            keras.initializers.get(kernel_initializer) if kernel_initializer is not None else None)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.rpe_initializer = keras.initializers.get(
            rpe_initializer or keras.initializers.TruncatedNormal(stddev=1.0))
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized = synchronized
        bn_args = dict(momentum=momentum, epsilon=epsilon, synchronized=synchronized,
                       dtype=self.dtype_policy)
        self.batch_norm_qkv = keras.layers.BatchNormalization(name="batch_norm_qkv", **bn_args)
        # One batch norm per similarity term and head, [3, heads] (the axes of a
        # [3, n, heads, L, window] stack), and one per retrieved term, head and channel,
        # [2, heads, value_dim] (of a [2, n, L, heads, value_dim] stack), as deeplab2's
        # weights hold them. `call` takes their batch statistics from q, k and the
        # retrieved terms and applies them as per-head scales (see `_similarity_moments`).
        self.batch_norm_similarity = MultiAxisBatchNormalization(
            axis=(0, 2), name="batch_norm_similarity", **bn_args)
        self.batch_norm_output = MultiAxisBatchNormalization(
            axis=(0, 3, 4), name="batch_norm_retrieved_output", **bn_args)

    @property
    def output_channels(self) -> int:
        return self.num_heads * self.value_dim

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.name} expects a [batch, height, width, channels] input (rank 4), "
                f"got shape {tuple(input_shape)}.")
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known, got {input_shape}.")
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        qkv_channels = self.num_heads * (2 * self.key_dim + self.value_dim)
        initializer = self.kernel_initializer or keras.initializers.TruncatedNormal(
            stddev=channels ** -0.5)
        self.qkv_kernel = self.add_weight(
            name="qkv_kernel", shape=(channels, qkv_channels), initializer=initializer,
            regularizer=self.kernel_regularizer)
        rows = 2 * self.max_span - 1
        self.query_rpe = self.add_weight(
            name="query_rpe", shape=(rows, self.key_dim), initializer=self.rpe_initializer)
        self.key_rpe = self.add_weight(
            name="key_rpe", shape=(rows, self.key_dim), initializer=self.rpe_initializer)
        self.value_rpe = self.add_weight(
            name="value_rpe", shape=(rows, self.value_dim), initializer=self.rpe_initializer)
        self.batch_norm_qkv.build((None, None, qkv_channels))
        window = None if self.span is None else self.span
        self.batch_norm_similarity.build((3, None, self.num_heads, None, window))
        self.batch_norm_output.build((2, None, None, self.num_heads, self.value_dim))

    # ------------------------------------------------------------------ projection

    def _project(self, x, training):
        """[..., channels] -> normalized qkv [..., heads * (2 key_dim + value_dim)]."""
        if training:
            qkv = ops.matmul(x, self.qkv_kernel)
            shape = ops.shape(qkv)
            qkv = self.batch_norm_qkv(ops.reshape(qkv, (-1, shape[-2], shape[-1])), training=True)
            return ops.reshape(qkv, shape)
        # Inference: the batch norm is an affine map per channel; fold it into the kernel.
        bn = self.batch_norm_qkv
        scale = ops.cast(bn.gamma, "float32") * ops.rsqrt(
            ops.cast(bn.moving_variance, "float32") + bn.epsilon)
        shift = ops.cast(bn.beta, "float32") - ops.cast(bn.moving_mean, "float32") * scale
        kernel = ops.cast(ops.cast(self.qkv_kernel, "float32") * scale, self.compute_dtype)
        return ops.matmul(x, kernel) + ops.cast(shift, self.compute_dtype)

    def _to_rows(self, x, depth):
        """[B, H, W, heads * depth] -> [B * other, heads, L, depth] (rows along the axis)."""
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], shape[2], self.num_heads, depth))
        x = ops.transpose(x, (0, 2, 3, 1, 4) if self.axis == 1 else (0, 1, 3, 2, 4))
        length = shape[self.axis]
        return ops.reshape(x, (-1, self.num_heads, length, depth))

    def _from_rows(self, y, shape):
        """[B * other, heads, L, value_dim] -> [B, H, W, heads * value_dim]."""
        batch, height, width = shape[0], shape[1], shape[2]
        if self.axis == 1:
            y = ops.reshape(y, (batch, width, self.num_heads, height, self.value_dim))
            y = ops.transpose(y, (0, 3, 1, 2, 4))
        else:
            y = ops.reshape(y, (batch, height, self.num_heads, width, self.value_dim))
            y = ops.transpose(y, (0, 1, 3, 2, 4))
        return ops.reshape(y, (batch, height, width, self.output_channels))

    # ------------------------------------------------------------------ tables

    def _global_tables(self, length):
        """Relative embeddings per (query l, key m): r_q, r_k [L, L, key_dim], r_v [L, L, value_dim]."""
        positions = ops.arange(length, dtype="int32")
        offsets = positions[None, :] - positions[:, None]  # [query o, key p] = p - o
        rows = ops.clip(offsets, -(self.max_span - 1), self.max_span - 1) + (self.max_span - 1)
        return (ops.take(self.query_rpe, rows, axis=0), ops.take(self.key_rpe, rows, axis=0),
                ops.take(self.value_rpe, rows, axis=0))

    def _window_tables(self, radius):
        """Relative embeddings of the window offsets -radius..radius: [m, depth] each."""
        rows = ops.arange(2 * radius + 1, dtype="int32") + (self.max_span - 1 - radius)
        return (ops.take(self.query_rpe, rows, axis=0), ops.take(self.key_rpe, rows, axis=0),
                ops.take(self.value_rpe, rows, axis=0))

    # ------------------------------------------------------------------ statistics

    def _mean_over_rows(self, per_row):
        """Mean over axis 0 (all replicas' rows when `synchronized`)."""
        if self.synchronized:
            return ops.moments(per_row, axes=[0], synchronized=True)[0]
        return ops.mean(per_row, axis=0)

    def _similarity_moments(self, q, k, length, radius, tables):
        """Batch mean and variance [3, heads] of the three similarity terms.

        Computed from q, k and the tables in O(n L d^2) instead of from the
        [n, heads, L, window] similarity tensors: for a term t = a . b summed over the
        (query, key) pairs of the span, sum t = sum a . (sum b) and
        sum t^2 = sum a^T (sum b b^T) a. Local spans count only the pairs inside the
        axis (the `valid` entries of the masked formulation).
        """
        q = ops.cast(q, "float32")  # [n, h, L, d]
        k = ops.cast(k, "float32")
        r_q, r_k = (ops.cast(t, "float32") for t in tables[:2])
        if radius is None:
            count = ops.cast(length * length, "float32")
            # q.k: sums over all (l, m) pairs factorize per row.
            s1 = ops.sum(ops.sum(q, axis=2) * ops.sum(k, axis=2), axis=-1)
            ss1 = ops.sum(ops.einsum("nhld,nhle->nhde", q, q)
                          * ops.einsum("nhld,nhle->nhde", k, k), axis=(-2, -1))
            # q.r_q[l, m]: per query l, sums over keys m; k.r_k: per key m, over queries l.
            sum_q_table = ops.sum(r_q, axis=1)                       # [L(l), d]
            gram_q_table = ops.einsum("lmd,lme->lde", r_q, r_q)       # [L(l), d, d]
            sum_k_table = ops.sum(r_k, axis=0)                       # [L(m), d]
            gram_k_table = ops.einsum("lmd,lme->mde", r_k, r_k)       # [L(m), d, d]
        else:
            window = 2 * radius + 1
            offsets = ops.arange(window, dtype="int32") - radius
            positions = ops.arange(length, dtype="int32")[:, None]
            # [L, m]: query o sees key o + j (as offset); key p is seen from query p - j.
            seen = ops.cast(ops.logical_and(positions + offsets >= 0,
                                            positions + offsets < length), "float32")
            seen_by = ops.cast(ops.logical_and(positions - offsets >= 0,
                                               positions - offsets < length), "float32")
            count = ops.sum(seen)
            outer_q = ops.reshape(r_q[:, :, None] * r_q[:, None, :], (window, -1))
            outer_k = ops.reshape(r_k[:, :, None] * r_k[:, None, :], (window, -1))
            d = self.key_dim
            sum_q_table = ops.matmul(seen, r_q)
            gram_q_table = ops.reshape(ops.matmul(seen, outer_q), (-1, d, d))
            sum_k_table = ops.matmul(seen_by, r_k)
            gram_k_table = ops.reshape(ops.matmul(seen_by, outer_k), (-1, d, d))
            # q.k over the window of every query: windowed sums of k and of k k^T.
            first = ops.clip(positions[:, 0] - radius, 0, length)
            last = ops.clip(positions[:, 0] + radius + 1, 0, length)

            def window_sum(x):  # over axis 2 (L)
                padded = ops.pad(x, [[0, 0], [0, 0], [1, 0]] + [[0, 0]] * (len(x.shape) - 3))
                total = ops.cumsum(padded, axis=2)
                return ops.take(total, last, axis=2) - ops.take(total, first, axis=2)

            s1 = ops.sum(q * window_sum(k), axis=(2, 3))
            k_outer = window_sum(k[..., :, None] * k[..., None, :])    # [n, h, L, d, d]
            ss1 = ops.sum(ops.einsum("nhld,nhlde->nhle", q, k_outer) * q, axis=(2, 3))
        s2 = ops.einsum("nhld,ld->nh", q, sum_q_table)
        ss2 = ops.sum(ops.einsum("nhld,lde->nhle", q, gram_q_table) * q, axis=(2, 3))
        s3 = ops.einsum("nhld,ld->nh", k, sum_k_table)
        ss3 = ops.sum(ops.einsum("nhld,lde->nhle", k, gram_k_table) * k, axis=(2, 3))
        # Every row n has the same number of pairs: average per-row moments over rows.
        rows = ops.stack([ops.stack([s1, s2, s3], axis=1),
                          ops.stack([ss1, ss2, ss3], axis=1)], axis=1) / count  # [n, 2, 3, h]
        moments = self._mean_over_rows(rows)
        mean, mean_square = moments[0], moments[1]
        return mean, ops.maximum(mean_square - ops.square(mean), 0.0)

    # ------------------------------------------------------------------ attention

    def _chunk_rows(self, length, window):
        """Rows attended together: keeps the largest [rows, heads, L, window] tensor small."""
        if isinstance(length, int):
            per_row = self.num_heads * max(length, 1) * max(window, 1)
            return max(1, _CHUNK_ELEMENTS // per_row)
        return 8

    def _attend(self, q, k, v, length, radius, similarity_scale, tables, finish):
        """Runs the attention core over chunks of rows; returns `finish(y_v, y_rv)` per row."""
        scale = ops.cast(similarity_scale, self.compute_dtype)  # [3, heads]
        head_scale = [ops.reshape(s, (1, self.num_heads, 1, 1)) for s in (scale[0], scale[1],
                                                                          scale[2])]

        def core(q, k, v):
            q_key, q_rpe, k_rpe = q * head_scale[0], q * head_scale[1], k * head_scale[2]
            if radius is None:
                y_v, y_rv = _global_core(q_key, q_rpe, k, k_rpe, v, *tables)
            else:
                y_v, y_rv = _banded_core(q_key, q_rpe, k, k_rpe, v, *tables, radius=radius,
                                         length=length, large_negative=_large_negative(
                                             self.compute_dtype))
            return finish(y_v, y_rv)

        window = length if radius is None else _block_size(radius) + 2 * radius
        rows = self._chunk_rows(length, window)
        n = q.shape[0]
        if (n is not None and n <= rows) or static_loops_enabled():
            return core(q, k, v)
        n = ops.shape(q)[0]
        if not isinstance(n, int):
            # A dynamic row count below one chunk must not be padded up to a whole chunk.
            rows = ops.maximum(ops.minimum(n, rows), 1)
        chunks = (n + rows - 1) // rows
        extra = chunks * rows - n

        def split(x):
            x = ops.pad(x, [[0, extra], [0, 0], [0, 0], [0, 0]])
            return ops.reshape(x, (chunks, rows) + tuple(ops.shape(x)[1:]))

        out = ops.map(lambda args: core(*args), (split(q), split(k), split(v)))

        def merge(y):
            y = ops.reshape(y, (chunks * rows,) + tuple(ops.shape(y)[2:]))
            return y[:n]

        if isinstance(out, (tuple, list)):
            return tuple(merge(y) for y in out)
        return merge(out)

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        length = shape[self.axis]
        static_length = inputs.shape[self.axis]
        radius = None if self.span is None else (self.span - 1) // 2
        if radius is not None and static_length is not None and self.span >= 2 * static_length - 1:
            radius = None  # every window covers the whole axis: the global computation
        qkv = self._project(inputs, training)
        kd = self.num_heads * self.key_dim
        q, k, v = ops.split(qkv, [kd, 2 * kd], axis=-1)
        q, k = self._to_rows(q, self.key_dim), self._to_rows(k, self.key_dim)
        v = self._to_rows(v, self.value_dim)
        tables = self._global_tables(length) if radius is None else self._window_tables(radius)
        if training:
            mean, variance = self._similarity_moments(q, k, length, radius, tables)
            self.batch_norm_similarity.update_moving_statistics(mean, variance)
        else:
            mean = self.batch_norm_similarity.moving_mean
            variance = self.batch_norm_similarity.moving_variance
        # Per (term, head) the normalized terms are scale * term + shift; the shifts add a
        # constant to every logit of a head, which the softmax ignores: their gradient is
        # exactly zero, kept in the graph (times 0) so optimizers see zero, not none.
        similarity_scale, shift = self.batch_norm_similarity.scale_and_shift(mean, variance)
        similarity_scale = similarity_scale + 0.0 * shift
        core_tables = _core_tables(tables, radius, self.compute_dtype)

        output_bn = self.batch_norm_output
        if training:
            y_v, y_rv = self._attend(q, k, v, length, radius, similarity_scale, core_tables,
                                     lambda a, b: (a, b))
            # Per (term, head, channel) statistics over rows and positions.
            retrieved = ops.cast(ops.stack([y_v, y_rv]), "float32")  # [2, n, h, L, dv]
            mean = self._mean_over_rows(ops.transpose(ops.mean(retrieved, axis=3), (1, 0, 2, 3)))
            mean_square = self._mean_over_rows(
                ops.transpose(ops.mean(ops.square(retrieved), axis=3), (1, 0, 2, 3)))
            variance = ops.maximum(mean_square - ops.square(mean), 0.0)
            output_bn.update_moving_statistics(mean, variance)
            scale, shift = output_bn.scale_and_shift(mean, variance)  # [2, h, dv]
            out = (retrieved[0] * scale[0][:, None] + retrieved[1] * scale[1][:, None]
                   + ops.sum(shift, axis=0)[:, None])
            out = ops.cast(out, self.compute_dtype)
        else:
            scale, shift = output_bn.scale_and_shift(output_bn.moving_mean,
                                                     output_bn.moving_variance)
            scale = ops.cast(scale, self.compute_dtype)[:, :, None]  # [2, h, 1, dv]
            shift = ops.cast(ops.sum(shift, axis=0), self.compute_dtype)[:, None]
            out = self._attend(q, k, v, length, radius, similarity_scale, core_tables,
                               lambda a, b: a * scale[0] + b * scale[1] + shift)
        return self._from_rows(out, shape)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def madds(self, input_shape) -> int:
        """Multiply-adds for one call on a `[batch, height, width, channels]` shape."""
        batch, height, width, channels = input_shape
        length, rows = (height, width) if self.axis == 1 else (width, height)
        window = length if self.span is None else min(self.span, length)
        qkv = length * channels * self.num_heads * (2 * self.key_dim + self.value_dim)
        similarity = 3 * length * window * self.num_heads * self.key_dim
        retrieve = 2 * length * window * self.num_heads * self.value_dim
        return int(batch or 1) * rows * (qkv + similarity + retrieve)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads,
            "key_dim": self.key_dim,
            "value_dim": self.value_dim,
            "axis": self.axis,
            "span": self.span,
            "max_span": self.max_span,
            "kernel_initializer": (keras.initializers.serialize(self.kernel_initializer)
                                   if self.kernel_initializer is not None else None),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "rpe_initializer": keras.initializers.serialize(self.rpe_initializer),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "synchronized": self.synchronized,
        })
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialAttention2D(keras.layers.Layer):
    """Height-axis attention, optional height stride, width-axis attention, width stride.

    The pair that replaces a 3x3 convolution in an axial bottleneck block (PAPER.md
    section 2). No projection sits between the two axes; the stride is applied on each
    axis right after that axis's attention (`x[:, ::s]`, output size `ceil(n / s)`).

    Args:
        num_heads: int. Heads of each axial layer.
        key_dim: int. Query/key depth per head.
        value_dim: int. Value depth per head (output channels `num_heads * value_dim`).
        span: None or odd int. Global or local window, on both axes.
        strides: int. 1 or 2.
        **kwargs: `AxialAttention` options (`max_span`, `momentum`, `epsilon`,
            `synchronized`, `kernel_regularizer`) and base `Layer` arguments.

    Example:
    >>> layer = AxialAttention2D(num_heads=8, key_dim=4, value_dim=8, strides=2)
    >>> layer(keras.random.normal((1, 9, 12, 16))).shape
    (1, 5, 6, 64)
    """

    _ATTENTION_ARGS = ("max_span", "momentum", "epsilon", "synchronized", "kernel_regularizer")

    def __init__(self, num_heads: int = 8, key_dim: int = 16, value_dim: int = 32,
                 span: Optional[int] = None, strides: int = 1, **kwargs):
        attention_args = {k: kwargs.pop(k) for k in self._ATTENTION_ARGS if k in kwargs}
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2, got {strides!r}.")
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.span, self.strides = span, strides
        self.attention_args = attention_args
        common = dict(num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, span=span,
                      dtype=self.dtype_policy, **attention_args)
        self.height_axis = AxialAttention(axis=1, name="height_axis", **common)
        self.width_axis = AxialAttention(axis=2, name="width_axis", **common)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.name} expects a [batch, height, width, channels] input (rank 4), "
                f"got shape {tuple(input_shape)}.")
        self.height_axis.build(input_shape)
        mid = self.height_axis.compute_output_shape(self._strided(input_shape, 1))
        self.width_axis.build(mid)

    def _strided(self, shape, axis):
        shape = list(shape)
        if self.strides > 1 and shape[axis] is not None:
            shape[axis] = -(-shape[axis] // self.strides)
        return tuple(shape)

    def call(self, inputs, training=None):
        x = self.height_axis(inputs, training=training)
        if self.strides > 1:
            x = x[:, :: self.strides]
        x = self.width_axis(x, training=training)
        if self.strides > 1:
            x = x[:, :, :: self.strides]
        return x

    def compute_output_shape(self, input_shape):
        shape = self._strided(self._strided(input_shape, 1), 2)
        return tuple(shape[:-1]) + (self.num_heads * self.value_dim,)

    def madds(self, input_shape) -> int:
        mid = self.height_axis.compute_output_shape(self._strided(input_shape, 1))
        return self.height_axis.madds(input_shape) + self.width_axis.madds(mid)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "key_dim": self.key_dim, "value_dim": self.value_dim,
            "span": self.span, "strides": self.strides,
            **{k: (keras.regularizers.serialize(v) if k == "kernel_regularizer" else v)
               for k, v in self.attention_args.items()},
        })
        return config

"""The attention cores of position-sensitive axial attention, as functions on tensors.

Each core takes rows of queries, keys and values along one axis, `[rows, heads, L,
depth]`, already scaled by the similarity batch norm, and returns the two retrieved
terms `sum_p w v_p` and `sum_p w r^v_{p-o}` (PAPER.md section 1). `global_attention`
attends the whole axis in O(L^2); `banded_attention` attends a window of `2 radius + 1`
positions in O(L x m), never forming a masked [L, L] product. `attend` runs either core
over chunks of rows.
"""

from typing import Callable, Optional, Sequence

import keras
from keras import ops


def relative_embeddings(table, length, radius: Optional[int], max_span: int):
    """Rows of a relative-position table that a span multiplies with.

    Args:
        table: [2 max_span - 1, depth]. Row `offset + max_span - 1` embeds `offset`.
        length: int or scalar tensor. The axis length L.
        radius: None or int. None: global span; else the window radius.
        max_span: int. Offsets beyond +-(max_span - 1) use the table's edge rows.

    Returns:
        [L(query o), L(key p), depth] embeddings of p - o for a global span, or the
        [2 radius + 1, depth] embeddings of the window offsets -radius..radius.
    """
    if radius is None:
        positions = ops.arange(length, dtype="int32")
        offsets = positions[None, :] - positions[:, None]  # [query o, key p] = p - o
        rows = ops.clip(offsets, -(max_span - 1), max_span - 1) + (max_span - 1)
    else:
        rows = ops.arange(2 * radius + 1, dtype="int32") + (max_span - 1 - radius)
    return ops.take(table, rows, axis=0)


def block_size(radius: int) -> int:
    """Query block of the banded local attention: keys per block are block + 2 * radius.

    Measured on a 2-core CPU (CPU time of one layer, benchmarks/): span 65 is fastest
    with blocks of 32 (16: +8%, 64: +17%, 128: +24%), span 15 with 16 (8: +7%, 32: +6%).
    """
    return max(16, min(64, radius))


def skew(x, width: int):
    """[..., a, b] -> [..., a, width] with out[i, j] = x[i, i + j] (needs i + j < b)."""
    shape = ops.shape(x)
    lead = tuple(shape[:-2])
    a, b = shape[-2], shape[-1]
    flat = ops.reshape(x, lead + (a * b,))
    flat = ops.pad(flat, [[0, 0]] * len(lead) + [[0, a]])
    return ops.reshape(flat, lead + (a, b + 1))[..., :width]


def unskew(x, width: int):
    """[..., a, m] -> [..., a, width] with out[i, i + j] = x[i, j], zero elsewhere."""
    shape = ops.shape(x)
    lead = tuple(shape[:-2])
    a, m = shape[-2], x.shape[-1]
    x = ops.pad(x, [[0, 0]] * (len(lead) + 1) + [[0, width + 1 - m]])
    flat = ops.reshape(x, lead + (a * (width + 1),))[..., : a * width]
    return ops.reshape(flat, lead + (a, width))


def key_blocks(x, radius: int, block: int, blocks):
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


def global_attention(q_key, q_rpe, k, k_rpe, v, r_q, r_k, r_v):
    """Attention of every position to the whole axis, for a chunk of rows.

    The queries may be a subset of the positions (Lq of them, e.g. every other one, as
    a strided block keeps), the keys are the whole axis (L).

    Args:
        q_key, q_rpe: [rows, heads, Lq, key_dim], k, k_rpe: [rows, heads, L, key_dim]:
            q and k scaled by the similarity batch norm of the q.k, q.r_q and k.r_k terms.
        v: [rows, heads, L, value_dim].
        r_q: [Lq(query), key_dim, L(key)], r_k: [L(key), key_dim, Lq(query)],
        r_v: [Lq(query), L(key), value_dim]: relative embeddings per position pair (the
            layouts of `global_layout`).

    Returns:
        (sum_p w v_p, sum_p w r^v_{p-o}), each [rows, heads, Lq, value_dim].
    """
    rows, heads, queries = ops.shape(q_key)[0], q_key.shape[1], ops.shape(q_key)[2]
    keys = ops.shape(k)[2]
    value_dim = v.shape[-1]
    similarity = ops.matmul(q_key, ops.transpose(k, (0, 1, 3, 2)))  # [rows, h, Lq, L]
    # Relative terms: matmuls batched over the query (q.r_q) or the key (k.r_k) position.
    by_position = (2, 0, 1, 3)
    q_pos = ops.reshape(ops.transpose(q_rpe, by_position), (queries, -1, q_rpe.shape[-1]))
    by_query = ops.reshape(ops.matmul(q_pos, r_q), (queries, rows, heads, keys))
    k_pos = ops.reshape(ops.transpose(k_rpe, by_position), (keys, -1, k_rpe.shape[-1]))
    by_key = ops.reshape(ops.matmul(k_pos, r_k), (keys, rows, heads, queries))
    similarity = (similarity + ops.transpose(by_query, (1, 2, 0, 3))
                  + ops.transpose(by_key, (1, 2, 3, 0)))
    weights = ops.softmax(similarity, axis=-1)
    y_v = ops.matmul(weights, v)
    w_pos = ops.reshape(ops.transpose(weights, by_position), (queries, -1, keys))
    y_rv = ops.reshape(ops.matmul(w_pos, r_v), (queries, rows, heads, value_dim))
    return y_v, ops.transpose(y_rv, (1, 2, 0, 3))


def global_layout(r_q, r_k, r_v):
    """[L, L, d] tables of `relative_embeddings` -> the layouts `global_attention` takes."""
    return ops.transpose(r_q, (0, 2, 1)), ops.transpose(r_k, (1, 2, 0)), r_v


def _excluded_logit(dtype) -> float:
    """Logit of a window position past the axis: exp() of it is 0 in `dtype`."""
    return -6.0e4 if keras.backend.standardize_dtype(dtype) == "float16" else -1.0e9


def banded_attention(q_key, q_rpe, k, k_rpe, v, r_q, r_k, r_v, radius: int, length):
    """Attention of every position to its window of 2 * radius + 1, for a chunk of rows.

    Cost and memory are O(L x m) per row: q.k is one matmul per block of queries
    against its block + 2 * radius keys, then skewed into the [L, m] band; q.r_q and
    w.r_v are plain matmuls with the m-row window tables; k.r_k is a matmul with the
    table skewed along the keys; w.v unskews the band back into blocks. Window
    positions past the axis are excluded from the softmax.

    Args:
        q_key, q_rpe, k, k_rpe, v: as `global_attention`.
        r_q, r_k [m, key_dim], r_v [m, value_dim]: window rows of the relative tables.
        radius: int. Window radius.
        length: int or scalar tensor. The axis length L.

    Returns:
        (sum_p w v_p, sum_p w r^v_{p-o}), each [rows, heads, L, value_dim].
    """
    window = 2 * radius + 1
    block = block_size(radius)
    blocks = (length + block - 1) // block
    padded_length = blocks * block
    rows, heads = ops.shape(q_key)[0], q_key.shape[1]
    key_dim, value_dim = q_key.shape[-1], v.shape[-1]

    def pad_queries(x):
        return ops.pad(x, [[0, 0], [0, 0], [0, padded_length - length], [0, 0]])

    # q.k: [rows, h, blocks, block, block + 2r] -> band [rows, h, Lp, m].
    q_blocks = ops.reshape(pad_queries(q_key), (rows, heads, blocks, block, key_dim))
    k_blocks = key_blocks(k, radius, block, blocks)
    similarity = ops.matmul(q_blocks, ops.transpose(k_blocks, (0, 1, 2, 4, 3)))
    similarity = ops.reshape(skew(similarity, window), (rows, heads, padded_length, window))
    # q.r_q: one matmul with the window table.
    similarity = similarity + ops.matmul(pad_queries(q_rpe), ops.transpose(r_q))
    # k.r_k: [m, keys] products, skewed so that row j reads key o + j - r.
    k_rpe = ops.pad(k_rpe, [[0, 0], [0, 0], [radius, padded_length - length + radius], [0, 0]])
    by_key = ops.matmul(r_k, ops.transpose(k_rpe, (0, 1, 3, 2)))  # [rows, h, m, Lp + 2r]
    similarity = similarity + ops.transpose(skew(by_key, padded_length), (0, 1, 3, 2))
    positions = ops.arange(padded_length, dtype="int32")[:, None]
    keys = positions + ops.arange(window, dtype="int32")[None, :] - radius
    inside = ops.logical_and(keys >= 0, keys < length)  # [Lp, m]
    similarity = ops.where(inside, similarity, _excluded_logit(q_key.dtype))
    weights = ops.softmax(similarity, axis=-1)  # [rows, h, Lp, m]
    y_rv = ops.matmul(weights, r_v)
    weight_blocks = unskew(ops.reshape(weights, (rows, heads, blocks, block, window)),
                           block + 2 * radius)
    y_v = ops.matmul(weight_blocks, key_blocks(v, radius, block, blocks))
    y_v = ops.reshape(y_v, (rows, heads, padded_length, value_dim))
    return y_v[:, :, :length], y_rv[:, :, :length]


def rows_per_chunk(chunk_elements: int, heads: int, length, radius: Optional[int]) -> int:
    """Rows attended together so that their largest [rows, heads, L, keys] tensor holds
    about `chunk_elements` elements (keys: L, or a banded key block); 8 for a dynamic L."""
    if not isinstance(length, int):
        return 8
    keys = length if radius is None else block_size(radius) + 2 * radius
    return max(1, chunk_elements // (heads * max(length, 1) * max(keys, 1)))


def even_rows(n: int, rows: int) -> int:
    """Rows per chunk near `rows` (between rows / 2 and rows) that divide `n`, else `rows`
    (`n` itself when it is at most `rows`: one chunk).

    Chunks that divide the row count need no padding of the inputs and no slice of the
    outputs (whose gradients, a pad and a StridedSliceGrad over every row, took 8% of a
    training step's op time on CPU).
    """
    if n <= rows:
        return max(n, 1)
    for size in range(rows, (rows + 1) // 2 - 1, -1):
        if n % size == 0:
            return size
    return rows


def _map_chunks(fn: Callable, tensors: Sequence, rows):
    """`fn` over chunks of `rows` rows (axis 0) of `tensors` with `ops.map`, re-joined."""
    n = ops.shape(tensors[0])[0]
    if not isinstance(n, int):
        # A dynamic row count below one chunk must not be padded up to a whole chunk.
        rows = ops.maximum(ops.minimum(n, rows), 1)
    else:
        rows = even_rows(n, rows)
    chunks = (n + rows - 1) // rows
    extra = chunks * rows - n
    whole = isinstance(extra, int) and extra == 0  # no padding to add and cut off

    def split(x):
        if not whole:
            x = ops.pad(x, [[0, extra]] + [[0, 0]] * (len(x.shape) - 1))
        return ops.reshape(x, (chunks, rows) + tuple(ops.shape(x)[1:]))

    def merge(y):
        y = ops.reshape(y, (chunks * rows,) + tuple(ops.shape(y)[2:]))
        return y if whole else y[:n]

    out = ops.map(lambda args: fn(*args), tuple(split(x) for x in tensors))
    if isinstance(out, (tuple, list)):
        return tuple(merge(y) for y in out)
    return merge(out)


def attend(q, k, v, tables, logit_scale, radius: Optional[int], length,
           chunk_elements: Optional[int], epilogue: Callable, query_stride: int = 1):
    """Axial attention of rows, each term's logits scaled per head, in chunks of rows.

    Args:
        q, k: [rows, heads, L, key_dim]. v: [rows, heads, L, value_dim].
        tables: (r_q, r_k, r_v) of `relative_embeddings`.
        logit_scale: [3, heads]. Scales of the q.k, q.r_q and k.r_k terms.
        radius: None (global) or int (window radius).
        length: int or scalar tensor. The axis length L.
        chunk_elements: None or int. Rows go through `ops.map` in chunks whose largest
            tensor has about this many elements; None attends all rows at once (no loop).
        epilogue: maps (sum_p w v_p, sum_p w r^v_{p-o}) of a chunk to its result.
        query_stride: int. Only every `query_stride`-th query position (0, s, 2s, ...)
            attends, against all keys; global span only.

    Returns:
        `epilogue`'s result for all rows, joined along axis 0.
    """
    logit_scale = ops.cast(logit_scale, q.dtype)
    scale = [ops.reshape(logit_scale[i], (1, -1, 1, 1)) for i in range(3)]
    tables = tuple(ops.cast(t, q.dtype) for t in tables)
    if query_stride > 1:
        if radius is not None:
            raise ValueError("A query stride needs the global span.")
        tables = tuple(t[::query_stride] for t in tables)  # [query o, key p, depth]
    if radius is None:
        tables = global_layout(*tables)

    def core(q, k, v):
        if query_stride > 1:
            q = q[:, :, ::query_stride]
        q_key, q_rpe, k_rpe = q * scale[0], q * scale[1], k * scale[2]
        if radius is None:
            return epilogue(*global_attention(q_key, q_rpe, k, k_rpe, v, *tables))
        return epilogue(*banded_attention(q_key, q_rpe, k, k_rpe, v, *tables, radius=radius,
                                          length=length))

    if chunk_elements is None:
        return core(q, k, v)
    rows = rows_per_chunk(chunk_elements, q.shape[1], length, radius)
    if q.shape[0] is not None and q.shape[0] <= rows:
        return core(q, k, v)
    return _map_chunks(core, (q, k, v), rows)

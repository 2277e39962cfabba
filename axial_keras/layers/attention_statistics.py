"""Batch statistics of axial attention's normalized terms, and batch norms as affine maps.

The three similarity terms q.k, q.r^q and k.r^k are batch-normalized per head over every
(query, key) pair of the span (PAPER.md section 1). Their moments are computed here from
q, k and the relative tables in O(n L d^2), never from the [n, heads, L, L] or
[n, heads, L, m] similarity tensors: for a term t = a . b summed over the pairs,
sum t = sum a . (sum b) and sum t^2 = sum a^T (sum b b^T) a. Everything is float32
whatever the compute dtype, as keras' BatchNormalization computes its statistics.
"""

from typing import Optional, Tuple

from keras import ops


def mean_over_rows(per_row, synchronized: bool):
    """Mean over axis 0: the rows of this replica, or of all replicas when `synchronized`."""
    if synchronized:
        return ops.moments(per_row, axes=[0], synchronized=True)[0]
    return ops.mean(per_row, axis=0)


def _moments(per_row_sums, per_row_square_sums, count, synchronized: bool):
    """(mean, variance) from per-row sums and sums of squares of `count` entries per row."""
    rows = ops.stack([per_row_sums, per_row_square_sums], axis=1) / count
    moments = mean_over_rows(rows, synchronized)
    mean, mean_square = moments[0], moments[1]
    return mean, ops.maximum(mean_square - ops.square(mean), 0.0)


def _global_pairs(q, k, r_q, r_k, length):
    """Pair count, q.k sums and the table sums / Grams of a global span (all L x L pairs)."""
    count = ops.cast(length * length, "float32")
    # q.k: sums over all (l, m) pairs factorize per row.
    s1 = ops.sum(ops.sum(q, axis=2) * ops.sum(k, axis=2), axis=-1)
    ss1 = ops.sum(ops.einsum("nhld,nhle->nhde", q, q)
                  * ops.einsum("nhld,nhle->nhde", k, k), axis=(-2, -1))
    # q.r_q[l, m]: per query l, sums over keys m; k.r_k: per key m, over queries l.
    tables = (ops.sum(r_q, axis=1),                       # [L(l), d]
              ops.einsum("lmd,lme->lde", r_q, r_q),       # [L(l), d, d]
              ops.sum(r_k, axis=0),                       # [L(m), d]
              ops.einsum("lmd,lme->mde", r_k, r_k))       # [L(m), d, d]
    return count, s1, ss1, tables


def _window_pairs(q, k, r_q, r_k, length, radius: int):
    """As `_global_pairs` for a window of 2 * radius + 1: only the pairs inside the axis."""
    window = 2 * radius + 1
    key_dim = q.shape[-1]
    offsets = ops.arange(window, dtype="int32") - radius
    positions = ops.arange(length, dtype="int32")[:, None]
    # [L, m]: query o sees key o + j (as offset); key p is seen from query p - j.
    seen = ops.cast(ops.logical_and(positions + offsets >= 0, positions + offsets < length),
                    "float32")
    seen_by = ops.cast(ops.logical_and(positions - offsets >= 0, positions - offsets < length),
                       "float32")
    count = ops.sum(seen)
    outer_q = ops.reshape(r_q[:, :, None] * r_q[:, None, :], (window, -1))
    outer_k = ops.reshape(r_k[:, :, None] * r_k[:, None, :], (window, -1))
    tables = (ops.matmul(seen, r_q),
              ops.reshape(ops.matmul(seen, outer_q), (-1, key_dim, key_dim)),
              ops.matmul(seen_by, r_k),
              ops.reshape(ops.matmul(seen_by, outer_k), (-1, key_dim, key_dim)))
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
    return count, s1, ss1, tables


def similarity_moments(q, k, r_q, r_k, length, radius: Optional[int],
                       synchronized: bool) -> Tuple:
    """Batch mean and variance [3, heads] of the q.k, q.r^q and k.r^k terms.

    Args:
        q, k: [n, heads, L, key_dim]. Rows of queries and keys.
        r_q, r_k: the tables of `attention_kernels.relative_embeddings` for the span.
        length: int or scalar tensor. The axis length L.
        radius: None (global span, all L x L pairs) or int (the window pairs inside the
            axis, the `valid` entries of the masked formulation).
        synchronized: bool. Average over all replicas' rows.

    Returns:
        (mean, variance), float32 [3, heads] each.
    """
    q, k = ops.cast(q, "float32"), ops.cast(k, "float32")
    r_q, r_k = ops.cast(r_q, "float32"), ops.cast(r_k, "float32")
    if radius is None:
        count, s1, ss1, tables = _global_pairs(q, k, r_q, r_k, length)
    else:
        count, s1, ss1, tables = _window_pairs(q, k, r_q, r_k, length, radius)
    sum_q_table, gram_q_table, sum_k_table, gram_k_table = tables
    s2 = ops.einsum("nhld,ld->nh", q, sum_q_table)
    ss2 = ops.sum(ops.einsum("nhld,lde->nhle", q, gram_q_table) * q, axis=(2, 3))
    s3 = ops.einsum("nhld,ld->nh", k, sum_k_table)
    ss3 = ops.sum(ops.einsum("nhld,lde->nhle", k, gram_k_table) * k, axis=(2, 3))
    # Every row n has the same number of pairs: average per-row moments over rows.
    return _moments(ops.stack([s1, s2, s3], axis=1), ops.stack([ss1, ss2, ss3], axis=1),
                    count, synchronized)


def retrieved_moments(y_v, y_rv, synchronized: bool) -> Tuple:
    """Batch mean and variance [2, heads, value_dim] of the two retrieved terms.

    Args:
        y_v, y_rv: [n, heads, L, value_dim]. sum_p w v_p and sum_p w r^v_{p-o} (float32).
        synchronized: bool. Average over all replicas' rows.

    Returns:
        (mean, variance), float32 [2, heads, value_dim] each.
    """
    sums = ops.stack([ops.sum(y_v, axis=2), ops.sum(y_rv, axis=2)], axis=1)
    square_sums = ops.stack([ops.sum(ops.square(y_v), axis=2),
                             ops.sum(ops.square(y_rv), axis=2)], axis=1)
    return _moments(sums, square_sums, ops.cast(ops.shape(y_v)[2], "float32"), synchronized)


def folded_affine(gamma, beta, mean, variance, epsilon: float) -> Tuple:
    """float32 (scale, shift) of a batch norm, so that normalized x = x * scale + shift."""
    scale = ops.cast(gamma, "float32") * ops.rsqrt(ops.cast(variance, "float32") + epsilon)
    return scale, ops.cast(beta, "float32") - ops.cast(mean, "float32") * scale

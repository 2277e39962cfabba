"""A plain NumPy (float64) statement of position-sensitive axial attention, for tests.

Loops over every output position and its window exactly as PAPER.md section 1 writes
the formula, with inference-mode batch norms; nothing is vectorized or shared with the
library code it checks.
"""

import numpy as np


def _bn(x, gamma, beta, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def axial_attention_reference(x, layer):
    """Output of `layer` (an AxialAttention) on `x` [B, H, W, C], computed by loops."""
    w = {v.path.split("/")[-1] if "batch_norm" not in v.path else
         "/".join(v.path.split("/")[-2:]): np.asarray(v.numpy(), np.float64) for v in layer.weights}
    eps = layer.epsilon
    heads, kd, vd, max_span = layer.num_heads, layer.key_dim, layer.value_dim, layer.max_span
    x = np.asarray(x, np.float64)
    if layer.axis == 1:
        x = x.transpose(0, 2, 1, 3)
    b, rows, length, _ = x.shape
    out = np.zeros((b, rows, length, heads * vd))
    qkv = x @ w["qkv_kernel"]
    qkv = _bn(qkv, w["batch_norm_qkv/gamma"], w["batch_norm_qkv/beta"],
              w["batch_norm_qkv/moving_mean"], w["batch_norm_qkv/moving_variance"], eps)
    q = qkv[..., : heads * kd].reshape(b, rows, length, heads, kd)
    k = qkv[..., heads * kd: 2 * heads * kd].reshape(b, rows, length, heads, kd)
    v = qkv[..., 2 * heads * kd:].reshape(b, rows, length, heads, vd)
    sim = {n: w[f"batch_norm_similarity/{n}"] for n in ("gamma", "beta", "moving_mean", "moving_variance")}
    ret = {n: w[f"batch_norm_retrieved_output/{n}"] for n in ("gamma", "beta", "moving_mean", "moving_variance")}
    radius = None if layer.span is None else (layer.span - 1) // 2
    for n in range(b):
        for r in range(rows):
            for o in range(length):
                window = [p for p in range(length) if radius is None or abs(p - o) <= radius]
                for h in range(heads):
                    logits = []
                    for p in window:
                        row = int(np.clip(p - o, -(max_span - 1), max_span - 1)) + max_span - 1
                        terms = [q[n, r, o, h] @ k[n, r, p, h],
                                 q[n, r, o, h] @ w["query_rpe"][row],
                                 k[n, r, p, h] @ w["key_rpe"][row]]
                        logits.append(sum(_bn(t, sim["gamma"][i, h], sim["beta"][i, h],
                                              sim["moving_mean"][i, h], sim["moving_variance"][i, h], eps)
                                          for i, t in enumerate(terms)))
                    logits = np.array(logits)
                    a = np.exp(logits - logits.max())
                    a /= a.sum()
                    content = sum(a[j] * v[n, r, p, h] for j, p in enumerate(window))
                    rpe = sum(a[j] * w["value_rpe"][int(np.clip(p - o, -(max_span - 1), max_span - 1)) + max_span - 1]
                              for j, p in enumerate(window))
                    total = sum(_bn(t, ret["gamma"][i, h], ret["beta"][i, h],
                                    ret["moving_mean"][i, h], ret["moving_variance"][i, h], eps)
                                for i, t in enumerate((content, rpe)))
                    out[n, r, o, h * vd:(h + 1) * vd] = total
    if layer.axis == 1:
        out = out.transpose(0, 2, 1, 3)
    return out


def randomize_weights(layer, seed=0):
    """Random weights and non-trivial batch-norm statistics for every weight of `layer`."""
    rng = np.random.RandomState(seed)
    for v in layer.weights:
        shape = tuple(v.shape)
        name = v.path.split("/")[-1]
        if name == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        elif name == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif name in ("beta", "moving_mean"):
            value = rng.normal(0, 0.3, shape)
        else:
            value = rng.normal(0, 1.0 / np.sqrt(shape[0]) if name == "qkv_kernel" else 0.5, shape)
        v.assign(value.astype("float32"))

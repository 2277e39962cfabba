"""Position-sensitive axial attention (Axial-DeepLab, Wang et al., ECCV 2020)."""

from typing import Optional

import keras
from keras import ops

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
        # Similarities are stacked as [3, n, heads, length, window]: one BN per term and head.
        self.batch_norm_similarity = MultiAxisBatchNormalization(
            axis=(0, 2), name="batch_norm_similarity", **bn_args)
        # Retrieved outputs are stacked as [2, n, length, heads, value_dim].
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

    def _project(self, x, training):
        """[n, length, channels] -> q, k [n, length, heads, key_dim], v [..., value_dim]."""
        qkv = ops.matmul(x, self.qkv_kernel)
        qkv = self.batch_norm_qkv(qkv, training=training)
        kd = self.num_heads * self.key_dim
        q, k, v = ops.split(qkv, [kd, 2 * kd], axis=-1)
        length = ops.shape(x)[1]
        q = ops.reshape(q, (-1, length, self.num_heads, self.key_dim))
        k = ops.reshape(k, (-1, length, self.num_heads, self.key_dim))
        v = ops.reshape(v, (-1, length, self.num_heads, self.value_dim))
        return q, k, v

    def _attend_global(self, q, k, v, length, training):
        positions = ops.arange(length, dtype="int32")
        offsets = positions[None, :] - positions[:, None]  # [query o, key p] = p - o
        rows = ops.clip(offsets, -(self.max_span - 1), self.max_span - 1) + (self.max_span - 1)
        r_q = ops.take(self.query_rpe, rows, axis=0)  # [length, length, key_dim]
        r_k = ops.take(self.key_rpe, rows, axis=0)
        r_v = ops.take(self.value_rpe, rows, axis=0)
        similarity = ops.stack([
            ops.einsum("nlhd,nmhd->nhlm", q, k),
            ops.einsum("nlhd,lmd->nhlm", q, r_q),
            ops.einsum("nmhd,lmd->nhlm", k, r_k),
        ])
        similarity = ops.sum(self.batch_norm_similarity(similarity, training=training), axis=0)
        weights = ops.softmax(similarity, axis=-1)
        return ops.stack([
            ops.einsum("nhlm,nmhd->nlhd", weights, v),
            ops.einsum("nhlm,lmd->nlhd", weights, r_v),
        ])

    def _attend_local(self, q, k, v, length, training):
        radius = (self.span - 1) // 2
        window = ops.arange(self.span, dtype="int32") - radius  # offsets p - o
        key_positions = ops.arange(length, dtype="int32")[:, None] + window[None, :]
        valid = ops.logical_and(key_positions >= 0, key_positions < length)  # [length, span]
        gather_at = ops.clip(key_positions, 0, length - 1)
        k_win = ops.take(k, gather_at, axis=1)  # [n, length, span, heads, key_dim]
        v_win = ops.take(v, gather_at, axis=1)
        rows = window + (self.max_span - 1)
        r_q = ops.take(self.query_rpe, rows, axis=0)  # [span, key_dim]
        r_k = ops.take(self.key_rpe, rows, axis=0)
        r_v = ops.take(self.value_rpe, rows, axis=0)
        similarity = ops.stack([
            ops.einsum("nlhd,nlmhd->nhlm", q, k_win),
            ops.einsum("nlhd,md->nhlm", q, r_q),
            ops.einsum("nlmhd,md->nhlm", k_win, r_k),
        ])
        mask = valid[None, None, None, :, :]
        similarity = self.batch_norm_similarity(similarity, training=training, valid=mask)
        similarity = ops.sum(similarity, axis=0)
        similarity = ops.where(
            valid[None, None], similarity, _large_negative(self.compute_dtype))
        weights = ops.softmax(similarity, axis=-1)
        return ops.stack([
            ops.einsum("nhlm,nlmhd->nlhd", weights, v_win),
            ops.einsum("nhlm,md->nlhd", weights, r_v),
        ])

    def call(self, inputs, training=None):
        x = inputs
        if self.axis == 1:
            x = ops.transpose(x, (0, 2, 1, 3))
        shape = ops.shape(x)
        batch, other, length = shape[0], shape[1], shape[2]
        x = ops.reshape(x, (-1, length, x.shape[-1]))
        q, k, v = self._project(x, training)
        if self.span is None:
            retrieved = self._attend_global(q, k, v, length, training)
        else:
            retrieved = self._attend_local(q, k, v, length, training)
        retrieved = ops.sum(self.batch_norm_output(retrieved, training=training), axis=0)
        out = ops.reshape(retrieved, (batch, other, length, self.output_channels))
        if self.axis == 1:
            out = ops.transpose(out, (0, 2, 1, 3))
        return out

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

"""Position-sensitive axial attention (Axial-DeepLab, Wang et al., ECCV 2020)."""

from typing import Optional

import keras
from keras import ops

from axial_keras.layers.attention_kernels import attend, relative_embeddings
from axial_keras.layers.attention_statistics import (folded_affine, retrieved_moments,
                                                     similarity_moments)
from axial_keras.layers.normalization import MultiAxisBatchNormalization

# Offsets -(MAX_SPAN - 1) .. MAX_SPAN - 1 have their own relative embedding, i.e. a
# table of 2 * 255 - 1 = 509 rows, as in the official code (deeplab2), so that its
# checkpoints load and one set of weights serves any input size.
MAX_SPAN = 255

# Rows of the attention are processed in chunks whose largest tensor has about this many
# elements (4 MiB in float32), so the similarity, softmax and retrieval passes of a chunk
# run in cache; measured 3x faster than whole-tensor passes on a 2-core CPU (benchmarks/).
CHUNK_ELEMENTS = 1 << 20


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
    (`attention_kernels.banded_attention`), never as a masked [L, L] product; the global
    span costs O(L^2). Rows are attended in chunks of about `chunk_elements` elements
    that stay in cache. The batch statistics of the similarity terms come from q, k and
    the tables (`attention_statistics`), and at inference every batch norm is folded
    into scales, so the numbers equal the straightforward formulation
    (tests/test_banded_attention.py) at a fraction of its memory traffic.

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
        chunk_elements: None or int. Rows are attended in chunks (an `ops.map` loop)
            whose largest tensor has about this many elements; None attends all rows at
            once, with no loop in the graph (for converters that cannot take one).
            Results are the same either way; only speed and memory differ.
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
        chunk_elements: Optional[int] = CHUNK_ELEMENTS,
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
        self.chunk_elements = (None if chunk_elements is None
                               else _check_positive_int("chunk_elements", chunk_elements))
        self.kernel_initializer = (
            keras.initializers.get(kernel_initializer) if kernel_initializer is not None else None)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.rpe_initializer = keras.initializers.get(
            rpe_initializer or keras.initializers.TruncatedNormal(stddev=1.0))
        self.momentum = momentum
        self.epsilon = epsilon
        self.synchronized = synchronized
        bn_args = dict(momentum=momentum, epsilon=epsilon, dtype=self.dtype_policy)
        self.batch_norm_qkv = keras.layers.BatchNormalization(
            name="batch_norm_qkv", synchronized=synchronized, **bn_args)
        # One batch norm per similarity term and head, [3, heads], and one per retrieved
        # term, head and channel, [2, heads, value_dim], as deeplab2's weights hold them.
        self.batch_norm_similarity = MultiAxisBatchNormalization(
            name="batch_norm_similarity", **bn_args)
        self.batch_norm_output = MultiAxisBatchNormalization(
            name="batch_norm_retrieved_output", **bn_args)

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
        self.batch_norm_similarity.build((3, self.num_heads))
        self.batch_norm_output.build((2, self.num_heads, self.value_dim))

    def _radius(self, static_length: Optional[int]) -> Optional[int]:
        """Window radius, or None when every position attends the whole axis."""
        if self.span is None or (static_length is not None
                                 and self.span >= 2 * static_length - 1):
            return None
        return (self.span - 1) // 2

    def _project(self, x, training):
        """[B, H, W, C] -> normalized q, k [rows, heads, L, key_dim], v [.., value_dim]."""
        bn = self.batch_norm_qkv
        if training:
            qkv = ops.matmul(x, self.qkv_kernel)
            shape = ops.shape(qkv)
            qkv = bn(ops.reshape(qkv, (-1, shape[-2], shape[-1])), training=True)
            qkv = ops.reshape(qkv, shape)
        else:  # the batch norm is an affine map per channel: fold it into the kernel.
            scale, shift = folded_affine(bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance,
                                         bn.epsilon)
            kernel = ops.cast(ops.cast(self.qkv_kernel, "float32") * scale, self.compute_dtype)
            qkv = ops.matmul(x, kernel) + ops.cast(shift, self.compute_dtype)
        q, k, v = ops.split(qkv, [self.num_heads * self.key_dim,
                                  2 * self.num_heads * self.key_dim], axis=-1)
        return (self._to_rows(q, self.key_dim), self._to_rows(k, self.key_dim),
                self._to_rows(v, self.value_dim))

    def _to_rows(self, x, depth):
        """[B, H, W, heads * depth] -> [B * other, heads, L, depth] (rows along the axis)."""
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], shape[2], self.num_heads, depth))
        x = ops.transpose(x, (0, 2, 3, 1, 4) if self.axis == 1 else (0, 1, 3, 2, 4))
        return ops.reshape(x, (-1, self.num_heads, shape[self.axis], depth))

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

    def _output_affine(self, mean, variance, dtype):
        """Output batch norm as `y_v * scale[0] + y_rv * scale[1] + shift` ([h, 1, dv])."""
        scale, shift = self.batch_norm_output.scale_and_shift(mean, variance)  # [2, h, dv]
        return (ops.cast(scale, dtype)[:, :, None],
                ops.cast(ops.sum(shift, axis=0), dtype)[:, None])

    def call(self, inputs, training=None, query_stride: int = 1):
        """Attention along `axis`; with `query_stride` s > 1 only positions 0, s, 2s, ...
        of that axis are returned (`[..., ceil(L / s), ...]`, what `x[:, ::s]` keeps),
        at inference with a global span computed for those queries only."""
        shape = ops.shape(inputs)
        length = shape[self.axis]
        radius = self._radius(inputs.shape[self.axis])
        if query_stride > 1 and (training or radius is not None):
            # The batch statistics of training take every query; the banded kernel
            # attends whole blocks of queries: attend all, then keep the strided ones.
            out = self.call(inputs, training=training)
            return out[:, ::query_stride] if self.axis == 1 else out[:, :, ::query_stride]
        q, k, v = self._project(inputs, training)
        r_q, r_k, r_v = (relative_embeddings(table, length, radius, self.max_span)
                         for table in (self.query_rpe, self.key_rpe, self.value_rpe))

        # Logits BN(q_o.k_p) + BN(q_o.r^q_{p-o}) + BN(k_p.r^k_{p-o}), one batch norm per
        # term and head: `scale * term + shift`. A head's shifts add one constant to all
        # its logits, which the softmax ignores: their gradient is exactly zero, kept in
        # the graph (times 0) so that optimizers see zero, not None.
        similarity_bn = self.batch_norm_similarity
        if training:
            mean, variance = similarity_moments(q, k, r_q, r_k, length, radius,
                                                self.synchronized)
            similarity_bn.update_moving_statistics(mean, variance)
        else:
            mean, variance = similarity_bn.moving_mean, similarity_bn.moving_variance
        logit_scale, logit_shift = similarity_bn.scale_and_shift(mean, variance)
        logit_scale = logit_scale + 0.0 * logit_shift

        # y_o = BN(sum_p w_op v_p) + BN(sum_p w_op r^v_{p-o}), one batch norm per term,
        # head and channel; at inference it is applied inside each chunk of rows.
        def attention(epilogue):
            return attend(q, k, v, (r_q, r_k, r_v), logit_scale, radius, length,
                          self.chunk_elements, epilogue, query_stride)

        if training:
            y_v, y_rv = (ops.cast(y, "float32") for y in attention(lambda y_v, y_rv: (y_v, y_rv)))
            mean, variance = retrieved_moments(y_v, y_rv, self.synchronized)
            self.batch_norm_output.update_moving_statistics(mean, variance)
            scale, shift = self._output_affine(mean, variance, "float32")
            out = ops.cast(y_v * scale[0] + y_rv * scale[1] + shift, self.compute_dtype)
        else:
            scale, shift = self._output_affine(self.batch_norm_output.moving_mean,
                                               self.batch_norm_output.moving_variance,
                                               self.compute_dtype)
            out = attention(lambda y_v, y_rv: y_v * scale[0] + y_rv * scale[1] + shift)
        if query_stride > 1:
            shape = tuple((length + query_stride - 1) // query_stride if i == self.axis else n
                          for i, n in enumerate(shape))
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
            "chunk_elements": self.chunk_elements,
        })
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialAttention2D(keras.layers.Layer):
    """Height-axis attention, optional height stride, width-axis attention, width stride.

    The pair that replaces a 3x3 convolution in an axial bottleneck block (PAPER.md
    section 2). No projection sits between the two axes; the stride is applied on each
    axis right after that axis's attention (`x[:, ::s]`, output size `ceil(n / s)`). At
    inference with a global span only the kept positions attend, as queries (against
    every key): the same numbers for half the attention work.

    Args:
        num_heads: int. Heads of each axial layer.
        key_dim: int. Query/key depth per head.
        value_dim: int. Value depth per head (output channels `num_heads * value_dim`).
        span: None or odd int. Global or local window, on both axes.
        strides: int. 1 or 2.
        **kwargs: `AxialAttention` options (`max_span`, `momentum`, `epsilon`,
            `synchronized`, `kernel_regularizer`, `chunk_elements`) and base `Layer`
            arguments.

    Example:
    >>> layer = AxialAttention2D(num_heads=8, key_dim=4, value_dim=8, strides=2)
    >>> layer(keras.random.normal((1, 9, 12, 16))).shape
    (1, 5, 6, 64)
    """

    _ATTENTION_ARGS = ("max_span", "momentum", "epsilon", "synchronized", "kernel_regularizer",
                       "chunk_elements")

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
        x = self.height_axis(inputs, training=training, query_stride=self.strides)
        return self.width_axis(x, training=training, query_stride=self.strides)

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

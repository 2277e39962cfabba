"""Residual blocks and stems of Axial-ResNet (PAPER.md section 2).

Layouts follow the official implementation (deeplab2) where the paper is silent:
strided convolutions pad symmetrically by (kernel - 1) / 2 (output size ceil(n / s)),
the last batch norm of every residual branch starts with gamma = 0, and the stride of a
stage sits in its first block rather than in a stem max-pool.
"""

from typing import Optional

import keras
from keras import ops

from axial_keras.layers.axial_attention import CHUNK_ELEMENTS, AxialAttention2D
from axial_keras.layers.madds import layer_madds
from axial_keras.layers.normalization import folded_convolution, uses_batch_statistics


# Input channels from which a stride-1 convolution with batch statistics (training) runs
# as matrix products (`ConvNormAct`).
MATMUL_MIN_CHANNELS = 512


def _check_filters(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def _check_rank4(layer, input_shape):
    if len(input_shape) != 4:
        raise ValueError(
            f"{layer.name} expects a [batch, height, width, channels] input (rank 4), "
            f"got shape {tuple(input_shape)}.")
    if input_shape[-1] is None:
        raise ValueError(f"{layer.name}: the channel dimension must be known, got {input_shape}.")


@keras.saving.register_keras_serializable(package="axial_keras")
class ConvNormAct(keras.layers.Layer):
    """Bias-free 2D convolution, batch norm and an optional activation.

    Stride 1 uses 'same' padding; a strided convolution first pads (k_eff - 1) / 2 on
    every side (extra pixel bottom-right when even) and then runs 'valid', so a
    `k x k` stride-2 convolution maps n pixels to ceil(n / 2) with centred kernels.

    Args:
        filters: int. Output channels.
        kernel_size: int. Square kernel size.
        strides: int. Convolution stride.
        dilation_rate: int. Atrous rate (stride-1 convolutions).
        activation: str or None. Activation after the batch norm.
        gamma_initializer: initializer of the batch-norm scale ('zeros' for the last
            norm of a residual branch).
        kernel_regularizer: optional regularizer of the kernel.
        momentum: float. Batch-norm momentum.
        epsilon: float. Batch-norm epsilon.
        synchronized: bool. Synchronized batch norm across replicas.
        **kwargs: base `Layer` arguments.

    Example:
    >>> ConvNormAct(16, 3, strides=2, activation="relu")(keras.ops.ones((1, 9, 9, 3))).shape
    (1, 5, 5, 16)
    """

    def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1,
                 dilation_rate: int = 1, activation: Optional[str] = None,
                 gamma_initializer="ones", kernel_regularizer=None, momentum: float = 0.99,
                 epsilon: float = 1e-3, synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_filters("filters", filters)
        self.kernel_size = _check_filters("kernel_size", kernel_size)
        self.strides = _check_filters("strides", strides)
        self.dilation_rate = _check_filters("dilation_rate", dilation_rate)
        self.activation = activation
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.momentum, self.epsilon, self.synchronized = momentum, epsilon, synchronized
        effective = kernel_size + (kernel_size - 1) * (dilation_rate - 1)
        self.pad = None
        if strides > 1 and effective > 1:
            begin = (effective - 1) // 2
            end = effective - 1 - begin
            self.pad = keras.layers.ZeroPadding2D(
                ((begin, end), (begin, end)), name="pad", dtype=self.dtype_policy)
        self.conv = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, dilation_rate=dilation_rate,
            padding="same" if strides == 1 else "valid", use_bias=False,
            kernel_initializer="he_normal", kernel_regularizer=self.kernel_regularizer,
            name="conv", dtype=self.dtype_policy)
        self.batch_norm = keras.layers.BatchNormalization(
            momentum=momentum, epsilon=epsilon, synchronized=synchronized,
            gamma_initializer=self.gamma_initializer, name="batch_norm",
            dtype=self.dtype_policy)
        self.act = keras.activations.get(activation) if activation else None

    def build(self, input_shape):
        _check_rank4(self, input_shape)
        shape = input_shape
        if self.pad is not None:
            shape = self.pad.compute_output_shape(shape)
        self.conv.build(shape)
        self.batch_norm.build(self.conv.compute_output_shape(shape))

    def _convolve(self, x, kernel, fused: bool):
        """The convolution of `x` (padded for a strided one) with `kernel` [k, k, in, out].

        `fused`: the inference form, whose bias and activation TensorFlow fuses into its
        oneDNN convolution; it always runs the native op. With batch statistics (nothing
        to fuse: the norm sits between), a stride-1 convolution over at least
        `MATMUL_MIN_CHANNELS` input channels runs as k * k matrix products of shifted views
        (a 1x1 one as one product), whose gradients are matrix products too. Same sums in
        another order (rounding only). Measured in one process (AMD EPYC, AVX-512):
        Axial-SWideRNet-(1,1,1) inference at 1025x2049 runs 13.1 s native vs 13.6 s as
        matrix products in float32, 6.5 vs 7.4 s in mixed_bfloat16.
        """
        channels = kernel.shape[2]
        if fused or self.strides != 1 or channels < MATMUL_MIN_CHANNELS:
            return ops.conv(x, kernel, strides=self.strides, padding=self.conv.padding,
                            dilation_rate=self.dilation_rate)
        if self.kernel_size == 1:
            return ops.matmul(x, kernel[0, 0])
        total = (self.kernel_size - 1) * self.dilation_rate
        begin = total // 2   # 'same' padding of a stride-1 convolution
        shape = ops.shape(x)
        padded = ops.pad(x, [[0, 0], [begin, total - begin], [begin, total - begin], [0, 0]])
        out = None
        for i in range(self.kernel_size):
            for j in range(self.kernel_size):
                view = ops.slice(padded, [0, i * self.dilation_rate, j * self.dilation_rate, 0],
                                 [shape[0], shape[1], shape[2], channels])
                term = ops.matmul(view, kernel[i, j])
                out = term if out is None else out + term
        return out

    def call(self, inputs, training=None):
        x = ops.cast(self.pad(inputs) if self.pad is not None else inputs, self.compute_dtype)
        if uses_batch_statistics(self.batch_norm, training):
            kernel = ops.cast(self.conv.kernel, self.compute_dtype)
            x = self.batch_norm(self._convolve(x, kernel, fused=False), training=training)
        else:  # the inference batch norm is an affine map: fold it into the kernel.
            kernel, bias = folded_convolution(self.batch_norm, self.conv.kernel, self.compute_dtype)
            x = self._convolve(x, kernel, fused=True) + bias
        return self.act(x) if self.act is not None else x

    def compute_output_shape(self, input_shape):
        shape = self.pad.compute_output_shape(input_shape) if self.pad is not None else input_shape
        return self.conv.compute_output_shape(shape)

    def madds(self, input_shape) -> int:
        shape = self.pad.compute_output_shape(input_shape) if self.pad is not None else input_shape
        return layer_madds(self.conv, shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
            "dilation_rate": self.dilation_rate, "activation": self.activation,
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "momentum": self.momentum, "epsilon": self.epsilon,
            "synchronized": self.synchronized,
        })
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per sample while training.

    Kept samples are scaled by 1 / (1 - rate) so the expectation is unchanged
    (Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016).

    Args:
        rate: float in [0, 1). Probability of dropping the branch.
        seed: optional int seed.
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, rate: float = 0.0, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Drop-path `rate` must be in [0, 1), got {rate!r}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if rate > 0 else None

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype=inputs.dtype, seed=self.seed_generator)
        return inputs * (ops.floor(keep + noise) / keep)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


class _Bottleneck(keras.layers.Layer):
    """Shared residual plumbing: projection shortcut, drop path, add, activation."""

    def __init__(self, filters: int, strides: int = 1, drop_path_rate: float = 0.0,
                 activate_output: bool = True, activation: str = "relu",
                 kernel_regularizer=None, momentum: float = 0.99, epsilon: float = 1e-3,
                 synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_filters("filters", filters)
        self.activation = activation
        self.act = keras.activations.get(activation)
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2, got {strides!r}.")
        self.strides = strides
        self.drop_path_rate = drop_path_rate
        self.activate_output = activate_output
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.norm_args = dict(kernel_regularizer=self.kernel_regularizer, momentum=momentum,
                              epsilon=epsilon, synchronized=synchronized,
                              dtype=self.dtype_policy)
        self.momentum, self.epsilon, self.synchronized = momentum, epsilon, synchronized
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=self.dtype_policy)
        self.shortcut = None

    @property
    def output_channels(self) -> int:
        return 4 * self.filters

    def _branch_layers(self):
        raise NotImplementedError

    def build(self, input_shape):
        _check_rank4(self, input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: input_shape[-1]})
        if input_shape[-1] != self.output_channels:
            self.shortcut = ConvNormAct(self.output_channels, 1, strides=self.strides,
                                        name="shortcut", **self.norm_args)
            self.shortcut.build(input_shape)
        shape = input_shape
        for layer in self._branch_layers():
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def _residual(self, inputs, x, training):
        if self.shortcut is not None:
            shortcut = self.shortcut(inputs, training=training)
        elif self.strides > 1:
            shortcut = inputs[:, :: self.strides, :: self.strides]
        else:
            shortcut = inputs
        x = self.drop_path(x, training=training) + shortcut
        return self.act(x) if self.activate_output else x

    def call(self, inputs, training=None):
        x = inputs
        for layer in self._branch_layers():
            x = layer(x, training=training)
        return self._residual(inputs, x, training)

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in self._branch_layers():
            shape = layer.compute_output_shape(shape)
        return shape

    def madds(self, input_shape) -> int:
        total, shape = 0, input_shape
        for layer in self._branch_layers():
            total += layer_madds(layer, shape)
            shape = layer.compute_output_shape(shape)
        if self.shortcut is not None:
            total += layer_madds(self.shortcut, input_shape)
        return total

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters, "strides": self.strides,
            "drop_path_rate": self.drop_path_rate, "activate_output": self.activate_output,
            "activation": self.activation,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "momentum": self.momentum, "epsilon": self.epsilon,
            "synchronized": self.synchronized,
        })
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialBottleneck(_Bottleneck):
    """Axial-attention bottleneck block (PAPER.md section 2, Fig. 2).

    1x1 conv (`bottleneck_expansion * filters`) -> height-axis attention -> optional
    height stride -> width-axis attention -> optional width stride -> activation -> 1x1
    conv (`4 * filters`, batch-norm gamma initialized to 0) -> drop path -> + shortcut
    (1x1 strided projection when the shape changes) -> activation (ReLU; deeplab2's
    Axial-ResNet-50 uses the exact erf GeLU, `activation="gelu"`). Attention uses `num_heads`
    heads with `key_expansion * filters` query/key and `value_expansion * filters`
    value channels in total.

    Args:
        filters: int. Base width; the block outputs `4 * filters` channels.
        strides: int. 1 or 2, applied on each axis after its attention.
        span: None or odd int. Global or local attention window.
        num_heads: int. Attention heads.
        key_expansion: float. Query/key channels = key_expansion * filters.
        value_expansion: float. Value channels = value_expansion * filters.
        bottleneck_expansion: float. Channels of the first 1x1 conv per filter.
        drop_path_rate: float. Stochastic-depth rate of the residual branch.
        activate_output: bool. Apply the final activation (models that also need the
            pre-activation sum set False and apply it themselves).
        activation: str. Keras activation of the block ("relu"; "gelu" is the exact
            erf form, as `keras.activations.get("gelu")` gives it).
        max_span: int. Relative-position table reach (see `AxialAttention`).
        attention_chunk_elements: None or int. `AxialAttention`'s `chunk_elements`
            (None: all rows at once, no loop).
        kernel_regularizer, momentum, epsilon, synchronized: as in `ConvNormAct`.
        **kwargs: base `Layer` arguments.

    Example:
    >>> block = AxialBottleneck(filters=16, strides=2, span=7)
    >>> block(keras.random.normal((2, 16, 16, 32))).shape
    (2, 8, 8, 64)
    """

    def __init__(self, filters: int, strides: int = 1, span: Optional[int] = None,
                 num_heads: int = 8, key_expansion: float = 1.0, value_expansion: float = 2.0,
                 bottleneck_expansion: float = 2.0, max_span: int = 255,
                 attention_chunk_elements: Optional[int] = CHUNK_ELEMENTS, **kwargs):
        super().__init__(filters, strides, **kwargs)
        key_total = int(round(filters * key_expansion))
        value_total = int(round(filters * value_expansion))
        for what, total in (("query/key", key_total), ("value", value_total)):
            if total % num_heads:
                raise ValueError(
                    f"{what} channels ({total}) of a block with filters={filters} must be "
                    f"divisible by num_heads={num_heads}.")
        self.span, self.num_heads, self.max_span = span, num_heads, max_span
        self.attention_chunk_elements = attention_chunk_elements
        self.key_expansion, self.value_expansion = key_expansion, value_expansion
        self.bottleneck_expansion = bottleneck_expansion
        self.conv1 = ConvNormAct(int(round(filters * bottleneck_expansion)), 1,
                                 activation=self.activation, name="conv1", **self.norm_args)
        self.attention = AxialAttention2D(
            num_heads=num_heads, key_dim=key_total // num_heads,
            value_dim=value_total // num_heads, span=span, strides=strides,
            max_span=max_span, momentum=self.momentum, epsilon=self.epsilon,
            synchronized=self.synchronized, kernel_regularizer=self.kernel_regularizer,
            chunk_elements=attention_chunk_elements, name="attention", dtype=self.dtype_policy)
        self.attention_act = keras.layers.Activation(self.activation,
                                                     name="attention_activation",
                                                     dtype=self.dtype_policy)
        self.conv3 = ConvNormAct(self.output_channels, 1, gamma_initializer="zeros",
                                 name="conv3", **self.norm_args)

    def _branch_layers(self):
        return (self.conv1, self.attention, self.attention_act, self.conv3)

    def get_config(self):
        config = super().get_config()
        config.update({
            "span": self.span, "num_heads": self.num_heads, "max_span": self.max_span,
            "attention_chunk_elements": self.attention_chunk_elements,
            "key_expansion": self.key_expansion, "value_expansion": self.value_expansion,
            "bottleneck_expansion": self.bottleneck_expansion,
        })
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class ConvBottleneck(_Bottleneck):
    """ResNet bottleneck block: 1x1, 3x3 (strided / atrous), 1x1 (gamma 0), shortcut.

    Args:
        filters: int. Base width; the block outputs `4 * filters` channels.
        strides: int. Stride of the 3x3 convolution (1 or 2).
        dilation_rate: int. Atrous rate of the 3x3 convolution.
        drop_path_rate, activate_output, activation, kernel_regularizer, momentum,
        epsilon, synchronized: as in `AxialBottleneck`.
        **kwargs: base `Layer` arguments.

    Example:
    >>> ConvBottleneck(filters=8)(keras.random.normal((1, 8, 8, 32))).shape
    (1, 8, 8, 32)
    """

    def __init__(self, filters: int, strides: int = 1, dilation_rate: int = 1, **kwargs):
        super().__init__(filters, strides, **kwargs)
        self.dilation_rate = dilation_rate
        self.conv1 = ConvNormAct(filters, 1, activation=self.activation, name="conv1",
                                 **self.norm_args)
        self.conv2 = ConvNormAct(filters, 3, strides=strides, dilation_rate=dilation_rate,
                                 activation=self.activation, name="conv2", **self.norm_args)
        self.conv3 = ConvNormAct(self.output_channels, 1, gamma_initializer="zeros",
                                 name="conv3", **self.norm_args)

    def _branch_layers(self):
        return (self.conv1, self.conv2, self.conv3)

    def get_config(self):
        config = super().get_config()
        config.update({"dilation_rate": self.dilation_rate})
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class BasicBlock(_Bottleneck):
    """Wide-ResNet basic block: two 3x3 convolutions (SWideRNet, MaX-DeepLab-L).

    3x3 conv (`4 * filters`, strided / atrous) + BN + activation -> 3x3 conv
    (`4 * filters`, batch-norm gamma initialized to 0) -> drop path -> + shortcut (1x1
    strided projection when the channels change) -> optional activation. The
    `4 * filters` width keeps deeplab2's convention: a stage's base width `f` gives
    `[4f, 4f]` basic blocks where bottlenecks are `[f, f, 4f]`.

    Args:
        filters: int. Base width; both convolutions output `4 * filters` channels.
        strides: int. Stride of the first convolution (1 or 2).
        dilation_rate: int. Atrous rate of the first convolution.
        second_dilation_rate: int or None. Atrous rate of the second convolution
            (None: `dilation_rate`).
        drop_path_rate, activate_output, activation, kernel_regularizer, momentum,
        epsilon, synchronized: as in `AxialBottleneck`.
        **kwargs: base `Layer` arguments.

    Example:
    >>> BasicBlock(filters=4, strides=2)(keras.random.normal((1, 9, 9, 8))).shape
    (1, 5, 5, 16)
    """

    def __init__(self, filters: int, strides: int = 1, dilation_rate: int = 1,
                 second_dilation_rate: Optional[int] = None, **kwargs):
        super().__init__(filters, strides, **kwargs)
        self.dilation_rate = dilation_rate
        self.second_dilation_rate = (dilation_rate if second_dilation_rate is None
                                     else second_dilation_rate)
        self.conv1 = ConvNormAct(self.output_channels, 3, strides=strides,
                                 dilation_rate=dilation_rate, activation=self.activation,
                                 name="conv1", **self.norm_args)
        self.conv2 = ConvNormAct(self.output_channels, 3, dilation_rate=self.second_dilation_rate,
                                 gamma_initializer="zeros", name="conv2", **self.norm_args)

    def _branch_layers(self):
        return (self.conv1, self.conv2)

    def get_config(self):
        config = super().get_config()
        config.update({"dilation_rate": self.dilation_rate,
                       "second_dilation_rate": self.second_dilation_rate})
        return config


class _Stem(keras.layers.Layer):
    """A sequence of sub-layers with an optional final activation."""

    def __init__(self, filters: int, activate_output: bool = True, activation: str = "relu",
                 kernel_regularizer=None, momentum: float = 0.99, epsilon: float = 1e-3,
                 synchronized: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_filters("filters", filters)
        self.activate_output = activate_output
        self.activation = activation
        self.act = keras.activations.get(activation)
        self.norm_args = dict(kernel_regularizer=keras.regularizers.get(kernel_regularizer),
                              momentum=momentum, epsilon=epsilon, synchronized=synchronized)

    def build(self, input_shape):
        _check_rank4(self, input_shape)
        shape = input_shape
        for layer in self.sublayers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.sublayers:
            x = layer(x, training=training)
        return self.act(x) if self.activate_output else x

    def compute_output_shape(self, input_shape):
        for layer in self.sublayers:
            input_shape = layer.compute_output_shape(input_shape)
        return input_shape

    def madds(self, input_shape) -> int:
        total = 0
        for layer in self.sublayers:
            total += layer_madds(layer, input_shape)
            input_shape = layer.compute_output_shape(input_shape)
        return total

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters, "activate_output": self.activate_output,
            "activation": self.activation, **self.norm_args,
            "kernel_regularizer": keras.regularizers.serialize(self.norm_args["kernel_regularizer"]),
        })
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class ConvStem(_Stem):
    """ResNet stem: a 7x7 stride-2 convolution with batch norm (and activation).

    By default, as in the official implementation (and its checkpoints), the stem's
    3x3 max-pool is replaced by the stride of the first residual block that follows,
    so the stem outputs stride 2. `pool=True` keeps ResNet's 3x3 stride-2 max-pool as
    the paper describes it (stride 4 out; the output is then always activated).
    `kernel_size=3` is the SWideRNet / MaX-DeepLab-L stem (deeplab2's `wider_resnet`:
    a 3x3 stride-2 convolution and batch norm, not activated).

    Args:
        filters: int. Output channels (64 in ResNet-50).
        kernel_size: int. Square kernel of the stride-2 convolution (7; 3 for SWideRNet).
        pool: bool. Keep the 3x3 stride-2 max-pool.
        activate_output: bool. Apply the activation.
        **kwargs: `activation`, `ConvNormAct` batch-norm options and base `Layer`
            arguments.
    """

    def __init__(self, filters: int = 64, kernel_size: int = 7, pool: bool = False, **kwargs):
        super().__init__(filters, **kwargs)
        self.pool = pool
        self.kernel_size = _check_filters("kernel_size", kernel_size)
        self.conv = ConvNormAct(filters, kernel_size, strides=2, name="conv",
                                dtype=self.dtype_policy, **self.norm_args)
        self.sublayers = (self.conv,)
        if pool:
            self.sublayers += (keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                                         name="pool", dtype=self.dtype_policy),)

    def call(self, inputs, training=None):
        x = self.conv(inputs, training=training)
        if self.pool:
            # A monotone activation commutes with max-pooling; apply it before, as
            # ResNet does.
            return self.sublayers[1](self.act(x))
        return self.act(x) if self.activate_output else x

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "pool": self.pool})
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class InceptionStem(_Stem):
    """Inception stem: 3x3 stride-2 conv, 3x3 conv (activation after each), 3x3 conv + BN.

    The stem of the official Axial-DeepLab backbones ("resnet_beta"): `filters`,
    `filters` and `2 * filters` channels, output stride 2.

    Args:
        filters: int. Channels of the first two convolutions (64 in the paper).
        activate_output: bool. Apply the final activation.
        **kwargs: `activation` ("relu"; "gelu", exact, for deeplab2's Axial-ResNet-50),
            batch-norm options and base `Layer` arguments.
    """

    def __init__(self, filters: int = 64, **kwargs):
        super().__init__(filters, **kwargs)
        args = dict(dtype=self.dtype_policy, **self.norm_args)
        self.conv1 = ConvNormAct(filters, 3, strides=2, activation=self.activation,
                                 name="conv1", **args)
        self.conv2 = ConvNormAct(filters, 3, activation=self.activation, name="conv2", **args)
        self.conv3 = ConvNormAct(2 * filters, 3, name="conv3", **args)
        self.sublayers = (self.conv1, self.conv2, self.conv3)


@keras.saving.register_keras_serializable(package="axial_keras")
class FullAxialStem(_Stem):
    """Full-axial stem: three axial bottleneck blocks, the first with stride 2.

    Replaces the convolutional stem in Full Axial-ResNet (PAPER.md section 2); a local
    `span` keeps the cost of these high-resolution blocks down.

    Args:
        filters: int. Base width of the blocks (output `4 * filters` channels).
        span: None or odd int. Attention window of the three blocks.
        num_heads: int. Attention heads.
        activate_output: bool. Apply the final activation.
        **kwargs: `activation`, `AxialBottleneck` options (`key_expansion`, `value_expansion`,
            `bottleneck_expansion`, `drop_path_rate`, `max_span`,
            `attention_chunk_elements`, batch-norm options) and base `Layer` arguments.
    """

    _BLOCK_ARGS = ("key_expansion", "value_expansion", "bottleneck_expansion",
                   "drop_path_rate", "max_span", "attention_chunk_elements")

    def __init__(self, filters: int = 16, span: Optional[int] = None, num_heads: int = 8,
                 **kwargs):
        block_args = {k: kwargs.pop(k) for k in self._BLOCK_ARGS if k in kwargs}
        super().__init__(filters, **kwargs)
        self.span, self.num_heads = span, num_heads
        self.block_args = block_args
        self.sublayers = tuple(
            AxialBottleneck(filters, strides=2 if i == 0 else 1, span=span,
                            num_heads=num_heads, activate_output=i < 2,
                            activation=self.activation,
                            name=f"block{i + 1}", dtype=self.dtype_policy,
                            **block_args, **self.norm_args)
            for i in range(3))

    def get_config(self):
        config = super().get_config()
        config.update({"span": self.span, "num_heads": self.num_heads, **self.block_args})
        return config

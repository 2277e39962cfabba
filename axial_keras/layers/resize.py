"""Align-corners bilinear resizing, padding to a stride and cropping, with dynamic sizes.

Panoptic-DeepLab (and deeplab2) upsamples with `align_corners=True`: output pixel i
samples input position i * (in - 1) / (out - 1), so corners map onto corners. With
sizes of the form s * k + 1 (97, 129, 1025, 2049) the stride-s grid lines up exactly.
"""

import keras
from keras import ops


def _axis_weights(out_size, in_size):
    out_f = ops.cast(out_size, "float32")
    in_f = ops.cast(in_size, "float32")
    scale = (in_f - 1.0) / ops.maximum(out_f - 1.0, 1.0)
    position = ops.cast(ops.arange(out_size), "float32") * scale
    low = ops.minimum(ops.cast(ops.floor(position), "int32"), in_size - 1)
    high = ops.minimum(low + 1, in_size - 1)
    return low, high, position - ops.cast(low, "float32")


def resize_align_corners(x, height, width):
    """Bilinear resize of `[batch, h, w, channels]` to `[batch, height, width, channels]`.

    Args:
        x: tensor `[batch, h, w, channels]`.
        height: int or scalar tensor. Output height.
        width: int or scalar tensor. Output width.

    Returns:
        The resized tensor, in `x`'s dtype.
    """
    shape = ops.shape(x)
    y0, y1, fy = _axis_weights(height, shape[1])
    x0, x1, fx = _axis_weights(width, shape[2])
    fy = ops.cast(fy, x.dtype)[None, :, None, None]
    fx = ops.cast(fx, x.dtype)[None, None, :, None]
    top = ops.take(x, y0, axis=1)
    rows = top + (ops.take(x, y1, axis=1) - top) * fy
    left = ops.take(rows, x0, axis=2)
    return left + (ops.take(rows, x1, axis=2) - left) * fx


@keras.saving.register_keras_serializable(package="axial_keras")
class ResizeAlignCorners(keras.layers.Layer):
    """Resizes `x` to the spatial size of `reference` (align-corners bilinear).

    With `rescale_offsets=True`, `x` holds (dy, dx) offsets in pixels of its own grid;
    they are multiplied by (H - 1) / (h - 1) and (W - 1) / (w - 1) so they stay in
    pixels of the output grid, as deeplab2's `resize_and_rescale_offsets` does.

    Args:
        rescale_offsets: bool. Treat the two channels as (dy, dx) offsets.
        **kwargs: base `Layer` arguments.

    Call args:
        inputs: `[x, reference]`, `x` of shape `[batch, h, w, c]` and `reference` of
            shape `[batch, H, W, ...]`.
    """

    def __init__(self, rescale_offsets: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.rescale_offsets = rescale_offsets

    def call(self, inputs):
        x, reference = inputs
        height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        out = resize_align_corners(x, height, width)
        if self.rescale_offsets:
            shape = ops.shape(x)
            scale_y = ops.cast(height - 1, "float32") / ops.cast(ops.maximum(shape[1] - 1, 1), "float32")
            scale_x = ops.cast(width - 1, "float32") / ops.cast(ops.maximum(shape[2] - 1, 1), "float32")
            out = out * ops.cast(ops.stack([scale_y, scale_x]), out.dtype)
        return out

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"rescale_offsets": self.rescale_offsets})
        return config


def _padded(size, stride):
    return None if size is None else -(-(size - 1) // stride) * stride + 1


@keras.saving.register_keras_serializable(package="axial_keras")
class PadToStride(keras.layers.Layer):
    """Pads height and width (bottom/right, with `value`) up to `stride * k + 1`.

    Any image size then lines up with the stride grid (see module docstring); sizes
    already of that form are left untouched.

    Args:
        stride: int. The output stride of the network that follows.
        value: float. Pad value.
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, stride: int = 16, value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.value = float(value)

    def call(self, x):
        shape = ops.shape(x)
        pad_h = (-(shape[1] - 1)) % self.stride
        pad_w = (-(shape[2] - 1)) % self.stride
        return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], constant_values=self.value)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], _padded(input_shape[1], self.stride),
                _padded(input_shape[2], self.stride), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update({"stride": self.stride, "value": self.value})
        return config


@keras.saving.register_keras_serializable(package="axial_keras")
class CropToReference(keras.layers.Layer):
    """Crops `x` (top-left anchored) to the spatial size of `reference`.

    Call args:
        inputs: `[x, reference]`.
    """

    def call(self, inputs):
        x, reference = inputs
        shape = ops.shape(reference)
        return x[:, : shape[1], : shape[2]]

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[-1])

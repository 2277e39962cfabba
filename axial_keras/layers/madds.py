"""Multiply-add counting for one layer at a concrete input shape."""

import keras


def layer_madds(layer: keras.layers.Layer, input_shape) -> int:
    """Multiply-adds of one call of `layer` on `input_shape` (batch included).

    Convolutions and dense layers are counted from their kernels; layers of this
    package report their own count through a `madds(input_shape)` method; anything
    else (normalization, activations, pooling, reshapes) counts as zero, as the paper's
    M-Adds do.
    """
    if hasattr(layer, "madds"):
        return int(layer.madds(input_shape))
    batch = input_shape[0] or 1
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
        out = layer.compute_output_shape(input_shape)
        kh, kw = layer.kernel_size
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            per_pixel = kh * kw * input_shape[-1] * layer.depth_multiplier
        else:
            per_pixel = kh * kw * input_shape[-1] * out[-1]
        return int(batch * out[1] * out[2] * per_pixel)
    if isinstance(layer, keras.layers.Dense):
        positions = 1
        for d in input_shape[1:-1]:
            positions *= d
        return int(batch * positions * input_shape[-1] * layer.units)
    return 0

"""Multiply-add counter for the models of this package."""

from typing import Sequence

import keras

from axial_keras.layers.madds import layer_madds


def count_madds(model: keras.Model, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on one image of `input_shape` (h, w, c).

    The model is rebuilt from its config at that fixed size (its weights are not
    needed) and every top-level layer is counted with `layer_madds`: convolutions,
    dense layers and the attention einsums (projections, three similarity terms, two
    retrieval terms), as the paper's M-Adds count them.

    Example:
    >>> count_madds(get_model("axial_resnet_s", num_classes=1000), (224, 224, 3))
    """
    config = dict(model.get_config(), input_shape=list(input_shape))
    fixed = model.__class__.from_config(config)
    total = 0
    for layer in fixed.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                total += layer_madds(layer, (1,) + tuple(tensor.shape[1:]))
    return total

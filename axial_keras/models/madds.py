"""Multiply-add counter for the models of this package."""

from typing import Sequence

import keras

from axial_keras.layers.madds import layer_madds


def functional_madds(model: keras.Model, input_shape: Sequence[int]) -> int:
    """Multiply-adds of a functional model of this package on `input_shape` (batch first).

    The model is rebuilt from its config at that fixed size (its weights are not
    needed) and every layer of the graph is counted with `layer_madds` (nested models
    count themselves the same way).
    """
    fixed = model.__class__.from_config(dict(model.get_config(), input_shape=list(input_shape[1:])))
    total = 0
    for layer in fixed.layers:
        for node in layer._inbound_nodes:
            shapes = [(input_shape[0],) + tuple(t.shape[1:]) for t in node.input_tensors]
            if not shapes:
                continue
            total += layer_madds(layer, shapes[0] if len(shapes) == 1 else shapes)
    return total


def count_madds(model: keras.Model, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on one image of `input_shape` (h, w, c).

    Convolutions, dense layers and the attention einsums (projections, three
    similarity terms, two retrieval terms) are counted, as the paper's M-Adds are;
    normalization, activations, softmax and resizing are not.

    Example:
    >>> count_madds(get_model("axial_resnet_s", num_classes=1000), (224, 224, 3))
    """
    return layer_madds(model, (1,) + tuple(input_shape))

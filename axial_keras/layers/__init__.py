"""Keras layers: axial attention, residual blocks and stems."""

from axial_keras.layers.axial_attention import MAX_SPAN, AxialAttention, AxialAttention2D
from axial_keras.layers.blocks import (AxialBottleneck, ConvBottleneck, ConvNormAct, ConvStem,
                                       DropPath, FullAxialStem, InceptionStem)

__all__ = [
    "MAX_SPAN", "AxialAttention", "AxialAttention2D", "AxialBottleneck", "ConvBottleneck",
    "ConvNormAct", "ConvStem", "DropPath", "FullAxialStem", "InceptionStem",
]

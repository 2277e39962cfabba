"""Axial-ResNet backbone, its classifier and Axial-DeepLab tasks, the variant registry and
the multiply-add counter."""

from axial_keras.models.axial_deeplab import AxialDeepLab
from axial_keras.models.axial_resnet_backbone import AxialResNetBackbone
from axial_keras.models.axial_resnet_classifier import AxialResNetClassifier
from axial_keras.models.madds import count_madds
from axial_keras.models.presets import from_preset, list_presets, save_to_preset
from axial_keras.models.registry import (AxialDeepLabConfig, AxialResNetConfig, get_model,
                                         list_models, register)

__all__ = ["AxialDeepLab", "AxialDeepLabConfig", "AxialResNetBackbone", "AxialResNetClassifier",
           "AxialResNetConfig", "count_madds", "from_preset", "get_model", "list_models",
           "list_presets", "register", "save_to_preset"]

"""Axial-ResNet and Axial-DeepLab models, the variant registry and the multiply-add counter."""

from axial_keras.models.axial_deeplab import AxialDeepLab
from axial_keras.models.axial_resnet import AxialResNet
from axial_keras.models.madds import count_madds
from axial_keras.models.registry import get_model, list_models, register

__all__ = ["AxialDeepLab", "AxialResNet", "count_madds", "get_model", "list_models", "register"]

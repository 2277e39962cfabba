"""Image classification task on an Axial-ResNet (or any endpoint-dict) backbone."""

from typing import Sequence

import keras

from axial_keras.layers.madds import layer_madds
from axial_keras.models.predict_jit import PredictJitCompile


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialResNetClassifier(PredictJitCompile, keras.Model):
    """Global average pooling of the backbone's last endpoint and a dense layer of logits.

    The classification model of Axial-ResNet (Wang et al., Axial-DeepLab, ECCV 2020):
    the backbone's `feature_key` endpoint (`res5`, after the last ReLU) is averaged over
    its positions and projected to `num_classes` logits. The input is the backbone's.

    Args:
        backbone: keras.Model. A backbone whose output is a dict holding `feature_key`,
            e.g. an `AxialResNetBackbone`.
        num_classes: int. Number of classes (logits out, no softmax).
        feature_key: str. The pooled endpoint.
        kernel_regularizer: optional regularizer of the dense kernel.
        **kwargs: `keras.Model` arguments (`name`, `dtype`).

    Example:
    >>> backbone = AxialResNetBackbone(width_multiplier=0.125, num_blocks=(1, 1, 1, 1),
    ...                                num_heads=4, stem_width_multiplier=0.25)
    >>> AxialResNetClassifier(backbone, num_classes=10)(keras.ops.zeros((2, 32, 32, 3))).shape
    (2, 10)
    """

    @property
    def xla_predict_faster(self) -> bool:
        """The backbone's (`AxialResNetBackbone.xla_predict_faster`): the dense head adds
        next to nothing."""
        return bool(getattr(self.backbone, "xla_predict_faster", False))

    def __init__(self, backbone: keras.Model, num_classes: int, feature_key: str = "res5",
                 kernel_regularizer=None, **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        if not isinstance(backbone.output, dict) or feature_key not in backbone.output:
            keys = sorted(backbone.output) if isinstance(backbone.output, dict) else "not a dict"
            raise ValueError(f"The backbone's outputs ({keys}) have no {feature_key!r} endpoint.")
        dtype = keras.dtype_policies.get(kwargs.pop("dtype", None))
        regularizer = keras.regularizers.get(kernel_regularizer)
        self.avg_pool = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype=dtype)
        self.classifier_head = keras.layers.Dense(num_classes, kernel_regularizer=regularizer,
                                                  name="classifier", dtype=dtype)
        inputs = backbone.input
        logits = self.classifier_head(self.avg_pool(backbone(inputs)[feature_key]))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        # A functional model ignores `dtype=`; its layers above were given the policy.
        self.dtype_policy = dtype
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_key = feature_key
        self.kernel_regularizer = regularizer

    def madds(self, input_shape: Sequence[int]) -> int:
        """Multiply-adds on a `[batch, height, width, channels]` input."""
        features = self.backbone.output[self.feature_key]
        return (layer_madds(self.backbone, input_shape)
                + layer_madds(self.classifier_head, (input_shape[0], features.shape[-1])))

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "feature_key": self.feature_key,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }

    @classmethod
    def from_config(cls, config: dict) -> "AxialResNetClassifier":
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)

"""Axial-DeepLab: Panoptic-DeepLab decoders and heads on a stride-16 backbone."""

from typing import Dict, Optional, Sequence

import keras
from keras import ops

from axial_keras.labels import CITYSCAPES, PanopticLabels
from axial_keras.layers.decoder import PanopticDecoder, PanopticHead
from axial_keras.layers.resize import CropToReference, PadToStride, ResizeAlignCorners
from axial_keras.models.madds import functional_madds
from axial_keras.models.predict_jit import PredictJitCompile
from axial_keras.pixels import MID_GREY

OUTPUT_KEYS = ("semantic_logits", "center_heatmap", "center_offsets")
OUTPUT_STRIDE = 16
# The backbone endpoints the decoders read, highest level first, with their strides.
FEATURE_STRIDES = {"res5": 16, "res3": 8, "res2": 4}


def check_backbone_strides(backbone: keras.Model, strides: Dict[str, int]) -> None:
    """Raises a ValueError unless `backbone` outputs a dict with `strides`' keys at those strides.

    Args:
        backbone: keras.Model. A model with one image input and a dict of endpoints.
        strides: dict. Endpoint name -> required stride.
    """
    outputs = backbone.output
    keys = sorted(outputs) if isinstance(outputs, dict) else []
    missing = [k for k in strides if k not in keys]
    if missing:
        raise ValueError(f"The backbone's outputs lack {missing} (it has {keys or 'no dict'}).")
    size = 4 * max(strides.values())
    spatial = tuple(d or size for d in backbone.input.shape[1:3])
    shapes = backbone.compute_output_shape((1,) + spatial + (backbone.input.shape[-1],))
    wrong = {k: tuple(shapes[k][1:3]) for k, stride in strides.items()
             if tuple(shapes[k][1:3]) != tuple(-(-d // stride) for d in spatial)}
    if wrong:
        raise ValueError(f"Backbone endpoints must have strides {strides}; on a {spatial} "
                         f"input they are {wrong} "
                         f"(an AxialResNetBackbone needs output_stride={OUTPUT_STRIDE}).")


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialDeepLab(PredictJitCompile, keras.Model):
    """Axial-DeepLab panoptic segmentation model (Wang et al., ECCV 2020).

    An Axial-ResNet backbone (inception stem, output stride 16, no ASPP) feeds two
    Panoptic-DeepLab decoders: a semantic decoder (1x1 projection of the stride-16
    feature, fused with stride-8 and stride-4 features projected to 64 and 32
    channels, 256 channels) and an instance decoder (128 channels, projections 32 and
    16). Heads: semantic logits (5x5 separable conv of 256, then 1x1), one centre
    heatmap channel and two centre-offset channels (5x5 separable conv of 32, then
    1x1). The stride-4 predictions are upsampled to the input size with align-corners
    bilinear resizing and the offsets rescaled, as deeplab2 does.

    Input: RGB pixel values in [0, 255], `[batch, height, width, 3]`, any size; the
    model normalizes (x / MID_GREY - 1), pads the image bottom/right to 16k + 1 (with the
    value of a mid-grey pixel) so the stride grid lines up, and crops the outputs back.

    Output: dict with `semantic_logits [B, H, W, num_classes]`, `center_heatmap
    [B, H, W, 1]` and `center_offsets [B, H, W, 2]` as (dy, dx) in pixels.

    Training: `model.compile(optimizer)` with no loss uses Panoptic-DeepLab's loss
    (bootstrapped cross-entropy, centre MSE x 200, offset L1 x 0.01) computed from
    `(image, panoptic_label)` batches by `compute_loss`, so `model.fit(dataset)` needs
    no custom loop.

    Args:
        backbone: keras.Model. Any backbone whose output dict holds `res2`, `res3` and
            `res5` at strides 4, 8 and 16 (e.g. an inception-stem
            `AxialResNetBackbone(output_stride=16)`); it sees normalized pixels.
        labels: PanopticLabels. The label space (classes, thing flags, label divisor,
            void); `semantic_logits` has `labels.num_classes` channels.
        projection_channels: int. 1x1 projection of the semantic branch (256).
        semantic_decoder_channels, semantic_low_level_channels, semantic_head_channels:
            semantic branch widths (256, (64, 32), 256).
        instance_projection_channels, instance_decoder_channels,
        instance_low_level_channels, instance_head_channels: instance branch widths
            (256, 128, (32, 16), 32).
        input_shape: tuple. `(height, width, 3)`, None for dynamic sizes.
        momentum, epsilon, synchronized_bn: batch-norm options of the decoders.
        **kwargs: `keras.Model` arguments (`name`, `dtype`).

    Example:
    >>> model = get_model("axial_deeplab_tiny", num_classes=12, thing_class_ids=range(2, 12))
    >>> out = model(keras.ops.zeros((1, 65, 65, 3)))
    >>> out["semantic_logits"].shape
    (1, 65, 65, 12)
    """

    def __init__(
        self,
        backbone: keras.Model,
        labels: PanopticLabels = CITYSCAPES,
        projection_channels: int = 256,
        semantic_decoder_channels: int = 256,
        semantic_low_level_channels: Sequence[int] = (64, 32),
        semantic_head_channels: int = 256,
        instance_projection_channels: int = 256,
        instance_decoder_channels: int = 128,
        instance_low_level_channels: Sequence[int] = (32, 16),
        instance_head_channels: int = 32,
        input_shape: Sequence[Optional[int]] = (None, None, 3),
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        synchronized_bn: bool = False,
        **kwargs,
    ):
        if not isinstance(labels, PanopticLabels):
            raise ValueError(f"`labels` must be a PanopticLabels, got {type(labels).__name__}.")
        check_backbone_strides(backbone, FEATURE_STRIDES)
        dtype = keras.dtype_policies.get(kwargs.pop("dtype", None))
        norm = dict(momentum=momentum, epsilon=epsilon, synchronized=synchronized_bn,
                    dtype=dtype)

        images = keras.Input(shape=tuple(input_shape), name="images")
        x = keras.layers.Rescaling(1.0 / MID_GREY, offset=-1.0, name="normalize",
                                   dtype=dtype)(images)
        x = PadToStride(OUTPUT_STRIDE, name="pad", dtype=dtype)(x)
        features = backbone(x)
        levels = [features[key] for key in FEATURE_STRIDES]
        semantic = PanopticDecoder(projection_channels, semantic_low_level_channels,
                                   semantic_decoder_channels, name="semantic_decoder",
                                   **norm)(levels)
        instance = PanopticDecoder(instance_projection_channels, instance_low_level_channels,
                                   instance_decoder_channels, name="instance_decoder",
                                   **norm)(levels)
        raw = {
            "semantic_logits": PanopticHead(semantic_head_channels, labels.num_classes,
                                            name="semantic_head", **norm)(semantic),
            "center_heatmap": PanopticHead(instance_head_channels, 1,
                                           name="center_head", **norm)(instance),
            "center_offsets": PanopticHead(instance_head_channels, 2,
                                           name="offset_head", **norm)(instance),
        }
        outputs = {}
        for key in OUTPUT_KEYS:
            resized = ResizeAlignCorners(rescale_offsets=key == "center_offsets",
                                         name=f"upsample_{key}", dtype=dtype)([raw[key], x])
            outputs[key] = CropToReference(name=f"crop_{key}", dtype=dtype)([resized, images])
        super().__init__(inputs=images, outputs=outputs, **kwargs)
        # A functional model ignores `dtype=`; its layers above were given the policy.
        self.dtype_policy = dtype

        self.backbone = backbone
        self.labels = labels
        self.widths = dict(
            projection_channels=projection_channels,
            semantic_decoder_channels=semantic_decoder_channels,
            semantic_low_level_channels=list(semantic_low_level_channels),
            semantic_head_channels=semantic_head_channels,
            instance_projection_channels=instance_projection_channels,
            instance_decoder_channels=instance_decoder_channels,
            instance_low_level_channels=list(instance_low_level_channels),
            instance_head_channels=instance_head_channels)
        self.image_shape = tuple(input_shape)
        self.momentum, self.epsilon, self.synchronized_bn = momentum, epsilon, synchronized_bn
        self.panoptic_loss = None

    # `predict` keeps Keras' jit_compile (no XLA on a CPU): axial_deeplab_s's XLA forward
    # at 513x513 took 1.5x the graph's time with global attention, 1.8x with span 65.
    xla_predict_faster = False

    def raw_outputs(self, images, training=False):
        """Stride-4 head outputs before upsampling (for parity checks), as a dict."""
        layer_outputs = {key: self.get_layer(name).output for key, name in
                         (("semantic_logits", "semantic_head"), ("center_heatmap", "center_head"),
                          ("center_offsets", "offset_head"))}
        return keras.Model(self.inputs[0], layer_outputs)(images, training=training)

    def compile(self, optimizer="adam", loss=None, panoptic_loss_args: Optional[dict] = None,
                **kwargs):
        """Compiles; with `loss=None` training uses `PanopticDeepLabLoss` on panoptic labels.

        Args:
            optimizer: a Keras optimizer.
            loss: None for the Panoptic-DeepLab loss, or any Keras loss(es) on the outputs.
            panoptic_loss_args: dict. Extra `PanopticDeepLabLoss` arguments (`sigma`,
                `small_instance_area`, term weights, `top_k_percent`).
            **kwargs: `keras.Model.compile` arguments.
        """
        from axial_keras.panoptic.losses import PanopticDeepLabLoss

        self.panoptic_loss = None if loss is not None else PanopticDeepLabLoss(
            self.labels, **(panoptic_loss_args or {}))
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.panoptic_loss is None:
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                        training=training)
        loss = self.panoptic_loss(y, y_pred)
        if self.losses:
            loss = loss + ops.sum(ops.stack(self.losses))
        return loss

    def madds(self, input_shape) -> int:
        """Multiply-adds on a `[batch, height, width, 3]` input."""
        return functional_madds(self, input_shape)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "labels": self.labels.get_config(),
            **self.widths,
            "input_shape": list(self.image_shape),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "synchronized_bn": self.synchronized_bn,
        }

    @classmethod
    def from_config(cls, config: dict) -> "AxialDeepLab":
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        config["labels"] = PanopticLabels.from_config(config["labels"])
        return cls(**config)

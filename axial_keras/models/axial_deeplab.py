"""Axial-DeepLab: an Axial-ResNet backbone with Panoptic-DeepLab decoders and heads."""

from typing import Optional, Sequence

import keras
from keras import ops

from axial_keras.layers.decoder import PanopticDecoder, PanopticHead
from axial_keras.layers.resize import CropToReference, PadToStride, ResizeAlignCorners
from axial_keras.models.axial_resnet import AxialResNet
from axial_keras.models.madds import functional_madds

CITYSCAPES_THING_CLASS_IDS = tuple(range(11, 19))
OUTPUT_KEYS = ("semantic_logits", "center_heatmap", "center_offsets")


@keras.saving.register_keras_serializable(package="axial_keras")
class AxialDeepLab(keras.Model):
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
    model normalizes (x / 127.5 - 1), pads the image bottom/right to 16k + 1 (with the
    value of a mid-grey pixel) so the stride grid lines up, and crops the outputs back.

    Output: dict with `semantic_logits [B, H, W, num_classes]`, `center_heatmap
    [B, H, W, 1]` and `center_offsets [B, H, W, 2]` as (dy, dx) in pixels.

    Training: `model.compile(optimizer)` with no loss uses Panoptic-DeepLab's loss
    (bootstrapped cross-entropy, centre MSE x 200, offset L1 x 0.01) computed from
    `(image, panoptic_label)` batches by `compute_loss`, so `model.fit(dataset)` needs
    no custom loop.

    Args:
        num_classes: int. Semantic classes (things and stuff).
        thing_class_ids: ints. Classes that have instances.
        label_divisor: int. Panoptic id = class * label_divisor + instance.
        ignore_label: int. Void class.
        backbone: dict. `AxialResNet` arguments (stem, width_multiplier, spans, ...);
            `output_stride` is 16.
        semantic_decoder_channels, semantic_low_level_channels, semantic_head_channels:
            semantic branch widths (256, (64, 32), 256).
        instance_decoder_channels, instance_low_level_channels,
        instance_head_channels, instance_projection_channels: instance branch widths
            (128, (32, 16), 32, 256).
        projection_channels: int. 1x1 projection of the semantic branch (256).
        input_shape: tuple. `(height, width, 3)`, None for dynamic sizes.
        momentum, epsilon, synchronized_bn: batch-norm options of the decoders.
        **kwargs: `keras.Model` arguments.

    Example:
    >>> model = get_model("axial_deeplab_tiny", num_classes=12, thing_class_ids=range(2, 12))
    >>> out = model(keras.ops.zeros((1, 65, 65, 3)))
    >>> out["semantic_logits"].shape
    (1, 65, 65, 12)
    """

    def __init__(
        self,
        num_classes: int = 19,
        thing_class_ids: Sequence[int] = CITYSCAPES_THING_CLASS_IDS,
        label_divisor: int = 1000,
        ignore_label: int = 255,
        backbone: Optional[dict] = None,
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
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        thing_class_ids = tuple(int(c) for c in thing_class_ids)
        bad = [c for c in thing_class_ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"thing_class_ids {bad} are outside [0, num_classes={num_classes}).")
        backbone_args = {"stem": "inception", "width_multiplier": 1.0, **(backbone or {})}
        backbone_args["output_stride"] = 16
        backbone_args.pop("num_classes", None)
        norm = dict(momentum=momentum, epsilon=epsilon, synchronized=synchronized_bn)

        images = keras.Input(shape=tuple(input_shape), name="images")
        x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(images)
        x = PadToStride(16, name="pad")(x)
        encoder = AxialResNet(name="backbone", **backbone_args)
        features = encoder(x)
        semantic = PanopticDecoder(projection_channels, semantic_low_level_channels,
                                   semantic_decoder_channels, name="semantic_decoder", **norm)(
            [features["res5"], features["res3"], features["res2"]])
        instance = PanopticDecoder(instance_projection_channels, instance_low_level_channels,
                                   instance_decoder_channels, name="instance_decoder", **norm)(
            [features["res5"], features["res3"], features["res2"]])
        raw = {
            "semantic_logits": PanopticHead(semantic_head_channels, num_classes,
                                            name="semantic_head", **norm)(semantic),
            "center_heatmap": PanopticHead(instance_head_channels, 1,
                                           name="center_head", **norm)(instance),
            "center_offsets": PanopticHead(instance_head_channels, 2,
                                           name="offset_head", **norm)(instance),
        }
        outputs = {}
        for key in OUTPUT_KEYS:
            resized = ResizeAlignCorners(rescale_offsets=key == "center_offsets",
                                         name=f"upsample_{key}")([raw[key], x])
            outputs[key] = CropToReference(name=f"crop_{key}")([resized, images])
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        self.backbone = encoder
        self.num_classes = num_classes
        self.thing_class_ids = thing_class_ids
        self.label_divisor = label_divisor
        self.ignore_label = ignore_label
        self.backbone_args = backbone_args
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
            num_classes=self.num_classes, thing_class_ids=self.thing_class_ids,
            label_divisor=self.label_divisor, ignore_label=self.ignore_label,
            **(panoptic_loss_args or {}))
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

    def get_config(self):
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "thing_class_ids": list(self.thing_class_ids),
            "label_divisor": self.label_divisor,
            "ignore_label": self.ignore_label,
            "backbone": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in self.backbone_args.items()},
            **self.widths,
            "input_shape": list(self.image_shape),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "synchronized_bn": self.synchronized_bn,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

"""Panoptic-DeepLab losses: bootstrapped cross-entropy, centre MSE, offset L1.

Reference: Cheng et al., "Panoptic-DeepLab", CVPR 2020; Axial-DeepLab (Wang et al.,
ECCV 2020) trains with the same three terms, weighted 1, 200 and 0.01. The
normalization follows the official implementation (google-research/deeplab2,
`model/loss/base_loss.py` and `model/loss/loss_builder.py`): every term is a per-pixel
loss times a per-pixel weight, reduced per image to the mean of the non-zero values
among its top-k largest (k = round(top_k_percent * pixels)), then averaged over the
batch.

In these losses `sample_weight` means per-pixel weights [batch, height, width],
multiplied into the per-pixel losses before the top-k selection (the way deeplab2
applies its weight maps), not per-image weights.
"""

import struct
from typing import Any, Dict, Optional

import keras
from keras import ops

from axial_keras.labels import PanopticLabels
from axial_keras.panoptic.targets import PanopticTargets

_REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "none", None)


def _float32(x: float) -> float:
    """Rounds a Python float to the nearest float32 value."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _average_top_k(pixel_losses: Any, top_k_percent: float) -> Any:
    """Averages each image's largest per-pixel losses, as deeplab2 does.

    Args:
        pixel_losses: float tensor [batch, height, width] of weighted per-pixel losses.
        top_k_percent: float in [0, 1]. Keeps the round(top_k_percent * pixels)
            largest values per image (all of them for 1.0), the product taken in
            float32 and rounded half to even as deeplab2 computes it.

    Returns:
        float tensor [batch]: sum of the kept values over the number of non-zero kept
        values (0 when there are none).
    """
    height, width = ops.shape(pixel_losses)[1:3]
    pixels = height * width
    flat = ops.reshape(pixel_losses, (-1, pixels))
    if top_k_percent < 1.0:
        if isinstance(pixels, int):
            k = int(round(_float32(_float32(top_k_percent) * _float32(pixels))))
        else:
            k = ops.cast(ops.round(top_k_percent * ops.cast(pixels, "float32")), "int32")
        flat = ops.top_k(flat, k, sorted=False)[0]
    non_zero = ops.cast(ops.count_nonzero(flat, axis=1), flat.dtype)
    # Where nothing is non-zero the sum is 0 too, so max(., 1) is deeplab2's
    # divide_no_nan with a gradient that stays finite.
    return ops.sum(flat, axis=1) / ops.maximum(non_zero, 1.0)


def _reduce(per_image: Any, reduction: Optional[str]) -> Any:
    """Applies a Keras reduction to per-image losses [batch]."""
    if reduction in ("none", None):
        return per_image
    if reduction == "sum":
        return ops.sum(per_image)
    return ops.mean(per_image)


def _check_spatial(labels: Any, predictions: Any, what: str) -> None:
    """Raises ValueError when static [batch, height, width] dims disagree."""
    for got, want in zip(predictions.shape[:3], labels.shape[:3]):
        if got is not None and want is not None and got != want:
            raise ValueError(f"{what}: prediction shape {tuple(predictions.shape)} does not "
                             f"match label shape {tuple(labels.shape)} in "
                             "[batch, height, width].")


def _with_channels(x: Any) -> Any:
    """Adds a channel axis to a [batch, height, width] tensor."""
    return ops.expand_dims(x, -1) if ops.ndim(x) == 3 else x


class _PixelLoss(keras.losses.Loss):
    """Base of the per-pixel losses: weights, top-k average per image, reduction.

    Subclasses implement `pixel_losses(y_true, y_pred)` -> [batch, height, width].
    """

    def __init__(self, top_k_percent: float, reduction: Optional[str], name: str,
                 dtype: Optional[str]):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        if not 0.0 <= top_k_percent <= 1.0:
            raise ValueError(f"top_k_percent must lie in [0, 1], got {top_k_percent}.")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.top_k_percent = float(top_k_percent)

    def pixel_losses(self, y_true: Any, y_pred: Any) -> Any:
        """Returns unweighted per-pixel losses [batch, height, width]."""
        raise NotImplementedError

    def per_image(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """Returns the loss of each image [batch].

        Args:
            y_true: targets (see the subclass).
            y_pred: predictions (see the subclass).
            sample_weight: optional float tensor [batch, height, width] of per-pixel
                weights.

        Returns:
            float tensor [batch].
        """
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        losses = self.pixel_losses(ops.convert_to_tensor(y_true), y_pred)
        if sample_weight is not None:
            losses = losses * ops.cast(sample_weight, self.dtype)
        return _average_top_k(losses, self.top_k_percent)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """Returns the unweighted loss of each image [batch]."""
        return self.per_image(y_true, y_pred)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """Computes the loss; `sample_weight` is per-pixel [batch, height, width].

        Unlike the base class, `y_true` keeps its dtype (integer labels stay integer).
        """
        with keras.name_scope(self.name):
            return _reduce(self.per_image(y_true, y_pred, sample_weight), self.reduction)

    def get_config(self) -> Dict[str, Any]:
        """Returns the constructor arguments."""
        return {**super().get_config(), "dtype": self.dtype,
                "top_k_percent": self.top_k_percent}


@keras.saving.register_keras_serializable(package="axial_keras")
class BootstrappedCrossEntropy(_PixelLoss):
    """Softmax cross-entropy over the hardest pixels of each image.

    deeplab2's `TopKCrossEntropyLoss`: per-pixel cross-entropy times the pixel weight
    (0 where the label is `ignore_label` or outside [0, classes)), then per image the
    mean of the non-zero values among the top `top_k_percent` of pixels; averaged
    over the batch by the default reduction.

    Args:
        top_k_percent: float in [0, 1]. Fraction of pixels kept per image (0.2 in
            Panoptic-DeepLab and Axial-DeepLab).
        ignore_label: int. Label of pixels that take no loss.
        reduction: Keras reduction over images: "sum_over_batch_size" (mean),
            "mean", "sum" or None.
        name: str. Loss name.
        dtype: optional float dtype of the computation (default floatx).

    Example:

    ```python
    loss = BootstrappedCrossEntropy(top_k_percent=0.2, ignore_label=255)
    value = loss(labels, logits, sample_weight=weights)  # [B,H,W], [B,H,W,C], [B,H,W]
    ```
    """

    def __init__(self, top_k_percent: float = 0.2, ignore_label: int = 255,
                 reduction: Optional[str] = "sum_over_batch_size",
                 name: str = "bootstrapped_cross_entropy", dtype: Optional[str] = None):
        super().__init__(top_k_percent, reduction, name, dtype)
        self.ignore_label = int(ignore_label)

    def pixel_losses(self, y_true: Any, y_pred: Any) -> Any:
        """Cross-entropy [batch, height, width] of logits [batch, height, width, classes].

        Args:
            y_true: integer tensor [batch, height, width] of class labels.
            y_pred: float tensor [batch, height, width, classes] of logits.

        Returns:
            float tensor [batch, height, width], 0 on ignored pixels.
        """
        _check_spatial(y_true, y_pred, self.name)
        labels = ops.cast(y_true, "int32")
        valid = ops.logical_and(
            labels != self.ignore_label,
            ops.logical_and(labels >= 0, labels < ops.shape(y_pred)[-1]))
        cross_entropy = ops.sparse_categorical_crossentropy(
            ops.where(valid, labels, 0), y_pred, from_logits=True)
        return ops.where(valid, cross_entropy, 0.0)

    def get_config(self) -> Dict[str, Any]:
        """Returns the constructor arguments."""
        return {**super().get_config(), "ignore_label": self.ignore_label}


@keras.saving.register_keras_serializable(package="axial_keras")
class CenterHeatmapMSE(_PixelLoss):
    """Weighted mean squared error of the centre heatmap.

    deeplab2's `TopKGeneralLoss(mean_squared_error)`: squared error times the pixel
    weight, per image the mean over pixels where that product is non-zero, averaged
    over the batch.

    Args:
        top_k_percent: float in [0, 1]. Fraction of pixels kept per image (1.0 in the
            reference configurations).
        reduction: Keras reduction over images.
        name: str. Loss name.
        dtype: optional float dtype of the computation.

    Example:

    ```python
    loss = CenterHeatmapMSE()
    value = loss(targets["center_heatmap"], heatmap, sample_weight=targets["center_weights"])
    ```
    """

    def __init__(self, top_k_percent: float = 1.0,
                 reduction: Optional[str] = "sum_over_batch_size",
                 name: str = "center_heatmap_mse", dtype: Optional[str] = None):
        super().__init__(top_k_percent, reduction, name, dtype)

    def pixel_losses(self, y_true: Any, y_pred: Any) -> Any:
        """Squared error [batch, height, width].

        Args:
            y_true: float tensor [batch, height, width, 1] (or [batch, height, width]).
            y_pred: float tensor [batch, height, width, 1] (or [batch, height, width]).

        Returns:
            float tensor [batch, height, width], averaged over channels.
        """
        _check_spatial(y_true, y_pred, self.name)
        error = _with_channels(y_pred) - _with_channels(ops.cast(y_true, self.dtype))
        return ops.mean(ops.square(error), axis=-1)


@keras.saving.register_keras_serializable(package="axial_keras")
class OffsetL1(_PixelLoss):
    """Weighted L1 loss of the centre offsets.

    deeplab2's `TopKGeneralLoss(mean_absolute_error)`: the absolute error averaged
    over the (dy, dx) channels, times the pixel weight (1 on non-crowd thing pixels
    in Panoptic-DeepLab), per image the mean over pixels where that product is
    non-zero, averaged over the batch.

    Args:
        top_k_percent: float in [0, 1]. Fraction of pixels kept per image.
        reduction: Keras reduction over images.
        name: str. Loss name.
        dtype: optional float dtype of the computation.

    Example:

    ```python
    loss = OffsetL1()
    value = loss(targets["offsets"], offsets, sample_weight=targets["offset_weights"])
    ```
    """

    def __init__(self, top_k_percent: float = 1.0,
                 reduction: Optional[str] = "sum_over_batch_size",
                 name: str = "offset_l1", dtype: Optional[str] = None):
        super().__init__(top_k_percent, reduction, name, dtype)

    def pixel_losses(self, y_true: Any, y_pred: Any) -> Any:
        """Absolute error [batch, height, width].

        Args:
            y_true: float tensor [batch, height, width, 2] of (dy, dx) offsets.
            y_pred: float tensor [batch, height, width, 2].

        Returns:
            float tensor [batch, height, width], averaged over the two channels.
        """
        _check_spatial(y_true, y_pred, self.name)
        return ops.mean(ops.abs(y_pred - ops.cast(y_true, self.dtype)), axis=-1)


@keras.saving.register_keras_serializable(package="axial_keras")
class PanopticDeepLabLoss(keras.losses.Loss):
    """The Panoptic-DeepLab training loss from panoptic labels and model outputs.

    Builds the targets with `PanopticTargets`, then sums
    `semantic_weight * BootstrappedCrossEntropy + center_weight * CenterHeatmapMSE +
    offset_weight * OffsetL1`, each term normalized per image as in deeplab2 and
    averaged over the batch by the default reduction. It uses `keras.ops` only and
    branches on no tensor value, so it runs inside `tf.function` and `jax.jit` train
    steps.

    Args:
        labels: `PanopticLabels`. Classes, label divisor and void class.
        semantic_weight: float. Weight of the semantic term.
        center_weight: float. Weight of the centre heatmap term.
        offset_weight: float. Weight of the offset term.
        top_k_percent: float. Fraction of hardest pixels in the semantic term.
        sigma: float. Standard deviation of the centre Gaussians in pixels.
        small_instance_area: int. Thing instances with fewer pixels are "small".
        small_instance_weight: float. Semantic weight on pixels of small instances.
        reduction: Keras reduction over images.
        name: str. Loss name.
        dtype: optional float dtype of the computation.

    Example:

    ```python
    loss = PanopticDeepLabLoss(labels=CITYSCAPES)
    total = loss(panoptic_labels, model(images))  # [B,H,W] int, output dict
    terms = loss.loss_terms(panoptic_labels, model(images))  # for logging
    ```
    """

    PREDICTION_KEYS = ("semantic_logits", "center_heatmap", "center_offsets")

    def __init__(self, labels: PanopticLabels, semantic_weight: float = 1.0, center_weight: float = 200.0,
                 offset_weight: float = 0.01, top_k_percent: float = 0.2, sigma: float = 8.0,
                 small_instance_area: int = 4096, small_instance_weight: float = 3.0,
                 reduction: Optional[str] = "sum_over_batch_size",
                 name: str = "panoptic_deeplab_loss", dtype: Optional[str] = None):
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.labels = labels
        self.targets = PanopticTargets(
            labels, sigma=sigma,
            small_instance_area=small_instance_area,
            small_instance_weight=small_instance_weight)
        self.semantic_weight = float(semantic_weight)
        self.center_weight = float(center_weight)
        self.offset_weight = float(offset_weight)
        self.semantic_loss = BootstrappedCrossEntropy(top_k_percent, labels.ignore_label,
                                                      dtype=dtype)
        self.center_loss = CenterHeatmapMSE(dtype=dtype)
        self.offset_loss = OffsetL1(dtype=dtype)

    def per_image_terms(self, y_true: Any, y_pred: Dict[str, Any],
                        sample_weight: Any = None) -> Dict[str, Any]:
        """Returns the weighted loss terms of each image.

        Args:
            y_true: integer tensor [batch, height, width] of panoptic ids.
            y_pred: dict with `semantic_logits` [batch, height, width, classes],
                `center_heatmap` [batch, height, width, 1] and `center_offsets`
                [batch, height, width, 2] as (dy, dx).
            sample_weight: optional float tensor [batch, height, width] of per-pixel
                weights (e.g. 0 on padding), multiplied into every term's weights.

        Returns:
            Dict of float tensors [batch]: `semantic_loss`, `center_loss`,
            `offset_loss`, each already multiplied by its weight.
        """
        missing = [key for key in self.PREDICTION_KEYS if key not in y_pred]
        if missing:
            raise ValueError(f"y_pred lacks {missing}; expected a dict with keys "
                             f"{list(self.PREDICTION_KEYS)}.")
        targets = self.targets(y_true)
        pixel_weight = 1.0 if sample_weight is None else ops.cast(sample_weight, self.dtype)
        return {
            "semantic_loss": self.semantic_weight * self.semantic_loss.per_image(
                targets["semantic"], y_pred["semantic_logits"],
                targets["semantic_weights"] * pixel_weight),
            "center_loss": self.center_weight * self.center_loss.per_image(
                targets["center_heatmap"], y_pred["center_heatmap"],
                targets["center_weights"] * pixel_weight),
            "offset_loss": self.offset_weight * self.offset_loss.per_image(
                targets["offsets"], y_pred["center_offsets"],
                targets["offset_weights"] * pixel_weight),
        }

    def loss_terms(self, y_true: Any, y_pred: Dict[str, Any],
                   sample_weight: Any = None) -> Dict[str, Any]:
        """Returns the three weighted terms, reduced over the batch, for logging.

        Args:
            y_true: integer tensor [batch, height, width] of panoptic ids.
            y_pred: the model's output dict (see `per_image_terms`).
            sample_weight: optional per-pixel weights [batch, height, width].

        Returns:
            Dict with `semantic_loss`, `center_loss` and `offset_loss` (scalars with
            the default reduction); their sum is the value of `__call__`.
        """
        with keras.name_scope(self.name):
            terms = self.per_image_terms(y_true, y_pred, sample_weight)
            return {key: _reduce(value, self.reduction) for key, value in terms.items()}

    def call(self, y_true: Any, y_pred: Dict[str, Any]) -> Any:
        """Returns the total loss of each image [batch]."""
        terms = self.per_image_terms(y_true, y_pred)
        return terms["semantic_loss"] + terms["center_loss"] + terms["offset_loss"]

    def __call__(self, y_true: Any, y_pred: Dict[str, Any], sample_weight: Any = None) -> Any:
        """Computes the total loss; `y_true` stays integer (no cast to float).

        Args:
            y_true: integer tensor [batch, height, width] of panoptic ids.
            y_pred: the model's output dict (see `per_image_terms`).
            sample_weight: optional per-pixel weights [batch, height, width].

        Returns:
            The weighted sum of the three terms (a scalar with the default reduction).
        """
        terms = self.loss_terms(y_true, y_pred, sample_weight)
        return terms["semantic_loss"] + terms["center_loss"] + terms["offset_loss"]

    def get_config(self) -> Dict[str, Any]:
        """Returns the constructor arguments."""
        return {
            **super().get_config(),
            "dtype": self.dtype,
            **self.targets.get_config(),
            "semantic_weight": self.semantic_weight,
            "center_weight": self.center_weight,
            "offset_weight": self.offset_weight,
            "top_k_percent": self.semantic_loss.top_k_percent,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PanopticDeepLabLoss":
        config = dict(config)
        return cls(PanopticLabels.from_config(config.pop("labels")), **config)

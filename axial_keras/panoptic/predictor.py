"""The one panoptic inference path: model, test-time augmentation, post-processing.

The trainer's evaluation, the exported serving graph (`export.serving`), `export.predict`
(through the SavedModel) and the demo all call a `PanopticPredictor`, so what is
evaluated is what is served. Every step is `keras.ops` (it runs eagerly, inside
`tf.function` / a SavedModel, and under JAX).

Example:
>>> predictor = PanopticPredictor(model, DIGITS_PANOPTIC, PostProcessingSettings(0.5, 11, 16))
>>> predictor(images)["panoptic"].shape  # [batch, height, width] int32
"""

from typing import Dict, Optional, Sequence, Tuple

from keras import ops

from axial_keras.labels import PanopticLabels
from axial_keras.panoptic.postprocessing import PanopticPostProcessor, PostProcessingSettings

POST_PROCESSING_KEYS = ("panoptic", "semantic", "instance", "instance_scores")


def _resize(x, size: Tuple[int, int]):
    return ops.image.resize(x, size, interpolation="bilinear")


class PanopticPredictor:
    """Panoptic maps of images: the model over `scales` (and flips), then post-processing.

    With one scale of 1 and no flip the model runs once and post-processing reads its
    logits. Otherwise every scaled (and flipped) copy goes through the model; its
    semantic probabilities, centre heatmap and offsets are flipped back (dx changes
    sign), resized to the input size (offsets rescaled to its pixels) and averaged, and
    post-processing reads the averaged probabilities (its top-1 is the same either way).

    Args:
        model: an `AxialDeepLab` (outputs `semantic_logits`, `center_heatmap`,
            `center_offsets`).
        labels: `PanopticLabels` of the model's classes.
        settings: `PostProcessingSettings` (None: the defaults).
        scales: input scale factors (positive).
        flip: also run every scale flipped left-right.
        unroll: unroll the post-processor's grouping loop (graphs for converters).
    """

    def __init__(self, model, labels: PanopticLabels,
                 settings: Optional[PostProcessingSettings] = None,
                 scales: Sequence[float] = (1.0,), flip: bool = False, unroll: bool = False):
        scales = tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"`scales` must be positive numbers, got {scales}.")
        self.model = model
        self.labels = labels
        self.post_processor = PanopticPostProcessor(labels, settings, unroll=unroll)
        self.settings = self.post_processor.settings
        self.scales = scales
        self.flip = bool(flip)

    def network_outputs(self, images) -> Dict:
        """The model outputs of `images` (float32 `[B, H, W, 3]` in [0, 255]), augmented.

        Returns:
            dict with `semantic_logits [B, H, W, C]`, `center_heatmap [B, H, W, 1]` and
            `center_offsets [B, H, W, 2]` (dy, dx): the model's outputs for one unflipped
            scale of 1; otherwise averages, with averaged softmax probabilities in
            `semantic_logits` and also under `semantic_probabilities`.
        """
        if self.scales == (1.0,) and not self.flip:
            return self.model(images, training=False)
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError("Multi-scale or flipped prediction needs images of a static "
                             f"height and width, got shape {images.shape}.")
        totals, count = None, 0
        for scale in self.scales:
            size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
            scaled = images if size == (height, width) else _resize(images, size)
            for flipped in ((False, True) if self.flip else (False,)):
                outputs = self.model(ops.flip(scaled, 2) if flipped else scaled, training=False)
                values = [ops.softmax(ops.cast(outputs["semantic_logits"], "float32"), axis=-1),
                          ops.cast(outputs["center_heatmap"], "float32"),
                          ops.cast(outputs["center_offsets"], "float32")]
                if flipped:
                    values = [ops.flip(x, 2) for x in values]
                    values[2] = values[2] * ops.convert_to_tensor([1.0, -1.0])
                if size != (height, width):
                    values = [_resize(x, (height, width)) for x in values]
                    values[2] = values[2] * ops.convert_to_tensor(
                        [height / size[0], width / size[1]])
                totals = values if totals is None else [t + v for t, v in zip(totals, values)]
                count += 1
        probabilities, heatmap, offsets = (t / count for t in totals)
        return {"semantic_logits": probabilities, "semantic_probabilities": probabilities,
                "center_heatmap": heatmap, "center_offsets": offsets}

    def post_process(self, outputs: Dict) -> Dict:
        """`PanopticPostProcessor` maps of `network_outputs` and `semantic_probability`.

        Returns:
            dict of `[B, H, W]` maps: `panoptic`, `semantic`, `instance` (int32),
            `instance_scores` (the centre-heatmap value at each pixel's instance centre,
            float32, 0 for stuff and void) and `semantic_probability` (float32: the
            softmax probability of the most likely class at each pixel).
        """
        result = self.post_processor(outputs)
        maps = {key: result[key] for key in POST_PROCESSING_KEYS}
        probabilities = outputs.get("semantic_probabilities")
        if probabilities is None:
            probabilities = ops.softmax(ops.cast(outputs["semantic_logits"], "float32"), axis=-1)
        maps["semantic_probability"] = ops.max(probabilities, axis=-1)
        return maps

    def __call__(self, images) -> Dict:
        """`post_process(network_outputs(images))` for float images `[B, H, W, 3]`."""
        return self.post_process(self.network_outputs(ops.cast(images, "float32")))

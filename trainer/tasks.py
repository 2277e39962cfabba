"""Tasks: what the trainer learns and measures, for one experiment.

A task builds the model, the per-replica training and evaluation inputs, the loss terms
of a batch, the evaluation prediction, the host-side metrics and the TensorBoard images.
`PanopticTask` trains Axial-DeepLab with the Panoptic-DeepLab loss and measures PQ/SQ/RQ
and mIoU on post-processed panoptic maps (optionally multi-scale + flip);
`ClassificationTask` trains Axial-ResNet with cross-entropy and measures accuracy.

Example:
>>> task = create_task(get_experiment("digits_panoptic"))
>>> model = task.build_model(num_replicas=1)
"""

from typing import Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from axial_keras.data import generate_digits_panoptic, load_digits
from axial_keras.metrics import MeanIoU, PanopticQuality
from axial_keras.panoptic import (PanopticDeepLabLoss, PanopticPostProcessor,
                                  colorize_panoptic, overlay, side_by_side)
from trainer import inputs
from trainer.experiments import (ExperimentConfig, build_model, panoptic_loss_args,
                                 post_processor_args)

MEAN_PIXEL = 127.5
DATASETS = {"panoptic": ("digits_panoptic", "tfrecord"), "classification": ("digits",)}


def multiscale_outputs(model, images: tf.Tensor, scales: Sequence[float] = (1.0,),
                       flip: bool = False) -> Dict[str, tf.Tensor]:
    """Panoptic outputs averaged over input scales and horizontal flips.

    Each scaled (and flipped) copy of `images` goes through `model`; its semantic
    probabilities, centre heatmap and offsets are flipped back (the offsets' dx changes
    sign), resized to the input size (offsets rescaled to its pixels) and averaged.

    Args:
        model: an `AxialDeepLab`.
        images: float32 `[batch, height, width, 3]` in [0, 255].
        scales: input scale factors.
        flip: also run every scale flipped left-right.

    Returns:
        dict with `semantic_logits` (logits for one unflipped scale of 1, otherwise
        averaged probabilities: the argmax is what post-processing reads), `center_heatmap
        [batch, height, width, 1]` and `center_offsets [batch, height, width, 2]` (dy, dx).
    """
    if tuple(scales) == (1.0,) and not flip:
        return model(images, training=False)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    size = tf.cast(tf.stack([height, width]), tf.float32)
    totals, count = None, 0
    for scale in scales:
        scaled_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
        scaled = images if scale == 1.0 else tf.image.resize(images, scaled_size)
        for flipped in ((False, True) if flip else (False,)):
            outputs = model(tf.reverse(scaled, [2]) if flipped else scaled, training=False)
            semantic = tf.nn.softmax(outputs["semantic_logits"], axis=-1)
            heatmap = outputs["center_heatmap"]
            offsets = outputs["center_offsets"]
            if flipped:
                semantic, heatmap, offsets = (tf.reverse(x, [2])
                                              for x in (semantic, heatmap, offsets))
                offsets = offsets * tf.constant([1.0, -1.0])
            if scale != 1.0:
                semantic, heatmap, offsets = (tf.image.resize(x, [height, width])
                                              for x in (semantic, heatmap, offsets))
                offsets = offsets * (size / tf.cast(scaled_size, tf.float32))
            values = (semantic, heatmap, offsets)
            totals = values if totals is None else tuple(t + v for t, v in zip(totals, values))
            count += 1
    semantic, heatmap, offsets = (t / count for t in totals)
    return {"semantic_logits": semantic, "center_heatmap": heatmap, "center_offsets": offsets}


class PanopticEvaluation:
    """Host-side PQ/SQ/RQ and mIoU over predicted panoptic maps."""

    def __init__(self, config: ExperimentConfig):
        task = config.task
        self.quality = PanopticQuality(task.num_classes, task.thing_class_ids,
                                       task.label_divisor, task.ignore_label)
        self.miou = MeanIoU(task.num_classes, task.label_divisor, task.ignore_label)

    def update(self, labels: np.ndarray, predictions: np.ndarray) -> None:
        """Adds int `[batch, height, width]` ground-truth and predicted panoptic maps."""
        self.quality.update_state(labels, predictions)
        self.miou.update_state(labels, predictions)

    def result(self) -> Dict[str, float]:
        """`pq, sq, rq` (and their `_things`, `_stuff` means) and `miou`, as floats."""
        values = {key: float(value) for key, value in self.quality.result().items()
                  if not key.startswith("per_class")}
        values["miou"] = float(self.miou.result())
        return values


class ClassificationEvaluation:
    """Host-side top-1 accuracy; negative labels (padding) are left out."""

    def __init__(self):
        self.correct = 0
        self.total = 0

    def update(self, labels: np.ndarray, predictions: np.ndarray) -> None:
        """Adds int `[batch]` labels and predicted classes."""
        valid = labels >= 0
        self.correct += int(np.sum((labels == predictions) & valid))
        self.total += int(np.sum(valid))

    def result(self) -> Dict[str, float]:
        return {"accuracy": self.correct / max(self.total, 1)}


class PanopticTask:
    """Axial-DeepLab on panoptic labels: Panoptic-DeepLab loss, PQ and mIoU."""

    loss_names = ("loss", "semantic_loss", "center_loss", "offset_loss")

    def __init__(self, config: ExperimentConfig):
        task = config.task
        self.config = config
        self.loss = PanopticDeepLabLoss(task.num_classes, task.thing_class_ids,
                                        task.label_divisor, task.ignore_label,
                                        **panoptic_loss_args(task))
        self.post_processor = PanopticPostProcessor(**post_processor_args(task))
        self.void_id = task.ignore_label * task.label_divisor
        self._arrays = {}

    def build_model(self, num_replicas: int) -> keras.Model:
        return build_model(self.config, num_replicas)

    def _digits(self, split: str):
        """The generated digits-panoptic arrays of a split (made once)."""
        if split not in self._arrays:
            data = self.config.data
            if split == "train":
                self._arrays[split] = generate_digits_panoptic(
                    data.num_train_examples, "train", data.image_size, seed=data.seed)
            else:
                self._arrays[split] = generate_digits_panoptic(
                    data.num_eval_examples, "test", data.image_size, seed=data.seed + 1)
        return self._arrays[split]

    def _check_metadata(self, file_pattern: str) -> None:
        """Raises ValueError when the TFRecords' label encoding differs from `task`'s."""
        from axial_keras.data.tfrecord import load_metadata, metadata_path_for

        path = metadata_path_for(file_pattern)
        if path is None:
            raise ValueError(f"No metadata.json next to {file_pattern!r}; write the records "
                             "with `python -m axial_keras.data.convert`.")
        metadata, task = load_metadata(path), self.config.task
        expected = dict(num_classes=task.num_classes,
                        thing_class_ids=tuple(task.thing_class_ids),
                        label_divisor=task.label_divisor, ignore_label=task.ignore_label)
        found = {key: getattr(metadata, key) for key in expected}
        found["thing_class_ids"] = tuple(found["thing_class_ids"])
        wrong = {key: (expected[key], found[key]) for key in expected
                 if expected[key] != found[key]}
        if wrong:
            details = "; ".join(f"task.{key}={want!r} but the records have {got!r}"
                                for key, (want, got) in wrong.items())
            raise ValueError(f"{path} does not match experiment {self.config.name!r}: "
                             f"{details}.")

    def train_dataset(self, input_context: tf.distribute.InputContext,
                      start_step: int) -> tf.data.Dataset:
        """Per-replica `(uint8 or float32 images [b, H, W, 3], int32 panoptic [b, H, W])`."""
        data = self.config.data
        if data.dataset == "digits_panoptic":
            return inputs.positional_dataset(self._digits("train"), data.batch_size, data.seed,
                                             start_step, input_context)
        from axial_keras.data.panoptic_dataset import panoptic_dataset

        self._check_metadata(data.train_file_pattern)
        dataset = panoptic_dataset(
            data.train_file_pattern, training=True, crop_size=tuple(data.crop_size),
            min_scale=data.min_scale, max_scale=data.max_scale,
            batch_size=inputs.per_replica_batch(data.batch_size, input_context),
            shuffle_buffer=data.shuffle_buffer, seed=inputs.step_seed(data.seed, start_step),
            deterministic=True, input_context=input_context)
        return dataset.map(lambda example: (example["image"], example["panoptic"]))

    def eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        """Per-replica `(float32 images, int32 panoptic)`, padded with void examples."""
        data = self.config.data
        if data.dataset == "digits_panoptic":
            images, labels = self._digits("eval")
            examples = tf.data.Dataset.from_tensor_slices(
                (images.astype(np.float32), labels))
            count, shape = len(images), images.shape[1:3]
        else:
            from axial_keras.data.panoptic_dataset import panoptic_dataset

            self._check_metadata(data.eval_file_pattern)
            examples = panoptic_dataset(data.eval_file_pattern, training=False).map(
                lambda example: (tf.cast(example["image"], tf.float32), example["panoptic"]))
            count = inputs.count_records(data.eval_file_pattern)
            shape = tuple(data.crop_size) if data.crop_size else (1, 1)
        void = (tf.fill([*shape, 3], MEAN_PIXEL), tf.fill(shape, self.void_id))
        if data.dataset == "digits_panoptic":
            return inputs.padded_eval_dataset(examples, count, void, data.eval_batch_size,
                                              input_context)
        padded_size = tuple(data.crop_size) if data.crop_size else (None, None)
        return inputs.padded_eval_dataset(
            examples, count, void, data.eval_batch_size, input_context,
            padded_shapes=([*padded_size, 3], list(padded_size)),
            padding_values=(tf.constant(MEAN_PIXEL), tf.constant(self.void_id)))

    def eval_images(self, count: int) -> np.ndarray:
        """The first `count` evaluation images, uint8 `[count, H, W, 3]` (for summaries)."""
        if self.config.data.dataset == "digits_panoptic":
            return self._digits("eval")[0][:count]
        from axial_keras.data.panoptic_dataset import panoptic_dataset

        dataset = panoptic_dataset(self.config.data.eval_file_pattern, training=False)
        return [example["image"].numpy() for example in dataset.take(count)]

    def losses(self, model: keras.Model, images: tf.Tensor,
               labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        """The loss terms of one replica's batch (means over it) and their sum `loss`."""
        outputs = model(tf.cast(images, tf.float32), training=True)
        terms = self.loss.loss_terms(labels, outputs)
        terms = {key: tf.cast(value, tf.float32) for key, value in terms.items()}
        return {"loss": tf.add_n(list(terms.values())), **terms}

    def predict(self, model: keras.Model, images: tf.Tensor) -> tf.Tensor:
        """Predicted panoptic maps int32 `[batch, height, width]`."""
        trainer = self.config.trainer
        outputs = multiscale_outputs(model, tf.cast(images, tf.float32),
                                     trainer.eval_scales, trainer.eval_flip)
        # keras.ops code needs no AutoGraph (it also runs under JAX); converting its
        # nested loop bodies only risks AutoGraph's corner cases.
        post_process = tf.autograph.experimental.do_not_convert(self.post_processor)
        return post_process(outputs)["panoptic"]

    def new_evaluation(self) -> PanopticEvaluation:
        return PanopticEvaluation(self.config)

    def summary_images(self, images: Sequence[np.ndarray], labels: np.ndarray,
                       predictions: np.ndarray) -> Optional[np.ndarray]:
        """uint8 `[n, H, 3 W + 4, 3]` tiles: image | ground truth | prediction overlays."""
        task = self.config.task
        colour = dict(label_divisor=task.label_divisor, ignore_label=task.ignore_label,
                      thing_class_ids=task.thing_class_ids, num_classes=task.num_classes)
        tiles = []
        for image, label, prediction in zip(images, labels, predictions):
            height, width = image.shape[:2]
            label, prediction = label[:height, :width], prediction[:height, :width]
            tiles.append(side_by_side(image, overlay(image, colorize_panoptic(label, **colour)),
                                      overlay(image, colorize_panoptic(prediction, **colour))))
        if not tiles or any(tile.shape != tiles[0].shape for tile in tiles):
            return np.stack(tiles[:1]) if tiles else None
        return np.stack(tiles)


class ClassificationTask:
    """Axial-ResNet on image labels: cross-entropy and accuracy."""

    loss_names = ("loss",)

    def __init__(self, config: ExperimentConfig):
        self.config = config
        # No reduction: Keras' mean reduction divides by the replica count under a
        # strategy, which the trainer already does.
        self.loss = keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.task.label_smoothing, reduction=None)
        self._arrays = None

    def build_model(self, num_replicas: int) -> keras.Model:
        return build_model(self.config, num_replicas)

    def _digits(self):
        if self._arrays is None:
            self._arrays = load_digits(self.config.data.image_size)
        return self._arrays

    def train_dataset(self, input_context: tf.distribute.InputContext,
                      start_step: int) -> tf.data.Dataset:
        data = self.config.data
        return inputs.positional_dataset(self._digits()[0], data.batch_size, data.seed,
                                         start_step, input_context)

    def eval_dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        images, labels = self._digits()[1]
        examples = tf.data.Dataset.from_tensor_slices((images, labels))
        void = (tf.zeros(images.shape[1:], tf.float32), tf.constant(-1, tf.int32))
        return inputs.padded_eval_dataset(examples, len(images), void,
                                          self.config.data.eval_batch_size, input_context)

    def losses(self, model: keras.Model, images: tf.Tensor,
               labels: tf.Tensor) -> Dict[str, tf.Tensor]:
        logits = model(images, training=True)
        targets = tf.one_hot(labels, self.config.task.num_classes)
        return {"loss": tf.reduce_mean(tf.cast(self.loss(targets, logits), tf.float32))}

    def predict(self, model: keras.Model, images: tf.Tensor) -> tf.Tensor:
        """Predicted classes int32 `[batch]`."""
        return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)

    def eval_images(self, count: int) -> np.ndarray:
        return self._digits()[1][0][:count]

    def new_evaluation(self) -> ClassificationEvaluation:
        return ClassificationEvaluation()

    def summary_images(self, images, labels, predictions) -> Optional[np.ndarray]:
        return None


def create_task(config: ExperimentConfig):
    """The task of `config.task.kind`.

    Raises:
        ValueError: an unknown kind, or a dataset the kind cannot read.
    """
    kinds = {"panoptic": PanopticTask, "classification": ClassificationTask}
    if config.task.kind not in kinds:
        raise ValueError(f"Unknown task.kind {config.task.kind!r}; expected one of "
                         f"{', '.join(kinds)}.")
    if config.data.dataset not in DATASETS[config.task.kind]:
        raise ValueError(f"data.dataset {config.data.dataset!r} does not fit task.kind "
                         f"{config.task.kind!r}; expected one of "
                         f"{', '.join(DATASETS[config.task.kind])}.")
    return kinds[config.task.kind](config)

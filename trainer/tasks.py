"""Tasks: what the trainer learns and measures, for one experiment.

A task builds the model, the per-replica training and evaluation inputs, the loss terms
of a batch, the evaluation prediction, the host-side metrics and the TensorBoard images.
`PanopticTask` trains Axial-DeepLab with the Panoptic-DeepLab loss and measures PQ/SQ/RQ
and mIoU on the panoptic maps of `axial_keras.panoptic.PanopticPredictor` (the
predictor export serves; optionally multi-scale + flip);
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
from axial_keras.panoptic import (PanopticDeepLabLoss, PanopticPredictor, colorize_panoptic,
                                  overlay, side_by_side)
from axial_keras.pixels import MID_GREY
from trainer import inputs
from trainer.experiments import (ClassificationTaskConfig, ExperimentConfig, PanopticTaskConfig,
                                 build_model, panoptic_loss_args)

DATASETS = {PanopticTaskConfig: ("digits_panoptic", "tfrecord"),
            ClassificationTaskConfig: ("digits",)}


class PanopticEvaluation:
    """Host-side PQ/SQ/RQ and mIoU over predicted panoptic maps."""

    def __init__(self, config: ExperimentConfig):
        self.quality = PanopticQuality(config.task.labels)
        self.miou = MeanIoU(config.task.labels)

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
        self.labels = task.labels
        self.loss = PanopticDeepLabLoss(task.labels, **panoptic_loss_args(task))
        self.void_id = task.labels.void_id
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
        records = load_metadata(path)
        keys = ("num_classes", "thing_class_ids", "label_divisor", "ignore_label")
        wrong = {key: (getattr(self.labels, key), getattr(records, key)) for key in keys
                 if getattr(self.labels, key) != getattr(records, key)}
        if wrong:
            details = "; ".join(f"task.labels.{key}={want!r} but the records have {got!r}"
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
        void = (tf.fill([*shape, 3], MID_GREY), tf.fill(shape, self.void_id))
        if data.dataset == "digits_panoptic":
            return inputs.padded_eval_dataset(examples, count, void, data.eval_batch_size,
                                              input_context)
        padded_size = tuple(data.crop_size) if data.crop_size else (None, None)
        return inputs.padded_eval_dataset(
            examples, count, void, data.eval_batch_size, input_context,
            padded_shapes=([*padded_size, 3], list(padded_size)),
            padding_values=(tf.constant(MID_GREY), tf.constant(self.void_id)))

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

    def predictor(self, model: keras.Model) -> PanopticPredictor:
        """The `PanopticPredictor` evaluation runs: the experiment's post-processing, scales
        and flip."""
        trainer = self.config.trainer
        return PanopticPredictor(model, self.labels, self.config.task.post_processing,
                                 scales=trainer.eval_scales, flip=trainer.eval_flip)

    def predict(self, model: keras.Model, images: tf.Tensor) -> tf.Tensor:
        """Predicted panoptic maps int32 `[batch, height, width]`."""
        # keras.ops code needs no AutoGraph (it also runs under JAX); converting its
        # nested loop bodies only risks AutoGraph's corner cases.
        predict = tf.autograph.experimental.do_not_convert(self.predictor(model))
        return predict(images)["panoptic"]

    def new_evaluation(self) -> PanopticEvaluation:
        return PanopticEvaluation(self.config)

    def summary_images(self, images: Sequence[np.ndarray], labels: np.ndarray,
                       predictions: np.ndarray) -> Optional[np.ndarray]:
        """uint8 `[n, H, 3 W + 4, 3]` tiles: image | ground truth | prediction overlays."""
        tiles = []
        for image, label, prediction in zip(images, labels, predictions):
            height, width = image.shape[:2]
            label, prediction = label[:height, :width], prediction[:height, :width]
            tiles.append(side_by_side(image, overlay(image, colorize_panoptic(label, self.labels)),
                                      overlay(image, colorize_panoptic(prediction, self.labels))))
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
    """The task of `config.task`'s type.

    Raises:
        ValueError: a dataset the task cannot read.
    """
    task_type = type(config.task)
    if config.data.dataset not in DATASETS[task_type]:
        raise ValueError(f"data.dataset {config.data.dataset!r} does not fit a "
                         f"{task_type.TYPE} task; expected one of "
                         f"{', '.join(DATASETS[task_type])}.")
    tasks = {PanopticTaskConfig: PanopticTask, ClassificationTaskConfig: ClassificationTask}
    return tasks[task_type](config)

"""Orbit inner loops: `Trainer` (a `StandardTrainer`) and `Evaluator` (a `StandardEvaluator`).

The training step follows Orbit's single-task example: `strategy.run` of a replica step
that divides the replica's mean loss by the number of replicas (the optimizer sums the
gradients over replicas), so the update is that of the mean loss over the global batch.
Loss terms are averaged over the steps of a loop and returned with the learning rate;
a non-finite loss records the first step it happened at (`nonfinite_step`), which the
controller's actions turn into an error before any checkpoint is written.

The evaluator gathers every replica's labels and predictions to the host and updates the
task's metrics there (the same values on every worker); the first few examples become
TensorBoard images.

Example:
>>> trainer = Trainer(task, strategy, model, optimizer, learning_rate)
>>> trainer.train(tf.constant(10))
{'loss': ..., 'learning_rate': ...}
"""

from typing import Dict, List, Optional

import numpy as np
import orbit
import tensorflow as tf


class Trainer(orbit.StandardTrainer):
    """`steps_per_loop` training steps inside one `tf.function` (`tf.while_loop`).

    Args:
        task: a `trainer.tasks` task.
        strategy: the `tf.distribute` strategy the model and optimizer were built under.
        model: the Keras model.
        optimizer: a built Keras optimizer; its `iterations` is the global step.
        learning_rate: the optimizer's schedule (callable on the step) or a float.
    """

    def __init__(self, task, strategy: tf.distribute.Strategy, model, optimizer,
                 learning_rate):
        self.task = task
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.global_step = optimizer.iterations.value
        self._sums = {name: tf.Variable(0.0, trainable=False, name=f"{name}_sum")
                      for name in task.loss_names}
        self._count = tf.Variable(0.0, trainable=False, name="loop_steps")
        self.nonfinite_step = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                          name="nonfinite_step")
        super().__init__(train_dataset=None,
                         options=orbit.StandardTrainerOptions(use_tf_while_loop=True))

    @property
    def train_dataset(self):
        """The distributed training input, built at the step training resumes from."""
        if self._train_dataset is None:
            start_step = int(self.global_step.numpy())
            self._train_dataset = self.strategy.distribute_datasets_from_function(
                lambda context: self.task.train_dataset(context, start_step))
        return self._train_dataset

    @train_dataset.setter
    def train_dataset(self, dataset):
        self._train_dataset = dataset
        self._train_iter = None

    def train_loop_begin(self):
        for variable in [*self._sums.values(), self._count]:
            variable.assign(0.0)

    def train_step(self, iterator):
        model, optimizer = self.model, self.optimizer
        replicas = self.strategy.num_replicas_in_sync

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                terms = self.task.losses(model, images, labels)
                total = terms["loss"]
                if model.losses:
                    total = total + tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
                terms["loss"] = total
                scaled = optimizer.scale_loss(total / replicas)
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return terms

        images, labels = next(iterator)
        terms = self.strategy.run(replica_step, args=(images, labels))
        terms = {name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                 for name, value in terms.items()}
        for name, value in terms.items():
            self._sums[name].assign_add(value)
        self._count.assign_add(1.0)
        first_bad = tf.logical_and(tf.logical_not(tf.math.is_finite(terms["loss"])),
                                   self.nonfinite_step < 0)
        self.nonfinite_step.assign(tf.where(first_bad, tf.cast(self.global_step, tf.int64),
                                            self.nonfinite_step))

    def train_loop_end(self) -> Dict[str, float]:
        count = max(float(self._count.numpy()), 1.0)
        outputs = {name: float(total.numpy()) / count for name, total in self._sums.items()}
        rate = self.learning_rate
        outputs["learning_rate"] = float(rate(self.global_step) if callable(rate) else rate)
        return outputs


class Evaluator(orbit.StandardEvaluator):
    """A full pass over the evaluation set, metrics computed on the host.

    Args:
        task: a `trainer.tasks` task.
        strategy: the strategy the model was built under.
        model: the Keras model.
        global_step: the training step variable (for image summaries).
        image_count: evaluation examples shown as TensorBoard images.
    """

    def __init__(self, task, strategy: tf.distribute.Strategy, model,
                 global_step: tf.Variable, image_count: int = 4):
        self.task = task
        self.strategy = strategy
        self.model = model
        self.global_step = global_step
        self.image_count = image_count
        self._evaluation = None
        self._samples: List = []
        self._images: Optional[List[np.ndarray]] = None
        super().__init__(eval_dataset=None,
                         options=orbit.StandardEvaluatorOptions(use_tf_function=True))

    @property
    def eval_dataset(self):
        if self._eval_dataset is None:
            self._eval_dataset = self.strategy.distribute_datasets_from_function(
                self.task.eval_dataset)
        return self._eval_dataset

    def eval_begin(self):
        self._evaluation = self.task.new_evaluation()
        self._samples = []

    def eval_step(self, iterator):
        images, labels = next(iterator)
        predictions = self.strategy.run(lambda x: self.task.predict(self.model, x),
                                        args=(images,))
        return {"labels": self.strategy.gather(labels, axis=0),
                "predictions": self.strategy.gather(predictions, axis=0)}

    def eval_reduce(self, state=None, step_outputs=None):
        labels = step_outputs["labels"].numpy()
        predictions = step_outputs["predictions"].numpy()
        self._evaluation.update(labels, predictions)
        missing = self.image_count - len(self._samples)
        if missing > 0:
            self._samples.extend(zip(labels[:missing], predictions[:missing]))
        return state

    def eval_end(self, *args) -> Dict[str, float]:
        results = self._evaluation.result()
        if self._samples:
            if self._images is None:
                self._images = list(self.task.eval_images(self.image_count))
            labels, predictions = zip(*self._samples)
            tiles = self.task.summary_images(self._images, np.stack(labels),
                                             np.stack(predictions))
            if tiles is not None:
                tf.summary.image("image_truth_prediction", tiles, step=self.global_step,
                                 max_outputs=len(tiles))
        return results

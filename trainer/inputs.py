"""tf.data input for the trainer, laid out so that every replica's batch is a function of
the global step.

Training data held in memory (the digits sets) is read by position: global step `s`
holds positions `s * global_batch ... (s + 1) * global_batch - 1`, replica `r` the
`per_replica_batch` of them starting at `r * per_replica_batch`, and position `p` is example
`index_shuffle(p mod n)` of a permutation seeded by `(seed, p // n)` (one new order per
epoch). A run restored at step `s` rebuilds its input at `s` and sees exactly the batches
an uninterrupted run would, whatever the number of replicas or workers. TFRecord data
(streamed, shuffled through a buffer) is instead reseeded with the step it starts from:
reproducible for a given restore step, but not the uninterrupted order.

Evaluation data is padded with void examples to whole global batches (every replica
gets a full batch at every step; void pixels and negative labels count for no metric),
batched per replica and split among the workers.

Example:
>>> dataset = positional_dataset((images, labels), global_batch=16, seed=0, start_step=300,
...                              input_context=tf.distribute.InputContext())
"""

from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf


def per_replica_batch(global_batch: int, input_context: tf.distribute.InputContext) -> int:
    """`global_batch` split over the replicas.

    Raises:
        ValueError: when the replicas do not divide `global_batch`.
    """
    replicas = input_context.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"Global batch {global_batch} does not split evenly over "
                         f"{replicas} replicas.")
    return global_batch // replicas


def _local_replicas(input_context: tf.distribute.InputContext) -> Tuple[int, int]:
    """(first global replica id, replica count) of this input pipeline."""
    local = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    return input_context.input_pipeline_id * local, local


def positions(global_batch: int, start_step: int,
              input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """This pipeline's example positions (int64 scalars) in the order its replicas take
    them: step `start_step` for each local replica, then the next step (endless)."""
    batch = per_replica_batch(global_batch, input_context)
    first, local = _local_replicas(input_context)

    def position(counter: tf.Tensor) -> tf.Tensor:
        step = start_step + counter // (local * batch)
        replica = first + (counter // batch) % local
        return step * global_batch + replica * batch + counter % batch

    return tf.data.Dataset.counter(dtype=tf.int64).map(position)


def shuffled_index(position: tf.Tensor, num_examples: int, seed: int) -> tf.Tensor:
    """Example index of a position: a fresh seeded permutation of the set per epoch."""
    epoch = position // num_examples
    return tf.random.experimental.index_shuffle(
        position % num_examples, tf.stack([tf.constant(seed, tf.int64), epoch]),
        tf.constant(num_examples - 1, tf.int64))


def positional_dataset(arrays: Sequence[np.ndarray], global_batch: int, seed: int,
                       start_step: int,
                       input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """Endless shuffled per-replica batches of in-memory `arrays` (same first dimension),
    starting at `start_step` (module docstring)."""
    tensors = tuple(tf.convert_to_tensor(array) for array in arrays)
    num_examples = int(tensors[0].shape[0])

    def gather(position: tf.Tensor):
        index = shuffled_index(position, num_examples, seed)
        return tuple(tf.gather(tensor, index) for tensor in tensors)

    dataset = positions(global_batch, start_step, input_context)
    dataset = dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(per_replica_batch(global_batch, input_context),
                         drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def padded_eval_dataset(examples: tf.data.Dataset, num_examples: int, void_example,
                        global_batch: int, input_context: tf.distribute.InputContext,
                        padded_shapes=None, padding_values=None) -> tf.data.Dataset:
    """Per-replica evaluation batches of this pipeline's share of `examples`.

    Args:
        examples: the finite, unbatched evaluation examples, in order.
        num_examples: how many there are.
        void_example: an example that counts for no metric (padding).
        global_batch: examples per evaluation step over all replicas.
        input_context: this pipeline's place among the replicas.
        padded_shapes, padding_values: `padded_batch` arguments (images of different
            sizes); None batches examples of equal shapes (faster: static shapes).

    Returns:
        `ceil(num_examples / global_batch)` steps of per-replica batches.
    """
    batch = per_replica_batch(global_batch, input_context)
    padding = -num_examples % global_batch
    if padding:
        examples = examples.concatenate(tf.data.Dataset.from_tensors(void_example).repeat(padding))
    # Whole batches only (the padding made them whole): a static batch dimension keeps
    # the model's graph on its fast, fully shaped path.
    if padded_shapes is None:
        batches = examples.batch(batch, drop_remainder=True)
    else:
        batches = examples.padded_batch(batch, padded_shapes=padded_shapes,
                                        padding_values=padding_values, drop_remainder=True)
    if input_context.num_input_pipelines > 1:
        first, local = _local_replicas(input_context)
        replicas = input_context.num_replicas_in_sync
        batches = batches.enumerate().filter(
            lambda index, _: tf.logical_and(index % replicas >= first,
                                            index % replicas < first + local)
        ).map(lambda _, value: value)
    return batches.prefetch(tf.data.AUTOTUNE)


def count_records(file_pattern: str) -> int:
    """Records in the TFRecord files matching `file_pattern` (read, not decoded)."""
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise ValueError(f"No TFRecord file matches {file_pattern!r}.")
    return sum(1 for _ in tf.data.TFRecordDataset(files))


def step_seed(seed: int, start_step: int) -> int:
    """The seed of a streamed input pipeline that starts at `start_step`."""
    return (int(seed) * 1_000_003 + int(start_step)) % (2 ** 31 - 1)

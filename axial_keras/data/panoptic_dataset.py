"""The tf.data input pipeline of converted panoptic TFRecords: decoding, augmentation, targets.

`panoptic_dataset(file_pattern)` reads the shards that `python -m axial_keras.data.convert`
writes (format: `axial_keras.data.tfrecord`) and yields dicts

    {"image": uint8 [height, width, 3], "panoptic": int32 [height, width],
     "image_id": string []}

with panoptic id = contiguous class * label_divisor + instance, crowd = instance 0 of a
thing class, void = ignore_label * label_divisor. Evaluation (`training=False`) keeps the
images as they are, in file order; `pad_and_batch` pads them to a common size so that
evaluation batches hold more than one image.

Training (`training=True`) shuffles, repeats, and augments each example, as deeplab2
does for Panoptic-DeepLab, in this order:

1. random scale by a factor drawn uniformly from [min_scale, max_scale] (bilinear for
   the image, nearest neighbour for the panoptic map, align-corners sampling);
2. a random crop_size window of the scaled image; a side shorter than the crop is
   padded at the bottom/right with mid-grey (`axial_keras.pixels.MID_GREY`, which the model normalizes to 0)
   and void labels, so pad-then-random-crop is what this computes;
3. photometric jitter of the image pixels (not the padding): hue, saturation, contrast
   and brightness, small and composed into one colour matrix;
4. a horizontal flip with probability 1/2, applied to the panoptic map before any
   target is built, so offsets point to the flipped centres.

The image comes out float32 in [0, 255] (`[crop_h, crop_w, 3]`). Passing
`targets=PanopticTargets(...)` adds that builder's outputs (`semantic`,
`semantic_weights`, `center_heatmap`, `center_weights`, `offsets`, `offset_weights`)
computed on the augmented map; `PanopticDeepLabLoss` can instead build them from
`panoptic` itself. Targets run Keras ops inside the pipeline, so they need the
TensorFlow Keras backend.

Every random draw is a stateless op keyed by a per-example seed from
`tf.data.Dataset.random(seed)`, so `seed=S, deterministic=True` gives the same
examples in the same order on every run.

Example:
>>> dataset = panoptic_dataset("data/cityscapes_panoptic/train-*.tfrecord", training=True,
...                            crop_size=(1025, 2049), batch_size=8)
"""

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf

from axial_keras.data.tfrecord import load_metadata, metadata_path_for, parse_example
from axial_keras.labels import PanopticLabels
from axial_keras.pixels import MID_GREY
DEFAULT_SHUFFLE_BUFFER = 256
_PIPELINE_SEED_STRIDE = 7919

# Photometric jitter ranges: hue rotation (radians), saturation and contrast factors,
# brightness shift in pixel values.
HUE_MAX_DELTA = 0.05 * math.pi
SATURATION_RANGE = (0.8, 1.2)
CONTRAST_RANGE = (0.8, 1.2)
BRIGHTNESS_MAX_DELTA = 0.1 * 255.0

_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ: hue turns the (I, Q) chroma plane.
_RGB_TO_YIQ = ((0.299, 0.596, 0.211), (0.587, -0.274, -0.523), (0.114, -0.322, 0.312))


def _uniform(seed: tf.Tensor, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, low, high, tf.float32)


def _colour_matrix(seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A random hue rotation and saturation as one [3, 3] matrix; contrast; brightness."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    angle = _uniform(seeds[0], -HUE_MAX_DELTA, HUE_MAX_DELTA)
    saturation = _uniform(seeds[1], *SATURATION_RANGE)
    contrast = _uniform(seeds[2], *CONTRAST_RANGE)
    brightness = _uniform(seeds[3], -BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA)
    to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    zero, one = tf.zeros([]), tf.ones([])
    rotation = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, cos, -sin]),
                         tf.stack([zero, sin, cos])])
    hue = to_yiq @ rotation @ tf.linalg.inv(to_yiq)
    luma = tf.constant(_LUMA, tf.float32)[:, None] * tf.ones([1, 3])
    saturate = saturation * tf.eye(3) + (1.0 - saturation) * luma
    return hue @ saturate, contrast, brightness


def photometric_jitter(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random hue, saturation, contrast and brightness, composed into one colour transform.

    `y = contrast * (x M - mean(x) M) + mean(x) M + brightness`, clipped to [0, 255], with
    `M` a hue rotation (in YIQ) times a saturation blend with luma; contrast scales about
    the per-channel mean.

    Args:
        image: float32 [height, width, 3] in [0, 255].
        seed: int [2], a stateless seed.

    Returns:
        float32 [height, width, 3] in [0, 255].
    """
    matrix, contrast, brightness = _colour_matrix(seed)
    # One pass: x (contrast M) + ((1 - contrast) mean(x) M + brightness).
    mean = tf.reduce_mean(image, axis=[0, 1])
    bias = tf.linalg.matvec(matrix, (1.0 - contrast) * mean, transpose_a=True) + brightness
    pixels = tf.matmul(tf.reshape(image, [-1, 3]), contrast * matrix) + bias
    return tf.clip_by_value(tf.reshape(pixels, tf.shape(image)), 0.0, 255.0)


def augment(image: tf.Tensor, panoptic: tf.Tensor, seed: tf.Tensor,
            crop_size: Tuple[int, int], void_id: int, min_scale: float = 0.5,
            max_scale: float = 2.0, flip: bool = True,
            photometric: bool = True) -> Tuple[tf.Tensor, tf.Tensor]:
    """Scales, crops (padding short sides), jitters and flips one example.

    Computes what resizing the whole image by a random factor (align-corners sampling,
    as deeplab2), padding it bottom/right to `crop_size`, taking a random `crop_size`
    window and flipping it would give, but samples only the window from the source:
    one `crop_and_resize` per map (bilinear for the image, nearest for the panoptic
    map, the same sampling positions, a mirrored box for the flip), so the cost follows
    the crop, not the scaled image.

    Args:
        image: uint8 or float [height, width, 3] in [0, 255].
        panoptic: int32 [height, width].
        seed: int [2], a stateless seed; equal seeds give equal results.
        crop_size: (crop_height, crop_width) of the output.
        void_id: panoptic id of padded pixels.
        min_scale, max_scale: range of the uniform random scale factor.
        flip: flip horizontally with probability 1/2.
        photometric: apply `photometric_jitter`.

    Returns:
        float32 [crop_height, crop_width, 3] image and int32 [crop_height, crop_width]
        panoptic map.
    """
    crop_height, crop_width = crop_size
    scale_seed, crop_seed, colour_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    scale = _uniform(scale_seed, min_scale, max_scale)
    scaled = tf.maximum(
        tf.cast(tf.round(tf.cast(tf.shape(panoptic), tf.float32) * scale), tf.int32), 1)
    window = tf.minimum(scaled, [crop_height, crop_width])
    corner = tf.random.stateless_uniform([2], crop_seed, 0, tf.int32.max, tf.int32) \
        % (scaled - window + 1)
    # Output pixel (i, j) of the window samples the source at
    # (corner + (i, j)) * (source_size - 1) / (scaled - 1).
    last = tf.cast(tf.maximum(scaled - 1, 1), tf.float32)
    start = tf.cast(corner, tf.float32) / last
    end = tf.cast(corner + window - 1, tf.float32) / last
    flipped = _uniform(flip_seed, 0.0, 1.0) < 0.5 if flip else tf.constant(False)
    left, right = tf.cond(flipped, lambda: (end[1], start[1]), lambda: (start[1], end[1]))
    boxes = tf.stack([start[0], left, end[0], right])[None]
    image = tf.image.crop_and_resize(image[None], boxes, [0], window, method="bilinear")[0]
    panoptic = tf.image.crop_and_resize(tf.cast(panoptic, tf.float32)[None, ..., None],
                                        boxes, [0], window, method="nearest")[0, ..., 0]
    panoptic = tf.cast(tf.round(panoptic), tf.int32)
    if photometric:
        image = photometric_jitter(image, colour_seed)
    pad_height, pad_width = crop_height - window[0], crop_width - window[1]
    pad_x = tf.cond(flipped, lambda: tf.stack([pad_width, 0]), lambda: tf.stack([0, pad_width]))
    padding = tf.stack([tf.stack([0, pad_height]), pad_x])
    image = tf.pad(image, tf.concat([padding, [[0, 0]]], 0), constant_values=MID_GREY)
    panoptic = tf.pad(panoptic, padding, constant_values=void_id)
    image = tf.ensure_shape(image, [crop_height, crop_width, 3])
    panoptic = tf.ensure_shape(panoptic, [crop_height, crop_width])
    return image, panoptic


def _with_targets(example: Dict[str, tf.Tensor], targets: Any) -> Dict[str, tf.Tensor]:
    """Adds the target builder's outputs for one example's panoptic map."""
    built = targets(example["panoptic"][None])
    return dict(example, **{key: value[0] for key, value in built.items()})


def pad_and_batch(dataset: tf.data.Dataset, batch_size: int, labels: PanopticLabels,
                  padded_size: Optional[Tuple[int, int]] = None,
                  image_pad_value: float = MID_GREY,
                  drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches full-size evaluation examples of different sizes by padding them.

    Images and panoptic maps are padded at the bottom and right, images with
    `image_pad_value` (so they become float32), panoptic maps with void
    (`ignore_label * label_divisor`), which metrics ignore. Target maps, if any, are
    padded with 0 (no weight), `semantic` with `ignore_label`.

    Args:
        dataset: unbatched examples of `panoptic_dataset(..., training=False)`.
        batch_size: examples per batch.
        labels: the dataset's `PanopticLabels` (for the void id).
        padded_size: (height, width) to pad every batch to (e.g. the crop size
            1025 x 2049 for Cityscapes); None pads to the largest image of each batch.
            An image larger than `padded_size` makes iteration fail.
        image_pad_value: pixel value of the image padding.
        drop_remainder: drop a last smaller batch.

    Returns:
        Batches `{"image": float32 [batch, H, W, 3], "panoptic": int32 [batch, H, W],
        "image_id": string [batch]}`, plus any other keys of `dataset` that have a
        static shape.
    """
    height, width = padded_size if padded_size is not None else (None, None)
    shapes = {key: spec.shape for key, spec in dataset.element_spec.items()}
    shapes.update(image=[height, width, 3], panoptic=[height, width])
    pad_values = {key: tf.constant(0 if spec.dtype.is_integer else (
        "" if spec.dtype == tf.string else 0.0), spec.dtype)
        for key, spec in dataset.element_spec.items()}
    pad_values.update(image=tf.constant(image_pad_value, tf.float32),
                      panoptic=tf.constant(labels.void_id, tf.int32))
    if "semantic" in pad_values:  # Targets: padding is void there too.
        pad_values["semantic"] = tf.constant(labels.ignore_label,
                                             dataset.element_spec["semantic"].dtype)
    dataset = dataset.map(lambda example: dict(example, image=tf.cast(example["image"],
                                                                      tf.float32)))
    return dataset.padded_batch(batch_size, padded_shapes=shapes, padding_values=pad_values,
                                drop_remainder=drop_remainder)


def panoptic_dataset(file_pattern: Union[str, Sequence[str]], training: bool = False,
                     labels: Optional[PanopticLabels] = None,
                     crop_size: Optional[Tuple[int, int]] = None,
                     min_scale: float = 0.5, max_scale: float = 2.0,
                     flip: bool = True, photometric: bool = True,
                     batch_size: Optional[int] = None,
                     shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                     repeat: Optional[bool] = None, seed: Optional[int] = None,
                     deterministic: bool = False, targets: Any = None,
                     num_parallel_calls: Optional[int] = tf.data.AUTOTUNE,
                     input_context: Optional[tf.distribute.InputContext] = None
                     ) -> tf.data.Dataset:
    """A `tf.data.Dataset` of converted panoptic examples (module docstring).

    Args:
        file_pattern: glob(s) of TFRecord shards, e.g. `"data/coco_panoptic/val-*.tfrecord"`.
        training: augment, shuffle and (by default) repeat; else full images in file order.
        labels: the records' `PanopticLabels`; None reads `metadata.json` next to the shards.
        crop_size: (height, width) of training crops (required when training); in
            evaluation, the size `batch_size` batches are padded to (None: the largest
            image of each batch).
        min_scale, max_scale: random scale range (training).
        flip: random horizontal flips (training).
        photometric: random photometric jitter (training).
        batch_size: batch examples (training drops the last partial batch; evaluation
            pads with `pad_and_batch`); None leaves them unbatched.
        shuffle_buffer: examples in the shuffle buffer (training).
        repeat: repeat forever; None means `training`.
        seed: seed of file order, shuffling and augmentation.
        deterministic: keep the element order fixed despite parallelism (with `seed`,
            reproducible runs). Evaluation is always deterministic.
        targets: a `PanopticTargets`-like callable `[B, H, W] -> dict`; its outputs are
            added to each example (training and evaluation).
        num_parallel_calls: parallelism of reading and decoding (`tf.data.AUTOTUNE`,
            or a number).
        input_context: shards the input across input pipelines for distributed
            training: whole files when there are at least as many files as pipelines,
            else every n-th record.

    Returns:
        A dataset of example dicts.

    Raises:
        ValueError: when no file matches, `crop_size` is missing for training, the
            scale range is invalid, or there is no metadata.
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(pattern)})
    if not files:
        raise ValueError(f"No TFRecord file matches {file_pattern!r}.")
    if labels is None:
        path = metadata_path_for(patterns[0])
        if path is None:
            raise ValueError(f"No metadata.json next to {patterns[0]!r}; pass `labels`.")
        labels = load_metadata(path)
    if training and crop_size is None:
        raise ValueError("training=True needs crop_size=(height, width).")
    if not 0.0 < min_scale <= max_scale:
        raise ValueError(f"Need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}.")
    repeat = training if repeat is None else repeat
    deterministic = deterministic or not training
    crop = tuple(int(side) for side in crop_size) if crop_size is not None else None

    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = (input_context.num_input_pipelines,
                                  input_context.input_pipeline_id)
    shard_records = pipelines > len(files)
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if pipelines > 1 and not shard_records:
        dataset = dataset.shard(pipelines, pipeline_id)
        files = files[pipeline_id::pipelines]
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle_length = min(len(files), 8)
    dataset = dataset.interleave(
        tf.data.TFRecordDataset, cycle_length=cycle_length,
        num_parallel_calls=(num_parallel_calls if num_parallel_calls == tf.data.AUTOTUNE
                            else min(num_parallel_calls, cycle_length)),
        deterministic=deterministic)
    if shard_records:  # Fewer files than pipelines: every pipeline reads them all.
        dataset = dataset.shard(pipelines, pipeline_id)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    if training:
        # Each input pipeline draws its own augmentation stream.
        augment_seed = None if seed is None else seed + _PIPELINE_SEED_STRIDE * pipeline_id
        seeds = tf.data.Dataset.random(seed=augment_seed,
                                       rerandomize_each_iteration=True).batch(2)
        void_id = labels.void_id

        def load(serialized: tf.Tensor, example_seed: tf.Tensor) -> Dict[str, tf.Tensor]:
            example = parse_example(serialized)
            image, panoptic = augment(example["image"], example["panoptic"], example_seed,
                                      crop, void_id, min_scale, max_scale, flip, photometric)
            example = dict(example, image=image, panoptic=panoptic)
            return _with_targets(example, targets) if targets is not None else example

        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            load, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
        if batch_size is not None:
            dataset = dataset.batch(batch_size, drop_remainder=True)
    else:
        def load_eval(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
            example = parse_example(serialized)
            return _with_targets(example, targets) if targets is not None else example

        dataset = dataset.map(load_eval, num_parallel_calls=num_parallel_calls,
                              deterministic=True)
        if batch_size is not None:
            dataset = pad_and_batch(dataset, batch_size, labels, padded_size=crop)
    options = tf.data.Options()
    options.deterministic = deterministic
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)

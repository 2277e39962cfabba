"""The panoptic TFRecord format: RGB-encoded ids, example encoding and parsing, metadata.

One `tf.train.Example` per image:

- `image/encoded`: the dataset's original image file bytes, never re-encoded (COCO JPEG,
  Cityscapes PNG).
- `image/format`: `"jpeg"` or `"png"`.
- `image/id`: the dataset's own image id as a string (COCO `"139"`, Cityscapes
  `"frankfurt_000000_000294"`).
- `image/height`, `image/width`: the image size in pixels.
- `panoptic/encoded`: the panoptic map `class * label_divisor + instance` as an 8-bit RGB
  PNG holding `id = R + 256 G + 256^2 B`, the encoding COCO and Cityscapes use for
  their segment ids. It is lossless for every id below 2^24, so it holds both
  `132 * 256 + 255` (COCO) and the void id `255 * 1000` (Cityscapes), which a 16-bit
  PNG could not.

`metadata.json`, written next to the shards by `python -m axial_keras.data.convert`:

    {"classes": [{"id": 0, "source_id": 7, "name": "road", "isthing": false}, ...],
     "label_divisor": 1000, "ignore_label": 255,
     "num_examples": {"train": 2975, "val": 500}}

`num_examples` counts the examples written per split: both splits of a dataset share one
output folder (`train-*.tfrecord`, `val-*.tfrecord`) and one `metadata.json`.
"""

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from axial_keras.files import write_json
from axial_keras.labels import PanopticClass, PanopticLabels

METADATA_FILENAME = "metadata.json"
IMAGE_FORMATS = ("jpeg", "png")
# The largest id an RGB PNG holds.
MAX_RGB_ID = 256 ** 3 - 1

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "panoptic/encoded": tf.io.FixedLenFeature([], tf.string),
}


def rgb_to_id(rgb: Any) -> tf.Tensor:
    """Decodes RGB-encoded ids: `id = R + 256 G + 256^2 B`.

    Args:
        rgb: uint8 tensor [..., 3].

    Returns:
        int32 tensor [...].
    """
    rgb = tf.cast(rgb, tf.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: Any) -> tf.Tensor:
    """Encodes ids in [0, 2^24) as RGB, the inverse of `rgb_to_id`.

    Args:
        ids: integer tensor [...].

    Returns:
        uint8 tensor [..., 3].
    """
    ids = tf.cast(ids, tf.int32)
    return tf.cast(tf.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1),
                   tf.uint8)


def decode_id_png(encoded: Any) -> tf.Tensor:
    """Decodes an RGB-encoded id PNG (ours, or a COCO/Cityscapes segment PNG).

    Args:
        encoded: scalar string tensor, PNG bytes.

    Returns:
        int32 tensor [height, width].

    Raises:
        tf.errors.InvalidArgumentError: eagerly, when the bytes are not a PNG.
    """
    return rgb_to_id(tf.io.decode_png(encoded, channels=3, dtype=tf.uint8))


def encode_id_png(ids: np.ndarray) -> bytes:
    """Encodes an id map as an RGB PNG, losslessly.

    Args:
        ids: integer array [height, width] with values in [0, 2^24).

    Returns:
        PNG bytes that `decode_id_png` turns back into `ids`.

    Raises:
        ValueError: for a value outside [0, 2^24) or a shape that is not 2-D.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"An id map must be 2-D [height, width], got shape {ids.shape}.")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_RGB_ID):
        raise ValueError(f"Ids must lie in [0, {MAX_RGB_ID}], got [{ids.min()}, {ids.max()}].")
    return tf.io.encode_png(id_to_rgb(ids)).numpy()


def encode_example(image_id: str, image_bytes: bytes, image_format: str,
                   panoptic: np.ndarray) -> bytes:
    """Serializes one image and its panoptic map as a `tf.train.Example`.

    Args:
        image_id: the dataset's image id.
        image_bytes: the original encoded image file.
        image_format: `"jpeg"` or `"png"`.
        panoptic: int array [height, width] of panoptic ids (image size).

    Returns:
        The serialized example.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}.")
    height, width = np.shape(panoptic)

    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    features = {
        "image/encoded": bytes_feature(image_bytes),
        "image/format": bytes_feature(image_format.encode()),
        "image/id": bytes_feature(image_id.encode()),
        "image/height": int_feature(int(height)),
        "image/width": int_feature(int(width)),
        "panoptic/encoded": bytes_feature(encode_id_png(panoptic)),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def parse_example(serialized: Any) -> Dict[str, tf.Tensor]:
    """Parses and decodes one serialized example (graph-safe, for `tf.data` maps).

    Args:
        serialized: scalar string tensor.

    Returns:
        `{"image": uint8 [height, width, 3], "panoptic": int32 [height, width],
        "image_id": string []}`.
    """
    features = tf.io.parse_single_example(serialized, _FEATURES)
    image = tf.io.decode_image(features["image/encoded"], channels=3, dtype=tf.uint8,
                               expand_animations=False)
    panoptic = decode_id_png(features["panoptic/encoded"])
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.shape(image)[:2], tf.shape(panoptic),
            message="image and panoptic map sizes differ")]):
        image = tf.ensure_shape(tf.identity(image), [None, None, 3])
    return {"image": image, "panoptic": panoptic, "image_id": features["image/id"]}


def shard_path(output_dir: str, split: str, index: int, num_shards: int) -> str:
    """The path of shard `index` of `num_shards`: `{split}-00003-of-00010.tfrecord`."""
    return os.path.join(output_dir, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def metadata_dict(labels: PanopticLabels, source_ids: Sequence[int],
                  num_examples: Mapping[str, int]) -> Dict[str, Any]:
    """The `metadata.json` content (see the module docstring).

    Args:
        labels: PanopticLabels. The classes of the records.
        source_ids: ints. The dataset's category id of each class.
        num_examples: split -> examples written.
    """
    if len(source_ids) != labels.num_classes:
        raise ValueError(f"{len(source_ids)} source ids for {labels.num_classes} classes.")
    return {
        "classes": [{"id": c.id, "source_id": int(source_id), "name": c.name,
                     "isthing": c.is_thing} for c, source_id in zip(labels.classes, source_ids)],
        "label_divisor": labels.label_divisor,
        "ignore_label": labels.ignore_label,
        "num_examples": {split: int(n) for split, n in sorted(num_examples.items())},
    }


def read_metadata_json(path: str) -> Dict[str, Any]:
    """Reads `metadata.json` (a file, or the folder holding it).

    Raises:
        FileNotFoundError: when there is no such file.
        ValueError: naming the file, when it is not valid metadata.
    """
    if os.path.isdir(path):
        path = os.path.join(path, METADATA_FILENAME)
    with open(path) as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
    missing = {"classes", "label_divisor", "ignore_label", "num_examples"} - set(values)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}.")
    return values


def write_metadata_json(output_dir: str, values: Dict[str, Any]) -> str:
    """Writes `values` to `output_dir/metadata.json` atomically, merging `num_examples`.

    Splits converted earlier into the same folder keep their counts.

    Raises:
        ValueError: when the folder already holds metadata of other classes or label
            encoding (a different dataset).
    """
    path = os.path.join(output_dir, METADATA_FILENAME)
    if os.path.exists(path):
        existing = read_metadata_json(path)
        for key in ("classes", "label_divisor", "ignore_label"):
            if existing[key] != values[key]:
                raise ValueError(f"{path} holds a different {key!r}: {output_dir} already "
                                 "holds another dataset; use a new output folder.")
        values = dict(values, num_examples=dict(existing["num_examples"],
                                                **values["num_examples"]))
    return write_json(path, values)


def load_metadata(path: str) -> PanopticLabels:
    """The class list and label encoding of a converted dataset.

    Args:
        path: `metadata.json`, or the folder holding it.

    Returns:
        The `PanopticLabels` of the records (class ids are their contiguous ids).

    Raises:
        FileNotFoundError, ValueError: as `read_metadata_json`, and ValueError when the
            class ids are not 0, 1, 2, ... in order.
    """
    values = read_metadata_json(path)
    classes = values["classes"]
    if [c["id"] for c in classes] != list(range(len(classes))):
        raise ValueError(f"{path}: class ids must be 0, 1, 2, ... in order.")
    return PanopticLabels(tuple(PanopticClass(int(c["id"]), str(c["name"]), bool(c["isthing"]))
                                for c in classes),
                          label_divisor=int(values["label_divisor"]),
                          ignore_label=int(values["ignore_label"]))


def metadata_path_for(file_pattern: str) -> Optional[str]:
    """`metadata.json` in the folder of `file_pattern`, if it exists there."""
    path = os.path.join(os.path.dirname(file_pattern), METADATA_FILENAME)
    return path if os.path.exists(path) else None

"""The serving graph every exported format shares: decoding, padding, the panoptic predictor.

Two entry points, both batched and both running an `axial_keras.panoptic.PanopticPredictor`
(the trainer's evaluation path: model, then post-processing) inside the graph:

- `serve_encoded(predictor, images)`: `images` is a `[batch]` `tf.string` of encoded
  PNG, JPEG, BMP or GIF (first frame) files, decoded to RGB. A batch of mixed sizes is
  padded bottom/right to the largest height and width with mid-grey
  (`axial_keras.pixels.MID_GREY`, the value the model pads with itself); `image_size`
  says each image's own `(height, width)` and everything outside it is void. Each image
  is post-processed on its own region only.
- `serve_pixels(predictor, images)`: `images` is `uint8 [batch, height, width, 3]`. No
  decoding and no `tf.cond`/`tf.map_fn`, so it converts to LiteRT builtins and ONNX
  (with a predictor built with `unroll=True`: no WHILE loop either).

Both return the dict `OUTPUT_KEYS` names:

- `panoptic` int32 `[B, H, W]`: `class * label_divisor + instance` (void:
  `ignore_label * label_divisor`).
- `semantic` int32 `[B, H, W]`: the class (void: `ignore_label`).
- `instance` int32 `[B, H, W]`: instance id, 1-based per image (0 for stuff and void).
- `instance_scores` float32 `[B, H, W]`: the predicted centre-heatmap value at the centre
  of each pixel's instance (0 for stuff and void). The heatmap is trained towards a
  Gaussian of peak 1, so it is a confidence near [0, 1] but not a probability: it can
  slightly exceed 1.
- `semantic_probability` float32 `[B, H, W]`: softmax probability of the most likely class
  at each pixel (one number per pixel keeps the response small for 133 COCO classes). 0
  outside an image's own region.
- `image_size` int32 `[B, 2]`: each image's `(height, width)`; crop `[:h, :w]`.

Bad input raises `tf.errors.InvalidArgumentError` whose message starts with `images[i]`
and names the problem: an empty string, a file that is not PNG/JPEG/BMP/GIF, a header
too short to hold its size, a zero-size image; corrupt data fails in the decoder with its
own message (e.g. "Invalid PNG data", "jpeg::Uncompress failed").
"""

from typing import Dict

import tensorflow as tf

from axial_keras.panoptic import PanopticPredictor
from axial_keras.pixels import MID_GREY

MAP_KEYS = ("panoptic", "semantic", "instance", "instance_scores", "semantic_probability")
OUTPUT_KEYS = MAP_KEYS + ("image_size",)
# Every op after the network is created in this name scope, so that quantization can
# leave post-processing in float (`export.tflite`).
POST_PROCESSING_SCOPE = "post_processing"
IMAGE_FORMATS = "PNG, JPEG, BMP or GIF"

# File signatures; the header fields that hold the size, and the bytes needed to read them.
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_BMP = b"BM"
_GIF = (b"GIF87a", b"GIF89a")
_HEADER_BYTES = {"png": 24, "bmp": 26, "gif": 10}


def _starts_with(data: tf.Tensor, prefix: bytes) -> tf.Tensor:
    return tf.equal(tf.strings.substr(data, 0, len(prefix)), prefix)


def _header_ints(data: tf.Tensor, start: int, count: int, width: int,
                 big_endian: bool) -> tf.Tensor:
    """`count` unsigned ints of `width` bytes from byte `start` (zero-padded past the end)."""
    padded = tf.strings.join([data, tf.constant(b"\0" * 32)])
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, start, count * width), tf.uint8),
                  tf.int64)
    raw = tf.reshape(raw, [count, width])
    weights = [256 ** (width - 1 - i) if big_endian else 256 ** i for i in range(width)]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64)[None, :], axis=1)


def _header_size(data: tf.Tensor, is_png, is_bmp) -> tf.Tensor:
    """`(height, width)` declared in a PNG, BMP or GIF header (int64 [2])."""
    png = _header_ints(data, 16, 2, 4, big_endian=True)[::-1]
    bmp = _header_ints(data, 18, 2, 4, big_endian=False)[::-1]
    bmp = tf.where(bmp >= 2 ** 31, 2 ** 32 - bmp, bmp)  # Negative height: top-down rows.
    gif = _header_ints(data, 6, 2, 2, big_endian=False)[::-1]
    return tf.where(is_png, png, tf.where(is_bmp, bmp, gif))


def _check(condition: tf.Tensor, index: tf.Tensor, problem: str) -> tf.Operation:
    """An assertion whose InvalidArgumentError reads `images[index] <problem>`."""
    return tf.debugging.Assert(
        condition, [tf.strings.format("images[{}] " + problem, index)], summarize=1)


def decode_image(data: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """Decodes one encoded image to RGB after checking it names a known, non-empty format.

    Args:
        data: scalar `tf.string`, the file's bytes.
        index: scalar int32, the image's position in the request (for messages).

    Returns:
        uint8 `[height, width, 3]`.
    """
    length = tf.strings.length(data)
    is_png, is_jpeg, is_bmp = (_starts_with(data, _PNG), _starts_with(data, _JPEG),
                               _starts_with(data, _BMP))
    is_gif = tf.logical_or(_starts_with(data, _GIF[0]), _starts_with(data, _GIF[1]))
    known = tf.reduce_any(tf.stack([is_png, is_jpeg, is_bmp, is_gif]))
    header_bytes = tf.where(is_png, _HEADER_BYTES["png"],
                            tf.where(is_bmp, _HEADER_BYTES["bmp"], _HEADER_BYTES["gif"]))
    size = _header_size(data, is_png, is_bmp)
    empty = _check(length > 0, index, "is an empty string, not an encoded image.")
    with tf.control_dependencies([empty]):
        kind = _check(known, index, "is not an image file: its first bytes are not a "
                      f"{IMAGE_FORMATS} signature.")
    with tf.control_dependencies([kind]):
        header = _check(tf.logical_or(is_jpeg, length >= header_bytes), index,
                        "is truncated: the file ends inside its header.")
    with tf.control_dependencies([header]):
        declared = _check(tf.logical_or(is_jpeg, tf.reduce_all(size > 0)), index,
                          "is a zero-size image: its header declares zero height or width.")
    with tf.control_dependencies([declared]):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    decoded = _check(tf.reduce_all(tf.shape(image)[:2] > 0), index,
                     "is a zero-size image: it decodes to zero height or width.")
    with tf.control_dependencies([decoded]):
        return tf.ensure_shape(tf.identity(image), [None, None, 3])


def decode_images(images: tf.Tensor):
    """Decodes a batch of encoded images and pads them to one size.

    Args:
        images: `tf.string [batch]`.

    Returns:
        `(pixels, image_size)`: float32 `[batch, height, width, 3]` in [0, 255], padded
        bottom/right with `MID_GREY` to the largest height and width, and int32
        `[batch, 2]` each image's own `(height, width)`.
    """
    count = tf.shape(images)[0]
    nonempty = tf.debugging.Assert(count > 0, ["images holds no images: send at least one."])
    with tf.control_dependencies([nonempty]):
        indices = tf.range(count)

    def decode(args):
        data, index = args
        image = decode_image(data, index)
        return tf.RaggedTensor.from_tensor(image), tf.shape(image)[:2]

    ragged, sizes = tf.map_fn(
        decode, (images, indices),
        fn_output_signature=(tf.RaggedTensorSpec([None, None, 3], tf.uint8, ragged_rank=1),
                             tf.TensorSpec([2], tf.int32)))
    pixels = tf.cast(ragged, tf.float32).to_tensor(default_value=MID_GREY)
    return tf.ensure_shape(pixels, [None, None, None, 3]), sizes


def _void_values(predictor: PanopticPredictor) -> Dict:
    """The value each output takes outside an image's own region."""
    labels = predictor.labels
    return {"panoptic": labels.void_id, "semantic": labels.ignore_label,
            "instance": 0, "instance_scores": 0.0, "semantic_probability": 0.0}


def _post_process_each(predictor: PanopticPredictor, outputs: Dict,
                       sizes: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Post-processes every image on its own `image_size` region, void elsewhere."""
    shape = tf.shape(outputs["center_heatmap"])
    void = _void_values(predictor)

    def one(index):
        height, width = sizes[index, 0], sizes[index, 1]
        crop = {key: value[index:index + 1, :height, :width] for key, value in outputs.items()}
        result = predictor.post_process(crop)
        paddings = [[0, shape[1] - height], [0, shape[2] - width]]
        return tuple(tf.pad(result[key][0], paddings, constant_values=void[key])
                     for key in MAP_KEYS)

    signature = tuple(tf.TensorSpec([None, None], tf.float32 if key in (
        "instance_scores", "semantic_probability") else tf.int32) for key in MAP_KEYS)
    maps = tf.map_fn(one, tf.range(shape[0]), fn_output_signature=signature)
    return dict(zip(MAP_KEYS, maps))


def _named(result: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    return {key: tf.identity(result[key], name=key) for key in OUTPUT_KEYS}


def serve_encoded(predictor: PanopticPredictor, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """`serving_default`: encoded images `tf.string [batch]` -> the `OUTPUT_KEYS` dict.

    A batch whose images share one size is post-processed as a batch; a mixed batch
    image by image on each image's own region (results never depend on batch mates'
    sizes through post-processing; the network itself sees the mid-grey padding).
    """
    pixels, sizes = decode_images(images)
    outputs = predictor.network_outputs(pixels)
    with tf.name_scope(POST_PROCESSING_SCOPE):
        shape = tf.shape(pixels)
        same_size = tf.reduce_all(tf.equal(sizes, shape[1:3][None, :]))
        result = tf.cond(same_size, lambda: predictor.post_process(outputs),
                         lambda: _post_process_each(predictor, outputs, sizes))
        result["image_size"] = sizes
        return _named(result)


def serve_pixels(predictor: PanopticPredictor, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """`serving_uint8`: `uint8 [batch, height, width, 3]` -> the `OUTPUT_KEYS` dict."""
    outputs = predictor.network_outputs(tf.cast(images, tf.float32))
    with tf.name_scope(POST_PROCESSING_SCOPE):
        result = predictor.post_process(outputs)
        shape = tf.shape(images)
        result["image_size"] = tf.tile(shape[1:3][None, :], [shape[0], 1])
        return _named(result)

"""Images in and out of fixed-size exported models (LiteRT, ONNX).

A `.tflite` or `.onnx` export takes one fixed `(height, width)`. `fit_image` places any
image in that frame the way the SavedModel treats small images: at its own scale in the
top-left corner, padded bottom/right with mid-grey; an image larger than the frame is
first shrunk (aspect ratio kept) until it fits. `unfit_map` takes an output map back to
the image's own size (nearest neighbour, so ids stay ids).
"""

from typing import Tuple

import numpy as np
import tensorflow as tf

from axial_keras.pixels import MID_GREY

PAD_PIXEL = int(MID_GREY + 0.5)  # The uint8 nearest to the model's mid-grey padding.


def read_image(path: str) -> np.ndarray:
    """The RGB pixels of a PNG / JPEG / BMP / GIF (first frame) file: uint8 `[h, w, 3]`."""
    data = tf.io.read_file(path)
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def fit_image(image: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Places `image` in a `size` frame (module docstring).

    Args:
        image: uint8 `[h, w, 3]`.
        size: `(height, width)` of the frame.

    Returns:
        `(frame, content)`: uint8 `[height, width, 3]` and the `(h', w')` the image
        occupies in its top-left corner.
    """
    height, width = size
    h, w = image.shape[:2]
    scale = min(1.0, height / h, width / w)
    content = (max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale))))
    if content != (h, w):
        image = tf.cast(tf.round(tf.image.resize(image, content, antialias=True)),
                        tf.uint8).numpy()
    frame = np.full((height, width, 3), PAD_PIXEL, np.uint8)
    frame[:content[0], :content[1]] = image
    return frame, content


def unfit_map(values: np.ndarray, content: Tuple[int, int],
              original: Tuple[int, int]) -> np.ndarray:
    """Crops a `[height, width]` output map to `content` and resizes it to `original`
    (nearest neighbour)."""
    values = values[:content[0], :content[1]]
    if content == tuple(original):
        return values
    rows = np.minimum((np.arange(original[0]) + 0.5) * content[0] / original[0],
                      content[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(original[1]) + 0.5) * content[1] / original[1],
                      content[1] - 1).astype(np.int64)
    return values[rows][:, cols]

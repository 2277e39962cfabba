"""The handwritten-digits set that ships inside scikit-learn, as image tensors.

1797 grayscale 8x8 digits (UCI ML hand-written digits, bundled with scikit-learn, no
download). Images are scaled to [0, 1], upsampled bilinearly and split into a fixed,
stratified train/test split, so every run sees the same data.
"""

from typing import Tuple

import numpy as np

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def test_mask(labels: np.ndarray) -> np.ndarray:
    """The fixed stratified split: True for the 20% of each class held out for testing.

    Args:
        labels: int `[n]` digit labels in scikit-learn's order.

    Returns:
        bool `[n]`, the same for every caller (classification and panoptic data).
    """
    rng = np.random.RandomState(SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for label in range(10):
        index = np.flatnonzero(labels == label)
        rng.shuffle(index)
        test[index[: int(round(TEST_FRACTION * len(index)))]] = True
    return test


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (align-corners) resize of [n, h, w] float images to [n, size, size]."""
    n, h, w = images.shape
    ys = np.linspace(0.0, h - 1.0, size)
    xs = np.linspace(0.0, w - 1.0, size)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[None, :, None]
    wx = (xs - x0)[None, None, :]
    top = images[:, y0][:, :, x0] * (1 - wx) + images[:, y0][:, :, x1] * wx
    bottom = images[:, y1][:, :, x0] * (1 - wx) + images[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


def load_digits(image_size: int = 32) -> Tuple[Tuple[np.ndarray, np.ndarray],
                                               Tuple[np.ndarray, np.ndarray]]:
    """Returns `((x_train, y_train), (x_test, y_test))`.

    Args:
        image_size: int. Side of the upsampled square images (>= 8).

    Returns:
        Images as float32 `[n, image_size, image_size, 1]` in [0, 1] and labels as
        int32 `[n]` (0-9); 1438 training and 359 test examples (20% of each class).

    Example:
    >>> (x_train, y_train), (x_test, y_test) = load_digits(32)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"`image_size` must be an int >= 8, got {image_size!r}.")
    digits = sklearn_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int32)
    test = test_mask(labels)
    images = _upsample(images, image_size).astype(np.float32)[..., None]
    return (images[~test], labels[~test]), (images[test], labels[test])

"""Panoptic maps as pictures: stable colours, overlays, tiles and a PNG writer.

NumPy and zlib only (no TensorFlow, PIL or matplotlib), so it runs wherever the arrays are.

Colours are a pure function of the panoptic id. Class `c` gets the hue
`frac(c * 0.618...)` (golden-ratio steps: classes with nearby ids get far-apart hues). Its
stuff and crowd pixels (instance id 0) get a pale tint of that hue; each thing instance gets
a stronger saturation and a brightness picked by its instance id from a low-discrepancy
sequence, so instances of one class differ from each other and from the class's tint.
Void pixels are black.

Example:
>>> rgb = colorize_panoptic(panoptic, DIGITS_PANOPTIC)
>>> write_png("sample.png", side_by_side(image, overlay(image, rgb)))
"""

import os
import struct
import zlib
from typing import Union

import numpy as np

from axial_keras.files import write_atomically
from axial_keras.labels import PanopticLabels

# Saturation and value of instance id 0 (stuff, crowd); instances use the ranges below.
_BASE_SATURATION = 0.3
_BASE_VALUE = 1.0
_INSTANCE_SATURATION = (0.45, 1.0)
_INSTANCE_VALUE = (0.5, 0.95)
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949
# Additive recurrence constants of the R2 sequence (1 / g and 1 / g**2 for the plastic number).
_R2 = (0.7548776662466927, 0.5698402909980532)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # Channels -> grey, RGB, RGBA.


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Converts HSV in [0, 1] (broadcastable arrays) to float RGB [..., 3] in [0, 1]."""
    hue, saturation, value = np.broadcast_arrays(hue, saturation, value)
    sector = np.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.astype(np.int64) % 6
    p = value * (1.0 - saturation)
    q = value * (1.0 - saturation * fraction)
    t = value * (1.0 - saturation * (1.0 - fraction))
    choices = [np.stack(channels, axis=-1) for channels in (
        (value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value),
        (value, p, q))]
    return np.choose(sector[..., None], choices)


def colorize_panoptic(panoptic: np.ndarray, labels: PanopticLabels) -> np.ndarray:
    """Colours a panoptic map.

    Args:
        panoptic: np.ndarray. Integer panoptic ids `class_id * label_divisor +
            instance_id`, shape `[height, width]` (any shape works; the colour is added
            as a last axis).
        labels: PanopticLabels. Label divisor, void class (coloured black), classes and
            which of them are things (their instances get their own colours).

    Returns:
        uint8 RGB `[height, width, 3]`.

    Raises:
        ValueError: If an id is negative or its class is neither a class nor void.
    """
    panoptic = np.asarray(panoptic)
    if not np.issubdtype(panoptic.dtype, np.integer):
        raise ValueError(f"`panoptic` must hold integers, got dtype {panoptic.dtype}.")
    label_divisor, ignore_label = labels.label_divisor, labels.ignore_label
    num_classes = labels.num_classes
    class_ids = panoptic // label_divisor
    instance_ids = panoptic % label_divisor
    void = class_ids == ignore_label
    bad = (panoptic < 0) | (~void & (class_ids >= num_classes))
    if bad.any():
        raise ValueError(f"Panoptic ids {np.unique(panoptic[bad])[:10].tolist()} have no class "
                         f"in [0, {num_classes}) and are not void (class {ignore_label}).")
    things = np.array([c.is_thing for c in labels.classes], bool)

    hue = (np.where(void, 0, class_ids) * _GOLDEN_RATIO_CONJUGATE) % 1.0
    instance = np.where(void, False, things[np.where(void, 0, class_ids)]) & (instance_ids > 0)
    low, high = _INSTANCE_SATURATION
    saturation = np.where(instance, low + (high - low) * ((0.5 + instance_ids * _R2[0]) % 1.0),
                          _BASE_SATURATION)
    low, high = _INSTANCE_VALUE
    value = np.where(instance, low + (high - low) * ((0.5 + instance_ids * _R2[1]) % 1.0),
                     _BASE_VALUE)
    value = np.where(void, 0.0, value)
    return np.round(_hsv_to_rgb(hue, saturation, value) * 255.0).astype(np.uint8)


def overlay(image: np.ndarray, colored: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends a colour map over an image: `(1 - alpha) * image + alpha * colored`.

    Args:
        image: uint8 RGB `[height, width, 3]`.
        colored: uint8 RGB `[height, width, 3]`, e.g. from `colorize_panoptic`.
        alpha: Weight of `colored`, in [0, 1].

    Returns:
        uint8 RGB `[height, width, 3]`.

    Raises:
        ValueError: If the shapes differ, an input is not uint8 or `alpha` is out of range.
    """
    image, colored = np.asarray(image), np.asarray(colored)
    if image.shape != colored.shape or image.dtype != np.uint8 or colored.dtype != np.uint8:
        raise ValueError("`image` and `colored` must be uint8 arrays of one shape, got "
                         f"{image.dtype} {image.shape} and {colored.dtype} {colored.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def side_by_side(*images: np.ndarray, separator: int = 2) -> np.ndarray:
    """Tiles images left to right (e.g. image | ground truth | prediction).

    Args:
        *images: uint8 images of one height, each `[height, width, 3]` or greyscale
            `[height, width]` / `[height, width, 1]` (repeated to RGB).
        separator: Width in pixels of the white column between neighbours.

    Returns:
        uint8 RGB `[height, total_width, 3]`.

    Raises:
        ValueError: If no image is given, the heights differ, or an image is not uint8.
    """
    if not images:
        raise ValueError("`side_by_side` needs at least one image.")
    if separator < 0:
        raise ValueError(f"`separator` must be >= 0, got {separator}.")
    tiles = []
    for image in images:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"Images must be uint8, got {image.dtype}.")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"Images must be [height, width, 1 or 3], got {image.shape}.")
        tiles.append(np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image)
    heights = {tile.shape[0] for tile in tiles}
    if len(heights) != 1:
        raise ValueError(f"Images must share a height, got {sorted(heights)}.")
    gap = np.full((tiles[0].shape[0], separator, 3), 255, np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return np.concatenate(row, axis=1)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, tag, data, CRC-32 of tag and data."""
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def encode_png(image: np.ndarray) -> bytes:
    """Encodes an image as PNG bytes (8 bits per channel, every row with the Up filter).

    Args:
        image: uint8 `[height, width, 3]` (RGB), `[height, width, 4]` (RGBA), or greyscale
            `[height, width]` / `[height, width, 1]`.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: If the image is not uint8 or has an unsupported shape.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"PNG images must be uint8, got {image.dtype}.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in _PNG_COLOUR_TYPES or 0 in image.shape:
        raise ValueError("PNG images must be non-empty [height, width, 1, 3 or 4], got "
                         f"{image.shape}.")
    height, width, channels = image.shape
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    filtered = rows.copy()
    filtered[1:] -= rows[:-1]  # Up filter: difference to the row above, modulo 256.
    scanlines = np.concatenate([np.full((height, 1), 2, np.uint8), filtered], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
            + _png_chunk(b"IEND", b""))


def write_png(path: Union[str, os.PathLike], rgb_uint8: np.ndarray) -> None:
    """Writes an image to a PNG file atomically (`axial_keras.files.write_atomically`).

    Readers never see a partial file; an existing file at `path` is replaced.

    Args:
        path: Destination file.
        rgb_uint8: uint8 image, as accepted by `encode_png` (RGB `[height, width, 3]`).

    Raises:
        ValueError: If the image cannot be encoded.
        OSError: If the file cannot be written.
    """
    write_atomically(path, encode_png(rgb_uint8))

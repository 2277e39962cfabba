"""Panoptic visualization: PNG files TensorFlow decodes exactly, stable distinct colours."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from axial_keras.data.digits_panoptic import DIGITS_PANOPTIC, generate_digits_panoptic
from axial_keras.panoptic import visualization
from axial_keras.panoptic.visualization import (colorize_panoptic, overlay, side_by_side,
                                                write_png)

META = DIGITS_PANOPTIC


def _colour_of_each_segment(panoptic, colours):
    """{segment id: set of colours its pixels have}."""
    return {int(s): {tuple(c) for c in colours[panoptic == s]} for s in np.unique(panoptic)}


@pytest.mark.parametrize("shape", [(1, 1, 3), (5, 7, 3), (64, 64, 3), (37, 3, 3), (6, 9),
                                   (6, 9, 1), (4, 5, 4)])
def test_png_round_trip_is_exact(tmp_path, shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "image.png"
    write_png(path, image)
    decoded = tf.io.decode_png(tf.io.read_file(str(path)), channels=0).numpy()
    np.testing.assert_array_equal(decoded, image.reshape(decoded.shape))
    assert decoded.shape[-1] == (shape[2] if len(shape) == 3 else 1)


def test_png_write_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = os.path.join(tmp_path, "out.png")
    write_png(path, np.zeros((3, 3, 3), np.uint8))
    image = np.full((8, 2, 3), 200, np.uint8)
    write_png(path, image)
    assert os.listdir(tmp_path) == ["out.png"]
    np.testing.assert_array_equal(tf.io.decode_png(tf.io.read_file(path)).numpy(), image)
    with pytest.raises(ValueError, match="uint8"):
        write_png(path, image.astype(np.float32))
    with pytest.raises(ValueError, match="height, width"):
        write_png(path, np.zeros((2, 2, 2), np.uint8))
    assert os.listdir(tmp_path) == ["out.png"]
    write_png(os.path.join(tmp_path, "new", "out.png"), image)  # the folder is made
    assert sorted(os.listdir(tmp_path)) == ["new", "out.png"]
    assert os.listdir(os.path.join(tmp_path, "new")) == ["out.png"]


def test_colours_are_distinct_per_segment_and_stable():
    images, panoptic = generate_digits_panoptic(20, "test")
    colours = [colorize_panoptic(p, META) for p in panoptic]
    assert colours[0].shape == (64, 64, 3) and colours[0].dtype == np.uint8
    palette = {}
    for p, c in zip(panoptic, colours):
        per_segment = _colour_of_each_segment(p, c)
        assert all(len(s) == 1 for s in per_segment.values())
        in_image = [next(iter(s)) for s in per_segment.values()]
        assert len(set(in_image)) == len(in_image)  # Distinct within an image.
        for segment, (colour,) in per_segment.items():
            assert palette.setdefault(segment, colour) == colour  # Same id, same colour.
    assert palette[DIGITS_PANOPTIC.ignore_label * 256] == (0, 0, 0)

    # Every instance id of every thing class, and the stuff / crowd tints: all distinct.
    ids = np.arange(12 * 256).reshape(12, 256)
    all_colours = colorize_panoptic(ids, META).reshape(-1, 3)[: 10 * 256 + 2 * 256]
    things = all_colours[: 10 * 256]
    assert len({tuple(c) for c in things}) == 10 * 256
    stuff = {tuple(all_colours[c * 256]) for c in (10, 11)}
    assert len(stuff) == 2 and not stuff & {tuple(c) for c in things}


def test_colorize_rejects_unknown_classes():
    with pytest.raises(ValueError, match=r"\[3072\]"):
        colorize_panoptic(np.array([[0, 12 * 256]]), META)
    with pytest.raises(ValueError, match="no class"):
        colorize_panoptic(np.array([[-1]]), META)
    with pytest.raises(ValueError, match="integers"):
        colorize_panoptic(np.zeros((2, 2), np.float32), META)


def test_overlay_blends_within_range():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    colored = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(image, colored, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, colored, alpha=1.0), colored)
    blended = overlay(image, colored, alpha=0.3)
    assert blended.dtype == np.uint8
    assert (blended >= np.minimum(image, colored)).all()
    assert (blended <= np.maximum(image, colored)).all()
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, colored, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        overlay(image, colored[:8])


def test_side_by_side_tiles_horizontally():
    a = np.full((4, 3, 3), 10, np.uint8)
    b = np.full((4, 5), 20, np.uint8)
    tiled = side_by_side(a, b, a, separator=2)
    assert tiled.shape == (4, 3 + 2 + 5 + 2 + 3, 3) and tiled.dtype == np.uint8
    np.testing.assert_array_equal(tiled[:, :3], a)
    assert (tiled[:, 3:5] == 255).all() and (tiled[:, 5:10] == 20).all()
    assert side_by_side(a, separator=0).shape == a.shape
    with pytest.raises(ValueError, match="height"):
        side_by_side(a, np.zeros((5, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="at least one"):
        side_by_side()


def test_module_imports_no_tensorflow():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('v', {visualization.__file__!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
            "bad = {'tensorflow', 'keras', 'PIL', 'matplotlib'} & set(sys.modules)\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)

"""Panoptic-DeepLab targets: hand-made labels, a deeplab2-style reference, graph modes.

Runs under the TensorFlow backend (tf.data and tf.function tests); the JAX backend is
checked by a subprocess that must give the same numbers.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from axial_keras.labels import PanopticLabels
from axial_keras.panoptic.targets import PanopticTargets, panoptic_targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIVISOR = 1000
IGNORE = 255
NUM_CLASSES = 4  # 0, 1 stuff; 2, 3 things
THINGS = (2, 3)
LABELS = PanopticLabels.from_ids(NUM_CLASSES, THINGS, DIVISOR, IGNORE)
KEYS = ("semantic", "semantic_weights", "center_heatmap", "center_weights", "offsets",
        "offset_weights")


def targets_np(label, **kwargs):
    return {k: ops.convert_to_numpy(v) for k, v in panoptic_targets(label, LABELS, **kwargs).items()}


def reference_targets(label, sigma=8.0, small_instance_area=4096, small_instance_weight=3.0):
    """The deeplab2 sample generator's loop over instances, one image at a time, in NumPy.

    Matches deeplab2 exactly except that void pixels get semantic weight 0 (deeplab2
    keeps 1 there; its loss ignores them through the label instead).
    """
    size = int(6 * sigma + 3)
    grid = np.arange(size, dtype=float)
    peak = 3 * sigma + 1
    gaussian = np.exp(-((grid[None] - peak) ** 2 + (grid[:, None] - peak) ** 2)
                      / (2 * sigma ** 2)).astype(np.float32)
    pad_begin, pad_end = int(round(3 * sigma + 1)), int(round(3 * sigma + 2))
    out = {k: [] for k in KEYS}
    for image in label:
        height, width = image.shape
        semantic = image // DIVISOR
        thing = np.isin(semantic, THINGS)
        crowd = thing & (image % DIVISOR == 0)
        panoptic = np.where(crowd, IGNORE * DIVISOR, image)
        weights = np.ones(image.shape, np.float32)
        center = np.zeros((height + pad_begin + pad_end, width + pad_begin + pad_end), np.float32)
        offsets = np.zeros(image.shape + (2,), np.float32)
        for panoptic_id in np.unique(panoptic):
            if panoptic_id // DIVISOR == IGNORE or panoptic_id % DIVISOR == 0:
                continue
            mask = panoptic == panoptic_id
            rows, cols = np.nonzero(mask)
            if len(rows) < small_instance_area:
                weights[mask] = small_instance_weight
            cy, cx = int(np.round(rows.mean())), int(np.round(cols.mean()))
            window = center[cy:cy + size, cx:cx + size]
            np.maximum(window, gaussian, out=window)
            offsets[mask] = np.stack([cy - rows, cx - cols], -1)
        void = semantic == IGNORE
        out["semantic"].append(semantic)
        out["semantic_weights"].append(np.where(void, 0.0, weights))
        out["center_heatmap"].append(center[pad_begin:pad_begin + height,
                                            pad_begin:pad_begin + width, None])
        out["center_weights"].append((~crowd & ~void).astype(np.float32))
        out["offsets"].append(offsets)
        out["offset_weights"].append((~crowd & thing).astype(np.float32))
    return {k: np.stack(v) for k, v in out.items()}


def random_labels(seed, batch, height, width):
    """Stuff background, void and crowd patches, overlapping thing rectangles and discs."""
    rng = np.random.default_rng(seed)
    label = np.where(rng.random((batch, 1, 1)) < 0.5, 0, 1 * DIVISOR)
    label = np.broadcast_to(label, (batch, height, width)).copy()
    rows, cols = np.mgrid[:height, :width]
    for b in range(batch):
        label[b, : height // 3, : width // 4] = 1 * DIVISOR
        for _ in range(8):
            class_id = int(rng.choice(THINGS + (IGNORE,), p=[0.45, 0.45, 0.1]))
            instance = 0 if rng.random() < 0.15 else int(rng.integers(1, 4))
            y, x = rng.integers(0, height), rng.integers(0, width)
            if rng.random() < 0.5:
                half_height, half_width = rng.integers(0, 9, 2)
                shape = (abs(rows - y) <= half_height) & (abs(cols - x) <= half_width)
            else:
                shape = (rows - y) ** 2 + (cols - x) ** 2 <= rng.integers(1, 80)
            label[b][shape] = class_id * DIVISOR + (0 if class_id == IGNORE else instance)
    return label.astype(np.int32)


def assert_targets_equal(got, want, heat_tol=1e-6):
    for key in KEYS:
        if key == "center_heatmap":
            np.testing.assert_allclose(got[key], want[key], rtol=heat_tol, atol=1e-7,
                                       err_msg=key)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_single_instance_centre_offsets_and_weights():
    label = np.zeros((1, 20, 30), np.int32)  # class 0 (stuff)
    label[0, 4:9, 10:20] = 2 * DIVISOR + 7  # rows 4..8 (mean 6), cols 10..19 (mean 14.5)
    out = targets_np(label, small_instance_area=10)
    assert out["semantic"].dtype == np.int32 and out["semantic"][0, 5, 12] == 2
    heat = out["center_heatmap"][0, :, :, 0]
    assert heat.shape == (20, 30) and heat.dtype == np.float32
    assert np.unravel_index(heat.argmax(), heat.shape) == (6, 14)  # 14.5 rounds to even
    assert heat[6, 14] == 1.0
    np.testing.assert_array_equal(out["offsets"][0, 4, 10], [2, 4])
    np.testing.assert_array_equal(out["offsets"][0, 8, 19], [-2, -5])
    np.testing.assert_array_equal(out["offsets"][0, 0, 0], [0, 0])
    instance = label[0] != 0
    np.testing.assert_array_equal(out["offset_weights"][0], instance.astype(np.float32))
    np.testing.assert_array_equal(out["center_weights"][0], np.ones((20, 30), np.float32))
    np.testing.assert_array_equal(out["semantic_weights"][0], np.ones((20, 30), np.float32))


def test_gaussian_values_near_centre_and_truncation_window():
    label = np.zeros((1, 81, 81), np.int32)
    label[0, 39:42, 39:42] = 3 * DIVISOR + 1  # centre (40, 40)
    heat = targets_np(label)["center_heatmap"][0, :, :, 0]
    for dy, dx in [(0, 0), (1, 0), (0, 2), (1, 2), (-3, 4), (25, 0), (-25, 25), (12, -25)]:
        want = np.float32(np.exp(-(dy * dy + dx * dx) / (2 * 8.0 ** 2)))
        np.testing.assert_allclose(heat[40 + dy, 40 + dx], want, rtol=1e-6)
    # Window half-width 3 sigma + 1 = 25: nothing at 26 px along either axis.
    assert heat[40 + 26, 40] == 0.0 and heat[40, 40 - 26] == 0.0 and heat[14, 66] == 0.0
    assert np.count_nonzero(heat) == 51 * 51


def test_max_of_overlapping_gaussians():
    label = np.zeros((1, 30, 60), np.int32)
    label[0, 15, 20] = 2 * DIVISOR + 1
    label[0, 15, 30] = 2 * DIVISOR + 2
    heat = targets_np(label, sigma=4.0)["center_heatmap"][0, :, :, 0]
    for x in range(60):
        want = max(np.exp(-((x - 20) ** 2) / 32.0) * (abs(x - 20) <= 13),
                   np.exp(-((x - 30) ** 2) / 32.0) * (abs(x - 30) <= 13))
        np.testing.assert_allclose(heat[15, x], want, rtol=1e-6, atol=1e-30)


def test_small_instances_weighted_below_the_area_threshold():
    label = np.zeros((1, 10, 20), np.int32)
    label[0, 0:3, 0:5] = 2 * DIVISOR + 1  # 15 px < 16: small
    label[0, 5:9, 0:4] = 2 * DIVISOR + 2  # 16 px: not small
    label[0, 0:2, 10:20] = 3 * DIVISOR  # crowd, 20 px: never "small"
    label[0, 9, 19] = IGNORE * DIVISOR
    weights = targets_np(label, small_instance_area=16, small_instance_weight=3.0)[
        "semantic_weights"][0]
    assert weights[1, 2] == 3.0 and weights[6, 1] == 1.0 and weights[1, 15] == 1.0
    assert weights[9, 19] == 0.0 and weights[9, 10] == 1.0
    assert np.count_nonzero(weights == 3.0) == 15


def test_crowd_and_void_regions():
    label = np.zeros((1, 12, 12), np.int32)
    label[0, 0:6, 0:6] = 2 * DIVISOR  # crowd of class 2
    label[0, 6:12, 6:12] = IGNORE * DIVISOR  # void
    label[0, 0:4, 8:12] = 3 * DIVISOR + 5
    out = targets_np(label)
    crowd, void = label[0] == 2 * DIVISOR, label[0] == IGNORE * DIVISOR
    np.testing.assert_array_equal(out["semantic"][0][crowd], 2)
    np.testing.assert_array_equal(out["semantic"][0][void], IGNORE)
    np.testing.assert_array_equal(out["semantic_weights"][0][crowd], 1.0)
    np.testing.assert_array_equal(out["semantic_weights"][0][void], 0.0)
    np.testing.assert_array_equal(out["center_weights"][0], (~crowd & ~void).astype(np.float32))
    np.testing.assert_array_equal(out["offset_weights"][0], (label[0] == 3005).astype(np.float32))
    np.testing.assert_array_equal(out["offsets"][0][crowd | void], 0.0)
    heat = out["center_heatmap"][0, :, :, 0]
    assert np.unravel_index(heat.argmax(), heat.shape) == (2, 10)  # (1.5, 9.5) rounded
    assert heat[2, 10] == 1.0 and np.count_nonzero(heat == 1.0) == 1  # no crowd centre


def test_touching_instances_of_different_classes_with_the_same_instance_id():
    label = np.zeros((1, 10, 20), np.int32)
    label[0, 2:8, 2:10] = 2 * DIVISOR + 1  # centre (4.5 -> 4, 5.5 -> 6)
    label[0, 2:8, 10:16] = 3 * DIVISOR + 1  # touching; centre (4, 12.5 -> 12)
    out = targets_np(label, sigma=2.0)
    heat = out["center_heatmap"][0, :, :, 0]
    assert heat[4, 6] == 1.0 and heat[4, 12] == 1.0 and np.count_nonzero(heat == 1.0) == 2
    np.testing.assert_array_equal(out["offsets"][0, 2, 9], [2, -3])  # to (4, 6)
    np.testing.assert_array_equal(out["offsets"][0, 2, 10], [2, 2])  # to (4, 12)


def test_half_way_centres_round_to_even_like_tf_round():
    label = np.zeros((1, 4, 8), np.int32)
    label[0, 0, 0:2] = 2 * DIVISOR + 1  # col mean 0.5 -> 0
    label[0, 2, 1:3] = 2 * DIVISOR + 2  # col mean 1.5 -> 2
    label[0, 0:2, 5:8] = 2 * DIVISOR + 3  # row mean 0.5 -> 0, col 6
    offsets = targets_np(label, sigma=1.0)["offsets"][0]
    np.testing.assert_array_equal(offsets[0, 1], [0, -1])
    np.testing.assert_array_equal(offsets[2, 1], [0, 1])
    np.testing.assert_array_equal(offsets[1, 5], [-1, 1])


def test_disconnected_instance_has_one_centre_outside_its_pixels():
    label = np.zeros((1, 9, 21), np.int32)
    label[0, 4, 0:3] = 2 * DIVISOR + 1
    label[0, 4, 18:21] = 2 * DIVISOR + 1  # same id: one instance, centre (4, 10)
    out = targets_np(label, sigma=2.0)
    assert out["center_heatmap"][0, 4, 10, 0] == 1.0
    np.testing.assert_array_equal(out["offsets"][0, 4, 0], [0, 10])
    np.testing.assert_array_equal(out["offsets"][0, 4, 20], [0, -10])


def test_images_of_a_batch_are_independent():
    labels = random_labels(0, 3, 24, 31)
    labels[1] = labels[0]
    labels[1, :5] = 3 * DIVISOR + 1  # shares an id with image 0 but not its pixels
    batched = targets_np(labels, sigma=3.0, small_instance_area=40)
    for b in range(3):
        alone = targets_np(labels[b:b + 1], sigma=3.0, small_instance_area=40)
        assert_targets_equal({k: v[b:b + 1] for k, v in batched.items()}, alone, heat_tol=0)


@pytest.mark.parametrize("seed,sigma,shape", [(1, 2.0, (2, 33, 47)), (2, 3.0, (3, 40, 29)),
                                              (3, 8.0, (2, 64, 70))])
def test_matches_the_deeplab2_loop_on_random_labels(seed, sigma, shape):
    labels = random_labels(seed, *shape)
    got = targets_np(labels, sigma=sigma, small_instance_area=40, small_instance_weight=2.5)
    want = reference_targets(labels, sigma=sigma, small_instance_area=40,
                             small_instance_weight=2.5)
    assert_targets_equal(got, want)


def test_accepts_integer_dtypes_and_no_things():
    label = np.full((1, 6, 6), 1001, np.int64)
    assert targets_np(label.astype(np.uint16))["semantic"][0, 0, 0] == 1
    out = panoptic_targets(label, PanopticLabels.from_ids(2, [], 1000, 255))
    assert float(ops.max(out["center_heatmap"])) == 0.0
    assert float(ops.max(out["offset_weights"])) == 0.0


def test_invalid_labels_raise_value_error_eagerly():
    label = np.zeros((2, 4, 4), np.int32)
    label[1, 2, 3] = 7 * DIVISOR + 2
    with pytest.raises(ValueError, match="7002 has class 7"):
        targets_np(label)
    label[1, 2, 3] = -5
    with pytest.raises(ValueError, match="-5 has class -1"):
        targets_np(label)
    with pytest.raises(ValueError, match="integer dtype, got float32"):
        targets_np(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(4, 4\) \(rank 2\)"):
        targets_np(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match=r"rank 4"):
        targets_np(np.zeros((1, 4, 4, 1), np.int32))
    with pytest.raises(ValueError, match="ignore_label"):
        PanopticTargets(PanopticLabels.from_ids(NUM_CLASSES, THINGS, DIVISOR, DIVISOR))
    with pytest.raises(TypeError, match="PanopticLabels"):
        PanopticTargets(NUM_CLASSES)


def test_config_round_trip():
    builder = PanopticTargets(LABELS, sigma=3.0, small_instance_area=40)
    clone = PanopticTargets.from_config(builder.get_config())
    assert clone.get_config() == builder.get_config() and clone.labels == LABELS
    label = random_labels(3, 1, 20, 24)
    assert_targets_equal(targets_np(label, sigma=3.0, small_instance_area=40),
                         {k: ops.convert_to_numpy(v) for k, v in clone(label).items()})


def test_graph_mode_treats_out_of_range_classes_as_void_and_checks_static_shapes():
    builder = PanopticTargets(LABELS)
    label = np.full((1, 4, 4), 2001, np.int32)
    label[0, 0, 0] = 9 * DIVISOR + 1
    out = tf.function(builder)(label)
    assert int(out["semantic"][0, 0, 0]) == IGNORE
    assert float(out["semantic_weights"][0, 0, 0]) == 0.0
    assert float(out["center_weights"][0, 0, 0]) == 0.0
    assert float(out["offset_weights"][0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="integer dtype"):
        tf.function(builder).get_concrete_function(tf.TensorSpec([None, None, None], tf.float32))
    with pytest.raises(ValueError, match="overflow int32"):
        tf.function(builder).get_concrete_function(tf.TensorSpec([1, 8192, 4096], tf.int32))


def test_tf_data_map_with_dynamic_shapes():
    shapes = [(2, 33, 47), (1, 20, 64), (3, 40, 29)]
    labels = [random_labels(seed, *shape) for seed, shape in enumerate(shapes)]
    builder = PanopticTargets(LABELS, sigma=3.0,
                              small_instance_area=40)
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(labels), output_signature=tf.TensorSpec([None, None, None], tf.int32))
    mapped = dataset.map(builder)
    assert mapped.element_spec["center_heatmap"].shape.as_list() == [None, None, None, 1]
    for label, got in zip(labels, mapped):
        want = reference_targets(label, sigma=3.0, small_instance_area=40)
        assert_targets_equal({k: v.numpy() for k, v in got.items()}, want)


JAX_SCRIPT = """
import json, sys
import jax
import numpy as np
from keras import ops
from axial_keras.labels import PanopticLabels
from axial_keras.panoptic.targets import PanopticTargets
labels = np.array(json.loads(sys.stdin.read()), np.int32)
builder = PanopticTargets(PanopticLabels.from_ids(4, (2, 3), 1000, 255), sigma=3.0,
                          small_instance_area=40)
eager = builder(labels)
jitted = jax.jit(builder)(labels)
for key in eager:
    np.testing.assert_array_equal(np.asarray(eager[key]), np.asarray(jitted[key]))
print(json.dumps({k: np.asarray(v).tolist() for k, v in eager.items()}))
"""


def test_jax_backend_gives_the_same_targets():
    labels = random_labels(7, 2, 30, 37)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT], input=json.dumps(labels.tolist()),
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = {k: np.asarray(v, np.float32) for k, v in json.loads(result.stdout).items()}
    want = targets_np(labels, sigma=3.0, small_instance_area=40)
    assert_targets_equal(got, {k: v.astype(np.float32) for k, v in want.items()})

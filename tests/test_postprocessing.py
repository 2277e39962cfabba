"""PanopticPostProcessor: exact recovery from ideal heads, batch independence, graph mode."""

import keras
import numpy as np
import pytest

from axial_keras.panoptic.postprocessing import PanopticPostProcessor

DIVISOR, IGNORE, NUM_CLASSES, THINGS = 100, 255, 5, (2, 3, 4)


def _scene(seed=0, height=48, width=56):
    """A label map: two stuff classes split by a line and thing instances of three
    classes, some touching (shared borders), as class * DIVISOR + instance."""
    rng = np.random.RandomState(seed)
    label = np.where(np.arange(height)[:, None] < height // 2 + rng.randint(-5, 5), 0, 1)
    label = np.broadcast_to(label, (height, width)) * DIVISOR
    label = label.copy()
    boxes = [(4, 4, 18, 16), (4, 16, 18, 30), (20, 10, 40, 22), (26, 30, 44, 50), (6, 36, 20, 52)]
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        cls = THINGS[i % len(THINGS)]
        label[y0:y1, x0:x1] = cls * DIVISOR + i + 1
    return label


def _ideal_heads(label, sigma=4.0):
    height, width = label.shape
    logits = np.eye(NUM_CLASSES, dtype="float32")[label // DIVISOR] * 10.0
    heat = np.zeros((height, width), "float32")
    offsets = np.zeros((height, width, 2), "float32")
    yy, xx = np.mgrid[:height, :width]
    for segment in np.unique(label):
        if segment // DIVISOR not in THINGS:
            continue
        mask = label == segment
        cy, cx = np.round(yy[mask].mean()), np.round(xx[mask].mean())
        heat = np.maximum(heat, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)))
        offsets[mask, 0] = cy - yy[mask]
        offsets[mask, 1] = cx - xx[mask]
    return logits, heat[..., None], offsets


def _batch(labels):
    heads = [_ideal_heads(label) for label in labels]
    return {"semantic_logits": np.stack([h[0] for h in heads]).astype("float32"),
            "center_heatmap": np.stack([h[1] for h in heads]).astype("float32"),
            "center_offsets": np.stack([h[2] for h in heads]).astype("float32")}


def _same_segmentation(pred, gt):
    """Equal up to renumbering of instances (a one-to-one map of segment ids)."""
    pairs = set(zip(pred.ravel().tolist(), gt.ravel().tolist()))
    assert len({p for p, _ in pairs}) == len(pairs) == len({g for _, g in pairs}), pairs
    for p, g in pairs:
        assert p // DIVISOR == g // DIVISOR
        assert (p % DIVISOR == 0) == (g % DIVISOR == 0)


def test_recovers_the_exact_panoptic_map_from_ideal_heads():
    labels = np.stack([_scene(0), _scene(1)])
    post = PanopticPostProcessor(THINGS, DIVISOR, IGNORE, nms_kernel=7, keep_k_centers=20)
    result = post(_batch(labels))
    for pred, gt in zip(np.asarray(result["panoptic"]), labels):
        _same_segmentation(pred, gt)
    np.testing.assert_array_equal(np.asarray(result["semantic"]), labels // DIVISOR)
    assert np.asarray(result["instance_scores"]).max() == pytest.approx(1.0)


def test_an_image_does_not_depend_on_its_batch_mates():
    labels = np.stack([_scene(0), _scene(3), _scene(5)])
    post = PanopticPostProcessor(THINGS, DIVISOR, IGNORE, keep_k_centers=20, stuff_area_limit=50)
    batch = _batch(labels)
    together = post(batch)
    for i in range(3):
        alone = post({k: v[i:i + 1] for k, v in batch.items()})
        for key in ("panoptic", "semantic", "instance", "instance_scores"):
            np.testing.assert_array_equal(np.asarray(alone[key])[0], np.asarray(together[key])[i])


def test_small_stuff_becomes_void_and_no_centre_means_void_things():
    label = np.zeros((20, 20), np.int64)
    label[:3, :3] = 1 * DIVISOR  # 9-pixel stuff segment
    label[10:15, 10:15] = 2 * DIVISOR + 1
    batch = _batch(label[None])
    batch["center_heatmap"] = np.zeros_like(batch["center_heatmap"])  # no centres at all
    result = PanopticPostProcessor(THINGS, DIVISOR, IGNORE, keep_k_centers=20, stuff_area_limit=10)(batch)
    pan = np.asarray(result["panoptic"])[0]
    void = IGNORE * DIVISOR
    assert np.all(pan[:3, :3] == void) and np.all(pan[10:15, 10:15] == void)
    assert np.all(pan[5:8, 5:8] == 0)
    assert np.all(np.asarray(result["semantic"])[0][:3, :3] == IGNORE)


def test_instances_take_their_majority_class():
    label = np.zeros((24, 24), np.int64)
    label[4:20, 4:20] = 2 * DIVISOR + 1
    batch = _batch(label[None])
    logits = batch["semantic_logits"].copy()
    logits[0, 4:8, 4:20] = np.eye(NUM_CLASSES)[3] * 10  # a minority of class-3 pixels
    batch["semantic_logits"] = logits
    pan = np.asarray(PanopticPostProcessor(THINGS, DIVISOR, IGNORE, keep_k_centers=20)(batch)["panoptic"])[0]
    assert set(np.unique(pan[4:20, 4:20]).tolist()) == {2 * DIVISOR + 1}


def test_runs_inside_a_compiled_function():
    post = PanopticPostProcessor(THINGS, DIVISOR, IGNORE, keep_k_centers=20)
    batch = _batch(np.stack([_scene(0)]))
    eager = np.asarray(post(batch)["panoptic"])
    small = _batch(np.stack([_scene(1, 9, 11)]))  # fewer pixels than keep_k_centers
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        spec = {"semantic_logits": tf.TensorSpec([None, None, None, NUM_CLASSES]),
                "center_heatmap": tf.TensorSpec([None, None, None, 1]),
                "center_offsets": tf.TensorSpec([None, None, None, 2])}
        fn = tf.function(lambda x: post(x)["panoptic"], input_signature=[spec])
    else:
        import jax

        fn = jax.jit(lambda x: post(x)["panoptic"])
    np.testing.assert_array_equal(np.asarray(fn(batch)), eager)
    assert np.asarray(fn(small)).shape == (1, 9, 11)


def test_bad_arguments():
    with pytest.raises(ValueError, match="nms_kernel"):
        PanopticPostProcessor(THINGS, DIVISOR, nms_kernel=4)
    with pytest.raises(ValueError, match="keep_k_centers"):
        PanopticPostProcessor(THINGS, 100, keep_k_centers=100)

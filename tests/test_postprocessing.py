"""PanopticPostProcessor: exact recovery from ideal heads, batch independence, graph mode."""

import keras
import numpy as np
import pytest

from axial_keras.labels import PanopticLabels
from axial_keras.panoptic.postprocessing import PanopticPostProcessor, PostProcessingSettings

DIVISOR, IGNORE, NUM_CLASSES, THINGS = 100, 255, 5, (2, 3, 4)
LABELS = PanopticLabels.from_ids(NUM_CLASSES, THINGS, DIVISOR, IGNORE)


def _post(**settings):
    return PanopticPostProcessor(LABELS, PostProcessingSettings(**settings))


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
    post = _post(nms_kernel=7, keep_k_centers=20)
    result = post(_batch(labels))
    for pred, gt in zip(np.asarray(result["panoptic"]), labels):
        _same_segmentation(pred, gt)
    np.testing.assert_array_equal(np.asarray(result["semantic"]), labels // DIVISOR)
    assert np.asarray(result["instance_scores"]).max() == pytest.approx(1.0)


def _numbered_in_class(label):
    """`label` with each class's instances renumbered 1, 2, ... by first pixel (raster)."""
    out = label.copy()
    ids, first = np.unique(label.ravel(), return_index=True)
    seen = {}
    for segment in ids[np.argsort(first)]:
        if segment % DIVISOR:
            seen[segment // DIVISOR] = seen.get(segment // DIVISOR, 0) + 1
            out[label == segment] = segment // DIVISOR * DIVISOR + seen[segment // DIVISOR]
    return out


def test_deeplab2_convention_numbers_instances_by_class_and_first_pixel():
    labels = np.stack([_scene(0), _scene(1)])
    batch = _batch(labels)
    batch["center_heatmap"][1, 32, 4] = 0.9  # a centre with no pixel: numbers skip it
    result = _post(nms_kernel=7, keep_k_centers=20, convention="deeplab2")(batch)
    for pred, gt in zip(np.asarray(result["panoptic"]), labels):
        np.testing.assert_array_equal(pred, _numbered_in_class(gt))
    # Instance slots follow the centres in raster order.
    for instance, centers in zip(np.asarray(result["instance"]), result["center_points"]):
        centers = np.asarray(centers)
        kept = centers[centers[:, 0] >= 0]
        raster = kept[:, 0] * labels.shape[2] + kept[:, 1]
        assert (np.diff(raster) > 0).all()
        assert set(np.unique(instance)) <= set(range(len(kept) + 1))


def test_deeplab2_convention_keeps_the_centres_above_the_kth_score():
    heat = np.zeros((1, 20, 40, 1), "float32")
    peaks = [((2, 30), 0.5), ((2, 5), 0.9), ((10, 20), 0.7), ((17, 3), 0.6), ((17, 35), 0.8)]
    for (y, x), score in peaks:
        heat[0, y, x, 0] = score
    deeplab2 = _post(nms_kernel=3, keep_k_centers=3, convention="deeplab2").find_centers(heat)
    ours = _post(nms_kernel=3, keep_k_centers=3).find_centers(heat)
    scores, y, x, valid = (np.asarray(v)[0] for v in deeplab2)
    # Strictly above the 3rd best score (0.7): two centres, in raster order.
    assert valid.tolist() == [True, True, False]
    assert list(zip(y[:2].tolist(), x[:2].tolist())) == [(2, 5), (17, 35)]
    np.testing.assert_array_equal(scores[:2], np.float32([0.9, 0.8]))
    scores, y, x, valid = (np.asarray(v)[0] for v in ours)
    assert valid.all() and list(zip(y.tolist(), x.tolist())) == [(2, 5), (17, 35), (10, 20)]


def test_an_image_does_not_depend_on_its_batch_mates():
    labels = np.stack([_scene(0), _scene(3), _scene(5)])
    post = _post(keep_k_centers=20, stuff_area_limit=50)
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
    result = _post(keep_k_centers=20, stuff_area_limit=10)(batch)
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
    pan = np.asarray(_post(keep_k_centers=20)(batch)["panoptic"])[0]
    assert set(np.unique(pan[4:20, 4:20]).tolist()) == {2 * DIVISOR + 1}


def test_runs_inside_a_compiled_function():
    post = _post(keep_k_centers=20)
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
        PostProcessingSettings(nms_kernel=4)
    with pytest.raises(ValueError, match="keep_k_centers"):
        _post(keep_k_centers=100)  # = DIVISOR: instance ids would not fit
    with pytest.raises(ValueError, match="grouping_tile"):
        PostProcessingSettings(keep_k_centers=20, grouping_tile=0)
    with pytest.raises(ValueError, match="convention"):
        PostProcessingSettings(keep_k_centers=20, convention="detectron2")
    with pytest.raises(TypeError, match="from_ids"):
        PanopticPostProcessor(THINGS)
    with pytest.raises(ValueError, match="logits have 2 classes"):
        _post(keep_k_centers=20)({"semantic_logits": np.zeros((1, 4, 4, 2), "float32"),
                                  "center_heatmap": np.zeros((1, 4, 4, 1), "float32"),
                                  "center_offsets": np.zeros((1, 4, 4, 2), "float32")})


def test_loose_arguments_and_config_round_trip_give_the_same_maps():
    batch = _batch(np.stack([_scene(0), _scene(2)]))
    want = _post(nms_kernel=5, keep_k_centers=20)(batch)
    loose = PanopticPostProcessor.from_ids(THINGS, DIVISOR, IGNORE, nms_kernel=5,
                                           keep_k_centers=20)
    assert loose.labels.thing_class_ids == THINGS and loose.settings.nms_kernel == 5
    rebuilt = PanopticPostProcessor.from_config(_post(nms_kernel=5, keep_k_centers=20).get_config())
    assert rebuilt.labels == LABELS and rebuilt.settings == PostProcessingSettings(0.1, 5, 20)
    for post in (loose, rebuilt):
        got = post(batch)
        for key in want:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_unrolled_grouping_gives_the_same_maps():
    labels = np.stack([_scene(0), _scene(4)])
    batch = _batch(labels)
    rng = np.random.RandomState(21)
    batch["center_offsets"] = batch["center_offsets"] + rng.normal(
        scale=3.0, size=batch["center_offsets"].shape).astype("float32")
    settings = PostProcessingSettings(nms_kernel=5, keep_k_centers=24, stuff_area_limit=20)
    want = PanopticPostProcessor(LABELS, settings)(batch)
    got = PanopticPostProcessor(LABELS, settings, unroll=True)(batch)
    assert len(np.unique(np.asarray(want["panoptic"]))) >= 6
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def _brute_force_nearest(target_y, target_x, center_y, center_x, valid, euclidean=False):
    """Every pixel against every centre in index order, keeping a strictly smaller float32
    squared distance, or its square root (the grouping's definition); [B, H, W] int32."""
    best = np.full(target_y.shape, np.inf, np.float32)
    index = np.zeros(target_y.shape, np.int32)
    for b in range(target_y.shape[0]):
        for i in np.flatnonzero(valid[b]):
            with np.errstate(invalid="ignore", over="ignore"):
                d = (np.square(target_y[b] - np.float32(center_y[b, i]))
                     + np.square(target_x[b] - np.float32(center_x[b, i])))
                if euclidean:
                    d = np.sqrt(d)
                closer = d < best[b]
            best[b] = np.where(closer, d, best[b])
            index[b] = np.where(closer, i, index[b])
    return index


@pytest.mark.parametrize("convention", ["axial_keras", "deeplab2"])
@pytest.mark.parametrize("tile", [1, 3, 16, 1000])
@pytest.mark.parametrize("kind", ["smooth", "integer_ties", "wild", "non_finite"])
def test_tiled_grouping_is_the_exact_nearest_centre(tile, kind, convention):
    rng = np.random.RandomState(11)
    batch, height, width, k = 2, 37, 45, 30
    yy, xx = np.mgrid[:height, :width].astype("float32")
    center_y = rng.randint(0, height, size=(batch, k)).astype("int32")
    center_x = rng.randint(0, width, size=(batch, k)).astype("int32")
    center_x[:, 1] = center_x[:, 0] + 4  # equidistant pairs for the tie cases
    center_y[:, 1] = center_y[:, 0]
    valid = rng.uniform(size=(batch, k)) < 0.8
    scale = {"smooth": 3.0, "integer_ties": 6.0, "wild": 60.0, "non_finite": 3.0}[kind]
    offsets = rng.normal(scale=scale, size=(batch, height, width, 2)).astype("float32")
    if kind == "integer_ties":
        offsets = np.round(offsets)
        offsets[:, 5:9, 5:9, 0] = center_y[:, None, None, 0] - yy[5:9, 5:9]
        offsets[:, 5:9, 5:9, 1] = center_x[:, None, None, 0] + 2 - xx[5:9, 5:9]  # midpoint
    if kind == "non_finite":
        offsets[0, 2:6, 2:6] = np.nan
        offsets[1, 10:12, :] = np.inf
        offsets[1, 20, 20] = 1e25
    target_y, target_x = yy + offsets[..., 0], xx + offsets[..., 1]
    is_thing = rng.uniform(size=(batch, height, width)) < 0.6
    post = _post(keep_k_centers=k, grouping_tile=tile, convention=convention)
    got = np.asarray(post.nearest_center(target_y, target_x, is_thing, center_y, center_x,
                                         valid))
    want = _brute_force_nearest(target_y, target_x, center_y, center_x, valid,
                                euclidean=convention == "deeplab2")
    np.testing.assert_array_equal(got[is_thing], want[is_thing])


@pytest.mark.parametrize("tile", [1, 8, 1000])
def test_panoptic_maps_do_not_depend_on_the_grouping_tile(tile):
    labels = np.stack([_scene(0), _scene(4)])
    batch = _batch(labels)
    rng = np.random.RandomState(12)
    batch["center_offsets"] = batch["center_offsets"] + rng.normal(
        scale=4.0, size=batch["center_offsets"].shape).astype("float32")
    batch["center_heatmap"] = batch["center_heatmap"] + rng.uniform(
        0, 0.3, size=batch["center_heatmap"].shape).astype("float32")
    args = dict(nms_kernel=5, keep_k_centers=40, stuff_area_limit=30)
    want = _post(grouping_tile=32, **args)(batch)
    got = _post(grouping_tile=tile, **args)(batch)
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_separable_nms_pool_equals_the_square_pool():
    heat = np.random.RandomState(13).uniform(size=(2, 19, 23)).astype("float32")
    from axial_keras.panoptic.postprocessing import _max_pool_2d

    want = np.asarray(keras.ops.max_pool(heat[..., None], pool_size=7, strides=1,
                                         padding="same"))[..., 0]
    np.testing.assert_array_equal(np.asarray(_max_pool_2d(heat, 7)), want)


def test_argmax_is_the_first_index_of_the_largest_logit():
    from axial_keras.panoptic.postprocessing import _first_argmax

    rng = np.random.RandomState(14)
    for shape in [(2, 7, 5, 6), (1, 3, 2, 19)]:  # more, and fewer, rows than chunks
        logits = rng.randint(0, 3, size=shape).astype("float32")  # many ties
        got = np.asarray(_first_argmax(logits))
        np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
        assert got.dtype == np.int32


def test_counts_are_the_histogram_of_the_ids():
    from axial_keras.panoptic.postprocessing import _count

    ids = np.random.RandomState(15).randint(0, 37, size=(2, 9, 11)).astype("int32")
    for builtin_only in (False, True):
        np.testing.assert_array_equal(np.asarray(_count(ids, 40, builtin_only)),
                                      np.bincount(ids.ravel(), minlength=40))

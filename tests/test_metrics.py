"""Panoptic quality and mean IoU: hand-computed cases and parity with Cityscapes' evaluator.

The reference is `cityscapesscripts.evaluation.evalPanopticSemanticLabeling.evaluatePanoptic`
(a port of COCO's `pq_compute`), run on PNG + JSON files written here in its format.
"""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from axial_keras.labels import PanopticLabels
from axial_keras.metrics import MeanIoU, PanopticQuality

cs_eval = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")

SUMMARY_KEYS = ("pq", "sq", "rq", "pq_things", "sq_things", "rq_things",
                "pq_stuff", "sq_stuff", "rq_stuff")
# (num_classes, thing_class_ids, label_divisor, ignore_label, stuff class only predicted,
#  thing class only in the ground truth)
CONFIGS = {
    "cityscapes_like": (8, (4, 5, 6, 7), 1000, 255, 3, 7),
    "coco_like": (7, (1, 2, 5), 256, 255, 6, 5),
}


def _numpy(results: dict) -> dict:
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in results.items()}


def _pq(maps, config="cityscapes_like") -> dict:
    """Runs PanopticQuality over a list of (y_true, y_pred) batches."""
    num_classes, things, divisor, ignore, _, _ = CONFIGS[config]
    metric = PanopticQuality(PanopticLabels.from_ids(num_classes, things, divisor, ignore))
    for y_true, y_pred in maps:
        metric.update_state(y_true, y_pred)
    return _numpy(metric.result())


# ----------------------------------------------------------------------------------------
# The reference: Cityscapes' evaluator on files in COCO panoptic format.
# ----------------------------------------------------------------------------------------

def _write_panoptic(folder, name, panoptic, divisor, ignore, things, with_gt_fields):
    """Writes one map as a COCO panoptic PNG (segment id = panoptic id + 1, void = 0)."""
    classes = panoptic // divisor
    segment_ids = np.where(classes == ignore, 0, panoptic + 1)
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(os.path.join(folder, name + ".png"))
    segments = []
    for segment_id, area in zip(*np.unique(segment_ids, return_counts=True)):
        if segment_id == 0:
            continue
        panoptic_id = int(segment_id) - 1
        info = {"id": int(segment_id), "category_id": panoptic_id // divisor}
        if with_gt_fields:
            info["area"] = int(area)
            info["iscrowd"] = int(panoptic_id // divisor in things and panoptic_id % divisor == 0)
        segments.append(info)
    return {"image_id": name, "file_name": name + ".png", "segments_info": segments}


def _cityscapes_pq(tmp_path, maps, config) -> dict:
    """Evaluates all images of a list of (y_true, y_pred) batches with cityscapesscripts."""
    num_classes, things, divisor, ignore, _, _ = CONFIGS[config]
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_annotations, pred_annotations = [], []
    images = [(t, p) for y_true, y_pred in maps for t, p in zip(y_true, y_pred)]
    for index, (gt, pred) in enumerate(images):
        name = f"image_{index:03d}"
        gt_annotations.append(_write_panoptic(gt_dir, name, gt, divisor, ignore, things, True))
        pred_annotations.append(
            _write_panoptic(pred_dir, name, pred, divisor, ignore, things, False))
    categories = [{"id": c, "name": f"class_{c}", "isthing": int(c in things)}
                  for c in range(num_classes) if c != ignore]
    (tmp_path / "gt.json").write_text(
        json.dumps({"annotations": gt_annotations, "categories": categories}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": pred_annotations}))

    def in_this_process(annotations, gt_folder, pred_folder, categories):
        """The evaluator's own per-image loop, without its process pool (forking after
        TensorFlow has started its threads can hang)."""
        return cs_eval.pq_compute_single_core(0, annotations, gt_folder, pred_folder, categories)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cs_eval, "pq_compute_multi_core", in_this_process)
        return cs_eval.evaluatePanoptic(
            str(tmp_path / "gt.json"), str(gt_dir), str(tmp_path / "pred.json"),
            str(pred_dir), str(tmp_path / "results.json"))


# ----------------------------------------------------------------------------------------
# Random cases: stuff bands, thing boxes (some crowd), void boxes, and predictions that
# shift, relabel, split, miss and invent segments, some of them on void or on crowd.
# ----------------------------------------------------------------------------------------

def _random_ground_truth(rng, height, width, config):
    num_classes, things, divisor, ignore, pred_only, _ = CONFIGS[config]
    stuff = [c for c in range(num_classes) if c not in things and c not in (ignore, pred_only)]
    gt = np.empty((height, width), np.int64)
    cuts = np.sort(rng.choice(np.arange(1, width), size=2, replace=False))
    for start, stop in zip([0, *cuts], [*cuts, width]):
        gt[:, start:stop] = rng.choice(stuff) * divisor
    for instance in range(1, rng.integers(3, 7)):
        top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
        box_h, box_w = rng.integers(3, height // 2 + 1), rng.integers(3, width // 2 + 1)
        crowd = rng.random() < 0.2
        gt[top:top + box_h, left:left + box_w] = (
            rng.choice(things) * divisor + (0 if crowd else instance))
    for _ in range(rng.integers(0, 3)):
        top, left = rng.integers(0, height - 2), rng.integers(0, width - 2)
        gt[top:top + rng.integers(2, 6), left:left + rng.integers(2, 6)] = ignore * divisor
    return gt


def _random_prediction(rng, gt, config):
    num_classes, things, divisor, ignore, pred_only, gt_only = CONFIGS[config]
    height, width = gt.shape
    classes, instances = gt // divisor, gt % divisor
    pred = gt.copy()
    thing_mask = np.isin(classes, things)
    # Thing ids renumbered (crowd regions become instances too), the gt-only class relabelled.
    for panoptic_id in np.unique(gt[thing_mask]):
        c = panoptic_id // divisor
        if c == gt_only or rng.random() < 0.1:
            c = rng.choice([t for t in things if t != gt_only])
        pred[gt == panoptic_id] = c * divisor + rng.integers(1, divisor)
    # Void ground truth predicted as some stuff class.
    pred[classes == ignore] = rng.choice([c for c in range(num_classes)
                                          if c not in things and c != ignore]) * divisor
    if rng.random() < 0.5:
        pred = np.roll(pred, rng.integers(-1, 2, size=2), axis=(0, 1))
    # Ragged boundaries: a tenth of the pixels take the label of a neighbour.
    ragged = rng.random(pred.shape) < 0.1
    pred[ragged] = np.roll(pred, rng.integers(-1, 2, size=2), axis=(0, 1))[ragged]
    # Invented, split and void-predicted boxes, some inside ground-truth void or crowd.
    void_or_crowd = np.argwhere((classes == ignore) | (thing_mask & (instances == 0)))
    for _ in range(rng.integers(1, 5)):
        if len(void_or_crowd) and rng.random() < 0.5:
            top, left = void_or_crowd[rng.integers(len(void_or_crowd))]
        else:
            top, left = rng.integers(0, height - 1), rng.integers(0, width - 1)
        c = rng.choice([*things, pred_only, ignore])
        instance = 0 if c == ignore or c not in things else rng.integers(1, divisor)
        pred[top:top + rng.integers(1, 5), left:left + rng.integers(1, 5)] = c * divisor + instance
    return pred


def _random_batches(seed, config):
    """Three batches of 1 to 3 images; each batch has its own image size."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(3):
        height, width = rng.integers(10, 24, size=2)
        gts = [_random_ground_truth(rng, height, width, config)
               for _ in range(rng.integers(1, 4))]
        preds = [_random_prediction(rng, gt, config) for gt in gts]
        batches.append((np.stack(gts).astype(np.int32), np.stack(preds).astype(np.int32)))
    return batches


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("seed", range(6))
def test_matches_cityscapes_evaluator(tmp_path, seed, config):
    batches = _random_batches(seed, config)
    reference = _cityscapes_pq(tmp_path, batches, config)
    ours = _pq(batches, config)
    for group, suffix in (("All", ""), ("Things", "_things"), ("Stuff", "_stuff")):
        for key in ("pq", "sq", "rq"):
            assert ours[key + suffix] == pytest.approx(reference[group][key], abs=1e-6), (
                key + suffix)
    num_classes, _, _, ignore, _, _ = CONFIGS[config]
    for key in ("pq", "sq", "rq"):
        expected = [reference["per_class"][c][key] if c != ignore else 0.0
                    for c in range(num_classes)]
        np.testing.assert_allclose(ours["per_class_" + key], expected, atol=1e-6)


def test_random_cases_cover_the_rules():
    """The generated cases hold what the parity test is meant to exercise."""
    counts = {"void": 0, "crowd": 0, "pred_only": 0, "gt_only": 0, "pred_void": 0}
    for config in CONFIGS:
        _, things, divisor, ignore, pred_only, gt_only = CONFIGS[config]
        for seed in range(6):
            for gt, pred in _random_batches(seed, config):
                gt_class, pred_class = gt // divisor, pred // divisor
                counts["void"] += np.any(gt_class == ignore)
                counts["crowd"] += np.any(np.isin(gt_class, things) & (gt % divisor == 0))
                counts["pred_only"] += np.any(pred_class == pred_only)
                counts["gt_only"] += np.any(gt_class == gt_only)
                counts["pred_void"] += np.any(pred_class == ignore)
    assert min(counts.values()) >= 5, counts


# ----------------------------------------------------------------------------------------
# Hand-computed cases. Cityscapes-like labels: stuff 0..3, things 4..7, void 255.
# ----------------------------------------------------------------------------------------

D = 1000
VOID = 255 * D


def test_perfect_prediction_is_one():
    gt = np.array([[[0, 0, 4001, 4001], [1000, 1000, 4002, 4002], [VOID, VOID, 5001, 5001]]])
    results = _pq([(gt, gt.copy())])
    for key in SUMMARY_KEYS:
        assert results[key] == 1.0, key
    np.testing.assert_array_equal(results["per_class_pq"], [1, 1, 0, 0, 1, 1, 0, 0])


def test_instance_ids_need_not_agree():
    gt = np.array([[[4001, 4001, 4002, 4002]]])
    pred = np.array([[[4007, 4007, 4003, 4003]]])
    assert _pq([(gt, pred)])["pq"] == 1.0


def test_one_missed_segment():
    # Stuff 0 on 12 pixels, car 4001 and car 4002 on 2 each; 4002 predicted as stuff.
    gt = np.zeros((1, 4, 4), np.int32)
    gt[0, 0, :2], gt[0, 3, 2:] = 4001, 4002
    pred = gt.copy()
    pred[0, 3, 2:] = 0
    results = _pq([(gt, pred)])
    things_pq = 1 / (1 + 0.5)  # tp 1 with IoU 1, fn 1
    stuff_pq = 12 / 14  # the stuff segment grew by the missed car
    assert results["pq_things"] == pytest.approx(things_pq)
    assert results["rq_things"] == pytest.approx(things_pq)
    assert results["sq_things"] == pytest.approx(1.0)
    assert results["pq_stuff"] == pytest.approx(stuff_pq)
    assert results["pq"] == pytest.approx((things_pq + stuff_pq) / 2)


@pytest.mark.parametrize("overlap, matched", [(6, False), (7, True)])
def test_iou_must_exceed_one_half(overlap, matched):
    # Ground-truth segment of 10 pixels, predicted one of 8 sharing `overlap` with it.
    gt = np.array([[[4001] * 10 + [0] * 10]])
    pred = np.array([[[0] * (10 - overlap) + [4001] * 8 + [0] * (2 + overlap)]])
    results = _pq([(gt, pred)])
    iou = overlap / (10 + 8 - overlap)
    assert iou == (7 / 11 if matched else 0.5)
    expected_things = iou if matched else 0.0
    assert results["per_class_pq"][4] == pytest.approx(expected_things)
    assert results["per_class_sq"][4] == pytest.approx(iou if matched else 0.0)


def test_void_pixels_leave_the_union():
    # Car on 6 pixels and void on 4; the predicted car covers 4 car and all 4 void pixels:
    # IoU = 4 / (6 + 8 - 4 - 4) = 2/3, a match (4 / 10 without the void rule).
    gt = np.array([[[4001] * 6 + [VOID] * 4]])
    pred = np.array([[[0, 0] + [4001] * 8]])
    results = _pq([(gt, pred)])
    assert results["per_class_sq"][4] == pytest.approx(2 / 3)
    assert results["per_class_rq"][4] == 1.0
    assert results["per_class_pq"][0] == 0.0  # stuff 0 only predicted: one false positive
    assert results["pq"] == pytest.approx(2 / 3 / 2)


@pytest.mark.parametrize("on_void, false_positive", [(3, False), (2, True)])
def test_prediction_mostly_on_void_is_no_false_positive(on_void, false_positive):
    gt = np.array([[[0] * 6 + [VOID] * 4]])
    pred = np.array([[[0] * (6 - 4 + on_void) + [5001] * 4 + [0] * (4 - on_void)]])
    results = _pq([(gt, pred)])
    assert results["per_class_rq"][5] == 0.0
    # The only thing class that appears is 5, and only when its segment counts as an FP.
    assert results["pq"] == pytest.approx(
        results["per_class_pq"][0] / (2 if false_positive else 1))


def test_crowd_regions():
    # Car crowd (4000) on 6 pixels. A predicted car mostly on it is ignored; a predicted
    # truck (5) on it is a false positive; the crowd itself is no false negative.
    gt = np.array([[[4000] * 6 + [0] * 6]])
    car_on_crowd = np.array([[[4001] * 4 + [0] * 8]])
    results = _pq([(gt, car_on_crowd)])
    assert results["per_class_pq"][4] == 0.0
    assert results["pq_things"] == 0.0 and results["pq"] == pytest.approx(6 / 8)
    truck_on_crowd = np.array([[[5001] * 4 + [0] * 8]])
    results = _pq([(gt, truck_on_crowd)])
    assert results["per_class_rq"][5] == 0.0
    assert results["pq"] == pytest.approx(6 / 8 / 2)


def test_accumulates_over_batches_like_one_batch():
    batches = _random_batches(seed=11, config="cityscapes_like")
    shape = batches[0][0].shape[1:]
    same_size = [(t[None], p[None]) for t, p in zip(*batches[0])]
    split = _pq(same_size)
    whole = _pq([batches[0]])
    for key in SUMMARY_KEYS:
        assert split[key] == pytest.approx(whole[key], abs=1e-12), (key, shape)


def test_reset_state_and_config_round_trip():
    metric = PanopticQuality(PanopticLabels.from_ids(8, (4, 5, 6, 7), D, 255), name="pq")
    y_true, y_pred = _random_batches(seed=3, config="cityscapes_like")[0]
    metric.update_state(y_true, y_pred)
    first = _numpy(metric.result())
    metric.reset_state()
    assert all(float(v) == 0.0 for v in keras.ops.convert_to_numpy(metric.true_positives))
    metric.update_state(y_true, y_pred)
    again = _numpy(metric.result())
    clone = PanopticQuality.from_config(metric.get_config())
    clone.update_state(y_true, y_pred)
    for results in (again, _numpy(clone.result())):
        for key, value in first.items():
            np.testing.assert_array_equal(results[key], value)
    assert clone.name == "pq" and clone.thing_class_ids == (4, 5, 6, 7)


def test_bad_input_raises():
    metric = PanopticQuality.from_ids(8, (4, 5, 6, 7), D, 255)
    good = np.zeros((1, 3, 3), np.int32)
    with pytest.raises(ValueError, match="shape"):
        metric.update_state(good, np.zeros((1, 3, 4), np.int32))
    with pytest.raises(ValueError, match=r"class 9 "):
        metric.update_state(good, np.full((1, 3, 3), 9001))
    with pytest.raises(ValueError, match=r"class 300 "):
        metric.update_state(np.full((1, 3, 3), 300 * D), good)
    with pytest.raises(ValueError, match="-5"):
        metric.update_state(good, np.full((1, 3, 3), -5))
    with pytest.raises(ValueError, match="thing_class_ids"):
        PanopticQuality.from_ids(8, (4, 8), D, 255)
    with pytest.raises(TypeError, match="PanopticLabels"):
        PanopticQuality(8)
    metric.update_state(np.full((1, 3, 3), VOID + 7), good)  # any void instance is fine


def test_compiled_update_matches_eager():
    """The update runs traced: tf.function with unknown sizes, or jax.jit."""
    batches = _random_batches(seed=5, config="cityscapes_like")
    eager = _pq(batches)
    metric = PanopticQuality(PanopticLabels.from_ids(8, (4, 5, 6, 7), D, 255))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        spec = tf.TensorSpec([None, None, None], tf.int32)
        update = tf.function(metric.update_state, input_signature=[spec, spec])
        for y_true, y_pred in batches:
            update(y_true, y_pred)
        traced = _numpy(metric.result())
    elif keras.backend.backend() == "jax":
        import jax
        update = jax.jit(metric.stateless_update_state)
        state = [v.value for v in metric.variables]
        for y_true, y_pred in batches:
            state = update(state, y_true, y_pred)
        traced = _numpy(metric.stateless_result(state))
    else:
        pytest.skip(f"no compiled path tested for {keras.backend.backend()}")
    for key in SUMMARY_KEYS:
        assert traced[key] == pytest.approx(eager[key], abs=1e-6), key


# ----------------------------------------------------------------------------------------
# Mean IoU of the semantic classes.
# ----------------------------------------------------------------------------------------

def _reference_miou(batches, num_classes, divisor, ignore):
    """Confusion matrix over labelled pixels; a void prediction is a miss of its gt class."""
    confusion = np.zeros((num_classes, num_classes + 1))
    for y_true, y_pred in batches:
        t, p = (y_true // divisor).ravel(), (y_pred // divisor).ravel()
        keep = t != ignore
        np.add.at(confusion, (t[keep], np.where(p[keep] == ignore, num_classes, p[keep])), 1)
    classes = [c for c in range(num_classes) if c != ignore]
    tp = confusion.diagonal()[classes]
    union = confusion.sum(1)[classes] + confusion[:, :num_classes].sum(0)[classes] - tp
    return np.mean(tp[union > 0] / union[union > 0])


def test_mean_iou_by_hand():
    miou = MeanIoU(PanopticLabels.from_ids(3, label_divisor=D, ignore_label=255))
    # class 0: 2 hits, class 1: 1 hit + 1 pixel predicted void, class 2: 1 pixel predicted 0.
    y_true = np.array([[[0, 0, 1001, 1002, 2000, VOID]]])
    y_pred = np.array([[[0, 0, 1000, VOID, 0, 2000]]])
    miou.update_state(y_true, y_pred)
    expected = np.mean([2 / 3, 1 / 2, 0 / 1])
    assert float(miou.result()) == pytest.approx(expected, abs=1e-6)
    assert float(miou.result()) == pytest.approx(
        _reference_miou([(y_true, y_pred)], 3, D, 255), abs=1e-6)
    miou.reset_state()
    assert float(miou.result()) == 0.0


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_mean_iou_random(config):
    num_classes, _, divisor, ignore, _, _ = CONFIGS[config]
    batches = _random_batches(seed=2, config=config)
    miou = MeanIoU(PanopticLabels.from_ids(num_classes, label_divisor=divisor,
                                           ignore_label=ignore))
    for y_true, y_pred in batches:
        miou.update_state(y_true, y_pred)
    assert float(miou.result()) == pytest.approx(
        _reference_miou(batches, num_classes, divisor, ignore), abs=1e-6)
    clone = MeanIoU.from_config(miou.get_config())
    assert clone.get_config() == miou.get_config() and clone.labels == miou.labels
    with pytest.raises(ValueError, match=f"class {num_classes + 1} "):
        miou.update_state(batches[0][0], np.full_like(batches[0][1], (num_classes + 1) * divisor))

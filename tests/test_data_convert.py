"""COCO / Cityscapes panoptic -> TFRecords: exact round trips, shards, metadata, broken files.

The fixtures (tests/dataset_fixtures.py) are written in each dataset's real on-disk
format; the Cityscapes ones by cityscapesscripts' createPanopticImgs.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from axial_keras.data import load_metadata, panoptic_dataset
from axial_keras.labels import CITYSCAPES
from axial_keras.data import tfrecord
from axial_keras.data.convert import convert_dataset
from axial_keras.data.panoptic_source import DatasetFileError
from dataset_fixtures import (COCO_DIVISOR, write_cityscapes_panoptic_fixture,
                              write_coco_panoptic_fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITERS = {"coco_panoptic": write_coco_panoptic_fixture,
           "cityscapes_panoptic": write_cityscapes_panoptic_fixture}


def _paths(dataset, root, split="val"):
    """(JSON, folder of segment PNGs, image files) of a written fixture."""
    if dataset == "coco_panoptic":
        annotations = os.path.join(root, "annotations")
        return (os.path.join(annotations, f"panoptic_{split}2017.json"),
                os.path.join(annotations, f"panoptic_{split}2017"),
                sorted(glob.glob(os.path.join(root, f"{split}2017", "*.jpg"))))
    return (os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
            os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
            sorted(glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*.png"))))


def _records(pattern):
    """Raw features of every record matching `pattern`, keyed by image id."""
    records = {}
    for path in sorted(glob.glob(pattern)):
        for serialized in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(serialized.numpy())
            feature = example.features.feature
            records[feature["image/id"].bytes_list.value[0].decode()] = feature
    return records


@pytest.mark.parametrize("dataset", ["coco_panoptic", "cityscapes_panoptic"])
def test_round_trip_is_exact_for_every_panoptic_id(tmp_path, dataset):
    root, out = str(tmp_path / "source"), str(tmp_path / "records")
    expected = {split: WRITERS[dataset](root, split) for split in ("train", "val")}
    summaries = {split: convert_dataset(dataset, root, split, out, num_shards=2,
                                        progress_stream=None) for split in ("train", "val")}

    for split in ("train", "val"):
        assert summaries[split].num_examples == 3 and summaries[split].skipped == ()
        got = {example["image_id"].numpy().decode(): example
               for example in panoptic_dataset(os.path.join(out, f"{split}-*.tfrecord"))}
        assert sorted(got) == sorted(expected[split])
        records = _records(os.path.join(out, f"{split}-*.tfrecord"))
        _, _, image_files = _paths(dataset, root, split)
        for image_id, panoptic in expected[split].items():
            np.testing.assert_array_equal(got[image_id]["panoptic"].numpy(), panoptic)
            assert got[image_id]["panoptic"].dtype == tf.int32
            assert got[image_id]["image"].dtype == tf.uint8
            # The original image bytes are stored, not re-encoded.
            image_file = next(p for p in image_files if os.path.basename(p).startswith(
                image_id if dataset == "cityscapes_panoptic" else f"{int(image_id):012d}"))
            with open(image_file, "rb") as f:
                original = f.read()
            assert records[image_id]["image/encoded"].bytes_list.value[0] == original
            np.testing.assert_array_equal(got[image_id]["image"].numpy(),
                                          tf.io.decode_image(original, channels=3).numpy())
        # Every fixture has stuff, touching instances of one class, crowd and void.
        values = np.concatenate([p.ravel() for p in expected[split].values()])
        divisor = COCO_DIVISOR if dataset == "coco_panoptic" else 1000
        assert 255 * divisor in values
        metadata = load_metadata(out)
        crowd = [v for v in np.unique(values)
                 if v // divisor in metadata.thing_class_ids and v % divisor == 0]
        assert crowd and {1, 2} <= set(np.unique(values) % divisor)

    with open(os.path.join(out, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["num_examples"] == {"train": 3, "val": 3}
    if dataset == "coco_panoptic":
        assert (metadata["label_divisor"], metadata["ignore_label"]) == (256, 255)
        assert len(metadata["classes"]) == 133
        assert metadata["classes"][0] == {"id": 0, "source_id": 1, "name": "person",
                                          "isthing": True}
        assert metadata["classes"][80] == {"id": 80, "source_id": 92, "name": "banner",
                                           "isthing": False}
        assert load_metadata(out).thing_class_ids == tuple(range(80))
    else:
        assert (metadata["label_divisor"], metadata["ignore_label"]) == (1000, 255)
        assert [c["source_id"] for c in metadata["classes"]] == [
            7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
        assert metadata["classes"][13] == {"id": 13, "source_id": 26, "name": "car",
                                           "isthing": True}
        assert load_metadata(out) == CITYSCAPES


def test_cityscapes_trainids_match_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    from axial_keras.data.cityscapes_panoptic import LABEL_IDS

    reference = sorted((label.id, label.trainId, label.name, label.hasInstances)
                       for label in labels if not label.ignoreInEval)
    ours = [(label_id, c.id, c.name, c.is_thing)
            for label_id, c in zip(LABEL_IDS, CITYSCAPES.classes)]
    assert ours == reference


def test_shards_are_round_robin_and_a_rerun_replaces_them(tmp_path):
    root, out = str(tmp_path / "source"), str(tmp_path / "records")
    write_coco_panoptic_fixture(root, "val", num_images=5)
    summary = convert_dataset("coco_panoptic", root, "val", out, num_shards=3,
                              progress_stream=None)
    names = [os.path.basename(p) for p in summary.shard_paths]
    assert names == [f"val-0000{i}-of-00003.tfrecord" for i in range(3)]
    counts = [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in summary.shard_paths]
    assert counts == [2, 2, 1]
    convert_dataset("coco_panoptic", root, "val", out, num_shards=2, progress_stream=None)
    assert sorted(os.listdir(out)) == ["metadata.json", "val-00000-of-00002.tfrecord",
                                       "val-00001-of-00002.tfrecord"]
    assert len(list(panoptic_dataset(os.path.join(out, "val-*.tfrecord")))) == 5


def test_id_png_round_trip_holds_every_id_below_2_to_the_24():
    ids = np.array([[0, 1, 255, 256], [34047, 65280, 255000, 2 ** 24 - 1]], np.int32)
    np.testing.assert_array_equal(
        tfrecord.decode_id_png(tfrecord.encode_id_png(ids)).numpy(), ids)
    for bad in (np.array([[-1]]), np.array([[2 ** 24]])):
        with pytest.raises(ValueError, match="Ids must lie"):
            tfrecord.encode_id_png(bad)


def _first_annotation(json_path):
    with open(json_path) as f:
        values = json.load(f)
    return values, values["annotations"][0]


def _save(json_path, values):
    with open(json_path, "w") as f:
        json.dump(values, f)


def _corrupt_png(dataset, root):
    json_path, label_dir, _ = _paths(dataset, root)
    _, annotation = _first_annotation(json_path)
    path = os.path.join(label_dir, annotation["file_name"])
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:8] + b"\x00" * 40)  # A PNG signature, then nothing decodable.
    return path, "PNG does not decode"


def _drop_segments_info(dataset, root):
    json_path, _, _ = _paths(dataset, root)
    values, annotation = _first_annotation(json_path)
    del annotation["segments_info"]
    _save(json_path, values)
    return json_path, f"annotation of '{annotation['file_name']}' has no 'segments_info'"


def _drop_a_segment(dataset, root):
    json_path, label_dir, _ = _paths(dataset, root)
    values, annotation = _first_annotation(json_path)
    removed = annotation["segments_info"].pop(-1)
    _save(json_path, values)
    return (os.path.join(label_dir, annotation["file_name"]),
            f"segment ids [{removed['id']}] in the PNG are not in the segments_info")


def _unannotated_image(dataset, root):
    _, _, images = _paths(dataset, root)
    name = ("000000999999.jpg" if dataset == "coco_panoptic"
            else "frankfurt_999999_999999_leftImg8bit.png")
    path = os.path.join(os.path.dirname(images[0]), name)
    shutil.copy(images[0], path)
    return path, "image has no annotation"


@pytest.mark.parametrize("dataset", ["coco_panoptic", "cityscapes_panoptic"])
@pytest.mark.parametrize("breaker", [_corrupt_png, _drop_segments_info, _drop_a_segment,
                                     _unannotated_image])
def test_a_broken_file_is_named_and_skip_bad_counts_it(tmp_path, dataset, breaker):
    root, out = str(tmp_path / "source"), str(tmp_path / "records")
    WRITERS[dataset](root, "val")
    path, reason = breaker(dataset, root)

    with pytest.raises(DatasetFileError) as raised:
        convert_dataset(dataset, root, "val", out, num_shards=2, progress_stream=None)
    assert raised.value.path == path
    assert str(raised.value).startswith(path) and reason in str(raised.value)
    # A failed run leaves no shard, temporary file or metadata behind.
    assert not os.path.exists(out) or os.listdir(out) == []

    summary = convert_dataset(dataset, root, "val", out, num_shards=2, skip_bad=True,
                              progress_stream=None)
    assert [error.path for error in summary.skipped] == [path]
    expected_examples = 3 if breaker is _unannotated_image else 2
    assert summary.num_examples == expected_examples
    assert "skipped 1 bad files" in str(summary) and path in str(summary)
    assert len(list(panoptic_dataset(os.path.join(out, "val-*.tfrecord")))) == expected_examples
    with open(os.path.join(out, "metadata.json")) as f:
        assert json.load(f)["num_examples"] == {"val": expected_examples}


def test_json_without_categories_or_with_trainid_categories_is_an_error(tmp_path):
    coco, cityscapes = str(tmp_path / "coco"), str(tmp_path / "cityscapes")
    write_coco_panoptic_fixture(coco, "val", num_images=1)
    json_path, _, _ = _paths("coco_panoptic", coco)
    values, _ = _first_annotation(json_path)
    del values["categories"]
    _save(json_path, values)
    with pytest.raises(DatasetFileError, match="has no 'categories' list") as raised:
        convert_dataset("coco_panoptic", coco, "val", str(tmp_path / "out"), 1,
                        skip_bad=True, progress_stream=None)
    assert raised.value.path == json_path

    write_cityscapes_panoptic_fixture(cityscapes, "val", num_images=1)
    json_path, _, _ = _paths("cityscapes_panoptic", cityscapes)
    values, _ = _first_annotation(json_path)
    values["categories"] = [{"id": 0, "name": "road", "isthing": 0}]
    _save(json_path, values)
    with pytest.raises(DatasetFileError, match="--use-train-id") as raised:
        convert_dataset("cityscapes_panoptic", cityscapes, "val", str(tmp_path / "out"), 1,
                        progress_stream=None)
    assert raised.value.path == json_path


def test_cli_converts_and_skip_bad_reports_the_skipped_file(tmp_path):
    root, out = str(tmp_path / "source"), str(tmp_path / "records")
    write_cityscapes_panoptic_fixture(root, "val")
    path, _ = _corrupt_png("cityscapes_panoptic", root)
    command = [sys.executable, "-m", "axial_keras.data.convert",
               "--dataset=cityscapes_panoptic", f"--root={root}", "--split=val",
               f"--output_dir={out}", "--num_shards=2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    assert f"error: {path}: PNG does not decode" in failed.stderr

    done = subprocess.run(command + ["--skip_bad"], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "Wrote 2 examples of cityscapes_panoptic val to 2 shards" in done.stdout
    assert "skipped 1 bad files" in done.stdout and path in done.stdout
    assert "2/3" in done.stderr  # The progress bar.
    assert sorted(os.listdir(out)) == ["metadata.json", "val-00000-of-00002.tfrecord",
                                       "val-00001-of-00002.tfrecord"]

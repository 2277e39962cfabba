"""COCO panoptic (2017) as shipped: the panoptic JSON, its RGB-encoded PNGs, JPEG images.

Layout under `root`:

    annotations/panoptic_{split}2017.json
    annotations/panoptic_{split}2017/*.png
    {split}2017/*.jpg

Classes: the JSON's `categories`, sorted by their COCO id, become the contiguous ids
0, 1, 2, ...; in the official file (80 things with ids 1-90, then 53 stuff with ids
92-200) that is the file's own order, so things are 0-79 and stuff 80-132. Label
divisor 256, void class 255. `iscrowd` segments become crowd (instance 0 of their thing
class); segment id 0 (unlabelled) becomes void.

Example:
>>> source = read_coco_panoptic("/data/coco", "val")
>>> source.labels.num_classes, len(source.examples)
(133, 5000)
"""

import glob
import os

from axial_keras.data.panoptic_source import (DatasetFileError, PanopticSource,
                                              collect_examples, json_list, read_json)
from axial_keras.labels import PanopticClass, PanopticLabels

NAME = "coco_panoptic"
LABEL_DIVISOR = 256
IGNORE_LABEL = 255
SPLITS = ("train", "val")
_IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png")


def annotation_path(root: str, split: str) -> str:
    """The panoptic JSON of `split`."""
    return os.path.join(root, "annotations", f"panoptic_{split}2017.json")


def read_coco_panoptic(root: str, split: str) -> PanopticSource:
    """Lists COCO panoptic `split` under `root`.

    Args:
        root: the COCO folder (layout in the module docstring).
        split: `"train"` or `"val"`.

    Returns:
        A `PanopticSource`; broken annotations and unannotated images are in `problems`.

    Raises:
        ValueError: for an unknown split.
        DatasetFileError: naming the JSON when it is missing, does not parse, or lacks its
            `categories` or `annotations`, or when a category lacks `id` or `name`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    json_path = annotation_path(root, split)
    values = read_json(json_path)
    categories = json_list(values, "categories", json_path)
    annotations = json_list(values, "annotations", json_path)
    if any(not isinstance(c, dict) or "id" not in c or "name" not in c for c in categories):
        raise DatasetFileError(json_path, "every category needs an 'id' and a 'name'.")
    categories = sorted(categories, key=lambda c: int(c["id"]))
    source_ids = tuple(int(c["id"]) for c in categories)
    if len(set(source_ids)) != len(source_ids):
        raise DatasetFileError(json_path, "category ids repeat.")
    if len(categories) > IGNORE_LABEL:
        raise DatasetFileError(json_path, f"{len(categories)} categories; at most "
                                          f"{IGNORE_LABEL} fit below the void class.")
    labels = PanopticLabels(
        tuple(PanopticClass(index, str(c["name"]), bool(c.get("isthing", 0)))
              for index, c in enumerate(categories)),
        label_divisor=LABEL_DIVISOR, ignore_label=IGNORE_LABEL)

    image_dir = os.path.join(root, f"{split}2017")
    listed = {}
    for image in values.get("images") or ():
        if isinstance(image, dict) and "id" in image and "file_name" in image:
            listed[str(image["id"])] = os.path.join(image_dir, image["file_name"])

    def image_path_for(annotation):
        image_id = str(annotation["image_id"])
        if image_id in listed:
            return listed[image_id]
        stem = os.path.splitext(annotation["file_name"])[0]
        return os.path.join(image_dir, stem + ".jpg")

    on_disk = [path for pattern in _IMAGE_PATTERNS
               for path in glob.glob(os.path.join(image_dir, pattern))]
    examples, problems = collect_examples(
        annotations, json_path, os.path.join(root, "annotations", f"panoptic_{split}2017"),
        image_path_for, on_disk + list(listed.values()))
    return PanopticSource(
        name=NAME, split=split, labels=labels, source_ids=source_ids,
        category_to_class={source_id: index for index, source_id in enumerate(source_ids)},
        examples=examples, problems=problems)

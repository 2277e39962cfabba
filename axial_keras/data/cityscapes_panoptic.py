"""Cityscapes panoptic (gtFine) as made by cityscapesscripts' `createPanopticImgs`.

Layout under `root`:

    leftImg8bit/{split}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    gtFine/cityscapes_panoptic_{split}.json
    gtFine/cityscapes_panoptic_{split}/CITY_SEQ_FRAME_gtFine_panoptic.png

`createPanopticImgs` (run without `--use-train-id`) writes segment ids
`labelId * 1000 + k` for thing instances and `labelId` for stuff and crowd regions, with
`category_id` = the Cityscapes labelId; the categories that Cityscapes ignores in
evaluation are left unlabelled (segment id 0). Classes here are the 19 evaluation
classes numbered by trainId (things are trainIds 11-18), label divisor 1000, void class
255 (`axial_keras.labels.CITYSCAPES`). The class table is embedded, so converting does
not need cityscapesscripts.

Example:
>>> source = read_cityscapes_panoptic("/data/cityscapes", "val")
>>> source.labels.num_classes, len(source.examples)
(19, 500)
"""

import glob
import os

from axial_keras.data.panoptic_source import (DatasetFileError, PanopticSource,
                                              collect_examples, json_list, read_json)
from axial_keras.labels import CITYSCAPES

NAME = "cityscapes_panoptic"
SPLITS = ("train", "val")
_IMAGE_SUFFIX = "_leftImg8bit.png"

# The Cityscapes labelId of each evaluation class, by trainId (`CITYSCAPES.classes`),
# from cityscapesscripts/helpers/labels.py.
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def annotation_path(root: str, split: str) -> str:
    """The panoptic JSON of `split`."""
    return os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json")


def read_cityscapes_panoptic(root: str, split: str) -> PanopticSource:
    """Lists Cityscapes panoptic `split` under `root`.

    Args:
        root: the Cityscapes folder (layout in the module docstring).
        split: `"train"` or `"val"`.

    Returns:
        A `PanopticSource`; broken annotations and unannotated images are in `problems`.

    Raises:
        ValueError: for an unknown split.
        DatasetFileError: naming the JSON when it is missing, does not parse, lacks its
            `annotations`, or lists categories that are not Cityscapes labelIds (such as
            the trainId categories of `createPanopticImgs --use-train-id`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    json_path = annotation_path(root, split)
    values = read_json(json_path)
    annotations = json_list(values, "annotations", json_path)
    names = dict(zip(LABEL_IDS, CITYSCAPES.class_names))
    for category in values.get("categories") or ():
        if not isinstance(category, dict) or names.get(category.get("id")) != category.get("name"):
            raise DatasetFileError(
                json_path, f"category {category!r} is not a Cityscapes evaluation class "
                "with its labelId; convert the labelId JSON (createPanopticImgs without "
                "--use-train-id).")
    image_dir = os.path.join(root, "leftImg8bit", split)
    on_disk = glob.glob(os.path.join(image_dir, "*", "*" + _IMAGE_SUFFIX))

    def image_path_for(annotation):
        image_id = str(annotation["image_id"])
        city = image_id.split("_")[0]
        return os.path.join(image_dir, city, image_id + _IMAGE_SUFFIX)

    examples, problems = collect_examples(
        annotations, json_path,
        os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"), image_path_for, on_disk)
    return PanopticSource(
        name=NAME, split=split, labels=CITYSCAPES, source_ids=LABEL_IDS,
        category_to_class={label_id: train_id for train_id, label_id in enumerate(LABEL_IDS)},
        examples=examples, problems=problems)

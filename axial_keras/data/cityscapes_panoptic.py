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
255. The class table is embedded, so converting does not need cityscapesscripts.

Example:
>>> source = read_cityscapes_panoptic("/data/cityscapes", "val")
>>> len(source.classes), len(source.examples)
(19, 500)
"""

import glob
import os

from axial_keras.data.panoptic_source import (ClassInfo, DatasetFileError, PanopticSource,
                                              collect_examples, json_list, read_json)

NAME = "cityscapes_panoptic"
LABEL_DIVISOR = 1000
IGNORE_LABEL = 255
SPLITS = ("train", "val")
_IMAGE_SUFFIX = "_leftImg8bit.png"

# (labelId, trainId, name, hasInstances) of the 19 evaluation classes, from
# cityscapesscripts/helpers/labels.py.
CLASSES = (
    (7, 0, "road", False),
    (8, 1, "sidewalk", False),
    (11, 2, "building", False),
    (12, 3, "wall", False),
    (13, 4, "fence", False),
    (17, 5, "pole", False),
    (19, 6, "traffic light", False),
    (20, 7, "traffic sign", False),
    (21, 8, "vegetation", False),
    (22, 9, "terrain", False),
    (23, 10, "sky", False),
    (24, 11, "person", True),
    (25, 12, "rider", True),
    (26, 13, "car", True),
    (27, 14, "truck", True),
    (28, 15, "bus", True),
    (31, 16, "train", True),
    (32, 17, "motorcycle", True),
    (33, 18, "bicycle", True),
)


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
    names = {label_id: name for label_id, _, name, _ in CLASSES}
    for category in values.get("categories") or ():
        if not isinstance(category, dict) or names.get(category.get("id")) != category.get("name"):
            raise DatasetFileError(
                json_path, f"category {category!r} is not a Cityscapes evaluation class "
                "with its labelId; convert the labelId JSON (createPanopticImgs without "
                "--use-train-id).")
    classes = tuple(ClassInfo(train_id, label_id, name, has_instances)
                    for label_id, train_id, name, has_instances in CLASSES)

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
        name=NAME, split=split, classes=classes,
        category_to_class={c.source_id: c.id for c in classes},
        label_divisor=LABEL_DIVISOR, ignore_label=IGNORE_LABEL,
        examples=examples, problems=problems)

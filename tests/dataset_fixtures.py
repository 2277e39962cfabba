"""Tiny COCO panoptic and Cityscapes panoptic datasets in their real on-disk formats.

Each writer lays out `root` as the dataset ships and returns the panoptic map the
converter must produce for each image (`{image_id: int32 [height, width]}`, contiguous
class * label_divisor + instance). The expected maps are computed here from the scene
itself, not by the converter's code: COCO from the categories written, Cityscapes from
cityscapesscripts' own label table, and the Cityscapes panoptic JSON and PNGs are made
by cityscapesscripts' `createPanopticImgs` from `*_gtFine_instanceIds.png` files, as
for the real dataset.

Every image has stuff, two thing instances of one class that touch, a crowd region, and
void pixels (unlabelled, or a class that is ignored in evaluation).
"""

import contextlib
import io
import json
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

# The COCO panoptic categories (panopticapi's panoptic_coco_categories.json): 80 things,
# then 53 stuff, in id order.
COCO_THINGS = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"),
    (6, "bus"), (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"),
    (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"), (15, "bench"),
    (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"),
    (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
    (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"),
    (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"),
    (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
COCO_STUFF = (
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"),
    (109, "curtain"), (112, "door-stuff"), (118, "floor-wood"), (119, "flower"),
    (122, "fruit"), (125, "gravel"), (128, "house"), (130, "light"), (133, "mirror-stuff"),
    (138, "net"), (141, "pillow"), (144, "platform"), (145, "playingfield"),
    (147, "railroad"), (148, "river"), (149, "road"), (151, "roof"), (154, "sand"),
    (155, "sea"), (156, "shelf"), (159, "snow"), (161, "stairs"), (166, "tent"),
    (168, "towel"), (171, "wall-brick"), (175, "wall-stone"), (176, "wall-tile"),
    (177, "wall-wood"), (178, "water-other"), (180, "window-blind"),
    (181, "window-other"), (184, "tree-merged"), (185, "fence-merged"),
    (186, "ceiling-merged"), (187, "sky-other-merged"), (188, "cabinet-merged"),
    (189, "table-merged"), (190, "floor-other-merged"), (191, "pavement-merged"),
    (192, "mountain-merged"), (193, "grass-merged"), (194, "dirt-merged"),
    (195, "paper-merged"), (196, "food-other-merged"), (197, "building-other-merged"),
    (198, "rock-merged"), (199, "wall-other-merged"), (200, "rug-merged"),
)
COCO_DIVISOR = 256
CITYSCAPES_DIVISOR = 1000
IGNORE_LABEL = 255
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}


def coco_categories() -> List[dict]:
    """The 133 COCO panoptic categories as the official JSON lists them."""
    things = [{"id": i, "name": n, "supercategory": "thing", "isthing": 1,
               "color": [i, 255 - i, 128]} for i, n in COCO_THINGS]
    stuff = [{"id": i, "name": n, "supercategory": "stuff", "isthing": 0,
              "color": [i, 255 - i, 64]} for i, n in COCO_STUFF]
    return things + stuff


def coco_contiguous_id(category_id: int) -> int:
    """The converter's contiguous class of a COCO category (its rank by id)."""
    return sorted(i for i, _ in COCO_THINGS + COCO_STUFF).index(category_id)


def _boundary_rows(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random wavy row index per column, around the middle."""
    base = height // 2 + int(rng.integers(-2, 3))
    return base + np.round(2 * np.sin(np.arange(width) / rng.uniform(3, 6))).astype(int)


def _scene(rng: np.random.Generator, height: int, width: int
           ) -> Tuple[np.ndarray, List[Tuple[str, np.ndarray]]]:
    """Region masks shared by both fixtures, painted back to front.

    Returns:
        `upper` bool [height, width] (the stuff above the wavy boundary) and a list of
        (role, bool mask) in paint order, roles: "thing_a1", "thing_a2" (touching, same
        class), "thing_b", "crowd", "void".
    """
    rows = np.arange(height)[:, None]
    upper = rows < _boundary_rows(rng, height, width)[None, :]
    regions = []
    top = int(rng.integers(4, height // 2 - 4))
    bottom = top + int(rng.integers(10, height - top - 2))
    left = int(rng.integers(1, width // 4))
    split = left + int(rng.integers(4, 9))
    right = split + int(rng.integers(4, 9))
    box = np.zeros((height, width), bool)
    box[top:bottom, left:split] = True
    regions.append(("thing_a1", box))
    box = np.zeros((height, width), bool)
    box[top + 2:bottom, split:right] = True  # Shares the column boundary with thing_a1.
    regions.append(("thing_a2", box))
    box = np.zeros((height, width), bool)
    b_top, b_left = int(rng.integers(1, height - 9)), int(rng.integers(width // 2, width - 12))
    box[b_top:b_top + 8, b_left:b_left + 10] = True
    regions.append(("thing_b", box))
    box = np.zeros((height, width), bool)
    c_left = int(rng.integers(right + 1, width // 2 + 2))
    box[height - 9:height - 2, c_left:c_left + 7] = True
    regions.append(("crowd", box))
    box = np.zeros((height, width), bool)
    v_top, v_left = int(rng.integers(0, height - 4)), int(rng.integers(width - 10, width - 4))
    box[v_top:v_top + 4, v_left:v_left + 4] = True
    regions.append(("void", box))
    return upper, regions


def _image(rng: np.random.Generator, segment_map: np.ndarray) -> np.ndarray:
    """uint8 RGB [height, width, 3]: a random colour per segment plus noise."""
    _, inverse = np.unique(segment_map, return_inverse=True)
    colours = rng.uniform(30, 220, (inverse.max() + 1, 3))
    noise = rng.normal(0, 8, segment_map.shape + (3,))
    return np.clip(colours[inverse.reshape(segment_map.shape)] + noise, 0, 255).astype(np.uint8)


def _rgb(ids: np.ndarray) -> np.ndarray:
    """RGB encoding of ids: id = R + 256 G + 256^2 B."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def write_coco_panoptic_fixture(root: str, split: str, num_images: int = 3, height: int = 33,
                                width: int = 65, seed: int = 0) -> Dict[str, np.ndarray]:
    """Writes a tiny COCO panoptic split (JSON, segment PNGs, JPEG images) under `root`.

    Args:
        root: the dataset folder (`annotations/`, `{split}2017/` are created).
        split: "train" or "val".
        num_images: images to write.
        height, width: image size.
        seed: scene seed.

    Returns:
        `{image_id: expected int32 [height, width] panoptic map}` (image ids as strings),
        in image order.
    """
    rng = np.random.default_rng([seed, ("train", "val").index(split)])
    image_dir = os.path.join(root, f"{split}2017")
    label_dir = os.path.join(root, "annotations", f"panoptic_{split}2017")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    stuff_upper, stuff_lower = 187, 149  # sky-other-merged, road
    person, car = 1, 3
    images, annotations, expected = [], [], {}
    for index in range(num_images):
        image_id = 139 + 1000 * index + 500 * ("train", "val").index(split)
        upper, regions = _scene(rng, height, width)
        segment_ids = rng.choice(np.arange(1, 256 ** 3), size=7, replace=False)
        segments = [(int(segment_ids[0]), stuff_upper, 0), (int(segment_ids[1]), stuff_lower, 0)]
        segment_map = np.where(upper, segments[0][0], segments[1][0])
        roles = {"thing_a1": (person, 0), "thing_a2": (person, 0), "thing_b": (car, 0),
                 "crowd": (car, 1)}
        for number, (role, mask) in enumerate(regions):
            if role == "void":
                segment_map[mask] = 0
                continue
            segment_id = int(segment_ids[2 + number])
            segment_map[mask] = segment_id
            segments.append((segment_id, *roles[role]))
        # segments_info in a shuffled order: instance ids follow that order.
        order = rng.permutation(len(segments))
        infos = []
        for position in order:
            segment_id, category, crowd = segments[position]
            mask = segment_map == segment_id
            ys, xs = np.nonzero(mask)
            infos.append({"id": segment_id, "category_id": category, "iscrowd": crowd,
                          "area": int(mask.sum()),
                          "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                                   int(np.ptp(ys)) + 1]})
        panoptic = np.full((height, width), IGNORE_LABEL * COCO_DIVISOR, np.int32)
        counters: Dict[int, int] = {}
        for info in infos:
            class_id = coco_contiguous_id(info["category_id"])
            instance = 0
            if info["category_id"] in (person, car) and not info["iscrowd"]:
                instance = counters.get(class_id, 0) + 1
                counters[class_id] = instance
            panoptic[segment_map == info["id"]] = class_id * COCO_DIVISOR + instance
        name = f"{image_id:012d}"
        Image.fromarray(_image(rng, segment_map)).save(
            os.path.join(image_dir, name + ".jpg"), quality=95)
        Image.fromarray(_rgb(segment_map)).save(os.path.join(label_dir, name + ".png"))
        images.append({"id": image_id, "file_name": name + ".jpg", "height": height,
                       "width": width})
        annotations.append({"image_id": image_id, "file_name": name + ".png",
                            "segments_info": infos})
        expected[str(image_id)] = panoptic
    with open(os.path.join(root, "annotations", f"panoptic_{split}2017.json"), "w") as f:
        json.dump({"info": {"description": "axial-keras test fixture"}, "licenses": [],
                   "images": images, "annotations": annotations,
                   "categories": coco_categories()}, f)
    return expected


def write_cityscapes_panoptic_fixture(root: str, split: str, num_images: int = 3,
                                      height: int = 33, width: int = 65,
                                      seed: int = 0) -> Dict[str, np.ndarray]:
    """Writes a tiny Cityscapes split and runs cityscapesscripts' createPanopticImgs on it.

    Writes `leftImg8bit/{split}/CITY/*_leftImg8bit.png` and
    `gtFine/{split}/CITY/*_gtFine_instanceIds.png`, then
    `gtFine/cityscapes_panoptic_{split}.json` and `gtFine/cityscapes_panoptic_{split}/`
    as `createPanopticImgs` makes them.

    Args:
        root: the dataset folder.
        split: "train" or "val".
        num_images: images to write (spread over two cities).
        height, width: image size.
        seed: scene seed.

    Returns:
        `{image_id: expected int32 [height, width] panoptic map}`, in image order.
    """
    from cityscapesscripts.helpers.labels import id2label
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    rng = np.random.default_rng([seed, ("train", "val").index(split), 1])
    road, building, guard_rail = 7, 11, 14
    car, person, caravan = 26, 24, 29
    expected = {}
    for index in range(num_images):
        city = CITIES[split][index % 2]
        image_id = f"{city}_{index:06d}_{19 + index:06d}"
        upper, regions = _scene(rng, height, width)
        instance_ids = np.where(upper, building, road).astype(np.int32)
        first_car = int(rng.integers(0, 5))
        roles = {"thing_a1": car * 1000 + first_car, "thing_a2": car * 1000 + first_car + 1,
                 "thing_b": person * 1000 + 0, "crowd": person,
                 "void": int(rng.choice([0, guard_rail, caravan * 1000]))}
        for role, mask in regions:
            instance_ids[mask] = roles[role]

        panoptic = np.full((height, width), IGNORE_LABEL * CITYSCAPES_DIVISOR, np.int32)
        counters: Dict[int, int] = {}
        for segment_id in np.unique(instance_ids):
            label = id2label[int(segment_id) // 1000 if segment_id >= 1000 else int(segment_id)]
            if label.ignoreInEval:
                continue
            instance = 0
            if label.hasInstances and segment_id >= 1000:
                instance = counters.get(label.trainId, 0) + 1
                counters[label.trainId] = instance
            panoptic[instance_ids == segment_id] = label.trainId * CITYSCAPES_DIVISOR + instance

        for folder, suffix, array in (
                ("leftImg8bit", "leftImg8bit", _image(rng, instance_ids)),
                ("gtFine", "gtFine_instanceIds", instance_ids.astype(np.uint16))):
            directory = os.path.join(root, folder, split, city)
            os.makedirs(directory, exist_ok=True)
            Image.fromarray(array).save(os.path.join(directory, f"{image_id}_{suffix}.png"))
        expected[image_id] = panoptic
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(cityscapesPath=os.path.join(root, "gtFine"),
                         outputFolder=os.path.join(root, "gtFine"), useTrainId=False,
                         setNames=[split])
    return expected

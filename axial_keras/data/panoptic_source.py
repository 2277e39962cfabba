"""What a panoptic source dataset (COCO, Cityscapes) yields, and how its segments become ids.

Both datasets ship the COCO panoptic format: a JSON file whose `annotations` list, per
image, the PNG of RGB-encoded segment ids and the `segments_info` of each segment
(`id`, `category_id`, `iscrowd`). A reader (`coco_panoptic`, `cityscapes_panoptic`)
turns its dataset's layout into a `PanopticSource`; `load_example` and `iter_examples`
here decode any source the same way:

- each category maps to a contiguous class id (or to void);
- a segment of a thing class with `iscrowd = 0` gets instance id 1, 2, ... per class
  in `segments_info` order; crowd segments and stuff segments get instance 0;
- panoptic id = `class * label_divisor + instance`; pixels of segment id 0 (unlabelled)
  and of void categories get `ignore_label * label_divisor`.

Broken inputs raise `DatasetFileError`, whose message starts with the file at fault.
Problems a reader finds while listing (an annotation without `segments_info`, a missing
file, an image without annotation) are collected in `PanopticSource.problems`, so a
caller can either raise the first one or skip and count them.
"""

import dataclasses
import json
import os
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)

import numpy as np
import tensorflow as tf

from axial_keras.data.tfrecord import decode_id_png
from axial_keras.labels import PanopticLabels

# Segment id 0 in a COCO-format PNG is unlabelled (void).
UNLABELLED_SEGMENT_ID = 0


class DatasetFileError(ValueError):
    """A dataset file that cannot be converted; the message starts with its path.

    Attributes:
        path: the file at fault.
        reason: what is wrong with it.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Segment:
    """One entry of `segments_info`."""

    id: int
    category_id: int
    iscrowd: bool


@dataclasses.dataclass(frozen=True)
class SourceExample:
    """One annotated image, before decoding.

    Attributes:
        image_id: the dataset's image id, as a string.
        image_path: the image file.
        label_path: the PNG of RGB-encoded segment ids.
        annotation_path: the JSON file listing its segments.
        segments: its `segments_info`.
    """

    image_id: str
    image_path: str
    label_path: str
    annotation_path: str
    segments: Tuple[Segment, ...]


@dataclasses.dataclass(frozen=True)
class PanopticSource:
    """A split of a panoptic dataset as listed by a reader.

    Attributes:
        name: the dataset name (`"coco_panoptic"`, `"cityscapes_panoptic"`).
        split: `"train"` or `"val"`.
        labels: the output classes (contiguous ids), label divisor and void class.
        source_ids: the dataset's category id of each class (`source_ids[class id]`).
        category_to_class: the dataset's category id -> contiguous class id, or
            `labels.ignore_label` for categories that become void.
        examples: the annotated images that look convertible.
        problems: the inputs found broken while listing, in a stable order.
    """

    name: str
    split: str
    labels: PanopticLabels
    source_ids: Tuple[int, ...]
    category_to_class: Mapping[int, int]
    examples: Tuple[SourceExample, ...]
    problems: Tuple[DatasetFileError, ...]


@dataclasses.dataclass(frozen=True)
class Example:
    """One decoded example, ready to be written.

    Attributes:
        image_id: the dataset's image id.
        image_bytes: the original image file.
        image_format: `"jpeg"` or `"png"`.
        panoptic: int32 [height, width] panoptic ids.
    """

    image_id: str
    image_bytes: bytes
    image_format: str
    panoptic: np.ndarray


def read_json(path: str) -> Dict[str, Any]:
    """Loads a JSON object, raising `DatasetFileError` naming `path` when it cannot."""
    try:
        with open(path) as f:
            values = json.load(f)
    except FileNotFoundError:
        raise DatasetFileError(path, "file not found.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFileError(path, f"not valid JSON ({error}).") from None
    if not isinstance(values, dict):
        raise DatasetFileError(path, "expected a JSON object at the top level.")
    return values


def json_list(values: Mapping[str, Any], key: str, path: str) -> List[Any]:
    """`values[key]`, which must be a non-empty list, else `DatasetFileError`."""
    items = values.get(key)
    if not isinstance(items, list) or not items:
        raise DatasetFileError(path, f"has no {key!r} list; is it a panoptic annotation file?")
    return items


def parse_segments(annotation: Mapping[str, Any], annotation_path: str) -> Tuple[Segment, ...]:
    """The `segments_info` of one annotation.

    Raises:
        DatasetFileError: naming `annotation_path` and the annotation's PNG when
            `segments_info` is missing or an entry lacks `id` or `category_id`.
    """
    where = f"annotation of {annotation.get('file_name', annotation.get('image_id'))!r}"
    infos = annotation.get("segments_info")
    if not isinstance(infos, list):
        raise DatasetFileError(annotation_path, f"{where} has no 'segments_info' list.")
    segments = []
    for info in infos:
        if not isinstance(info, dict) or "id" not in info or "category_id" not in info:
            raise DatasetFileError(annotation_path,
                                   f"{where}: a segment lacks 'id' or 'category_id': {info!r}.")
        segments.append(Segment(int(info["id"]), int(info["category_id"]),
                                bool(info.get("iscrowd", 0))))
    return tuple(segments)


def collect_examples(annotations: Sequence[Any], annotation_path: str, label_dir: str,
                     image_path_for: Callable[[Mapping[str, Any]], str],
                     image_files: Iterable[str]
                     ) -> Tuple[Tuple[SourceExample, ...], Tuple[DatasetFileError, ...]]:
    """Pairs annotations with their files; collects what is broken.

    Args:
        annotations: the JSON's `annotations` list.
        annotation_path: the JSON file.
        label_dir: the folder of the segment PNGs.
        image_path_for: the image file of an annotation.
        image_files: every image file of the split (on disk or listed in the JSON); an
            image that no annotation names is a problem.

    Returns:
        `(examples, problems)`: the usable annotations, and a `DatasetFileError` for each
        annotation without `segments_info`, missing image or PNG, and image without
        annotation.
    """
    examples: List[SourceExample] = []
    problems: List[DatasetFileError] = []
    annotated = set()
    for annotation in annotations:
        if not isinstance(annotation, dict) or "image_id" not in annotation \
                or "file_name" not in annotation:
            problems.append(DatasetFileError(
                annotation_path, f"an annotation lacks 'image_id' or 'file_name': "
                f"{str(annotation)[:200]}."))
            continue
        image_path = os.path.normpath(image_path_for(annotation))
        annotated.add(image_path)
        label_path = os.path.join(label_dir, annotation["file_name"])
        try:
            segments = parse_segments(annotation, annotation_path)
        except DatasetFileError as error:
            problems.append(error)
            continue
        missing = [path for path in (image_path, label_path) if not os.path.isfile(path)]
        if missing:
            problems.append(DatasetFileError(
                missing[0], f"file not found (named by {annotation_path}, image_id "
                f"{annotation['image_id']!r})."))
            continue
        examples.append(SourceExample(str(annotation["image_id"]), image_path, label_path,
                                      annotation_path, segments))
    for path in sorted({os.path.normpath(p) for p in image_files} - annotated):
        problems.append(DatasetFileError(path, f"image has no annotation in {annotation_path}."))
    return tuple(examples), tuple(problems)


def segment_panoptic_ids(example: SourceExample, source: PanopticSource) -> Dict[int, int]:
    """Maps each segment id of `example` to its panoptic id (module docstring rules).

    Raises:
        DatasetFileError: for an unknown category, a repeated segment id, or more thing
            instances of one class than the label divisor can number.
    """
    next_instance: Dict[int, int] = {}
    ids: Dict[int, int] = {}
    for segment in example.segments:
        if segment.id in ids:
            raise DatasetFileError(example.annotation_path,
                                   f"segment id {segment.id} is listed twice for "
                                   f"{example.label_path}.")
        class_id = source.category_to_class.get(segment.category_id)
        if class_id is None:
            raise DatasetFileError(example.annotation_path,
                                   f"segment {segment.id} of {example.label_path} has "
                                   f"category_id {segment.category_id}, which is not a "
                                   f"{source.name} category.")
        instance = 0
        labels = source.labels
        if class_id != labels.ignore_label and labels.classes[class_id].is_thing \
                and not segment.iscrowd:
            instance = next_instance.get(class_id, 1)
            if instance >= labels.label_divisor:
                raise DatasetFileError(example.label_path,
                                       f"more than {labels.label_divisor - 1} instances of "
                                       f"class {labels.classes[class_id].name!r}.")
            next_instance[class_id] = instance + 1
        ids[segment.id] = class_id * labels.label_divisor + instance
    return ids


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise DatasetFileError(path, f"cannot be read ({error.strerror}).") from None


def _image_format(data: bytes) -> Optional[str]:
    """`"jpeg"` or `"png"` from the file's magic bytes, else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


def load_example(source: PanopticSource, example: SourceExample) -> Example:
    """Reads and decodes one example, checking it fully.

    Raises:
        DatasetFileError: naming the file at fault when a PNG or image does not decode,
            the PNG holds a segment id that `segments_info` does not list, the sizes
            differ, or `segment_panoptic_ids` fails.
    """
    label_bytes = _read_bytes(example.label_path)
    try:
        segment_map = decode_id_png(label_bytes).numpy()
    except tf.errors.InvalidArgumentError as error:
        raise DatasetFileError(example.label_path,
                               f"PNG does not decode ({error.message.splitlines()[-1]})."
                               ) from None
    ids = segment_panoptic_ids(example, source)
    ids.setdefault(UNLABELLED_SEGMENT_ID, source.labels.void_id)
    keys = np.array(sorted(ids), np.int64)
    values = np.array([ids[key] for key in keys], np.int32)
    index = np.minimum(np.searchsorted(keys, segment_map), len(keys) - 1)
    unknown = keys[index] != segment_map
    if unknown.any():
        bad = np.unique(segment_map[unknown])
        raise DatasetFileError(
            example.label_path,
            f"segment ids {bad[:10].tolist()} in the PNG are not in the segments_info of "
            f"image_id {example.image_id!r} in {example.annotation_path}.")
    panoptic = values[index]

    image_bytes = _read_bytes(example.image_path)
    image_format = _image_format(image_bytes)
    if image_format is None:
        raise DatasetFileError(example.image_path, "not a JPEG or PNG file.")
    try:
        shape = tuple(tf.io.decode_image(image_bytes, channels=3,
                                         expand_animations=False).shape)
    except tf.errors.InvalidArgumentError as error:
        raise DatasetFileError(example.image_path,
                               f"image does not decode ({error.message.splitlines()[-1]})."
                               ) from None
    if shape[:2] != panoptic.shape:
        raise DatasetFileError(example.label_path,
                               f"size {panoptic.shape[0]}x{panoptic.shape[1]} differs from "
                               f"the image {example.image_path} ({shape[0]}x{shape[1]}).")
    return Example(example.image_id, image_bytes, image_format, panoptic)


def iter_examples(source: PanopticSource) -> Iterator[Example]:
    """Yields every example of `source`, decoded, in order (raises on the first broken one)."""
    for example in source.examples:
        yield load_example(source, example)

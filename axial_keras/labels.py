"""The label space of a panoptic (or classification) task, as one frozen value.

`PanopticLabels` says which classes exist (id, name, thing or stuff), how panoptic ids
are packed (`class * label_divisor + instance`) and which class id is void. Targets,
losses, the post-processor, the metrics, the model config, the experiment config and the
export metadata all take this one value instead of loose arguments.

Example:
>>> labels = PanopticLabels.from_ids(num_classes=3, thing_class_ids=[1, 2])
>>> labels.num_classes, labels.thing_class_ids, labels.class_names
(3, (1, 2), ('class_0', 'class_1', 'class_2'))
>>> CITYSCAPES.thing_class_ids
(11, 12, 13, 14, 15, 16, 17, 18)
"""

import dataclasses
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class PanopticClass:
    """One semantic class.

    Args:
        id: int. The class id (index into the semantic logits).
        name: str. Human-readable name.
        is_thing: bool. Whether the class has instances (thing) or not (stuff).
    """

    id: int
    name: str
    is_thing: bool


@dataclasses.dataclass(frozen=True)
class PanopticLabels:
    """Classes (ids 0..n-1 in order), panoptic id packing and the void class.

    Args:
        classes: tuple of `PanopticClass` with ids 0, 1, ..., n - 1 in order.
        label_divisor: int. Panoptic id = class id * label_divisor + instance id.
        ignore_label: int. Class id of void pixels (outside 0..n-1).
    """

    classes: Tuple[PanopticClass, ...]
    label_divisor: int = 1000
    ignore_label: int = 255

    def __post_init__(self):
        classes = tuple(c if isinstance(c, PanopticClass) else PanopticClass(**c)
                        for c in self.classes)
        object.__setattr__(self, "classes", classes)
        if not classes:
            raise ValueError("PanopticLabels needs at least one class.")
        ids = [c.id for c in classes]
        if ids != list(range(len(classes))):
            raise ValueError(f"Class ids must be 0..{len(classes) - 1} in order, got {ids}.")
        if not isinstance(self.label_divisor, int) or self.label_divisor < 1:
            raise ValueError(f"`label_divisor` must be a positive int, got {self.label_divisor!r}.")
        if 0 <= self.ignore_label < len(classes):
            raise ValueError(f"`ignore_label` {self.ignore_label} is a real class id "
                             f"(classes are 0..{len(classes) - 1}).")

    @classmethod
    def from_ids(cls, num_classes: int, thing_class_ids: Iterable[int] = (),
                 label_divisor: int = 1000, ignore_label: int = 255,
                 class_names: Optional[Sequence[str]] = None) -> "PanopticLabels":
        """Builds labels from a class count and thing ids (names `class_<id>` if not given)."""
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        things = {int(c) for c in thing_class_ids}
        bad = sorted(c for c in things if not 0 <= c < num_classes)
        if bad:
            raise ValueError(f"thing_class_ids {bad} are outside [0, num_classes={num_classes}).")
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes.")
        return cls(tuple(PanopticClass(i, str(n), i in things) for i, n in enumerate(class_names)),
                   label_divisor=label_divisor, ignore_label=ignore_label)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def thing_class_ids(self) -> Tuple[int, ...]:
        return tuple(c.id for c in self.classes if c.is_thing)

    @property
    def stuff_class_ids(self) -> Tuple[int, ...]:
        return tuple(c.id for c in self.classes if not c.is_thing)

    @property
    def void_id(self) -> int:
        """The panoptic id of void pixels, `ignore_label * label_divisor`."""
        return self.ignore_label * self.label_divisor

    @property
    def class_names(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def name_of(self, class_id: int) -> str:
        """The class name of `class_id` ("void" for the ignore label)."""
        if class_id == self.ignore_label:
            return "void"
        if not 0 <= class_id < self.num_classes:
            raise ValueError(f"Class id {class_id} is outside 0..{self.num_classes - 1}.")
        return self.classes[class_id].name

    def get_config(self) -> Dict[str, Any]:
        """A JSON-ready dict; `PanopticLabels.from_config(labels.get_config()) == labels`."""
        return {"classes": [dataclasses.asdict(c) for c in self.classes],
                "label_divisor": self.label_divisor, "ignore_label": self.ignore_label}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "PanopticLabels":
        return cls(classes=tuple(PanopticClass(**c) for c in config["classes"]),
                   label_divisor=config.get("label_divisor", 1000),
                   ignore_label=config.get("ignore_label", 255))


# The 19 Cityscapes evaluation classes by trainId (things 11-18), as deeplab2's
# `cityscapes_panoptic` dataset: label divisor 1000, void 255.
CITYSCAPES = PanopticLabels.from_ids(
    19, range(11, 19), label_divisor=1000, ignore_label=255,
    class_names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                 "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                 "truck", "bus", "train", "motorcycle", "bicycle"))

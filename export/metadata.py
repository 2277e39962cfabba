"""What an exported model needs to be read back: label encoding, classes, input size.

Every exported file carries one `ExportMetadata` as JSON, so `python -m export.predict`
(or any other reader) can colour and name its outputs without the experiment registry:

- SavedModel: `DIR/assets.extra/axial_keras.json` (TF Serving ignores `assets.extra`);
- LiteRT: a flatbuffer metadata entry named `axial_keras`;
- ONNX: the model's `metadata_props` key `axial_keras`.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

METADATA_KEY = "axial_keras"
SAVED_MODEL_FILE = os.path.join("assets.extra", "axial_keras.json")


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """Describes one exported model.

    Attributes:
        experiment: the experiment's name.
        config: the full experiment config (`trainer.experiments.to_dict`).
        num_classes, thing_class_ids, label_divisor, ignore_label: the panoptic label
            encoding (panoptic id = class * label_divisor + instance; void class
            `ignore_label`).
        post_processing: `PanopticPostProcessor` arguments used inside the graph.
        checkpoint: the weights exported (None: freshly initialized).
        format: "saved_model", "tflite" or "onnx".
        input_size: fixed `(height, width)` of the input; None for any size.
        batch_size: fixed batch; None for any.
        quantization: "none", "float16", "dynamic" or "int8".
    """

    experiment: str
    config: Dict[str, Any]
    num_classes: int
    thing_class_ids: Tuple[int, ...]
    label_divisor: int
    ignore_label: int
    post_processing: Dict[str, Any]
    checkpoint: Optional[str] = None
    format: str = "saved_model"
    input_size: Optional[Tuple[int, int]] = None
    batch_size: Optional[int] = None
    quantization: str = "none"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ExportMetadata":
        values = json.loads(text)
        values["thing_class_ids"] = tuple(values["thing_class_ids"])
        if values.get("input_size") is not None:
            values["input_size"] = tuple(values["input_size"])
        return cls(**values)

    def default_input_size(self) -> Tuple[int, int]:
        """The fixed input of a LiteRT / ONNX export by default: the experiment's crop
        size (for the generated digits, the image size)."""
        data = self.config["data"]
        crop = tuple(data.get("crop_size") or ())
        if len(crop) == 2:
            return int(crop[0]), int(crop[1])
        return int(data["image_size"]), int(data["image_size"])

    def colour_args(self) -> Dict[str, Any]:
        """Keyword arguments of `axial_keras.panoptic.colorize_panoptic`."""
        return dict(label_divisor=self.label_divisor, ignore_label=self.ignore_label,
                    thing_class_ids=self.thing_class_ids, num_classes=self.num_classes)


def parse_input_size(values: Optional[Sequence[str]]) -> Optional[Tuple[int, int]]:
    """`("64", "64")` (an `--input_size=64,64` flag) -> `(64, 64)`; None stays None.

    Raises:
        ValueError: unless two positive ints are given.
    """
    if not values:
        return None
    try:
        size = tuple(int(value) for value in values)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"--input_size must be height,width (positive ints), got {values}.")
    return size


def write_saved_model_metadata(saved_model_dir: str, metadata: ExportMetadata) -> str:
    """Writes `metadata` into a SavedModel directory; returns the file's path."""
    path = os.path.join(saved_model_dir, SAVED_MODEL_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(metadata.to_json())
    return path


def read_saved_model_metadata(saved_model_dir: str) -> ExportMetadata:
    """The metadata `write_saved_model_metadata` wrote.

    Raises:
        FileNotFoundError: for a SavedModel not written by `export.saved_model`.
    """
    with open(os.path.join(saved_model_dir, SAVED_MODEL_FILE)) as f:
        return ExportMetadata.from_json(f.read())


def embed_tflite_metadata(model_content: bytes, metadata: ExportMetadata) -> bytes:
    """`model_content` with `metadata` added as the flatbuffer metadata entry `axial_keras`."""
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_content))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata.to_json().encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_KEY.encode()]
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_tflite_metadata(model_content: bytes) -> ExportMetadata:
    """The metadata `embed_tflite_metadata` added.

    Raises:
        KeyError: for a .tflite file not written by `export.tflite`.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(model_content, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode("utf-8") == METADATA_KEY:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return ExportMetadata.from_json(data.tobytes().decode("utf-8"))
    raise KeyError(f"The .tflite model has no {METADATA_KEY!r} metadata entry.")

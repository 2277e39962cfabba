"""What an exported model needs to be read back: its labels, post-processing, input size.

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

from axial_keras.files import write_atomically
from axial_keras.labels import PanopticLabels
from axial_keras.panoptic import PostProcessingSettings

METADATA_KEY = "axial_keras"
SAVED_MODEL_FILE = os.path.join("assets.extra", "axial_keras.json")


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """Describes one exported model.

    Attributes:
        labels: the model's `PanopticLabels` (class names, things, label encoding:
            panoptic id = class * label_divisor + instance; void class `ignore_label`).
        post_processing: the `PostProcessingSettings` used inside the graph.
        model_config: the model's own config (`keras.saving.serialize_keras_object`).
        training_data: the `data` section of the trainer run's config.json (None when the
            checkpoint came without one): the default LiteRT / ONNX input size and the
            int8 calibration images come from it.
        experiment: the trainer run's experiment name (None without a config.json).
        checkpoint: the weights exported (None: freshly initialized).
        format: "saved_model", "tflite" or "onnx".
        input_size: fixed `(height, width)` of the input; None for any size.
        batch_size: fixed batch; None for any.
        quantization: "none", "float16", "dynamic" or "int8".
    """

    labels: PanopticLabels
    post_processing: PostProcessingSettings
    model_config: Dict[str, Any]
    training_data: Optional[Dict[str, Any]] = None
    experiment: Optional[str] = None
    checkpoint: Optional[str] = None
    format: str = "saved_model"
    input_size: Optional[Tuple[int, int]] = None
    batch_size: Optional[int] = None
    quantization: str = "none"

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        values["labels"] = self.labels.get_config()
        values["post_processing"] = self.post_processing.get_config()
        return json.dumps(values, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ExportMetadata":
        values = json.loads(text)
        values["labels"] = PanopticLabels.from_config(values["labels"])
        values["post_processing"] = PostProcessingSettings.from_config(values["post_processing"])
        if values.get("input_size") is not None:
            values["input_size"] = tuple(values["input_size"])
        return cls(**values)

    def default_input_size(self) -> Tuple[int, int]:
        """The fixed input of a LiteRT / ONNX export by default: the training crop size
        (for the generated digits, the image size).

        Raises:
            ValueError: when the export has no training data description.
        """
        data = self.training_data
        if not data:
            raise ValueError("The SavedModel does not say what size its training images had; "
                             "pass --input_size=HEIGHT,WIDTH.")
        crop = tuple(data.get("crop_size") or ())
        if len(crop) == 2:
            return int(crop[0]), int(crop[1])
        return int(data["image_size"]), int(data["image_size"])


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
    return write_atomically(os.path.join(saved_model_dir, SAVED_MODEL_FILE), metadata.to_json())


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

"""Runs an exported model (SavedModel directory, `.tflite` or `.onnx`) with one interface.

`load_exported(path)` returns a runner: `runner(images)` takes uint8
`[batch, height, width, 3]` and returns the serving outputs (`panoptic`, `semantic`,
`instance`, `instance_scores`, `semantic_probability`, `image_size`) as NumPy arrays;
`runner.metadata` is the model's `ExportMetadata` and `runner.input_size` its fixed
`(height, width)` (None: any size). A LiteRT model with a fixed batch runs larger batches
in chunks (and so does an ONNX model).

Example:
>>> runner = load_exported("model.tflite")
>>> runner(np.zeros((1, 64, 64, 3), np.uint8))["panoptic"].shape
(1, 64, 64)
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from export.metadata import (METADATA_KEY, ExportMetadata, read_saved_model_metadata,
                             read_tflite_metadata)
from export.serving import OUTPUT_KEYS


def _in_batches(run, images: np.ndarray, batch_size: int) -> Dict[str, np.ndarray]:
    """`run` on `images` in chunks of exactly `batch_size` (the last padded by repeating
    its last image, whose outputs are dropped)."""
    images = np.asarray(images, np.uint8)
    chunks: List[Dict[str, np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        count = len(chunk)
        if count < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, 0)])
        outputs = run(chunk)
        chunks.append({key: np.array(outputs[key][:count]) for key in OUTPUT_KEYS})
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in OUTPUT_KEYS}


class SavedModelRunner:
    """A SavedModel's `serving_uint8` (`__call__`) and `serving_default` (`encoded`)."""

    def __init__(self, path: str):
        self.path = path
        self.model = tf.saved_model.load(path)
        self.metadata = read_saved_model_metadata(path)
        self.input_size: Optional[Tuple[int, int]] = None

    def __call__(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        outputs = self.model.signatures["serving_uint8"](images=tf.constant(images, tf.uint8))
        return {key: outputs[key].numpy() for key in OUTPUT_KEYS}

    def encoded(self, files: Sequence[bytes]) -> Dict[str, np.ndarray]:
        """Runs `serving_default` on encoded image files (one padded batch)."""
        outputs = self.model.signatures["serving_default"](images=tf.constant(list(files)))
        return {key: outputs[key].numpy() for key in OUTPUT_KEYS}


class LiteRTRunner:
    """A `.tflite` file's `serving_default` signature, run by `ai_edge_litert`."""

    def __init__(self, path: str, num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        with open(path, "rb") as f:
            content = f.read()
        self.metadata = read_tflite_metadata(content)
        self.interpreter = Interpreter(model_content=content,
                                       num_threads=num_threads or os.cpu_count())
        self.runner = self.interpreter.get_signature_runner("serving_default")
        shape = self.runner.get_input_details()["images"]["shape"]
        self.batch_size = int(shape[0])
        self.input_size: Optional[Tuple[int, int]] = (int(shape[1]), int(shape[2]))

    def __call__(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        return _in_batches(lambda chunk: self.runner(images=chunk), images, self.batch_size)


class OnnxRunner:
    """An `.onnx` file run by `onnxruntime` on the CPU."""

    def __init__(self, path: str, num_threads: Optional[int] = None):
        import onnxruntime

        self.path = path
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or os.cpu_count()
        self.session = onnxruntime.InferenceSession(path, options,
                                                    providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ExportMetadata.from_json(meta[METADATA_KEY])
        shape = self.session.get_inputs()[0].shape
        self.batch_size = int(shape[0])
        self.input_size = (int(shape[1]), int(shape[2]))
        self.names = [output.name for output in self.session.get_outputs()]

    def _run(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(None, {"images": images})))

    def __call__(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        return _in_batches(self._run, images, self.batch_size)


def load_exported(path: str, num_threads: Optional[int] = None):
    """A runner for the SavedModel directory, `.tflite` or `.onnx` file at `path`.

    Raises:
        ValueError: for a path that is none of these.
    """
    if os.path.isdir(path):
        return SavedModelRunner(path)
    if path.endswith(".tflite"):
        return LiteRTRunner(path, num_threads)
    if path.endswith(".onnx"):
        return OnnxRunner(path, num_threads)
    raise ValueError(f"{path!r} is not a SavedModel directory, a .tflite or an .onnx file.")

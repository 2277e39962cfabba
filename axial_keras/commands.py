"""The console commands (`pyproject.toml`'s `[project.scripts]`), each `python -m MODULE` renamed.

`axial_keras.cli.launch` starts TensorFlow quietly and only then imports the module, which
is why the modules are named here as strings: axial_keras imports neither trainer nor
export, it only starts them as `python -m` does (and a missing Orbit or extra is then one
`error:` line instead of a traceback).
"""

from axial_keras import cli


def train() -> None:
    """`axial-keras-train`: train and evaluate an experiment (trainer.train)."""
    cli.launch("trainer.train")


def export_saved_model() -> None:
    """`axial-keras-export`: a trained model to a TF Serving SavedModel (export.saved_model)."""
    cli.launch("export.saved_model")


def export_tflite() -> None:
    """`axial-keras-tflite`: a SavedModel to a LiteRT .tflite file (export.tflite)."""
    cli.launch("export.tflite")


def export_onnx() -> None:
    """`axial-keras-onnx`: a SavedModel to an .onnx file (export.onnx)."""
    cli.launch("export.onnx")


def predict() -> None:
    """`axial-keras-predict`: an exported model on image files (export.predict)."""
    cli.launch("export.predict")


def convert_checkpoint() -> None:
    """`axial-keras-convert`: a deeplab2 checkpoint to a .keras file (axial_keras.models.convert)."""
    cli.launch("axial_keras.models.convert")


def convert_dataset() -> None:
    """`axial-keras-convert-dataset`: COCO/Cityscapes panoptic to TFRecords (axial_keras.data.convert)."""
    cli.launch("axial_keras.data.convert")

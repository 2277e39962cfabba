r"""Export of axial_keras panoptic models: SavedModel for TF Serving, LiteRT .tflite and ONNX.

    python -m export.saved_model --experiment=NAME [--checkpoint=PATH] --output_dir=DIR
    python -m export.tflite --saved_model_dir=DIR --output=FILE \
        --quantization=none|float16|dynamic|int8
    python -m export.onnx --saved_model_dir=DIR --output=FILE
    python -m export.predict --model=DIR|FILE.tflite|FILE.onnx --output_dir=OUT IMAGE...
    python export/rest_api.py --saved_model_dir=DIR < requests.jsonl   (TensorFlow only)

Modules: `serving` (the graph all formats share), `saved_model`, `tflite`, `onnx` (the
exporters), `weights` (checkpoint loading), `metadata` (what each file carries),
`images` (fitting images to a fixed input), `runtime` (one runner per format),
`predict` (pictures from image files) and `rest_api` (TF Serving's REST API in-process).
The console commands `axial-keras-export`, `-tflite`, `-onnx` and `-predict` run
`saved_model`, `tflite`, `onnx` and `predict`; LiteRT, tf2onnx, onnx and onnxruntime come
with the `export` extra.
"""

from axial_keras import cli as _cli

_cli.quiet_start_under_python_m()

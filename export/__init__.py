"""Export of axial_keras models: SavedModel for TF Serving, LiteRT .tflite and ONNX.

The exporters land with their own issue; this package exists so the layout and imports are fixed.
"""

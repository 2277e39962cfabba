"""axial-keras: Axial-DeepLab's stand-alone axial attention for Keras 3.

Layers (`axial_keras.layers`), the Axial-ResNet family and its registry
(`axial_keras.models`), and the embedded digits data (`axial_keras.data`).
"""

__version__ = "0.1.0"

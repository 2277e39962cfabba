"""axial-keras: Axial-DeepLab's stand-alone axial attention for Keras 3.

Layers (`axial_keras.layers`), the Axial-ResNet family and its registry
(`axial_keras.models`), and the embedded digits data (`axial_keras.data`).
"""

from axial_keras import cli as _cli

__version__ = "0.3.0"

_cli.quiet_start_under_python_m()

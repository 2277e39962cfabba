"""Data: the embedded digits set (more datasets and tf.data pipelines follow)."""

from axial_keras.data.digits import load_digits

__all__ = ["load_digits"]

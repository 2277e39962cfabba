"""Data: the embedded digits sets (classification and panoptic)."""

from axial_keras.data.digits import load_digits
from axial_keras.data.digits_panoptic import (DIGITS_PANOPTIC, digits_panoptic_dataset,
                                              generate_digits_panoptic)

__all__ = ["DIGITS_PANOPTIC", "digits_panoptic_dataset", "generate_digits_panoptic", "load_digits"]

"""Data: the embedded digits sets, COCO/Cityscapes panoptic converters and the tf.data input.

`python -m axial_keras.data.convert` writes COCO panoptic or Cityscapes panoptic as
TFRecords (`axial_keras.data.tfrecord`); `panoptic_dataset` reads them for training and
evaluation.
"""

from axial_keras.data.digits import load_digits
from axial_keras.data.digits_panoptic import (DIGITS_PANOPTIC, DIGITS_POST_PROCESSING,
                                              digits_panoptic_dataset,
                                              generate_digits_panoptic)
from axial_keras.data.panoptic_dataset import pad_and_batch, panoptic_dataset
from axial_keras.data.panoptic_source import DatasetFileError
from axial_keras.data.tfrecord import load_metadata

__all__ = ["DIGITS_PANOPTIC", "DIGITS_POST_PROCESSING", "DatasetFileError",
           "digits_panoptic_dataset",
           "generate_digits_panoptic", "load_digits", "load_metadata", "pad_and_batch",
           "panoptic_dataset"]

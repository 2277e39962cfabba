"""The embedded digits data and a first real learning result with model.fit."""

import numpy as np
import pytest

from axial_keras.data import load_digits
from axial_keras.demo import train_digits


def test_digits_split_is_fixed_and_stratified():
    (x_train, y_train), (x_test, y_test) = load_digits(16)
    assert x_train.shape == (1438, 16, 16, 1) and x_test.shape == (359, 16, 16, 1)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(np.unique(y_test)) == set(range(10))
    (x_again, _), _ = load_digits(16)
    np.testing.assert_array_equal(x_train, x_again)


@pytest.mark.long
def test_tiny_axial_resnet_learns_digits_with_fit():
    _, accuracy, _ = train_digits("axial_resnet_tiny", epochs=2, verbose=0)
    assert accuracy >= 0.85, accuracy  # chance is 0.1; 2 epochs reach 0.93 here, 12 ~0.98

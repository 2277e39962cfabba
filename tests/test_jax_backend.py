"""Runs the backend-agnostic layer, model and post-processing tests again under JAX.

One subprocess per test file (the backend is fixed at import; separate items let
`pytest -n` run them side by side), each of which must really run its tests: it fails on
any failure, on any skip and on an empty run.
"""

import os
import re
import subprocess
import sys

import pytest

from axial_keras.models import list_models

pytestmark = pytest.mark.long
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Eager JAX runs the full-width models op by op and XLA-compiles the battery's `fit`:
# 30-300 s each here. Their layers pass the same battery under JAX in test_layers.py
# (FullAxialStem with local spans included), the smallest variant still runs here, and
# the converted zoo models (exact GeLU included) run under JAX in test_zoo_parity.py.
SLOW_UNDER_JAX = {
    "tests/test_models.py": [
        "test_keras_battery[kwargs1-input_shape1-weights1-1085760]",
        *(f"test_every_variant_runs_a_small_forward_pass[{name}]" for name in list_models()
          if name.startswith(("axial_resnet", "full_axial")) and name != "axial_resnet_tiny"),
    ],
}
# The fewest tests each file must pass under JAX (what it holds today, less slack for a
# test merged or split): an empty or mostly deselected run fails.
MIN_PASSED = {"tests/test_layers.py": 40, "tests/test_models.py": 15,
              "tests/test_postprocessing.py": 25, "tests/test_panoptic_predictor.py": 4}


@pytest.mark.parametrize("path", sorted(MIN_PASSED))
def test_tests_pass_under_jax(path):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    slow = SLOW_UNDER_JAX.get(path, [])
    deselect = [arg for test in slow for arg in ("--deselect", f"{path}::{test}")]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-rs", *deselect, path],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= MIN_PASSED[path], summary
    if slow:  # the deselected names still exist
        assert f"{len(slow)} deselected" in summary, summary
    assert "skipped" not in summary and "error" not in summary, summary

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


# Deselected under JAX, each of 20-130 s here and each covered elsewhere under JAX (measured
# with `--durations`; together they were a quarter of `make test`'s wall clock):
# - test_models: eager JAX runs the full-width models op by op, and the battery XLA-compiles
#   its `fit` (130 s for the tiny classifier). Every layer of those models passes the same
#   battery under JAX in test_layers.py, the model dtype, endpoint and forward tests still
#   run here on the tiny variant, and the converted zoo models run under JAX in
#   test_zoo_parity.py. Stride 8 of the endpoint test is the slow one of three.
# - test_layers: the battery of the strided AxialBottleneck (30 s); its AxialAttention2D and
#   the unstrided bottleneck keep theirs. (FullAxialStem's battery, 60 s, stays: no other
#   test runs that stem under JAX once the full_axial forwards above are left out.)
# - test_postprocessing: the tile-independence and batch-mate checks (20 s each), which run
#   the same grouping as the exactness tests that stay (`tile` 1000 of the first stays).
SLOW_UNDER_JAX = {
    "tests/test_models.py": [
        "test_keras_battery[kwargs0-input_shape0-weights0-1056469]",
        "test_keras_battery[kwargs1-input_shape1-weights1-1085760]",
        "test_endpoint_strides[8]",
        *(f"test_every_variant_runs_a_small_forward_pass[{name}]" for name in list_models()
          if name.startswith(("axial_resnet", "full_axial")) and name != "axial_resnet_tiny"),
    ],
    "tests/test_layers.py": [
        "test_keras_battery[AxialBottleneck-5]",
    ],
    "tests/test_postprocessing.py": [
        "test_panoptic_maps_do_not_depend_on_the_grouping_tile[1]",
        "test_panoptic_maps_do_not_depend_on_the_grouping_tile[8]",
        "test_an_image_does_not_depend_on_its_batch_mates",
    ],
}
# The fewest tests each file must pass under JAX (what it holds today, less slack for a
# test merged or split): an empty or mostly deselected run fails.
MIN_PASSED = {"tests/test_layers.py": 40, "tests/test_models.py": 13,
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

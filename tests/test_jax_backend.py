"""Runs the backend-agnostic layer and model tests again under KERAS_BACKEND=jax.

A subprocess (the backend is fixed at import) that must really run them: it fails on
any failure, on any skip and on an empty run.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Eager JAX runs these full-width models op by op and XLA-compiles the battery's `fit`:
# 20-130 s each here. Their layers pass the same battery under JAX in test_layers.py
# (FullAxialStem with local spans included), and the smallest variants still run here;
# the converted zoo models (exact GeLU included) run under JAX in test_zoo_parity.py.
SLOW_UNDER_JAX = [
    "tests/test_models.py::test_keras_battery[kwargs1-input_shape1-weights1-1085760]",
    *(f"tests/test_models.py::test_every_variant_runs_a_small_forward_pass[{name}]"
      for name in ("axial_resnet_m", "axial_resnet_l", "axial_resnet_xl",
                   "full_axial_resnet_m", "full_axial_resnet_l", "axial_resnet_50_gelu")),
]


def test_layers_and_models_pass_under_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    deselect = [arg for test in SLOW_UNDER_JAX for arg in ("--deselect", test)]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *deselect,
         "tests/test_layers.py", "tests/test_models.py", "tests/test_postprocessing.py",
         "tests/test_panoptic_predictor.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 40, summary
    assert f"{len(SLOW_UNDER_JAX)} deselected" in summary, summary  # the names still exist
    assert "skipped" not in summary and "error" not in summary, summary

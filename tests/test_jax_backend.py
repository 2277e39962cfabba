"""Runs the backend-agnostic layer and model tests again under KERAS_BACKEND=jax.

A subprocess (the backend is fixed at import) that must really run them: it fails on
any failure, on any skip and on an empty run.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layers_and_models_pass_under_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
         "tests/test_layers.py", "tests/test_models.py", "tests/test_postprocessing.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    tail = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode == 0, tail
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 40, summary
    assert "skipped" not in summary and "error" not in summary, summary

"""`model.predict` under XLA (axial_keras.models.predict_jit): which setting resolves to
what, that a float32 predict really runs a cluster compiled by XLA (TensorFlow's own log
line, in a subprocess) and computes what the plain graph computes, and that training keeps
Keras' setting."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from axial_keras.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEEPLAB = dict(num_classes=6, thing_class_ids=(2, 3, 4, 5))
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="Keras on TensorFlow resolves jit_compile to False on CPU")


@TF_ONLY
def test_float32_predict_is_compiled_on_a_cpu_and_training_is_not():
    model = get_model("axial_resnet_tiny", num_classes=4)
    assert model.jit_compile is False  # Keras' own resolution on a CPU-only machine
    assert model.predict_jit_compile == "auto"
    assert model.resolved_predict_jit_compile() is True
    model.compile(optimizer="sgd", loss="mse")
    assert model.resolved_predict_jit_compile() is True and model.jit_compile is False


@TF_ONLY
def test_explicit_settings_are_followed():
    model = get_model("axial_resnet_tiny", num_classes=4)
    model.predict_jit_compile = False
    assert model.resolved_predict_jit_compile() is False
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    assert model.predict_jit_compile is False and model.resolved_predict_jit_compile() is False
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    assert model.resolved_predict_jit_compile() is True and model.jit_compile is True
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    assert model.resolved_predict_jit_compile() is False


@TF_ONLY
def test_bfloat16_predict_keeps_the_graph():
    model = get_model("axial_resnet_tiny", num_classes=4, dtype="mixed_bfloat16")
    assert model.resolved_predict_jit_compile() is False  # XLA ran it 0.75x on CPU


@TF_ONLY
@pytest.mark.parametrize("name, overrides", [
    ("axial_deeplab_tiny", TINY_DEEPLAB),  # the decoder's convolutions
    ("axial_resnet_tiny", dict(num_classes=4, spans=(None, 9, 9, 9, 9))),  # banded
    ("axial_resnet_tiny", dict(num_classes=4, axial_beyond_stride=16)),  # mostly convs
])
def test_architectures_xla_runs_slower_keep_the_graph(name, overrides):
    model = get_model(name, **overrides)
    assert model.xla_predict_faster is False
    assert model.resolved_predict_jit_compile() is False
    model.predict_jit_compile = True
    assert model.resolved_predict_jit_compile() is True


def test_a_bad_setting_is_named():
    model = get_model("axial_resnet_tiny", num_classes=4)
    with pytest.raises(ValueError, match="predict_jit_compile.*'yes'"):
        model.predict_jit_compile = "yes"
    with pytest.raises(ValueError, match="predict_jit_compile.*'never'"):
        model.compile(optimizer="sgd", loss="mse", jit_compile="never")


@pytest.mark.long
def test_jax_follows_keras():
    """Under JAX `predict` is jitted by Keras itself; the mixin leaves that as it is."""
    script = ("from axial_keras.models import get_model\n"
              "m = get_model('axial_resnet_tiny', num_classes=4)\n"
              "print(m.jit_compile, m.resolved_predict_jit_compile())\n"
              "m.predict_jit_compile = False\n"
              "print(m.resolved_predict_jit_compile())\n")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["True", "True", "False"], run.stdout


_XLA_SCRIPT = r"""
import sys
import keras
import numpy as np
from axial_keras.models import get_model

keras.utils.set_random_seed(0)

def mark(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()

def compare(name, plain, compiled, nudged):
    for key in (sorted(plain) if isinstance(plain, dict) else [None]):
        pick = (lambda d: d[key]) if key else (lambda d: d)
        scale = float(np.abs(pick(plain)).max())
        print(name, key, float(np.abs(pick(compiled) - pick(plain)).max()) / scale,
              float(np.abs(pick(nudged) - pick(compiled)).max()) / scale)

classifier = get_model("axial_resnet_tiny", num_classes=4)
images = np.random.RandomState(0).uniform(0, 1, (2, 48, 64, 3)).astype("float32")
classifier.predict_jit_compile = False
plain = classifier.predict(images, verbose=0)
mark("PLAIN DONE")
classifier.predict_jit_compile = "auto"  # resolves to XLA on a CPU
compiled = classifier.predict_on_batch(images)
mark("XLA DONE")
compare("classifier", plain, compiled, classifier.predict_on_batch(images + 1e-3))
panoptic = get_model("axial_deeplab_tiny", num_classes=6, thing_class_ids=(2, 3, 4, 5))
images = images * 255.0
plain = panoptic.predict(images, verbose=0)
panoptic.predict_jit_compile = True
compare("panoptic", plain, panoptic.predict(images, verbose=0),
        panoptic.predict(images + 0.25, verbose=0))
"""


@TF_ONLY
@pytest.mark.long
def test_predict_runs_an_xla_cluster_equal_to_the_graph():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", _XLA_SCRIPT], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = run.stderr
    compiled_line = log.find("Compiled cluster using XLA")
    assert compiled_line > log.find("PLAIN DONE") > 0, log[-3000:]
    assert compiled_line < log.find("XLA DONE"), log[-3000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.strip()]
    assert [row[:2] for row in rows] == [
        ["classifier", "None"], ["panoptic", "center_heatmap"], ["panoptic", "center_offsets"],
        ["panoptic", "semantic_logits"]], run.stdout
    for name, key, difference, nudge in rows:
        # XLA reorders float32 sums; a change of every pixel by 1e-3 of its range moves
        # the outputs by well under 5% of their scale (and the 1e-4 bound is far below
        # that), so the equality is a real check.
        assert float(difference) < 1e-4, (name, key, difference)
        assert 0 < float(nudge) < 5e-2, (name, key, nudge)

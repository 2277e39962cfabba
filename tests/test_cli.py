"""The command-line start-up (axial_keras.cli) and the trainer's one progress line per loop."""

import importlib.metadata
import logging as std_logging
import os
import tomllib

import orbit
import pytest
import tensorflow as tf
from absl import logging

from axial_keras import cli
from trainer.monitoring import ProgressLogger, orbit_reports_once

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("argv, expected", [
    (["prog"], 0),
    (["prog", "--verbosity=1"], 1),
    (["prog", "--verbosity", "2", "--model=x"], 2),
    (["prog", "-v=-1"], -1),
    (["prog", "-v", "1"], 1),
    (["prog", "--verbosity=loud"], 0),
    (["prog", "--", "--verbosity=1"], 0),
])
def test_verbosity_is_read_before_the_flags_are_parsed(argv, expected):
    assert cli.verbosity(argv) == expected


def test_held_stderr_drops_output_and_replays_it_on_error(capfd):
    with cli.held_stderr():
        os.write(2, b"start-up noise\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ImportError):
        with cli.held_stderr():
            os.write(2, b"the reason\n")
            raise ImportError("broken")
    assert capfd.readouterr().err == "the reason\n"


def test_a_missing_extra_is_one_line_naming_the_install():
    error = ModuleNotFoundError("No module named 'tf2onnx'", name="tf2onnx")
    assert cli.error_lines(error) == [
        "error: tf2onnx is not installed; it comes with the export extra: "
        "pip install 'axial-keras[export]'"]


def test_an_error_is_one_line_plus_its_cause():
    try:
        try:
            open("/nonexistent/model.tflite", "rb")
        except OSError as cause:
            raise ValueError("cannot read the model\n  /nonexistent/model.tflite") from cause
    except ValueError as error:
        lines = cli.error_lines(error)
    assert lines == ["error: ValueError: cannot read the model /nonexistent/model.tflite",
                     "cause: FileNotFoundError: [Errno 2] No such file or directory: "
                     "'/nonexistent/model.tflite'"]


def test_extras_table_matches_pyproject():
    """Each module cli.EXTRAS names comes from a distribution listed in that extra."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as file:
        extras = tomllib.load(file)["project"]["optional-dependencies"]
    distributions = importlib.metadata.packages_distributions()
    for module, extra in cli.EXTRAS.items():
        names = {name.lower().replace("_", "-") for name in distributions[module]}
        listed = {line.split(">")[0].split("<")[0].split("=")[0].strip().lower()
                  for line in extras[extra]}
        assert names & listed, (module, extra, names, listed)


class _CountingTrainer(orbit.AbstractTrainer):
    """Counts steps; the loop output is a constant loss."""

    def __init__(self, step: tf.Variable):
        self.step = step

    def train(self, num_steps):
        self.step.assign_add(tf.cast(num_steps, tf.int64))
        return {"loss": 1.5, "learning_rate": 0.01}


def test_one_progress_line_per_loop(capsys):
    """Orbit's controller logs and prints each loop's output; under orbit_reports_once only
    ProgressLogger's line reports a loop, and nothing goes to stdout."""
    step = tf.Variable(0, dtype=tf.int64)
    records = []
    handler = std_logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    absl_logger = logging.get_absl_logger()
    level = absl_logger.level
    absl_logger.setLevel(std_logging.INFO)
    absl_logger.addHandler(handler)
    try:
        controller = orbit.Controller(global_step=step, trainer=_CountingTrainer(step),
                                      train_actions=[ProgressLogger(step, 4)],
                                      steps_per_loop=2)
        with orbit_reports_once():
            controller.train(4)
        assert capsys.readouterr().out == ""
        unfiltered = len(records)
        controller.train(6)
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
    ours = records[:unfiltered]
    assert [line.split(" |")[0] for line in ours if line.startswith("step ")] == [
        "step 2/4 (50%)", "step 4/4 (100%)"]
    assert not [line for line in ours if "steps/sec" in line]
    assert [line for line in ours if line.startswith("train |")] == [
        "train | step:      0 | training until step 4..."]
    # Without the context Orbit reports the loop itself, in the log and on stdout.
    assert len([line for line in records[unfiltered:] if "steps/sec" in line]) == 1
    assert "steps/sec" in capsys.readouterr().out

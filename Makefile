PYTHON ?= python3
# `make install VENV=/tmp/venv` installs into another environment.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

# Creates the venv if missing and installs the checkout itself (editable, pyproject.toml's
# dependencies with the train, export and dev extras) together with the tested lock
# (requirements*.txt pins); Orbit goes in with --no-deps. Reruns when pyproject.toml or a
# requirements file is newer than the stamp.
$(STAMP): pyproject.toml requirements.txt requirements-orbit.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt -e '.[train,export,dev]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-orbit.txt
	touch $(STAMP)

install: $(STAMP)

# The main job: train + evaluate digits_panoptic with the Orbit trainer, export the trained
# model as a SavedModel, and predict one held-out scene with the exported model.
DEMO_DIR := demo_output
demo: $(STAMP)
	rm -rf $(DEMO_DIR)/digits_panoptic $(DEMO_DIR)/saved_model $(DEMO_DIR)/predictions
	$(BIN)/python -m trainer.train --experiment=digits_panoptic --model_dir=$(DEMO_DIR)/digits_panoptic --mode=train_and_eval
	$(BIN)/python -m export.saved_model --checkpoint=$(DEMO_DIR)/digits_panoptic --output_dir=$(DEMO_DIR)/saved_model/1
	$(BIN)/python -m export.predict --model=$(DEMO_DIR)/saved_model/1 --output_dir=$(DEMO_DIR)/predictions docs/digits_panoptic_scene.png

# On every core (pytest-xdist; at most 4 workers): tracing, graph building and the trainer's
# subprocesses are mostly single-threaded, so two workers on two cores halve the wall time.
# Files with an expensive module fixture are an `xdist_group` each (built once, one worker).
PYTEST_WORKERS := -n auto --maxprocesses=4 --dist loadgroup
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) --durations=25 tests

# For iteration (under 5 minutes here): the suite without its slow files (the trainer's
# subprocess runs, every export format, the JAX rerun, the wheel test, the benchmark harness,
# the fit runs) and slow tests (the Keras battery of the full-size models and the full axial
# stem, every registry variant's forward pass, deeplab2's layout count, the dataset CLI run,
# the JAX subprocess reruns of targets and losses, the two-replica optimizer run).
# `make test` stays the command that runs everything.
FAST_SKIP := test_trainer test_export_formats test_jax_backend test_packaging test_benchmarks \
	test_panoptic_training test_digits
FAST_DESELECT := test_models.py::test_keras_battery test_axial_deeplab.py::test_keras_battery \
	test_layers.py::test_keras_battery[FullAxialStem \
	test_models.py::test_every_variant_runs_a_small_forward_pass \
	test_models.py::test_official_layout_counts \
	test_data_convert.py::test_cli_converts_and_skip_bad_reports_the_skipped_file \
	test_panoptic_targets.py::test_jax_backend_gives_the_same_targets \
	test_panoptic_losses.py::test_jax_backend_gives_the_same_losses_and_gradients \
	test_optimizers.py::test_mirrored_strategy_two_replicas_match_one_device
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) --durations=10 $(foreach name,$(FAST_SKIP),--ignore=tests/$(name).py) \
		$(foreach id,$(FAST_DESELECT),--deselect='tests/$(id)') tests

# Speed and memory figures (benchmarks/run.py): JSON, Markdown table and PNG in benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

# Creates .venv if missing and installs runtime + dev dependencies; reruns when a requirements file changes.
$(STAMP): requirements.txt requirements-orbit.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
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

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25 tests

# Speed and memory figures (benchmarks/run.py): JSON, Markdown table and PNG in benchmarks/results/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV)

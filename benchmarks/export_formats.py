"""Every export format of one trained digits_panoptic model: parity, PQ, size, latency.

Exports the SavedModel (`export.saved_model`), converts it to LiteRT with each
quantization (`export.tflite`) and to ONNX (`export.onnx`), then runs every format on the
held-out digits-panoptic test scenes (the demo's: split "test", seed 1) one image at a
time and reports, per format:

- agreement: fraction of panoptic and of semantic pixels equal to the SavedModel's;
- PQ (things, stuff) against the ground truth, with the experiment's post-processing;
- file size (the SavedModel: its whole directory);
- per-image latency at batch 1 (median and minimum over the test images after a
  warm-up; the minimum is the least disturbed by other processes), with every CPU core
  as threads, plus the SavedModel's encoded-PNG signature;
- conversion time.

Prints a table and writes `benchmarks/results/export_formats.json`.

Usage:

    python -m benchmarks.export_formats --checkpoint=demo_output/axial_deeplab_tiny_digits.keras
    python -m benchmarks.export_formats --train_epochs=3   # trains a model first
"""

import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from absl import app, flags

from axial_keras.data import generate_digits_panoptic
from axial_keras.metrics import PanopticQuality
from axial_keras.saving import write_model_artifacts
from benchmarks.measure import path_bytes
from export import onnx as export_onnx
from export import saved_model, tflite
from export.runtime import load_exported
from trainer.experiments import build_model, get_experiment, save_config

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                              "export_formats.json")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("checkpoint", None, "Trained digits_panoptic weights (.keras, "
                        ".weights.h5 or a TF checkpoint).")
    flags.DEFINE_integer("train_epochs", 0, "Without --checkpoint: train the demo model "
                         "for this many epochs first (axial_keras.demo).")
    flags.DEFINE_integer("num_images", 200, "Test scenes for agreement, PQ and latency.")
    flags.DEFINE_string("work_dir", None, "Where the exported files go (default: a "
                        "temporary folder, removed afterwards).")
    flags.DEFINE_string("output", DEFAULT_OUTPUT, "The JSON results file.")


def _per_image(run, images) -> Tuple[Dict[str, np.ndarray], List[float]]:
    """Outputs of `run` on each image alone, and each call's seconds (after warm-up)."""
    for image in images[:3]:
        run(image)
    outputs, seconds = [], []
    for image in images:
        start = time.perf_counter()
        outputs.append(run(image))
        seconds.append(time.perf_counter() - start)
    maps = {key: np.concatenate([o[key] for o in outputs]) for key in ("panoptic", "semantic")}
    return maps, seconds


def _pq(config, labels: np.ndarray, panoptic: np.ndarray) -> Dict[str, float]:
    metric = PanopticQuality(config.task.labels)
    metric.update_state(labels, panoptic)
    result = metric.result()
    return {key: round(100 * float(result[key]), 2) for key in ("pq", "pq_things", "pq_stuff")}


def measure(checkpoint: str, work_dir: str, num_images: int) -> Dict:
    """Exports, converts and measures every format; returns the results dict."""
    config = get_experiment("digits_panoptic")
    data = config.data
    images, labels = generate_digits_panoptic(num_images, "test", data.image_size,
                                              seed=data.seed + 1)
    saved_dir = os.path.join(work_dir, "saved_model", "1")
    model_dir = os.path.join(work_dir, "model")
    save_config(config, model_dir)
    write_model_artifacts(model_dir, build_model(config), config.task.labels,
                          config.task.post_processing)
    start = time.perf_counter()
    saved_model.export_saved_model(checkpoint, saved_dir, model_dir=model_dir)
    files = {"saved_model": (saved_dir, time.perf_counter() - start)}
    for quantization in tflite.QUANTIZATIONS:
        path = os.path.join(work_dir, f"digits_{quantization}.tflite")
        start = time.perf_counter()
        tflite.write_tflite(saved_dir, path, quantization)
        files[f"tflite_{quantization}"] = (path, time.perf_counter() - start)
    path = os.path.join(work_dir, "digits.onnx")
    start = time.perf_counter()
    export_onnx.write_onnx(saved_dir, path)
    files["onnx"] = (path, time.perf_counter() - start)

    results = {}
    reference = None
    for name, (path, convert_seconds) in files.items():
        runner = load_exported(path)
        outputs, seconds = _per_image(lambda image: runner(image[None]), images)
        if reference is None:
            reference = outputs
        entry = {
            "file_bytes": path_bytes(path),
            "convert_seconds": round(convert_seconds, 1),
            "latency_ms": round(1000 * statistics.median(seconds), 2),
            "latency_ms_min": round(1000 * min(seconds), 2),
            "panoptic_agreement": float(np.mean(outputs["panoptic"] == reference["panoptic"])),
            "semantic_agreement": float(np.mean(outputs["semantic"] == reference["semantic"])),
            **_pq(config, labels, outputs["panoptic"]),
        }
        if name == "saved_model":
            encoded = [tf.io.encode_png(image).numpy() for image in images]
            _, png_seconds = _per_image(lambda data: runner.encoded([data]), encoded)
            entry["latency_ms_encoded_png"] = round(1000 * statistics.median(png_seconds), 2)
        results[name] = entry
    return {
        "experiment": config.name, "checkpoint": checkpoint, "num_images": num_images,
        "input_size": [data.image_size, data.image_size], "batch_size": 1,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "tensorflow": tf.__version__},
        "formats": results,
    }


def _table(results: Dict) -> str:
    lines = [f"{'format':<16}{'size':>11}{'median':>10}{'min':>9}{'panoptic =':>12}"
             f"{'semantic =':>12}{'PQ':>7}{'things':>8}{'stuff':>7}"]
    for name, entry in results["formats"].items():
        lines.append(f"{name:<16}{entry['file_bytes'] / 1e6:>9.2f}MB{entry['latency_ms']:>8.1f}ms"
                     f"{entry['latency_ms_min']:>7.1f}ms"
                     f"{100 * entry['panoptic_agreement']:>11.2f}%"
                     f"{100 * entry['semantic_agreement']:>11.2f}%{entry['pq']:>7.1f}"
                     f"{entry['pq_things']:>8.1f}{entry['pq_stuff']:>7.1f}")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="export_formats_")
    checkpoint = FLAGS.checkpoint
    if not checkpoint:
        if not FLAGS.train_epochs:
            raise app.UsageError("Give --checkpoint or --train_epochs.")
        from axial_keras.demo import train_digits_panoptic

        model = train_digits_panoptic(epochs=FLAGS.train_epochs, verbose=0)[0]
        checkpoint = os.path.join(work_dir, "trained.weights.h5")
        model.save_weights(checkpoint)
    try:
        results = measure(checkpoint, work_dir, FLAGS.num_images)
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(_table(results))
    os.makedirs(os.path.dirname(FLAGS.output), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"written to {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

"""Throughput of the training input pipeline (`axial_keras.data.panoptic_dataset`).

Writes synthetic examples in the converter's TFRecord format to a temporary folder, then
measures training images/s (decode, random scale 0.5-2.0, crop with padding, flip,
photometric jitter) for each crop and each `num_parallel_calls` setting:

- Cityscapes-like: 1024 x 2048 PNG images, 1025 x 2049 crops;
- COCO-like: 640 x 640 JPEG images, 641 x 641 crops;

and, with `num_parallel_calls=AUTOTUNE`, the same with Panoptic-DeepLab targets built in
the pipeline (`targets=PanopticTargets(...)`). With `--model=NAME` it also times
training steps of that registry model on batches from the pipeline at each crop, for
the input-or-model bottleneck question. Prints a table and writes
`benchmarks/results/input_pipeline.json`.

Usage:

    python -m benchmarks.input_pipeline [--images=24]
    python -m benchmarks.input_pipeline --model=axial_deeplab_tiny --model_cases=coco
"""

import json
import os
import platform
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from axial_keras.data import panoptic_dataset
from axial_keras.data.tfrecord import encode_example
from axial_keras.labels import CITYSCAPES, PanopticLabels
from axial_keras.panoptic.targets import PanopticTargets

DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                              "input_pipeline.json")
NUM_SOURCE_EXAMPLES = 16

# (name, source height, source width, image format, crop, metadata)
CASES = (
    ("cityscapes", 1024, 2048, "png", (1025, 2049), CITYSCAPES),
    ("coco", 640, 640, "jpeg", (641, 641), PanopticLabels.from_ids(
        133, range(80), label_divisor=256, ignore_label=255)),
)


def _synthetic_example(rng: np.random.Generator, height: int, width: int,
                       metadata: PanopticLabels) -> Tuple[np.ndarray, np.ndarray]:
    """A photo-like uint8 image (smooth shading, texture) and a panoptic map with
    stuff bands, about 20 thing instances and a void strip."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    divisor = metadata.label_divisor
    stuff = metadata.stuff_class_ids
    panoptic = np.full((height, width), stuff[0] * divisor, np.int32)
    panoptic[: height // 3] = stuff[1] * divisor
    panoptic[height // 3: height // 2] = stuff[2] * divisor
    panoptic[-height // 20:] = metadata.ignore_label * divisor
    counters: Dict[int, int] = {}
    for _ in range(20):
        class_id = int(rng.choice(metadata.thing_class_ids))
        counters[class_id] = counters.get(class_id, 0) + 1
        top, left = rng.integers(0, height - height // 6), rng.integers(0, width - width // 8)
        box_h = rng.integers(height // 30, height // 6)
        box_w = rng.integers(width // 40, width // 8)
        panoptic[top:top + box_h, left:left + box_w] = class_id * divisor + counters[class_id]
    _, segment = np.unique(panoptic, return_inverse=True)
    colours = rng.uniform(20, 235, (segment.max() + 1, 3)).astype(np.float32)
    shading = 0.75 + 0.25 * np.sin(x / 97.0 + y / 61.0)[..., None]
    texture = 12.0 * np.sin(x / 3.1)[..., None] * np.cos(y / 2.3)[..., None]
    image = colours[segment.reshape(height, width)] * shading + texture
    image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), panoptic


def write_records(directory: str, name: str, height: int, width: int, image_format: str,
                  metadata: PanopticLabels, num_examples: int) -> Tuple[str, float]:
    """Writes `num_examples` synthetic examples; returns the path and mean image bytes."""
    rng = np.random.default_rng(0)
    path = os.path.join(directory, f"{name}.tfrecord")
    sizes = []
    with tf.io.TFRecordWriter(path) as writer:
        for index in range(num_examples):
            image, panoptic = _synthetic_example(rng, height, width, metadata)
            encoded = (tf.io.encode_png(image) if image_format == "png"
                       else tf.io.encode_jpeg(image, quality=90)).numpy()
            sizes.append(len(encoded))
            writer.write(encode_example(f"{name}_{index}", encoded, image_format, panoptic))
    return path, float(np.mean(sizes))


def measure(path: str, crop: Tuple[int, int], metadata: PanopticLabels,
            num_parallel_calls: int, images: int, warmup: int,
            targets: Optional[PanopticTargets] = None) -> Dict[str, Any]:
    """Training images/s after `warmup` examples, over `images` examples."""
    dataset = panoptic_dataset(path, training=True, labels=metadata, crop_size=crop,
                               seed=0, num_parallel_calls=num_parallel_calls,
                               targets=targets)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(images):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"num_parallel_calls": ("AUTOTUNE" if num_parallel_calls == tf.data.AUTOTUNE
                                   else num_parallel_calls),
            "targets": targets is not None, "images": images, "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 2)}


def measure_model(name: str, path: str, crop: Tuple[int, int], metadata: PanopticLabels,
                  batch_size: int, steps: int) -> Dict[str, Any]:
    """Training images/s of registry model `name` on pipeline batches, after one step."""
    import keras

    from axial_keras.models import get_model

    model = get_model(name, num_classes=metadata.num_classes,
                      thing_class_ids=metadata.thing_class_ids,
                      label_divisor=metadata.label_divisor, ignore_label=metadata.ignore_label)
    model.compile(keras.optimizers.Adam(1e-4))
    batch = next(iter(panoptic_dataset(path, training=True, labels=metadata,
                                       crop_size=crop, batch_size=batch_size, seed=0)))
    model.train_on_batch(batch["image"], batch["panoptic"])
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(batch["image"], batch["panoptic"])
    seconds = time.perf_counter() - start
    return {"model": name, "batch_size": batch_size, "steps": steps,
            "seconds": round(seconds, 3),
            "images_per_second": round(steps * batch_size / seconds, 3)}


def run(images: int, warmup: int, output: str, model: str = "", model_batch_size: int = 1,
        model_steps: int = 2, model_cases: Sequence[str] = ("coco", "cityscapes")
        ) -> Dict[str, Any]:
    """Runs every case and setting; writes and returns the results."""
    directory = tempfile.mkdtemp(prefix="input_pipeline_")
    results: List[Dict[str, Any]] = []
    model_results: List[Dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    try:
        for name, height, width, image_format, crop, metadata in CASES:
            path, image_bytes = write_records(directory, name, height, width, image_format,
                                              metadata, NUM_SOURCE_EXAMPLES)
            targets = PanopticTargets(metadata)
            for calls, with_targets in ((1, False), (2, False), (tf.data.AUTOTUNE, False),
                                        (tf.data.AUTOTUNE, True)):
                result = measure(path, crop, metadata, calls, images, warmup,
                                 targets if with_targets else None)
                result.update(case=name, source_size=[height, width], crop_size=list(crop),
                              image_format=image_format, mean_image_bytes=int(image_bytes))
                logging.info("%s", result)
                results.append(result)
            if model and name in model_cases:
                result = measure_model(model, path, crop, metadata, model_batch_size,
                                       model_steps)
                result.update(case=name, crop_size=list(crop))
                logging.info("%s", result)
                model_results.append(result)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                          "python": platform.python_version(),
                          "load_average_before": round(load_before, 2),
                          "load_average_after": round(os.getloadavg()[0], 2)},
              "tensorflow": tf.__version__, "scale_range": [0.5, 2.0],
              "source_examples": NUM_SOURCE_EXAMPLES, "results": results,
              "model_results": model_results}
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return report


def format_table(report: Dict[str, Any]) -> str:
    """The results as a text table."""
    machine = report["machine"]
    lines = [f"Input pipeline, {machine['cpus']} CPUs (load average "
             f"{machine['load_average_before']} before, {machine['load_average_after']} "
             f"after), TF {report['tensorflow']}",
             f"{'case':<11}{'crop':<11}{'parallel':>9}{'targets':>9}{'images/s':>10}"]
    for r in report["results"]:
        crop = "x".join(str(side) for side in r["crop_size"])
        lines.append(f"{r['case']:<11}{crop:<11}{r['num_parallel_calls']!s:>9}"
                     f"{'yes' if r['targets'] else 'no':>9}{r['images_per_second']:>10.2f}")
    for r in report["model_results"]:
        crop = "x".join(str(side) for side in r["crop_size"])
        lines.append(f"model {r['model']} train step, batch {r['batch_size']}, {crop}: "
                     f"{r['images_per_second']:.3f} images/s")
    return "\n".join(lines)


def main(argv: List[str]) -> None:
    """Runs the benchmark the flags describe and prints the table."""
    from absl import flags

    del argv
    values = flags.FLAGS
    report = run(values.images, values.warmup, values.output, values.model,
                 values.model_batch_size, values.model_steps, values.model_cases)
    print(format_table(report))
    print(f"Wrote {flags.FLAGS.output}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_integer("images", 24, "Images timed per setting.", lower_bound=1)
    flags.DEFINE_integer("warmup", 4, "Images drawn before timing.", lower_bound=0)
    flags.DEFINE_string("output", DEFAULT_OUTPUT, "JSON results file.")
    flags.DEFINE_string("model", "", "Also time training steps of this registry model.")
    flags.DEFINE_integer("model_batch_size", 1, "Batch of the model steps.", lower_bound=1)
    flags.DEFINE_integer("model_steps", 2, "Timed model steps per crop.", lower_bound=1)
    flags.DEFINE_list("model_cases", ["coco", "cityscapes"],
                      "Cases the model is timed on (a global-attention model at 1025x2049 "
                      "needs more memory than a 23 GB CPU machine has).")
    app.run(main)

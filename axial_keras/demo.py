"""The `model.fit` route: train a tiny Axial-DeepLab on the embedded digits-panoptic set
with plain `model.compile` + `model.fit`, measure PQ on held-out images with the
`PanopticPredictor` and the post-processing settings of the `digits_panoptic` experiment
(`axial_keras.data.DIGITS_POST_PROCESSING`), and write overlay PNGs. (`make demo` runs
the Orbit trainer route: `python -m trainer.train --experiment=digits_panoptic`.)

    python -m axial_keras.demo [--epochs=N] [--output_dir=DIR]
    python -m axial_keras.demo --task=classification   # the digits classifier

With `--output_dir`, the trained model is saved there as `axial_deeplab_tiny_digits.keras`
beside its `model.json`, `labels.json` and `post_processing.json`, so
`python -m export.saved_model --checkpoint=DIR/axial_deeplab_tiny_digits.keras` exports it.
"""

import os
import time

import keras
import numpy as np
from absl import flags

from axial_keras import cli
from axial_keras.data import (DIGITS_PANOPTIC, DIGITS_POST_PROCESSING, digits_panoptic_dataset,
                              generate_digits_panoptic, load_digits)
from axial_keras.data.digits_panoptic import DIGITS_AXIAL_BEYOND_STRIDE
from axial_keras.labels import PanopticLabels
from axial_keras.metrics import PanopticQuality
from axial_keras.models import get_model
from axial_keras.panoptic import (PanopticPredictor, colorize_panoptic, overlay, side_by_side,
                                  write_png)
from axial_keras.saving import write_model_artifacts

FLAGS = flags.FLAGS


def define_flags():
    """CLI flags, defined only when run as a program (so importing this module is free)."""
    flags.DEFINE_enum("task", "panoptic", ["panoptic", "classification"], "Which demo to run.")
    flags.DEFINE_integer("epochs", None, "Training epochs (default: 24 panoptic, 12 classification).")
    flags.DEFINE_integer("num_train", 2400, "Panoptic training images.")
    flags.DEFINE_integer("num_test", 200, "Held-out panoptic images for PQ.")
    flags.DEFINE_string("output_dir", "demo_output", "Where the overlay PNGs go.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


def train_digits(model_name: str = "axial_resnet_tiny", epochs: int = 12, batch_size: int = 32,
                 image_size: int = 32, learning_rate: float = 2e-3, seed: int = 0,
                 verbose: int = 2):
    """Trains a classifier on the digits set; returns (model, test accuracy, seconds)."""
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits(image_size)
    model = get_model(model_name, num_classes=10, input_shape=(image_size, image_size, 1))
    steps = epochs * -(-len(x_train) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=128, verbose=0)
    return model, float(accuracy), seconds


def predict_batches(predictor: PanopticPredictor, images: np.ndarray,
                    batch_size: int = 32) -> np.ndarray:
    """Panoptic maps int32 `[n, H, W]` of `images` (uint8 `[n, H, W, 3]`), in batches."""
    return np.concatenate([
        np.asarray(predictor(images[start:start + batch_size].astype("float32"))["panoptic"])
        for start in range(0, len(images), batch_size)])


def evaluate_panoptic(predictor: PanopticPredictor, images: np.ndarray, labels: np.ndarray,
                      batch_size: int = 32):
    """PQ of `predictor` on `(images, labels)`; returns (PQ result dict, predicted maps)."""
    predictions = predict_batches(predictor, images, batch_size)
    metric = PanopticQuality(predictor.labels)
    metric.update_state(labels, predictions)
    result = {k: np.asarray(v) for k, v in metric.result().items()}
    return result, predictions


def write_overlays(output_dir: str, images, labels, predictions,
                   panoptic_labels: PanopticLabels = DIGITS_PANOPTIC, count: int = 8) -> list:
    """Writes `image | ground truth | prediction` overlay PNGs; returns their paths."""
    paths = []
    for i in range(min(count, len(images))):
        tile = side_by_side(
            images[i], overlay(images[i], colorize_panoptic(labels[i], panoptic_labels)),
            overlay(images[i], colorize_panoptic(predictions[i], panoptic_labels)))
        path = os.path.join(output_dir, f"digits_panoptic_{i}.png")
        write_png(path, tile)
        paths.append(path)
    return paths


def train_digits_panoptic(epochs: int = 24, num_train: int = 2400, num_test: int = 200,
                          image_size: int = 64, batch_size: int = 16,
                          learning_rate: float = 6e-3, seed: int = 0, verbose: int = 2,
                          output_dir: str = None):
    """Trains `axial_deeplab_tiny` on digits-panoptic with `model.fit`.

    Returns:
        (model, PQ result dict, training seconds, overlay paths). With `output_dir`,
        overlays, the trained `.keras` model and its description (`axial_keras.saving`)
        are written there.
    """
    meta = DIGITS_PANOPTIC
    keras.utils.set_random_seed(seed)
    train = digits_panoptic_dataset("train", num_train, image_size, seed=seed,
                                    batch_size=batch_size, shuffle=True)
    train = train.map(lambda image, label: (keras.ops.cast(image, "float32"), label))
    test_images, test_labels = generate_digits_panoptic(num_test, "test", image_size, seed=seed + 1)
    model = get_model("axial_deeplab_tiny", labels=meta,
                      backbone={"axial_beyond_stride": DIGITS_AXIAL_BEYOND_STRIDE})
    steps = epochs * -(-num_train // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps - steps // 20, warmup_target=learning_rate,
        warmup_steps=steps // 20)
    # Digits are 14-28 px, so the centre Gaussian and the "small instance" area are
    # scaled down from the paper's sigma 8 / 64x64 for real images.
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  panoptic_loss_args=dict(sigma=3.0, small_instance_area=16 * 16))
    start = time.perf_counter()
    model.fit(train, epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - start
    predictor = PanopticPredictor(model, meta, DIGITS_POST_PROCESSING)
    result, predictions = evaluate_panoptic(predictor, test_images, test_labels)
    paths = []
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        paths = write_overlays(output_dir, test_images, test_labels, predictions, meta)
        model.save(os.path.join(output_dir, "axial_deeplab_tiny_digits.keras"))
        write_model_artifacts(output_dir, model, meta, DIGITS_POST_PROCESSING)
    return model, result, seconds, paths


def main(argv):
    del argv
    if FLAGS.task == "classification":
        model, accuracy, seconds = train_digits(epochs=FLAGS.epochs or 12, seed=FLAGS.seed)
        print(f"axial_resnet_tiny: {model.count_params():,} parameters, trained in {seconds:.0f} s; "
              f"digits test accuracy {accuracy:.4f}")
        return
    model, result, seconds, paths = train_digits_panoptic(
        epochs=FLAGS.epochs or 24, num_train=FLAGS.num_train, num_test=FLAGS.num_test,
        seed=FLAGS.seed, output_dir=FLAGS.output_dir)
    print(f"axial_deeplab_tiny: {model.count_params():,} parameters, trained on "
          f"{FLAGS.num_train} digits-panoptic images in {seconds:.0f} s")
    print(f"held-out PQ {100 * result['pq']:.1f} (things {100 * result['pq_things']:.1f}, "
          f"stuff {100 * result['pq_stuff']:.1f}), SQ {100 * result['sq']:.1f}, "
          f"RQ {100 * result['rq']:.1f} on {FLAGS.num_test} images")
    print(f"post-processing (the digits_panoptic experiment's): center_threshold "
          f"{DIGITS_POST_PROCESSING.center_threshold}, nms_kernel "
          f"{DIGITS_POST_PROCESSING.nms_kernel}")
    print("overlays (image | ground truth | prediction):", ", ".join(paths))


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

"""The main job (`make demo`): train a tiny Axial-DeepLab on the embedded digits-panoptic
set with plain `model.fit`, measure PQ on held-out images and write overlay PNGs.

    python -m axial_keras.demo [--epochs=N] [--output_dir=DIR]
    python -m axial_keras.demo --task=classification   # the digits classifier
"""

import os
import time

import keras
import numpy as np
from absl import flags

from axial_keras import cli
from axial_keras.data import (DIGITS_PANOPTIC, digits_panoptic_dataset,
                              generate_digits_panoptic, load_digits)
from axial_keras.metrics import PanopticQuality
from axial_keras.models import get_model
from axial_keras.panoptic import (PanopticPostProcessor, colorize_panoptic, overlay,
                                  side_by_side, write_png)

FLAGS = flags.FLAGS


def define_flags():
    """CLI flags, defined only when run as a program (so importing this module is free)."""
    flags.DEFINE_enum("task", "panoptic", ["panoptic", "classification"], "Which demo to run.")
    flags.DEFINE_integer("epochs", None, "Training epochs (default: 14 panoptic, 12 classification).")
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


def panoptic_post_processor(meta=DIGITS_PANOPTIC, center_threshold: float = 0.1,
                            nms_kernel: int = 7) -> PanopticPostProcessor:
    """Post-processing for the digits-panoptic demo (small images, at most 16 centres)."""
    return PanopticPostProcessor(meta.thing_class_ids, meta.label_divisor, meta.ignore_label,
                                 center_threshold=center_threshold, nms_kernel=nms_kernel,
                                 keep_k_centers=16, stuff_area_limit=16)


def predict_batches(model, images, batch_size: int = 32) -> list:
    """Model outputs for `images`, one dict per batch of `batch_size`."""
    return [model(images[start:start + batch_size].astype("float32"), training=False)
            for start in range(0, len(images), batch_size)]


def evaluate_panoptic(model, images, labels, meta=DIGITS_PANOPTIC, batch_size: int = 32,
                      post: PanopticPostProcessor = None, outputs: list = None):
    """PQ of `model` on `(images, labels)`; returns (PQ result dict, predicted maps).

    `outputs` (from `predict_batches` with the same `batch_size`) skips the forward pass.
    """
    post = post or panoptic_post_processor(meta)
    outputs = outputs if outputs is not None else predict_batches(model, images, batch_size)
    metric = PanopticQuality(meta.num_classes, meta.thing_class_ids, meta.label_divisor,
                             meta.ignore_label)
    predictions = []
    for index, output in enumerate(outputs):
        panoptic = np.asarray(post(output)["panoptic"])
        metric.update_state(labels[index * batch_size:(index + 1) * batch_size], panoptic)
        predictions.append(panoptic)
    result = {k: np.asarray(v) for k, v in metric.result().items()}
    return result, np.concatenate(predictions)


def select_post_processor(model, images, labels, meta=DIGITS_PANOPTIC) -> PanopticPostProcessor:
    """Picks the centre threshold and NMS kernel with the best PQ on validation images."""
    outputs = predict_batches(model, images)
    best, best_pq = None, -1.0
    for threshold in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        for kernel in (7, 9, 11, 13):
            post = panoptic_post_processor(meta, threshold, kernel)
            result = evaluate_panoptic(model, images, labels, meta, post=post, outputs=outputs)[0]
            if float(result["pq"]) > best_pq:
                best, best_pq = post, float(result["pq"])
    return best


def write_overlays(output_dir: str, images, labels, predictions, meta=DIGITS_PANOPTIC,
                   count: int = 8) -> list:
    """Writes `image | ground truth | prediction` overlay PNGs; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    colour = dict(label_divisor=meta.label_divisor, ignore_label=meta.ignore_label,
                  thing_class_ids=meta.thing_class_ids, num_classes=meta.num_classes)
    paths = []
    for i in range(min(count, len(images))):
        tile = side_by_side(images[i],
                            overlay(images[i], colorize_panoptic(labels[i], **colour)),
                            overlay(images[i], colorize_panoptic(predictions[i], **colour)))
        path = os.path.join(output_dir, f"digits_panoptic_{i}.png")
        write_png(path, tile)
        paths.append(path)
    return paths


def train_digits_panoptic(epochs: int = 14, num_train: int = 2400, num_test: int = 200,
                          image_size: int = 64, batch_size: int = 16,
                          learning_rate: float = 4e-3, seed: int = 0, verbose: int = 2,
                          output_dir: str = None):
    """Trains `axial_deeplab_tiny` on digits-panoptic with `model.fit`.

    Returns:
        (model, PQ result dict (with the chosen `post_processing`), training seconds,
        overlay paths). With `output_dir`, overlays and the trained `.keras` model are
        written there.
    """
    meta = DIGITS_PANOPTIC
    keras.utils.set_random_seed(seed)
    train = digits_panoptic_dataset("train", num_train, image_size, seed=seed,
                                    batch_size=batch_size, shuffle=True)
    train = train.map(lambda image, label: (keras.ops.cast(image, "float32"), label))
    test_images, test_labels = generate_digits_panoptic(num_test, "test", image_size, seed=seed + 1)
    model = get_model("axial_deeplab_tiny", num_classes=meta.num_classes,
                      thing_class_ids=meta.thing_class_ids, label_divisor=meta.label_divisor,
                      ignore_label=meta.ignore_label)
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
    # Post-processing thresholds are chosen on validation scenes made from the training
    # digits (a different seed), never on the held-out test digits.
    val_images, val_labels = generate_digits_panoptic(num_test, "train", image_size,
                                                      seed=seed + 2)
    post = select_post_processor(model, val_images, val_labels, meta)
    result, predictions = evaluate_panoptic(model, test_images, test_labels, meta, post=post)
    result["post_processing"] = post.get_config()
    paths = []
    if output_dir:
        paths = write_overlays(output_dir, test_images, test_labels, predictions, meta)
        model.save(os.path.join(output_dir, "axial_deeplab_tiny_digits.keras"))
    return model, result, seconds, paths


def main(argv):
    del argv
    if FLAGS.task == "classification":
        model, accuracy, seconds = train_digits(epochs=FLAGS.epochs or 12, seed=FLAGS.seed)
        print(f"axial_resnet_tiny: {model.count_params():,} parameters, trained in {seconds:.0f} s; "
              f"digits test accuracy {accuracy:.4f}")
        return
    model, result, seconds, paths = train_digits_panoptic(
        epochs=FLAGS.epochs or 14, num_train=FLAGS.num_train, num_test=FLAGS.num_test,
        seed=FLAGS.seed, output_dir=FLAGS.output_dir)
    print(f"axial_deeplab_tiny: {model.count_params():,} parameters, trained on "
          f"{FLAGS.num_train} digits-panoptic images in {seconds:.0f} s")
    print(f"held-out PQ {100 * result['pq']:.1f} (things {100 * result['pq_things']:.1f}, "
          f"stuff {100 * result['pq_stuff']:.1f}), SQ {100 * result['sq']:.1f}, "
          f"RQ {100 * result['rq']:.1f} on {FLAGS.num_test} images")
    post = result["post_processing"]
    print(f"post-processing chosen on validation scenes: center_threshold "
          f"{post['center_threshold']}, nms_kernel {post['nms_kernel']}")
    print("overlays (image | ground truth | prediction):", ", ".join(paths))


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

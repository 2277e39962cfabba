"""The main job (`make demo`): train a tiny Axial-ResNet on the embedded digits set.

Plain `model.compile` + `model.fit`; prints the test accuracy and the training time.

    python -m axial_keras.demo [--epochs=N] [--model=NAME]
"""

import time

import keras
from absl import app, flags

from axial_keras.data import load_digits
from axial_keras.models import get_model

FLAGS = flags.FLAGS


def define_flags():
    """CLI flags, defined only when run as a program (so importing this module is free)."""
    flags.DEFINE_string("model", "axial_resnet_tiny", "Registry name of the classifier.")
    flags.DEFINE_integer("epochs", 12, "Training epochs.")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("image_size", 32, "Side of the upsampled digits.")
    flags.DEFINE_float("learning_rate", 2e-3, "Peak AdamW learning rate (cosine decay).")
    flags.DEFINE_integer("seed", 0, "Random seed.")

def train_digits(model_name: str = "axial_resnet_tiny", epochs: int = 12, batch_size: int = 32,
                 image_size: int = 32, learning_rate: float = 2e-3, seed: int = 0,
                 verbose: int = 2):
    """Trains `model_name` on the digits set; returns (model, test accuracy, seconds)."""
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


def main(argv):
    del argv
    model, accuracy, seconds = train_digits(FLAGS.model, FLAGS.epochs, FLAGS.batch_size,
                                            FLAGS.image_size, FLAGS.learning_rate, FLAGS.seed)
    print(f"{FLAGS.model}: {model.count_params():,} parameters, trained {FLAGS.epochs} epochs "
          f"in {seconds:.0f} s; digits test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

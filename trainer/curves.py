"""Training curves of a trainer `model_dir` as a PNG (what TensorBoard shows, for a README).

    python -m trainer.curves --model_dir=DIR [--output=DIR/curves.png]

Left: the training loss and its terms against the step (log scale); right: the
evaluation metrics (PQ, SQ, RQ, mIoU or accuracy). Reads the TensorBoard event files in
`DIR/train` and `DIR/eval`; plotting needs matplotlib (requirements-dev.txt, installed by
`make install`).

Example:
>>> curves = read_scalars("demo_output/digits_panoptic/train")
>>> curves["loss"][:2]
[(50, 9.33), (100, 7.71)]
"""

import glob
import os
from typing import Dict, List, Tuple

from absl import app, flags

FLAGS = flags.FLAGS
EVAL_TAGS = ("pq", "sq", "rq", "miou", "accuracy")


def define_flags() -> None:
    flags.DEFINE_string("model_dir", None, "A trainer model_dir.")
    flags.DEFINE_string("output", None, "PNG path (default: MODEL_DIR/curves.png).")
    flags.mark_flag_as_required("model_dir")


def read_scalars(directory: str) -> Dict[str, List[Tuple[int, float]]]:
    """Scalar summaries in `directory`'s event files: tag -> [(step, value)] by step."""
    import tensorflow as tf

    values: Dict[str, Dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if tensor.ndim == 0 and tensor.dtype.kind == "f":
                    values.setdefault(value.tag, {})[event.step] = float(tensor)
    return {tag: sorted(points.items()) for tag, points in values.items()}


def plot(model_dir: str, output: str) -> bool:
    """Writes the curves of `model_dir` to `output`; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = read_scalars(os.path.join(model_dir, "train"))
    evaluation = read_scalars(os.path.join(model_dir, "eval"))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for tag in sorted(tag for tag in train if tag.endswith("loss")):
        steps, values = zip(*train[tag])
        left.plot(steps, values, label=tag, linewidth=2.0 if tag == "loss" else 1.0)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_title("training loss")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    for tag in EVAL_TAGS:
        if tag in evaluation:
            steps, values = zip(*evaluation[tag])
            right.plot(steps, [100 * v for v in values], "o-", label=tag)
    right.set_xlabel("step")
    right.set_title("evaluation (%)")
    right.grid(True, alpha=0.3)
    right.legend()
    figure.suptitle(os.path.basename(os.path.normpath(model_dir)))
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return True


def main(argv) -> None:
    del argv
    output = FLAGS.output or os.path.join(FLAGS.model_dir, "curves.png")
    if not plot(FLAGS.model_dir, output):
        raise SystemExit("matplotlib is not installed: pip install matplotlib")
    print(output)


if __name__ == "__main__":
    define_flags()
    app.run(main)

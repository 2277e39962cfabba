"""Runs an exported model on image files and writes pictures of the result.

    python -m export.predict --model=models/digits/1 --output_dir=predictions a.png b.jpg
    python -m export.predict --model=digits.tflite --output_dir=predictions a.png

`--model` is a SavedModel directory (images go in encoded, through `serving_default`), a
`.tflite` or an `.onnx` file (images are fitted to the model's fixed input with
`export.images.fit_image` and the maps taken back to the image's size). For each
`NAME.ext` it writes, in `--output_dir`:

- `NAME_panoptic.png`: the panoptic map in colour (one hue per class, one shade per
  instance, black void; `axial_keras.panoptic.colorize_panoptic`);
- `NAME_overlay.png`: the image and the map blended over it, side by side;
- `NAME_segments.json`: one entry per segment: panoptic id, class, instance, area in
  pixels and instance score.

A file that cannot be read or decoded is reported and skipped; the exit status is 1 if
any was.
"""

import json
import os
import time
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
from absl import app, flags

from axial_keras import cli
from axial_keras.panoptic import colorize_panoptic, overlay, side_by_side, write_png
from export.images import fit_image, read_image, unfit_map
from export.metadata import ExportMetadata
from export.rest_api import error_message
from export.runtime import SavedModelRunner, load_exported

FLAGS = flags.FLAGS
MAP_KEYS = ("panoptic", "instance_scores")


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("model", None, "A SavedModel directory, .tflite or .onnx file.")
    flags.DEFINE_string("output_dir", None, "Where the PNGs and segment lists go.")
    flags.mark_flags_as_required(["model", "output_dir"])


def predict_file(runner, path: str) -> Dict[str, np.ndarray]:
    """`panoptic` and `instance_scores` `[h, w]` of the image file at `path`, and its
    pixels `image` (uint8 `[h, w, 3]`)."""
    if isinstance(runner, SavedModelRunner):
        with open(path, "rb") as f:
            outputs = runner.encoded([f.read()])
        height, width = outputs["image_size"][0]
        maps = {key: outputs[key][0, :height, :width] for key in MAP_KEYS}
        return dict(maps, image=read_image(path))
    image = read_image(path)
    frame, content = fit_image(image, runner.input_size)
    outputs = runner(frame[None])
    maps = {key: unfit_map(outputs[key][0], content, image.shape[:2]) for key in MAP_KEYS}
    return dict(maps, image=image)


def segments(panoptic: np.ndarray, scores: np.ndarray, metadata: ExportMetadata) -> List[Dict]:
    """One dict per panoptic id present (void excluded)."""
    result = []
    for segment_id, area in zip(*np.unique(panoptic, return_counts=True)):
        class_id = int(segment_id) // metadata.label_divisor
        if class_id == metadata.ignore_label:
            continue
        mask = panoptic == segment_id
        result.append({"id": int(segment_id), "class": class_id,
                       "instance": int(segment_id) % metadata.label_divisor,
                       "area": int(area), "score": round(float(scores[mask].max()), 4)})
    return result


def write_outputs(output_dir: str, name: str, result: Dict[str, np.ndarray],
                  metadata: ExportMetadata) -> Tuple[List[str], List[Dict]]:
    """Writes the three files for one image; returns their paths and the segments."""
    image = result["image"]
    colour = colorize_panoptic(result["panoptic"], **metadata.colour_args())
    paths = [os.path.join(output_dir, f"{name}_{suffix}")
             for suffix in ("panoptic.png", "overlay.png", "segments.json")]
    write_png(paths[0], colour)
    write_png(paths[1], side_by_side(image, overlay(image, colour)))
    found = segments(result["panoptic"], result["instance_scores"], metadata)
    with open(paths[2], "w") as f:
        json.dump(found, f, indent=1)
    return paths, found


def main(argv) -> None:
    images = argv[1:]
    if not images:
        raise app.UsageError("Give at least one image file after the flags.")
    runner = load_exported(FLAGS.model)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    failed, names = 0, set()
    for path in images:
        name = os.path.splitext(os.path.basename(path))[0]
        while name in names:
            name += "_"
        names.add(name)
        start = time.perf_counter()
        try:
            result = predict_file(runner, path)
        except (OSError, tf.errors.OpError) as error:
            failed += 1
            print(f"{path}: skipped: {error_message(error)}")
            continue
        milliseconds = 1000 * (time.perf_counter() - start)
        paths, found = write_outputs(FLAGS.output_dir, name, result, runner.metadata)
        print(f"{path}: {len(found)} segments in {milliseconds:.0f} ms -> {', '.join(paths)}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

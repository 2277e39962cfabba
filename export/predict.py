"""Runs an exported model on image files and writes pictures of the result.

    python -m export.predict --model=models/digits/1 --output_dir=predictions a.png b.jpg
    python -m export.predict --model=digits.tflite --output_dir=predictions a.png
    python -m export.predict --preset=max_deeplab_s_backbone_os16_cityscapes \
        --output_dir=predictions street.png

`--model` is a SavedModel directory (images go in encoded, through `serving_default`), a
`.tflite` or an `.onnx` file (images are fitted to the model's fixed input with
`export.images.fit_image` and the maps taken back to the image's size). `--preset` (and
`--spans`, as in `export.saved_model`) runs a model zoo preset in this process, rebuilt
as `export.saved_model --preset` exports it, through the same `serving_default` graph. For each
`NAME.ext` it writes, in `--output_dir`:

- `NAME_panoptic.png`: the panoptic map in colour (one hue per class, one shade per
  instance, black void; `axial_keras.panoptic.colorize_panoptic`);
- `NAME_overlay.png`: the image and the map blended over it, side by side;
- `NAME_segments.json`: one entry per segment (void left out):

      {"id": 2049, "class": 8, "class_name": "digit_8", "is_thing": true,
       "instance": 1, "area": 412, "center_score": 0.93}

  `id` is the panoptic id (`class * label_divisor + instance`); `class_name` and
  `is_thing` come from the labels the exported model carries (`export.metadata`);
  `instance` is 0 for stuff and crowd segments. `center_score` (things only; absent for
  stuff) is the predicted centre-heatmap value at the instance's centre: the heatmap is
  trained towards a Gaussian of peak 1, so it is a confidence near [0, 1], not a
  calibrated probability, and may slightly exceed 1.

A file that cannot be read or decoded is reported and skipped; the exit status is 1 if
any was.
"""

import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import app, flags

from axial_keras import cli
from axial_keras.files import write_atomically
from axial_keras.panoptic import (PanopticPredictor, colorize_panoptic, overlay, side_by_side,
                                  write_png)
from export import serving
from export.images import fit_image, read_image, unfit_map
from export.metadata import ExportMetadata
from export.rest_api import error_message
from export.runtime import SavedModelRunner, load_exported
from export.saved_model import define_preset_flags, load_preset_for_export, parse_spans
from export.serving import OUTPUT_KEYS

FLAGS = flags.FLAGS
MAP_KEYS = ("panoptic", "instance_scores")


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("model", None, "A SavedModel directory, .tflite or .onnx file.")
    flags.DEFINE_string("output_dir", None, "Where the PNGs and segment lists go.")
    define_preset_flags()
    flags.mark_flags_as_required(["output_dir"])
    flags.mark_flags_as_mutual_exclusive(["model", "preset"], required=True)


class PresetRunner:
    """A model zoo preset run in this process as its SavedModel's `serving_default` runs.

    Args:
        preset: str. A preset name or a local path (`from_preset`).
        spans: attention spans per stage (the `spans` override) or None.
    """

    def __init__(self, preset: str, spans: Optional[Sequence[Optional[int]]] = None):
        model, self.metadata = load_preset_for_export(preset, spans)
        predictor = PanopticPredictor(model, self.metadata.labels, self.metadata.post_processing)
        self._serve = tf.function(lambda images: serving.serve_encoded(predictor, images),
                                  input_signature=[tf.TensorSpec([None], tf.string)])
        self.input_size: Optional[Tuple[int, int]] = None

    def encoded(self, files: Sequence[bytes]) -> Dict[str, np.ndarray]:
        """The serving outputs of encoded image files (one padded batch)."""
        outputs = self._serve(tf.constant(list(files)))
        return {key: outputs[key].numpy() for key in OUTPUT_KEYS}


def predict_file(runner, path: str) -> Dict[str, np.ndarray]:
    """`panoptic` and `instance_scores` `[h, w]` of the image file at `path`, and its
    pixels `image` (uint8 `[h, w, 3]`)."""
    if isinstance(runner, (SavedModelRunner, PresetRunner)):
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
    """One dict per panoptic id present, void excluded (the module docstring's format).

    Args:
        panoptic: int `[h, w]`. The panoptic map.
        scores: float `[h, w]`. `instance_scores` (the centre score of each pixel's
            instance).
        metadata: ExportMetadata. Its labels name the classes.
    """
    labels = metadata.labels
    result = []
    for segment_id, area in zip(*np.unique(panoptic, return_counts=True)):
        class_id = int(segment_id) // labels.label_divisor
        if class_id == labels.ignore_label:
            continue
        instance = int(segment_id) % labels.label_divisor
        entry = {"id": int(segment_id), "class": class_id, "class_name": labels.name_of(class_id),
                 "is_thing": labels.classes[class_id].is_thing, "instance": instance,
                 "area": int(area)}
        if instance > 0:
            entry["center_score"] = round(float(scores[panoptic == segment_id].max()), 4)
        result.append(entry)
    return result


def write_outputs(output_dir: str, name: str, result: Dict[str, np.ndarray],
                  metadata: ExportMetadata) -> Tuple[List[str], List[Dict]]:
    """Writes the three files for one image; returns their paths and the segments."""
    image = result["image"]
    colour = colorize_panoptic(result["panoptic"], metadata.labels)
    paths = [os.path.join(output_dir, f"{name}_{suffix}")
             for suffix in ("panoptic.png", "overlay.png", "segments.json")]
    write_png(paths[0], colour)
    write_png(paths[1], side_by_side(image, overlay(image, colour)))
    found = segments(result["panoptic"], result["instance_scores"], metadata)
    write_atomically(paths[2], json.dumps(found, indent=1) + "\n")
    return paths, found


def main(argv) -> None:
    images = argv[1:]
    if not images:
        raise app.UsageError("Give at least one image file after the flags.")
    try:
        runner = (PresetRunner(FLAGS.preset, parse_spans(FLAGS.spans)) if FLAGS.preset
                  else load_exported(FLAGS.model))
    except ValueError as error:
        raise SystemExit(f"error: {error}")
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

"""Converts COCO panoptic or Cityscapes panoptic to sharded TFRecords and `metadata.json`.

Usage:

    python -m axial_keras.data.convert --dataset=coco_panoptic --root=/data/coco \\
        --split=val --output_dir=data/coco_panoptic --num_shards=8

writes `data/coco_panoptic/val-0000{0..7}-of-00008.tfrecord` (the format of
`axial_keras.data.tfrecord`) and merges the split's count into
`data/coco_panoptic/metadata.json`. Shards are written in parallel by a thread pool
(one shard per task; decoding and encoding run in TensorFlow ops that release the GIL),
each to a temporary file renamed into place only when every shard is complete, so a
failed run leaves no partial shard behind. Shards of the same split from an earlier run
with another `--num_shards` are removed.

A broken input stops the conversion with an error that names the file (see
`axial_keras.data.panoptic_source`); with `--skip_bad` the example is left out instead,
and the summary counts and lists what was skipped.
"""

import contextlib
import dataclasses
import glob
import os
import sys
import threading
import time
from concurrent import futures
from typing import Callable, Dict, List, Optional, TextIO, Tuple

import tensorflow as tf
from absl import logging

from axial_keras import cli
from axial_keras.data import tfrecord
from axial_keras.data.cityscapes_panoptic import read_cityscapes_panoptic
from axial_keras.data.coco_panoptic import read_coco_panoptic
from axial_keras.data.panoptic_source import (DatasetFileError, PanopticSource,
                                              SourceExample, load_example)
from axial_keras.files import atomic_path

READERS: Dict[str, Callable[[str, str], PanopticSource]] = {
    "coco_panoptic": read_coco_panoptic,
    "cityscapes_panoptic": read_cityscapes_panoptic,
}
SPLITS = ("train", "val")


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What a conversion wrote and skipped.

    Attributes:
        dataset: the dataset name.
        split: the converted split.
        output_dir: where the shards and `metadata.json` are.
        shard_paths: the shards written, in order.
        num_examples: examples written.
        skipped: the broken inputs left out (`--skip_bad`), each naming its file.
        seconds: wall time of the conversion.
    """

    dataset: str
    split: str
    output_dir: str
    shard_paths: Tuple[str, ...]
    num_examples: int
    skipped: Tuple[DatasetFileError, ...]
    seconds: float

    def __str__(self) -> str:
        lines = [f"Wrote {self.num_examples} examples of {self.dataset} {self.split} to "
                 f"{len(self.shard_paths)} shards in {self.output_dir} "
                 f"({self.seconds:.1f} s); skipped {len(self.skipped)} bad files."]
        lines += [f"  skipped {error}" for error in self.skipped]
        return "\n".join(lines)


class _Progress:
    """A one-line progress bar on a stream: redrawn in place on a terminal, else every 10%."""

    def __init__(self, total: int, label: str, stream: Optional[TextIO]):
        self._total, self._label, self._stream = total, label, stream
        self._done = 0
        self._start = self._last_draw = time.monotonic()
        self._last_tenth = 0
        self._lock = threading.Lock()
        self._tty = stream is not None and stream.isatty()

    def advance(self) -> None:
        with self._lock:
            self._done += 1
            now = time.monotonic()
            tenth = 10 * self._done // max(self._total, 1)
            if self._stream is None:
                return
            if self._tty and (now - self._last_draw >= 0.2 or self._done == self._total):
                self._draw("\r", now)
            elif not self._tty and tenth > self._last_tenth:
                self._draw("", now, end="\n")
            self._last_draw, self._last_tenth = now, tenth

    def close(self) -> None:
        if self._tty and self._done:
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, prefix: str, now: float, end: str = "") -> None:
        rate = self._done / max(now - self._start, 1e-9)
        width = 30
        filled = width * self._done // max(self._total, 1)
        self._stream.write(f"{prefix}{self._label} [{'#' * filled}{'.' * (width - filled)}] "
                           f"{self._done}/{self._total} ({rate:.1f} examples/s){end}")
        self._stream.flush()


def _write_shard(source: PanopticSource, examples: List[SourceExample], path: str,
                 skip_bad: bool, stop: threading.Event,
                 progress: _Progress) -> Tuple[int, List[DatasetFileError]]:
    """Writes `examples` to `path`; returns (examples written, files skipped)."""
    written, skipped = 0, []
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            if stop.is_set():
                break
            try:
                loaded = load_example(source, example)
            except DatasetFileError as error:
                if not skip_bad:
                    raise
                skipped.append(error)
            else:
                writer.write(tfrecord.encode_example(loaded.image_id, loaded.image_bytes,
                                                     loaded.image_format, loaded.panoptic))
                written += 1
            progress.advance()
    return written, skipped


def convert_dataset(dataset: str, root: str, split: str, output_dir: str, num_shards: int,
                    skip_bad: bool = False, num_workers: Optional[int] = None,
                    progress_stream: Optional[TextIO] = sys.stderr) -> ConversionSummary:
    """Converts one split of a dataset to sharded TFRecords and updates `metadata.json`.

    Args:
        dataset: `"coco_panoptic"` or `"cityscapes_panoptic"`.
        root: the dataset folder, laid out as the dataset ships (see the readers).
        split: `"train"` or `"val"`.
        output_dir: where shards and `metadata.json` go (created if needed).
        num_shards: number of shards; example `i` goes to shard `i % num_shards`.
        skip_bad: leave broken examples out (and list them in the summary) instead of
            raising.
        num_workers: threads writing shards (default: the CPU count).
        progress_stream: where the progress bar goes (None: no progress bar).

    Returns:
        A `ConversionSummary`.

    Raises:
        ValueError: for a bad argument, or a split with no examples.
        DatasetFileError: naming the broken file, unless `skip_bad`.
    """
    if dataset not in READERS:
        raise ValueError(f"dataset must be one of {sorted(READERS)}, got {dataset!r}.")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}.")
    start = time.monotonic()
    source = READERS[dataset](root, split)
    if source.problems and not skip_bad:
        if len(source.problems) > 1:
            logging.error("%d broken inputs; the first is raised, --skip_bad skips them.",
                          len(source.problems))
        raise source.problems[0]
    if not source.examples:
        raise ValueError(f"No convertible {dataset} {split} examples under {root}.")

    os.makedirs(output_dir, exist_ok=True)
    paths = [tfrecord.shard_path(output_dir, split, index, num_shards)
             for index in range(num_shards)]
    progress = _Progress(len(source.examples), f"{dataset} {split}", progress_stream)
    stop = threading.Event()
    workers = min(num_workers or os.cpu_count() or 1, num_shards)
    try:
        # Every shard is written to a temporary file; all are renamed into place only
        # when every shard succeeded (else all are removed).
        with contextlib.ExitStack() as stack:
            temporaries = [stack.enter_context(atomic_path(path)) for path in paths]
            with futures.ThreadPoolExecutor(max_workers=workers) as pool:
                tasks = [pool.submit(_write_shard, source,
                                     list(source.examples[index::num_shards]),
                                     temporaries[index], skip_bad, stop, progress)
                         for index in range(num_shards)]
                try:
                    results = [task.result() for task in tasks]
                except BaseException:
                    stop.set()
                    raise
    finally:
        progress.close()

    for stale in sorted(set(glob.glob(os.path.join(output_dir, f"{split}-*-of-*.tfrecord")))
                        - set(paths)):
        logging.info("Removing %s, a shard of an earlier conversion.", stale)
        os.remove(stale)
    num_examples = sum(written for written, _ in results)
    skipped = tuple(source.problems) + tuple(error for _, errors in results
                                             for error in errors)
    tfrecord.write_metadata_json(output_dir, tfrecord.metadata_dict(
        source.labels, source.source_ids, {split: num_examples}))
    return ConversionSummary(dataset, split, output_dir, tuple(paths), num_examples, skipped,
                             time.monotonic() - start)


def define_flags() -> None:
    """Defines the command-line flags."""
    from absl import flags

    flags.DEFINE_enum("dataset", None, sorted(READERS), "Dataset to convert.")
    flags.DEFINE_string("root", None, "Dataset folder, laid out as the dataset ships.")
    flags.DEFINE_enum("split", None, list(SPLITS), "Split to convert.")
    flags.DEFINE_string("output_dir", None, "Folder for the shards and metadata.json.")
    flags.DEFINE_integer("num_shards", 1, "Number of TFRecord shards.", lower_bound=1)
    flags.DEFINE_bool("skip_bad", False,
                      "Skip broken files and count them in the summary instead of failing.")
    flags.DEFINE_integer("num_workers", None, "Threads writing shards (default: CPU count).",
                         lower_bound=1)
    for name in ("dataset", "root", "split", "output_dir"):
        flags.mark_flag_as_required(name)


def main(argv: List[str]) -> None:
    """Runs the conversion the flags describe; exits 1 with the error on a broken input."""
    from absl import flags

    del argv
    values = flags.FLAGS
    try:
        summary = convert_dataset(values.dataset, values.root, values.split,
                                  values.output_dir, values.num_shards,
                                  skip_bad=values.skip_bad, num_workers=values.num_workers)
    except (DatasetFileError, ValueError) as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(1)
    sys.stdout.write(f"{summary}\n")


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

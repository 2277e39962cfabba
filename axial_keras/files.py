"""Atomic file writes: readers see the old file or the new one, never a partial one.

Everything the package writes for another process to read (configs, metadata, PNGs,
TFRecord shards, SavedModels, .tflite / .onnx files, `best.json`) goes through
`atomic_path`: the content is written to a temporary sibling, then renamed onto the
destination. Paths with a URL scheme (`gs://...`) go through `tf.io.gfile` (TensorFlow
is imported only for them).

Example:
>>> write_json("model_dir/labels.json", labels.get_config())
>>> with atomic_path("out/model.tflite") as temporary:
...     open(temporary, "wb").write(content)
"""

import contextlib
import json
import os
import shutil
import uuid
from typing import Any, Iterator, Union


def _is_url(path: str) -> bool:
    return "://" in path


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it onto `path` when the block succeeds.

    The block writes a file or a directory there. An existing destination is replaced
    (a directory is removed first); on an exception the temporary is removed and the
    destination left as it was. The parent directory is created if missing.

    Args:
        path: str or PathLike. The destination.
    """
    path = os.fspath(path)
    if _is_url(path):
        import tensorflow as tf

        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        tf.io.gfile.makedirs(os.path.dirname(path))
        try:
            yield temporary
            tf.io.gfile.rename(temporary, path, overwrite=True)
        except BaseException:
            if tf.io.gfile.isdir(temporary):
                tf.io.gfile.rmtree(temporary)
            elif tf.io.gfile.exists(temporary):
                tf.io.gfile.remove(temporary)
            raise
        return
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        if os.path.isdir(temporary) and os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_atomically(path: Union[str, os.PathLike], data: Union[bytes, str]) -> str:
    """Writes `data` (bytes, or text as UTF-8) to `path` atomically; returns the path.

    Args:
        path: str or PathLike. The destination file.
        data: bytes or str. The whole content.
    """
    content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as temporary:
        if _is_url(temporary):
            import tensorflow as tf

            with tf.io.gfile.GFile(temporary, "wb") as f:
                f.write(content)
        else:
            with open(temporary, "xb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
    return os.fspath(path)


def write_json(path: Union[str, os.PathLike], values: Any) -> str:
    """Writes `values` as indented, key-sorted JSON to `path` atomically; returns the path."""
    return write_atomically(path, json.dumps(values, indent=2, sort_keys=True) + "\n")


def read_json(path: Union[str, os.PathLike]) -> Any:
    """The JSON value in `path` (local or a `tf.io.gfile` URL)."""
    path = os.fspath(path)
    if _is_url(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    with open(path) as f:
        return json.load(f)

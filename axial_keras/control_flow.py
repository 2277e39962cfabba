"""Static loops for exported graphs.

Two computations loop a number of times that depends on the data when they run
eagerly or inside `tf.function`: `AxialAttention` attends long inputs in chunks of
rows (`ops.map`, so each chunk's tensors stay in cache) and the panoptic grouping runs
one round per candidate centre of the busiest image tile. Converters need more:
LiteRT has no builtin for the TensorList loop `ops.map` becomes, and TF 2.21's int8
quantizer fails on any float WHILE loop. Inside `static_loops()`, `AxialAttention`
attends all rows in one pass and the grouping runs `keep_k_centers` rounds (a Python
int, which `export` unrolls). Results are identical either way; only speed differs.

Example:
>>> with static_loops():
...     outputs = model(images)  # traced for LiteRT / ONNX
"""

import contextlib
import threading
from typing import Iterator

_STATE = threading.local()


@contextlib.contextmanager
def static_loops() -> Iterator[None]:
    """Within this block, layers and post-processing build loops with static trip counts."""
    previous = getattr(_STATE, "static", False)
    _STATE.static = True
    try:
        yield
    finally:
        _STATE.static = previous


def static_loops_enabled() -> bool:
    """True inside `static_loops()` (in this thread)."""
    return getattr(_STATE, "static", False)

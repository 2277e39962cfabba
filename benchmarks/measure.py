"""Timing, memory and profiling primitives of the performance harness (TensorFlow).

- `time_calls`: wall time of repeated calls of a compiled function, warm-up excluded,
  each call finished by copying its outputs to NumPy, and the process's CPU time of each
  (on a shared machine the CPU seconds drift much less than the wall seconds).
- `matmul_peak_gflops`: this machine's float32 matmul rate right now (a 2048 x 2048
  `tf.matmul` by default), the yardstick every model figure is divided by, because a shared
  machine's absolute speed drifts from minute to minute.
- `cpu_flags`: the instruction-set flags of this machine's CPU (`/proc/cpuinfo`).
- `peak_rss_bytes`: the process's resident-memory high-water mark (`VmHWM`), so each
  measured configuration runs in a fresh process.
- `op_type_shares`: where the time of one call goes, per TensorFlow op type, from the
  TensorFlow profiler's trace.
"""

import collections
import glob
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, FrozenSet, List

import numpy as np
import tensorflow as tf


def finish(outputs) -> None:
    """Blocks until `outputs` (any nest of tensors) are computed."""
    for tensor in tf.nest.flatten(outputs):
        if tensor is not None:
            np.asarray(tensor)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Dict:
    """Seconds per call of `fn` over `repeats` timed calls after `warmup` untimed ones.

    Returns:
        dict with `median_s`, `min_s`, `max_s`, `seconds` (every timed call),
        `cpu_seconds` (the process's user + system CPU seconds of each), `cpu_median_s`
        and `first_call_s` (the first warm-up call: tracing and graph optimization).
    """
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        finish(fn())
        if i == 0:
            first = time.perf_counter() - start
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        finish(fn())
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds),
            "max_s": max(seconds), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "cpu_median_s": statistics.median(cpu_seconds), "first_call_s": first}


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """GFLOP/s of a `size`^3 `tf.matmul` (median of `repeats` calls)."""
    a = tf.random.stateless_normal((size, size), seed=(1, 2), dtype=dtype)
    b = tf.random.stateless_normal((size, size), seed=(3, 4), dtype=dtype)
    matmul = tf.function(tf.matmul)
    timing = time_calls(lambda: matmul(a, b), repeats=repeats, warmup=2)
    return 2.0 * size ** 3 / timing["median_s"] / 1e9


def cpu_flags() -> FrozenSet[str]:
    """The CPU's instruction-set flags (`avx2`, `avx512f`, ...) from /proc/cpuinfo; empty
    where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def path_bytes(path: str) -> int:
    """Size of a file, or of every file under a directory (a SavedModel), in bytes."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(path) for name in names)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (`VmHWM` of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status (Linux only).")


def op_type_shares(fn: Callable[[], object], top: int = 15) -> Dict:
    """Per-op-type time of one call of `fn` (already warmed up) from a profiler trace.

    Op time is summed over TensorFlow's compute threads (it exceeds wall time when ops
    run in parallel); shares are fractions of that sum.

    Returns:
        dict with `wall_s`, `op_seconds` (the sum) and `ops`: the `top` op types as
        `{"op": type, "seconds": s, "share": fraction}`, largest first, plus "other".
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        finish(fn())
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(paths[0], "rb") as f:
            space.ParseFromString(f.read())
    totals: Dict[str, float] = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:  # executor bookkeeping, not an op
                    continue
                op_type = name.rsplit(":", 1)[1].lstrip("_").replace("Mkl", "").replace(
                    "Native", "")
                totals[op_type] += event.duration_ps * 1e-12
    total = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    ops: List[Dict] = [{"op": op, "seconds": s, "share": s / total} for op, s in ranked[:top]]
    rest = sum(s for _, s in ranked[top:])
    if rest:
        ops.append({"op": "other", "seconds": rest, "share": rest / total})
    return {"wall_s": wall, "op_seconds": total, "ops": ops}

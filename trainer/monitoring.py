"""What a running job reports: a progress line per loop, TensorBoard scalars at an interval.

`ProgressLogger` (an Orbit train action) logs `step/total, losses, learning rate,
steps/s, ETA` after every loop. `IntervalSummaryManager` writes the loop outputs Orbit
hands it (losses, learning rate, steps_per_second) only every `interval` steps (and at
the last step), into `model_dir/train`; evaluation summaries (PQ/SQ/RQ, mIoU, images)
go to `model_dir/eval`.

Orbit's `Controller` reports every message twice, through `absl.logging.info` and
`print` (orbit/controller.py `_log`), and after every loop it reports the loop's output
dict, which `ProgressLogger` already puts on one line. `orbit_reports_once()` keeps one
copy: Orbit's log records without its per-loop train report, and none of its stdout copies.

Example:
>>> progress = ProgressLogger(global_step, total_steps=2100)
>>> progress({"loss": 1.5, "learning_rate": 0.004})   # after a loop
"""

import contextlib
import logging as std_logging
import os
import time
from typing import Dict, Iterator, Optional

from absl import logging
import orbit
import tensorflow as tf


def format_duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s` or `6s`."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


class ProgressLogger:
    """Logs one progress line per training loop.

    Steps/s is measured over the last loop; the ETA uses the training rate since the end
    of the first loop (which includes tracing). Call `restart` after anything that is not
    training (an evaluation) so its time counts for neither.

    Args:
        global_step: the step variable.
        total_steps: the step training ends at.
    """

    def __init__(self, global_step: tf.Variable, total_steps: int):
        self.global_step = global_step
        self.total_steps = int(total_steps)
        self.steps_per_second = 0.0
        self._rate_steps = None
        self._rate_seconds = 0.0
        self.restart()

    def restart(self, output=None) -> None:
        """Starts timing the next loop now (usable as an Orbit eval action)."""
        del output
        self._last_step = int(self.global_step.numpy())
        self._last_time = time.time()

    def __call__(self, output: Dict[str, float]) -> None:
        step, now = int(self.global_step.numpy()), time.time()
        steps, seconds = step - self._last_step, max(now - self._last_time, 1e-9)
        self.steps_per_second = steps / seconds
        if self._rate_steps is None:
            self._rate_steps, rate = 0, self.steps_per_second
        else:
            self._rate_steps += steps
            self._rate_seconds += seconds
            rate = self._rate_steps / self._rate_seconds
        self.restart()
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        losses = " ".join(f"{name} {value:.4f}" for name, value in output.items()
                          if name.endswith("loss"))
        logging.info("step %d/%d (%.0f%%) | %s | lr %.3g | %.2f steps/s | ETA %s", step,
                     self.total_steps, 100.0 * step / max(self.total_steps, 1), losses,
                     output.get("learning_rate", float("nan")), self.steps_per_second,
                     format_duration(eta) if eta != float("inf") else "?")

    @property
    def average_steps_per_second(self) -> float:
        """Training steps/s after the first loop (0 before the second loop ends)."""
        return self._rate_steps / self._rate_seconds if self._rate_seconds else 0.0


class _OrbitLoopReportFilter(std_logging.Filter):
    """Drops Orbit's per-loop train report (`train | step: N | steps/sec: ... | output:`)."""

    def __init__(self):
        super().__init__()
        self._orbit_dir = os.path.dirname(os.path.abspath(orbit.__file__)) + os.sep

    def filter(self, record: std_logging.LogRecord) -> bool:
        from_orbit = os.path.abspath(record.pathname).startswith(self._orbit_dir)
        message = record.getMessage()
        return not (from_orbit and message.startswith("train | step:")
                    and "| steps/sec:" in message)


@contextlib.contextmanager
def orbit_reports_once() -> Iterator[None]:
    """While open, Orbit's messages reach the log once and its loop report gives way to
    `ProgressLogger`'s line (see the module docstring)."""
    absl_logger = logging.get_absl_logger()
    loop_filter = _OrbitLoopReportFilter()
    absl_logger.addFilter(loop_filter)
    try:
        with open(os.devnull, "w", encoding="utf-8") as devnull, \
                contextlib.redirect_stdout(devnull):
            yield
    finally:
        absl_logger.removeFilter(loop_filter)


class IntervalSummaryManager(orbit.utils.SummaryManager):
    """An Orbit summary manager that writes scalars every `interval` steps and at the end.

    Args:
        summary_dir: the event-file folder, or None to write nothing.
        global_step: the step variable.
        interval: steps between written summaries.
        final_step: a step that is always written (the last one).
    """

    def __init__(self, summary_dir: Optional[str], global_step: tf.Variable, interval: int,
                 final_step: int):
        super().__init__(summary_dir, tf.summary.scalar, global_step=global_step)
        self.interval = max(int(interval), 1)
        self.final_step = int(final_step)
        self._last_written: Optional[int] = None

    def write_summaries(self, summary_dict) -> None:
        step = int(self._global_step.numpy())
        due = (self._last_written is None or step >= self._last_written + self.interval
               or step >= self.final_step)
        if due:
            self._last_written = step
            super().write_summaries(summary_dict)

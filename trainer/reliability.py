"""Stopping training safely: on a non-finite loss, and on SIGTERM (preemption).

Both checks are Orbit train actions: the controller runs them after every loop of
`steps_per_loop` steps and before it considers saving a checkpoint, so a loop that went
non-finite raises `NonFiniteLossError` before its weights can reach a checkpoint (the
last good one stays the latest), and a SIGTERM raises `PreemptedError` at the end of the
running loop, after which the caller saves a checkpoint and exits cleanly.

Example:
>>> watcher = PreemptionWatcher(strategy).install()
>>> controller = orbit.Controller(..., train_actions=[NonFiniteLossGuard(trainer), watcher])
"""

import signal

from absl import logging
import tensorflow as tf

from trainer import strategies


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class PreemptedError(RuntimeError):
    """A SIGTERM asked training to stop."""


class NonFiniteLossGuard:
    """Raises `NonFiniteLossError` naming the first step whose loss was not finite.

    Args:
        trainer: a `trainer.runners.Trainer` (its `nonfinite_step` variable).
        checkpoint_dir: where the last good checkpoint is (named in the message).
    """

    def __init__(self, trainer, checkpoint_dir: str):
        self.trainer = trainer
        self.checkpoint_dir = checkpoint_dir

    def __call__(self, output) -> None:
        step = int(self.trainer.nonfinite_step.numpy())
        if step < 0:
            return
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        kept = f"the last good checkpoint, {latest}, is kept" if latest else \
            "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"Non-finite loss at step {step} (loss {output.get('loss')}); stopping without "
            f"saving: {kept}. Lower optimizer.learning_rate or enable "
            f"optimizer.global_clipnorm.")


class PreemptionWatcher:
    """Turns SIGTERM into `PreemptedError` at the end of the running training loop.

    With several workers, each loop all-reduces the flag, so every worker stops at the
    same step (and takes part in the same final checkpoint).

    Args:
        strategy: the training strategy.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self.requested = False
        self._previous = None
        self._any_worker = None
        if strategies.num_workers(strategy) > 1:
            self._any_worker = tf.function(self._all_reduce_flag)

    def install(self) -> "PreemptionWatcher":
        """Installs the SIGTERM handler (main thread only); returns self."""
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the previous SIGTERM handler."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("Received signal %d: stopping at the end of this training loop "
                        "and writing a checkpoint.", signum)
        self.requested = True

    def _all_reduce_flag(self, flag: tf.Tensor) -> tf.Tensor:
        value = self.strategy.run(lambda: tf.identity(flag))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

    def should_stop(self) -> bool:
        """Whether this worker, or any other, was asked to stop."""
        if self._any_worker is None:
            return self.requested
        return bool(self._any_worker(tf.constant(1.0 if self.requested else 0.0)) > 0)

    def __call__(self, output) -> None:
        del output
        if self.should_stop():
            raise PreemptedError("Stopping on SIGTERM.")


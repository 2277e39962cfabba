"""Train and evaluate an experiment with Orbit under a tf.distribute strategy.

    python -m trainer.train --experiment=digits_panoptic --model_dir=DIR \\
        [--mode=train|eval|train_and_eval|continuous_eval] \\
        [--strategy=default|mirrored|multi_worker_mirrored|tpu] [--cpu_replicas=N] \\
        [--override section.field=value ...] [--tpu=ADDRESS] [--eval_timeout=SECONDS]

`model_dir` receives `config.json` (the resolved experiment), the model's own description
(`model.json`, and for panoptic models `labels.json` and `post_processing.json`:
`axial_keras.saving`, from which `python -m export.saved_model --checkpoint=DIR` rebuilds
it), checkpoints `ckpt-STEP`
every `trainer.checkpoint_interval` steps, TensorBoard summaries in `train/` and `eval/`
(`tensorboard --logdir DIR`), the best evaluation's weights in `best/` and the latest
evaluation in `eval_results.json`. A rerun with the same `model_dir` resumes from the
latest checkpoint (after a crash, SIGKILL, or SIGTERM, which saves a checkpoint at the end
of the running loop and exits 0). A non-finite loss stops training with exit status 1 and
a message naming the step; no checkpoint is written after it.

`continuous_eval` evaluates every new checkpoint in `model_dir` until the one at
`trainer.train_steps`, or until no new checkpoint arrives for `--eval_timeout` seconds.
Multi-worker runs read `TF_CONFIG`; the chief writes `model_dir`, other workers write to
temporary folders they delete at the end.
"""

import os
import shutil
import time
from typing import Any, Dict, List, Optional

from absl import app, flags, logging
import keras
import orbit
import tensorflow as tf

from axial_keras import cli
from axial_keras.files import write_json
from axial_keras.saving import model_checkpoint, write_model_artifacts
from trainer import strategies
from trainer.checkpointing import BestCheckpointExporter, checkpoint_step, weights_fingerprint
from trainer.experiments import ExperimentConfig, get_experiment, save_config
from trainer.monitoring import (IntervalSummaryManager, ProgressLogger, format_duration,
                                orbit_reports_once)
from trainer.optimization import build_learning_rate, build_optimizer
from trainer.reliability import (NonFiniteLossError, NonFiniteLossGuard, PreemptedError,
                                 PreemptionWatcher)
from trainer.runners import Evaluator, Trainer
from trainer.tasks import create_task

MODES = ("train", "eval", "train_and_eval", "continuous_eval")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("experiment", "digits_panoptic", "A registered experiment name.")
    flags.DEFINE_string("model_dir", None, "Checkpoints, summaries and exports go here.")
    flags.DEFINE_enum("mode", "train_and_eval", MODES, "What to run.")
    flags.DEFINE_enum("strategy", "default", strategies.STRATEGIES,
                      "tf.distribute strategy.")
    flags.DEFINE_integer("cpu_replicas", 0, "Logical CPU devices for --strategy=mirrored "
                         "on a machine without GPUs (0: one per physical device).")
    flags.DEFINE_multi_string("override", [], "section.field=value, e.g. "
                              "trainer.train_steps=100 (repeatable).")
    flags.DEFINE_string("tpu", "", "TPU name or grpc:// address for --strategy=tpu.")
    flags.DEFINE_float("eval_timeout", 3600.0, "continuous_eval: seconds to wait for a "
                       "new checkpoint before stopping.")
    flags.mark_flag_as_required("model_dir")


def validate(config: ExperimentConfig) -> None:
    """Raises ValueError for trainer settings the loop cannot run."""
    trainer = config.trainer
    for name in ("train_steps", "steps_per_loop", "checkpoint_interval", "summary_interval",
                 "eval_interval", "max_checkpoints_to_keep"):
        if getattr(trainer, name) < 1:
            raise ValueError(f"trainer.{name} must be >= 1, got {getattr(trainer, name)}.")
    if trainer.eval_steps == 0 or trainer.eval_steps < -1:
        raise ValueError(f"trainer.eval_steps must be -1 (all) or >= 1, got "
                         f"{trainer.eval_steps}.")
    if not trainer.eval_scales or min(trainer.eval_scales) <= 0:
        raise ValueError(f"trainer.eval_scales must be positive, got {trainer.eval_scales}.")


def build(config: ExperimentConfig, strategy: tf.distribute.Strategy):
    """(task, model, optimizer, learning-rate schedule), built under `strategy.scope()`."""
    keras.mixed_precision.set_global_policy(config.trainer.mixed_precision)
    task = create_task(config)
    train_steps = config.trainer.train_steps
    with strategy.scope():
        keras.utils.set_random_seed(config.trainer.seed)
        model = task.build_model(strategy.num_replicas_in_sync)
        learning_rate = build_learning_rate(config.optimizer, train_steps)
        optimizer = build_optimizer(config.optimizer, train_steps, learning_rate)
        if config.trainer.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return task, model, optimizer, learning_rate


def run(config: ExperimentConfig, model_dir: str, mode: str = "train_and_eval",
        strategy: Optional[tf.distribute.Strategy] = None,
        eval_timeout: float = 3600.0) -> Dict[str, Any]:
    """Runs `mode` for `config` in `model_dir`.

    Returns:
        dict with `step` (the global step at the end), `eval` (the last evaluation's
        metrics, or None), `preempted` (stopped by SIGTERM), `seconds` (wall time of the
        loop), `steps_per_second` (training, after the first loop) and `fingerprint`
        (SHA-256 of the model weights).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (no checkpoint written after).
        ValueError: a bad mode or config, or `eval` without a checkpoint.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {', '.join(MODES)}.")
    validate(config)
    strategy = strategy or tf.distribute.get_strategy()
    chief = strategies.is_chief(strategy)
    out_dir = strategies.write_dir(model_dir, strategy)
    if chief:
        save_config(config, model_dir)
    logging.info("%s: %s in %s on %s", config.name, mode, model_dir,
                 strategies.describe(strategy))

    task, model, optimizer, learning_rate = build(config, strategy)
    if chief:
        write_model_artifacts(model_dir, model, getattr(config.task, "labels", None),
                              getattr(config.task, "post_processing", None))
    global_step = optimizer.iterations.value
    checkpoint = model_checkpoint(model, optimizer=optimizer)
    latest = tf.train.latest_checkpoint(model_dir)
    if mode == "eval":
        if latest is None:
            raise ValueError(f"No checkpoint in {model_dir} to evaluate.")
        with strategy.scope():
            checkpoint.restore(latest).expect_partial()
    training = mode in ("train", "train_and_eval")
    trainer = Trainer(task, strategy, model, optimizer, learning_rate) if training else None
    evaluator = Evaluator(task, strategy, model, global_step) if mode != "train" else None
    progress = ProgressLogger(global_step, config.trainer.train_steps)
    watcher = PreemptionWatcher(strategy)
    controller = orbit.Controller(
        global_step=global_step, trainer=trainer, evaluator=evaluator, strategy=strategy,
        train_actions=[NonFiniteLossGuard(trainer, out_dir), progress, watcher]
        if training else None,
        eval_actions=_eval_actions(config, model, global_step, model_dir, out_dir, chief,
                                   progress) if evaluator else None,
        steps_per_loop=config.trainer.steps_per_loop,
        checkpoint_manager=_checkpoint_manager(config, checkpoint, global_step, out_dir,
                                               latest, chief) if training else None,
        **_summary_managers(config, global_step, model_dir, chief))

    start, output, preempted = time.time(), None, False
    if training:
        watcher.install()
    try:
        output = _run_mode(controller, mode, config, checkpoint, strategy, model_dir,
                           eval_timeout)
    except PreemptedError:
        controller.save_checkpoint()
        preempted = True
        logging.warning("Preempted: saved a checkpoint at step %d in %s; rerun to resume.",
                        int(global_step.numpy()), out_dir)
    finally:
        watcher.uninstall()
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)

    seconds = time.time() - start
    fingerprint = weights_fingerprint(model.weights)
    step = int(global_step.numpy())
    logging.info("Done at step %d in %s (training %.2f steps/s after the first loop); "
                 "weights fingerprint %s", step, format_duration(seconds),
                 progress.average_steps_per_second, fingerprint)
    return {"step": step, "eval": output, "preempted": preempted, "seconds": seconds,
            "steps_per_second": progress.average_steps_per_second,
            "fingerprint": fingerprint}


def _checkpoint_manager(config: ExperimentConfig, checkpoint: tf.train.Checkpoint,
                        global_step: tf.Variable, out_dir: str, latest: Optional[str],
                        chief: bool) -> tf.train.CheckpointManager:
    """Checkpoints every `trainer.checkpoint_interval` steps into `out_dir`.

    The chief restores from its own folder (`model_dir`) when the controller starts;
    other workers write to a temporary folder and restore `model_dir`'s latest instead.
    """
    return tf.train.CheckpointManager(
        checkpoint, out_dir, max_to_keep=config.trainer.max_checkpoints_to_keep,
        step_counter=global_step, checkpoint_interval=config.trainer.checkpoint_interval,
        init_fn=None if chief or latest is None else
        lambda: checkpoint.restore(latest).expect_partial(),
        # Checkpoints land on multiples of the interval, also for a fresh run.
        last_checkpoint_step=checkpoint_step(latest) or 0)


def _eval_actions(config: ExperimentConfig, model, global_step: tf.Variable, model_dir: str,
                  out_dir: str, chief: bool, progress: ProgressLogger) -> List:
    """After each evaluation: export the best weights, write `eval_results.json` (chief),
    and restart the progress timer (evaluation time is not training time)."""
    actions = [BestCheckpointExporter(os.path.join(out_dir, "best"), model, global_step,
                                      config.trainer.best_metric)]
    if chief:
        actions.append(lambda output: write_json(
            os.path.join(model_dir, "eval_results.json"),
            {"step": int(global_step.numpy()), **{k: float(v) for k, v in output.items()}}))
    actions.append(progress.restart)
    return actions


def _summary_managers(config: ExperimentConfig, global_step: tf.Variable, model_dir: str,
                      chief: bool) -> Dict[str, Any]:
    """Orbit summary arguments: `model_dir/train` every `trainer.summary_interval` steps,
    `model_dir/eval` at every evaluation; nothing written by non-chief workers."""
    eval_dir = os.path.join(model_dir, "eval")
    return dict(
        summary_manager=IntervalSummaryManager(
            os.path.join(model_dir, "train") if chief else None, global_step,
            config.trainer.summary_interval, config.trainer.train_steps),
        # A summary dir unlike the (unset) training one keeps Orbit from sharing writers.
        eval_summary_dir=eval_dir,
        eval_summary_manager=orbit.utils.SummaryManager(
            eval_dir if chief else None, tf.summary.scalar, global_step=global_step))


def _run_mode(controller: orbit.Controller, mode: str, config: ExperimentConfig,
              checkpoint: tf.train.Checkpoint, strategy: tf.distribute.Strategy,
              model_dir: str, eval_timeout: float):
    """Runs the controller loop of `mode`; returns the last evaluation output or None."""
    trainer_config = config.trainer
    if mode == "train":
        controller.train(trainer_config.train_steps)
        return None
    if mode == "train_and_eval":
        output = controller.train_and_evaluate(
            trainer_config.train_steps, trainer_config.eval_steps, trainer_config.eval_interval)
        if output is None:  # Restored at the end of training: evaluate it again.
            output = controller.evaluate(trainer_config.eval_steps)
        return output
    if mode == "eval":
        return controller.evaluate(trainer_config.eval_steps)
    return _evaluate_continuously(controller, checkpoint, strategy, model_dir,
                                  trainer_config.train_steps, trainer_config.eval_steps,
                                  eval_timeout)


def _evaluate_continuously(controller: orbit.Controller, checkpoint: tf.train.Checkpoint,
                           strategy: tf.distribute.Strategy, model_dir: str, train_steps: int,
                           eval_steps: int, timeout: float):
    """Evaluates each new checkpoint until the final one or `timeout` seconds of silence."""
    output = None
    for path in tf.train.checkpoints_iterator(model_dir, min_interval_secs=1,
                                              timeout=timeout):
        with strategy.scope():
            checkpoint.restore(path).expect_partial()
        output = controller.evaluate(eval_steps)
        if checkpoint_step(path) >= train_steps:
            break
    return output


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.cpu_replicas > 1 and FLAGS.strategy != "mirrored":
        raise app.UsageError("--cpu_replicas needs --strategy=mirrored.")
    try:
        config = get_experiment(FLAGS.experiment, FLAGS.override)
    except ValueError as error:
        raise app.UsageError(str(error))
    strategies.configure_cpu_replicas(FLAGS.cpu_replicas)
    strategy = strategies.create_strategy(FLAGS.strategy, FLAGS.tpu)
    try:
        with orbit_reports_once():
            result = run(config, FLAGS.model_dir, FLAGS.mode, strategy, FLAGS.eval_timeout)
    except NonFiniteLossError as error:
        raise SystemExit(f"error: {error}")
    if result["eval"]:
        metrics = ", ".join(f"{key} {value:.4f}" for key, value in result["eval"].items())
        print(f"{FLAGS.experiment} at step {result['step']}: {metrics}")


if __name__ == "__main__":
    cli.run(main, define_flags, __doc__)

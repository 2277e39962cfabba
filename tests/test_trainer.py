"""The Orbit trainer: train/eval modes, summaries, best export, non-finite loss, SIGKILL
and resume, SIGTERM, 1 vs 2 mirrored replicas, two multi-worker processes, multi-scale +
flip evaluation, input order, optimizers, TFRecord experiments.

One uninterrupted classifier run (`reference`, in this process) is the yardstick of the
subprocess tests (`python -m trainer.train`) and the starting point of the eval and
non-finite tests.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from axial_keras.data import DIGITS_PANOPTIC
from axial_keras.saving import model_checkpoint, read_model_artifacts
from trainer import curves, inputs, optimization, train
from trainer.checkpointing import read_best
from trainer.curves import read_scalars as scalars
from trainer.experiments import get_experiment
from trainer.reliability import NonFiniteLossError
from trainer_helpers import (REPO, TINY_CLASSIFIER, TINY_PANOPTIC, checkpoint_values,
                             evaluate_model_dir,
                             environment, fingerprint, image_summaries, run_trainer,
                             trainer_command)

STEPS = 12
# The paper's optimizer (RAdam + Lookahead slow weights), a checkpoint every 3 steps.
RESUMABLE = TINY_CLASSIFIER + [
    f"trainer.train_steps={STEPS}", "trainer.steps_per_loop=1", "trainer.checkpoint_interval=3",
    "trainer.summary_interval=1", "trainer.max_checkpoints_to_keep=2",
    "optimizer.name=radam_lookahead", "optimizer.schedule=polynomial",
    "optimizer.warmup_steps=2", "optimizer.lookahead_sync_period=4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted classifier run of `RESUMABLE`: (model_dir, result)."""
    model_dir = str(tmp_path_factory.mktemp("reference"))
    result = train.run(get_experiment("digits_classification", RESUMABLE), model_dir, "train")
    assert result["step"] == STEPS
    return model_dir, result


def latest_step(model_dir: str) -> int:
    return int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])


def first_loss(model_dir: str):
    return scalars(os.path.join(model_dir, "train"))["loss"][0]


def copy_of(model_dir: str, tmp_path) -> str:
    target = str(tmp_path / "model")
    shutil.copytree(model_dir, target)
    return target


@pytest.mark.long
def test_panoptic_train_and_eval_writes_checkpoints_summaries_and_best(tmp_path, caplog):
    from absl import logging as absl_logging

    # Earlier tests in the same process may lower absl's verbosity; progress lines are INFO.
    absl_logging.set_verbosity(absl_logging.INFO)
    caplog.set_level("INFO")
    caplog.set_level("INFO", logger="absl")
    model_dir = str(tmp_path)
    config = get_experiment("digits_panoptic", TINY_PANOPTIC + ["trainer.eval_flip=true"])
    result = train.run(config, model_dir, "train_and_eval")

    assert result["step"] == 4 and not result["preempted"]
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    assert json.load(open(tmp_path / "config.json"))["trainer"]["eval_flip"] is True
    metrics = result["eval"]
    # The run describes its model: rebuilt from model.json with the final checkpoint, the
    # task's predictor gives the same metrics again.
    artifacts = read_model_artifacts(model_dir)
    assert artifacts.labels == DIGITS_PANOPTIC
    assert artifacts.post_processing == config.task.post_processing
    assert artifacts.model_config["class_name"] == "AxialDeepLab"
    recomputed = evaluate_model_dir(config, model_dir)
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff", "miou"):
        assert metrics[key] == pytest.approx(recomputed[key], abs=1e-9), key
    assert json.load(open(tmp_path / "eval_results.json"))["step"] == 4

    train_scalars = scalars(str(tmp_path / "train"))
    for tag in ("loss", "semantic_loss", "center_loss", "offset_loss", "learning_rate",
                "steps_per_second"):
        assert [step for step, _ in train_scalars[tag]] == [2, 4], tag
    loss = dict(train_scalars["loss"])
    terms = sum(dict(train_scalars[t])[4] for t in ("semantic_loss", "center_loss",
                                                    "offset_loss"))
    assert loss[4] == pytest.approx(terms, rel=1e-5) and np.isfinite(loss[4])
    eval_scalars = scalars(str(tmp_path / "eval"))
    for tag in ("pq", "sq", "rq", "miou"):
        assert eval_scalars[tag] == [(4, pytest.approx(metrics[tag]))]
    images = image_summaries(str(tmp_path / "eval"))["image_truth_prediction"]
    assert len(images) == 4 and images[0].shape == (32, 3 * 32 + 4, 3)

    best = read_best(str(tmp_path / "best"))
    assert best["metric"] == "pq" and best["step"] == 4
    assert best["value"] == pytest.approx(metrics["pq"])
    assert os.path.exists(tmp_path / "best" / f"{best['checkpoint']}.index")
    assert not [p for p in os.listdir(tmp_path / "best") if ".tmp" in p]

    progress = [r.getMessage() for r in caplog.records if "steps/s | ETA" in r.getMessage()]
    assert progress[-1].startswith("step 4/4 (100%) | loss ")

    pytest.importorskip("matplotlib")
    assert curves.plot(model_dir, str(tmp_path / "curves.png"))
    assert open(tmp_path / "curves.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_hold_every_model_variable(tmp_path):
    """What the trainer writes restores every variable, batch-norm statistics included;
    a model with layers out of TensorFlow's object graph is refused."""
    import keras

    config = get_experiment("digits_panoptic", ["data.image_size=32"])
    source = train.build(config, tf.distribute.get_strategy())[1]
    for index, variable in enumerate(source.variables):
        variable.assign(tf.cast(tf.fill(variable.shape, index % 7 + 1), variable.dtype))
    path = model_checkpoint(source).write(str(tmp_path / "ckpt"))
    target = train.build(config, tf.distribute.get_strategy())[1]
    tf.train.Checkpoint(model=target).read(path).assert_consumed()
    for saved, restored in zip(source.variables, target.variables):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy(), err_msg=saved.path)

    class Listed(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.norms = [keras.layers.BatchNormalization()]

        def call(self, x):
            return self.norms[0](x)

    inputs = keras.Input((4,))
    listed = keras.Model(inputs, Listed()(inputs))
    with pytest.raises(ValueError, match="outside TensorFlow's object graph"):
        model_checkpoint(listed)


def test_eval_mode_and_continuous_eval(reference, tmp_path):
    model_dir = copy_of(reference[0], tmp_path)
    config = get_experiment("digits_classification", RESUMABLE)
    result = train.run(config, model_dir, "eval")
    assert result["step"] == STEPS
    assert result["eval"]["accuracy"] == pytest.approx(
        evaluate_model_dir(config, model_dir)["accuracy"], abs=1e-12)
    assert read_model_artifacts(model_dir).labels is None  # a classifier has no panoptic labels
    assert read_best(os.path.join(model_dir, "best"))["metric"] == "accuracy"
    assert json.load(open(os.path.join(model_dir, "eval_results.json")))["step"] == STEPS

    start = time.time()
    continuous = train.run(config, model_dir, "continuous_eval", eval_timeout=60)
    assert time.time() - start < 60  # Stopped at the final checkpoint, not by the timeout.
    assert continuous["eval"]["accuracy"] == pytest.approx(result["eval"]["accuracy"])

    with pytest.raises(ValueError, match="No checkpoint"):
        train.run(config, str(tmp_path / "empty"), "eval")


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
        reference, tmp_path):
    model_dir = copy_of(reference[0], tmp_path)
    last = os.path.join(model_dir, f"ckpt-{STEPS}")
    before = checkpoint_values(last)
    config = get_experiment("digits_classification", RESUMABLE + [
        f"trainer.train_steps={STEPS + 6}", "optimizer.learning_rate=1e30"])
    later_steps = "|".join(str(STEPS + i) for i in range(1, 7))
    with pytest.raises(NonFiniteLossError,
                       match=rf"Non-finite loss at step ({later_steps}) .*ckpt-{STEPS}, is kept"):
        train.run(config, model_dir, "train")
    assert latest_step(model_dir) == STEPS
    after = checkpoint_values(last)
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


@pytest.mark.xdist_group("trainer_reference")  # the `reference` run is built once
def test_sigkill_then_rerun_resumes_with_identical_state(reference, tmp_path):
    reference_dir, reference_result = reference
    model_dir = str(tmp_path / "model")
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            trainer_command(model_dir, "digits_classification", RESUMABLE, "--mode=train"),
            cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None and not os.path.exists(
                    os.path.join(model_dir, "checkpoint")):
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    killed_at = latest_step(model_dir)
    assert killed_at % 3 == 0 and 3 <= killed_at < STEPS

    resumed = run_trainer(model_dir, "digits_classification", RESUMABLE, "--mode=train")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"restored from checkpoint: {model_dir}/ckpt-{killed_at}" in resumed.stderr
    assert latest_step(model_dir) == STEPS
    expected = checkpoint_values(os.path.join(reference_dir, f"ckpt-{STEPS}"))
    actual = checkpoint_values(os.path.join(model_dir, f"ckpt-{STEPS}"))
    assert expected.keys() == actual.keys()
    assert any(name.startswith("optimizer/_variables/") for name in actual)  # slow weights
    for name in expected:
        np.testing.assert_array_equal(expected[name], actual[name], err_msg=name)
    assert fingerprint(resumed.stderr) == reference_result["fingerprint"]
    # Same seed, same first-step loss, in another process.
    assert first_loss(model_dir) == first_loss(reference_dir)
    assert first_loss(model_dir)[0] == 1


@pytest.mark.long
@pytest.mark.xdist_group("trainer_reference")
def test_two_mirrored_cpu_replicas_match_one_replica_and_sigterm_saves(reference, tmp_path):
    """Two logical CPUs: the first-step loss of the same global batch equals one replica's;
    then SIGTERM makes the run save a checkpoint and exit 0."""
    model_dir = str(tmp_path / "model")
    log_path = tmp_path / "mirrored.log"
    overrides = RESUMABLE + ["trainer.train_steps=100000", "trainer.checkpoint_interval=50000"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            trainer_command(model_dir, "digits_classification", overrides, "--mode=train",
                            "--strategy=mirrored", "--cpu_replicas=2"),
            cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None and "step 2/100000" not in log_path.read_text():
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    text = log_path.read_text()
    assert process.returncode == 0, text[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in text
    assert "Preempted: saved a checkpoint at step" in text
    stopped_at = latest_step(model_dir)
    assert 2 <= stopped_at < 100000
    assert f"Done at step {stopped_at} " in text
    assert json.load(open(os.path.join(model_dir, "config.json")))["model"]["synchronized_bn"] \
        is None
    two, one = first_loss(model_dir), first_loss(reference[0])
    assert two[0] == one[0] == 1
    assert two[1] == pytest.approx(one[1], rel=1e-5)


def free_ports(count: int):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.long
def test_two_workers_finish_and_agree_on_the_final_weights(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    model_dir = str(tmp_path / "model")
    processes, logs = [], []
    for index in range(2):
        logs.append(tmp_path / f"worker{index}.log")
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        with open(logs[-1], "w") as log:
            processes.append(subprocess.Popen(
                trainer_command(model_dir, "digits_classification", TINY_CLASSIFIER,
                                "--mode=train", "--strategy=multi_worker_mirrored"),
                cwd=REPO, env=environment(TF_CONFIG=tf_config), stdout=log,
                stderr=subprocess.STDOUT))
    try:
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts[0][-2000:] + texts[1][-2000:]
    for index, text in enumerate(texts):
        assert f"with 2 replica(s), worker {index} of 2 workers" in text
    assert fingerprint(texts[0]) == fingerprint(texts[1])
    assert latest_step(model_dir) == 4
    # Only the chief writes model_dir (a classifier's description is its model.json).
    assert sorted(os.listdir(model_dir)) == sorted(
        ["checkpoint", "config.json", "model.json", "train", "ckpt-2.data-00000-of-00001",
         "ckpt-2.index",
         "ckpt-4.data-00000-of-00001", "ckpt-4.index"])


def test_training_input_depends_only_on_the_step():
    images = np.arange(10)
    context = tf.distribute.InputContext()

    def batches(start, count, context=context, batch=4):
        dataset = inputs.positional_dataset((images,), batch, 0, start, context)
        return [b[0].numpy().tolist() for b in dataset.take(count)]

    run = batches(0, 10)
    assert batches(3, 7) == run[3:]
    for epoch_start in (0, 10, 20, 30):  # every epoch is a permutation of all examples
        flat = sum(run, [])[epoch_start:epoch_start + 10]
        assert sorted(flat) == list(range(10))
    assert sum(run, [])[:10] != sum(run, [])[10:20]
    # Two replicas split each global batch in halves, in replica order.
    halves = [batches(0, 6, tf.distribute.InputContext(1, 0, 2))]
    assert [a + b for a, b in zip(halves[0][0::2], halves[0][1::2])] == run[:3]
    # Two workers (one replica each) take one half each.
    worker = [batches(0, 3, tf.distribute.InputContext(2, i, 2)) for i in (0, 1)]
    assert [a + b for a, b in zip(*worker)] == run[:3]


def test_evaluation_input_is_padded_to_whole_steps_and_split_over_workers():
    examples = tf.data.Dataset.range(10)
    for workers in (1, 2):
        seen = []
        for worker in range(workers):
            context = tf.distribute.InputContext(workers, worker, 2)
            batches = inputs.padded_eval_dataset(examples, 10, tf.constant(-1, tf.int64), 4,
                                                 context)
            seen.append([b.numpy().tolist() for b in batches])
        if workers == 1:
            assert seen[0] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [-1, -1]]
        else:
            assert seen == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [-1, -1]]]


def test_learning_rate_schedules():
    base = get_experiment("digits_panoptic").optimizer
    poly = optimization.build_learning_rate(
        get_experiment("coco_panoptic_axial_deeplab_s").optimizer, 200_000)
    assert float(poly(0)) == 0.0
    assert float(poly(1000)) == pytest.approx(0.5e-3)
    assert float(poly(2000)) == pytest.approx(1e-3)
    assert float(poly(101_000)) == pytest.approx(1e-3 * 0.5 ** 0.9, rel=1e-4)
    assert float(poly(200_000)) == pytest.approx(0.0, abs=1e-9)
    cosine = optimization.build_learning_rate(base, 2100)
    assert float(cosine(base.warmup_steps)) == pytest.approx(base.learning_rate)
    assert float(cosine(2100)) == pytest.approx(0.0, abs=1e-7)
    constant = optimization.build_learning_rate(
        get_experiment("digits_panoptic", ["optimizer.schedule=constant"]).optimizer, 100)
    half, after = base.warmup_steps // 2, base.warmup_steps + 5
    assert [float(constant(s)) for s in (half, after, 2000)] == pytest.approx(
        [base.learning_rate * half / base.warmup_steps, base.learning_rate, base.learning_rate])
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optimization.build_learning_rate(
            get_experiment("digits_panoptic", ["optimizer.schedule=step"]).optimizer, 10)


def test_paper_optimizer_and_weight_decay():
    from axial_keras.optimizers import Lookahead, RAdam

    config = get_experiment("cityscapes_panoptic_axial_deeplab_l", [
        "optimizer.weight_decay=1e-4", "optimizer.global_clipnorm=1.0"]).optimizer
    optimizer = optimization.build_optimizer(config, 60_000)
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.inner_optimizer, RAdam)
    assert (optimizer.sync_period, optimizer.slow_step_size) == (6, 0.5)
    assert optimizer.inner_optimizer.weight_decay == 1e-4
    assert optimizer.inner_optimizer.global_clipnorm == 1.0
    kernel = tf.Variable(tf.ones([2, 2]), name="kernel")
    gamma = tf.Variable(tf.ones([2]), name="gamma")
    optimizer.build([kernel, gamma])
    assert not optimizer.inner_optimizer._use_weight_decay(gamma)
    assert optimizer.inner_optimizer._use_weight_decay(kernel)
    with pytest.raises(ValueError, match="optimizer.name"):
        optimization.build_optimizer(
            get_experiment("digits_panoptic", ["optimizer.name=lamb"]).optimizer, 10)


def test_tpu_strategy_goes_through_the_cluster_resolver():
    from trainer.strategies import create_strategy

    with pytest.raises(ValueError, match="TPU"):
        create_strategy("tpu")
    with pytest.raises(ValueError, match="Unknown strategy"):
        create_strategy("parameter_server")


def test_cli_rejects_a_bad_override_naming_the_key(tmp_path):
    process = run_trainer(str(tmp_path), "digits_panoptic", ["trainer.train_step=3"],
                          timeout=120)
    assert process.returncode != 0
    assert "trainer.train_step'" in process.stderr and "trainer.train_steps" in process.stderr
    assert not os.path.exists(tmp_path / "config.json")


def converted_records(dataset: str, root) -> str:
    """Writes a 2-image train and val fixture of `dataset` and converts it; the records."""
    from axial_keras.data.convert import convert_dataset
    from dataset_fixtures import (write_cityscapes_panoptic_fixture,
                                  write_coco_panoptic_fixture)

    writer = {"coco": write_coco_panoptic_fixture,
              "cityscapes": write_cityscapes_panoptic_fixture}[dataset]
    records = str(root / "records")
    for split in ("train", "val"):
        writer(str(root / "source"), split, num_images=2)
        convert_dataset(f"{dataset}_panoptic", str(root / "source"), split, records, 1,
                        progress_stream=None)
    return records


def tiny_paper_experiment(name: str, records: str, *overrides: str):
    return get_experiment(name, [
        "model.name=axial_deeplab_tiny", f"data.train_file_pattern={records}/train-*.tfrecord",
        f"data.eval_file_pattern={records}/val-*.tfrecord", "data.crop_size=33,65",
        "data.batch_size=2", "data.eval_batch_size=2", "trainer.train_steps=2",
        "trainer.steps_per_loop=1", "trainer.checkpoint_interval=2",
        "trainer.summary_interval=1", "trainer.eval_interval=2", "optimizer.warmup_steps=1",
        *overrides])


@pytest.mark.long
def test_cityscapes_experiment_trains_and_evaluates_on_converted_records(tmp_path):
    records = converted_records("cityscapes", tmp_path)
    config = tiny_paper_experiment("cityscapes_panoptic_axial_deeplab_l", records)
    result = train.run(config, str(tmp_path / "model"), "train_and_eval")
    assert result["step"] == 2
    recomputed = evaluate_model_dir(config, str(tmp_path / "model"))
    for key in ("pq", "miou"):
        assert result["eval"][key] == pytest.approx(recomputed[key], abs=1e-9), key
    losses = scalars(str(tmp_path / "model" / "train"))["loss"]
    assert [step for step, _ in losses] == [1, 2] and all(np.isfinite(v) for _, v in losses)


def test_coco_experiment_input_on_converted_records(tmp_path):
    """The COCO recipe's inputs: augmented crops for training, padded whole evaluation
    batches (void padding), and a clear error when the records' classes differ."""
    records = converted_records("coco", tmp_path)
    task = train.create_task(tiny_paper_experiment("coco_panoptic_axial_deeplab_s", records))
    context = tf.distribute.InputContext()
    images, labels = next(iter(task.train_dataset(context, 0)))
    assert images.shape == (2, 33, 65, 3) and labels.shape == (2, 33, 65)
    batches = list(task.eval_dataset(context))
    assert [tuple(b[0].shape) for b in batches] == [(2, 33, 65, 3)]
    classes = np.unique(batches[0][1].numpy() // 256)
    assert set(classes) - {255} <= set(range(133)) and len(classes) > 2
    wrong = tiny_paper_experiment("coco_panoptic_axial_deeplab_s", records,
                                  "task.labels.label_divisor=512")
    with pytest.raises(ValueError,
                       match="task.labels.label_divisor=512 but the records have 256"):
        next(iter(train.create_task(wrong).train_dataset(context, 0)))

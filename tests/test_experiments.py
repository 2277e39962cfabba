"""The experiment registry: names, typed overrides, config files, paper recipes, models."""

import dataclasses
import json

import pytest

from axial_keras.data import DIGITS_PANOPTIC, DIGITS_POST_PROCESSING
from axial_keras.data.digits_panoptic import DIGITS_AXIAL_BEYOND_STRIDE
from axial_keras.labels import CITYSCAPES
from trainer import experiments
from trainer.experiments import (ClassificationTaskConfig, PanopticTaskConfig, apply_overrides,
                                 build_model, get_experiment, list_experiments, load_config,
                                 panoptic_loss_args, save_config)

PAPER = {
    "coco_panoptic_axial_deeplab_s": ("axial_deeplab_s", (641, 641), 64, 200_000),
    "coco_panoptic_axial_deeplab_m": ("axial_deeplab_m", (641, 641), 64, 200_000),
    "coco_panoptic_axial_deeplab_l": ("axial_deeplab_l", (641, 641), 64, 200_000),
    "cityscapes_panoptic_axial_deeplab_l": ("axial_deeplab_l", (1025, 2049), 32, 60_000),
    "cityscapes_panoptic_axial_deeplab_xl": ("axial_deeplab_xl", (1025, 2049), 32, 60_000),
}


def test_registry_holds_the_issue_experiments():
    assert set(list_experiments()) == {"digits_panoptic", "digits_classification", *PAPER}
    assert list_experiments() == sorted(list_experiments())


def test_unknown_experiment_names_the_registered_ones():
    with pytest.raises(ValueError, match="digits_panoptic"):
        get_experiment("imagenet")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes(name):
    config = get_experiment(name)
    model, crop, batch, steps = PAPER[name]
    assert config.model.name == model
    assert config.model.output_stride == 16
    assert config.data.crop_size == crop
    assert config.data.batch_size == batch
    assert config.trainer.train_steps == steps
    assert config.data.dataset == "tfrecord"
    prefix = "data/coco_panoptic" if name.startswith("coco") else "data/cityscapes_panoptic"
    assert config.data.train_file_pattern == f"{prefix}/train-*.tfrecord"
    assert config.data.eval_file_pattern == f"{prefix}/val-*.tfrecord"
    assert (config.optimizer.name, config.optimizer.learning_rate) == ("radam_lookahead", 1e-3)
    assert config.optimizer.schedule == "polynomial" and config.optimizer.warmup_steps > 0
    if name.startswith("cityscapes"):
        assert config.model.spans == (None, 65, 65, 65, 65)
        assert config.task.labels == CITYSCAPES
        assert config.task.post_processing.nms_kernel == 13
    else:
        labels = config.task.labels
        assert (labels.num_classes, labels.label_divisor) == (133, 256)
        assert labels.thing_class_ids == tuple(range(80))
        assert config.task.post_processing.nms_kernel == 41


def test_digits_panoptic_is_the_demo_recipe():
    config = get_experiment("digits_panoptic")
    assert config.data.dataset == "digits_panoptic"
    assert (config.data.image_size, config.data.batch_size) == (64, 16)
    assert (config.task.sigma, config.task.small_instance_area) == (3.0, 256)
    assert config.optimizer.name == "adamw"
    assert config.data.num_eval_examples % config.data.eval_batch_size == 0
    assert config.model.axial_beyond_stride == DIGITS_AXIAL_BEYOND_STRIDE == 16


def test_model_axial_beyond_stride_reaches_the_backbone():
    config = get_experiment("digits_panoptic")
    assert build_model(config).backbone.axial_beyond_stride == 16
    default = get_experiment("digits_panoptic", ["model.axial_beyond_stride=none"])
    assert build_model(default).backbone.axial_beyond_stride == 2


def test_overrides_parse_to_the_field_types():
    config = get_experiment("digits_panoptic", [
        "trainer.train_steps=20", "optimizer.learning_rate=1e-3", "trainer.eval_flip=true",
        "trainer.eval_scales=0.75,1.0,1.25", "data.crop_size=(32, 48)",
        "model.output_stride=none", "model.spans=None,65,65,65,65", "model.name=axial_deeplab_s",
        "model.synchronized_bn=false"])
    assert config.trainer.train_steps == 20 and isinstance(config.trainer.train_steps, int)
    assert config.optimizer.learning_rate == 1e-3
    assert config.trainer.eval_flip is True
    assert config.trainer.eval_scales == (0.75, 1.0, 1.25)
    assert config.data.crop_size == (32, 48)
    assert config.model.output_stride is None
    assert config.model.spans == (None, 65, 65, 65, 65)
    assert config.model.name == "axial_deeplab_s"
    assert config.model.synchronized_bn is False
    # The registered experiment itself is unchanged.
    assert get_experiment("digits_panoptic").trainer.train_steps != 20


@pytest.mark.parametrize("override, key", [
    ("trainer.train_steps=many", "trainer.train_steps"),
    ("trainer.train_steps=1.5", "trainer.train_steps"),
    ("optimizer.learning_rate=fast", "optimizer.learning_rate"),
    ("trainer.eval_flip=maybe", "trainer.eval_flip"),
    ("data.crop_size=64,x", "data.crop_size"),
    ("task.post_processing.nms_kernel=big", "task.post_processing.nms_kernel"),
    ("task.labels.label_divisor=1.5", "task.labels.label_divisor"),
])
def test_a_wrongly_typed_value_names_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        get_experiment("digits_panoptic", [override])


def test_an_unknown_key_names_it_and_the_allowed_keys():
    with pytest.raises(ValueError) as error:
        get_experiment("digits_panoptic", ["trainer.train_step=5"])
    message = str(error.value)
    assert "trainer.train_step'" in message
    for key in ("trainer.train_steps", "trainer.checkpoint_interval", "trainer.summary_interval",
                "trainer.eval_interval", "data.batch_size", "optimizer.learning_rate",
                "model.name"):
        assert key in message
    with pytest.raises(ValueError, match="section.field=value"):
        get_experiment("digits_panoptic", ["trainer.train_steps"])
    with pytest.raises(ValueError, match="Unknown override key 'loss.weight'"):
        get_experiment("digits_panoptic", ["loss.weight=1"])
    # A classification task has no panoptic fields.
    with pytest.raises(ValueError, match="Unknown override key 'task.sigma'"):
        get_experiment("digits_classification", ["task.sigma=2"])


def test_nested_overrides_reach_the_labels_and_post_processing():
    config = get_experiment("digits_panoptic", ["task.post_processing.center_threshold=0.3",
                                                "task.labels.label_divisor=512",
                                                "task.post_processing.nms_kernel=9"])
    assert config.task.post_processing == dataclasses.replace(
        DIGITS_POST_PROCESSING, center_threshold=0.3, nms_kernel=9)
    assert config.task.labels == dataclasses.replace(DIGITS_PANOPTIC, label_divisor=512)
    with pytest.raises(ValueError, match="nms_kernel"):
        get_experiment("digits_panoptic", ["task.post_processing.nms_kernel=4"])


def test_configs_are_frozen():
    config = get_experiment("digits_panoptic")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.trainer.train_steps = 1


def test_save_and_load_round_trip(tmp_path):
    config = get_experiment("cityscapes_panoptic_axial_deeplab_l",
                            ["trainer.train_steps=7", "trainer.eval_scales=0.5,1.0"])
    path = save_config(config, str(tmp_path))
    assert json.load(open(path))["trainer"]["train_steps"] == 7
    assert json.load(open(path))["task"]["type"] == "panoptic"
    assert load_config(path) == config
    assert load_config(str(tmp_path)) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    classification = get_experiment("digits_classification")
    save_config(classification, str(tmp_path))
    assert load_config(str(tmp_path)) == classification
    assert isinstance(load_config(str(tmp_path)).task, ClassificationTaskConfig)
    values = json.load(open(path))
    values["trainer"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        experiments.from_dict(values)


def test_apply_overrides_composes():
    base = get_experiment("digits_classification")
    config = apply_overrides(apply_overrides(base, ["data.batch_size=8"]), ["data.seed=3"])
    assert (config.data.batch_size, config.data.seed) == (8, 3)


def test_build_model_sizes_the_model_from_the_task():
    config = get_experiment("digits_panoptic", ["data.image_size=32"])
    model = build_model(config)
    assert model.labels == DIGITS_PANOPTIC
    assert not model.synchronized_bn and not model.backbone.synchronized_bn
    synced = build_model(config, num_replicas=2)
    assert synced.synchronized_bn and synced.backbone.synchronized_bn
    norms = [layer for layer in synced._flatten_layers() if hasattr(layer, "synchronized")]
    assert norms and all(layer.synchronized for layer in norms)
    forced_off = build_model(apply_overrides(config, ["model.synchronized_bn=false"]), 2)
    assert not forced_off.synchronized_bn
    dropping = build_model(apply_overrides(config, ["model.drop_path_rate=0.1"]))
    assert dropping.backbone.drop_path_rate == 0.1
    assert any(layer.rate > 0 for layer in dropping._flatten_layers()
               if type(layer).__name__ == "DropPath")
    classifier = build_model(get_experiment("digits_classification"))
    assert classifier.input_shape == (None, 32, 32, 1)
    assert classifier.output_shape == (None, 10)


def test_loss_and_post_processor_take_the_task_values():
    from axial_keras.panoptic import PanopticDeepLabLoss, PanopticPostProcessor

    task = get_experiment("digits_panoptic").task
    assert isinstance(task, PanopticTaskConfig)
    loss = PanopticDeepLabLoss(task.labels, **panoptic_loss_args(task))
    assert (loss.center_weight, loss.targets.sigma) == (task.center_weight, 3.0)
    post = PanopticPostProcessor(task.labels, task.post_processing)
    settings = post.settings
    assert (settings.center_threshold, settings.nms_kernel, settings.keep_k_centers) == (0.5, 11, 16)

"""Experiments: one registry of frozen dataclass configs, typed `section.field=value` overrides.

An experiment has five sections: `task` (what is learned: a `PanopticTaskConfig` with the
labels, loss and post-processing, or a `ClassificationTaskConfig`),
`model` (a registry model name and its options), `data` (where examples come from),
`optimizer` and `trainer` (loop lengths and intervals). Variants are data: each registered
experiment is one `ExperimentConfig` value.

Overrides name a field by its dotted path, nested values included
(`task.post_processing.center_threshold=0.3`, `task.labels.label_divisor=512`).

Example:
>>> config = get_experiment("digits_panoptic", ["trainer.train_steps=20", "data.batch_size=4"])
>>> config.trainer.train_steps, config.data.batch_size
(20, 4)
>>> model = build_model(config)
"""

import dataclasses
import os
import typing
from typing import Any, ClassVar, Dict, Iterable, List, Optional, Tuple, Union

from axial_keras.data.digits_panoptic import (DIGITS_AXIAL_BEYOND_STRIDE, DIGITS_PANOPTIC,
                                              DIGITS_POST_PROCESSING)
from axial_keras.files import read_json, write_json
from axial_keras.labels import CITYSCAPES, PanopticLabels
from axial_keras.panoptic.postprocessing import PostProcessingSettings

COCO_NUM_THING_CLASSES = 80


@dataclasses.dataclass(frozen=True)
class PanopticTaskConfig:
    """What a panoptic experiment learns (Axial-DeepLab).

    Attributes:
        labels: the label space (`axial_keras.labels.PanopticLabels`).
        sigma: centre Gaussian standard deviation in pixels (loss targets).
        small_instance_area: instances with fewer pixels get `small_instance_weight`.
        small_instance_weight: semantic loss weight on small instances' pixels.
        top_k_percent: fraction of hardest pixels in the bootstrapped cross-entropy.
        semantic_weight, center_weight, offset_weight: loss term weights.
        post_processing: `PostProcessingSettings` of evaluation and of the exported model.
    """

    TYPE: ClassVar[str] = "panoptic"

    labels: PanopticLabels = DIGITS_PANOPTIC
    sigma: float = 8.0
    small_instance_area: int = 4096
    small_instance_weight: float = 3.0
    top_k_percent: float = 0.2
    semantic_weight: float = 1.0
    center_weight: float = 200.0
    offset_weight: float = 0.01
    post_processing: PostProcessingSettings = PostProcessingSettings()


@dataclasses.dataclass(frozen=True)
class ClassificationTaskConfig:
    """What a classification experiment learns (Axial-ResNet).

    Attributes:
        num_classes: number of image classes.
        label_smoothing: cross-entropy label smoothing.
    """

    TYPE: ClassVar[str] = "classification"

    num_classes: int = 10
    label_smoothing: float = 0.0


TASK_TYPES = {config.TYPE: config for config in (PanopticTaskConfig, ClassificationTaskConfig)}
TaskConfig = Union[PanopticTaskConfig, ClassificationTaskConfig]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which registry model, and options passed to `axial_keras.models.get_model`.

    Attributes:
        name: a name from `axial_keras.models.list_models()`.
        output_stride: backbone output stride (8, 16 or 32); None keeps the registry's.
        drop_path_rate: stochastic depth rate (the registry's schedule); None keeps the
            registry's (0.2 for axial_deeplab_{s,m,l,xl}, as deeplab2).
        spans: attention span per stage (None = global, odd int = local window); empty
            keeps the registry default.
        axial_beyond_stride: blocks whose input stride is at least this use axial
            attention, the others 3x3 convolutions; None keeps the registry's.
        input_size: classification only: the fixed [height, width] of the input.
        input_channels: classification only: input channels.
        synchronized_bn: batch statistics all-reduced across replicas; None turns it on
            whenever training runs on more than one replica.
    """

    name: str = "axial_deeplab_tiny"
    output_stride: Optional[int] = None
    drop_path_rate: Optional[float] = None
    spans: Tuple[Optional[int], ...] = ()
    axial_beyond_stride: Optional[int] = None
    input_size: Tuple[int, ...] = ()
    input_channels: int = 3
    synchronized_bn: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where examples come from.

    Attributes:
        dataset: "digits_panoptic" (generated), "digits" (classification) or "tfrecord"
            (files written by `python -m axial_keras.data.convert`).
        train_file_pattern, eval_file_pattern: TFRecord globs ("tfrecord" only).
        num_train_examples, num_eval_examples: generated set sizes (digits only; training
            scenes come from the training digits with `seed`, evaluation scenes from the
            held-out digits with `seed + 1`, as the `model.fit` demo does).
        image_size: generated image side (digits only).
        crop_size: [height, width] of training crops ("tfrecord"); eval pads to it.
        min_scale, max_scale: random scale range for training augmentation.
        batch_size: global training batch (split across replicas).
        eval_batch_size: global evaluation batch (the evaluation set is padded with void
            examples to whole batches).
        shuffle_buffer: examples in the shuffle buffer.
        seed: data seed.
    """

    dataset: str = "digits_panoptic"
    train_file_pattern: str = ""
    eval_file_pattern: str = ""
    num_train_examples: int = 2400
    num_eval_examples: int = 200
    image_size: int = 64
    crop_size: Tuple[int, ...] = (64, 64)
    min_scale: float = 1.0
    max_scale: float = 1.0
    batch_size: int = 16
    eval_batch_size: int = 32
    shuffle_buffer: int = 1024
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        name: "radam_lookahead" (the paper's), "radam", "adamw", "adam" or "sgd".
        learning_rate: peak learning rate (after warm-up).
        warmup_steps: linear warm-up steps from 0.
        schedule: "polynomial" (power `decay_power` to `end_learning_rate` at train_steps),
            "cosine" or "constant".
        decay_power: polynomial decay power.
        end_learning_rate: learning rate at the last step.
        weight_decay: decoupled weight decay (0 disables).
        lookahead_sync_period: Lookahead's k (fast steps per slow update).
        lookahead_slow_step_size: Lookahead's alpha.
        momentum: SGD momentum.
        global_clipnorm: clip the global gradient norm (0 disables).
    """

    name: str = "adamw"
    learning_rate: float = 4e-3
    warmup_steps: int = 100
    schedule: str = "cosine"
    decay_power: float = 0.9
    end_learning_rate: float = 0.0
    weight_decay: float = 1e-4
    lookahead_sync_period: int = 6
    lookahead_slow_step_size: float = 0.5
    momentum: float = 0.9
    global_clipnorm: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Loop lengths, intervals and evaluation options.

    Attributes:
        train_steps: total optimizer steps.
        steps_per_loop: steps per inner `tf.function` loop (one host round trip).
        checkpoint_interval: steps between checkpoints.
        summary_interval: steps between TensorBoard scalar summaries.
        eval_interval: steps between evaluations in train_and_eval.
        eval_steps: evaluation batches (-1 = the whole eval set).
        max_checkpoints_to_keep: checkpoints kept in model_dir.
        best_metric: evaluation metric whose best value is exported ("pq", "miou", "accuracy").
        eval_scales: multi-scale evaluation input scales (1.0 alone = single scale).
        eval_flip: also average horizontally flipped predictions at evaluation.
        seed: model initialisation seed.
        mixed_precision: Keras dtype policy ("float32", "mixed_float16", "mixed_bfloat16").
    """

    train_steps: int = 2100
    steps_per_loop: int = 50
    checkpoint_interval: int = 300
    summary_interval: int = 50
    eval_interval: int = 700
    eval_steps: int = -1
    max_checkpoints_to_keep: int = 3
    best_metric: str = "pq"
    eval_scales: Tuple[float, ...] = (1.0,)
    eval_flip: bool = False
    seed: int = 0
    mixed_precision: str = "float32"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a name and its five sections."""

    name: str
    task: TaskConfig = PanopticTaskConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig()


SECTIONS = ("task", "model", "data", "optimizer", "trainer")

_EXPERIMENTS: Dict[str, ExperimentConfig] = {}


def register(config: ExperimentConfig) -> ExperimentConfig:
    """Adds `config` to the registry under `config.name`."""
    if config.name in _EXPERIMENTS:
        raise ValueError(f"Experiment {config.name!r} is already registered.")
    _EXPERIMENTS[config.name] = config
    return config


def list_experiments() -> List[str]:
    """Registered experiment names, sorted."""
    return sorted(_EXPERIMENTS)


def get_experiment(name: str, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """The registered experiment `name` with `section.field=value` overrides applied.

    Raises:
        ValueError: for an unknown experiment name or a bad override.
    """
    if name not in _EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r}; registered: {', '.join(list_experiments())}.")
    return apply_overrides(_EXPERIMENTS[name], overrides)


def _leaf_keys(prefix: str, value: Any) -> List[str]:
    """Dotted paths of the overridable fields under a dataclass value."""
    keys = []
    for field in dataclasses.fields(value):
        child = getattr(value, field.name)
        if dataclasses.is_dataclass(child) and not isinstance(child, PanopticLabels):
            keys.extend(_leaf_keys(f"{prefix}{field.name}.", child))
        elif isinstance(child, PanopticLabels):
            keys.extend(f"{prefix}{field.name}.{name}" for name in ("label_divisor", "ignore_label"))
        else:
            keys.append(prefix + field.name)
    return keys


def allowed_keys(config: ExperimentConfig) -> List[str]:
    """Every `section.field` (or `section.field.subfield`) override key of `config`."""
    return [key for section in SECTIONS
            for key in _leaf_keys(f"{section}.", getattr(config, section))]


def _parse_value(key: str, text: str, annotation) -> Any:
    """Parses `text` as `annotation` (int, float, bool, str, Optional[...] or Tuple[..., ...])."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        if text.strip().lower() in ("none", "null", ""):
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(key, text, inner[0])
    if origin in (tuple, Tuple):
        element = args[0] if args else str
        items = [item for item in text.replace(" ", "").strip("()[]").split(",") if item]
        return tuple(_parse_value(key, item, element) for item in items)
    try:
        if annotation is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        if annotation is str:
            return text
    except ValueError:
        pass
    else:
        raise TypeError(f"Override {key!r}: unsupported field type {annotation!r}.")
    raise ValueError(f"Override {key!r}: {text!r} is not a valid {getattr(annotation, '__name__', annotation)}.")


def _replace(value: Any, path: List[str], text: str, key: str) -> Any:
    """`value` (a dataclass) with the field at `path` set to `text` parsed by its type."""
    field, rest = path[0], path[1:]
    child = getattr(value, field)
    if rest:
        return dataclasses.replace(value, **{field: _replace(child, rest, text, key)})
    annotation = typing.get_type_hints(type(value))[field]
    return dataclasses.replace(value, **{field: _parse_value(key, text, annotation)})


def apply_overrides(config: ExperimentConfig, overrides: Iterable[str]) -> ExperimentConfig:
    """Applies `section.field=value` strings to `config`; returns the new config.

    Raises:
        ValueError: naming the key (and the allowed keys) for an unknown key, a string
            without `=`, or a value that does not parse as the field's type.
    """
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"Override {override!r} is not of the form section.field=value.")
        key, text = override.split("=", 1)
        key = key.strip()
        allowed = allowed_keys(config)
        if key not in allowed:
            raise ValueError(f"Unknown override key {key!r}; allowed keys: {', '.join(allowed)}.")
        section, *path = key.split(".")
        config = dataclasses.replace(
            config, **{section: _replace(getattr(config, section), path, text, key)})
    return config


def to_dict(config: ExperimentConfig) -> Dict[str, Any]:
    """A JSON-ready dict of `config` (the task section names its type under `type`)."""
    values = dataclasses.asdict(config)
    values["task"] = {"type": config.task.TYPE, **values["task"]}
    return values


def _from_values(cls: type, values: Dict[str, Any], where: str) -> Any:
    """The dataclass `cls` from its `dataclasses.asdict` form (lists become tuples)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"Unknown keys in {where}: {sorted(unknown)}.")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = (hint.from_config(value) if hasattr(hint, "from_config")
                     else _from_values(hint, value, f"{where}.{name}"))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def from_dict(values: Dict[str, Any]) -> ExperimentConfig:
    """The inverse of `to_dict`; unknown keys are an error."""
    sections = {}
    for section in SECTIONS:
        given = dict(values.get(section, {}))
        if section == "task":
            kind = given.pop("type", None)
            if kind not in TASK_TYPES:
                raise ValueError(f"task.type must be one of {sorted(TASK_TYPES)}, got {kind!r}.")
            section_type = TASK_TYPES[kind]
        else:
            section_type = typing.get_type_hints(ExperimentConfig)[section]
        sections[section] = _from_values(section_type, given, f"section {section!r}")
    return ExperimentConfig(name=values["name"], **sections)


def save_config(config: ExperimentConfig, directory: str) -> str:
    """Writes `directory/config.json` atomically; returns its path."""
    return write_json(os.path.join(directory, "config.json"), to_dict(config))


def load_config(path: str) -> ExperimentConfig:
    """Reads a config written by `save_config` (a file, or the directory holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    return from_dict(read_json(path))


def build_model(config: ExperimentConfig, num_replicas: int = 1):
    """The Keras model `config.model` describes, sized by `config.task`.

    Panoptic models take `[B, H, W, 3]` RGB in [0, 255]; classifiers take
    `config.model.input_size` with `input_channels` channels.

    Args:
        config: the experiment.
        num_replicas: replicas the model trains on; with `model.synchronized_bn=None`,
            more than one synchronizes batch norm across them.
    """
    from axial_keras.models.registry import get_model

    task, model = config.task, config.model
    synchronized = (model.synchronized_bn if model.synchronized_bn is not None
                    else num_replicas > 1)
    overrides: Dict[str, Any] = {"synchronized_bn": True} if synchronized else {}
    if isinstance(task, PanopticTaskConfig):
        backbone = _backbone_options(model)
        if synchronized:
            backbone["synchronized_bn"] = True
        overrides.update(labels=task.labels, backbone=backbone)
    else:
        overrides.update(num_classes=task.num_classes, **_backbone_options(model))
        if model.input_size:
            overrides["input_shape"] = (*model.input_size, model.input_channels)
    return get_model(model.name, **overrides)


def _backbone_options(model: ModelConfig) -> Dict[str, Any]:
    """The AxialResNet arguments `model` sets (unset ones keep the registry's)."""
    options: Dict[str, Any] = {}
    if model.output_stride is not None:
        options["output_stride"] = model.output_stride
    if model.drop_path_rate is not None:
        options["drop_path_rate"] = model.drop_path_rate
    if model.spans:
        options["spans"] = tuple(model.spans)
    if model.axial_beyond_stride is not None:
        options["axial_beyond_stride"] = model.axial_beyond_stride
    return options


def panoptic_loss_args(task: PanopticTaskConfig) -> Dict[str, Any]:
    """`PanopticDeepLabLoss` keyword arguments beyond the class list."""
    return dict(sigma=task.sigma, small_instance_area=task.small_instance_area,
                small_instance_weight=task.small_instance_weight,
                top_k_percent=task.top_k_percent, semantic_weight=task.semantic_weight,
                center_weight=task.center_weight, offset_weight=task.offset_weight)


# The embedded default: digits-panoptic at 64x64, sized for 2 CPU cores (the `make demo` job).
# The backbone takes 3x3 convolutions below stride 16 (`DIGITS_AXIAL_BEYOND_STRIDE`): at equal
# steps it learns the digit classes faster (held-out PQ 38.2, things 27.3 at 900 steps against
# 34.2 / 22.5 with attention from stride 4 on) and its step is 2.8x cheaper here. The limit
# was the digit class on held-out digits, and more scenes lift it where width and steps did
# not (3600 steps each, 2026-12-03): 2400 scenes PQ 49.4 (things 40.3); the same at backbone
# width 0.5 PQ 50.4; 7200 scenes PQ 56.5; 14400 scenes PQ 56.8; 14400 scenes at 5400 steps
# (each scene seen 6 times) PQ 58.9 (things 51.6, mIoU 0.636) in 7 min 38 s on 2 cores.
# One evaluation, at the end.
register(ExperimentConfig(
    name="digits_panoptic",
    task=PanopticTaskConfig(labels=DIGITS_PANOPTIC, sigma=3.0, small_instance_area=16 * 16,
                            post_processing=DIGITS_POST_PROCESSING),
    model=ModelConfig(name="axial_deeplab_tiny", axial_beyond_stride=DIGITS_AXIAL_BEYOND_STRIDE),
    data=DataConfig(dataset="digits_panoptic", num_train_examples=14400, num_eval_examples=200,
                    image_size=64, crop_size=(64, 64), batch_size=16, eval_batch_size=40),
    optimizer=OptimizerConfig(name="adamw", learning_rate=6e-3, warmup_steps=270,
                              schedule="cosine", weight_decay=1e-4),
    trainer=TrainerConfig(train_steps=5400, steps_per_loop=50, checkpoint_interval=600,
                          summary_interval=50, eval_interval=5400, best_metric="pq"),
))

register(ExperimentConfig(
    name="digits_classification",
    task=ClassificationTaskConfig(num_classes=10),
    model=ModelConfig(name="axial_resnet_tiny", input_size=(32, 32),
                      input_channels=1),
    data=DataConfig(dataset="digits", image_size=32, crop_size=(32, 32), batch_size=32,
                    eval_batch_size=128),
    optimizer=OptimizerConfig(name="adamw", learning_rate=2e-3, warmup_steps=0,
                              schedule="cosine", weight_decay=1e-4),
    trainer=TrainerConfig(train_steps=540, steps_per_loop=45, checkpoint_interval=135,
                          summary_interval=45, eval_interval=270, best_metric="accuracy"),
))


def _paper_panoptic(name: str, model_name: str, dataset: str, batch_size: int,
                    train_steps: int, crop: Tuple[int, int], spans: Tuple[Optional[int], ...]) -> ExperimentConfig:
    """The paper's recipe: RAdam + Lookahead, LR 1e-3, linear warm-up, polynomial decay."""
    if dataset == "cityscapes":
        task = PanopticTaskConfig(
            labels=CITYSCAPES, sigma=8.0, small_instance_area=4096,
            post_processing=PostProcessingSettings(center_threshold=0.1, nms_kernel=13,
                                                   keep_k_centers=200, stuff_area_limit=2048))
        folder, eval_batch = "data/cityscapes_panoptic", 1
    else:
        # Class names come from the converted records' metadata.json.
        task = PanopticTaskConfig(
            labels=PanopticLabels.from_ids(133, range(COCO_NUM_THING_CLASSES), label_divisor=256,
                                           ignore_label=255),
            sigma=8.0, small_instance_area=4096,
            post_processing=PostProcessingSettings(center_threshold=0.1, nms_kernel=41,
                                                   keep_k_centers=200, stuff_area_limit=4096))
        folder, eval_batch = "data/coco_panoptic", 1
    return ExperimentConfig(
        name=name, task=task,
        model=ModelConfig(name=model_name, output_stride=16, spans=spans),
        data=DataConfig(dataset="tfrecord", train_file_pattern=f"{folder}/train-*.tfrecord",
                        eval_file_pattern=f"{folder}/val-*.tfrecord", crop_size=crop,
                        min_scale=0.5, max_scale=2.0, batch_size=batch_size,
                        eval_batch_size=eval_batch),
        optimizer=OptimizerConfig(name="radam_lookahead", learning_rate=1e-3,
                                  warmup_steps=2000, schedule="polynomial", decay_power=0.9,
                                  weight_decay=0.0),
        trainer=TrainerConfig(train_steps=train_steps, steps_per_loop=100,
                              checkpoint_interval=1000, summary_interval=100,
                              eval_interval=5000, best_metric="pq"),
    )


# COCO: 641x641 crops, batch 64, 200k steps; global attention fits 641 px.
for _size in ("s", "m", "l"):
    register(_paper_panoptic(f"coco_panoptic_axial_deeplab_{_size}", f"axial_deeplab_{_size}",
                             "coco", 64, 200_000, (641, 641), ()))
# Cityscapes: 1025x2049 crops, batch 32, 60k steps; span 65 past the stem (PAPER.md).
for _size in ("l", "xl"):
    register(_paper_panoptic(f"cityscapes_panoptic_axial_deeplab_{_size}",
                             f"axial_deeplab_{_size}", "cityscapes", 32, 60_000, (1025, 2049),
                             (None, 65, 65, 65, 65)))

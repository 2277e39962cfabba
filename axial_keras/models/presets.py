"""Presets: deeplab2's published Axial-DeepLab checkpoints, loadable by name (keras-hub style).

`from_preset(name)` downloads the deeplab2 archive into the Keras cache
(`keras.utils.get_file`), extracts it, converts the checkpoint once
(`convert.from_deeplab2`) and caches the converted `.keras` file; later calls load that.
It also takes a local `.tar.gz` in deeplab2's archive layout, a checkpoint directory or
prefix, a `.keras` file, or a folder written by `save_to_preset`.

The weights are Google Research's, from deeplab2's model zoo
(https://github.com/google-research/deeplab2), released under the Apache License 2.0;
they were trained on Cityscapes / ImageNet, whose own terms apply to the data.
"""

import dataclasses
import json
import os
import tarfile
import tempfile
from typing import Dict, List, Mapping, Optional

from absl import logging

import keras

from axial_keras.models.registry import get_variant, list_models
from axial_keras.panoptic.postprocessing import PostProcessingSettings

LICENSE = ("deeplab2 model zoo weights (Google Research), Apache License 2.0, "
           "https://github.com/google-research/deeplab2; trained on Cityscapes / ImageNet, "
           "whose terms apply to the data.")
_URL = "https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/"
_CONFIG = "configs/cityscapes/axial_deeplab/"
_CACHE_SUBDIR = os.path.join("axial_keras", "deeplab2")
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.weights.h5"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A published checkpoint: where it is, what builds it and what it scored.

    Attributes:
        model: str. Registry variant the checkpoint converts into.
        url: str. deeplab2's archive.
        config: str. deeplab2 config (or builder) that trained it.
        metrics: dict. Published results (Cityscapes val, single scale; PQ / mIoU by
            the official script, AP by deeplab2's pipeline).
        trainable_params: int. Trainable parameters (ours = deeplab2's).
        file_hash: str or None. SHA-256 of the archive, when known (not published).
        license: str. Terms of the weights.
    """

    model: str
    url: str
    config: str
    metrics: Mapping[str, float]
    trainable_params: int
    file_hash: Optional[str] = None
    license: str = LICENSE


PRESETS: Dict[str, Preset] = {}
for _config, _pq, _miou, _ap, _params in (
        ("axial_swidernet_1_1_1_os16", 66.1, 82.8, 37.18, 137_844_454),
        ("axial_swidernet_1_1_3_os16", 67.1, 83.5, 40.00, 395_380_582),
        ("axial_swidernet_1_1_4.5_os16", 68.0, 83.0, 39.51, 571_791_974),
        ("max_deeplab_s_backbone_os16", 64.5, 82.2, 35.55, 42_788_486),
        ("max_deeplab_l_backbone_os16", 66.3, 83.1, 38.09, 176_560_454)):
    PRESETS[f"{_config}_cityscapes"] = Preset(
        model=_config, url=f"{_URL}{_config}_axial_deeplab_cityscapes_trainfine.tar.gz",
        config=f"{_CONFIG}{_config}.textproto",
        metrics={"cityscapes_val_pq": _pq, "cityscapes_val_miou": _miou,
                 "cityscapes_val_ap_mask": _ap},
        trainable_params=_params)
for _backbone, _archive, _params in (
        ("axial_swidernet_1_1_1", "axial_swidernet_1_1_1_imagenet1k_strong_training_strategy",
         136_399_392),
        ("axial_swidernet_1_1_3", "axial_swidernet_1_1_3_imagenet1k_strong_training_strategy",
         393_935_520),
        ("axial_swidernet_1_1_4.5",
         "axial_swidernet_1_1_4.5_imagenet1k_strong_training_strategy", 570_346_912),
        ("max_deeplab_s_backbone",
         "max_deeplab_s_backbone_imagenet1k_strong_training_strategy", 41_343_424),
        ("max_deeplab_l_backbone",
         "max_deeplab_l_backbone_imagenet1k_strong_training_strategy", 175_115_392),
        ("axial_resnet_50_gelu", "maxs_gelu_imagenet_22k_1k_224", 41_343_424)):
    PRESETS[f"{_backbone}_imagenet"] = Preset(
        model=_backbone, url=f"{_URL}{_archive}.tar.gz",
        config=("model/pixel_encoder/axial_resnet.py axial_resnet50" if "gelu" in _backbone
                else "model/encoder/axial_resnet_instances.py"),
        metrics={}, trainable_params=_params)


def list_presets() -> List[str]:
    """Names of every preset, sorted."""
    return sorted(PRESETS)


def _cache_root(cache_dir: Optional[str]) -> str:
    return os.path.expanduser(cache_dir or os.environ.get("KERAS_HOME", "~/.keras"))


def _extract(archive: str, into: str) -> str:
    """Extracts a deeplab2 archive and returns its checkpoint prefix."""
    from axial_keras.models.convert import checkpoint_prefix

    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{archive} is not a readable deeplab2 archive (.tar.gz): "
                         f"{error}") from error
    try:
        return checkpoint_prefix(into)
    except ValueError as error:
        raise ValueError(f"{archive} holds no single TensorFlow checkpoint (a *.index file "
                         f"with its *.data-* shards): {error}") from error


def _preset_for_archive(path: str) -> Optional[str]:
    base = os.path.basename(path)
    return next((n for n, p in PRESETS.items() if os.path.basename(p.url) == base), None)


def _download(name: str, preset: Preset, cache_dir: Optional[str]) -> str:
    # get_file falls back to /tmp/.keras when the cache root does not exist yet.
    os.makedirs(_cache_root(cache_dir), exist_ok=True)
    try:
        return keras.utils.get_file(
            fname=os.path.basename(preset.url), origin=preset.url, file_hash=preset.file_hash,
            cache_subdir=_CACHE_SUBDIR, cache_dir=_cache_root(cache_dir))
    except Exception as error:  # get_file raises bare Exceptions for fetch failures.
        raise ValueError(
            f"Cannot download preset {name!r} from {preset.url} ({error}). Download the "
            f"archive by hand and pass its path: from_preset('/path/to/"
            f"{os.path.basename(preset.url)}').") from error


def from_preset(name_or_path: str, name: Optional[str] = None, cache_dir: Optional[str] = None,
                **overrides) -> keras.Model:
    """Loads a preset by name, or a model from an archive, checkpoint, `.keras` or preset folder.

    Args:
        name_or_path: str. A name of `list_presets()`; a deeplab2 `.tar.gz`; a checkpoint
            directory or prefix; a `.keras` file; a `save_to_preset` folder.
        name: str or None. Registry variant for an archive or checkpoint (read from the
            checkpoint when None; an archive named as a preset's takes its variant).
        cache_dir: str or None. Keras cache root (default `$KERAS_HOME` or `~/.keras`).
        **overrides: constructor arguments for the converted model (e.g. `spans`,
            `input_shape`); the checkpoint is then converted again, not read from the
            converted cache.

    Raises:
        ValueError: for an unknown name (listing the known ones), an unreachable URL
            (naming it and the manual step), or an unreadable archive or checkpoint
            (naming the file).

    Example:
    >>> model = from_preset("max_deeplab_s_backbone_os16_cityscapes")
    """
    from axial_keras.models.convert import from_deeplab2

    if name_or_path in PRESETS:
        preset = PRESETS[name_or_path]
        converted = os.path.join(_cache_root(cache_dir), _CACHE_SUBDIR, f"{name_or_path}.keras")
        if not overrides and os.path.isfile(converted):
            return keras.saving.load_model(converted)
        archive = _download(name_or_path, preset, cache_dir)
        extracted = archive + ".extracted"
        prefix = _extract(archive, extracted)
        model = from_deeplab2(prefix, preset.model, **overrides)
        if not overrides:
            os.makedirs(os.path.dirname(converted), exist_ok=True)
            model.save(converted)
            logging.info("Converted %s once into %s.", name_or_path, converted)
        return model
    path = os.path.expanduser(name_or_path)
    if os.path.isfile(os.path.join(path, _CONFIG_FILE)):
        return _load_preset_folder(path)
    if os.path.isfile(path) and path.endswith(".keras"):
        return keras.saving.load_model(path)
    if os.path.isfile(path) and not path.endswith(".index"):
        with tempfile.TemporaryDirectory() as folder:
            known = _preset_for_archive(path)
            if name is None and known:
                name = PRESETS[known].model
            return from_deeplab2(_extract(path, folder), name, **overrides)
    if os.path.exists(path) or os.path.isfile(path + ".index"):
        return from_deeplab2(path, name, **overrides)
    raise ValueError(f"Unknown preset {name_or_path!r} (and no such file or folder). Known "
                     f"presets: {', '.join(list_presets())}.")


def preset_post_processing(model: keras.Model) -> PostProcessingSettings:
    """The post-processing the published numbers of `model`'s registry variant were
    evaluated with (its registry variant's `postprocessing`, deeplab2's convention).

    Args:
        model: keras.Model. A panoptic model named as a registry variant (`from_preset`
            and `from_deeplab2` name their models so).

    Raises:
        ValueError: for a model whose variant records no post-processing.
    """
    record = (getattr(get_variant(model.name), "postprocessing", None)
              if model.name in list_models() else None)
    if record is None:
        known = sorted(name for name in list_models()
                       if getattr(get_variant(name), "postprocessing", None) is not None)
        raise ValueError(f"Model {model.name!r} is not a registry variant with recorded "
                         f"post-processing (those are: {', '.join(known)}).")
    return record


def save_to_preset(model: keras.Model, preset_dir: str) -> None:
    """Writes `model` as a preset folder (`config.json` + `model.weights.h5`) for `from_preset`.

    Args:
        model: keras.Model. Any registered (serializable) model of this package.
        preset_dir: str. Folder to write (created if missing).
    """
    os.makedirs(preset_dir, exist_ok=True)
    with open(os.path.join(preset_dir, _CONFIG_FILE), "w") as f:
        json.dump(keras.saving.serialize_keras_object(model), f)
    model.save_weights(os.path.join(preset_dir, _WEIGHTS_FILE))


def _load_preset_folder(preset_dir: str) -> keras.Model:
    with open(os.path.join(preset_dir, _CONFIG_FILE)) as f:
        model = keras.saving.deserialize_keras_object(json.load(f))
    model.load_weights(os.path.join(preset_dir, _WEIGHTS_FILE))
    return model

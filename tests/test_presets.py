"""Presets: deeplab2 archives by name or path, converted once and cached. Archives are built
here from the numeric fixtures in deeplab2's layout; no test touches the network (the
"downloads" are file:// URLs)."""

import json
import os
import tarfile

import numpy as np
import pytest

from axial_keras.models import from_preset, list_presets
from axial_keras.models.presets import PRESETS, Preset, save_to_preset
from axial_keras.models.registry import list_models
from zoo_fixtures import (FIXTURES, TOLERANCE, deeplab2_archive, numeric_path,
                          relative_errors)

SWIDERNET = numeric_path("axial_swidernet_1_1_1_w0.125")
GELU = numeric_path("maxs_gelu_w0.25")
STRUCTURE = os.path.join(FIXTURES, "deeplab2_zoo", "structure")
pytestmark = pytest.mark.skipif(not os.path.isdir(SWIDERNET),
                                reason="deeplab2 zoo numeric fixtures not found")


def test_every_published_model_is_a_preset():
    assert len(list_presets()) == 11
    for name, preset in PRESETS.items():
        assert preset.model in list_models()
        assert preset.url.startswith("https://storage.googleapis.com/gresearch/tf-deeplab/"
                                     "checkpoint/") and preset.url.endswith(".tar.gz")
        assert "Apache License 2.0" in preset.license
        record = (f"cityscapes_{preset.model}" if name.endswith("_cityscapes") else
                  "imagenet_maxs_gelu" if "gelu" in name else f"imagenet_{preset.model}")
        with open(os.path.join(STRUCTURE, record, "summary.json")) as f:
            summary = json.load(f)
        counted = (summary["trainable_params"] if name.endswith("_cityscapes")
                   else summary["by_checkpoint_item"]["encoder"]["trainable_params"])
        assert preset.trainable_params == counted
    assert PRESETS["axial_swidernet_1_1_4.5_os16_cityscapes"].metrics == {
        "cityscapes_val_pq": 68.0, "cityscapes_val_miou": 83.0, "cityscapes_val_ap_mask": 39.51}


def test_a_local_archive_loads_and_reproduces_deeplab2(tmp_path):
    model = from_preset(deeplab2_archive(SWIDERNET, tmp_path / "swidernet.tar.gz",
                                         "any_folder_name"))
    assert model.name == "axial_swidernet_1_1_1_os16"
    errors = relative_errors(model, SWIDERNET)
    assert len(errors) == 20 and max(errors.values()) <= TOLERANCE


def test_a_named_preset_downloads_converts_once_and_caches(tmp_path, monkeypatch):
    # Named as deeplab2 names the GeLU archive: the preset's variant decides the
    # activation that the checkpoint cannot show.
    archive = deeplab2_archive(GELU, tmp_path / "maxs_gelu_imagenet_22k_1k_224.tar.gz")
    monkeypatch.setitem(PRESETS, "test_gelu", Preset(
        model="axial_resnet_50_gelu", url=f"file://{archive}", config="test", metrics={},
        trainable_params=0))
    cache = tmp_path / "cache"
    first = from_preset("test_gelu", cache_dir=str(cache))
    converted = cache / "axial_keras" / "deeplab2" / "test_gelu.keras"
    assert converted.is_file()
    assert (cache / "axial_keras" / "deeplab2" / "maxs_gelu_imagenet_22k_1k_224.tar.gz").is_file()
    assert first.activation == "gelu"
    assert max(relative_errors(first, GELU).values()) <= 1e-5
    os.remove(archive)  # the second load reads only the converted cache
    second = from_preset("test_gelu", cache_dir=str(cache))
    assert all(np.array_equal(np.array(a), np.array(b))
               for a, b in zip(first.weights, second.weights))
    # A local archive under the same name also gets the preset's variant.
    local = deeplab2_archive(GELU, tmp_path / "maxs_gelu_imagenet_22k_1k_224.tar.gz")
    assert from_preset(local).activation == "gelu"


def test_download_and_archive_failures_name_the_problem(tmp_path, monkeypatch):
    missing = f"file://{tmp_path}/nowhere/max_deeplab_s_backbone_os16.tar.gz"
    monkeypatch.setitem(PRESETS, "test_missing", Preset(
        model="max_deeplab_s_backbone_os16", url=missing, config="test", metrics={},
        trainable_params=0))
    with pytest.raises(ValueError, match=rf"from {missing} .*Download the archive by hand and "
                                         rf"pass its path"):
        from_preset("test_missing", cache_dir=str(tmp_path / "cache"))
    whole = deeplab2_archive(SWIDERNET, tmp_path / "whole.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    with open(whole, "rb") as f:
        cut.write_bytes(f.read()[: os.path.getsize(whole) // 2])
    with pytest.raises(ValueError, match=rf"{cut} is not a readable deeplab2 archive"):
        from_preset(str(cut))
    foreign = tmp_path / "foreign.tar.gz"
    (tmp_path / "README").write_text("not a checkpoint")
    with tarfile.open(foreign, "w:gz") as tar:
        tar.add(tmp_path / "README", arcname="README")
    with pytest.raises(ValueError, match=rf"{foreign} holds no single TensorFlow checkpoint"):
        from_preset(str(foreign))
    with pytest.raises(ValueError, match=r"Unknown preset 'axial_swidernet'.*Known presets: "
                                         r"axial_resnet_50_gelu_imagenet, "):
        from_preset("axial_swidernet")


def test_checkpoint_folders_and_preset_folders_load(tmp_path):
    model = from_preset(os.path.join(GELU, "checkpoint"), name="axial_resnet_50_gelu")
    save_to_preset(model, str(tmp_path / "preset"))
    assert sorted(os.listdir(tmp_path / "preset")) == ["config.json", "model.weights.h5"]
    again = from_preset(str(tmp_path / "preset"))
    assert again.activation == "gelu"
    assert max(relative_errors(again, GELU).values()) <= 1e-5

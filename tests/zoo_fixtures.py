"""deeplab2 reference fixtures and the float outputs of our converted models under their keys.

Shared by the parity tests and the JAX subprocess they start (so it imports no TensorFlow).
"""

import os
import tarfile

import numpy as np

import keras

FIXTURES = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                         "shared", "fixtures"))
FIXTURES = os.environ.get("DEEPLAB2_FIXTURES", FIXTURES)
ZOO = os.path.join(FIXTURES, "deeplab2_zoo", "numeric")
# fixture folder -> (registry name the converter must recognise, name passed to it).
NUMERIC = {
    "axial_swidernet_1_1_1_w0.125": ("axial_swidernet_1_1_1_os16", None),
    "max_deeplab_s_backbone_w0.25": ("max_deeplab_s_backbone_os16", None),
    "max_deeplab_l_backbone_w0.125": ("max_deeplab_l_backbone_os16", None),
    "maxs_gelu_w0.25": ("axial_resnet_50_gelu", "axial_resnet_50_gelu"),
}
# The bar of the fixtures' READMEs: max |ours - deeplab2| / max |deeplab2| per output.
TOLERANCE = 1e-4
ENDPOINTS = tuple(f"{kind}{i}" for i in range(1, 6) for kind in ("stage", "res")) + (
    "backbone_output",)
_HEADS = (("semantic_logits", "semantic_head", "semantic_logits"),
          ("center_heatmap", "center_head", "center_heatmap"),
          ("offset_map", "offset_head", "center_offsets"))


def numeric_path(fixture: str) -> str:
    return os.path.join(ZOO, fixture)


def deeplab2_archive(fixture: str, path, folder: str = "ckpt") -> str:
    """A .tar.gz in deeplab2's layout: one folder holding ckpt-N.index and its shard."""
    with tarfile.open(path, "w:gz") as tar:
        for name in ("ckpt-0.index", "ckpt-0.data-00000-of-00001"):
            tar.add(os.path.join(fixture, "checkpoint", name), arcname=f"{folder}/{name}")
    return str(path)


def float_outputs(model: keras.Model, x: np.ndarray) -> dict:
    """Every float output deeplab2's fixtures hold, computed by our model, under their keys."""
    if not hasattr(model, "backbone"):
        return {k: np.asarray(v) for k, v in model(x, training=False).items()}
    out = {f"encoder/{k}": np.asarray(v)
           for k, v in model.backbone(x / 127.5 - 1.0, training=False).items()}
    inner = {"decoder/semantic_features": model.get_layer("semantic_decoder").output,
             "decoder/instance_features": model.get_layer("instance_decoder").output}
    inner.update({f"raw/{key}": model.get_layer(layer).output for key, layer, _ in _HEADS})
    out.update({k: np.asarray(v) for k, v in
                keras.Model(model.inputs[0], inner)(x, training=False).items()})
    full = model(x, training=False)
    for key, _, ours in _HEADS:
        out[key] = np.asarray(full[ours])
    out["center_heatmap"] = out["center_heatmap"][..., 0]
    out["semantic_probs"] = np.asarray(keras.ops.softmax(full["semantic_logits"], axis=-1))
    return out


def relative_errors(model: keras.Model, fixture_dir: str) -> dict:
    """max |ours - reference| / max |reference| for every float array of the fixture."""
    x = np.load(os.path.join(fixture_dir, "input.npy"))
    ref = np.load(os.path.join(fixture_dir, "outputs.npz"))
    got = float_outputs(model, x)
    errors = {}
    for key in ref.files:
        if ref[key].dtype.kind != "f" or key.startswith("instance_"):
            continue
        assert got[key].shape == ref[key].shape, (key, got[key].shape, ref[key].shape)
        errors[key] = float(np.abs(got[key] - ref[key]).max() / np.abs(ref[key]).max())
    return errors

"""The measured sections of `python -m benchmarks.run`; each returns a JSON-able dict.

Every section that times a model also measures the float32 matmul rate before and
after, in the same process, so its figures can be read as fractions of what the machine
delivered at that moment.
"""

import os
import tempfile
import time
from typing import Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from axial_keras.layers import AxialAttention
from axial_keras.models import get_model
from axial_keras.models.presets import save_to_preset
from axial_keras.panoptic import PanopticDeepLabLoss, PanopticPostProcessor
from benchmarks import measure, scene
from export import tflite
from export.runtime import load_exported
from export.saved_model import export_preset

GIB = 1024.0 ** 3
# How a forward or train step runs: `tf.function`, with XLA, or through Keras' own
# `predict_on_batch` / `compile` + `train_on_batch`.
VARIANTS = ("graph", "xla", "keras")
# The SavedModel signatures zoo_serve runs.
SIGNATURES = ("serving_uint8", "serving_default")
# The quick run's stand-in for a zoo model: 1/8 of the widths, one block per stage, narrow
# Panoptic-DeepLab heads (about 0.8 M parameters instead of 138 M).
TINY_ZOO = {
    "backbone": {"width_multiplier": 0.125, "stem_width_multiplier": 0.125,
                 "num_blocks": (1, 1, 1, 1)},
    "projection_channels": 32, "semantic_decoder_channels": 32,
    "semantic_low_level_channels": (16, 8), "semantic_head_channels": 32,
    "instance_projection_channels": 32, "instance_decoder_channels": 16,
    "instance_low_level_channels": (8, 4), "instance_head_channels": 16,
}


def _peak_around(run, matmul_size: int):
    """Runs `run()` between two matmul-rate measurements; returns (result, peaks)."""
    before = measure.matmul_peak_gflops(matmul_size)
    result = run()
    after = measure.matmul_peak_gflops(matmul_size)
    return result, {"matmul_size": matmul_size, "matmul_gflops_before": before,
                    "matmul_gflops_after": after, "matmul_gflops": (before + after) / 2.0}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}.")


def _set_policy(dtype: str) -> None:
    keras.config.set_dtype_policy(dtype)


def _classifier(model: str, output_stride: Optional[int]):
    kwargs = {"num_classes": 1000}
    if output_stride:
        kwargs["output_stride"] = output_stride
    return get_model(model, **kwargs)


def _timed_forward(net, images, variant: str):
    """(call, resolved jit_compile) of one inference variant (`VARIANTS`)."""
    if variant == "keras":
        return (lambda: net.predict_on_batch(images)), net.resolved_predict_jit_compile()
    jit_compile = variant == "xla"
    step = tf.function(lambda x: net(x, training=False), jit_compile=jit_compile)
    return (lambda: step(images)), jit_compile


def forward(model: str, size: int, batch: int, output_stride: Optional[int] = None,
            dtype: str = "float32", variant: str = "graph", repeats: int = 5,
            warmup: Optional[int] = None, matmul_size: int = 2048) -> Dict:
    """Inference images/s of a registry classifier, achieved GFLOP/s and peak memory.

    Args:
        variant: str. One of `VARIANTS`: `graph` is `tf.function`, `xla` the same with
            `jit_compile=True`, `keras` the user path `model.predict_on_batch` (the
            model's own `predict_jit_compile`, recorded as resolved).
        warmup: int or None. Untimed calls; None: 2, or 5 with XLA (its first few calls
            on CPU are up to 2x slower than the steady state, measured here).
    """
    _check_variant(variant)
    _set_policy(dtype)
    net = _classifier(model, output_stride)
    images = tf.random.stateless_normal((batch, size, size, 3), seed=(0, 1))
    call, jit_compile = _timed_forward(net, images, variant)
    if warmup is None:
        warmup = 5 if jit_compile else 2
    timing, peaks = _peak_around(lambda: measure.time_calls(call, repeats, warmup),
                                 matmul_size)
    madds = net.madds((1, size, size, 3))
    images_per_s = batch / timing["median_s"]
    gflops = 2.0 * madds * images_per_s / 1e9
    return {"model": model, "size": size, "batch": batch, "output_stride": net.backbone.output_stride,
            "dtype": dtype, "variant": variant, "jit_compile": jit_compile,
            "images_per_s": images_per_s, "madds_per_image": madds, "gflops": gflops,
            "peak_fraction": gflops / peaks["matmul_gflops"], **peaks, **timing,
            "peak_rss_gib": measure.peak_rss_bytes() / GIB}


def _training_setup(batch: int, size: int):
    """What a harness train step takes: SGD with momentum, softmax cross-entropy, and one
    random batch of images [batch, size, size, 3] with 1000-way labels."""
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    images = tf.random.stateless_normal((batch, size, size, 3), seed=(0, 1))
    labels = tf.random.stateless_uniform((batch,), seed=(2, 3), maxval=1000, dtype=tf.int32)
    return optimizer, loss_fn, images, labels


def _gradient_step(net, loss_fn, optimizer, jit_compile: bool = False):
    """The harness's training step as one `tf.function`: forward in training mode,
    `loss_fn(y, outputs)`, `tape.gradient` of the (scaled) loss, `optimizer.apply`."""

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, net(x, training=True))
        grads = tape.gradient(optimizer.scale_loss(loss), net.trainable_variables)
        optimizer.apply(grads, net.trainable_variables)
        return loss

    return step


def train(model: str, size: int, batch: int, output_stride: Optional[int] = 16,
          dtype: str = "float32", variant: str = "graph", repeats: int = 3,
          warmup: Optional[int] = None, matmul_size: int = 2048) -> Dict:
    """Training-step images/s (SGD with momentum, softmax cross-entropy) and peak memory.

    Args:
        variant: str. One of `VARIANTS`: `graph` is the harness's own step (forward,
            `tape.gradient`, `optimizer.apply` in one `tf.function`), `xla` the same with
            `jit_compile=True`, `keras` the user path (`model.compile` with its default
            `jit_compile="auto"`, then `train_on_batch`; the resolved setting is recorded).
        warmup: int or None. Untimed steps; None: 1, or 2 with XLA.
    """
    _check_variant(variant)
    _set_policy(dtype)
    net = _classifier(model, output_stride)
    optimizer, loss_fn, images, labels = _training_setup(batch, size)
    if variant == "keras":
        net.compile(optimizer=optimizer, loss=loss_fn)
        jit_compile, requested = bool(net.jit_compile), "auto"

        def call():
            return net.train_on_batch(images, labels)
    else:
        jit_compile = requested = variant == "xla"
        if dtype == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(net.trainable_variables)

        step = _gradient_step(net, loss_fn, optimizer, jit_compile)

        def call():
            return step(images, labels)
    if warmup is None:
        warmup = 2 if jit_compile else 1
    timing, peaks = _peak_around(lambda: measure.time_calls(call, repeats, warmup), matmul_size)
    madds = net.madds((1, size, size, 3))
    images_per_s = batch / timing["median_s"]
    return {"model": model, "size": size, "batch": batch, "output_stride": net.backbone.output_stride,
            "dtype": dtype, "variant": variant, "jit_compile": jit_compile,
            "jit_compile_requested": requested, "optimizer": "SGD(0.01, momentum=0.9)",
            "images_per_s": images_per_s, "madds_per_image": madds, **peaks, **timing,
            "peak_rss_gib": measure.peak_rss_bytes() / GIB}


def attention(lengths: Sequence[int], global_max_length: int, span: int, rows: int,
              channels: int = 64, num_heads: int = 8, key_dim: int = 8, value_dim: int = 16,
              repeats: int = 3, matmul_size: int = 2048) -> Dict:
    """Time of one AxialAttention call vs axis length, global span and a local span.

    Input `[1, L, rows, channels]`, attention along the L axis (`axis=1`), inference.
    """
    curves = {}

    def run():
        for name, layer_span in (("global", None), (f"local_{span}", span)):
            points = []
            for length in lengths:
                if layer_span is None and length > global_max_length:
                    continue
                layer = AxialAttention(num_heads=num_heads, key_dim=key_dim,
                                       value_dim=value_dim, axis=1, span=layer_span)
                x = tf.random.stateless_normal((1, length, rows, channels), seed=(0, length))
                call = tf.function(lambda t, layer=layer: layer(t, training=False))
                timing = measure.time_calls(lambda: call(x), repeats, warmup=1)
                points.append({"length": length, "ms": 1e3 * timing["median_s"],
                               "madds": layer.madds((1, length, rows, channels))})
            curves[name] = points

    _, peaks = _peak_around(run, matmul_size)
    return {"rows": rows, "channels": channels, "num_heads": num_heads, "key_dim": key_dim,
            "value_dim": value_dim, "span": span, "curves": curves, **peaks}


def postprocess(height: int, width: int, num_classes: int, centers: int,
                scenes: Sequence[str] = ("street", "noise"), nms_kernel: int = 13,
                stuff_area_limit: int = 2048, repeats: int = 5,
                matmul_size: int = 2048) -> Dict:
    """Milliseconds per image of `PanopticPostProcessor` (tf.function) on synthetic outputs."""
    things = tuple(range(num_classes - 8, num_classes))
    post = PanopticPostProcessor.from_ids(things, label_divisor=1000, num_classes=num_classes,
                                          nms_kernel=nms_kernel, keep_k_centers=centers,
                                          stuff_area_limit=stuff_area_limit)
    call = tf.function(lambda outputs: post(outputs))
    results = []

    def run():
        for name in scenes:
            if name == "street":
                outputs = scene.street_scene(height, width, num_classes, things,
                                             num_instances=centers)
            else:
                outputs = scene.noise_scene(height, width, num_classes)
            outputs = {k: tf.constant(v) for k, v in outputs.items()}
            timing = measure.time_calls(lambda: call(outputs)["panoptic"], repeats, warmup=2)
            panoptic = np.asarray(call(outputs)["panoptic"])
            instances = int(np.unique(panoptic[panoptic % 1000 > 0]).size)
            results.append({"scene": name, "ms": 1e3 * timing["median_s"],
                            "min_ms": 1e3 * timing["min_s"], "instances": instances})

    _, peaks = _peak_around(run, matmul_size)
    return {"height": height, "width": width, "num_classes": num_classes, "centers": centers,
            "nms_kernel": nms_kernel, "stuff_area_limit": stuff_area_limit, "scenes": results,
            **peaks}


def deeplab(model: str, height: int, width: int, spans: Sequence[Optional[int]],
            repeats: int = 2, matmul_size: int = 2048) -> Dict:
    """One-image forward of a registry Axial-DeepLab at full resolution, local spans."""
    net = get_model(model, num_classes=19, thing_class_ids=range(11, 19),
                    backbone={"spans": tuple(spans)})
    image = tf.random.stateless_uniform((1, height, width, 3), seed=(0, 1), maxval=255.0)
    step = tf.function(lambda x: net(x, training=False))
    before = measure.peak_rss_bytes()
    timing, peaks = _peak_around(lambda: measure.time_calls(lambda: step(image), repeats, 1),
                                 matmul_size)
    return {"model": model, "height": height, "width": width, "spans": list(spans),
            "seconds_per_image": timing["median_s"], "madds_per_image": net.madds(
                (1, height, width, 3)), "peak_rss_gib": measure.peak_rss_bytes() / GIB,
            "rss_before_gib": before / GIB, **peaks, **timing}


def deeplab_train(model: str, height: int, width: int, batch: int,
                  spans: Sequence[Optional[int]], instances: int = 20, repeats: int = 3,
                  warmup: int = 1, matmul_size: int = 2048) -> Dict:
    """Training-step images/s and peak memory of a registry Axial-DeepLab on crops.

    One `tf.function` step: the model in training mode, `PanopticDeepLabLoss` (its
    targets built from the labels inside the step, as the trainer does) on synthetic
    street-like panoptic labels (`scene.street_panoptic`, `instances` things per image),
    `tape.gradient`, SGD(0.01, momentum 0.9).
    """
    net = get_model(model, backbone={"spans": tuple(spans)})
    labels = net.labels
    loss_fn = PanopticDeepLabLoss(labels)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(net.trainable_variables)
    images = tf.random.stateless_uniform((batch, height, width, 3), seed=(0, 1), maxval=255.0)
    panoptic = tf.constant(np.stack([scene.street_panoptic(
        height, width, labels.num_classes, labels.thing_class_ids, instances,
        labels.label_divisor, seed=i) for i in range(batch)]))

    step = _gradient_step(net, loss_fn, optimizer)
    timing, peaks = _peak_around(lambda: measure.time_calls(lambda: step(images, panoptic),
                                                             repeats, warmup), matmul_size)
    return {"model": model, "height": height, "width": width, "batch": batch,
            "spans": list(spans), "instances": instances, "loss": "PanopticDeepLabLoss",
            "optimizer": "SGD(0.01, momentum=0.9)", "images_per_s": batch / timing["median_s"],
            "madds_per_image": net.madds((1, height, width, 3)), **peaks, **timing,
            "peak_rss_gib": measure.peak_rss_bytes() / GIB}


def zoo_export(model: str, variant: str, height: int, width: int,
               spans: Optional[Sequence[Optional[int]]], saved_model_dir: str,
               tflite_path: Optional[str] = None, tiny: bool = False,
               dtype: str = "float32", matmul_size: int = 2048) -> Dict:
    """Exports a registry zoo model (random weights) the way a preset is exported.

    The model is written as a preset folder (`presets.save_to_preset`) and exported with
    `export.saved_model.export_preset` (the `--preset` path: the model rebuilt for export,
    its recorded post-processing, both signatures); then, with `tflite_path`, converted to
    LiteRT float32 at `height` x `width` (`export.tflite.write_tflite`).

    Args:
        variant: str. The name the results carry (`global`, `local`, `global_bf16`, ...).
        spans: attention spans per stage, or None for the model's own (global).
        dtype: str. The export's dtype policy (`export.saved_model --dtype`).
        tiny: bool. The quick run's stand-in: the same registry variant (so its recorded
            post-processing applies) at `TINY_ZOO` widths.
    """
    overrides = dict(TINY_ZOO) if tiny else {}
    if spans is not None:
        overrides["backbone"] = {**overrides.get("backbone", {}), "spans": tuple(spans)}
    times = {}
    with tempfile.TemporaryDirectory() as preset:
        net = get_model(model, **overrides)
        params = int(sum(np.prod(v.shape) for v in net.trainable_weights))
        madds = net.madds((1, height, width, 3))
        save_to_preset(net, preset)
        del net  # the export loads its own copies: keep one less in memory

        def run():
            start = time.perf_counter()
            export_preset(preset, saved_model_dir, dtype=dtype)
            times["export_s"] = time.perf_counter() - start
            if tflite_path:
                start = time.perf_counter()
                tflite.write_tflite(saved_model_dir, tflite_path, "none",
                                    input_size=(height, width))
                times["litert_convert_s"] = time.perf_counter() - start

        _, peaks = _peak_around(run, matmul_size)
    result = {"stage": "export", "model": model, "variant": variant, "tiny": tiny,
              "height": height, "width": width, "spans": None if spans is None else list(spans),
              "dtype": dtype, "trainable_params": params, "madds_per_image": madds, **times,
              "saved_model_bytes": measure.path_bytes(saved_model_dir), **peaks,
              "peak_rss_gib": measure.peak_rss_bytes() / GIB}
    if tflite_path:
        result["litert_bytes"] = os.path.getsize(tflite_path)
    return result


def zoo_serve(variant: str, path: str, height: int, width: int, repeats: int = 3,
              warmup: int = 1, signature: str = "serving_uint8",
              matmul_size: int = 2048) -> Dict:
    """Seconds per image and peak memory of an exported model served in this process.

    `path` is a SavedModel directory or a `.tflite` file (LiteRT, every core as threads),
    loaded with `export.runtime.load_exported`; one random `[1, height, width, 3]` image.
    A SavedModel runs `signature`: `serving_uint8` (uint8 pixels in; its grouping unrolled,
    no WHILE loop) or `serving_default` (the image as one PNG file, decoded in the graph;
    the looped grouping), model and post-processing either way.
    """
    if signature not in SIGNATURES:
        raise ValueError(f"Unknown signature {signature!r}; expected one of "
                         f"{', '.join(SIGNATURES)}.")
    start = time.perf_counter()
    runner = load_exported(path)
    load_s = time.perf_counter() - start
    loaded_gib = measure.peak_rss_bytes() / GIB
    image = np.random.RandomState(0).randint(0, 256, (1, height, width, 3)).astype(np.uint8)
    litert = path.endswith(".tflite")
    if signature == "serving_default" and not litert:
        png = [tf.io.encode_png(image[0]).numpy()]
        call = lambda: runner.encoded(png)  # noqa: E731
    else:
        call = lambda: runner(image)  # noqa: E731
    timing, peaks = _peak_around(lambda: measure.time_calls(call, repeats, warmup),
                                 matmul_size)
    # A .tflite file has one signature, serving_default, taking uint8 pixels.
    return {"stage": "litert" if litert else "serve", "variant": variant,
            "height": height, "width": width,
            "signature": "serving_default" if litert else signature,
            "load_s": load_s, "seconds_per_image": timing["median_s"], **peaks, **timing,
            "loaded_rss_gib": loaded_gib, "peak_rss_gib": measure.peak_rss_bytes() / GIB}


def profile(model: str, size: int, batch: int, output_stride: Optional[int] = None,
            train_output_stride: Optional[int] = 16, top: int = 15) -> Dict:
    """Op-type shares of one inference call of a registry classifier (`ops`) and of one
    training step of the `train` section's graph variant (`train_ops`)."""
    net = _classifier(model, output_stride)
    optimizer, loss_fn, images, labels = _training_setup(batch, size)
    step = tf.function(lambda x: net(x, training=False))
    measure.time_calls(lambda: step(images), repeats=1, warmup=1)
    start = time.perf_counter()
    shares = measure.op_type_shares(lambda: step(images), top=top)
    profile_s = time.perf_counter() - start
    forward_stride = net.backbone.output_stride
    net = _classifier(model, train_output_stride)
    optimizer.build(net.trainable_variables)
    train_step = _gradient_step(net, loss_fn, optimizer)
    measure.time_calls(lambda: train_step(images, labels), repeats=1, warmup=1)
    train_shares = measure.op_type_shares(lambda: train_step(images, labels), top=top)
    return {"model": model, "size": size, "batch": batch, "output_stride": forward_stride,
            "train_output_stride": net.backbone.output_stride, "profile_s": profile_s,
            **shares, "train_ops": train_shares["ops"], "train_wall_s": train_shares["wall_s"]}


SECTIONS = {"forward": forward, "train": train, "attention": attention,
            "postprocess": postprocess, "deeplab": deeplab, "deeplab_train": deeplab_train,
            "profile": profile, "zoo_export": zoo_export, "zoo_serve": zoo_serve}

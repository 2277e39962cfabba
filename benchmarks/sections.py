"""The measured sections of `python -m benchmarks.run`; each returns a JSON-able dict.

Every section that times a model also measures the float32 matmul rate before and
after, in the same process, so its figures can be read as fractions of what the machine
delivered at that moment.
"""

import time
from typing import Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from axial_keras.layers import AxialAttention
from axial_keras.models import get_model
from axial_keras.panoptic import PanopticPostProcessor
from benchmarks import measure, scene

GIB = 1024.0 ** 3


def _peak_around(run, matmul_size: int):
    """Runs `run()` between two matmul-rate measurements; returns (result, peaks)."""
    before = measure.matmul_peak_gflops(matmul_size)
    result = run()
    after = measure.matmul_peak_gflops(matmul_size)
    return result, {"matmul_size": matmul_size, "matmul_gflops_before": before,
                    "matmul_gflops_after": after, "matmul_gflops": (before + after) / 2.0}


def _set_policy(dtype: str) -> None:
    keras.config.set_dtype_policy(dtype)


def _classifier(model: str, output_stride: Optional[int]):
    kwargs = {"num_classes": 1000}
    if output_stride:
        kwargs["output_stride"] = output_stride
    return get_model(model, **kwargs)


def forward(model: str, size: int, batch: int, output_stride: Optional[int] = None,
            dtype: str = "float32", jit_compile: bool = False, repeats: int = 5,
            warmup: Optional[int] = None, matmul_size: int = 2048) -> Dict:
    """Inference images/s of a registry classifier, achieved GFLOP/s and peak memory.

    `warmup` defaults to 2 untimed calls, 5 with XLA: its first few calls on CPU are
    up to 2x slower than the steady state (measured here).
    """
    if warmup is None:
        warmup = 5 if jit_compile else 2
    _set_policy(dtype)
    net = _classifier(model, output_stride)
    images = tf.random.stateless_normal((batch, size, size, 3), seed=(0, 1))
    step = tf.function(lambda x: net(x, training=False), jit_compile=jit_compile)
    timing, peaks = _peak_around(lambda: measure.time_calls(lambda: step(images), repeats,
                                                             warmup), matmul_size)
    madds = net.madds((1, size, size, 3))
    images_per_s = batch / timing["median_s"]
    gflops = 2.0 * madds * images_per_s / 1e9
    return {"model": model, "size": size, "batch": batch, "output_stride": net.backbone.output_stride,
            "dtype": dtype, "jit_compile": jit_compile, "images_per_s": images_per_s,
            "madds_per_image": madds, "gflops": gflops,
            "peak_fraction": gflops / peaks["matmul_gflops"], **peaks, **timing,
            "peak_rss_gib": measure.peak_rss_bytes() / GIB}


def train(model: str, size: int, batch: int, output_stride: Optional[int] = 16,
          dtype: str = "float32", jit_compile: bool = False, repeats: int = 3,
          warmup: int = 1, matmul_size: int = 2048) -> Dict:
    """Training-step images/s (SGD with momentum, softmax cross-entropy) and peak memory."""
    _set_policy(dtype)
    net = _classifier(model, output_stride)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if dtype == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(net.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    images = tf.random.stateless_normal((batch, size, size, 3), seed=(0, 1))
    labels = tf.random.stateless_uniform((batch,), seed=(2, 3), maxval=1000, dtype=tf.int32)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, net(x, training=True))
        grads = tape.gradient(optimizer.scale_loss(loss), net.trainable_variables)
        optimizer.apply(grads, net.trainable_variables)
        return loss

    timing, peaks = _peak_around(lambda: measure.time_calls(lambda: step(images, labels),
                                                             repeats, warmup), matmul_size)
    madds = net.madds((1, size, size, 3))
    images_per_s = batch / timing["median_s"]
    return {"model": model, "size": size, "batch": batch, "output_stride": net.backbone.output_stride,
            "dtype": dtype, "jit_compile": jit_compile, "optimizer": "SGD(0.01, momentum=0.9)",
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


def profile(model: str, size: int, batch: int, output_stride: Optional[int] = None,
            top: int = 15) -> Dict:
    """Op-type shares of one inference call of a registry classifier."""
    net = _classifier(model, output_stride)
    images = tf.random.stateless_normal((batch, size, size, 3), seed=(0, 1))
    step = tf.function(lambda x: net(x, training=False))
    measure.time_calls(lambda: step(images), repeats=1, warmup=1)
    start = time.perf_counter()
    shares = measure.op_type_shares(lambda: step(images), top=top)
    return {"model": model, "size": size, "batch": batch, "output_stride": net.backbone.output_stride,
            "profile_s": time.perf_counter() - start, **shares}


SECTIONS = {"forward": forward, "train": train, "attention": attention,
            "postprocess": postprocess, "deeplab": deeplab, "profile": profile}

"""`model.predict` under XLA where that is the faster way to run a model.

Keras resolves `jit_compile="auto"` to False on a CPU-only TensorFlow machine, for
`fit`, `evaluate` and `predict` alike. For these models that is the right choice for
training (on a 2-core AVX-512 CPU the XLA train step of axial_resnet_s ran 0.85-1.2x the
graph step over the runs, for 1.4 GiB more memory), for `mixed_bfloat16` (XLA 0.75x of
the graph forward) and for the panoptic `AxialDeepLab` (its XLA forward at 513x513 took
1.5x the graph's time with global attention, 1.8x with span 65: the decoder's
convolutions lose oneDNN), but not for a float32 classifier forward, which XLA ran
1.1-1.45x faster (224 and 449 px; benchmarks/, README "Performance").
`PredictJitCompile` makes `predict` and `predict_on_batch` follow their own setting,
`predict_jit_compile`, which by default is what Keras resolves, except that a float32
model whose `xla_predict_faster` is True (the Axial-ResNet classifiers and backbones)
runs under XLA with TensorFlow on one device.

The first call for each input shape compiles (4-7 s more than tracing the graph for
axial_resnet_s on that CPU), so a few one-off predictions are faster without it:
`model.predict_jit_compile = False` (or `compile(jit_compile=False)`) turns it off. The
SavedModel export is unaffected (TF Serving runs XLA graphs only behind an experimental
flag, so exported graphs stay plain).
"""

import keras

AUTO = "auto"


def _check_setting(value) -> None:
    if value != AUTO and not isinstance(value, bool):
        raise ValueError(f"`predict_jit_compile` must be True, False or 'auto', got {value!r}.")


class PredictJitCompile:
    """Mixin of a `keras.Model` (listed before it): `predict` with its own XLA setting.

    Attributes:
        predict_jit_compile: True, False or "auto" (the default). "auto": Keras'
            resolved `jit_compile` (True on a GPU, and under JAX), and True as well for
            a float32 `xla_predict_faster` model under TensorFlow on one device; an
            explicit `compile(jit_compile=...)` is followed as given.
        xla_predict_faster: bool. Whether this architecture's float32 forward was
            measured faster under XLA than as a graph on a CPU (a class attribute or a
            property of the model's configuration).
    """

    xla_predict_faster = False
    _predict_jit_compile = AUTO

    @property
    def predict_jit_compile(self):
        return self._predict_jit_compile

    @predict_jit_compile.setter
    def predict_jit_compile(self, value) -> None:
        _check_setting(value)
        self._predict_jit_compile = value
        self.predict_function = None  # rebuilt with the new setting on the next call

    def compile(self, *args, **kwargs):
        setting = kwargs.get("jit_compile", AUTO)
        _check_setting(setting)
        super().compile(*args, **kwargs)
        self.predict_jit_compile = setting

    def resolved_predict_jit_compile(self) -> bool:
        """Whether `predict` runs under XLA (`predict_jit_compile` resolved here)."""
        if self.run_eagerly:
            return False
        if self.predict_jit_compile != AUTO:
            return self.predict_jit_compile
        resolved = bool(self.jit_compile)
        if resolved or keras.backend.backend() != "tensorflow":
            return resolved
        strategy = getattr(self, "distribute_strategy", None)
        replicas = getattr(strategy, "num_replicas_in_sync", 1)
        return (self.xla_predict_faster and replicas == 1
                and keras.backend.standardize_dtype(self.compute_dtype) == "float32")

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function
        keras_setting = self.jit_compile
        self.jit_compile = self.resolved_predict_jit_compile()
        try:
            return super().make_predict_function(force=force)
        finally:
            self.jit_compile = keras_setting

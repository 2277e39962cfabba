"""One battery of Keras-convention checks that every layer and model of the package runs.

`run_layer_battery` / `run_model_battery` check: exact weight counts, get_config ->
from_config round trip, eager and symbolic (dynamic-size) calls, compute_output_shape,
`.keras` save/load with identical outputs, a `fit` that lowers the loss, and the dtype
policies: an instance built with `dtype=` "float32", "mixed_float16" or "mixed_bfloat16"
(never through the global policy) computes in that dtype in every layer that holds
weights, keeps float32 variables and returns tensors of the compute dtype. They use
keras APIs only, so the same tests run under KERAS_BACKEND=jax.
"""

import os
import tempfile

import keras
import numpy as np
from keras import ops


def _as_numpy(tree):
    if isinstance(tree, dict):
        return {k: _as_numpy(v) for k, v in tree.items()}
    return np.asarray(ops.convert_to_numpy(tree))


def _flat(tree):
    if isinstance(tree, dict):
        return [tree[k] for k in sorted(tree)]
    return [tree]


def _assert_close(a, b, atol=1e-5):
    for x, y in zip(_flat(_as_numpy(a)), _flat(_as_numpy(b))):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)


def _dynamic_input(input_shape):
    return keras.Input(shape=(None, None, input_shape[-1]))


def _fit_lowers_loss(model, x, steps=8):
    rng = np.random.RandomState(1)
    outputs = model(x, training=False)
    targets = [rng.normal(size=np.shape(o)).astype("float32") for o in _flat(_as_numpy(outputs))]
    y = targets[0] if not isinstance(outputs, dict) else dict(zip(sorted(outputs), targets))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    losses = [float(np.sum(model.train_on_batch(x, y))) for _ in range(steps)]
    assert np.all(np.isfinite(losses)), losses
    # A drop-path layer may drop every sample's residual branch in one step, which gives
    # back exactly the first step's loss (the branch starts at zero: gamma-0 batch norm),
    # so the check is that training reaches a lower loss, not that the last step is lower.
    assert min(losses[1:]) < losses[0], f"fit did not lower the loss: {losses}"


POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def _children(layer: keras.layers.Layer) -> list:
    """The layers `layer` holds: `Model.layers`, or attributes holding layers or tuples of them."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    children = []
    for value in vars(layer).values():
        values = value if isinstance(value, (list, tuple)) else [value]
        children += [v for v in values if isinstance(v, keras.layers.Layer)]
    return children


def weight_owners(layer: keras.layers.Layer) -> dict:
    """Every layer under `layer` (itself included) that creates weights -> those weights.

    Asserts that the walk reaches the creator of every weight of `layer`.
    """
    owners, seen, stack = {}, set(), [layer]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        children = _children(current)
        held = {id(w) for child in children for w in child.weights}
        own = [w for w in current.weights if id(w) not in held]
        if own:
            owners[current] = own
        stack += children
    found = {id(w) for weights in owners.values() for w in weights}
    assert found == {id(w) for w in layer.weights}, "some weights belong to no walked layer"
    return owners


def _check_policies(build, x):
    """`build(dtype=policy)` computes in the policy's dtype in every weighted sublayer."""
    for policy in POLICIES:
        compute = keras.DTypePolicy(policy).compute_dtype
        obj = build(dtype=policy)
        out = obj(ops.convert_to_tensor(x), training=False)
        for tensor in _flat(out):
            assert keras.backend.standardize_dtype(tensor.dtype) == compute, (policy, tensor.dtype)
            values = ops.convert_to_numpy(ops.cast(tensor, "float32"))
            assert np.all(np.isfinite(values)), policy
        wrong = [(layer.name, layer.compute_dtype) for layer in weight_owners(obj)
                 if layer.compute_dtype != compute]
        assert not wrong, f"{policy}: layers computing in another dtype: {wrong}"
        for weight in obj.weights:
            assert weight.dtype == "float32", (policy, weight.path, weight.dtype)


def _check_weight_counts(obj, expected_weights, expected_params):
    counts = (len(obj.trainable_weights), len(obj.non_trainable_weights))
    assert counts == tuple(expected_weights), f"(trainable, non-trainable) weights: {counts}"
    assert obj.count_params() == expected_params, obj.count_params()


def _save_load_fit_policies(model, x, eager, fit, build):
    """`.keras` round trip with identical outputs, a loss-lowering fit, dtype policies."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
    _assert_close(restored(x, training=False), eager, atol=0)
    if fit:
        _fit_lowers_loss(model, x)
    _check_policies(build, x)


def run_layer_battery(cls, init_kwargs, input_shape, expected_output_shape, expected_weights,
                      expected_params, fit=True):
    """Runs the battery on `cls(**init_kwargs)` with a random input of `input_shape`.

    Args:
        expected_weights: (trainable, non-trainable) numbers of weight variables.
        expected_params: int. Number of scalars in all weights.
    """
    x = np.random.RandomState(0).normal(size=input_shape).astype("float32")

    layer = cls(**init_kwargs)
    layer.build(input_shape)
    _check_weight_counts(layer, expected_weights, expected_params)
    config = layer.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config

    eager = layer(x, training=False)
    assert tuple(eager.shape) == tuple(expected_output_shape)
    assert tuple(layer.compute_output_shape(input_shape)) == tuple(expected_output_shape)

    inputs = _dynamic_input(input_shape)
    symbolic = layer(inputs)
    assert tuple(symbolic.shape) == tuple(layer.compute_output_shape(inputs.shape))
    model = keras.Model(inputs, symbolic)
    _assert_close(model(x, training=False), eager)

    _save_load_fit_policies(model, x, eager, fit, lambda dtype: cls(**init_kwargs, dtype=dtype))


def run_model_battery(build, input_shape, expected_weights, expected_params, fit=True):
    """Runs the battery on the model returned by `build(dtype=None)` (input `input_shape`).

    Args:
        build: callable. `build(dtype=policy)` returns a fresh model with that dtype policy.
        expected_weights: (trainable, non-trainable) numbers of weight variables.
        expected_params: int. Number of scalars in all weights.
    """
    x = np.random.RandomState(0).normal(size=input_shape).astype("float32")
    model = build(dtype=None)
    _check_weight_counts(model, expected_weights, expected_params)
    config = model.get_config()
    clone = model.__class__.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == model.count_params()

    eager = model(x, training=False)
    symbolic = model(keras.Input(shape=input_shape[1:]))
    for s, e in zip(_flat(symbolic), _flat(eager)):
        assert tuple(s.shape[1:]) == tuple(e.shape[1:])
    assert all(d is None for d in model.inputs[0].shape[:3]), model.inputs[0].shape
    assert _flat(model.compute_output_shape(input_shape))[0][1:] == tuple(_flat(eager)[0].shape[1:])

    _save_load_fit_policies(model, x, eager, fit, build)

"""RAdam, Lookahead and WarmupPolynomialDecay against independent NumPy references of the
published update rules, plus serialization, checkpoints, `fit`, tf.distribute and JAX.

Runs under the TensorFlow backend; the JAX backend and a two-replica MirroredStrategy
(logical CPU devices must be configured before TensorFlow starts) run in subprocesses.
"""

import doctest
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_keras.optimizers import Lookahead, RAdam, WarmupPolynomialDecay

pytestmark = pytest.mark.xdist_group("test_optimizers")  # one worker runs its module fixture
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8

# loss(w) = 0.5 * sum(A * (w - C)^2), so grad(w) = A * (w - C). Every weight keeps its
# sign and stays above 0.49 in magnitude in every run below, so a relative tolerance
# applies to all elements.
A = np.array([[1.0, 0.5, 2.0], [0.25, 1.5, 3.0]])
C = np.array([[0.5, 1.0, -0.8], [1.5, -2.5, 0.6]])
W0 = np.array([[2.0, 3.0, -2.5], [3.0, -1.0, 2.0]])
A32, C32, W032 = (a.astype(np.float32) for a in (A, C, W0))


def quadratic_grad(w):
    return A * (w - C)


# ---------------------------------------------------------------- NumPy references


class ReferenceSGD:
    """Plain SGD, w <- w - lr g."""

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate

    def step(self, w, g):
        return w - self.learning_rate * g


class ReferenceRAdam:
    """Liu et al. 2019, Algorithm 2, in float64, with decoupled (AdamW) weight decay,
    epsilon added to sqrt(v_hat) and optional clipping of the gradient's norm.
    `learning_rate(i)` gives the rate at 0-based step i."""

    def __init__(self, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 weight_decay=0.0, global_clipnorm=None, first_step=1):
        self.learning_rate = learning_rate if callable(learning_rate) else (
            lambda step: learning_rate)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.weight_decay, self.global_clipnorm = weight_decay, global_clipnorm
        self.clipped_steps = 0
        self.t = first_step - 1
        self.m = self.v = 0.0
        self.branches = []

    def rho(self, t):
        rho_inf = 2.0 / (1.0 - self.beta_2) - 1.0
        return rho_inf - 2.0 * t * self.beta_2 ** t / (1.0 - self.beta_2 ** t)

    def step(self, w, g):
        self.t += 1
        t, b1, b2 = self.t, self.beta_1, self.beta_2
        lr = self.learning_rate(t - 1)
        norm = np.sqrt(np.sum(g * g))
        if self.global_clipnorm is not None and norm > self.global_clipnorm:
            self.clipped_steps += 1
            g = g * self.global_clipnorm / norm
        w = w - lr * self.weight_decay * w
        self.m = b1 * self.m + (1.0 - b1) * g
        self.v = b2 * self.v + (1.0 - b2) * g * g
        m_hat = self.m / (1.0 - b1 ** t)
        rho_inf, rho_t = 2.0 / (1.0 - b2) - 1.0, self.rho(t)
        if rho_t > 4.0:
            self.branches.append("rectified")
            r_t = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                            / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            v_hat = self.v / (1.0 - b2 ** t)
            return w - lr * r_t * m_hat / (np.sqrt(v_hat) + self.epsilon)
        self.branches.append("momentum")
        return w - lr * m_hat


def reference_trajectory(inner, steps=STEPS, sync_period=None, slow_step_size=None):
    """[(fast weights, slow weights or None)] after each step; Lookahead (Zhang et al.
    2019, Algorithm 1) around `inner` when sync_period is given."""
    w, slow, out = W0.copy(), W0.copy(), []
    for t in range(1, steps + 1):
        w = inner.step(w, quadratic_grad(w))
        if sync_period is not None and t % sync_period == 0:
            slow = slow + slow_step_size * (w - slow)
            w = slow.copy()
        out.append((w, slow.copy() if sync_period else None))
    return out


# ---------------------------------------------------------------- Keras runners


def keras_trajectory(optimizer, steps=STEPS, compiled=False):
    """Applies `optimizer` to the quadratic; [(fast, slow or None)] after each step."""
    w = keras.Variable(W032)
    optimizer.build([w])

    def apply():
        optimizer.apply([A32 * (w - C32)], [w])

    if compiled:
        apply = tf.function(apply, jit_compile=True)
    out = []
    for _ in range(steps):
        apply()
        slow = np.array(optimizer.slow_weights[0]) if isinstance(optimizer, Lookahead) else None
        out.append((np.array(w), slow))
    return out


def assert_trajectories_close(actual, expected, rtol=1e-6, atol=1e-7):
    assert len(actual) == len(expected)
    for step, ((w, slow), (ref_w, ref_slow)) in enumerate(zip(actual, expected), start=1):
        np.testing.assert_allclose(w, ref_w, rtol=rtol, atol=atol, err_msg=f"step {step}")
        if ref_slow is not None:
            np.testing.assert_allclose(slow, ref_slow, rtol=rtol, atol=atol,
                                       err_msg=f"slow weights, step {step}")


# ---------------------------------------------------------------- RAdam


@pytest.mark.parametrize("beta_2", [0.9, 0.999, 0.9999, 0.99999])
def test_radam_rho_is_accurate_in_float32(beta_2):
    # A direct float32 evaluation gives rho_5 = 9.0 for beta_2 = 0.99999 (true: 4.99996)
    # and rectifies too early; the implementation must stay within float32 rounding.
    optimizer = RAdam(beta_2=beta_2)
    reference = ReferenceRAdam(1.0, beta_2=beta_2)
    steps = np.array([1, 2, 3, 4, 5, 6, 8, 10, 100, 1000, 10 ** 5, 10 ** 7], np.float32)
    actual = np.array(optimizer.rho(tf.constant(steps)))
    expected = np.array([reference.rho(float(t)) for t in steps])
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("beta_2,first_step,branches", [
    (0.999, 1, {"momentum", "rectified"}),     # rho_t > 4 from step 5 on
    (0.99999, 1, {"momentum", "rectified"}),   # rho_4 = 3.99997, rho_5 = 4.99996
    (0.999, 2001, {"rectified"}),              # rho_t near rho_inf
    (0.5, 1, {"momentum"}),                    # rho_inf = 3: never rectified
])
def test_radam_matches_reference_step_by_step(beta_2, first_step, branches):
    optimizer = RAdam(learning_rate=0.05, beta_2=beta_2)
    if first_step > 1:
        optimizer.iterations.assign(first_step - 1)
    reference = ReferenceRAdam(0.05, beta_2=beta_2, first_step=first_step)
    expected = reference_trajectory(reference)
    assert set(reference.branches) == branches
    assert_trajectories_close(keras_trajectory(optimizer), expected)


def test_radam_switches_to_the_adaptive_step_after_step_4():
    # With beta_2 = 0.999, steps 1-4 are bias-corrected momentum and step 5 is not.
    reference = ReferenceRAdam(0.05)
    reference_trajectory(reference)
    assert reference.branches == ["momentum"] * 4 + ["rectified"] * 4
    fast = keras_trajectory(RAdam(0.05))
    m, w = 0.0, W0.copy()
    for t in range(1, 6):
        m = 0.9 * m + 0.1 * quadratic_grad(w)
        w_momentum = w - 0.05 * m / (1.0 - 0.9 ** t)
        if t <= 4:
            np.testing.assert_allclose(fast[t - 1][0], w_momentum, rtol=1e-6, atol=1e-7)
            w = w_momentum
        else:
            assert np.abs(fast[t - 1][0] - w_momentum).min() > 1e-3


def test_radam_weight_decay_and_schedule_match_reference():
    schedule = WarmupPolynomialDecay(0.08, decay_steps=12, warmup_steps=3, power=2.0)
    optimizer = RAdam(learning_rate=schedule, beta_1=0.8, epsilon=1e-3, weight_decay=0.5)
    reference = ReferenceRAdam(
        lambda step: float(schedule(step)), beta_1=0.8, epsilon=1e-3, weight_decay=0.5)
    expected = reference_trajectory(reference)
    without_decay = reference_trajectory(
        ReferenceRAdam(lambda step: float(schedule(step)), beta_1=0.8, epsilon=1e-3))
    assert np.abs(expected[-1][0] - without_decay[-1][0]).min() > 1e-3
    assert_trajectories_close(keras_trajectory(optimizer), expected)


# ---------------------------------------------------------------- Lookahead


def test_lookahead_sgd_matches_reference():
    optimizer = Lookahead(keras.optimizers.SGD(0.1), sync_period=3, slow_step_size=0.5)
    expected = reference_trajectory(ReferenceSGD(0.1), sync_period=3, slow_step_size=0.5)
    assert_trajectories_close(keras_trajectory(optimizer), expected)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_lookahead_radam_matches_reference(compiled):
    # The inner optimizer's weight decay and gradient clipping apply under Lookahead.
    optimizer = Lookahead(RAdam(0.05, weight_decay=0.3, global_clipnorm=5.0), sync_period=5,
                          slow_step_size=0.8)
    inner = ReferenceRAdam(0.05, weight_decay=0.3, global_clipnorm=5.0)
    expected = reference_trajectory(inner, sync_period=5, slow_step_size=0.8)
    assert 0 < inner.clipped_steps < STEPS
    assert_trajectories_close(keras_trajectory(optimizer, compiled=compiled), expected)


def test_lookahead_delegates_exclude_from_weight_decay():
    kernel = keras.Variable(np.ones(3, np.float32), name="kernel")
    bias = keras.Variable(np.ones(3, np.float32), name="bias")
    optimizer = Lookahead(RAdam(0.1, weight_decay=0.5), sync_period=4)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    zero = np.zeros(3, np.float32)
    optimizer.apply([zero, zero], [kernel, bias])
    np.testing.assert_allclose(np.array(kernel), 0.95, rtol=1e-6)
    np.testing.assert_array_equal(np.array(bias), 1.0)


def test_lookahead_proxies_iterations_and_learning_rate():
    schedule = WarmupPolynomialDecay(0.1, decay_steps=10, warmup_steps=4)
    inner = RAdam(schedule)
    optimizer = Lookahead(inner, sync_period=2)
    keras_trajectory(optimizer, steps=3)
    assert int(optimizer.iterations) == int(inner.iterations) == 3
    np.testing.assert_allclose(float(optimizer.learning_rate), float(schedule(3)))
    # One slow weight per variable, in `variables` next to the inner optimizer's.
    assert len(optimizer.variables) == 2 + len(inner.variables)
    assert all(any(v is s for v in optimizer.variables) for s in optimizer.slow_weights)

    settable = Lookahead(keras.optimizers.SGD(0.1))
    settable.learning_rate = 0.25
    assert float(settable.inner_optimizer.learning_rate) == 0.25


def test_loss_scale_optimizer_around_lookahead_skips_non_finite_steps():
    plain = Lookahead(RAdam(0.05), sync_period=3)
    scaled = keras.optimizers.LossScaleOptimizer(Lookahead(RAdam(0.05), sync_period=3))
    w_plain, w_scaled = keras.Variable(W032), keras.Variable(W032)
    scaled.build([w_scaled])
    for step in range(6):
        grad = A32 * (np.array(w_plain) - C32)
        plain.apply([grad], [w_plain])
        # Scaled by a power of two: unscaling is exact, so the weights must agree exactly.
        scaled.apply([grad * np.float32(scaled.dynamic_scale)], [w_scaled])
        if step == 2:
            scaled.apply([np.full_like(grad, np.inf)], [w_scaled])
    np.testing.assert_array_equal(np.array(w_scaled), np.array(w_plain))
    assert int(scaled.iterations) == int(plain.iterations) == 6


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="beta_2"):
        RAdam(beta_2=1.0)
    with pytest.raises(ValueError, match="beta_1"):
        RAdam(beta_1=-0.1)
    with pytest.raises(ValueError, match="sync_period"):
        Lookahead(RAdam(), sync_period=0)
    with pytest.raises(ValueError, match="slow_step_size"):
        Lookahead(RAdam(), slow_step_size=0.0)
    with pytest.raises(ValueError, match="use_ema"):
        Lookahead(RAdam(use_ema=True))
    with pytest.raises(ValueError, match="LossScaleOptimizer"):
        Lookahead(keras.optimizers.LossScaleOptimizer(RAdam()))
    with pytest.raises(ValueError, match="Lookahead"):
        Lookahead(Lookahead(RAdam()))
    with pytest.raises(ValueError, match="decay_steps"):
        WarmupPolynomialDecay(1e-3, decay_steps=10, warmup_steps=10)


# ---------------------------------------------------------------- schedule


def test_schedule_values_at_chosen_steps():
    schedule = WarmupPolynomialDecay(0.1, decay_steps=110, warmup_steps=10, power=2.0,
                                     end_learning_rate=0.01)
    # Warm-up: 0.1 * step / 10; decay: 0.09 * (1 - (step - 10) / 100)^2 + 0.01.
    hand = {0: 0.0, 5: 0.05, 9: 0.09, 10: 0.1, 35: 0.060625, 60: 0.0325, 100: 0.0109,
            110: 0.01, 500: 0.01}
    for step, value in hand.items():
        np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-6, err_msg=step)
    # Linear decay without warm-up starts at the peak.
    linear = WarmupPolynomialDecay(1.0, decay_steps=4, power=1.0)
    np.testing.assert_allclose([float(linear(s)) for s in range(6)],
                               [1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    # The default power 0.9: 0.5 ** 0.9 = 0.535887 halfway.
    poly = WarmupPolynomialDecay(1.0, decay_steps=20, warmup_steps=10)
    np.testing.assert_allclose(float(poly(tf.constant(15, tf.int64))), 0.5358867, rtol=1e-6)


def test_docstring_examples_run():
    globs = {"keras": keras, "Lookahead": Lookahead, "RAdam": RAdam,
             "WarmupPolynomialDecay": WarmupPolynomialDecay}
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for obj in (RAdam, Lookahead, WarmupPolynomialDecay):
        for test in doctest.DocTestFinder(recurse=False).find(obj, globs=dict(globs)):
            examples += len(test.examples)
            runner.run(test)
    assert examples == 11 and runner.failures == 0


# ---------------------------------------------------------------- serialization


def test_get_config_round_trips():
    schedule = WarmupPolynomialDecay(2e-3, decay_steps=500, warmup_steps=0, power=0.8,
                                     end_learning_rate=1e-5)
    radam = RAdam(schedule, beta_1=0.85, beta_2=0.995, epsilon=1e-6, weight_decay=1e-4,
                  global_clipnorm=1.0, name="inner")
    lookahead = Lookahead(radam, sync_period=4, slow_step_size=0.6, name="slow")
    for obj in (schedule, radam, lookahead):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(restored) is type(obj)
        assert restored.get_config() == obj.get_config()
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(lookahead))
    assert isinstance(restored.inner_optimizer, RAdam)
    np.testing.assert_allclose(float(restored.learning_rate), float(schedule(0)))
    assert (restored.sync_period, restored.slow_step_size) == (4, 0.6)


def make_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(2)])


def make_data():
    rng = np.random.RandomState(1)
    return rng.randn(6, 4, 3).astype(np.float32), rng.randn(6, 4, 2).astype(np.float32)


def compile_lookahead(model, run_eagerly=False):
    schedule = WarmupPolynomialDecay(0.05, decay_steps=8, warmup_steps=2)
    model.compile(optimizer=Lookahead(RAdam(schedule, weight_decay=0.01), sync_period=4),
                  loss="mse", run_eagerly=run_eagerly)


def test_keras_file_resumes_training_identically(tmp_path):
    x, y = make_data()
    # Eager steps: no tracing for the three models (test_model_fit_* covers compiled fit).
    straight = make_model()
    compile_lookahead(straight, run_eagerly=True)
    for i in range(6):
        straight.train_on_batch(x[i], y[i])

    first = make_model()
    compile_lookahead(first, run_eagerly=True)
    for i in range(3):
        first.train_on_batch(x[i], y[i])
    path = str(tmp_path / "model.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert isinstance(resumed.optimizer, Lookahead) and resumed.run_eagerly
    for saved, loaded in zip(first.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.array(loaded), np.array(saved), err_msg=saved.path)
    # The sync at step 4 mixes in the slow weights saved at step 3 (still the initial
    # weights), so a resumed run only matches if they were restored.
    for i in range(3, 6):
        resumed.train_on_batch(x[i], y[i])
    assert int(resumed.optimizer.iterations) == 6
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(resumed.optimizer.variables, straight.optimizer.variables):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)


def train_steps(model, optimizer, x, y):
    for xb, yb in zip(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))


@pytest.mark.parametrize("build_before_restore", [True, False], ids=["built", "deferred"])
def test_tf_train_checkpoint_restores_slow_weights(tmp_path, build_before_restore):
    x, y = make_data()
    model, optimizer = make_model(), Lookahead(RAdam(0.05), sync_period=4)
    train_steps(model, optimizer, x[:3], y[:3])
    path = tf.train.Checkpoint(optimizer=optimizer, model=model).save(str(tmp_path / "ckpt"))
    saved_slow = [np.array(s) for s in optimizer.slow_weights]
    train_steps(model, optimizer, x[3:], y[3:])

    restored_model = make_model(seed=5)
    restored = Lookahead(RAdam(0.05), sync_period=4)
    if build_before_restore:
        restored.build(restored_model.trainable_variables)
    status = tf.train.Checkpoint(optimizer=restored, model=restored_model).restore(path)
    if build_before_restore:
        status.assert_consumed()
        for a, b in zip(restored.slow_weights, saved_slow):
            np.testing.assert_array_equal(np.array(a), b)
        assert int(restored.iterations) == 3
    train_steps(restored_model, restored, x[3:], y[3:])
    assert int(restored.iterations) == 6
    for a, b in zip(restored_model.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(restored.variables, optimizer.variables):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6, atol=1e-7)


def test_model_fit_with_lookahead_radam():
    x, y = make_data()
    model = make_model()
    compile_lookahead(model)
    initial = model.get_weights()
    history = model.fit(x.reshape(-1, 3), y.reshape(-1, 2), batch_size=4, epochs=2,
                        shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][1] < history.history["loss"][0]
    assert int(model.optimizer.iterations) == 12
    # Step 12 is a sync step: fast == slow, and both have moved.
    for fast, slow, start in zip(model.trainable_variables, model.optimizer.slow_weights,
                                 initial):
        np.testing.assert_array_equal(np.array(fast), np.array(slow))
        assert not np.allclose(np.array(slow), start)


# ---------------------------------------------------------------- subprocesses


class Scripts:
    """Runs the MirroredStrategy and JAX scripts in their own processes, in the background
    from the start of this module (they take most of its time), for the selected tests."""

    TESTS = {"mirrored": "test_mirrored_strategy_two_replicas_match_one_device",
             "jax": "test_jax_backend_matches_the_references"}

    def __init__(self, directory, selected):
        self.directory = directory
        jax_payload = json.dumps({"A": A.tolist(), "C": C.tolist(), "W0": W0.tolist(),
                                  "steps": STEPS, "path": str(directory / "jax.keras")})
        commands = {
            "mirrored": ([MIRRORED_SCRIPT], dict(KERAS_BACKEND="tensorflow",
                                                 CUDA_VISIBLE_DEVICES="")),
            "jax": ([JAX_SCRIPT, jax_payload], dict(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")),
        }
        self.processes = {name: self._start(name, *commands[name])
                          for name, test in self.TESTS.items() if test in selected}

    def _start(self, name, args, env):
        with open(self.directory / f"{name}.out", "w") as stdout, \
                open(self.directory / f"{name}.err", "w") as stderr:
            return subprocess.Popen([sys.executable, "-c", *args], cwd=ROOT,
                                    env=dict(os.environ, **env), stdout=stdout, stderr=stderr)

    def result(self, name, timeout=300):
        """The JSON the script printed last; fails with its stderr if it failed."""
        returncode = self.processes[name].wait(timeout=timeout)
        stderr = (self.directory / f"{name}.err").read_text()
        assert returncode == 0, stderr[-3000:]
        return json.loads((self.directory / f"{name}.out").read_text().strip().splitlines()[-1])

    def close(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module", autouse=True)
def scripts(request, tmp_path_factory):
    selected = {item.originalname for item in request.session.items}
    runs = Scripts(tmp_path_factory.mktemp("optimizer_scripts"), selected)
    yield runs
    runs.close()


# ---------------------------------------------------------------- tf.distribute

MIRRORED_SCRIPT = """
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from axial_keras.optimizers import Lookahead, RAdam, WarmupPolynomialDecay

rng = np.random.RandomState(0)
x, y = rng.randn(16, 3).astype("float32"), rng.randn(16, 2).astype("float32")
init = [rng.randn(3, 2).astype("float32"), rng.randn(2).astype("float32")]
GLOBAL_BATCH, EPOCHS = 4, 2
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

def make():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.set_weights(init)
    schedule = WarmupPolynomialDecay(0.05, decay_steps=8, warmup_steps=2)
    optimizer = Lookahead(RAdam(schedule, weight_decay=0.01), sync_period=3)
    optimizer.build(model.trainable_variables)
    return model, optimizer

def loss_fn(model, xb, yb):
    return tf.reduce_sum(tf.square(model(xb) - yb)) / (GLOBAL_BATCH * 2)

def step_fn(model, optimizer, xb, yb):
    with tf.GradientTape() as tape:
        loss = loss_fn(model, xb, yb)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

def dataset():
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).repeat(EPOCHS)

def state(model, optimizer):
    return {"weights": [w.tolist() for w in model.get_weights()],
            "slow": [np.array(s).tolist() for s in optimizer.slow_weights],
            "iterations": int(optimizer.iterations.numpy())}

def replicas_agree(model, optimizer):
    for v in model.trainable_variables + optimizer.variables:
        values = [np.array(c) for c in v.value.values]
        if len(values) != 2 or not np.array_equal(values[0], values[1]):
            return False
    return True

out = {}
model, optimizer = make()
for xb, yb in dataset():
    step_fn(model, optimizer, xb, yb)
out["single"] = state(model, optimizer)

with strategy.scope():
    model, optimizer = make()

@tf.function
def replica_step(xb, yb):
    strategy.run(step_fn, args=(model, optimizer, xb, yb))

for xb, yb in strategy.experimental_distribute_dataset(dataset()):
    replica_step(xb, yb)
out["replica"] = state(model, optimizer)
out["replica_in_sync"] = replicas_agree(model, optimizer)

with strategy.scope():
    cross_model, cross_optimizer = make()

def replica_grads(xb, yb):
    with tf.GradientTape() as tape:
        loss = loss_fn(cross_model, xb, yb)
    return tape.gradient(loss, cross_model.trainable_variables)

@tf.function
def cross_replica_step(xb, yb):
    per_replica = strategy.run(replica_grads, args=(xb, yb))
    grads = [strategy.reduce("SUM", g, axis=None) for g in per_replica]
    cross_optimizer.apply_gradients(zip(grads, cross_model.trainable_variables))

for xb, yb in strategy.experimental_distribute_dataset(dataset()):
    cross_replica_step(xb, yb)
out["cross_replica"] = state(cross_model, cross_optimizer)
out["cross_replica_in_sync"] = replicas_agree(cross_model, cross_optimizer)

with strategy.scope():
    fit_model, fit_optimizer = make()
    fit_model.compile(optimizer=fit_optimizer, loss="mse")
fit_model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
out["fit"] = state(fit_model, fit_optimizer)
print(json.dumps(out))
"""


def test_mirrored_strategy_two_replicas_match_one_device(scripts):
    out = scripts.result("mirrored")
    assert out["replica_in_sync"] and out["cross_replica_in_sync"]

    def assert_same(actual, expected, label):
        assert actual["iterations"] == expected["iterations"] == 8, label
        for key in ("weights", "slow"):
            for a, b in zip(actual[key], expected[key]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{label} {key}")
        # Step 8 is not a sync step (sync_period 3): fast and slow weights differ.
        assert not np.allclose(actual["weights"][0], actual["slow"][0]), label

    assert_same(out["replica"], out["single"], "strategy.run")
    assert_same(out["cross_replica"], out["single"], "cross-replica apply")
    # fit's "mse" is the custom loop's loss: sum of squares / (global batch * outputs).
    assert_same(out["fit"], out["single"], "fit")


# ---------------------------------------------------------------- JAX

JAX_SCRIPT = """
import json
import sys
import jax
import keras
import numpy as np
from axial_keras.optimizers import Lookahead, RAdam, WarmupPolynomialDecay

data = json.loads(sys.argv[1])
A, C, W0 = (np.array(data[k], np.float32) for k in ("A", "C", "W0"))
STEPS = data["steps"]

def optimizers():
    return {"radam": RAdam(0.05, beta_2=0.99999),
            "lookahead_sgd": Lookahead(keras.optimizers.SGD(0.1), sync_period=3,
                                       slow_step_size=0.5),
            "lookahead_radam": Lookahead(RAdam(0.05), sync_period=5, slow_step_size=0.8)}

def slow_of(optimizer):
    return np.array(optimizer.slow_weights[0]).tolist() if isinstance(optimizer, Lookahead) \\
        else None

out = {"eager": {}, "jit": {}}
for name, optimizer in optimizers().items():
    w = keras.Variable(W0)
    optimizer.build([w])
    steps = []
    for _ in range(STEPS):
        optimizer.apply([A * (np.array(w) - C)], [w])
        steps.append([np.array(w).tolist(), slow_of(optimizer)])
    out["eager"][name] = steps

for name, optimizer in optimizers().items():
    w = keras.Variable(W0)
    optimizer.build([w])
    apply = jax.jit(optimizer.stateless_apply)
    values, opt_values, steps = [w.value], [v.value for v in optimizer.variables], []
    for _ in range(STEPS):
        values, opt_values = apply(opt_values, [A * (values[0] - C)], values)
        for variable, value in zip(optimizer.variables, opt_values):
            variable.assign(value)
        steps.append([np.array(values[0]).tolist(), slow_of(optimizer)])
    out["jit"][name] = steps

rng = np.random.RandomState(0)
x, y = rng.randn(16, 3).astype("float32"), rng.randn(16, 2).astype("float32")
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
schedule = WarmupPolynomialDecay(0.05, decay_steps=8, warmup_steps=2)
model.compile(optimizer=Lookahead(RAdam(schedule, weight_decay=0.01), sync_period=2),
              loss="mse")
initial = model.get_weights()
history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
model.save(data["path"])
loaded = keras.saving.load_model(data["path"])
out["fit"] = {
    "loss": history.history["loss"],
    "iterations": int(model.optimizer.iterations),
    "fast_equals_slow": all(np.array_equal(np.array(f), np.array(s)) for f, s in
                            zip(model.trainable_variables, model.optimizer.slow_weights)),
    "moved": all(not np.allclose(np.array(s), i) for s, i in
                 zip(model.optimizer.slow_weights, initial)),
    "reloaded": all(np.array_equal(np.array(a), np.array(b)) for a, b in
                    zip(model.optimizer.variables, loaded.optimizer.variables)),
}
print(json.dumps(out))
"""


def test_jax_backend_matches_the_references(scripts):
    out = scripts.result("jax")
    expected = {
        "radam": reference_trajectory(ReferenceRAdam(0.05, beta_2=0.99999)),
        "lookahead_sgd": reference_trajectory(ReferenceSGD(0.1), sync_period=3,
                                              slow_step_size=0.5),
        "lookahead_radam": reference_trajectory(ReferenceRAdam(0.05), sync_period=5,
                                                slow_step_size=0.8),
    }
    for mode in ("eager", "jit"):
        for name, reference in expected.items():
            actual = [(np.array(w), None if s is None else np.array(s))
                      for w, s in out[mode][name]]
            assert_trajectories_close(actual, reference)
    fit = out["fit"]
    assert np.all(np.isfinite(fit["loss"])) and fit["iterations"] == 8
    assert fit["fast_equals_slow"] and fit["moved"] and fit["reloaded"]

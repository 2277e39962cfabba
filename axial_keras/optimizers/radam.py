"""Rectified Adam (RAdam), written with `keras.ops` so it runs on every Keras 3 backend."""

import math
from typing import Any, Optional

import keras
from keras import ops

# RAdam applies the adaptive step once the length of the approximated simple moving
# average, rho_t, exceeds this value (Liu et al. 2019, Algorithm 2: "if rho_t > 4").
RECTIFICATION_THRESHOLD = 4.0

# Below this argument the function 1/s - 1/expm1(s) is evaluated from its Taylor series
# (the direct difference loses digits there); the first omitted term is s^9/47900160.
_SERIES_LIMIT = 0.5


def _log(beta: float) -> float:
    """log(beta) in double precision, -inf for beta == 0."""
    return math.log(beta) if beta > 0.0 else -math.inf


def _one_minus_power(log_beta: float, step: Any) -> Any:
    """1 - beta^step, accurate to a few float32 ulps even when beta is close to 1.

    Args:
        log_beta: float. log(beta), computed in double precision on the host.
        step: float tensor []. The 1-based step t.

    Returns:
        float tensor [] with the dtype of `step`.
    """
    return -ops.expm1(step * log_beta)


def _inverse_minus_inverse_expm1(s: Any) -> Any:
    """g(s) = 1/s - 1/expm1(s) for s > 0, without cancellation for small s.

    Args:
        s: float tensor [], positive.

    Returns:
        float tensor [] with the dtype of `s`, in (0, 1/2).
    """
    small = ops.minimum(s, _SERIES_LIMIT)
    small_sq = small * small
    # 1/2 - s/12 + s^3/720 - s^5/30240 + s^7/1209600 (Bernoulli numbers B_2..B_8).
    series = 0.5 - small * (1.0 / 12.0 - small_sq * (
        1.0 / 720.0 - small_sq * (1.0 / 30240.0 - small_sq / 1209600.0)))
    large = ops.maximum(s, _SERIES_LIMIT)
    direct = 1.0 / large - 1.0 / ops.expm1(large)
    return ops.where(s < _SERIES_LIMIT, series, direct)


@keras.saving.register_keras_serializable(package="axial_keras")
class RAdam(keras.optimizers.Optimizer):
    """Rectified Adam: Adam whose adaptive step is switched on as its variance becomes tractable.

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond",
    ICLR 2020 (arXiv:1908.03265), Algorithm 2. Axial-DeepLab (Wang et al., ECCV 2020)
    trains with RAdam wrapped in Lookahead.

    With t = iterations + 1, g the gradient and lr the learning rate, each step does:

        m = beta_1 m + (1 - beta_1) g            m_hat = m / (1 - beta_1^t)
        v = beta_2 v + (1 - beta_2) g^2          v_hat = v / (1 - beta_2^t)
        rho_inf = 2 / (1 - beta_2) - 1
        rho_t = rho_inf - 2 t beta_2^t / (1 - beta_2^t)
        if rho_t > 4:
            r_t = sqrt((rho_t - 4) (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))
            variable -= lr r_t m_hat / (sqrt(v_hat) + epsilon)
        else:
            variable -= lr m_hat

    The threshold is the paper's `rho_t > 4`, where r_t becomes real. (The authors'
    released code and tensorflow-addons use 5 instead; with beta_2 = 0.999 that only
    changes step 5, rho_5 = 4.996, which is rectified here and un-adapted there.)
    `epsilon` is added to sqrt(v_hat), as in Algorithm 1 of the Adam paper (Keras' own
    Adam adds it to sqrt(v)).

    rho_t is the difference of two numbers near rho_inf, so a direct float32 evaluation
    loses most digits for beta_2 close to 1 (rho_4 comes out as 4.02 for beta_2 = 0.9999
    and picks the wrong branch). Here rho_t = C + 2 t g(t y), with y = -log(beta_2),
    g(s) = 1/s - 1/expm1(s) and the constant C = rho_inf - 2/y computed in double
    precision, which keeps rho_t and 1 - beta^t accurate to a few float32 ulps.

    `weight_decay` is decoupled, as in AdamW: before each step every variable not
    excluded with `exclude_from_weight_decay` is multiplied by (1 - lr * weight_decay).

    Args:
        learning_rate: float, `keras.optimizers.schedules.LearningRateSchedule` or a
            callable without arguments. The step size. Defaults to 1e-3.
        beta_1: float in [0, 1). Decay rate of the first-moment estimate.
        beta_2: float in (0, 1). Decay rate of the second-moment estimate; it also fixes
            rho_inf and so when rectification starts (step 5 for 0.999).
        epsilon: float >= 0. Added to sqrt(v_hat) in the rectified step.
        weight_decay: float or None. Decoupled weight decay coefficient, multiplied by the
            learning rate.
        clipnorm: float or None. Clips each gradient to this norm.
        clipvalue: float or None. Clips each gradient element to [-clipvalue, clipvalue].
        global_clipnorm: float or None. Clips all gradients together to this global norm.
        use_ema: bool. Keeps an exponential moving average of the weights.
        ema_momentum: float. Momentum of that average.
        ema_overwrite_frequency: int or None. Every this many steps, the weights are
            overwritten with their average.
        loss_scale_factor: float or None. Static loss scale; gradients are divided by it.
        gradient_accumulation_steps: int or None. Applies the mean gradient every this
            many steps.
        name: str or None. Name of the optimizer and prefix of its variables.

    Example:
    >>> w = keras.Variable([1.0, -2.0])
    >>> optimizer = RAdam(learning_rate=0.1)
    >>> optimizer.apply([keras.ops.array([0.5, 0.5])], [w])  # step 1: w - lr * m_hat
    >>> keras.ops.convert_to_numpy(w)
    array([ 0.95, -2.05], dtype=float32)
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        weight_decay: Optional[float] = None,
        clipnorm: Optional[float] = None,
        clipvalue: Optional[float] = None,
        global_clipnorm: Optional[float] = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: Optional[int] = None,
        loss_scale_factor: Optional[float] = None,
        gradient_accumulation_steps: Optional[int] = None,
        name: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        if not 0.0 <= beta_1 < 1.0:
            raise ValueError(f"`beta_1` must be in [0, 1). Received: beta_1={beta_1}")
        if not 0.0 < beta_2 < 1.0:
            raise ValueError(f"`beta_2` must be in (0, 1). Received: beta_2={beta_2}")
        if epsilon < 0.0:
            raise ValueError(f"`epsilon` must be >= 0. Received: epsilon={epsilon}")
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        # Step-independent constants, in double precision.
        self._log_beta_1 = _log(self.beta_1)
        self._log_beta_2 = _log(self.beta_2)
        self._rho_inf = 2.0 / (1.0 - self.beta_2) - 1.0
        self._rho_offset = self._rho_inf + 2.0 / self._log_beta_2
        # r_t^2 = (rho_t - 4)(rho_t - 2) / rho_t * _rect_scale. When rho_inf <= 4 the
        # variance never becomes tractable and every step is un-adapted.
        if self._rho_inf > RECTIFICATION_THRESHOLD:
            self._rect_scale = self._rho_inf / (
                (self._rho_inf - 4.0) * (self._rho_inf - 2.0))
        else:
            self._rect_scale = 0.0

    def build(self, var_list):
        """Creates the first- and second-moment slots, one pair per variable.

        Args:
            var_list: list of model variables the optimizer will update.
        """
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"])

    def rho(self, step: Any) -> Any:
        """Length of the approximated simple moving average, rho_t, at 1-based `step`.

        Args:
            step: float tensor [], the step t >= 1.

        Returns:
            float tensor [] with the dtype of `step`.
        """
        return self._rho_offset + 2.0 * step * _inverse_minus_inverse_expm1(
            step * -self._log_beta_2)

    def update_step(self, gradient, variable, learning_rate):
        """Applies one RAdam step to `variable`.

        Args:
            gradient: tensor shaped like `variable`.
            variable: the model variable to update.
            learning_rate: float tensor [], this step's learning rate.
        """
        dtype = variable.dtype
        # The per-step scalars are computed in float32 (float64 for float64 variables).
        scalar_dtype = "float64" if keras.backend.standardize_dtype(dtype) == "float64" \
            else "float32"
        step = ops.cast(self.iterations + 1, scalar_dtype)
        rho_t = self.rho(step)
        rectified = rho_t > RECTIFICATION_THRESHOLD
        r_squared = (rho_t - 4.0) * (rho_t - 2.0) / rho_t * self._rect_scale
        r_t = ops.cast(ops.sqrt(ops.maximum(r_squared, 0.0)), dtype)
        inv_sqrt_bias_2 = ops.cast(
            ops.rsqrt(_one_minus_power(self._log_beta_2, step)), dtype)
        step_size = ops.cast(learning_rate, scalar_dtype) / _one_minus_power(
            self._log_beta_1, step)

        gradient = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1))
        self.assign_add(
            v, ops.multiply(ops.subtract(ops.square(gradient), v), 1.0 - self.beta_2))
        # Per element: r_t / (sqrt(v_hat) + epsilon) when rectified, 1 otherwise.
        adaptive = ops.where(
            rectified,
            r_t / (ops.sqrt(v) * inv_sqrt_bias_2 + ops.cast(self.epsilon, dtype)),
            ops.ones((), dtype))
        self.assign_sub(
            variable, ops.multiply(ops.multiply(m, adaptive), ops.cast(step_size, dtype)))

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        })
        return config

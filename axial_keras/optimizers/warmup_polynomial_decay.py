"""Linear warm-up followed by polynomial ("poly") decay, as a Keras learning-rate schedule."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="axial_keras")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to a peak learning rate, then polynomial decay to an end value.

    Reference: the "poly" schedule of DeepLab (Chen et al., "DeepLab: Semantic Image
    Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected
    CRFs", TPAMI 2018), power 0.9, which Panoptic-DeepLab and Axial-DeepLab train with;
    the linear warm-up is that of Goyal et al., "Accurate, Large Minibatch SGD: Training
    ImageNet in 1 Hour" (arXiv:1706.02677).

    At optimizer step `step` (0-based, the optimizer's `iterations`; warm-up steps count
    towards `decay_steps`, which is the total length of the schedule):

        step < warmup_steps:            lr = peak * step / warmup_steps
        warmup_steps <= step < decay:   lr = (peak - end) * (1 - p)^power + end,
                                        p = (step - warmup_steps) / (decay_steps - warmup_steps)
        step >= decay_steps:            lr = end

    The curve is continuous: it reaches `peak_learning_rate` at step `warmup_steps` and
    `end_learning_rate` at step `decay_steps`. With warm-up, the first step (step 0) uses
    a learning rate of 0.

    Args:
        peak_learning_rate: float > 0. Learning rate at the end of warm-up.
        decay_steps: int > warmup_steps. Step at which the decay reaches
            `end_learning_rate`, counted from the first step, warm-up included.
        warmup_steps: int >= 0. Length of the linear warm-up; 0 starts decaying at once.
        power: float > 0. Exponent of the polynomial decay (0.9 for DeepLab's "poly").
        end_learning_rate: float >= 0. Learning rate from `decay_steps` on.

    Example:
    >>> schedule = WarmupPolynomialDecay(1e-3, decay_steps=1000, warmup_steps=100)
    >>> [round(float(schedule(step)), 6) for step in (0, 50, 100, 1000)]
    [0.0, 0.0005, 0.001, 0.0]
    """

    def __init__(
        self,
        peak_learning_rate: float,
        decay_steps: int,
        warmup_steps: int = 0,
        power: float = 0.9,
        end_learning_rate: float = 0.0,
    ):
        if peak_learning_rate <= 0:
            raise ValueError(
                f"`peak_learning_rate` must be > 0. Received: {peak_learning_rate}")
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0. Received: {warmup_steps}")
        if decay_steps <= warmup_steps:
            raise ValueError(
                f"`decay_steps` ({decay_steps}) must be larger than `warmup_steps` "
                f"({warmup_steps}): it counts the warm-up steps too.")
        if power <= 0:
            raise ValueError(f"`power` must be > 0. Received: {power}")
        if end_learning_rate < 0:
            raise ValueError(f"`end_learning_rate` must be >= 0. Received: {end_learning_rate}")
        self.peak_learning_rate = float(peak_learning_rate)
        self.decay_steps = int(decay_steps)
        self.warmup_steps = int(warmup_steps)
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)

    def __call__(self, step):
        """Learning rate at 0-based `step` (int or float, Python or tensor), float32 []."""
        step = ops.cast(step, "float32")
        warmup = self.peak_learning_rate * step / float(max(self.warmup_steps, 1))
        progress = ops.clip(
            (step - self.warmup_steps) / float(self.decay_steps - self.warmup_steps), 0.0, 1.0)
        decayed = ((self.peak_learning_rate - self.end_learning_rate)
                   * ops.power(1.0 - progress, self.power) + self.end_learning_rate)
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "decay_steps": self.decay_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
        }

"""The paper's optimizer, as backend-agnostic Keras 3 optimizers: RAdam inside Lookahead,
with a warm-up + polynomial-decay learning-rate schedule.

Example:

    optimizer = Lookahead(RAdam(WarmupPolynomialDecay(1e-3, decay_steps=60000,
                                                      warmup_steps=1000)))
"""

from axial_keras.optimizers.lookahead import Lookahead
from axial_keras.optimizers.radam import RAdam
from axial_keras.optimizers.warmup_polynomial_decay import WarmupPolynomialDecay

__all__ = ["Lookahead", "RAdam", "WarmupPolynomialDecay"]

"""Dormand-Prince 5(4) with Shampine's 4th-order dense output (Hairer's DOPRI5)."""

from __future__ import annotations

import numpy as np

from .tableau import ButcherTableau, ExplicitRK

__all__ = ["DOPRI5"]

_B = np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0])
_B_LOW = np.array([5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])
_D = np.array([-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
               701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423])


def _dense() -> np.ndarray:
    """Hairer's CONTD5 as b_i(theta) polynomials:
    y(theta) - y0 = h [theta b + theta(1-theta)(e1 - b) + theta^2(1-theta)(2b - e1 - e7)
                       + theta^2 (1-theta)^2 d]."""
    e1, e7 = np.eye(7)[0], np.eye(7)[6]
    # each poly lists the coefficients of theta^1, theta^2, ... (theta^0 never appears)
    terms = [(_B, [1.0]), (e1 - _B, [1.0, -1.0]), (2 * _B - e1 - e7, [0.0, 1.0, -1.0]),
             (_D, [0.0, 1.0, -2.0, 1.0])]
    out = np.zeros((7, 4))
    for weights, poly in terms:
        out[:, : len(poly)] += np.outer(weights, poly)
    return out


_TABLEAU = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       tuple(_B[:6])),
    b=tuple(_B),
    e=tuple(_B - _B_LOW),
    order=5,
    error_order=4,
    dense=_dense(),
    fsal=True,
)

DOPRI5 = ExplicitRK("dopri5", _TABLEAU)

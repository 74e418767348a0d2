"""Tsitouras 5(4) (Comput. Math. Appl. 62, 2011) with its own 4th-order dense output."""

from __future__ import annotations

import numpy as np

from .tableau import ButcherTableau, ExplicitRK, poly_from_roots

__all__ = ["TSIT5"]

_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
      2.324710524099774, 0.0)
# error weights b - b_hat; the last one is -1/66 (the paper prints the wrong sign)
_E = (0.001780011052226, 0.000816434459657, -0.007880878010262, 0.144711007173263, -0.582357165452555,
      0.458082105929187, -1 / 66)


def _dense() -> np.ndarray:
    """The seven interpolation polynomials b_i(theta) of the paper, as (7, 4) in theta^1..theta^4."""
    polys = [
        poly_from_roots(-1.0530884977290216, [1.3299890189751412]),
        poly_from_roots(0.1017, [], 2),
        poly_from_roots(2.490627285651252793, [], 2),
        poly_from_roots(-16.54810288924490272, [1.21712927295533244, 0.61620406037800089], 2),
        poly_from_roots(47.37952196281928122, [1.203071208372362603, 0.658047292653547382], 2),
        poly_from_roots(-34.87065786149660974, [1.2, 0.666666666666666667], 2),
        poly_from_roots(2.5, [1.0, 0.6], 2),
    ]
    # b1 and b2, b3 carry quadratic factors
    polys[0] = np.concatenate([[0.0], np.convolve(polys[0], [0.7139816917074209, -1.4364028541716351, 1.0])])
    polys[1] = np.convolve(polys[1], [1.2949852507374631, -2.1966568338249754, 1.0])
    polys[2] = np.convolve(polys[2], [1.57803468208092486, -2.38535645472061657, 1.0])
    out = np.zeros((7, 4))
    for i, p in enumerate(polys):
        p = np.trim_zeros(p, "b")
        out[i, : len(p) - 1] = p[1:]
    return out


_TABLEAU = ButcherTableau(
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=((), (0.161,),
       (-0.008480655492356989, 0.335480655492357),
       (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838),
       _B[:6]),
    b=_B,
    e=_E,
    order=5,
    error_order=4,
    dense=_dense(),
    fsal=True,
)

TSIT5 = ExplicitRK("tsit5", _TABLEAU)

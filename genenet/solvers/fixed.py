"""Fixed-step explicit methods: forward Euler and classic RK4 (no error estimate).

They step with ``dt`` and land exactly on every save time, so their saved values
are step endpoints, never interpolated.
"""

from __future__ import annotations

from .tableau import ButcherTableau, ExplicitRK

__all__ = ["EULER", "RK4"]

EULER = ExplicitRK("euler", ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1))

RK4 = ExplicitRK("rk4", ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    order=4,
))

"""Batched ODE solvers: explicit adaptive (Dopri5, Tsit5) and fixed-step (Euler, RK4) methods."""

from __future__ import annotations

from .controller import FixedController, PIController
from .dopri5 import DOPRI5
from .fixed import EULER, RK4
from .integrate import Solution, integrate
from .status import SolverError, Status
from .tableau import ButcherTableau, ExplicitRK
from .tsit5 import TSIT5

__all__ = ["METHODS", "get_method", "integrate", "Solution", "Status", "SolverError", "ButcherTableau",
           "ExplicitRK", "PIController", "FixedController", "DOPRI5", "TSIT5", "EULER", "RK4"]

METHODS: dict[str, ExplicitRK] = {m.name: m for m in (DOPRI5, TSIT5, RK4, EULER)}


def get_method(method: str | ExplicitRK) -> ExplicitRK:
    """Look up a solver by name (``"dopri5"``, ``"tsit5"``, ``"rk4"``, ``"euler"``)."""
    if isinstance(method, ExplicitRK):
        return method
    key = str(method).lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {sorted(METHODS)}")
    return METHODS[key]

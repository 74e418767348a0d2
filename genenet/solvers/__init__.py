"""Batched ODE solvers: explicit adaptive (Dopri5, Tsit5), fixed-step (Euler, RK4), stiff
Rosenbrock (Rodas4, Rodas5P) methods and the native variable-order BDF."""

from __future__ import annotations

from .bdf import BDF, BDF_METHOD
from .controller import FixedController, PIController
from .dopri5 import DOPRI5
from .fixed import EULER, RK4
from .integrate import Solution, integrate
from .rosenbrock import RODAS4, RODAS5, Rosenbrock
from .status import SolverError, Status
from .switching import AUTO, AutoSwitch, integrate_auto
from .tableau import ButcherTableau, ExplicitRK
from .tsit5 import TSIT5

__all__ = ["METHODS", "get_method", "integrate", "Solution", "Status", "SolverError", "ButcherTableau",
           "ExplicitRK", "PIController", "FixedController", "DOPRI5", "TSIT5", "EULER", "RK4", "RODAS4", "RODAS5",
           "Rosenbrock", "BDF", "BDF_METHOD", "AUTO", "AutoSwitch", "integrate_auto"]

METHODS: dict[str, ExplicitRK | Rosenbrock | BDF | AutoSwitch] = {
    m.name: m for m in (DOPRI5, TSIT5, RK4, EULER, RODAS5, RODAS4, BDF_METHOD, AUTO)}


def get_method(method: str | ExplicitRK | Rosenbrock | BDF | AutoSwitch) -> ExplicitRK | Rosenbrock | BDF | AutoSwitch:
    """Look up a solver by name (``"dopri5"``, ``"tsit5"``, ``"rk4"``, ``"euler"``, ``"rodas5"``,
    ``"rodas4"``, ``"bdf"`` (native CPU kernel only), ``"auto"``)."""
    if isinstance(method, (ExplicitRK, Rosenbrock, BDF, AutoSwitch)):
        return method
    key = str(method).lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {sorted(METHODS)}")
    return METHODS[key]

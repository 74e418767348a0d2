r"""``method="bdf"``: the variable-order BDF method (orders 1-5, NDF form) for stiff systems, run
in genenet's native CPU kernel (:file:`genenet/native/bdf.h`).

The algorithm is scipy.integrate.BDF's (Shampine & Reichelt 1997; quasi-constant step size,
backward differences ``D`` rescaled on a step change) with two of CVODE's economies (the LU kept
while ``h / α_k`` moves by less than 30 %, a Newton tolerance of 3 % of the error tolerance at every
rtol; see the kernel's header for the measurements): a step of order ``k`` predicts
``y_pred = Σ_{j<=k} D_j`` and solves

    y - (h / α_k) f(t + h, y) = y_pred - ψ,      ψ = Σ_{j=1..k} γ_j D_j / α_k,

by simplified Newton with the LU of ``I - (h / α_k) J``; the error estimate is
``C_k (y - y_pred)``. The Jacobian is evaluated only at the start and when Newton fails with a
stale one, the LU when ``h / α_k`` has moved by more than 30 % since it was formed or after 20 steps:
on a stiff model a step costs about one
RHS and one triangular solve per Newton iteration, where a Rosenbrock step (rodas5) costs a
Jacobian, an LU and one RHS and solve per stage. The order (1-5) and step follow the local error
estimates of orders ``k - 1, k, k + 1``; save times are read from the interpolating polynomial.

It is CVODE's family (libroadrunner, AMICI), with the same accuracy per tolerance: a BDF solve at
rtol 1e-6 lands farther from the exact solution than rodas5 or dopri5 at the same rtol.

Where it runs: the CPU, models with a native form (``gn.Hill``, compiled symbolic and SBML
models), without forward sensitivities or stiffness detection; switching times (pulses) through
:mod:`genenet.solvers.segments`. Elsewhere :func:`integrate` refuses it and names why: use
``rodas5`` there (a GPU, a model of arbitrary torch functions) — the step control of a multistep
method with per-row order does not fit the batched torch loop. Its results carry no gradient (the
adjoint is not written): fits refuse it (``FitProblem``), and a ``backward`` through them fails in
torch rather than returning a wrong derivative; differentiate with ``rodas5`` or ``dopri5``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BDF", "BDF_METHOD"]


@dataclass(frozen=True)
class BDF:
    """The native variable-order BDF method (see module doc)."""

    name: str = "bdf"
    adaptive: bool = True
    implicit: bool = True
    multistep: bool = True
    max_order: int = 5
    tableau: None = None


BDF_METHOD = BDF()

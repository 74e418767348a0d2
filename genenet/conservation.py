"""Conservation laws in steady-state problems: the moiety-reduced system.

A reaction network that conserves a total (B + AB under binding A + B <-> AB) has ``L dx/dt = 0``
for the rows of ``L`` (:meth:`genenet.Model.conservation_laws`): its Jacobian is singular, every
point of a line of states is a steady state of *some* total, and Newton on ``f(x) = 0`` alone may
end in another conservation class than its start's (a steady state the system never reaches).
As libroadrunner does, the steady-state solvers here work on the reduced system: the equation of
each law's pivot species is replaced by the law itself,

    F_i(x) = T_k - L_k x      (i = pivot of law k, T_k = L_k x0 the start's total)
    J_i    = -L_k

so Newton and pseudo-transient continuation stay in (or return to) the start's class, and a row
is converged only when both the dynamics and the totals are met. Stability is judged on the
directions the dynamics can move in (the null space of L): the conserved directions' zero
eigenvalues are reported as 0 and ignored. A law does not hold on a row whose condition adds an
input it does not balance (``Overexpress(rate=)``) or clamps one of its species: it is dropped
there; an unbalanced input also means that row has no steady state at all (``d(L x)/dt = L u ≠ 0``
everywhere), which the steady-state solvers report as not converged. Integration (a fallback)
follows the true dynamics, which conserve the totals by themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ConservedTerm", "with_conservation", "reduced"]


class ConservedTerm:
    """A condition term whose laws' pivot equations are the laws (module doc); every other
    attribute is the wrapped term's (``unreduced``)."""

    def __init__(self, term: Any, L: Tensor, pivots: Tensor) -> None:
        self.unreduced, self.L, self.pivots = term, L, pivots

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unreduced, name)

    def native_spec(self, args: dict) -> dict | None:
        """The wrapped term's native spec with the laws (``spec["laws"]``) for the steady-state
        iterations of a compiled model (:func:`genenet.native.compiled.roots`); None for other
        models (their kernels have no laws) or without a spec. The integrators refuse a spec with
        laws: integration follows the unreduced dynamics."""
        spec = self.unreduced.native_spec(args)
        if spec is None or "model" not in spec:
            return None
        return {**spec, "laws": (self.L, self.pivots, args["conserved_totals"], args["conserved_on"])}

    def vf(self, t: Tensor, x: Tensor, args: dict) -> Tensor:
        F = self.unreduced.vf(t, x, args).clone()
        gap = args["conserved_totals"] - x @ self.L.T  # (B, m)
        F[:, self.pivots] = torch.where(args["conserved_on"], gap, F[:, self.pivots])
        return F

    def jacobian(self, t: Tensor, x: Tensor, args: dict) -> Tensor:
        J = self.unreduced.jacobian(t, x, args).clone()
        J[:, self.pivots, :] = torch.where(args["conserved_on"][..., None], -self.L, J[:, self.pivots, :])
        return J

    def stability(self, J: Tensor, args: dict) -> tuple[Tensor, Tensor]:
        """Eigenvalues (B, G) of the unreduced Jacobian ``J`` (clamps already applied) on the
        directions free of each row's laws, the conserved ones as 0; stable: all of the free
        ones with negative real part. Rows are grouped by which laws hold on them."""
        from .steady import eigvals  # steady imports this module

        B, G = J.shape[:2]
        ev = torch.zeros(B, G, dtype=torch.complex128 if J.dtype == torch.float64 else torch.complex64,
                         device=J.device)
        stable = torch.zeros(B, dtype=torch.bool, device=J.device)
        on = args["conserved_on"]
        patterns, group = torch.unique(on, dim=0, return_inverse=True)
        for k, pattern in enumerate(patterns):
            rows = torch.nonzero(group == k).squeeze(1)
            Lp = self.L[pattern]
            if Lp.shape[0]:
                _, _, Vh = torch.linalg.svd(Lp)
                Q = Vh[Lp.shape[0]:].T  # (G, G - m): orthonormal basis of the null space of the laws
            else:
                Q = torch.eye(G, dtype=J.dtype, device=J.device)
            e = eigvals(Q.T @ J[rows] @ Q)
            ev[rows, : e.shape[1]] = e.to(ev.dtype)
            stable[rows] = (e.real < 0).all(dim=-1)
        return ev, stable


def with_conservation(term: Any, args: dict, x: Tensor) -> tuple[Any, dict]:
    """The term reduced by its model's laws, with ``args`` extended by each row's totals at the
    starts ``x`` (B, G) and which laws hold on it; unchanged when the model has none."""
    fn = getattr(term.model, "conservation_laws", None)
    laws = fn() if fn is not None else None
    if laws is None:
        return term, args
    L = torch.as_tensor(laws[0], dtype=x.dtype, device=x.device)
    pivots = torch.as_tensor(laws[1], dtype=torch.long, device=x.device)
    on = torch.ones(x.shape[0], L.shape[0], dtype=torch.bool, device=x.device)
    none = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if getattr(term, "use_add", False):  # an input the law does not balance breaks it
        net = args["add"] @ L.T
        balanced = net.abs() <= 1e-12 * (args["add"].abs() @ L.abs().T).clamp_min(1e-300)
        on &= balanced
        # and then d(L x)/dt = L add != 0 everywhere: no steady state at all (the total grows or
        # shrinks for ever), whatever a solver's residual says at a huge state
        none = none | ~balanced.all(dim=1)
    if getattr(term, "use_clamp", False):  # a clamped species is held from outside
        on &= (args["clamp"].to(x.dtype) @ (L != 0).to(x.dtype).T) == 0
    args = dict(args, conserved_on=on, conserved_totals=x @ L.T, no_steady_state=none)
    return ConservedTerm(term, L, pivots), args


def reduced(term: Any, args: dict) -> Any:
    """``term`` reduced by its model's laws where ``args`` carries their totals (from
    :func:`with_conservation`), else ``term``."""
    if "conserved_on" not in args or isinstance(term, ConservedTerm):
        return term
    laws = term.model.conservation_laws()
    return ConservedTerm(term, torch.as_tensor(laws[0], dtype=args["conserved_totals"].dtype,
                                               device=args["conserved_totals"].device),
                         torch.as_tensor(laws[1], dtype=torch.long, device=args["conserved_totals"].device))

"""``method="auto"``: every row starts explicit (DOPRI5) and a row found stiff continues implicit.

Stiffness is detected per row: after each accepted step, ``h ρ > 2.5`` means the step size
is limited by stability, not accuracy (DOPRI5's stability boundary on the negative real
axis is ~3.3, and its controller settles a little inside). ``ρ`` is the larger of
Hairer's estimate from the last two stages (both at ``t + h``),
``|f(y1) - f(Y)| / |y1 - Y|``, and a power-iteration estimate of the Jacobian's spectral
radius refreshed every few steps (Hairer's alone misses a stiff gene when slower genes
dominate ``y1 - Y``). After ``stiff_after`` such steps (not interrupted by six non-stiff
ones) the row leaves the explicit batch at its current ``(t, y)``; all such rows then
continue together from their own times with the Rosenbrock method (Rodas5P), and the two
parts are joined per row. Non-stiff rows never pay for Jacobians or LU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .dopri5 import DOPRI5
from .integrate import Solution, implicit_chunk, integrate, integrate_in_chunks, tree_index
from .rosenbrock import RODAS5, Rosenbrock
from .status import Status
from .tableau import ExplicitRK

__all__ = ["AutoSwitch", "AUTO", "integrate_auto"]


@dataclass(frozen=True)
class AutoSwitch:
    """An explicit method, an implicit one, and how many stiff steps trigger the switch."""

    explicit: ExplicitRK = DOPRI5
    implicit: Rosenbrock = RODAS5
    stiff_after: int = 15
    name: str = "auto"
    adaptive: bool = True
    implicit_only: bool = False

    @property
    def tableau(self) -> Any:
        return self.explicit.tableau


AUTO = AutoSwitch()


def integrate_auto(auto: AutoSwitch, f: Any, x0: Tensor, t_save: Tensor, *, args: dict, stops: Tensor | None,
                   jac: Any = None, tgrad: Any = None, **kw: Any) -> Solution:
    """:func:`integrate` with per-row switching (see module doc); ``kw`` go to both phases.
    The result's ``switched`` (B,) marks the rows the implicit method finished."""
    first = integrate(f, x0, t_save, method=auto.explicit, args=args, stops=stops, stiff_after=auto.stiff_after,
                      jac=jac, **kw)
    stiff = first.status == Status.STIFF
    if not bool(stiff.any()):
        return Solution(first.y, first.status, first.n_steps, first.n_accepted, first.n_rejected, first.n_rhs,
                        first.t_last, first.y_last, switched=stiff)
    idx = torch.nonzero(stiff).flatten()
    sub_stops = stops[idx] if stops is not None and stops.ndim == 2 else stops
    kw.pop("first_step", None)  # the implicit phase chooses its own first step
    chunk = implicit_chunk(auto.implicit, len(idx), x0.shape[1], x0.device)
    second = integrate_in_chunks(f, first.y_last[idx], t_save, chunk=chunk, method=auto.implicit,
                                 args=tree_index(args, idx), stops=sub_stops, t_start=first.t_last[idx], jac=jac,
                                 tgrad=tgrad, **kw)
    T = t_save.numel()
    begin = torch.searchsorted(t_save, first.t_last[idx][:, None].contiguous(), right=True)  # (n, 1)
    later = torch.arange(T, device=t_save.device)[None, :] >= begin
    y = first.y.clone()
    y[idx] = torch.where(later[..., None], second.y, first.y[idx])
    status = first.status.clone()
    status[idx] = second.status
    counters = []
    for name in ("n_steps", "n_accepted", "n_rejected", "n_rhs"):
        c = getattr(first, name).clone()
        c[idx] += getattr(second, name)
        counters.append(c)
    t_last, y_last = first.t_last.clone(), first.y_last.clone()
    t_last[idx], y_last[idx] = second.t_last, second.y_last
    return Solution(y, status, *counters, t_last=t_last, y_last=y_last, switched=stiff)

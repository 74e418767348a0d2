"""A solve with switching times (pulses) as a chain of solves without them.

The native kernels run one regime per call; a pulsed condition changes its regime at its
switching times. Cut at the union of the rows' switching times ``s_1 < ... < s_K`` inside
``(t_0, t_end)``, the solve is K + 1 pieces, each a solve without switching times over
``[s_k, s_(k+1)]`` that starts with the term's ``segment(s_k)`` (the effects on at ``s_k``) and
``reset`` (clamps jump), from the state where the last piece ended:

    y(s_(k+1)) = solve(y(s_k), [s_k, saves in (s_k, s_(k+1)), s_(k+1)])

``segment`` is a function of the time alone and ``reset`` is idempotent (a clamped gene sits at its
value), so a row without a switch at ``s_k`` continues unchanged: only its step size restarts
(the loop keeps it), which changes its steps, not its accuracy. A save exactly at ``s_k`` reports
the state after the jump, as in the loop. Gradients flow through the chain (each piece's end state
is the next one's start). A row that fails in a piece stays failed: later pieces skip it.
``max_steps`` bounds each piece; the counters (steps, RHS evaluations) are summed over the pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .integrate import Solution
from .status import Status

__all__ = ["MAX_PIECES", "switching_times", "integrate_in_pieces"]

#: beyond this many distinct switching times (e.g. a random pulse time per row) the loop, which
#: follows each row's own times, is cheaper than restarting every row at every one
MAX_PIECES = 64


def switching_times(stops: Tensor | None, t_save: Tensor) -> Tensor:
    """The sorted distinct switching times of all rows strictly inside ``(t_save[0], t_save[-1])``."""
    if stops is None:
        return t_save.new_zeros(0)
    s = stops.to(t_save).flatten()
    s = s[torch.isfinite(s) & (s > t_save[0]) & (s < t_save[-1])]
    return torch.unique(s)


def integrate_in_pieces(solve: Callable[[Tensor, Tensor, Tensor], Solution], x0: Tensor, t_save: Tensor,
                        times: Tensor) -> Solution:
    """Chain ``solve(y0, t_piece, rows)`` over the pieces between ``times`` (see the module doc).

    ``solve`` integrates the rows ``rows`` (indices into the batch) from ``y0`` (n, G) over the
    increasing times ``t_piece`` with no switching time inside, and returns their
    :class:`Solution` at ``t_piece``. Returns the batch's solution at ``t_save`` (B, T, G) with
    per-row counters summed over the pieces."""
    B, G = x0.shape
    bounds = torch.cat([t_save[:1], times.to(t_save), t_save[-1:]])
    status = torch.full((B,), int(Status.SUCCESS), dtype=torch.long, device=x0.device)
    counters = torch.zeros(4, B, dtype=torch.long, device=x0.device)
    t_last = torch.full((B,), float("nan"), dtype=x0.dtype, device=x0.device)
    y_last = torch.full((B, G), float("nan"), dtype=x0.dtype, device=x0.device)
    switched = torch.zeros(B, dtype=torch.bool, device=x0.device)
    blocks, y = [], x0
    n_pieces = bounds.numel() - 1
    for k in range(n_pieces):
        a, b = bounds[k], bounds[k + 1]
        inside = t_save[(t_save > a) & (t_save < b)]
        t_piece = torch.cat([a[None], inside, b[None]])
        ok = status == Status.SUCCESS
        every = bool(ok.all())
        rows = torch.arange(B, device=x0.device) if every else torch.nonzero(ok).flatten()
        sub = solve(y if every else y[rows], t_piece, rows)
        block = sub.y
        if not every:  # rows that failed earlier: NaN from here on
            block = torch.full((B, *block.shape[1:]), float("nan"), dtype=block.dtype,
                               device=block.device).index_copy(0, rows, block)
        first = 0 if (k == 0 or bool((t_save == a).any())) else 1  # a save at s_k: after the jump
        last = block.shape[1] if k == n_pieces - 1 else block.shape[1] - 1
        blocks.append(block[:, first:last])
        y = block[:, -1]
        status = status.index_copy(0, rows, sub.status)
        for i, name in enumerate(("n_steps", "n_accepted", "n_rejected", "n_rhs")):
            counters[i].index_add_(0, rows, getattr(sub, name))
        if sub.t_last is not None:
            t_last = t_last.index_copy(0, rows, sub.t_last.to(t_last.dtype))
            y_last = y_last.index_copy(0, rows, sub.y_last.detach().to(y_last.dtype))
        if sub.switched is not None:
            switched = switched.index_copy(0, rows, switched[rows] | sub.switched)
    y_all = torch.cat(blocks, dim=1)
    assert y_all.shape[1] == t_save.numel()
    return Solution(y_all, status, *counters, t_last=t_last, y_last=y_last, switched=switched)

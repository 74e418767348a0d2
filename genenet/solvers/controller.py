"""Step-size controllers: per-row PI control (Hairer's DOPRI5 rule) and fixed steps.

A controller is stateless; its per-row state (``prev_err``, ``rejected``) lives
in the loop and is merged by the same row masks as the solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PIController", "FixedController"]


@dataclass(frozen=True)
class PIController:
    """Proportional-integral step control, per row (Hairer, Norsett & Wanner II, IV.2):

        accept if err <= 1;   h_new = h * clip(safety * err^-alpha * prev_err^beta, 1/facmax... )

    with ``alpha = 1/(q+1) - 0.75 beta`` for an error estimate of order ``q``.
    After a rejection the next step may not grow (Hairer's rule).
    """

    safety: float = 0.9
    beta: float = 0.04
    factor_min: float = 0.2
    factor_max: float = 10.0

    def propose(self, h: Tensor, err: Tensor, prev_err: Tensor, accept: Tensor, rejected_before: Tensor,
                error_order: int) -> tuple[Tensor, Tensor]:
        """New step size (B,) and the updated ``prev_err`` (B,). ``err`` may be +inf (non-finite step)."""
        alpha = 1.0 / (error_order + 1) - 0.75 * self.beta
        safe_err = err.clamp_min(1e-10)
        raw = safe_err.pow(alpha)  # 1/factor for the proportional part (inf when err is inf)
        grow = raw / prev_err.pow(self.beta) / self.safety
        grow = grow.clamp(1.0 / self.factor_max, 1.0 / self.factor_min)
        h_acc = h / grow
        h_acc = torch.where(rejected_before, torch.minimum(h_acc, h), h_acc)
        h_rej = h / torch.clamp(raw / self.safety, max=1.0 / self.factor_min).clamp_min(1.0)
        h_new = torch.where(accept, h_acc, h_rej)
        new_prev = torch.where(accept, err.clamp_min(1e-4), prev_err)
        return h_new, new_prev


@dataclass(frozen=True)
class FixedController:
    """Constant step ``dt``; every finite step is accepted."""

    dt: float

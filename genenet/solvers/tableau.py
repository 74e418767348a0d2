"""Explicit Runge-Kutta tableaus and the one batched RK step every method shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["ButcherTableau", "ExplicitRK", "poly_from_roots"]

RHS = Callable[[Tensor, Tensor, dict], Tensor]


def poly_from_roots(scale: float, roots: Sequence[float], power: int = 0) -> np.ndarray:
    """Coefficients (ascending powers) of ``scale * theta^power * prod (theta - r)``."""
    c = np.array([scale])
    for r in roots:
        c = np.convolve(c, [-r, 1.0])
    return np.concatenate([np.zeros(power), c])


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit RK tableau with an optional embedded error estimate and dense output.

    Attributes
    ----------
    c, a, b : nodes, lower-triangular coefficients (row i has i entries), weights.
    e : weights of the error estimate ``err = h * sum e_i k_i`` (``None`` for fixed-step methods).
    order : order of the solution; ``error_order`` of the embedded estimate.
    dense : ``(S, D)`` coefficients: ``b_i(theta) = sum_d dense[i, d] theta^(d+1)``, so that
        ``y(t + theta h) = y0 + h sum_i b_i(theta) k_i``. ``None`` -> linear in theta.
    fsal : the last stage is ``f(t + h, y1)`` (first same as last).
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    e: tuple[float, ...] | None = None
    error_order: int = 0
    dense: np.ndarray | None = field(default=None, compare=False)
    fsal: bool = False

    @property
    def stages(self) -> int:
        return len(self.c)

    def dense_matrix(self) -> np.ndarray:
        """``(S, D)`` dense-output coefficients (linear interpolation when the method has none)."""
        if self.dense is not None:
            return self.dense
        return np.asarray(self.b, dtype=np.float64)[:, None]


def _weighted(coeffs: Sequence[float], ks: Sequence[Tensor]) -> Tensor:
    """``sum_j coeffs[j] ks[j]``, skipping zero coefficients."""
    acc = None
    for cj, kj in zip(coeffs, ks):
        if cj != 0.0:
            acc = kj * cj if acc is None else acc.add(kj, alpha=cj)
    return torch.zeros_like(ks[0]) if acc is None else acc


def _combo(base: Tensor, h: Tensor, coeffs: Sequence[float], ks: Sequence[Tensor]) -> Tensor:
    """``base + h * sum_j coeffs[j] ks[j]``; h is (B, 1)."""
    return base + h * _weighted(coeffs, ks)


class ExplicitRK:
    """A batched explicit Runge-Kutta method defined by its tableau (final; compose, don't subclass).

    ``step`` advances every row by its own step ``h`` (B,) and returns
    ``(y1, err, ks, f1, failed)``: the new state (B, G), the local error estimate (B, G) or
    ``None``, the stages (list of S tensors (B, G)) for dense output,
    ``f(t + h, y1)`` when the method is FSAL (else ``None``), and ``None`` (implicit methods
    return the rows whose linear system was singular there).
    """

    def __init__(self, name: str, tableau: ButcherTableau) -> None:
        self.name = name
        self.tableau = tableau
        self.adaptive = tableau.e is not None
        self._dense_cache: dict[tuple, Tensor] = {}

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def rhs_per_step(self) -> int:
        return self.tableau.stages - (1 if self.tableau.fsal else 0)

    implicit = False

    def step(self, f: RHS, t: Tensor, y: Tensor, f0: Tensor | None, h: Tensor, args: dict
             ) -> tuple[Tensor, Tensor | None, list[Tensor], Tensor | None, None]:
        tab = self.tableau
        hc = h[:, None]
        ks = [f0 if (tab.fsal and f0 is not None) else f(t, y, args)]
        yi = y
        for i in range(1, tab.stages):
            yi = _combo(y, hc, tab.a[i], ks)
            ks.append(f(t + tab.c[i] * h, yi, args))
        y1 = yi if tab.fsal else _combo(y, hc, tab.b, ks)
        err = None if tab.e is None else hc * _weighted(tab.e, ks)
        return y1, err, ks, (ks[-1] if tab.fsal else None), None

    @property
    def detects_stiffness(self) -> bool:
        """Whether :meth:`stiffness` has its two last stages at ``t + h`` (FSAL pairs with an error estimate)."""
        tab = self.tableau
        return bool(tab.fsal and tab.e is not None and tab.c[-1] == 1.0 and tab.c[-2] == 1.0)

    def stiffness(self, h: Tensor, ks: list[Tensor]) -> Tensor | None:
        """Hairer's stiffness estimate ``h |f(y1) - f(Y)| / |y1 - Y|`` (B,) from the last two stages,
        both at ``t + h`` (DOPRI5, Tsit5); ``None`` for methods without such a pair. Values above
        ~3.25 mean the step sits on the explicit method's stability boundary."""
        tab = self.tableau
        if not self.detects_stiffness:
            return None
        diff = [x - y for x, y in zip(tab.a[-1], tab.a[-2] + (0.0,))]
        dy = h[:, None] * _weighted(diff, ks)
        df = ks[-1] - ks[-2]
        num = df.detach().pow(2).sum(-1)
        den = dy.detach().pow(2).sum(-1)
        return h.detach() * torch.sqrt(num / den.clamp_min(1e-300))

    def dense_weights(self, theta: Tensor) -> Tensor:
        """``b_i(theta)`` for theta (B, K) -> (B, K, S)."""
        key = (theta.device, theta.dtype)
        if key not in self._dense_cache:
            self._dense_cache[key] = torch.as_tensor(self.tableau.dense_matrix(), device=theta.device,
                                                     dtype=theta.dtype)
        P = self._dense_cache[key]  # (S, D)
        powers = torch.stack([theta ** (d + 1) for d in range(P.shape[1])], dim=-1)  # (B, K, D)
        return powers @ P.T

    def interpolate(self, y0: Tensor, h: Tensor, ks: list[Tensor], theta: Tensor) -> Tensor:
        """Dense output ``y(t + theta h)`` for theta (B, K) -> (B, K, G)."""
        W = self.dense_weights(theta)  # (B, K, S)
        K = torch.stack(ks, dim=1)  # (B, S, G)
        return y0[:, None, :] + h[:, None, None] * torch.bmm(W, K)

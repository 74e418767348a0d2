"""gn.fit(): build the problem, draw starts, run one optimizer over all starts, collect the result."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data import ExpressionData
from ..distributed import map_chunks, row_chunks, uses_cluster
from ..models.base import Model
from .optimizers import (
    HESSIANS,
    OptimResult,
    first_order_optimal,
    gauss_newton_decrement,
    judge,
    levenberg_marquardt,
    negligible_at,
    negligible_columns,
    torch_optimizer,
    trust_ncg,
)
from .problem import FitProblem
from .result import FitResult

__all__ = ["fit", "latin_hypercube_starts"]

METHODS = ("lm", "trust-ncg", "lbfgs", "adam")


def latin_hypercube_starts(problem: FitProblem, n: int, seed: int = 0, spread: float = 10.0) -> Tensor:
    """``n`` starts (n, d): the current values first, then a Latin hypercube around them.

    Positive (log-stored) entries are sampled log-uniformly within ``[value / spread,
    value * spread]``, clipped to their bounds; box-bounded entries over their whole range
    in logit space (``±4``); unbounded ones ``± spread``; observation scales and initial
    states within a factor 3.
    """
    from scipy.stats import qmc

    theta0 = problem.theta0
    d = problem.n
    if n == 1 or d == 0:
        return theta0[None].clone()
    half = []
    for name, _ in problem.entry_labels:
        if name in problem.model.specs:
            lo, hi = (problem.bounded[name] if name in problem.bounded else problem.model.specs[name]).bounds
            half.append(4.0 if math.isfinite(lo) and math.isfinite(hi) else
                        (math.log(spread) if (math.isfinite(lo) or math.isfinite(hi)) else spread))
        else:
            half.append(math.log(3.0))
    half_t = torch.as_tensor(half, dtype=theta0.dtype, device=theta0.device)
    u = qmc.LatinHypercube(d=d, seed=seed).random(n - 1)
    draws = theta0 + (2 * torch.as_tensor(u, dtype=theta0.dtype, device=theta0.device) - 1) * half_t
    return torch.cat([theta0[None], draws])


def fit(
    model: Model,
    data: ExpressionData | pd.DataFrame,
    free: Sequence[str] | Mapping[str, Any] = ("production",),
    method: str = "lm",
    x0: Any = None,
    multistart: int = 1,
    seed: int = 0,
    max_iter: int = 100,
    progress: bool = True,
    *,
    conditions: Mapping[str, Any] | None = None,
    noise: str = "gaussian",
    scale: bool = False,
    offset: bool = False,
    l2: float = 0.0,
    l1: float = 0.0,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    hessian: str = "exact",
    max_time: float | None = None,
    starts: Tensor | np.ndarray | None = None,
    start_spread: float = 10.0,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    device: str | torch.device = "cpu",
    dtype: Any = None,
    cluster: Any = None,
    chunk_size: int | None = None,
) -> FitResult:
    r"""Estimate free parameters of ``model`` from expression ``data``.

    **Main arguments**

    model : Model whose current values are the start (and the fixed values).
    data : ExpressionData (or a long DataFrame ``condition, time, gene, value[, sd]``).
    free : names to estimate (all entries), or ``{name: entries}``; add ``"x0"`` to estimate
        the initial states (by default they are the data at the first time point).
    method : ``"lm"`` (batched Levenberg-Marquardt with the exact residual Jacobian),
        ``"trust-ncg"`` (trust-region Newton-CG with Hessian-vector products, see ``hessian``),
        ``"lbfgs"``, ``"adam"``.
    x0 : initial states (G,) or (C, G) instead of the data's first time point.
    multistart : number of starts; the first is the model's current values, the others
        a Latin hypercube around them (see :func:`latin_hypercube_starts`); all starts are
        simulated together as rows of one batch.
    seed : seed of the Latin hypercube.

    **Other arguments** (keyword-only): ``conditions`` (data label -> perturbations),
    ``noise`` (``"gaussian"``, ``"estimate"``, ``"log"``), ``scale``/``offset`` (per-gene
    observation parameters), ``l2``/``l1`` penalties, ``bounds`` (``{"production": (0.1, 100)}``:
    a box per free parameter, honoured by every method through a change of variables, see
    :class:`~genenet.fit.FitProblem`), ``hessian`` (``"trust-ncg"``'s model: ``"exact"``, the loss's
    Hessian, or ``"gauss-newton"``, ``JᵀJ``, for least-squares losses; see
    :func:`~genenet.fit.optimizers.trust_ncg`), ``max_time`` (seconds; then the starts still
    iterating stop, reason "max_time reached", never converged), ``starts`` (explicit (S, n)
    unconstrained starts), ``start_spread`` (multistart range: a factor around the start
    values for positive parameters), solver tolerances, device/dtype (float64 on CPU by default),
    ``cluster``/``chunk_size`` (the starts in chunks of ``chunk_size`` on Dask workers: ``"local"``,
    a scheduler address or a ``distributed.Client``, see :mod:`genenet.distributed`; ``"lm"`` and
    ``"trust-ncg"`` treat every start on its own, so a start ends where it would in one call;
    ``"lbfgs"`` and ``"adam"`` step a chunk's starts together).

    **Returns** :class:`FitResult` (``.params`` with 95% intervals, ``.loss``, ``.history``,
    ``.converged`` and ``.reason``, ``.starts``, ``.model``, ``.predict``, plots, JSON).

    The loss is ``½ Σ r²`` (+ penalties) with ``r = (prediction - value) / sd``; see
    :class:`genenet.fit.FitProblem`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(METHODS)}")
    if hessian not in HESSIANS:
        raise ValueError(f"unknown hessian {hessian!r}; allowed: {list(HESSIANS)}")
    if isinstance(data, pd.DataFrame):
        data = ExpressionData.from_frame(data)
    if isinstance(multistart, bool) or not isinstance(multistart, (int, np.integer)) or multistart < 1:
        raise ValueError(f"multistart must be a positive integer, got {multistart!r}")
    problem = FitProblem(model, data, free, conditions=conditions, x0=x0, noise=noise, scale=scale, offset=offset,
                         l2=l2, l1=l1, bounds=bounds, rtol=rtol, atol=atol, device=device, dtype=dtype)
    if starts is not None:
        theta = torch.as_tensor(np.asarray(starts), dtype=problem.dtype, device=problem.device)
        if theta.ndim != 2 or theta.shape[1] != problem.n:
            raise ValueError(f"starts must have shape (S, {problem.n}), got {tuple(theta.shape)}")
    else:
        theta = latin_hypercube_starts(problem, int(multistart), seed=seed, spread=start_spread)
    if not uses_cluster(cluster):
        res = _optimize(problem, theta, method=method, max_iter=max_iter, progress=progress, hessian=hessian,
                        max_time=max_time)
    else:
        parts = map_chunks(_optimize, lambda threads: [theta[c] for c in row_chunks(len(theta), chunk_size, threads)],
                           dict(problem=problem, method=method, max_iter=max_iter, progress=False, hessian=hessian,
                                max_time=max_time),
                           key="theta",
                           cluster=cluster, progress=progress, desc="fit")
        res = OptimResult.concat(parts)
    res = certify(problem, res, theta)
    if res.initial_loss is not None:
        initial = res.initial_loss.cpu().numpy()
    else:
        with torch.no_grad():
            initial = problem.loss(theta).cpu().numpy()
    final = res.loss.detach().cpu().numpy()
    best = int(np.nanargmin(np.where(np.isfinite(final), final, np.inf)))
    reached = np.isfinite(final) & (final <= final[best] + REACHED_BEST * abs(final[best]) + 1e-12)
    table = pd.DataFrame({"start": np.arange(len(final)), "initial_loss": initial, "final_loss": final,
                          "reached_best": reached, "converged": res.converged,
                          "optimality": res.optimality if res.optimality is not None else np.full(len(final), np.nan),
                          "iterations": res.iterations, "reason": res.reason})
    history = (np.minimum.accumulate(np.array([np.nanmin(np.where(np.isfinite(h), h, np.inf))
                                               for h in res.history]))
               if res.history else np.array([final[best]]))
    theta_best = res.theta[best].detach()
    times = getattr(res.history, "times", None)
    return FitResult(problem=problem, theta=theta_best, loss=float(final[best]),
                     history_times=np.asarray(times) if times is not None and len(times) == len(history) else None,
                     converged=bool(res.converged[best]), reason=res.reason[best], history=history,
                     starts=table, start_theta=res.theta.detach(), method=method,
                     covariance=_covariance(problem, theta_best, *((res.residuals[best], res.jacobian[best])
                                                                  if res.jacobian is not None else ())))


#: a start "reached the best loss" when its final loss is within this fraction of the best start's
REACHED_BEST = 0.01


def certify(problem: FitProblem, res: OptimResult, start: Tensor | None = None) -> OptimResult:
    """Set every start's ``converged`` by one test, whatever the method: a first-order optimum, where
    a full Gauss-Newton step would lower the loss by at most 1e-8 of it (:func:`gauss_newton_decrement`
    at the final point, one sensitivity solve of the starts). Stops at ``max_iter`` or on a failed
    simulation are never converged; a start that stopped elsewhere is told why it is not, and free
    parameters that lost all influence during the fit (``start``: the starts (S, n), to tell) are
    named (see :func:`~genenet.fit.optimizers.judge`). ``lm`` applies this test itself. Losses that
    are not a sum of squares (``noise="estimate"``, ``l1``) keep their optimizer's flag (the test
    needs residuals)."""
    if res.optimality is not None or problem.noise == "estimate" or problem.l1 or problem.n == 0:
        return res

    with torch.no_grad():
        r, J = problem.least_squares_jacobian(res.theta)
        loss = 0.5 * (r * r).sum(dim=1)
        decrement = gauss_newton_decrement(J, r)
        optimum = first_order_optimal(decrement, loss, 1e-8).cpu().numpy()
        ratio = (decrement / loss.clamp_min(1e-300)).cpu().numpy()
        ran_off = negligible_columns(J).cpu().numpy() & (start is not None)
    if ran_off.any():
        ran_off &= ~negligible_at(problem, start).cpu().numpy()
    converged, reasons = judge(problem, res.reason, optimum, ratio, ran_off)
    # the data rows are handed on: the covariance needs the same Jacobian (n tangent solves: minutes
    # and gigabytes for hundreds of parameters on a large screen, not to be paid twice)
    M = r.shape[1] - (problem.n if problem.l2 else 0)
    return dataclasses.replace(res, converged=converged, reason=reasons, optimality=ratio,
                               residuals=r[:, :M], jacobian=J[:, :M])


def _optimize(problem: FitProblem, theta: Tensor, *, method: str, max_iter: int, progress: bool,
              hessian: str = "exact", max_time: float | None = None) -> OptimResult:
    """Run the optimizer ``method`` from the starts ``theta`` (S, n)."""
    if method == "lm":
        return levenberg_marquardt(problem, theta, max_iter=max_iter, progress=progress, max_time=max_time)
    if method == "trust-ncg":
        return trust_ncg(problem, theta, max_iter=max_iter, progress=progress, hessian=hessian, max_time=max_time)
    return torch_optimizer(problem, theta, method=method, max_iter=max_iter, progress=progress, max_time=max_time)


def _covariance(problem: FitProblem, theta: Tensor, r: Tensor | None = None, J: Tensor | None = None
                ) -> np.ndarray | None:
    """Gauss-Newton covariance of θ: ``s² (JᵀJ)⁺`` with ``s² = 1`` when the data carry sd
    (or sd is estimated) and ``s² = 2L / (M - n)`` otherwise. ``r``, ``J`` at θ when known."""
    if problem.n == 0:
        return None
    if J is None:
        with torch.no_grad():
            r, J = problem.jacobian(theta[None])
        r, J = r[0], J[0]
    r, J = r.cpu().numpy(), J.cpu().numpy()
    if not np.all(np.isfinite(J)):
        return None
    A = J.T @ J + (problem.l2 * np.eye(problem.n) if problem.l2 else 0.0)
    cov = np.linalg.pinv(A)
    if not problem.data.has_sd and problem.noise != "estimate":
        dof = max(len(r) - problem.n, 1)
        cov = cov * float(r @ r) / dof
    return cov

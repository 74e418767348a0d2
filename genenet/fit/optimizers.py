"""Optimizers over a batch of starts Θ (S, n). Each returns per start: θ, loss, iterations,
converged flag and reason, and the best-loss history.

- ``levenberg_marquardt``: batched LM / Gauss-Newton with the exact residual Jacobian,
  ``(JᵀJ + μ diag(JᵀJ)) δ = -Jᵀr``; μ shrinks x3 after a successful step, grows x4 after a
  failed one (Nielsen-style), all starts solved together.
- ``trust_ncg``: scipy's matrix-free trust-region Newton-CG (Steihaug) per start, fed the
  exact gradient and exact Hessian-vector products (the Hessian is never formed).
- ``torch_optimizer``: L-BFGS or Adam on the summed loss of all starts (they are
  independent, so the sum's gradient is every start's gradient).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .problem import FitProblem

__all__ = ["OptimResult", "levenberg_marquardt", "trust_ncg", "torch_optimizer"]


@dataclass
class OptimResult:
    theta: Tensor  # (S, n)
    loss: Tensor  # (S,)
    iterations: np.ndarray
    converged: np.ndarray
    reason: list[str]
    history: list[np.ndarray] = field(default_factory=list)  # per iteration: loss of every start
    initial_loss: Tensor | None = None  # (S,), when the optimizer evaluated it anyway
    residuals: Tensor | None = None  # (S, M) data residuals at theta, when known
    jacobian: Tensor | None = None  # (S, M, n) their Jacobian at theta, when known


def _bar(progress: bool, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


def levenberg_marquardt(problem: FitProblem, theta: Tensor, *, max_iter: int = 100, ftol: float = 1e-10,
                        xtol: float = 1e-10, gtol: float = 1e-10, progress: bool = False,
                        fixed: Tensor | None = None) -> OptimResult:
    """Batched LM. Each iteration is ONE solve: the residuals and the Jacobian of every trial
    point come together from the forward-sensitivity solve (the Jacobian is kept when the
    trial is accepted), and only starts still iterating are simulated.

    ``fixed`` (S, n) bool: entries held at their start value (zero Jacobian columns -> zero step).
    """
    S, n = theta.shape
    keep = None if fixed is None else (~fixed).to(theta.dtype)[:, None, :]
    if problem.noise == "estimate" or problem.l1:
        raise ValueError("method='lm' needs a pure least-squares loss: use noise='gaussian'/'log' and l1=0, or "
                         "method='trust-ncg'/'lbfgs'")
    mu = torch.full((S,), 1e-3, dtype=theta.dtype, device=theta.device)
    eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
    th = theta.detach().clone()
    active = torch.ones(S, dtype=torch.bool, device=th.device)
    iters = np.zeros(S, dtype=int)
    reason = ["max_iter reached"] * S
    history = []

    def evaluate(idx: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residuals (with the L2 rows), Jacobian and loss (+inf on failure) of starts ``idx`` at ``t``."""
        r, J = problem.jacobian(t)
        k = None if keep is None else keep[idx]
        if k is not None:
            J = J * k
        if problem.l2:
            r = torch.cat([r, problem.penalty_residuals(t)], dim=1)
            J = torch.cat([J, (problem.l2 ** 0.5) * eye.expand(len(idx), n, n) * (1 if k is None else k)], dim=1)
        loss = 0.5 * (r * r).sum(dim=1)
        return r, J, torch.where(torch.isfinite(loss), loss, torch.full_like(loss, float("inf")))

    with torch.no_grad():
        everyone = torch.arange(S, device=th.device)
        r, J, loss = evaluate(everyone, th)
        initial = loss.clone()
        bad_start = ~torch.isfinite(loss)
        for s in torch.nonzero(bad_start).flatten().tolist():
            reason[s] = "simulation failed at the start point"
        active &= ~bad_start
        bar = _bar(progress, max_iter, "lm")
        for _ in range(max_iter):
            history.append(loss.cpu().numpy().copy())
            Jf, rf = torch.nan_to_num(J), torch.nan_to_num(r)
            A = Jf.transpose(1, 2) @ Jf
            g = (Jf.transpose(1, 2) @ rf[..., None])[..., 0]
            small_g = g.abs().amax(dim=1) <= gtol * (1 + loss)
            for s in torch.nonzero(active & small_g).flatten().tolist():
                reason[s] = "gradient below gtol"
            active &= ~small_g
            if not bool(active.any()):
                break
            idx = torch.nonzero(active).flatten()
            D = torch.diagonal(A[idx], dim1=1, dim2=2).clamp_min(1e-12)
            delta = torch.linalg.solve(A[idx] + (mu[idx, None] * D)[:, :, None] * eye, -g[idx])
            trial = th[idx] + delta
            r_new, J_new, loss_new = evaluate(idx, trial)
            ok = loss_new < loss[idx]
            accept = torch.zeros_like(active)
            accept[idx] = ok
            if bool(ok.any()):
                a = idx[ok]
                rel = (loss[a] - loss_new[ok]) / loss[a].clamp_min(1e-300)
                step = delta[ok].abs().amax(dim=1) / (1 + th[a].abs().amax(dim=1))
                th[a], r[a], J[a], loss[a] = trial[ok], r_new[ok], J_new[ok], loss_new[ok]
                for k, s in enumerate(a.tolist()):
                    if rel[k] <= ftol:
                        reason[s] = "relative loss decrease below ftol"
                        active[s] = False
                    elif step[k] <= xtol:
                        reason[s] = "step below xtol"
                        active[s] = False
            mu = torch.where(accept, (mu / 3).clamp_min(1e-12), torch.where(active, mu * 4, mu))
            stuck = active & (mu > 1e12)
            for s in torch.nonzero(stuck).flatten().tolist():
                reason[s] = "damping grew without an improving step (local minimum or noisy loss)"
            active &= ~stuck
            iters += active.cpu().numpy() | accept.cpu().numpy()
            bar.update(1)
        bar.close()
    converged = np.array([not r_.startswith(("max_iter", "simulation")) for r_ in reason])
    n_data = problem.n_obs
    return OptimResult(th, loss, iters, converged, reason, history, initial_loss=initial,
                       residuals=r[:, :n_data], jacobian=J[:, :n_data])


def _scipy_functions(problem: FitProblem, theta: Tensor) -> tuple[Any, Any]:
    """Loss-and-gradient (cached for the last point) and Hessian-vector product for scipy, one start."""
    cache: dict[bytes, tuple[float, np.ndarray]] = {}

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        key = x.tobytes()
        if key not in cache:
            L, g = problem.gradient(torch.as_tensor(x, dtype=theta.dtype, device=theta.device)[None])
            Lf = float(L[0])
            cache.clear()
            cache[key] = (Lf if np.isfinite(Lf) else 1e300,
                          np.nan_to_num(g[0].cpu().numpy()) if np.isfinite(Lf) else np.zeros_like(x))
        return cache[key]

    def hessp(x: np.ndarray, p: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(x, dtype=theta.dtype, device=theta.device)[None]
        v = torch.as_tensor(p, dtype=theta.dtype, device=theta.device)[None]
        return np.nan_to_num(problem.hvp(t, v)[0].cpu().numpy())

    return fg, hessp


def trust_ncg(problem: FitProblem, theta: Tensor, *, max_iter: int = 100, gtol: float = 1e-8,
              progress: bool = False) -> OptimResult:
    from scipy.optimize import minimize

    S, n = theta.shape
    out_th, out_L, iters, conv, reasons, hist = [], [], [], [], [], []
    bar = _bar(progress, S, "trust-ncg")
    for s in range(S):
        trace: list[float] = []
        fg, hessp = _scipy_functions(problem, theta)
        res = minimize(lambda x, fg=fg: fg(x)[0], theta[s].detach().cpu().numpy(), jac=lambda x, fg=fg: fg(x)[1],
                       hessp=hessp, method="trust-ncg", options={"maxiter": max_iter, "gtol": gtol},
                       callback=lambda xk, fg=fg, trace=trace: trace.append(fg(xk)[0]))
        out_th.append(torch.as_tensor(res.x, dtype=theta.dtype, device=theta.device))
        out_L.append(float(res.fun))
        iters.append(int(res.nit))
        conv.append(bool(res.success))
        reasons.append(str(res.message))
        hist.append(np.array(trace))
        bar.update(1)
    bar.close()
    width = max((len(h) for h in hist), default=0)
    history = [np.array([h[min(i, len(h) - 1)] if len(h) else np.nan for h in hist]) for i in range(width)]
    return OptimResult(torch.stack(out_th), torch.as_tensor(out_L, dtype=theta.dtype), np.array(iters),
                       np.array(conv), reasons, history)


def torch_optimizer(problem: FitProblem, theta: Tensor, *, method: str = "lbfgs", max_iter: int = 200,
                    lr: float | None = None, tol: float = 1e-9, progress: bool = False) -> OptimResult:
    th = theta.detach().clone().requires_grad_(True)
    S = th.shape[0]
    if method == "lbfgs":
        opt = torch.optim.LBFGS([th], lr=lr or 1.0, max_iter=20, line_search_fn="strong_wolfe")
    elif method == "adam":
        opt = torch.optim.Adam([th], lr=lr or 0.05)
    else:
        raise ValueError(f"unknown torch optimizer {method!r}; allowed: 'lbfgs', 'adam'")
    history = []
    last = None

    def closure() -> Tensor:
        opt.zero_grad()
        L = problem.loss(th)
        total = torch.where(torch.isfinite(L), L, torch.zeros_like(L)).sum()
        total.backward()
        return total

    bar = _bar(progress, max_iter, method)
    it = 0
    reason = "max_iter reached"
    while it < max_iter:
        it += 1
        total = opt.step(closure)
        with torch.no_grad():
            L = problem.loss(th)
        history.append(L.cpu().numpy().copy())
        bar.update(1)
        value = float(total.detach())
        if last is not None and abs(last - value) <= tol * (1 + abs(value)):
            reason = "relative loss change below tol"
            break
        last = value
    bar.close()
    conv = np.full(S, reason != "max_iter reached")
    return OptimResult(th.detach(), problem.loss(th.detach()).detach(), np.full(S, it), conv, [reason] * S,
                       history)

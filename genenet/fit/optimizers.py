"""Optimizers over a batch of starts Θ (S, n). Each returns per start: θ, loss, iterations,
converged flag and reason, and the best-loss history.

- ``levenberg_marquardt``: batched LM / Gauss-Newton with the exact residual Jacobian,
  ``(JᵀJ + μ diag(JᵀJ)) δ = -Jᵀr``; μ shrinks x3 after a successful step, grows x4 after a
  failed one (Nielsen-style), all starts solved together.
- ``trust_ncg``: matrix-free trust-region Newton-CG (Steihaug), all starts together, with
  exact Hessian-vector products (the Hessian is never formed).
- ``torch_optimizer``: L-BFGS or Adam on the summed loss of all starts (they are
  independent, so the sum's gradient is every start's gradient).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import native
from ..rows import concat_rows
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

    @classmethod
    def concat(cls, parts: list[OptimResult]) -> OptimResult:
        """The starts of several runs as one run: per-start fields concatenated in order; the
        history per iteration, a run that stopped earlier repeating its last losses."""
        length = max(len(p.history) for p in parts)
        history = []
        for i in range(length):
            history.append(np.concatenate([p.history[min(i, len(p.history) - 1)] if p.history
                                           else p.loss.detach().cpu().numpy() for p in parts]))
        return dataclasses.replace(concat_rows(parts, shared=("history",)), history=history)


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


def _steihaug(hvp: Any, g: Tensor, radius: Tensor, max_cg: int) -> tuple[Tensor, Tensor, Tensor]:
    """Steihaug-Toint truncated CG for ``min_p gᵀp + ½ pᵀHp, |p| <= radius`` on every row at once.

    ``hvp(d (S, n)) -> H d`` for all rows. CG stops per row at negative curvature or the
    trust-region boundary (then ``p`` goes to the boundary along the current direction) or
    when the residual is below ``min(0.5, √|g|) |g|`` (Eisenstat-Walker forcing, as scipy).
    Returns the step (S, n), its model decrease ``m(p)`` (S,) and whether it hit the boundary.
    """
    S = g.shape[0]
    z = torch.zeros_like(g)
    r = g.clone()  # residual H z + g
    d = -r
    m = torch.zeros(S, dtype=g.dtype, device=g.device)
    gnorm = g.norm(dim=1)
    tol = torch.minimum(torch.full_like(gnorm, 0.5), gnorm.sqrt()) * gnorm
    done = gnorm <= tol
    boundary = torch.zeros_like(done)

    def to_boundary(z: Tensor, d: Tensor) -> Tensor:
        """τ >= 0 with |z + τ d| = radius."""
        a, b, c = (d * d).sum(1), 2 * (z * d).sum(1), (z * z).sum(1) - radius ** 2
        return (-b + (b * b - 4 * a * c).clamp_min(0).sqrt()) / (2 * a).clamp_min(1e-300)

    for _ in range(max_cg):
        Hd = hvp(d)
        dHd = (d * Hd).sum(1)
        rr = (r * r).sum(1)
        alpha = rr / torch.where(dHd > 0, dHd, torch.ones_like(dHd))
        z_new = z + alpha[:, None] * d
        leave = ~done & ((dHd <= 0) | (z_new.norm(dim=1) >= radius))
        tau = to_boundary(z, d)
        step = torch.where(leave, tau, alpha)
        go = ~done
        m = torch.where(go, m + step * (d * r).sum(1) + 0.5 * step ** 2 * dHd, m)
        z = torch.where(go[:, None], z + step[:, None] * d, z)
        boundary |= leave
        done |= leave
        r_new = r + alpha[:, None] * Hd
        small = ~done & (r_new.norm(dim=1) <= tol)
        beta = (r_new * r_new).sum(1) / rr.clamp_min(1e-300)
        keep = ~done
        r = torch.where(keep[:, None], r_new, r)
        d = torch.where(keep[:, None], -r_new + beta[:, None] * d, d)
        done |= small
        if bool(done.all()):
            break
    return z, m, boundary


def trust_ncg(problem: FitProblem, theta: Tensor, *, max_iter: int = 100, gtol: float = 1e-8,
              ftol: float = 1e-10, xtol: float = 1e-10, initial_radius: float = 1.0, max_radius: float = 1e3,
              eta: float = 0.15, progress: bool = False) -> OptimResult:
    """Batched trust-region Newton-CG (Nocedal & Wright, Alg. 7.2 with Steihaug CG) on every start.

    Per iteration: the loss and gradient of all active starts with the graph kept, then CG
    on the exact Newton model using Hessian-vector products (a second backward through the
    kept graph per CG step; the Hessian is never formed), then one loss evaluation of the
    trial points. A trial is accepted when the actual/predicted reduction ``ρ > eta``; the
    radius shrinks x¼ when ``ρ < ¼`` and doubles when ``ρ > ¾`` on the boundary.
    """
    S, n = theta.shape
    th = theta.detach().clone()
    radius = torch.full((S,), float(initial_radius), dtype=th.dtype, device=th.device)
    active = torch.ones(S, dtype=torch.bool, device=th.device)
    iters = np.zeros(S, dtype=int)
    reason = ["max_iter reached"] * S
    history = []
    with torch.no_grad():
        loss = problem.loss(th)
    initial = loss.clone()
    for s in torch.nonzero(~torch.isfinite(loss)).flatten().tolist():
        reason[s] = "simulation failed at the start point"
    active &= torch.isfinite(loss)
    bar = _bar(progress, max_iter, "trust-ncg")
    for _ in range(max_iter):
        history.append(loss.cpu().numpy().copy())
        if not bool(active.any()):
            break
        idx = torch.nonzero(active).flatten()
        tt = th[idx].clone().requires_grad_(True)
        with native.torch_path():  # Hessian-vector products: reverse over reverse through the torch graph
            L = problem.loss(tt)
        (g,) = torch.autograd.grad(torch.where(torch.isfinite(L), L, 0.0).sum(), tt, create_graph=True)
        g0 = torch.nan_to_num(g.detach())
        small = g0.abs().amax(dim=1) <= gtol * (1 + loss[idx])
        for s in idx[small].tolist():
            reason[s] = "gradient below gtol"

        def hvp(d: Tensor, g: Tensor = g, tt: Tensor = tt) -> Tensor:
            (hd,) = torch.autograd.grad((g * d).sum(), tt, retain_graph=True)
            return torch.nan_to_num(hd)

        p, m, boundary = _steihaug(hvp, g0, radius[idx], max_cg=2 * n)
        del g, tt, L
        with torch.no_grad():
            L_new = problem.loss(th[idx] + p)
            rho = (L_new - loss[idx]) / torch.where(m < 0, m, torch.full_like(m, -1e-300))
            ok = ~small & torch.isfinite(L_new) & (rho > eta) & (L_new <= loss[idx])
            pn = p.norm(dim=1)
            r_new = torch.where(~torch.isfinite(rho) | (rho < 0.25), 0.25 * pn,
                                torch.where((rho > 0.75) & boundary, (2 * radius[idx]).clamp(max=max_radius),
                                            radius[idx]))
            radius[idx] = torch.where(small, radius[idx], r_new)
            rel = (loss[idx] - L_new) / loss[idx].abs().clamp_min(1e-300)
            step = p.abs().amax(dim=1) / (1 + th[idx].abs().amax(dim=1))
            a = idx[ok]
            th[a], loss[a] = th[a] + p[ok], L_new[ok]
            iters[idx.cpu().numpy()] += 1
            for k, s in enumerate(idx.tolist()):
                if bool(small[k]):
                    active[s] = False
                elif bool(ok[k]) and rel[k] <= ftol:
                    reason[s], active[s] = "relative loss decrease below ftol", False
                elif bool(ok[k]) and step[k] <= xtol:
                    reason[s], active[s] = "step below xtol", False
                elif radius[s] < 1e-12 * (1 + th[s].abs().max()):
                    reason[s], active[s] = "trust radius collapsed (local minimum or noisy loss)", False
        bar.update(1)
    bar.close()
    converged = np.array([not r_.startswith(("max_iter", "simulation")) for r_ in reason])
    return OptimResult(th, loss, iters, converged, reason, history, initial_loss=initial)


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

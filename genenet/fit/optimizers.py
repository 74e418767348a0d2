"""Optimizers over a batch of starts Θ (S, n). Each returns per start: θ, loss, iterations,
converged flag and reason, and the best-loss history.

- ``levenberg_marquardt``: batched LM with the exact residual Jacobian, Moré's scaling, the
  damping driven by the gain ratio (Nielsen), MINPACK-style stopping rules, and ``converged``
  only at a first-order optimum (:func:`gauss_newton_decrement`); all starts solved together.
- ``trust_ncg``: matrix-free trust-region Newton-CG (Steihaug), all starts together, with
  exact Hessian-vector products (the Hessian is never formed).
- ``torch_optimizer``: L-BFGS or Adam on the summed loss of all starts (they are
  independent, so the sum's gradient is every start's gradient).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import native
from ..rows import concat_rows
from .problem import FitProblem

__all__ = ["OptimResult", "levenberg_marquardt", "trust_ncg", "torch_optimizer", "gauss_newton_decrement",
           "first_order_optimal"]


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
    optimality: np.ndarray | None = None  # (S,) Gauss-Newton decrement / loss at theta, when known

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


class History(list):
    """Per iteration the loss of every start (S,), with the wall time of each entry since the list was
    made in ``times`` (seconds): loss against time, for benchmarks and plots."""

    def __init__(self, items: Any = ()) -> None:  # items: as list(), so copies (to_host) stay lists
        super().__init__(items)
        self.start, self.times = time.perf_counter(), []

    def append(self, losses: np.ndarray) -> None:
        super().append(losses)
        self.times.append(time.perf_counter() - self.start)

    def out_of_time(self, max_time: float | None) -> bool:
        """More than ``max_time`` seconds since the list was made (never with ``None``)."""
        return max_time is not None and time.perf_counter() - self.start > max_time


#: reasons that end a start before any stopping rule was met: never converged
UNFINISHED = ("max_iter", "max_time", "simulation")


def _time_out(reason: list[str], active: Tensor) -> None:
    """Mark the starts still iterating as stopped by ``max_time``."""
    for s in torch.nonzero(active).flatten().tolist():
        reason[s] = "max_time reached"


def _bar(progress: bool, total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


#: a Jacobian column whose norm is below this fraction of the largest column's is taken as zero
NEGLIGIBLE_COLUMN = 1e-8


def negligible_columns(J: Tensor) -> Tensor:
    """(S, n) bool: parameters with no influence on the residuals at this point (their column of
    ``J`` (S, M, n) is below :data:`NEGLIGIBLE_COLUMN` of the largest)."""
    norms = torch.nan_to_num(J).norm(dim=1)
    return norms <= NEGLIGIBLE_COLUMN * norms.amax(dim=1, keepdim=True)


def gauss_newton_decrement(J: Tensor, r: Tensor) -> Tensor:
    """``½ |P_J r|²`` per start (S,): the decrease of ``½ |r|²`` that a full Gauss-Newton step
    ``δ = -J⁺ r`` promises by the linear model, from the residuals ``r`` (S, M) and their Jacobian
    ``J`` (S, M, n). Divided by the loss it is the squared cosine between ``r`` and the range of ``J``
    (MINPACK's ``gtol`` measure for all columns at once): 0 at a first-order optimum, 1 where the
    linear model could remove all of the loss. Columns are scaled to unit norm first (invariant to
    the parameters' units), negligible ones (:func:`negligible_columns`) dropped; rank-deficient J
    (unidentifiable directions) is fine: the pseudoinverse."""
    Jf, rf = torch.nan_to_num(J), torch.nan_to_num(r)
    norms = Jf.norm(dim=1)  # (S, n)
    # columns of no influence (a saturated Hill term: a threshold far above its regulator's range)
    # carry only rounding; scaled to unit norm they would look like real directions, so they are dropped
    live = norms > NEGLIGIBLE_COLUMN * norms.amax(dim=1, keepdim=True)
    Js = torch.where(live[:, None, :], Jf / norms.clamp_min(1e-300)[:, None, :], torch.zeros_like(Jf))
    A = Js.transpose(1, 2) @ Js
    g = (Js.transpose(1, 2) @ rf[..., None])[..., 0]
    w, V = torch.linalg.eigh(A)
    cut = w.amax(dim=1, keepdim=True).clamp_min(0) * (A.shape[-1] * torch.finfo(A.dtype).eps)
    inv = torch.where(w > cut, 1.0 / w.clamp_min(1e-300), torch.zeros_like(w))
    c = (V.transpose(1, 2) @ g[..., None])[..., 0]
    return 0.5 * (c * c * inv).sum(dim=1)


def first_order_optimal(decrement: Tensor, loss: Tensor, tol: float) -> Tensor:
    """A start is at a first-order optimum within ``tol`` when a full Gauss-Newton step could lower
    its loss by at most ``tol`` of the loss (or by less than 1e-14 in absolute terms: a zero-residual
    fit at the solver's rounding floor)."""
    return torch.isfinite(loss) & (decrement <= tol * loss + 1e-14)


def judge(problem: FitProblem, reason: list[str], optimum: np.ndarray, ratio: np.ndarray, ran_off: np.ndarray
          ) -> tuple[np.ndarray, list[str]]:
    """Each start's ``converged`` flag and its reason, told why when it is not: converged is a
    first-order optimum (``optimum``; ``ratio`` the Gauss-Newton decrement over the loss) that
    did not stop at ``max_iter`` or on a failed simulation. Free parameters that lost all influence
    on the residuals during the fit (``ran_off``, (S, n)) are named: they went to the edge of their
    range (a threshold far above its regulator's values saturates its Hill term), where the loss
    is flat in them: the optimum is there in the limit, the parameter is not identifiable from
    these data, and on a plateau far above the best start's loss it is a trap (start elsewhere)."""
    converged, out = np.zeros(len(reason), dtype=bool), list(reason)
    for s, why in enumerate(reason):
        if why.startswith(UNFINISHED):
            continue
        if not optimum[s]:
            out[s] = f"{why}; not a first-order optimum (a Gauss-Newton step would lower the loss by {ratio[s]:.2g})"
            continue
        converged[s] = True
        if ran_off[s].any():
            names = [f"{n}[{e}]" for (n, e), off in zip(problem.entry_labels, ran_off[s]) if off]
            out[s] = (f"{why}; {', '.join(names[:5])}{' ...' if len(names) > 5 else ''} went to the edge of "
                      "the range (no influence on the fit left: not identifiable from these data, or a plateau)")
    return converged, out


def _cap_step(delta: Tensor, dead: Tensor | None, max_step: float) -> Tensor:
    """Steps (S, n) shortened so that no entry moves by more than ``max_step`` in the unconstrained
    (log) scale: a step that multiplies a threshold by 1e4 lands on a plateau where the Hill function
    is saturated and the gradient vanishes, and no later step comes back. The live entries are scaled
    together (the step keeps its direction); entries of parameters with no influence (``dead`` (S, n),
    :func:`negligible_columns`) are clipped on their own: their tiny scale gives them a huge step that
    would otherwise shrink every other entry to nothing."""
    live = delta if dead is None else torch.where(dead, torch.zeros_like(delta), delta)
    big = live.abs().amax(dim=1, keepdim=True)
    out = delta * torch.clamp(max_step / big.clamp_min(1e-300), max=1.0)
    if dead is None:
        return out
    return torch.where(dead, delta.clamp(-max_step, max_step), out)


def levenberg_marquardt(problem: FitProblem, theta: Tensor, *, max_iter: int = 100, ftol: float = 1e-10,
                        xtol: float = 1e-10, gtol: float = 1e-10, optimality_tol: float = 1e-8,
                        max_step: float = 2.0, initial_damping: float = 1e-3, progress: bool = False,
                        fixed: Tensor | None = None, max_time: float | None = None) -> OptimResult:
    r"""Batched Levenberg-Marquardt with the exact residual Jacobian, all starts together.

    Each iteration is ONE solve: the residuals and the Jacobian of every trial point come together
    from the forward-sensitivity solve (the Jacobian is kept when the trial is accepted), and only
    starts still iterating are simulated. Per start:

    - step: ``(JᵀJ + μ D²) δ = -Jᵀr`` with ``D² = max`` over the iterations of ``diag(JᵀJ)``
      (Moré's scaling, MINPACK ``lmder``: invariant to the parameters' units);
    - gain ratio ``ρ = (L - L(θ + δ)) / (L - m(δ))``, the actual over the predicted reduction of
      ``L = ½|r|²`` by the quadratic model ``m``: a step is taken when ``ρ > 1e-4``; the damping
      then shrinks by ``max(1/3, 1 - (2ρ - 1)³)`` (Nielsen), else grows x2, x4, x8, ...;
    - stops: **first-order optimum** when the Gauss-Newton decrement
      (:func:`gauss_newton_decrement`, a full undamped step's predicted decrease) is at most
      ``gtol`` of the loss; **ftol** when an accepted step's actual and predicted relative
      decreases are both at most ``ftol``, ``ρ <= 2`` and the Gauss-Newton step promises at most
      ``ftol`` too (so a tiny step that was tiny only because the damping was large does not stop
      it); **xtol** when ``|D δ| <= xtol (xtol + |D θ|)``; the damping exceeding 1e16 (no
      improving step); ``max_iter``; a failed simulation at the start.

    ``converged`` is true only at a first-order optimum within ``optimality_tol`` (a full
    Gauss-Newton step would lower the loss by at most that fraction): whatever stopped the
    iterations (ftol, xtol, a damping blow-up), the flag is this test at the final point;
    ``max_iter`` and failures are never converged.

    ``max_step``: no entry of θ moves by more than this per iteration (θ is the unconstrained,
    mostly log, scale: 2 = a factor e² ≈ 7.4): a step that multiplies a threshold by 10⁴ lands on a
    plateau where the Hill function is saturated, the gradient vanishes and no later step comes back
    (on the 30-parameter benchmark problem the uncapped LM, and scipy's trf, lm and dogbox on the same
    residuals and Jacobian, stopped there at 2e2 times the optimum's loss).
    ``initial_damping``: μ of the first iteration. ``fixed`` (S, n) bool: entries held at their start
    value (zero Jacobian columns -> zero step). ``max_time``: seconds, then the starts still
    iterating stop ("max_time reached", not converged).
    """
    S, n = theta.shape
    keep = None if fixed is None else (~fixed).to(theta.dtype)[:, None, :]
    if problem.noise == "estimate" or problem.l1:
        raise ValueError("method='lm' needs a pure least-squares loss: use noise='gaussian'/'log' and l1=0, or "
                         "method='trust-ncg'/'lbfgs'")
    dev, dt = theta.device, theta.dtype
    mu = torch.full((S,), float(initial_damping), dtype=dt, device=dev)
    nu = torch.full((S,), 2.0, dtype=dt, device=dev)
    eye = torch.eye(n, dtype=dt, device=dev)
    th = theta.detach().clone()
    active = torch.ones(S, dtype=torch.bool, device=dev)
    iters = np.zeros(S, dtype=int)
    reason = ["max_iter reached"] * S
    history = History()

    def evaluate(idx: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Residuals (with the L2 rows), Jacobian and loss (+inf on failure) of starts ``idx`` at ``t``."""
        r, J = problem.least_squares_jacobian(t)
        if keep is not None:
            J = J * keep[idx]
        loss = 0.5 * (r * r).sum(dim=1)
        return r, J, torch.where(torch.isfinite(loss), loss, torch.full_like(loss, float("inf")))

    with torch.no_grad():
        everyone = torch.arange(S, device=dev)
        r, J, loss = evaluate(everyone, th)
        initial = loss.clone()
        flat_at_start = negligible_columns(J)
        bad_start = ~torch.isfinite(loss)
        for s in torch.nonzero(bad_start).flatten().tolist():
            reason[s] = "simulation failed at the start point"
        active &= ~bad_start
        D2 = torch.zeros(S, n, dtype=dt, device=dev)
        decrement = torch.full((S,), float("inf"), dtype=dt, device=dev)
        bar = _bar(progress, max_iter, "lm")
        for _ in range(max_iter):
            history.append(loss.cpu().numpy().copy())
            if not bool(active.any()):
                break
            if history.out_of_time(max_time):
                _time_out(reason, active)
                break
            idx = torch.nonzero(active).flatten()
            Jf, rf = torch.nan_to_num(J[idx]), torch.nan_to_num(r[idx])
            A = Jf.transpose(1, 2) @ Jf
            g = (Jf.transpose(1, 2) @ rf[..., None])[..., 0]
            decrement[idx] = gauss_newton_decrement(Jf, rf)
            optimal = decrement[idx] <= gtol * loss[idx] + 1e-14
            for s in idx[optimal].tolist():
                reason[s], active[s] = "first-order optimum: a Gauss-Newton step would lower the loss by < gtol", False
            idx, A, g = idx[~optimal], A[~optimal], g[~optimal]
            if not len(idx):
                break
            D2[idx] = torch.maximum(D2[idx], torch.diagonal(A, dim1=1, dim2=2))
            d2 = torch.where(D2[idx] > 0, D2[idx], torch.ones_like(D2[idx]))
            delta = torch.linalg.solve(A + (mu[idx, None] * d2)[:, :, None] * eye, -g)
            delta = _cap_step(delta, negligible_columns(Jf[~optimal]), max_step)
            predicted = -((g * delta).sum(1) + 0.5 * (delta * (A @ delta[..., None])[..., 0]).sum(1))
            trial = th[idx] + delta
            r_new, J_new, loss_new = evaluate(idx, trial)
            actual = loss[idx] - loss_new
            rho = actual / predicted.clamp_min(1e-300)
            ok = torch.isfinite(loss_new) & (rho > 1e-4)
            dnorm = (d2.sqrt() * delta).norm(dim=1)
            xnorm = (d2.sqrt() * th[idx]).norm(dim=1)
            scale = loss[idx].clamp_min(1e-300)
            small_f = (actual <= ftol * scale) & (predicted <= ftol * scale) & (rho <= 2)
            small_x = dnorm <= xtol * (xtol + xnorm)
            if bool(ok.any()):
                a = idx[ok]
                th[a], r[a], J[a], loss[a] = trial[ok], r_new[ok], J_new[ok], loss_new[ok]
            # damping: Nielsen's rule on a taken step, doubling growth on a refused one
            shrink = torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3)
            mu[idx] = torch.where(ok, (mu[idx] * shrink).clamp_min(1e-16), mu[idx] * nu[idx])
            nu[idx] = torch.where(ok, torch.full_like(nu[idx], 2.0), nu[idx] * 2)
            iters[idx.cpu().numpy()] += 1
            # a decrease at the noise of the loss stops a start only if its undamped step agrees
            noise = ok & small_f
            if bool(noise.any()):
                quiet = idx[noise]
                decrement[quiet] = gauss_newton_decrement(J[quiet], r[quiet])
            for k, s in enumerate(idx.tolist()):
                if bool(noise[k]):
                    if float(decrement[s]) <= ftol * float(loss[s]) + 1e-14:
                        reason[s], active[s] = "relative loss decrease below ftol", False
                elif bool(small_x[k]) and bool(ok[k]):
                    reason[s], active[s] = "step below xtol", False
                elif float(mu[s]) > 1e16:
                    reason[s] = "damping grew without an improving step (local minimum, noisy loss or a solver floor)"
                    active[s] = False
            bar.update(1)
        bar.close()
        # the flag is the optimality test at the final point, whatever stopped the iterations
        stale = torch.nonzero(~torch.isfinite(decrement) | active).flatten()
        if len(stale):
            decrement[stale] = gauss_newton_decrement(J[stale], r[stale])
        optimum = first_order_optimal(decrement, loss, optimality_tol).cpu().numpy()
        ran_off = (negligible_columns(J) & ~flat_at_start).cpu().numpy()
    converged, reason = judge(problem, reason, optimum, (decrement / loss.clamp_min(1e-300)).cpu().numpy(), ran_off)
    n_data = problem.n_obs
    return OptimResult(th, loss, iters, converged, reason, history, initial_loss=initial,
                       residuals=r[:, :n_data], jacobian=J[:, :n_data], optimality=(decrement / loss).cpu().numpy())


def _steihaug(hvp: Any, g: Tensor, radius: Tensor, max_cg: int, forcing: Tensor | None = None,
              out_of_time: Any = None) -> tuple[Tensor, Tensor, Tensor]:
    """Steihaug-Toint truncated CG for ``min_p gᵀp + ½ pᵀHp, |p| <= radius`` on every row at once.

    ``hvp(d (S, n)) -> H d`` for all rows. CG stops per row at negative curvature or the
    trust-region boundary (then ``p`` goes to the boundary along the current direction) or
    when the residual is below ``forcing |g|`` (default ``min(0.5, √|g|)``, Eisenstat-Walker as
    scipy; ``forcing`` (S,) per row), or for all rows when ``out_of_time()`` (every CG iterate
    lowers the model: a truncated step is still a descent step).
    Returns the step (S, n), its model decrease ``m(p)`` (S,) and whether it hit the boundary.
    """
    S = g.shape[0]
    z = torch.zeros_like(g)
    r = g.clone()  # residual H z + g
    d = -r
    m = torch.zeros(S, dtype=g.dtype, device=g.device)
    gnorm = g.norm(dim=1)
    if forcing is None:
        forcing = torch.minimum(torch.full_like(gnorm, 0.5), gnorm.sqrt())
    tol = forcing * gnorm
    done = gnorm <= tol
    boundary = torch.zeros_like(done)

    def to_boundary(z: Tensor, d: Tensor) -> Tensor:
        """τ >= 0 with |z + τ d| = radius."""
        a, b, c = (d * d).sum(1), 2 * (z * d).sum(1), (z * z).sum(1) - radius ** 2
        return (-b + (b * b - 4 * a * c).clamp_min(0).sqrt()) / (2 * a).clamp_min(1e-300)

    for _ in range(max_cg):
        Hd = hvp(torch.where(done[:, None], torch.zeros_like(d), d))  # rows done: a zero direction costs nothing
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
        if bool(done.all()) or (out_of_time is not None and out_of_time()):
            break
    return z, m, boundary


def _second_order_model(problem: FitProblem, tt: Tensor, hessian: str, probes: int = 0
                        ) -> tuple[Tensor, Tensor, Any, Tensor | None]:
    """Loss (S,), gradient (S, n), the product ``d -> B d`` with the model Hessian ``B`` at the
    points ``tt`` (S, n) and, with ``probes > 0``, an estimate of the residual Jacobian's squared
    column norms ``diag(JᵀJ)`` (S, n) (:func:`_column_norms_estimate`; else None), all from one solve
    whose graph is kept: every product is then one sweep over the kept solve (on the native path:
    the step tapes, hvp.h), no new simulation.

    ``hessian="exact"``: ``B = ∇²L``, reverse over the gradient's graph (forward over reverse in C).
    ``hessian="gauss-newton"``: ``B = JᵀJ`` of the residuals (with the L2 rows), ``J d`` by
    differentiating ``Jᵀu`` in ``u`` (the trajectory's tangent), then ``Jᵀ(J d)``: positive
    semi-definite, for least-squares losses."""
    tt = tt.detach().clone().requires_grad_(True)
    with native.second_order():  # these solves are differentiated twice
        return _second_order_products(problem, tt, hessian, probes)


def _second_order_products(problem: FitProblem, tt: Tensor, hessian: str, probes: int
                           ) -> tuple[Tensor, Tensor, Any, Tensor | None]:
    if hessian == "exact":
        r = problem.residuals(tt)
        L = problem.loss_from_residuals(tt, r)
        finite = torch.isfinite(L)
        (g,) = torch.autograd.grad(torch.where(finite, L, 0.0).sum(), tt, create_graph=True)
        col = _column_norms_estimate(problem, r, tt, probes) if probes else None

        def product(d: Tensor) -> Tensor:
            (hd,) = torch.autograd.grad((g * d).sum(), tt, retain_graph=True)
            return torch.nan_to_num(hd)
        return L.detach(), torch.nan_to_num(g.detach()), product, col
    r = problem.residuals(tt)
    col = _column_norms_estimate(problem, r, tt, probes) if probes else None
    if problem.l2:
        r = torch.cat([r, problem.penalty_residuals(tt)], dim=1)
    finite = torch.isfinite(r).all(dim=1)
    r = torch.where(finite[:, None], r, torch.zeros_like(r))
    L = torch.where(finite, 0.5 * (r.detach() ** 2).sum(dim=1), torch.full_like(finite, float("inf"), dtype=r.dtype))
    u = torch.zeros_like(r, requires_grad=True)
    (Jtu,) = torch.autograd.grad(r, tt, grad_outputs=u, create_graph=True)  # linear in u
    (g,) = torch.autograd.grad(r, tt, grad_outputs=r.detach(), retain_graph=True)

    def product(d: Tensor) -> Tensor:
        (Jd,) = torch.autograd.grad(Jtu, u, grad_outputs=d, retain_graph=True)
        (JtJd,) = torch.autograd.grad(r, tt, grad_outputs=torch.nan_to_num(Jd), retain_graph=True)
        return torch.nan_to_num(JtJd)
    return L, torch.nan_to_num(g), product, col


#: random cotangents per iteration for the estimated scaling of large problems (see :func:`trust_ncg`)
SCALE_PROBES = 4


def _column_norms_estimate(problem: FitProblem, r: Tensor, tt: Tensor, probes: int) -> Tensor:
    """An unbiased estimate of ``diag(JᵀJ)`` (S, n), the squared column norms of the residual
    Jacobian (with the L2 prior's rows), from ``probes`` vector-Jacobian products ``Jᵀz`` with
    Rademacher cotangents z: ``E[(Jᵀz)_j²] = Σ_i J_ij²``. Each is one adjoint sweep over the kept
    solve (a gradient's cost less its forward solve) where the exact diagonal takes n tangent
    solves; its relative error is about ``√(2/probes)``, ample for a scaling. Seeded: a fit is
    reproducible."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    ok = torch.isfinite(r)
    acc = torch.zeros_like(tt)
    for _ in range(probes):
        z = (torch.randint(0, 2, tuple(r.shape), generator=gen, dtype=torch.int8) * 2 - 1).to(r.dtype).to(r.device)
        (jz,) = torch.autograd.grad(r, tt, grad_outputs=torch.where(ok, z, torch.zeros_like(z)), retain_graph=True)
        acc = acc + torch.nan_to_num(jz.detach()) ** 2
    return acc / probes + (problem.l2 or 0.0)


def negligible_at(problem: FitProblem, theta: Tensor) -> Tensor:
    """(S, n) bool: :func:`negligible_columns` of the residual Jacobian at ``theta`` (S, n): from the
    Jacobian up to :data:`SCALE_UP_TO` parameters, beyond from ``2 SCALE_PROBES`` random VJPs
    (:func:`_column_norms_estimate`: a zero column is zero in every probe, and a factor of 2 does not
    move a column across a threshold of 1e-8; n tangent solves cost minutes on a large screen)."""
    if problem.n <= SCALE_UP_TO:
        with torch.no_grad():
            return negligible_columns(problem.least_squares_jacobian(theta)[1])
    tt = theta.detach().clone().requires_grad_(True)
    col = _column_norms_estimate(problem, problem.residuals(tt), tt, 2 * SCALE_PROBES)
    return col <= NEGLIGIBLE_COLUMN ** 2 * col.amax(dim=1, keepdim=True)


def _newton_model(problem: FitProblem, t: Tensor, hessian: str, scaling: str | None
                  ) -> tuple[Tensor, Any, Tensor | None]:
    """Gradient (S, n), the model Hessian's product and the squared column norms of the residual
    Jacobian (S, n) at ``t`` for the scaling: ``scaling="jacobian"``, exact, from one sensitivity solve
    (the Jacobian; with ``"gauss-newton"`` it also gives the gradient ``Jᵀr`` and the products
    ``Jᵀ(J d)``, no further solve); ``"estimate"``, from :data:`SCALE_PROBES` random VJPs over the
    kept solve (:func:`_column_norms_estimate`); None: no norms. The rest from
    :func:`_second_order_model`."""
    if scaling != "jacobian":
        _, g, product, col = _second_order_model(problem, t, hessian, SCALE_PROBES if scaling == "estimate" else 0)
        return g, product, col
    with torch.no_grad():
        r, J = problem.least_squares_jacobian(t)
        r, J = torch.nan_to_num(r), torch.nan_to_num(J)
    col = (J ** 2).sum(dim=1)
    if hessian != "gauss-newton":
        _, g, product, _ = _second_order_model(problem, t, hessian)
        return g, product, col

    def gauss_newton(v: Tensor) -> Tensor:
        return (J.transpose(1, 2) @ (J @ v[..., None]))[..., 0]
    return (J.transpose(1, 2) @ r[..., None])[..., 0], gauss_newton, col


def _rescaled(product: Any, d: Tensor) -> Any:
    """``v -> D⁻¹ B D⁻¹ v``: the model Hessian in the scaled variables ``D p``."""
    return lambda v: product(v / d) / d


HESSIANS = ("exact", "gauss-newton")

#: trust-ncg scales by the residual Jacobian's columns (one sensitivity solve of n tangents per
#: iteration) up to this many parameters; beyond, a Jacobian costs more than the CG it saves
SCALE_UP_TO = 100
SCALINGS = ("jacobian", "estimate")


def trust_ncg(problem: FitProblem, theta: Tensor, *, max_iter: int = 100, gtol: float = 1e-10,
              ftol: float = 1e-10, xtol: float = 1e-10, initial_radius: float = 1.0, max_radius: float = 10.0,
              eta: float = 0.15, hessian: str = "exact", max_cg: int | None = None, max_step: float = 2.0,
              scale: bool | str | None = None, progress: bool = False, max_time: float | None = None
              ) -> OptimResult:
    """Batched trust-region Newton-CG (Nocedal & Wright, Alg. 7.2 with Steihaug CG) on every start.

    Per iteration: one solve of the active starts with its graph kept, giving the loss, the gradient
    and Hessian-vector products ``B d`` (:func:`_second_order_model`: ``hessian="exact"``, the
    loss's Hessian, forward over reverse — in C on the native path, about twice a gradient's
    cost; ``"gauss-newton"``, ``JᵀJ``, positive semi-definite, often better far from the optimum
    and for least-squares losses only); then Steihaug CG on ``m(p) = gᵀp + ½ pᵀBp, |p| <= Δ`` for
    all starts at once, each with its own radius Δ and its own CG stop; then one loss evaluation
    of the trial points. A trial is accepted when the actual/predicted reduction ``ρ > eta``; Δ
    shrinks to ¼|p| when ``ρ < ¼`` and doubles (to at most ``max_radius``) when ``ρ > ¾`` on the
    boundary. θ is the unconstrained (log) scale, so Δ = 10 allows a factor e^10 in one entry.

    Scaling (``scale``; default: least-squares losses with at most :data:`SCALE_UP_TO` parameters):
    the trust region and CG work in ``D p`` with ``D² = `` the running max of ``diag(JᵀJ)`` (Moré's
    scaling, as LM; for CG a diagonal preconditioner). ``"jacobian"`` (``True``): exact, from a
    sensitivity solve per iteration; with ``"gauss-newton"`` that Jacobian then also gives the
    gradient and every product (``Jᵀ(J d)``), so CG costs no solves. ``"estimate"``: ``E[(Jᵀz)²]``
    over :data:`SCALE_PROBES` Rademacher cotangents z, one adjoint sweep each over the kept solve (n
    tangent solves cost more than the CG they save). Not the default beyond 100 parameters: on the
    700-parameter knockout fit of ``benchmarks/fit_hard.py`` it took the loss from 7.5e13 to 5.2e13
    in 200 s where the unscaled method reached 6.5e8 (log-scale parameters are already comparable;
    the scaling turned the trust region toward the few residuals with tiny sd). ``False``: none.
    No entry of θ moves by more than ``max_step`` per iteration (as LM's cap). CG stops at the
    Eisenstat-Walker forcing ``min(½, √(|g|/|g₀|)) |g|`` relative to the start's first gradient.

    Stops per start: **first-order optimum** when CG ended inside the trust region and the model
    promises at most ``gtol`` of the loss (the Newton decrement, as LM's Gauss-Newton one);
    **ftol** when an accepted step inside the trust region lowered the loss by at most ``ftol`` of
    it and the model promised no more; **xtol** when
    ``max|p| <= xtol (1 + max|θ|)``; the radius collapsing (no improving step); ``max_iter``.
    ``max_cg``: CG iterations per step (default ``min(2n, 50)``: a truncated Newton step; each CG
    iteration is a Hessian-vector product). ``max_time``: seconds, then the starts still iterating
    stop ("max_time reached", not converged).
    """
    if hessian not in HESSIANS:
        raise ValueError(f"unknown hessian {hessian!r}; allowed: {', '.join(map(repr, HESSIANS))}")
    if hessian == "gauss-newton" and (problem.noise == "estimate" or problem.l1):
        raise ValueError("hessian='gauss-newton' needs a least-squares loss (noise='gaussian'/'log', l1=0); "
                         "use hessian='exact'")
    S, n = theta.shape
    th = theta.detach().clone()
    radius = torch.full((S,), float(initial_radius), dtype=th.dtype, device=th.device)
    active = torch.ones(S, dtype=torch.bool, device=th.device)
    iters = np.zeros(S, dtype=int)
    reason = ["max_iter reached"] * S
    history = History()
    with torch.no_grad():
        loss = problem.loss(th)
    initial = loss.clone()
    for s in torch.nonzero(~torch.isfinite(loss)).flatten().tolist():
        reason[s] = "simulation failed at the start point"
    active &= torch.isfinite(loss)
    bar = _bar(progress, max_iter, f"trust-ncg ({hessian})")
    g_first = torch.full((S,), float("nan"), dtype=th.dtype, device=th.device)
    least_squares = problem.noise != "estimate" and not problem.l1
    if scale is None:
        scaling = "jacobian" if least_squares and n <= SCALE_UP_TO else None
    else:
        scaling = {True: "jacobian", False: None}.get(scale, scale) if isinstance(scale, bool) else scale
        if scaling not in (None, *SCALINGS):
            raise ValueError(f"unknown scale {scale!r}; allowed: None, True, False, "
                             f"{', '.join(map(repr, SCALINGS))}")
    scaled = scaling is not None
    if scaled and not least_squares:
        raise ValueError(f"scale={scale!r} needs a least-squares loss (the scaling comes from the residual Jacobian)")
    D2 = torch.zeros(S, n, dtype=th.dtype, device=th.device)
    for _ in range(max_iter):
        history.append(loss.cpu().numpy().copy())
        if not bool(active.any()):
            break
        if history.out_of_time(max_time):
            _time_out(reason, active)
            break
        idx = torch.nonzero(active).flatten()
        g0, product, col = _newton_model(problem, th[idx], hessian, scaling)
        if scaled:  # Moré's scaling: D² = the running max of diag(JᵀJ); the largest column keeps its units
            D2[idx] = torch.maximum(D2[idx], col)
            d = D2[idx].sqrt()
            d = torch.where(d > NEGLIGIBLE_COLUMN * d.amax(dim=1, keepdim=True), d, torch.ones_like(d))
            d = d / d.amax(dim=1, keepdim=True)
        else:
            d = torch.ones_like(g0)
        gs = g0 / d
        gnorm = gs.norm(dim=1)
        g_first[idx] = torch.where(torch.isnan(g_first[idx]), gnorm, g_first[idx])
        # Eisenstat-Walker forcing relative to the start's first gradient (scale-free): CG solves
        # loosely far from the optimum and tightly near it, where the decrement decides the stop
        forcing = torch.minimum(torch.full_like(gnorm, 0.5), (gnorm / g_first[idx].clamp_min(1e-300)).sqrt())
        ps, m, boundary = _steihaug(_rescaled(product, d), gs, radius[idx], max_cg=max_cg or min(2 * n, 50),
                                    forcing=forcing, out_of_time=lambda: history.out_of_time(max_time))
        p = ps / d
        del product
        with torch.no_grad():
            # no entry moves by more than max_step in θ (the log scale) per iteration, as LM's cap. The model's
            # value on the shortened step: its live part is a p (a <= 1); the entries of parameters with no
            # influence (clipped alone) add nothing to g or B, so m = a gᵀp + ½ a² pᵀBp
            dead = (col <= NEGLIGIBLE_COLUMN ** 2 * col.amax(dim=1, keepdim=True)) if col is not None else None
            live = p if dead is None else torch.where(dead, torch.zeros_like(p), p)
            a_ = torch.clamp(max_step / live.abs().amax(dim=1).clamp_min(1e-300), max=1.0)
            gp = (g0 * p).sum(1)
            m = a_ * gp + a_ ** 2 * (m - gp)  # m - gp = ½ pᵀBp
            boundary = boundary | (a_ < 1)
            p = _cap_step(p, dead, max_step)
            optimal = ~boundary & (-m <= gtol * loss[idx] + 1e-14)
            L_new = problem.loss(th[idx] + p)
            rho = (L_new - loss[idx]) / torch.where(m < 0, m, torch.full_like(m, -1e-300))
            ok = ~optimal & torch.isfinite(L_new) & (rho > eta) & (L_new <= loss[idx])
            pn = (p * d).norm(dim=1)
            r_new = torch.where(~torch.isfinite(rho) | (rho < 0.25), 0.25 * pn,
                                torch.where((rho > 0.75) & boundary, (2 * radius[idx]).clamp(max=max_radius),
                                            radius[idx]))
            radius[idx] = torch.where(optimal, radius[idx], r_new)
            rel = (loss[idx] - L_new) / loss[idx].abs().clamp_min(1e-300)
            step = p.abs().amax(dim=1) / (1 + th[idx].abs().amax(dim=1))
            a = idx[ok]
            th[a], loss[a] = th[a] + p[ok], L_new[ok]
            iters[idx.cpu().numpy()] += 1
            for k, s in enumerate(idx.tolist()):
                if bool(optimal[k]):
                    reason[s], active[s] = "first-order optimum: a Newton step would lower the loss by < gtol", False
                elif bool(ok[k]) and rel[k] <= ftol and -m[k] <= ftol * loss[s] and not bool(boundary[k]):
                    # a tiny decrease stops only when the model, unconstrained, promises as little
                    reason[s], active[s] = "relative loss decrease below ftol", False
                elif bool(ok[k]) and step[k] <= xtol:
                    reason[s], active[s] = "step below xtol", False
                elif radius[s] < 1e-12 * (1 + th[s].abs().max()):
                    reason[s], active[s] = "trust radius collapsed (local minimum or noisy loss)", False
        bar.update(1)
    bar.close()
    converged = np.array([not r_.startswith(UNFINISHED) for r_ in reason])
    return OptimResult(th, loss, iters, converged, reason, history, initial_loss=initial)


def torch_optimizer(problem: FitProblem, theta: Tensor, *, method: str = "lbfgs", max_iter: int = 200,
                    lr: float | None = None, tol: float = 1e-9, progress: bool = False,
                    max_time: float | None = None) -> OptimResult:
    """All starts with one of torch's optimizers on the summed loss ``Σ_s L_s(θ_s)`` (S, n): the
    starts share the optimizer's state and line search (L-BFGS: ``torch.optim.LBFGS`` with a strong
    Wolfe line search, 20 iterations per step; Adam: ``lr`` default 0.05), gradients by the native
    adjoint or backpropagation. Stops when the summed loss changes by at most ``tol`` of it between
    steps, at ``max_iter`` steps or after ``max_time`` seconds. ``converged`` here only says which rule
    stopped it; :func:`genenet.fit.api.certify` replaces it by the first-order test."""
    th = theta.detach().clone().requires_grad_(True)
    S = th.shape[0]
    if method == "lbfgs":
        opt = torch.optim.LBFGS([th], lr=lr or 1.0, max_iter=20, line_search_fn="strong_wolfe")
    elif method == "adam":
        opt = torch.optim.Adam([th], lr=lr or 0.05)
    else:
        raise ValueError(f"unknown torch optimizer {method!r}; allowed: 'lbfgs', 'adam'")
    history = History()
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
        if history.out_of_time(max_time):
            reason = "max_time reached"
            break
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
    conv = np.full(S, not reason.startswith(UNFINISHED))
    return OptimResult(th.detach(), problem.loss(th.detach()).detach(), np.full(S, it), conv, [reason] * S,
                       history)

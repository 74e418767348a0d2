"""Steady states, Jacobians, stability and steady-state sensitivities.

All solvers here are batched over rows (conditions x parameter sets [x initial
states]): one Jacobian evaluation, one batched linear solve per iteration.

- Damped Newton: ``x <- max(0, x + a dx)`` with ``J dx = -f`` and ``a`` the largest of
  ``1, 1/2, ..., 2^-11`` meeting Armijo's condition on the merit ``|f|^2``,
  ``|f(x + a dx)|^2 <= (1 - 2e-4 a) |f(x)|^2`` (all trial steps evaluated in one batch).
- Pseudo-transient continuation (per row fallback): ``(I/d - J) dx = f`` with the
  pseudo time step ``d`` grown by switched evolution relaxation, ``d <- d |f_old| / |f_new|``,
  which follows the dynamics towards a stable state and turns into Newton near it.
- Integration (``method="integrate"``, and the last fallback of ``"newton"``): simulate
  until the row is steady or ``t_max``, then polish with Newton; from the end of an
  oscillation Newton finds the unstable steady state inside the cycle.

A row is converged when ``max_i |f_i(x)| <= tol * (1 + max_i |x_i|)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .batch import Batch, build_batch
from .models.base import Model
from .solvers import get_method, integrate
from .solvers.integrate import tree_index
from .validation import check_positive, resolve_device, resolve_dtype

__all__ = ["SteadyState", "steady_state", "jacobian", "steady_state_sensitivity", "newton", "stability"]

_ALPHAS = 2.0 ** -np.arange(12)


@dataclass(frozen=True)
class SteadyState:
    """Steady states of a batch of rows.

    Attributes
    ----------
    x : Tensor (B, G)
        The states (the last iterate where not converged).
    converged : np.ndarray (B,) bool
    residual : np.ndarray (B,)
        ``max_i |dx_i/dt|`` at ``x``.
    jacobian_eigenvalues : Tensor (B, G) complex
        Eigenvalues of ``d f / d x`` at ``x`` (clamped genes contribute -1: they are held).
    stable : np.ndarray (B,) bool
        All real parts < 0 (and converged).
    genes, labels, conditions, parameter_sets : row and column labels.
    method : np.ndarray (B,) of str
        How each row converged: ``"newton"``, ``"ptc"`` (pseudo-transient continuation) or
        ``"integrate"``; ``"failed"`` where it did not.
    iterations : np.ndarray (B,)
    """

    x: Tensor
    converged: np.ndarray
    residual: np.ndarray
    jacobian_eigenvalues: Tensor
    stable: np.ndarray
    genes: list[str]
    labels: list[str]
    conditions: list[str]
    parameter_sets: np.ndarray
    method: np.ndarray
    iterations: np.ndarray
    _batch: Any = field(default=None, repr=False, compare=False)
    _args: Any = field(default=None, repr=False, compare=False)

    @property
    def n_rows(self) -> int:
        return self.x.shape[0]

    @property
    def success(self) -> bool:
        return bool(self.converged.all())

    def __getitem__(self, gene: str) -> Tensor:
        """Steady level of ``gene`` per row, (B,)."""
        if gene not in self.genes:
            raise KeyError(f"unknown gene {gene!r}; genes are {self.genes}")
        return self.x[:, self.genes.index(gene)]

    def to_frame(self) -> pd.DataFrame:
        """Long table ``row, condition, parameter_set, gene, value, converged, stable``."""
        B, G = self.x.shape
        return pd.DataFrame({
            "row": np.repeat(np.asarray(self.labels, dtype=object), G),
            "condition": np.repeat(np.asarray(self.conditions, dtype=object), G),
            "parameter_set": np.repeat(self.parameter_sets, G),
            "gene": np.tile(np.asarray(self.genes, dtype=object), B),
            "value": self.x.detach().cpu().numpy().ravel(),
            "converged": np.repeat(self.converged, G),
            "stable": np.repeat(self.stable, G),
        })

    def summary(self) -> str:
        n = self.n_rows
        return (f"SteadyState: {n} rows x {len(self.genes)} genes; converged {int(self.converged.sum())}/{n} "
                f"(newton {int((self.method == 'newton').sum())}, ptc {int((self.method == 'ptc').sum())}, "
                f"integrate {int((self.method == 'integrate').sum())}); stable {int(self.stable.sum())}; "
                f"max residual {self.residual.max():.2e}")

    def __repr__(self) -> str:
        return f"SteadyState(rows={self.n_rows}, genes={len(self.genes)}, converged={int(self.converged.sum())})"


# ------------------------------------------------------------------ kernels
def _residual(F: Tensor) -> Tensor:
    return F.abs().amax(dim=-1)


def _tolerance(x: Tensor, tol: float) -> Tensor:
    return tol * (1.0 + x.abs().amax(dim=-1))


def _solve(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Batched ``A z = b``; rows whose matrix is singular get a tiny Levenberg shift. Returns z, ok."""
    z, info = torch.linalg.solve_ex(A, b[..., None])
    ok = info == 0
    if not bool(ok.all()):
        scale = A.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1.0)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        z2, info2 = torch.linalg.solve_ex(A + 1e-10 * scale * eye, b[..., None])
        z = torch.where(ok[:, None, None], z, z2)
        ok = ok | (info2 == 0)
    z = z[..., 0]
    good = torch.isfinite(z).all(dim=-1)
    return torch.where(good[:, None], z, torch.zeros_like(z)), ok & good


def newton(term: Any, x: Tensor, args: dict, *, tol: float, max_iter: int = 50,
           active: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Batched damped Newton with a backtracking line search on all rows at once.

    Returns ``(x, converged (B,), iterations (B,))``. Rows not ``active`` are left alone.
    States are kept non-negative (expression levels).
    """
    B = x.shape[0]
    t = torch.zeros(B, dtype=x.dtype, device=x.device)
    active = torch.ones(B, dtype=torch.bool, device=x.device) if active is None else active.clone()
    iters = torch.zeros(B, dtype=torch.long, device=x.device)
    alphas = torch.as_tensor(_ALPHAS, dtype=x.dtype, device=x.device)
    A = len(_ALPHAS)
    trial_rows = torch.arange(B, device=x.device).repeat_interleave(A)
    trial_args = tree_index(args, trial_rows)
    F = term.vf(t, x, args)
    converged = _residual(F) <= _tolerance(x, tol)
    for _ in range(max_iter):
        work = active & ~converged
        if not bool(work.any()):
            break
        J = term.jacobian(t, x, args)
        dx, ok = _solve(J, -F)
        trial = x[:, None, :] + alphas[None, :, None] * dx[:, None, :]  # (B, A, G)
        Ft = term.vf(t.repeat_interleave(A), trial.reshape(B * A, -1), trial_args).reshape(B, A, -1)
        rt = Ft.pow(2).sum(dim=-1)  # merit |f|^2, for which the Newton step is a descent direction
        r0 = F.pow(2).sum(dim=-1)
        armijo = (rt <= (1.0 - 2e-4 * alphas)[None, :] * r0[:, None]) & torch.isfinite(rt)
        first = torch.where(armijo.any(dim=1), armijo.float().argmax(dim=1), torch.full_like(r0, A - 1).long())
        pick = torch.arange(B, device=x.device)
        x_new, F_new = trial[pick, first], Ft[pick, first]
        move = work & ok & torch.isfinite(F_new).all(dim=-1)
        x = torch.where(move[:, None], x_new, x)
        F = torch.where(move[:, None], F_new, F)
        iters = iters + work.long()
        converged = _residual(F) <= _tolerance(x, tol)
        active = active & ~(work & ~move)  # a row that cannot move is given up on
    return x, converged, iters


def pseudo_transient(term: Any, x: Tensor, args: dict, *, tol: float, max_iter: int = 300,
                     active: Tensor | None = None, dt0: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Batched pseudo-transient continuation towards a stable steady state (see module doc)."""
    B = x.shape[0]
    t = torch.zeros(B, dtype=x.dtype, device=x.device)
    active = torch.ones(B, dtype=torch.bool, device=x.device) if active is None else active.clone()
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    d = torch.full((B,), dt0, dtype=x.dtype, device=x.device)
    iters = torch.zeros(B, dtype=torch.long, device=x.device)
    F = term.vf(t, x, args)
    res = _residual(F)
    converged = res <= _tolerance(x, tol)
    for _ in range(max_iter):
        work = active & ~converged
        if not bool(work.any()):
            break
        J = term.jacobian(t, x, args)
        dx, ok = _solve(eye / d[:, None, None] - J, F)
        x_new = (x + dx).clamp_min(0.0)
        F_new = term.vf(t, x_new, args)
        res_new = _residual(F_new)
        good = work & ok & torch.isfinite(res_new)
        x = torch.where(good[:, None], x_new, x)
        F = torch.where(good[:, None], F_new, F)
        grow = (res / res_new.clamp_min(1e-300)).clamp(0.1, 10.0)
        d = torch.where(good, (d * grow).clamp(max=1e12), d * 0.25)
        res = torch.where(good, res_new, res)
        iters = iters + work.long()
        converged = res <= _tolerance(x, tol)
        active = active & (d > 1e-12)
    return x, converged, iters


def stability(term: Any, x: Tensor, args: dict) -> tuple[Tensor, Tensor]:
    """Jacobian eigenvalues (B, G) and stability (all real parts < 0) at states ``x``.

    A clamped gene is not a dynamic variable: its row is zero and its diagonal set to
    -1, so it adds the eigenvalue -1 and leaves the others unchanged.
    """
    t = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    J = term.jacobian(t, x, args)
    if getattr(term, "use_clamp", False):
        clamp = args["clamp"]
        J = torch.where(clamp[:, :, None], 0.0, J)
        J = J - torch.diag_embed(clamp.to(J.dtype))
    ev = torch.linalg.eigvals(J)
    return ev, (ev.real < 0).all(dim=-1)


# --------------------------------------------------------------------- API
def _prepare(model: Model, perturbations: Any, x0: Any, params: Mapping[str, Any] | None, device: Any,
             dtype: Any) -> tuple[Batch, dict, torch.device, torch.dtype]:
    dev = resolve_device(device)
    dtp = resolve_dtype(dtype, dev)
    batch = build_batch(model, perturbations, x0, params, device=dev, dtype=dtp)
    term = batch.term
    t0 = torch.zeros(batch.n_rows, dtype=dtp, device=dev)
    args = term.segment(t0, term.initial_args)
    return batch, args, dev, dtp


def steady_state(
    model: Model,
    perturbations: Any = None,
    x0: Any = None,
    params: Mapping[str, Any] | None = None,
    tol: float = 1e-10,
    *,
    method: str = "newton",
    max_iter: int = 100,
    t_max: float = 1e3,
    device: str | torch.device = "auto",
    dtype: Any = None,
) -> SteadyState:
    r"""Steady states ``f(x) = 0`` of every row (conditions x parameter sets) at once.

    **Main arguments**

    model : Model
    perturbations : as for :func:`genenet.simulate` (knockouts, clamps, screens...).
        Pulses are not allowed (a steady state needs a fixed regime).
    x0 : starting points, as for ``simulate`` (default: the model's default state;
        knockouts start at 0, clamps at their value).
    params : parameter overrides, as for ``simulate``.
    tol : convergence when ``max_i |f_i| <= tol (1 + max_i |x_i|)``; raised to
        ``100 eps`` of the dtype when smaller (float32 cannot reach 1e-10).

    **Other arguments**

    method : ``"newton"`` (default): damped Newton from ``x0``; rows that do not
        converge fall back to pseudo-transient continuation from ``x0``, then Newton, and
        then to integration from ``x0`` followed by Newton.
        Newton finds the steady state nearest in Newton's sense, stable or not (from a
        symmetric start of a toggle switch, the saddle). ``"integrate"``: follow the
        dynamics from ``x0`` (dopri5 until steady or ``t_max``) then polish by Newton;
        this gives the state the system actually reaches from ``x0``.
    max_iter : Newton / continuation iterations.

    **Returns** :class:`SteadyState` with ``.x`` (B, G), ``.converged``, ``.residual``,
    ``.jacobian_eigenvalues``, ``.stable``, row labels and ``.to_frame()``.
    """
    if method not in ("newton", "integrate"):
        raise ValueError(f"unknown method {method!r}; allowed: 'newton', 'integrate'")
    check_positive(tol, "tol")
    check_positive(max_iter, "max_iter", integer=True)
    batch, args, dev, dtp = _prepare(model, perturbations, x0, params, device, dtype)
    if batch.term.pulsed:
        raise ValueError("steady_state does not take Pulse perturbations: a pulsed system has no fixed regime")
    tol = max(tol, 100 * torch.finfo(dtp).eps)
    term = batch.term
    B = batch.n_rows
    with torch.no_grad():
        x = term.reset(torch.zeros(B, dtype=dtp, device=dev), batch.x0.detach(), args)
        how = np.full(B, "failed", dtype=object)
        if method == "newton":
            x1, conv, iters = newton(term, x, args, tol=tol, max_iter=max_iter)
            how[conv.cpu().numpy()] = "newton"
            if not bool(conv.all()):
                x2, conv2, it2 = pseudo_transient(term, x, args, tol=tol, max_iter=3 * max_iter, active=~conv)
                x2, conv3, it3 = newton(term, x2, args, tol=tol, max_iter=max_iter, active=~conv)
                fresh = (~conv & conv3).cpu().numpy()
                how[fresh] = "ptc"
                x1 = torch.where(conv[:, None], x1, x2)
                iters = iters + torch.where(conv, 0, it2 + it3)
                conv = conv | conv3
            if not bool(conv.all()):  # oscillating or slow rows: follow the dynamics, then Newton
                left = ~conv
                sub = torch.nonzero(left).squeeze(1)
                sub_args = tree_index(args, sub)
                starts = _integrate_to_steady(term, sub_args, x[sub], t_max)
                x4, conv4, it4 = _newton_from_starts(term, list(starts), sub_args, tol, max_iter)
                x1[sub] = torch.where(conv4[:, None], x4, x1[sub])
                iters[sub] += it4
                conv[sub] = conv4
                how[sub.cpu().numpy()[conv4.cpu().numpy()]] = "integrate"
        else:
            starts = _integrate_to_steady(term, args, x, t_max)
            x1, conv, iters = _newton_from_starts(term, list(starts), args, tol, max_iter)
            how[conv.cpu().numpy()] = "integrate"
        F = term.vf(torch.zeros(B, dtype=dtp, device=dev), x1, args)
        ev, stable = stability(term, x1, args)
    conv_np = conv.cpu().numpy()
    return SteadyState(
        x=x1, converged=conv_np, residual=_residual(F).cpu().numpy(), jacobian_eigenvalues=ev,
        stable=stable.cpu().numpy() & conv_np, genes=list(model.genes), labels=batch.labels,
        conditions=batch.conditions, parameter_sets=batch.parameter_sets, method=how,
        iterations=iters.cpu().numpy(), _batch=batch, _args=args,
    )


def _integrate_to_steady(term: Any, args: dict, x: Tensor, t_max: float, max_steps: int = 5000,
                         n_save: int = 401) -> tuple[Tensor, Tensor]:
    """Follow the dynamics until each row is steady or ``t_max`` (loosely: Newton polishes).

    Returns two Newton starts per row, (B, G) each: the last state reached, and the
    mean over the later half of the saved states (inside an oscillation the mean lies
    near the unstable steady state that the cycle surrounds).
    """
    t = torch.linspace(0.0, float(t_max), n_save, dtype=x.dtype, device=x.device)
    sol = integrate(term.vf, x, t, method=get_method("dopri5"), args=args, rtol=1e-6, atol=1e-9,
                    max_steps=max_steps, steady_tol=1e-8, native=term.native_spec)
    y = sol.y  # (B, T, G); NaN after a row stopped at max_steps
    finite = torch.isfinite(y).all(dim=-1)  # (B, T)
    idx = torch.arange(n_save, device=x.device)
    last = torch.where(finite, idx, -1).amax(dim=1).clamp(min=0)
    end = y[torch.arange(y.shape[0], device=x.device), last]
    late = finite & (idx[None, :] >= (last[:, None] + 1) // 2)
    mean = torch.where(late[..., None], y, 0.0).sum(dim=1) / late.sum(dim=1, keepdim=True).clamp(min=1)
    end = torch.where(torch.isfinite(end).all(dim=-1, keepdim=True), end, x)
    return end, mean


def _newton_from_starts(term: Any, starts: list[Tensor], args: dict, tol: float, max_iter: int
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Newton from several starts per row at once; each row keeps its first converged start."""
    S, B = len(starts), starts[0].shape[0]
    rows = torch.arange(B, device=starts[0].device).repeat(S)
    xs, conv, iters = newton(term, torch.cat(starts), tree_index(args, rows), tol=tol, max_iter=max_iter)
    conv = conv.view(S, B)
    pick = torch.where(conv.any(dim=0), conv.float().argmax(dim=0), 0)
    col = torch.arange(B, device=conv.device)
    return xs.view(S, B, -1)[pick, col], conv[pick, col], iters.view(S, B).sum(dim=0)


def jacobian(model: Model, x: Any, perturbations: Any = None, params: Mapping[str, Any] | None = None, *,
             t: float = 0.0, device: str | torch.device = "auto", dtype: Any = None) -> Tensor:
    """``d(dx/dt)/dx`` at states ``x`` for every row, (B, G, G).

    ``x`` is (G,) or (B, G) with rows as in :func:`genenet.simulate`
    (conditions x parameter sets). Uses the model's analytic Jacobian where it has
    one (Hill), else forward-mode autodiff.
    """
    batch, args, dev, dtp = _prepare(model, perturbations, x, params, device, dtype)
    tt = torch.full((batch.n_rows,), float(t), dtype=dtp, device=dev)
    args = batch.term.segment(tt, batch.term.initial_args)
    return batch.term.jacobian(tt, batch.x0, args)


def steady_state_sensitivity(model: Model, ss: SteadyState, names: list[str] | None = None) -> dict[str, Tensor]:
    r"""Derivatives of steady states with respect to parameters, by the implicit function theorem.

    At ``f(x*, θ) = 0``:  ``d x*/d θ = -J^{-1} ∂f/∂θ``  with ``J = ∂f/∂x`` at ``x*``.

    Returns ``{name: (B, G, n)}``: entry ``[b, i, j]`` is ``d x*_i / d θ_j`` for row ``b``
    (θ the constrained value of parameter ``name``, entry j). Rows that did not
    converge give NaN.
    """
    if ss._batch is None:
        raise ValueError("ss must come from gn.steady_state")
    term, args = ss._batch.term, ss._args
    names = list(model.specs) if names is None else names
    for n in names:
        model._spec(n)
    B, G = ss.x.shape
    t = torch.zeros(B, dtype=ss.x.dtype, device=ss.x.device)
    base = {k: v.detach().expand(B, -1).clone().requires_grad_(k in names) for k, v in args["base_p"].items()}
    fresh = dict(args)
    fresh.pop("p", None)
    fresh["base_p"] = base
    fresh = term.segment(t, fresh)
    F = term.vf(t, ss.x.detach(), fresh)  # (B, G)
    eye = torch.eye(G, dtype=F.dtype, device=F.device)
    grads = torch.autograd.grad(F, [base[n] for n in names], grad_outputs=eye[:, None, :].expand(G, B, G),
                                is_grads_batched=True, allow_unused=True)
    with torch.no_grad():
        J = term.jacobian(t, ss.x, args)
        out = {}
        for n, g in zip(names, grads):
            dF = torch.zeros(G, B, base[n].shape[1], dtype=F.dtype, device=F.device) if g is None else g
            dF = dF.permute(1, 0, 2)  # (B, G, n): dF_i / d theta_j
            S = -torch.linalg.solve(J, dF)
            S[torch.as_tensor(~ss.converged, device=S.device)] = float("nan")
            out[n] = S
    return out

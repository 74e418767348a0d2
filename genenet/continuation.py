"""Steady-state branches along a parameter: pseudo-arclength continuation (a bifurcation diagram).

Unknowns ``u = (x, λ)``. From a steady state, each step predicts along the unit
tangent ``τ`` of the branch (``[J  f_λ] τ = 0``, oriented like the previous one)
and corrects with Newton on

    f(x, λ) = 0,     τ · (u - u_pred) = 0,

so the branch is followed around folds (saddle-node points), where ``λ`` turns
back. A step is halved when Newton needs many iterations or the tangent turns by
more than about 8 degrees, and grows by 1.3 after easy steps (up to 5x the initial).
A fold lies where the ``λ``-component of the tangent changes sign; its
location is refined by linear interpolation of that component. Stability at
every point comes from the eigenvalues of ``J = ∂f/∂x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .models.base import Model
from .steady import _prepare, steady_state

__all__ = ["Bifurcation", "scan"]


@dataclass(frozen=True)
class Bifurcation:
    """A continued branch of steady states.

    Attributes
    ----------
    branch : DataFrame with ``parameter``, one column per gene, ``stable``, in arclength order.
    folds : DataFrame of saddle-node points (``parameter`` and gene levels).
    parameter : name (and entry) that was varied.
    genes : list[str]
    """

    branch: pd.DataFrame
    folds: pd.DataFrame
    parameter: str
    genes: list[str]

    def bistable_window(self) -> tuple[float, float] | None:
        """``(low, high)`` parameter range between the outermost folds, or None without folds."""
        if len(self.folds) < 2:
            return None
        return float(self.folds.parameter.min()), float(self.folds.parameter.max())

    def plot(self, gene: str | None = None, ax: Any = None) -> Any:
        from .plot import plot_bifurcation

        return plot_bifurcation(self, gene=gene, ax=ax)


def _entry(model: Model, name: str, gene: str | None, edge: Any) -> tuple[Any, str]:
    spec = model._spec(name)
    if gene is not None:
        if gene not in model.genes:
            raise KeyError(f"unknown gene {gene!r}; genes are {model.genes}")
        return model.genes.index(gene), f"{name}[{gene}]"
    if edge is not None:
        net = model.net
        idx = edge if isinstance(edge, int) else net.edge_index(*edge)
        return idx, f"{name}[{net.edges[idx]}]"
    return slice(None), name if spec.size == 1 else f"{name}[all]"


def scan(model: Model, parameter: str, values: Any, gene: str | None = None, edge: Any = None, *,
         x0: Any = None, perturbations: Any = None, parameter_set: int = 0, ds: float | None = None,
         max_points: int = 2000, tol: float = 1e-10, device: str | torch.device = "cpu",
         dtype: Any = torch.float64) -> Bifurcation:
    """Follow steady states of one row as ``parameter`` runs over ``[min(values), max(values)]``.

    Parameters
    ----------
    model : Model; parameter : its name (``"production"``...); gene / edge : the entry
        to vary (default: every entry of the parameter together).
    values : the parameter range (its min and max are used; the branch starts at
        ``values[0]``).
    x0 : where to look for the first steady state (followed by the dynamics from there).
    perturbations : one condition (e.g. a knockout) under which to scan.
    parameter_set : which set of an ensemble model to scan (one branch per call).
    ds : arclength step (default 1/200 of the range); it adapts to Newton's effort.

    Returns
    -------
    :class:`Bifurcation` with the branch (stable and unstable parts) and its folds.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2 or not np.all(np.isfinite(values)):
        raise ValueError("values must hold at least two finite parameter values")
    lo, hi = float(values.min()), float(values.max())
    entry, label = _entry(model, parameter, gene, edge)
    if not 0 <= parameter_set < model.n_sets:
        raise ValueError(f"parameter_set={parameter_set} out of range for {model.n_sets} parameter set(s)")
    one_set = {k: v.detach()[min(parameter_set, v.shape[0] - 1)].clone() for k, v in model.params.items()}

    def with_value(v: float) -> dict[str, Tensor]:
        b = one_set[parameter].clone()
        b[entry] = v
        return {**one_set, parameter: b}

    start = steady_state(model, perturbations, x0=x0, params=with_value(float(values[0])), method="integrate",
                         tol=tol, device=device, dtype=dtype)
    if start.n_rows != 1:
        raise ValueError("scan follows one row: give one condition (perturbations=) and one x0")
    batch, args, dev, dtp = _prepare(model, perturbations, start.x, with_value(float(values[0])), device, dtype)
    term = batch.term
    G = model.n_genes
    t0 = torch.zeros(1, dtype=dtp, device=dev)

    def F(u: Tensor) -> Tensor:
        fresh = dict(args)
        fresh.pop("p", None)
        bp = dict(args["base_p"])
        row = bp[parameter][0].clone()
        row[entry] = u[G]
        bp[parameter] = row[None]
        fresh["base_p"] = bp
        fresh = term.segment(t0, fresh)
        return term.vf(t0, u[None, :G], fresh)[0]

    def jac(u: Tensor) -> tuple[Tensor, Tensor]:
        J = torch.func.jacfwd(F)(u)  # (G, G+1)
        return F(u).detach(), J.detach()

    def tangent(J: Tensor, prev: Tensor) -> Tensor:
        A = torch.cat([J, prev[None]], dim=0)
        rhs = torch.zeros(G + 1, dtype=dtp, device=dev)
        rhs[-1] = 1.0
        tau = torch.linalg.solve(A, rhs)
        return tau / tau.norm()

    u = torch.cat([start.x[0].to(dev, dtp), torch.tensor([float(values[0])], dtype=dtp, device=dev)])
    _, J = jac(u)
    direction = 1.0 if values[-1] >= values[0] else -1.0
    prev = torch.zeros(G + 1, dtype=dtp, device=dev)
    prev[-1] = direction
    tau = tangent(J, prev)
    step = ds if ds is not None else (hi - lo) / 200.0
    step_max, step_min = 5 * step, 1e-6 * step
    points, taus = [u.clone()], [tau.clone()]
    while len(points) < max_points:
        pred = u + step * tau
        v = pred.clone()
        ok, n_it = False, 0
        while n_it < 12:
            n_it += 1
            f, Jv = jac(v)
            A = torch.cat([Jv, tau[None]], dim=0)
            r = torch.cat([f, (tau * (v - pred)).sum()[None]])
            dv = torch.linalg.solve(A, -r)
            v = v + dv
            if dv.abs().max() <= 1e-10 * (1 + v.abs().max()):
                ok = bool(torch.isfinite(v).all())
                break
        if not ok:
            step *= 0.5
            if step < step_min:
                break
            continue
        _, Jv = jac(v)
        new_tau = tangent(Jv, tau)
        if float((new_tau * tau).sum()) < 0.99 and step > step_min:  # turned too sharply: smaller step
            step *= 0.5
            continue
        u, tau = v, new_tau
        points.append(u.clone())
        taus.append(tau.clone())
        step = min(step * (1.3 if n_it <= 4 else 1.0), step_max)
        if not lo - 1e-12 <= float(u[G]) <= hi + 1e-12:
            break

    U = torch.stack(points)
    with torch.no_grad():
        stable = np.array([_stable_at(F, p, G) for p in U])
    lam = U[:, G].cpu().numpy()
    X = U[:, :G].cpu().numpy()
    inside = (lam >= lo - 1e-12) & (lam <= hi + 1e-12)
    branch = pd.DataFrame(X, columns=list(model.genes))
    branch.insert(0, "parameter", lam)
    branch["stable"] = stable
    branch = branch[inside].reset_index(drop=True)
    tl = torch.stack(taus)[:, G].cpu().numpy()
    folds = []
    for i in range(len(tl) - 1):
        if tl[i] * tl[i + 1] < 0 and inside[i] and inside[i + 1]:
            w = tl[i] / (tl[i] - tl[i + 1])
            folds.append(np.concatenate([[lam[i] + w * (lam[i + 1] - lam[i])], X[i] + w * (X[i + 1] - X[i])]))
    fold_frame = pd.DataFrame(np.array(folds).reshape(-1, G + 1), columns=["parameter", *model.genes])
    return Bifurcation(branch=branch, folds=fold_frame, parameter=label, genes=list(model.genes))


def _stable_at(F: Any, u: Tensor, G: int) -> bool:
    """All eigenvalues of ``J = ∂f/∂x`` at ``u = (x, λ)`` in the left half plane."""
    J = torch.func.jacfwd(F)(u)[:, :G]
    return bool((torch.linalg.eigvals(J).real < 0).all())

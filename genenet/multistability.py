"""RACIPE-style multistability: many initial states per row, converged and clustered.

For each row (condition x parameter set) ``n_initial`` initial states are drawn
log-uniformly over each gene's range ``[1e-3 M, M]`` with ``M = (mult g + input) / k``
the gene's maximal level (knocked-out genes start at 0). Every start is

1. integrated until it is steady (dopri5, early stop per row, ``t_max``) and polished
   by Newton: the states reached this way are the stable ones, and the share of
   starts reaching each is its *basin fraction*;
2. handed to Newton directly (with a few extra starts on the diagonal ``q M``):
   this also finds unstable states (saddles, the focus inside an oscillation),
   whose basin fraction is 0.

Converged states are clustered per row (same state when every gene agrees within
``cluster_rtol`` relative, or ``1e-9 + cluster_rtol * M`` absolute), then classified
by the eigenvalues of the Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .batch import build_batch
from .distributed import on_cluster, uses_cluster
from .models.base import Model
from .rows import concat_rows
from .solvers import get_method, integrate
from .solvers.integrate import tree_index
from .steady import newton, stability
from .validation import check_positive, resolve_device, resolve_dtype

__all__ = ["SteadyStates", "find_steady_states"]

_DIAGONAL = (0.5, 0.25, 0.1, 0.03)


@dataclass(frozen=True)
class SteadyStates:
    """Distinct steady states of each row.

    Attributes
    ----------
    states : DataFrame
        One line per distinct state: ``condition, parameter_set, state, stable,
        basin_fraction, n_starts``, then one column per gene.
    groups : DataFrame
        One line per row: ``condition, parameter_set, n_states, n_stable, n_unstable,
        unconverged_fraction`` (starts whose dynamics reached no steady state by ``t_max``:
        oscillations or very slow transients).
    genes : list[str]
    """

    states: pd.DataFrame
    groups: pd.DataFrame
    genes: list[str]

    @classmethod
    def from_frame(cls, states: pd.DataFrame) -> SteadyStates:
        """From the ``states`` table alone (e.g. the CSV ``genenet steady-state --out`` writes): the
        genes are the columns after ``condition, parameter_set, state, stable, basin_fraction,
        n_starts``; ``groups`` is rebuilt from the states, so rows that had no state at all are
        missing and ``unconverged_fraction`` is unknown (NaN)."""
        fixed = ["condition", "parameter_set", "state", "stable", "basin_fraction", "n_starts"]
        missing = [c for c in fixed if c not in states.columns]
        if missing:
            raise ValueError(f"a steady-states table needs columns {fixed} and one per gene; missing {missing}")
        genes = [c for c in states.columns if c not in fixed]
        states = states.assign(stable=states["stable"].astype(bool))
        by = states.groupby(["condition", "parameter_set"], sort=False)
        groups = pd.DataFrame({"n_states": by.size(), "n_stable": by["stable"].sum()}).reset_index()
        groups["n_unstable"] = groups["n_states"] - groups["n_stable"]
        groups["unconverged_fraction"] = np.nan
        return cls(states=states.reset_index(drop=True), groups=groups, genes=genes)

    def multistability(self) -> pd.Series:
        """How many rows have 0, 1, 2, ... stable states (RACIPE's mono/bi/tri-stable counts)."""
        return self.groups["n_stable"].value_counts().sort_index().rename("rows")

    def to_frame(self) -> pd.DataFrame:
        """Long table of the states: one line per state and gene."""
        return self.states.melt(id_vars=[c for c in self.states.columns if c not in self.genes],
                                value_vars=self.genes, var_name="gene", value_name="value")

    def summary(self) -> str:
        counts = self.multistability()
        names = {0: "no stable state", 1: "monostable", 2: "bistable", 3: "tristable"}
        parts = [f"{n} {names.get(k, f'{k}-stable')}" for k, n in counts.items()]
        return (f"SteadyStates: {len(self.groups)} rows, {len(self.states)} distinct states "
                f"({int(self.states.stable.sum())} stable); " + ", ".join(parts))

    def __repr__(self) -> str:
        return f"SteadyStates(rows={len(self.groups)}, states={len(self.states)})"


def _cluster(cands: Tensor, valid: Tensor, scale: Tensor, rtol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy clustering per row. cands (R, N, G), valid (R, N), scale (R, G).

    Returns representatives (R, K, G), their validity (R, K), and each candidate's
    cluster id (R, N) (-1 for invalid). Vectorised over rows, a loop over candidates.
    """
    R, N, G = cands.shape
    reps = cands.new_zeros(R, N, G)
    used = torch.zeros(R, N, dtype=torch.bool, device=cands.device)
    count = torch.zeros(R, dtype=torch.long, device=cands.device)
    ids = torch.full((R, N), -1, dtype=torch.long, device=cands.device)
    rows = torch.arange(R, device=cands.device)
    atol = 1e-9 + rtol * scale  # (R, G)
    k = 0  # clusters so far in the fullest row: candidates are compared with those slots only
    for j in range(N):
        x = cands[:, j]  # (R, G)
        r = reps[:, :k]
        close = ((r - x[:, None]).abs() <= rtol * torch.maximum(r.abs(), x[:, None].abs())
                 + atol[:, None]).all(dim=-1) & used[:, :k]  # (R, k)
        match = close.any(dim=1)
        first = close.float().argmax(dim=1) if k else count
        new = valid[:, j] & ~match
        slot = torch.where(new, count, first)
        ids[:, j] = torch.where(valid[:, j], slot, -1)
        reps[rows[new], count[new]] = x[new]
        used[rows[new], count[new]] = True
        count = count + new.long()
        k = int(count.max())
    K = max(k, 1)
    return reps[:, :K], used[:, :K], ids


def _uniform_rows(seed: int, rows: np.ndarray, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """``default_rng(seed).uniform(low, high, (B, *shape))[rows]`` without drawing the other rows:
    PCG64 skips ahead (one 64-bit draw per double) to each run of consecutive rows."""
    per_row = int(np.prod(shape))
    out = np.empty((len(rows), *shape))
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run in np.split(np.arange(len(rows)), breaks):
        if run.size == 0:
            continue
        bits = np.random.PCG64(seed)
        bits.advance(int(rows[run[0]]) * per_row)
        out[run] = np.random.Generator(bits).uniform(low, high, size=(run.size, *shape))
    return out


def find_steady_states(
    model: Model,
    perturbations: Any = None,
    n_initial: int = 500,
    seed: int = 0,
    *,
    params: Any = None,
    tol: float = 1e-9,
    cluster_rtol: float = 1e-4,
    t_max: float = 1e3,
    max_steps: int = 5000,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    steady_tol: float = 1e-8,
    device: str | torch.device = "auto",
    dtype: Any = None,
    rows: Any = None,
    cluster: Any = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> SteadyStates:
    """All distinct steady states of every row, with stability and basin fractions (see module doc).

    **Arguments**

    model : a model with ``max_levels(p, mult, add)`` (Hill) to define the sampling ranges.
    perturbations, params : as for :func:`genenet.simulate` (no pulses).
    n_initial : random initial states per row.
    seed : reproduces the initial states exactly.
    tol : Newton convergence, ``max|f| <= tol (1 + max|x|)``.
    cluster_rtol : relative tolerance under which two states are the same.
    t_max, max_steps : integration horizon and step limit per start.
    rtol, atol, steady_tol : the integration's tolerances and its early stop, ``max|dx/dt| <= steady_tol
        (1 + max|x|)``; the states are then polished by Newton to ``tol`` whatever these are, so looser
        values (e.g. GRiNS's rtol 1e-5, atol 1e-6) trade only integration time for Newton iterations.

    rows, cluster, chunk_size : only some rows of the batch; rows in chunks on Dask workers (as
        for :func:`genenet.simulate`). A row's initial states are the same whichever rows are
        asked for, so chunks give the result of one call.
    progress : a tqdm bar over the stages (integrate, newton, cluster, stability), or over finished
        chunks with ``cluster``.

    **Returns** :class:`SteadyStates` (``.states``, ``.groups``, ``.multistability()``).
    """
    check_positive(n_initial, "n_initial", integer=True)
    check_positive(cluster_rtol, "cluster_rtol")
    for name, v in (("rtol", rtol), ("atol", atol), ("steady_tol", steady_tol)):
        check_positive(v, name)
    if not hasattr(model, "max_levels"):
        raise TypeError(f"{type(model).__name__} has no max_levels(p, mult, add); find_steady_states samples "
                        "initial states in [1e-3 M, M] per gene and needs the model's maximal levels M")
    if uses_cluster(cluster):
        kwargs = dict(model=model, perturbations=perturbations, n_initial=n_initial, seed=seed, params=params, tol=tol,
                      cluster_rtol=cluster_rtol, t_max=t_max, max_steps=max_steps, rtol=rtol, atol=atol,
                      steady_tol=steady_tol, device=device, dtype=dtype)
        parts = on_cluster(find_steady_states, kwargs, rows=rows,
                           cluster=cluster, chunk_size=chunk_size, progress=progress, desc="find_steady_states")
        return concat_rows(parts, shared=("genes",))
    dev = resolve_device(device)
    dtp = resolve_dtype(dtype, dev)
    tol = max(tol, 100 * torch.finfo(dtp).eps)
    batch = build_batch(model, perturbations, None, params, device=dev, dtype=dtp, rows=rows)
    if batch.term.pulsed:
        raise ValueError("find_steady_states does not take Pulse perturbations")
    term = batch.term
    R, G, n = batch.n_rows, model.n_genes, int(n_initial)
    from tqdm.auto import tqdm

    stages = ["integrate", "newton", "cluster", "stability"]
    with torch.no_grad(), tqdm(total=len(stages), desc="find_steady_states", unit="stage", disable=not progress,
                               leave=False) as bar:
        bar.set_postfix_str(stages[0])
        args = term.segment(torch.zeros(R, dtype=dtp, device=dev), term.initial_args)
        M = model.max_levels(args["p"], args.get("mult"), args.get("add")).expand(R, G)
        u = torch.as_tensor(_uniform_rows(seed, batch.index, (n, G), -3.0, 0.0), dtype=dtp, device=dev)
        starts = M[:, None, :] * torch.pow(10.0, u)  # log-uniform in [1e-3 M, M]
        diag = M[:, None, :] * torch.as_tensor(_DIAGONAL, dtype=dtp, device=dev)[None, :, None]
        all_starts = torch.cat([starts, diag], dim=1)  # (R, n + D, G)
        N = all_starts.shape[1]

        # 1. dynamics: integrate every random start until steady, then polish
        rows_n = torch.arange(R, device=dev).repeat_interleave(n)
        args_n = tree_index(args, rows_n)
        x_start = term.reset(torch.zeros(R * n, dtype=dtp, device=dev), starts.reshape(R * n, G), args_n)
        t = torch.tensor([0.0, float(t_max)], dtype=dtp, device=dev)
        sol = integrate(term.vf, x_start, t, method=get_method("dopri5"), args=args_n, rtol=rtol, atol=atol,
                        max_steps=max_steps, steady_tol=steady_tol, native=term.native_spec)
        end = sol.y[:, -1]
        reached = torch.isfinite(end).all(dim=-1)
        end = torch.where(reached[:, None], end, x_start)
        x_int, conv_int, _ = newton(term, end, args_n, tol=tol, max_iter=50)
        near = ((x_int - end).abs() <= 1e-3 * (end.abs() + M.index_select(0, rows_n))).all(dim=-1)
        dyn_ok = reached & conv_int & near

        bar.update(1)
        bar.set_postfix_str(stages[1])
        # 2. Newton from every start (random and diagonal): unstable states too; a start that
        # has not halved its residual in 10 iterations is dropped (the others cover its state)
        rows_N = torch.arange(R, device=dev).repeat_interleave(N)
        args_N = tree_index(args, rows_N)
        x_newton, conv_newton, _ = newton(term, all_starts.reshape(R * N, G), args_N, tol=tol, max_iter=50,
                                          give_up=10)

        cands = torch.cat([x_int.view(R, n, G), x_newton.view(R, N, G)], dim=1)
        valid = torch.cat([dyn_ok.view(R, n), conv_newton.view(R, N)], dim=1)
        bar.update(1)
        bar.set_postfix_str(stages[2])
        reps, used, ids = _cluster(cands, valid, M, cluster_rtol)
        K = reps.shape[1]
        dyn = ids[:, :n]  # cluster of each integrated start, -1 if it reached none
        basin = torch.zeros(R, K + 1, dtype=torch.long, device=dev).scatter_add_(
            1, torch.where(dyn >= 0, dyn, K), torch.ones_like(dyn))[:, :K]  # (R, K)
        rows_K = torch.arange(R, device=dev).repeat_interleave(K)
        bar.update(1)
        bar.set_postfix_str(stages[3])
        ev, stable = stability(term, reps.reshape(R * K, G), tree_index(args, rows_K))
        stable = stable.view(R, K) & used
        bar.update(1)

    used_np, stable_np = used.cpu().numpy(), stable.cpu().numpy()
    reps_np, basin_np = reps.cpu().numpy(), basin.cpu().numpy()
    r_idx, k_idx = np.nonzero(used_np)
    states = pd.DataFrame({
        "condition": np.asarray(batch.conditions, dtype=object)[r_idx],
        "parameter_set": batch.parameter_sets[r_idx],
        "state": k_idx,
        "stable": stable_np[r_idx, k_idx],
        "basin_fraction": basin_np[r_idx, k_idx] / n,
        "n_starts": basin_np[r_idx, k_idx],
    })
    values = pd.DataFrame(reps_np[r_idx, k_idx], columns=list(model.genes))
    states = pd.concat([states, values], axis=1)
    n_stable = (stable_np & used_np).sum(axis=1)
    n_states = used_np.sum(axis=1)
    groups = pd.DataFrame({
        "condition": batch.conditions, "parameter_set": batch.parameter_sets, "n_states": n_states,
        "n_stable": n_stable, "n_unstable": n_states - n_stable,
        "unconverged_fraction": 1.0 - dyn_ok.view(R, n).float().mean(dim=1).cpu().numpy(),
    })
    return SteadyStates(states=states, groups=groups, genes=list(model.genes))

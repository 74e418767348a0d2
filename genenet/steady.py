"""Steady states, Jacobians, stability and steady-state sensitivities.

All solvers here are batched over rows (conditions x parameter sets [x initial
states]): one Jacobian evaluation, one batched linear solve per iteration.

- Damped Newton: ``x <- max(0, x + a dx)`` with ``J dx = -f`` and ``a`` found by
  backtracking (quadratic interpolation, from ``a = 1`` down to ``2^-11``) until Armijo's
  condition on the merit ``|f|^2`` holds, ``|f(x + a dx)|^2 <= (1 - 2e-4 a) |f(x)|^2``
  (shorter steps tried only on the rows whose longer step failed). Every iteration works
  on the rows still iterating only.
- Integration (``method="integrate"``, and the first fallback of ``"newton"``): simulate
  until the row is steady or ``t_max``, then polish with Newton; from the end of an
  oscillation Newton finds the unstable steady state inside the cycle.
- Pseudo-transient continuation (second fallback of ``"newton"``): ``(I/d - J) dx = f`` with the
  pseudo time step ``d`` grown by switched evolution relaxation, ``d <- d |f_old| / |f_new|``,
  which follows the dynamics towards a stable state and turns into Newton near it.
- Sub-conditions (last fallback of ``"newton"``): Newton from the steady state of a condition
  with a subset of the row's perturbations (same parameter set), the row's knockouts and clamps
  set: a one-step continuation in the perturbation. On the 100-gene double-knockout screen,
  where 4027 of 5051 rows oscillate, it solved 251 of the 813 rows the other starts left.

A row is converged when ``max_i |f_i(x)| <= tol * (1 + max_i |x_i|)``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from . import native
from .batch import Batch, build_batch
from .conservation import reduced, with_conservation
from .distributed import on_cluster, uses_cluster
from .models.base import Model
from .perturb import as_conditions
from .rows import LOCAL, concat_rows
from .solvers import get_method, integrate
from .solvers.integrate import tree_cast, tree_index
from .validation import check_positive, resolve_device, resolve_dtype

__all__ = ["SteadyState", "steady_state", "jacobian", "steady_state_sensitivity", "newton", "stability"]

_MIN_STEP = 2.0 ** -11  # the shortest Newton step of the line search


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
        How each row converged: ``"newton"``, ``"integrate"``, ``"ptc"`` (pseudo-transient
        continuation) or ``"sub-condition"``; ``"failed"`` where it did not.
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
    _batch: Any = field(default=None, repr=False, compare=False, metadata=LOCAL)
    _args: Any = field(default=None, repr=False, compare=False, metadata=LOCAL)

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
        ways = ", ".join(f"{k} {int((self.method == k).sum())}" for k in dict.fromkeys(self.method) if k != "failed")
        return (f"SteadyState: {n} rows x {len(self.genes)} genes; converged {int(self.converged.sum())}/{n} "
                f"({ways}); stable {int(self.stable.sum())}; max residual {self.residual.max():.2e}")

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


def _line_search(term: Any, t: Tensor, x: Tensor, F: Tensor, dx: Tensor, args: dict
                 ) -> tuple[Tensor, Tensor]:
    """Backtracking on the merit ``φ(a) = |f(max(0, x + a dx))|^2`` (Dennis & Schnabel A6.3.1).

    The full step first; where it fails Armijo's test ``φ(a) <= (1 - 2e-4 a) φ(0)``, the
    next ``a`` minimises the quadratic through ``φ(0)``, ``φ'(0) = -2 φ(0)`` (the Newton
    direction) and ``φ(a)``, kept within ``[a/10, a/2]``; only the failing rows are
    evaluated again. Below ``2^-11`` a row takes that shortest step without the test (some
    rows creep out of such regions and converge later). Returns the new ``x`` and ``f(x)``."""
    r0 = F.pow(2).sum(dim=-1)
    x_new = (x + dx).clamp_min(0.0)
    F_new = term.vf(t, x_new, args)
    j = torch.arange(x.shape[0], device=x.device)
    a = torch.ones_like(r0)
    while j.numel():
        r, aj, r0j = F_new[j].pow(2).sum(dim=-1), a[j], r0[j]
        fail = ~((r <= (1.0 - 2e-4 * aj) * r0j) & torch.isfinite(r))
        keep = fail & (aj > _MIN_STEP)
        j, aj, r, r0j = j[keep], aj[keep], r[keep], r0j[keep]
        if j.numel() == 0:
            break
        quad = r0j * aj * aj / (r - r0j + 2.0 * r0j * aj)  # nan / inf where r is not finite
        aj = torch.where(torch.isfinite(quad), torch.minimum(torch.maximum(quad, 0.1 * aj), 0.5 * aj), 0.1 * aj)
        a[j] = aj = aj.clamp_min(_MIN_STEP)
        x_new[j] = (x[j] + aj[:, None] * dx[j]).clamp_min(0.0)
        F_new[j] = term.vf(t[j], x_new[j], tree_index(args, j))
    return x_new, F_new


def _native_roots(term: Any, x: Tensor, args: dict, mode: str, **kw: Any) -> tuple[Tensor, Tensor, Tensor] | None:
    """The iteration in C (:func:`genenet.native.roots_hill`) when the term has a native spec (the
    Hill model under condition effects) and ``x`` is a CPU tensor without a graph; else None."""
    if x.device.type != "cpu" or x.requires_grad or native.reason(x.dtype) is not None:
        return None
    spec_fn = getattr(term, "native_spec", None)
    spec = spec_fn(args) if spec_fn is not None else None
    if spec is None or "tangents" in spec:
        return None
    return native.roots(spec, x, mode=mode, **kw)


def newton(term: Any, x: Tensor, args: dict, *, tol: float, max_iter: int = 50,
           active: Tensor | None = None, give_up: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Batched damped Newton with a backtracking line search (module doc).

    Each iteration works only on the rows still iterating (converged and given-up rows
    leave the batch), so a few slow rows do not cost a full-batch LU per iteration.
    A row whose line search finds no decrease still takes the shortest step (some rows
    creep out of such regions and converge late); with ``give_up=k`` a row is dropped once
    k iterations in a row have not halved its merit ``|f|^2``, for a cheap first attempt
    before other starts.
    Returns ``(x, converged (B,), iterations (B,))``. Rows not ``active`` are left alone.
    States are kept non-negative (expression levels).
    On the CPU the Hill model's iterations run in C, one row per task (the same iteration;
    :func:`genenet.native.roots_hill`); this torch loop is the reference and the GPU path.
    """
    fast = _native_roots(term, x, args, "newton", tol=tol, max_iter=max_iter, give_up=give_up, active=active)
    if fast is not None:
        return fast
    B = x.shape[0]
    t = torch.zeros(B, dtype=x.dtype, device=x.device)
    x = x.clone()
    iters = torch.zeros(B, dtype=torch.long, device=x.device)
    stuck = torch.zeros(B, dtype=torch.long, device=x.device)  # iterations since the merit last halved
    F = term.vf(t, x, args)
    ref = F.pow(2).sum(dim=-1)
    converged = _residual(F) <= _tolerance(x, tol)
    work = ~converged if active is None else active & ~converged
    for _ in range(max_iter):
        idx = torch.nonzero(work).squeeze(1)
        if idx.numel() == 0:
            break
        sub, ts, xs, Fs = tree_index(args, idx), t[idx], x[idx], F[idx]
        dx, ok = _solve(term.jacobian(ts, xs, sub), -Fs)
        x_new, F_new = _line_search(term, ts, xs, Fs, dx, sub)
        move = ok & torch.isfinite(F_new).all(dim=-1)
        merit = F_new.pow(2).sum(dim=-1)
        halved = merit <= 0.5 * ref[idx]
        ref[idx] = torch.where(halved, merit, ref[idx])
        stuck[idx] = torch.where(halved, 0, stuck[idx] + 1)
        x[idx] = torch.where(move[:, None], x_new, xs)
        F[idx] = torch.where(move[:, None], F_new, Fs)
        iters[idx] += 1
        done = _residual(F[idx]) <= _tolerance(x[idx], tol)
        converged[idx] = done
        work[idx] = move & ~done & (stuck[idx] < (give_up or max_iter + 1))  # a row that cannot move is given up on
    return x, converged, iters


def pseudo_transient(term: Any, x: Tensor, args: dict, *, tol: float, max_iter: int = 300,
                     active: Tensor | None = None, dt0: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Batched pseudo-transient continuation towards a stable steady state (see module doc).

    Like :func:`newton`, each iteration works only on the rows still iterating, and on the CPU
    the Hill model's iterations run in C."""
    fast = _native_roots(term, x, args, "ptc", tol=tol, max_iter=max_iter, active=active, dt0=dt0)
    if fast is not None:
        return fast
    B, G = x.shape
    t = torch.zeros(B, dtype=x.dtype, device=x.device)
    x = x.clone()
    eye = torch.eye(G, dtype=x.dtype, device=x.device)
    d = torch.full((B,), dt0, dtype=x.dtype, device=x.device)
    iters = torch.zeros(B, dtype=torch.long, device=x.device)
    F = term.vf(t, x, args)
    res = _residual(F)
    converged = res <= _tolerance(x, tol)
    work = ~converged if active is None else active & ~converged
    for _ in range(max_iter):
        idx = torch.nonzero(work).squeeze(1)
        if idx.numel() == 0:
            break
        sub, ts, xs, Fs, ds, rs = tree_index(args, idx), t[idx], x[idx], F[idx], d[idx], res[idx]
        dx, ok = _solve(eye / ds[:, None, None] - term.jacobian(ts, xs, sub), Fs)
        x_new = (xs + dx).clamp_min(0.0)
        F_new = term.vf(ts, x_new, sub)
        res_new = _residual(F_new)
        good = ok & torch.isfinite(res_new)
        x[idx] = torch.where(good[:, None], x_new, xs)
        F[idx] = torch.where(good[:, None], F_new, Fs)
        grow = (rs / res_new.clamp_min(1e-300)).clamp(0.1, 10.0)
        d[idx] = ds = torch.where(good, (ds * grow).clamp(max=1e12), ds * 0.25)
        res[idx] = torch.where(good, res_new, rs)
        iters[idx] += 1
        done = res[idx] <= _tolerance(x[idx], tol)
        converged[idx] = done
        work[idx] = ~done & (ds > 1e-12)
    return x, converged, iters


def stability(term: Any, x: Tensor, args: dict) -> tuple[Tensor, Tensor]:
    """Jacobian eigenvalues (B, G) and stability (all real parts < 0) at states ``x``.

    With conservation laws (a reduced ``term``, :mod:`genenet.conservation`) the eigenvalues are
    those on the directions the laws leave free, the conserved directions' zeros reported as 0 and
    not counted against stability.

    A clamped gene is not a dynamic variable: its row is zero and its diagonal set to
    -1, so it adds the eigenvalue -1 and leaves the others unchanged.
    """
    t = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    J = getattr(term, "unreduced", term).jacobian(t, x, args)
    if getattr(term, "use_clamp", False):
        clamp = args["clamp"]
        J = torch.where(clamp[:, :, None], 0.0, J)
        J = J - torch.diag_embed(clamp.to(J.dtype))
    if hasattr(term, "unreduced"):  # conserved moieties: judged on the directions the dynamics can take
        return term.stability(J, args)
    ev = eigvals(J)
    return ev, (ev.real < 0).all(dim=-1)


def eigvals(J: Tensor) -> Tensor:
    """``torch.linalg.eigvals`` of a batch of matrices ``J`` (B, G, G) -> (B, G) complex.

    On the CPU torch takes a batch's matrices one after another in one thread; LAPACK's geev
    releases the GIL, so the batch is split over ``torch.get_num_threads()`` threads (the same
    eigenvalues, bitwise; 2.1x on two cores for a screen's 100 x 100 Jacobians)."""
    n = torch.get_num_threads()
    if J.device.type != "cpu" or n < 2 or J.dim() != 3 or J.shape[0] < 2 * n:
        return torch.linalg.eigvals(J)
    with ThreadPoolExecutor(n) as pool:
        return torch.cat(list(pool.map(torch.linalg.eigvals, J.chunk(n))))


# --------------------------------------------------------------------- API
def _prepare(model: Model, perturbations: Any, x0: Any, params: Mapping[str, Any] | None, device: Any,
             dtype: Any, rows: Any = None) -> tuple[Batch, dict, torch.device, torch.dtype]:
    dev = resolve_device(device)
    dtp = resolve_dtype(dtype, dev)
    batch = build_batch(model, perturbations, x0, params, device=dev, dtype=dtp, rows=rows)
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
    progress: bool = False,
    rows: Any = None,
    cluster: Any = None,
    chunk_size: int | None = None,
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
        converge fall back to integration from ``x0`` followed by Newton, and then to
        pseudo-transient continuation from ``x0`` followed by Newton.
        Rows still unsolved then try Newton from the steady states of their sub-conditions
        (same parameter set, a subset of their perturbations: a double knockout from its
        single knockouts, then from the wild type), with their own knockouts and clamps set.
        Newton finds the steady state nearest in Newton's sense, stable or not (from a
        symmetric start of a toggle switch, the saddle). ``"integrate"``: follow the
        dynamics from ``x0`` (dopri5 until steady or ``t_max``) then polish by Newton;
        this gives the state the system actually reaches from ``x0``.
    max_iter : Newton / continuation iterations.
    progress : a tqdm bar of converged rows over the stages (newton, integrate, ptc); of
        finished chunks with ``cluster``.
    rows, cluster, chunk_size : only some rows of the batch; rows in chunks on Dask workers
        (as for :func:`genenet.simulate`). The sub-condition rows a row needs are solved for it
        where its chunk lacks them (as far as one call has them when that fallback starts),
        so chunks give every row the state one call gives it.

    **Returns** :class:`SteadyState` with ``.x`` (B, G), ``.converged``, ``.residual``,
    ``.jacobian_eigenvalues``, ``.stable``, row labels and ``.to_frame()``.
    """
    if method not in ("newton", "integrate"):
        raise ValueError(f"unknown method {method!r}; allowed: 'newton', 'integrate'")
    check_positive(tol, "tol")
    check_positive(max_iter, "max_iter", integer=True)
    if uses_cluster(cluster):
        kwargs = dict(model=model, perturbations=perturbations, x0=x0, params=params, tol=tol, method=method,
                      max_iter=max_iter, t_max=t_max, device=device, dtype=dtype)
        parts = on_cluster(steady_state, kwargs, rows=rows, cluster=cluster,
                           chunk_size=chunk_size, progress=progress, desc="steady_state")
        ss = concat_rows(parts, shared=("genes",))
        batch, args, _, _ = _prepare(model, perturbations, x0, params, ss.x.device, ss.x.dtype, rows=rows)
        return dataclasses.replace(ss, _batch=batch, _args=args)  # for steady_state_sensitivity
    return _steady_state(model, perturbations, x0, params, tol, method=method, max_iter=max_iter, t_max=t_max,
                         device=device, dtype=dtype, progress=progress, rows=rows)


def _steady_state(model: Model, perturbations: Any, x0: Any, params: Mapping[str, Any] | None, tol: float, *,
                  method: str, max_iter: int, t_max: float, device: Any, dtype: Any, progress: bool, rows: Any,
                  sub_conditions: bool = True) -> SteadyState:
    """:func:`steady_state` in this process; ``sub_conditions=False``: without the last fallback (the
    states a call's other rows have when that fallback starts)."""
    batch, args, dev, dtp = _prepare(model, perturbations, x0, params, device, dtype, rows=rows)
    if batch.term.pulsed:
        raise ValueError("steady_state does not take Pulse perturbations: a pulsed system has no fixed regime")
    tol = max(tol, 100 * torch.finfo(dtp).eps)
    term = batch.term
    B = batch.n_rows
    from tqdm.auto import tqdm

    with torch.no_grad(), tqdm(total=B, desc="steady_state", unit="row", disable=not progress, leave=False) as bar:
        x = term.reset(torch.zeros(B, dtype=dtp, device=dev), batch.x0.detach(), args)
        term, args = with_conservation(term, args, x)  # conserved totals: the reduced system (conservation.py)
        how = np.full(B, "failed", dtype=object)
        if method == "newton":  # a cheap first attempt: rows making no progress try other starts
            x1, conv, iters = newton(term, x, args, tol=tol, max_iter=max_iter, give_up=10)
            how[conv.cpu().numpy()] = "newton"
            fallbacks = [("integrate", _via_integration), ("ptc", _via_ptc)]
            if sub_conditions and batch.n_conditions > 1:  # the rows solved so far (x1, conv) as starts
                # rows outside this call are solved as far as this call's own rows are at that point
                others = functools.partial(_steady_state, model, perturbations, x0, params, tol, method=method,
                                           max_iter=max_iter, t_max=t_max, device=dev, dtype=dtp, progress=False,
                                           sub_conditions=False)
                fallbacks.append(("sub-condition", functools.partial(
                    _via_sub_conditions, conditions=as_conditions(perturbations), n_sets=batch.n_sets,
                    fixed=batch.x0_fixed, solved=(x1, conv), batch_rows=batch.index,
                    solve_rows=lambda r: others(rows=r))))
        else:
            x1, conv = x.clone(), torch.zeros(B, dtype=torch.bool, device=dev)
            iters = torch.zeros(B, dtype=torch.long, device=dev)
            fallbacks = [("integrate", _via_integration)]
        impossible = args.get("no_steady_state")  # an input that breaks a conservation law
        if impossible is not None:
            conv = conv & ~impossible
            how[impossible.cpu().numpy()] = "failed"
            conv_done = conv | impossible  # not tried again
        else:
            conv_done = conv
        bar.update(int(conv.sum()))
        for name, fallback in fallbacks:  # each on the rows still left, from x0
            if bool(conv_done.all()):
                break
            bar.set_postfix_str(name)
            sub = torch.nonzero(~conv_done).squeeze(1)
            xs, cs, its = fallback(term, tree_index(args, sub), x[sub], sub, tol, max_iter, t_max)
            x1[sub] = torch.where(cs[:, None], xs, x1[sub])
            iters[sub] += its
            conv[sub] = cs
            conv_done[sub] = cs
            how[sub[cs].cpu().numpy()] = name
            bar.update(int(cs.sum()))
        F = term.vf(torch.zeros(B, dtype=dtp, device=dev), x1, args)
        ev, stable = stability(term, x1, args)
    conv_np = conv.cpu().numpy()
    return SteadyState(
        x=x1, converged=conv_np, residual=_residual(F).cpu().numpy(), jacobian_eigenvalues=ev,
        stable=stable.cpu().numpy() & conv_np, genes=list(model.genes), labels=batch.labels,
        conditions=batch.conditions, parameter_sets=batch.parameter_sets, method=how,
        iterations=iters.cpu().numpy(), _batch=batch, _args=args,
    )


def _sub_condition_candidates(conditions: list, n_sets: int, targets: np.ndarray
                              ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """For each target row (condition c, parameter set s: row ``c * n_sets + s``), the rows of the
    same set whose condition's perturbations are a subset of its own, in the order they are tried:
    one perturbation fewer first, then two fewer, then none (the wild type).

    Returns ``known``, all candidate rows (unique, sorted), and per target condition ``(positions
    among the targets, candidates (n_candidates, n_positions) as indices into known)``."""
    P = n_sets
    by_set: dict[frozenset, int] = {}
    for c, cond in enumerate(conditions):
        by_set.setdefault(frozenset(cond.perturbations), c)
    cond_t, set_t = np.divmod(np.asarray(targets, dtype=np.int64), P)
    groups = []
    for c in np.unique(cond_t):
        perts = list(dict.fromkeys(conditions[c].perturbations))
        k = len(perts)
        subsets = [frozenset(q) for size in (k - 1, k - 2) if size > 0 for q in itertools.combinations(perts, size)]
        subs = np.array([by_set[q] for q in dict.fromkeys([*subsets, frozenset()]) if by_set.get(q, c) != c], int)
        if subs.size:
            pos = np.flatnonzero(cond_t == c)
            groups.append((pos, subs[:, None] * P + set_t[pos][None, :]))
    known = np.unique(np.concatenate([cand.ravel() for _, cand in groups])) if groups else np.zeros(0, np.int64)
    return known, [(pos, np.searchsorted(known, cand)) for pos, cand in groups]


def _sub_condition_rows(groups: list[tuple[np.ndarray, np.ndarray]], converged: np.ndarray, n_targets: int,
                        n_starts: int = 3) -> np.ndarray:
    """Up to ``n_starts`` converged candidates per target (``groups`` of
    :func:`_sub_condition_candidates`, ``converged`` per known row), in order: (n_starts, n_targets)
    indices into the known rows, -1 where a target has no such candidate."""
    out = np.full((n_starts, n_targets), -1)
    for pos, cand in groups:
        ok = converged[cand]  # (candidates, positions)
        rank = np.cumsum(ok, axis=0) - 1  # each converged candidate's place in its target's list
        cols = np.arange(cand.shape[1])
        for j in range(n_starts):
            pick = ok & (rank == j)  # at most one per target
            has = pick.any(axis=0)
            out[j, pos[has]] = cand[pick.argmax(axis=0), cols][has]
    return out


def _via_sub_conditions(term: Any, args: dict, x: Tensor, rows: Tensor, tol: float, max_iter: int, t_max: float, *,
                        conditions: list, n_sets: int, fixed: Tensor, solved: tuple[Tensor, Tensor],
                        batch_rows: np.ndarray, solve_rows: Callable[[np.ndarray], SteadyState]
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Newton from the steady states of the rows' sub-conditions in turn (:func:`_sub_condition_rows`),
    with the rows' own knockouts and clamps (``fixed`` genes from ``x``): a one-step continuation in
    the perturbation. ``solved``: the batch's states and convergence so far; the batch holds the
    rows ``batch_rows`` of the whole (conditions x sets) batch, and sub-condition rows outside it
    are solved by ``solve_rows(rows)`` (a steady_state call for those rows)."""
    x_solved, conv = solved
    known, groups = _sub_condition_candidates(conditions, n_sets, batch_rows[rows.cpu().numpy()])
    # the candidates' states and convergence: from this batch, or solved for the rows outside it
    local = np.full(len(conditions) * n_sets, -1)
    local[batch_rows] = np.arange(len(batch_rows))
    pos = local[known]
    inside = pos >= 0
    conv_known = np.zeros(len(known), dtype=bool)
    conv_known[inside] = conv.cpu().numpy()[pos[inside]]
    x_known = x_solved.new_full((len(known), x_solved.shape[1]), float("nan"))
    x_known[torch.as_tensor(inside, device=x.device)] = x_solved[torch.as_tensor(pos[inside], device=x.device)]
    if not inside.all():
        out = solve_rows(known[~inside])
        conv_known[~inside] = out.converged
        x_known[torch.as_tensor(~inside, device=x.device)] = out.x.to(x.device, x.dtype)
    t = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    starts = []
    for pick in _sub_condition_rows(groups, conv_known, x.shape[0]):
        has = torch.as_tensor(pick >= 0, device=x.device)
        if not bool(has.any()):
            continue
        start = torch.where(fixed[rows], x, x_known[torch.as_tensor(np.maximum(pick, 0), device=x.device)])
        starts.append(torch.where(has[:, None], term.reset(t, start, args), torch.nan))
    if not starts:
        return x, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device), torch.zeros_like(rows)
    return _newton_from_starts(term, starts, args, tol, max_iter)


def _via_integration(term: Any, args: dict, x: Tensor, rows: Tensor, tol: float, max_iter: int, t_max: float
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Follow the dynamics from ``x``, then Newton from the trajectory's starts in turn
    (:func:`_integrate_to_steady`). A fallback of :func:`steady_state`: ``args``, ``x`` are those of
    the batch's ``rows``, which this one does not need."""
    return _newton_from_starts(term, list(_integrate_to_steady(term, args, x, t_max)), args, tol, max_iter)


def _via_ptc(term: Any, args: dict, x: Tensor, rows: Tensor, tol: float, max_iter: int, t_max: float
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Pseudo-transient continuation from ``x``, then Newton (a fallback, as :func:`_via_integration`)."""
    x2, _, it2 = pseudo_transient(term, x, args, tol=tol, max_iter=3 * max_iter)
    x3, conv, it3 = newton(term, x2, args, tol=tol, max_iter=max_iter)
    return x3, conv, it2 + it3


def _integrate_to_steady(term: Any, args: dict, x: Tensor, t_max: float, max_steps: int = 5000,
                         n_save: int = 401, block: int | None = None) -> tuple[Tensor, ...]:
    """Follow the dynamics until each row is steady or ``t_max`` (loosely: Newton polishes).

    Returns four Newton starts per row, (B, G) each: the last state reached, the mean over
    the later half of the saved states (inside an oscillation the mean lies near the
    unstable steady state that the cycle surrounds), and the states at 3/4 and 7/8 of the
    way (other phases of a cycle: on a 100-gene screen with most rows oscillating they
    raised the rows Newton solves from 58% to 68%).

    The starts only need to be near a steady state, so a float64 problem is integrated in
    float32 (6x faster on that screen, and Newton solved as many rows) at rtol 1e-4: most of
    those rows oscillate, where the steps are held by the method's stability more than by the
    tolerance; 1e-5 -> 1e-4 cut that integration from 12.5 to 9.3 s and Newton then solved 36
    rows more (4525 of 5051), 1e-3 saved little more and solved fewer.

    ``block``: rows per integration (default: about 8 MB of saves each where the native kernel
    runs, else all).
    """
    term = getattr(term, "unreduced", term)  # the true dynamics, which keep the totals by themselves
    lo = torch.float32 if x.dtype == torch.float64 else x.dtype
    t = torch.linspace(0.0, float(t_max), n_save, dtype=lo, device=x.device)
    cast = tree_cast(args, lo)
    B, G = x.shape
    # In row blocks of about 8 MB of saves (at least 64 rows, for the threads) where the native
    # kernel runs (rows are independent there, so the same states): the whole (B, T, G) is
    # gigabytes on a screen, and writing it into fresh pages made the integration of 67000 rows
    # x 11 genes take 12-15 s instead of 7.5 s. The torch loop (GPU, other models) takes the
    # batch at once: its cost is per step of the batch.
    blocked = x.device.type == "cpu" and native.available(lo) and term.native_spec(cast) is not None
    chunk = max(1, (1 << 21) // max(1, n_save * G))  # rows of ~8 MB of float32 saves
    step = block or (max(64, chunk) if blocked else max(B, 1))
    parts = []
    for i in range(0, B, step):
        rows = torch.arange(i, min(B, i + step), device=x.device)
        sol = integrate(term.vf, x[rows].to(lo), t, method=get_method("dopri5"), args=tree_index(cast, rows),
                        rtol=1e-4, atol=1e-5, max_steps=max_steps, steady_tol=1e-6, native=term.native_spec)
        # the starts from the saves in chunks of rows: their float64 copy is the size of the saves again
        parts += [_trajectory_starts(sol.y[j:j + chunk].to(x.dtype)) for j in range(0, len(rows), chunk)]
    starts = [torch.cat(p) for p in zip(*parts)] if parts else [x] * 4
    return tuple(torch.where(torch.isfinite(s).all(dim=-1, keepdim=True), s, x) for s in starts)


def _trajectory_starts(y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`_integrate_to_steady`'s four starts from saved states ``y`` (B, T, G), NaN after a row
    stopped at max_steps: the last finite save, the mean over the later half of the finite saves,
    and the saves at 3/4 and 7/8 of the way."""
    n_save = y.shape[1]
    finite = torch.isfinite(y).all(dim=-1)  # (B, T)
    idx = torch.arange(n_save, device=y.device)
    last = torch.where(finite, idx, -1).amax(dim=1).clamp(min=0)
    rows = torch.arange(y.shape[0], device=y.device)
    late = finite & (idx[None, :] >= (last[:, None] + 1) // 2)
    mean = torch.where(late[..., None], y, 0.0).sum(dim=1) / late.sum(dim=1, keepdim=True).clamp(min=1)
    return y[rows, last], mean, y[rows, (3 * last) // 4], y[rows, (7 * last) // 8]


def _newton_from_starts(term: Any, starts: list[Tensor], args: dict, tol: float, max_iter: int
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Newton from each start in turn on the rows no earlier start solved; a row keeps its
    first converged result (else the result from its first start). A row whose start is not
    finite has none there (rows with none at all come back unconverged, as their first start)."""
    B = starts[0].shape[0]
    conv = torch.zeros(B, dtype=torch.bool, device=starts[0].device)
    ran = torch.zeros(B, dtype=torch.bool, device=starts[0].device)
    iters = torch.zeros(B, dtype=torch.long, device=starts[0].device)
    x = starts[0].clone()
    for start in starts:
        sub = torch.nonzero(~conv & torch.isfinite(start).all(dim=-1)).squeeze(1)
        if sub.numel() == 0:
            continue
        xs, cs, its = newton(term, start[sub], tree_index(args, sub), tol=tol, max_iter=max_iter)
        x[sub] = torch.where((ran[sub] & ~cs)[:, None], x[sub], xs)
        ran[sub] = True
        conv[sub] = cs
        iters[sub] += its
    return x, conv, iters


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
    term = reduced(term, args)  # conserved totals held fixed: the reduced system's Jacobian is regular
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
        if getattr(term, "use_clamp", False):  # a clamped species is held: its row says d x_c = 0
            clamp = args["clamp"]
            J = torch.where(clamp[:, :, None], 0.0, J) - torch.diag_embed(clamp.to(J.dtype))
        out = {}
        for n, g in zip(names, grads):
            dF = torch.zeros(G, B, base[n].shape[1], dtype=F.dtype, device=F.device) if g is None else g
            dF = dF.permute(1, 0, 2)  # (B, G, n): dF_i / d theta_j
            S, info = torch.linalg.solve_ex(J, dF)  # a singular row (an unconverged one) is NaN, not an error
            S = -S
            S[torch.as_tensor(~ss.converged, device=S.device) | (info != 0)] = float("nan")
            out[n] = S
    return out

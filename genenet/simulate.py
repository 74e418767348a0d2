"""simulate(): the one entry that ties a model, initial states and a solver together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .batch import build_batch
from .distributed import on_cluster, uses_cluster
from .models.base import Model
from .rows import concat_rows
from .solvers import AutoSwitch, SolverError, get_method, integrate_auto
from .solvers.integrate import Solution, implicit_chunk, integrate_in_chunks, native_may_run, tree_index
from .solvers.segments import MAX_PIECES, integrate_in_pieces, switching_times
from .solvers.status import Status, describe_failures
from .trajectory import Trajectory
from .validation import check_positive, check_times, check_tolerance, resolve_device, resolve_dtype

__all__ = ["simulate", "setup_run", "Run"]


def simulate(
    model: Model,
    t: Any,
    x0: Any = None,
    perturbations: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    method: str = "dopri5",
    rtol: Any = 1e-6,
    atol: Any = 1e-8,
    dt: float | None = None,
    first_step: float | None = None,
    max_steps: int = 10_000,
    steady_tol: float | None = None,
    throw: bool = True,
    device: str | torch.device = "auto",
    dtype: Any = None,
    progress: bool = False,
    rows: Any = None,
    cluster: Any = None,
    chunk_size: int | None = None,
) -> Trajectory:
    r"""Integrate ``dx/dt = production(t, x) - degradation(t, x)`` for every row at once.

    Rows are conditions x the model's P parameter sets (B = C * P), or, for one
    condition and one parameter set, the rows of ``x0``. All rows advance in one
    batched solve, each with its own adaptive step size; pulses' switching times
    are landed on exactly.

    **Main arguments**

    model : Model
        e.g. :class:`genenet.Hill`, or ``Model.from_functions(...)``.
    t : array (T,)
        Strictly increasing save times; ``t[0]`` is the initial time.
    x0 : scalar, (G,), {gene: value}, (P, G) or (B, G), optional
        Initial states; default all zeros. A dict sets the named genes (others 0).
        Knocked-out genes start at 0, clamped genes at their value.
    perturbations : conditions to run, e.g. ``gn.Knockout("A")``, ``[gn.Knockout("A"),
        [gn.Knockout("A"), gn.Knockout("B")]]``, ``gn.knockout_screen(net)`` or a dict
        ``{label: perturbations}`` (see :func:`genenet.perturb.as_conditions`). Rows are
        conditions x parameter sets, ``B = C * P``, condition-major.

    **Other arguments** (keyword-only)

    params : dict name -> value, optional
        Overrides of model parameters for this call (scalar, per gene/edge, or (P, n)).
    method : ``"dopri5"`` (default), ``"tsit5"`` (adaptive 5(4) pairs with 4th-order
        dense output), ``"rodas5"`` / ``"rodas4"`` (stiff: adaptive L-stable Rosenbrock
        methods, Rodas5P and Rodas4, with the model's analytic Jacobian where it has one),
        ``"auto"`` (every row starts with dopri5; a row detected stiff continues with rodas5;
        ``traj.stats["switched"]`` says which), ``"bdf"`` (stiff: variable-order BDF, orders
        1-5, in the native CPU kernel only, its results without gradients; see
        :mod:`genenet.solvers.bdf`), ``"rk4"`` or ``"euler"`` (fixed step ``dt``, landing on
        save times).
    rtol, atol : scalar or per gene (G,)
        Error control per row: a step is accepted when
        ``rms(err / (atol + rtol * max(|x|, |x_new|))) <= 1``.
    dt : step for the fixed-step methods (default ``(t[-1] - t[0]) / 1000``).
    first_step : initial step of the adaptive methods (default: Hairer's estimate per row).
    max_steps : per row, accepted plus rejected.
    steady_tol : stop each row early once ``max|dx/dt| <= steady_tol * (1 + max|x|)`` (and no
        pulse switching time lies ahead); its remaining save times hold that steady state.
    throw : raise :class:`SolverError` if any row fails (default); with ``False`` the
        failed rows are returned with their ``status`` (and NaN after the failure).
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    dtype : default float64 on CPU, float32 on CUDA.
    progress : show a tqdm bar over simulated time (over finished chunks with ``cluster``).
    rows : only these rows of the batch (indices, a boolean mask or a slice), labelled as in the
        whole batch, e.g. ``rows=traj.failed`` to run a screen's failed rows again with another method.
    cluster : solve the rows in chunks on Dask workers: ``"local"`` (a cluster of this
        machine's cores for the call), a scheduler address or a ``distributed.Client`` (see
        :mod:`genenet.distributed`; needs ``pip install 'genenet[dask]'``). The result equals
        the in-process one row for row, but carries no autograd graph.
    chunk_size : rows per task with ``cluster`` (default: about four tasks per worker thread).

    **Returns**

    :class:`Trajectory` with ``y`` of shape (B, T, G), differentiable with respect
    to the model's parameters (``model.raw``), ``params`` tensors and ``x0`` by
    backpropagation through the solver steps.

    **Raises**

    ValueError / TypeError / KeyError
        Bad times, states, tolerances, shapes or names (the message names the culprit).
    SolverError
        ``throw=True`` and a row failed; the message lists rows, reasons and fixes.
    """
    if uses_cluster(cluster):
        kwargs = dict(model=model, t=t, x0=x0, perturbations=perturbations, params=params, method=method, rtol=rtol,
                      atol=atol, dt=dt, first_step=first_step, max_steps=max_steps, steady_tol=steady_tol,
                      throw=False, device=device, dtype=dtype)
        traj = concat_rows(on_cluster(simulate, kwargs, rows=rows, cluster=cluster,
                                      chunk_size=chunk_size, progress=progress, desc="simulate"),
                           shared=("t", "genes", "method", "species", "volumes"))
        if throw:
            raise_failures(traj.status, traj.labels)
        return traj
    run = setup_run(model, t, method=method, rtol=rtol, atol=atol, dt=dt, first_step=first_step,
                    max_steps=max_steps, device=device, dtype=dtype)
    batch = build_batch(model, perturbations, x0, params, device=run.device, dtype=run.dtype, rows=rows)
    term = batch.term
    sol = run.integrate(term.vf, batch.x0, term, batch.stops, steady_tol=steady_tol, progress=progress)
    return run.trajectory(model, batch, sol, sol.y, throw=throw)


@dataclass(frozen=True)
class Run:
    """Validated solver settings of one call, shared by :func:`simulate` and the sensitivity solve."""

    solver: Any
    device: torch.device
    dtype: torch.dtype
    t_save: Tensor
    rtol: Tensor
    atol: Tensor
    dt: float | None
    first_step: float | None
    max_steps: int

    def integrate(self, f: Any, y0: Tensor, term: Any, stops: Tensor | None, *, steady_tol: float | None = None,
                  progress: bool = False, n_primal: int | None = None) -> Any:
        """One batched solve of ``f`` from ``y0`` with the term's segment/reset hooks, with a tqdm bar."""
        t_save = self.t_save
        if y0.shape[1] == 0:  # a model without states (only observables of time): nothing to integrate
            B, zeros = y0.shape[0], torch.zeros(y0.shape[0], dtype=torch.long, device=y0.device)
            return Solution(y=y0.new_zeros(B, len(t_save), 0), status=zeros + int(Status.SUCCESS), n_steps=zeros,
                            n_accepted=zeros, n_rejected=zeros, n_rhs=zeros)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=float(t_save[-1] - t_save[0]), desc="simulate", unit="t", leave=False)

        def report(t_now: float) -> None:
            bar.update(t_now - float(t_save[0]) - bar.n)

        # implicit methods: the model's Jacobian for its own vector field, else autodiff of f
        own = getattr(f, "__func__", None) is type(term).vf
        kw = dict(args=term.initial_args, rtol=self.rtol, atol=self.atol, first_step=self.first_step,
                  max_steps=self.max_steps, stops=stops, segment=term.segment, reset=term.reset,
                  steady_tol=steady_tol, progress=report if bar else None, n_primal=n_primal,
                  jac=getattr(term, "jacobian", None) if own else None,
                  tgrad=getattr(term, "time_derivative", None) if own else None,
                  native=getattr(term, "native_spec", None) if own else None)
        times = switching_times(stops, t_save) if getattr(term, "segment", None) else t_save.new_zeros(0)
        if 0 < times.numel() <= MAX_PIECES and self._native_for(term, kw["native"], y0, t_save):
            # pulses on the native kernels: one solve per regime, chained (genenet.solvers.segments)
            B = y0.shape[0]

            def piece(y_start: Tensor, t_piece: Tensor, rows: Tensor) -> Any:
                args = kw["args"] if rows.numel() == B else tree_index(kw["args"], rows)
                return self._solve(f, y_start, t_piece, {**kw, "args": args, "stops": None, "progress": None})

            sol = integrate_in_pieces(piece, y0, t_save, times)
        else:
            sol = self._solve(f, y0, t_save, kw)
        if bar is not None:
            bar.update(bar.total - bar.n)
            bar.close()
        return sol

    def _solve(self, f: Any, y0: Tensor, t_save: Tensor, kw: dict) -> Any:
        if isinstance(self.solver, AutoSwitch):
            return integrate_auto(self.solver, f, y0, t_save, **kw)
        chunk = implicit_chunk(self.solver, y0.shape[0], y0.shape[1], y0.device)
        return integrate_in_chunks(f, y0, t_save, chunk=chunk, method=self.solver, dt=self.dt, **kw)

    def _native_for(self, term: Any, native: Any, y0: Tensor, t_save: Tensor) -> bool:
        """Whether the solve's pieces would run on a native kernel (else the loop, which follows each
        row's switching times itself, is the better choice): the kernels' own test, then the spec."""
        if native is None:
            return False
        args = term.segment(t_save[0].expand(y0.shape[0]), term.initial_args)
        method = self.solver.explicit if isinstance(self.solver, AutoSwitch) else self.solver
        return native_may_run(method, y0, args, self.rtol, self.atol) and native(args) is not None

    def trajectory(self, model: Model, batch: Any, sol: Any, y: Tensor, *, throw: bool) -> Trajectory:
        """Label a solution as a :class:`Trajectory`; raise :class:`SolverError` on failures if ``throw``."""
        status = sol.status.cpu().numpy()
        traj = Trajectory(
            t=self.t_save, y=y, genes=list(model.genes), labels=batch.labels, conditions=batch.conditions,
            parameter_sets=batch.parameter_sets, status=status,
            stats={"n_steps": sol.n_steps.cpu().numpy(), "n_accepted": sol.n_accepted.cpu().numpy(),
                   "n_rejected": sol.n_rejected.cpu().numpy(), "n_rhs": sol.n_rhs.cpu().numpy(),
                   **({"switched": sol.switched.cpu().numpy()} if sol.switched is not None else {})},
            method=self.solver.name, species=getattr(model, "species", None),
            observables=observed(model, batch.term, self.t_save, y), volumes=dict(getattr(model, "volumes", {})),
        )
        if throw:
            raise_failures(status, batch.labels)
        return traj


def observed(model: Model, term: Any, t_save: Tensor, y: Tensor, args: dict | None = None) -> dict[str, Tensor]:
    """The model's :meth:`~genenet.Model.observe` quantities along ``y`` (B, T, G), name -> (B, T),
    each row with its parameters at each save time (a pulsed ``SetParameter`` where it is on);
    ``args`` the rows' term arguments (default ``term.initial_args``). Evaluated over blocks of save
    times, so the parameters repeated per time stay small."""
    if type(model).observe is Model.observe or not getattr(model, "observables", True):
        return {}
    B, T, G = y.shape
    t = t_save.to(device=y.device, dtype=y.dtype)

    def rows(p: dict, n: int) -> dict:  # each row's parameters repeated for n times (row-major)
        return {k: v.expand(B, *v.shape[1:]).repeat_interleave(n, dim=0) if isinstance(v, Tensor) else v
                for k, v in p.items()}

    args = term.initial_args if args is None else args
    width = sum(v[0].numel() for v in args["base_p"].values() if isinstance(v, Tensor)) + G
    step = 1 if term.param_layers else max(1, min(T, 4_000_000 // max(1, B * width)))
    p0 = None if term.param_layers else term.segment(t[:1].expand(B), args)["p"]
    parts: list[dict[str, Tensor]] = []
    for a in range(0, T, step):
        n = min(T, a + step) - a
        p = p0 if p0 is not None else term.segment(t[a:a + 1].expand(B), args)["p"]
        got = model.observe(t[a:a + n].repeat(B), y[:, a:a + n].reshape(B * n, G), rows(p, n))
        parts.append({k: v.reshape(B, n) for k, v in got.items()})
    return {k: torch.cat([q[k] for q in parts], dim=1) for k in parts[0]} if parts else {}


def raise_failures(status: np.ndarray, labels: list[str]) -> None:
    """:class:`SolverError` listing the failed rows, reasons and fixes, if any row failed."""
    failed = int((status != 0).sum())
    if failed:
        raise SolverError(f"{failed} of {len(status)} rows failed (simulate(..., throw=False) returns them):\n"
                          + describe_failures(status, labels), status=status)


def setup_run(model: Model, t: Any, *, method: str, rtol: Any, atol: Any, dt: float | None,
              first_step: float | None, max_steps: int, device: Any, dtype: Any) -> Run:
    """Check the solver arguments of :func:`simulate` (see there) and resolve device and dtype."""
    solver = get_method(method)
    check_positive(max_steps, "max_steps", integer=True)
    dev = resolve_device(device)
    dtp = resolve_dtype(dtype, dev)
    t_save = check_times(t, device=dev, dtype=dtp)
    if not isinstance(model, Model):
        raise TypeError(f"model must be a genenet Model (e.g. gn.Hill), got {type(model).__name__}")
    rtol_t = check_tolerance(rtol, "rtol", model.genes, device=dev, dtype=dtp)
    atol_t = check_tolerance(atol, "atol", model.genes, device=dev, dtype=dtp)
    if ((rtol_t + atol_t) <= 0).any():
        raise ValueError("rtol + atol must be > 0 for every gene")
    if not solver.adaptive:
        dt = float((t_save[-1] - t_save[0]) / 1000) if dt is None else dt
        if len(t_save) > 1:
            check_positive(dt, "dt")
    if first_step is not None:
        check_positive(first_step, "first_step")
    return Run(solver, dev, dtp, t_save, rtol_t, atol_t, dt, first_step, int(max_steps))

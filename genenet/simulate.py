"""simulate(): the one entry that ties a model, initial states and a solver together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .models.base import Model
from .solvers import SolverError, get_method, integrate
from .solvers.status import describe_failures
from .trajectory import Trajectory
from .validation import (
    check_positive,
    check_state,
    check_times,
    check_tolerance,
    per_gene,
    resolve_device,
    resolve_dtype,
)

__all__ = ["simulate"]

WILD_TYPE = "wild type"


def _initial_states(model: Model, x0: Any, n_sets: int, *, device: torch.device,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``x0`` (B, G) and each row's parameter-set index (B,) (``None``: row i uses set i or 0)."""
    if x0 is None:
        return model.default_x0(n_sets, device=device, dtype=dtype), None
    x = per_gene(x0, "x0", model.genes, device=device, dtype=dtype, rows=n_sets)
    check_state(x, model.genes)
    if x.ndim == 1:
        return x.expand(n_sets, -1), None
    n = x.shape[0]
    if n == n_sets:
        return x, None
    if n_sets == 1:
        return x, torch.zeros(n, dtype=torch.long, device=device)
    raise ValueError(f"x0 has {n} rows but the model has {n_sets} parameter sets; "
                     f"give x0 as ({model.n_genes},), (1, G) or ({n_sets}, {model.n_genes})")


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
    throw: bool = True,
    device: str | torch.device = "auto",
    dtype: Any = None,
    progress: bool = False,
) -> Trajectory:
    r"""Integrate ``dx/dt = production(t, x) - degradation(t, x)`` for every row at once.

    Rows are the model's P parameter sets (B = P), or, for a single parameter set,
    the rows of ``x0`` (B = number of initial states). All rows advance in one
    batched solve, each with its own adaptive step size.

    **Main arguments**

    model : Model
        e.g. :class:`genenet.Hill`, or ``Model.from_functions(...)``.
    t : array (T,)
        Strictly increasing save times; ``t[0]`` is the initial time.
    x0 : scalar, (G,), {gene: value}, or (B, G), optional
        Initial states; default all zeros. A dict sets the named genes (others 0).
    perturbations : reserved for knockouts/knockdowns/... (the perturbation issue);
        must be ``None`` for now.

    **Other arguments** (keyword-only)

    params : dict name -> value, optional
        Overrides of model parameters for this call (scalar, per gene/edge, or (P, n)).
    method : ``"dopri5"`` (default), ``"tsit5"`` (adaptive 5(4) pairs with 4th-order
        dense output), ``"rk4"`` or ``"euler"`` (fixed step ``dt``, landing on save times).
    rtol, atol : scalar or per gene (G,)
        Error control per row: a step is accepted when
        ``rms(err / (atol + rtol * max(|x|, |x_new|))) <= 1``.
    dt : step for the fixed-step methods (default ``(t[-1] - t[0]) / 1000``).
    first_step : initial step of the adaptive methods (default: Hairer's estimate per row).
    max_steps : per row, accepted plus rejected.
    throw : raise :class:`SolverError` if any row fails (default); with ``False`` the
        failed rows are returned with their ``status`` (and NaN after the failure).
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``...
    dtype : default float64 on CPU, float32 on CUDA.
    progress : show a tqdm bar over simulated time.

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
    if not isinstance(model, Model):
        raise TypeError(f"model must be a genenet Model (e.g. gn.Hill), got {type(model).__name__}")
    if perturbations is not None:
        raise NotImplementedError("perturbations are not available yet; pass perturbations=None")
    solver = get_method(method)
    check_positive(max_steps, "max_steps", integer=True)
    dev = resolve_device(device)
    dtp = resolve_dtype(dtype, dev)
    t_save = check_times(t, device=dev, dtype=dtp)
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

    n_sets = model.n_sets
    if params:
        sizes = [np.shape(v)[0] for v in params.values() if np.ndim(v) == 2]
        n_sets = max([n_sets, *sizes])
    x, index = _initial_states(model, x0, n_sets, device=dev, dtype=dtp)
    B = x.shape[0]
    p = model.row_params(index, B, device=dev, dtype=dtp, overrides=params)
    for name, v in p.items():
        if not torch.isfinite(v.detach()).all():
            raise ValueError(f"parameter {name!r} is not finite")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        span = float(t_save[-1] - t_save[0])
        bar = tqdm(total=span, desc="simulate", unit="t", leave=False)

    def report(t_now: float) -> None:
        bar.update(t_now - float(t_save[0]) - bar.n)

    sol = integrate(model.rhs, x, t_save, method=solver, args=model.prepare(p), rtol=rtol_t, atol=atol_t, dt=dt,
                    first_step=first_step, max_steps=int(max_steps), progress=report if bar else None)
    if bar is not None:
        bar.update(bar.total - bar.n)
        bar.close()

    sets = (index.cpu().numpy() if index is not None else
            (np.arange(B) if n_sets > 1 else np.zeros(B, dtype=np.int64)))
    labels = [WILD_TYPE] if B == 1 else [f"{WILD_TYPE} #{i}" for i in range(B)]
    status = sol.status.cpu().numpy()
    traj = Trajectory(
        t=t_save, y=sol.y, genes=list(model.genes), labels=labels, conditions=[WILD_TYPE] * B,
        parameter_sets=sets, status=status,
        stats={"n_steps": sol.n_steps.cpu().numpy(), "n_accepted": sol.n_accepted.cpu().numpy(),
               "n_rejected": sol.n_rejected.cpu().numpy(), "n_rhs": sol.n_rhs.cpu().numpy()},
        method=solver.name,
    )
    if throw and not traj.success:
        raise SolverError(f"{len(traj.failed)} of {B} rows failed (simulate(..., throw=False) returns them):\n"
                          + describe_failures(status, labels), status=status)
    return traj

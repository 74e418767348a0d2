"""Forward sensitivities: derivatives of whole trajectories with respect to parameters and x0.

For ``dx/dt = f(t, x, θ)`` the sensitivity ``S_j = ∂x/∂θ_j`` obeys

    dS_j/dt = ∂f/∂x S_j + ∂f/∂θ_j,        S_j(t0) = ∂x0/∂θ_j

The q sensitivities ride along with the state as q extra copies of it, (B, G) ->
(B, (1 + q) G), through the *same* Runge-Kutta steps: step sizes and the error
control see only the state (``integrate(..., n_primal=G)``), so what comes out is
the exact derivative of the computed solution (discrete forward sensitivities,
the forward-mode twin of backpropagating through the solver), not an
approximation with its own error. Dense output is linear in the stages, so saved
values are exact derivatives too. The right-hand side of the tangents is the
model's ``production_jvp`` / ``degradation_jvp`` (closed form for :class:`Hill`,
``torch.func.jvp`` otherwise), under the condition's effects.

For n parameters and M outputs this costs one solve of (1 + n) G columns, where
reverse mode needs M backward passes: the method of choice for residual
Jacobians (M >> n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .batch import build_batch
from .models.base import Model
from .perturb import ConditionTerm
from .simulate import setup_run
from .trajectory import Trajectory

__all__ = ["Sensitivities", "sensitivities", "solve_with_tangents"]


class TangentTerm:
    """The augmented system ``[x, ẋ_1, ..., ẋ_q]`` flattened to (B, (1 + q) G)."""

    def __init__(self, term: ConditionTerm, n_genes: int, n_tangents: int, p_dot: dict[str, Tensor]) -> None:
        self.term, self.G, self.q = term, n_genes, n_tangents
        self.segment = term.segment
        self.initial_args = {**term.initial_args, "base_p_dot": p_dot}  # segment derives "p_dot" from it

    def split(self, Y: Tensor) -> tuple[Tensor, Tensor]:
        return Y[:, : self.G], Y[:, self.G:].view(Y.shape[0], self.q, self.G)

    def vf(self, t: Tensor, Y: Tensor, args: dict) -> Tensor:
        x, x_dot = self.split(Y)
        f, f_dot = self.term.vf_jvp(t, x, x_dot, args)
        return torch.cat([f, f_dot.reshape(Y.shape[0], -1)], dim=1)

    def reset(self, t: Tensor, Y: Tensor, args: dict) -> Tensor:
        x, x_dot = self.split(Y)
        x, x_dot = self.term.reset_jvp(t, x, x_dot, args)
        return torch.cat([x, x_dot.reshape(Y.shape[0], -1)], dim=1)

    def native_spec(self, args: dict) -> dict | None:
        """The condition's native-kernel spec plus the tangents of its parameter arrays
        (``spec["tangents"]``, see :func:`genenet.native.integrate_hill_erk`); None without a kernel."""
        spec = self.term.native_spec(args)
        if spec is None:
            return None
        return {**spec, "tangents": _native_spec_tangents(self.term.model, args["p"], args.get("p_dot", {}))}


def _native_spec_tangents(model: Model, p: dict[str, Tensor], p_dot: dict[str, Tensor]) -> dict[str, Tensor]:
    """Directional derivatives (B, q, width) of the model's native spec arrays along ``p_dot``
    ({name: (B, q, size)}), by forward-mode AD of ``model.native_spec`` (one vmapped JVP per solve).
    Spec arrays that do not depend on the free parameters are left out (constant)."""
    from .native import spec_keys

    names = [n for n in p_dot if n in p]
    if not names:
        return {}
    B, q = next(iter(p_dot.values())).shape[:2]
    raw = {k: v for k, v in p.items() if not k.startswith("_")}  # let the spec re-derive the prepared arrays
    primals = tuple(raw[n].expand(B, -1) for n in names)
    base = model.native_spec(raw)
    keys = [k for k in spec_keys(base) if base.get(k) is not None]

    def spec_of(*values: Tensor) -> tuple[Tensor, ...]:
        spec = model.native_spec({**raw, **dict(zip(names, values))})
        return tuple(spec[k].expand(B, -1) for k in keys)

    def along(*tangents: Tensor) -> tuple[Tensor, ...]:
        return torch.func.jvp(spec_of, primals, tangents)[1]

    # out_dims=0: an output that does not depend on the inputs comes back expanded along q
    dots = torch.func.vmap(along, in_dims=1, out_dims=0)(*(p_dot[n] for n in names))
    return {k: d.movedim(0, 1) for k, d in zip(keys, dots) if bool(d.any())}


def solve_with_tangents(model: Model, t: Any, x0: Any, perturbations: Any, *, params: Mapping[str, Any] | None,
                        x0_dot: Tensor | None, params_dot: Mapping[str, Tensor], method: str = "dopri5",
                        rtol: Any = 1e-6, atol: Any = 1e-8, max_steps: int = 10_000, first_step: float | None = None,
                        throw: bool = True, device: Any = "auto", dtype: Any = None,
                        progress: bool = False) -> tuple[Trajectory, Tensor]:
    """Simulate like :func:`genenet.simulate` and carry q given tangent directions along.

    ``x0_dot`` (B, q, G) per row, (P, q, G) per parameter set or None (x0 fixed);
    ``params_dot`` ``{name: (P, q, size)}`` tangents of constrained parameter values per
    parameter set (P = the sets after ``params`` overrides; 1 = shared). Returns the
    trajectory and the tangents of ``y``, (B, T, q, G); rows as in ``simulate``.
    Tangents of genes whose initial state the condition fixes (knockouts, clamps) start at 0.
    Runs without an autograd graph: the tangents are the derivatives.
    """
    with torch.no_grad():
        return _solve_with_tangents(model, t, x0, perturbations, params, x0_dot, params_dot, method, rtol, atol,
                                    max_steps, first_step, throw, device, dtype, progress)


def _solve_with_tangents(model: Model, t: Any, x0: Any, perturbations: Any, params: Mapping[str, Any] | None,
                         x0_dot: Tensor | None, params_dot: Mapping[str, Tensor], method: str, rtol: Any, atol: Any,
                         max_steps: int, first_step: float | None, throw: bool, device: Any, dtype: Any,
                         progress: bool) -> tuple[Trajectory, Tensor]:
    run = setup_run(model, t, method=method, rtol=rtol, atol=atol, dt=None, first_step=first_step,
                    max_steps=max_steps, device=device, dtype=dtype)
    if not run.solver.adaptive:
        raise ValueError(f"sensitivities need an adaptive method (dopri5, tsit5), not {method!r}")
    batch = build_batch(model, perturbations, x0, params, device=run.device, dtype=run.dtype)
    B, G = batch.x0.shape
    sets = torch.as_tensor(batch.parameter_sets, device=run.device)
    dims = [v.shape[1] for v in params_dot.values()] + ([x0_dot.shape[1]] if x0_dot is not None else [])
    if not dims or len(set(dims)) != 1:
        raise ValueError(f"tangents must all have the same number q of directions, got {dims}")
    q = dims[0]

    def per_row(v: Tensor, name: str, width: int) -> Tensor:
        v = torch.as_tensor(v, device=run.device, dtype=run.dtype)
        if v.ndim != 3 or v.shape[1] != q or v.shape[2] != width:
            raise ValueError(f"tangent of {name!r} must have shape (sets or rows, {q}, {width}), got {tuple(v.shape)}")
        if v.shape[0] == B:
            return v
        if v.shape[0] == 1:
            return v.expand(B, q, width)
        if v.shape[0] == batch.n_sets:
            return v.index_select(0, sets)
        raise ValueError(f"tangent of {name!r} has {v.shape[0]} rows; allowed: 1, {batch.n_sets} (parameter sets)"
                         f" or {B} (rows)")

    term = batch.term
    base = term.initial_args["base_p"]
    p_dot = {}
    for name, v in params_dot.items():
        if name not in base:
            raise KeyError(f"no parameter {name!r}; the model has {sorted(base)}")
        p_dot[name] = per_row(v, name, base[name].shape[1])
    xd = torch.zeros(B, q, G, device=run.device, dtype=run.dtype) if x0_dot is None else per_row(x0_dot, "x0", G)
    xd = torch.where(batch.x0_fixed[:, None, :], 0.0, xd)
    tangent_term = TangentTerm(term, G, q, p_dot)
    Y0 = torch.cat([batch.x0, xd.reshape(B, q * G)], dim=1)
    sol = run.integrate(tangent_term.vf, Y0, tangent_term, batch.stops, progress=progress, n_primal=G)
    T = sol.y.shape[1]
    traj = run.trajectory(model, batch, sol, sol.y[..., :G], throw=throw)
    return traj, sol.y[..., G:].reshape(B, T, q, G)


@dataclass(frozen=True)
class Sensitivities:
    """Trajectories and their derivatives with respect to named parameters.

    Attributes
    ----------
    trajectory : Trajectory (B rows, T times, G genes)
    dy : Tensor (B, T, q, G), ``dy[b, k, j, i] = ∂x_i(t_k) / ∂θ_j`` for row b
    wrt : list of (parameter name, entry label), q entries; ``("x0", gene)`` for initial states
    values : Tensor (q,) or (P, q), the parameter values θ_j (for normalised sensitivities; NaN for x0)
    """

    trajectory: Trajectory
    dy: Tensor
    wrt: list[tuple[str, str]]
    values: Tensor

    def normalized(self) -> Tensor:
        """Relative sensitivities ``∂ log x_i / ∂ log θ_j = θ_j / x_i ∂x_i/∂θ_j``, (B, T, q, G) (NaN at x = 0)."""
        theta = self.values if self.values.ndim == 1 else self.values[self.trajectory.parameter_sets]
        theta = theta.view(*([1] * (2 - theta.ndim)), *theta.shape)  # (B or 1, q)
        x = self.trajectory.y[:, :, None, :]
        ratio = theta[:, None, :, None] / torch.where(x != 0, x, torch.full_like(x, float("nan")))
        return self.dy * ratio

    def to_frame(self, normalized: bool = False) -> pd.DataFrame:
        """Long table ``row, condition, time, gene, parameter, entry, sensitivity``."""
        d = (self.normalized() if normalized else self.dy).detach().cpu().numpy()
        B, T, q, G = d.shape
        traj = self.trajectory
        idx = np.indices((B, T, q, G)).reshape(4, -1)
        return pd.DataFrame({
            "row": idx[0], "condition": np.asarray(traj.conditions, dtype=object)[idx[0]],
            "time": traj.t.detach().cpu().numpy()[idx[1]],
            "gene": np.asarray(traj.genes, dtype=object)[idx[3]],
            "parameter": np.asarray([w[0] for w in self.wrt], dtype=object)[idx[2]],
            "entry": np.asarray([w[1] for w in self.wrt], dtype=object)[idx[2]],
            "sensitivity": d.reshape(-1)})


def sensitivities(model: Model, t: Any, x0: Any = None, perturbations: Any = None, *,
                  wrt: Sequence[str] = ("production",), params: Mapping[str, Any] | None = None,
                  method: str = "dopri5", rtol: Any = 1e-6, atol: Any = 1e-8, max_steps: int = 10_000,
                  throw: bool = True, device: Any = "auto", dtype: Any = None,
                  progress: bool = False) -> Sensitivities:
    r"""Forward sensitivities ``∂x(t)/∂θ`` of every row's trajectory, in one augmented solve.

    **Arguments** as :func:`genenet.simulate`, plus

    wrt : parameter names (every entry of each, in the model's order; derivatives with
        respect to the constrained value, e.g. the production rate itself, not its log),
        and ``"x0"`` for the initial states (G more directions).

    **Returns** :class:`Sensitivities` with ``dy`` (B, T, q, G), q = the total number of
    entries; ``dy`` is the exact derivative of the computed trajectory (see the module
    docstring), which agrees with finite differences to the solver tolerance.

    Cost: one solve with (1 + q) G columns and the steps of the plain solve.
    """
    if isinstance(wrt, str):
        wrt = [wrt]
    run_dev = setup_run(model, t, method=method, rtol=rtol, atol=atol, dt=None, first_step=None,
                        max_steps=max_steps, device=device, dtype=dtype)
    dev, dtp = run_dev.device, run_dev.dtype
    params = dict(params or {})
    names = [w for w in wrt if w != "x0"]
    for name in names:
        model._spec(name)  # names the culprit if unknown
    values = {}
    for name in names:
        v = model.params[name].detach() if name not in params else torch.as_tensor(np.asarray(params[name],
                                                                                             dtype=np.float64))
        v = v.to(dev, dtp)
        values[name] = v.reshape(1, -1) if v.ndim < 2 else v
        if values[name].shape[1] == 1 and model.specs[name].size > 1:
            values[name] = values[name].expand(-1, model.specs[name].size)
    sizes = [model.specs[name].size for name in names]
    G = model.n_genes
    q = sum(sizes) + (G if "x0" in wrt else 0)
    if q == 0:
        raise ValueError("wrt names no parameter entries")
    params_dot, k = {}, 0
    for name, size in zip(names, sizes):
        v = torch.zeros(1, q, size, device=dev, dtype=dtp)
        v[0, k + torch.arange(size), torch.arange(size)] = 1.0
        params_dot[name] = v
        k += size
    x0_dot = None
    if "x0" in wrt:
        x0_dot = torch.zeros(1, q, G, device=dev, dtype=dtp)
        x0_dot[0, k + torch.arange(G), torch.arange(G)] = 1.0
    traj, dy = solve_with_tangents(model, t, x0, perturbations, params=params, x0_dot=x0_dot,
                                   params_dot=params_dot, method=method, rtol=rtol, atol=atol,
                                   max_steps=max_steps, throw=throw, device=dev, dtype=dtp, progress=progress)
    labels = [(name, label) for name in names for label in model.labels(name)]
    if "x0" in wrt:
        labels += [("x0", g) for g in model.genes]
    P = max((v.shape[0] for v in values.values()), default=1)
    parts = [v.expand(P, -1) for v in values.values()]
    if "x0" in wrt:
        parts.append(torch.full((P, G), float("nan"), device=dev, dtype=dtp))  # x0 differs per row
    vals = torch.cat(parts, dim=1)
    return Sensitivities(traj, dy, labels, vals[0] if P == 1 else vals)

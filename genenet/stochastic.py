r"""Single-cell noise: the chemical Langevin equation (CLE) of a model, for many cells at once.

From the model's production/degradation split (with the conditions' effects), per gene::

    dx = (P(x) - D(x)) dt + noise * sqrt(P(x) + D(x)) dW

A reaction network (a model with ``loss_channels``: :class:`genenet.ReactionNetwork`) has one
stream per reaction along its stoichiometry, ``N diag(sqrt(v)) dW`` (synthesis per species, with
variance ``Σ_r N_ir² v_r`` over its synthesis reactions; every other reaction r as
``N[:, r] sqrt(v_r) dW_r``): binding A + B -> AB moves A, B and AB by the same event, so the noise
keeps conserved totals and the variance of a dimerisation counts two molecules per event, which a
per-species ``sqrt(P + D)`` gets wrong. With compartments (SBML species as concentrations in a
volume V, rates in amount per time) N is the effective ``N / V``: one event moves a concentration
by ``1 / V``, so a birth-death species has variance ``mean / V`` in concentration (one amount unit
per event: for amounts in moles, scale ``noise`` by ``1 / sqrt(N_A)``).

(Gillespie 2000): birth and death events as independent Poisson streams, each
approximated by a Gaussian, so for one gene with constant production ``g`` and
degradation ``k x`` the stationary mean and variance are both ``g/k``. ``noise``
scales the intrinsic noise (0 gives the deterministic ODE, Euler-integrated).

Methods (fixed step ``dt``):

- ``"euler-maruyama"``: ``x += f dt + g ΔW`` (strong order 1/2, weak order 1);
- ``"milstein"``: adds ``½ g_i ∂g_i/∂x_i (ΔW_i² - dt)``, with the diagonal derivatives from
  the model's Jacobians. Strong order 1 where each gene's noise depends on its own level
  only (unregulated or self-regulated genes); for regulated genes the omitted cross terms
  (which need Lévy areas) leave strong order 1/2. Weak order 1 either way.

Non-negativity: after each step, ``x -> |x|`` (reflection at 0, the default) or
``x -> max(x, 0)`` (``boundary="truncate"``); the CLE can step below zero when levels are a
few molecules. Clamped genes stay at their value, knocked-out genes at 0.

Rows are conditions x parameter sets x cells, all one batch on the device; the random
stream comes from one ``torch.Generator`` seeded with ``seed``, so results reproduce
bit for bit on the same device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .batch import build_batch
from .models.base import Model
from .simulate import observed
from .solvers.integrate import tree_index
from .solvers.jacobian import autodiff_jacobian
from .trajectory import Trajectory
from .validation import check_positive, check_times, resolve_device, resolve_dtype

__all__ = ["simulate_stochastic", "STOCHASTIC_METHODS"]

STOCHASTIC_METHODS = ("euler-maruyama", "milstein")


def simulate_stochastic(
    model: Model,
    t: Any,
    n_cells: int = 1000,
    perturbations: Any = None,
    noise: float = 1.0,
    method: str = "euler-maruyama",
    dt: float | None = None,
    seed: int = 0,
    *,
    x0: Any = None,
    params: Mapping[str, Any] | None = None,
    boundary: str = "reflect",
    device: str | torch.device = "auto",
    dtype: Any = None,
    progress: bool = False,
) -> Trajectory:
    r"""Simulate ``n_cells`` cells per condition and parameter set with the chemical Langevin equation.

    Parameters
    ----------
    model : Model with a production/degradation split (``gn.Hill``, ``gn.Sigmoid``, ``gn.TwoStage``...).
    t : (T,) increasing save times; ``t[0]`` is the initial time. Steps land on every save time.
    n_cells : cells per condition and parameter set.
    perturbations : as in :func:`genenet.simulate`.
    noise : intrinsic-noise scale (1 = the CLE; 0 = deterministic).
    method : ``"euler-maruyama"`` or ``"milstein"`` (see the module doc for orders).
    dt : step (default ``(t[-1] - t[0]) / 2000``, shortened to land on save times).
    seed : seed of the generator (same seed, device and dtype -> identical result).
    x0, params : as in :func:`genenet.simulate`; every cell of a row starts at its ``x0``.
    boundary : ``"reflect"`` (``x -> |x|``) or ``"truncate"`` (``x -> max(x, 0)``).

    Returns
    -------
    :class:`Trajectory` with ``y`` (B * n_cells, T, G), rows ordered condition, parameter set,
    then cell; ``traj.cells`` gives each row's cell index and ``traj.snapshot(time)`` a
    cells x genes table. Raises ``ValueError`` on bad arguments and ``FloatingPointError``
    naming the rows if a state becomes non-finite.
    """
    if method not in STOCHASTIC_METHODS:
        raise ValueError(f"unknown stochastic method {method!r}; allowed: {list(STOCHASTIC_METHODS)}")
    if boundary not in ("reflect", "truncate"):
        raise ValueError(f"boundary must be 'reflect' or 'truncate', got {boundary!r}")
    check_positive(n_cells, "n_cells", integer=True)
    if not (isinstance(noise, (int, float)) and np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not isinstance(model, Model):
        raise TypeError(f"model must be a genenet Model (e.g. gn.Hill), got {type(model).__name__}")
    if method == "milstein" and hasattr(model, "loss_channels") and noise:
        raise ValueError("method='milstein' needs diagonal noise (one stream per species); a reaction network's "
                         "streams act along its reactions: use method='euler-maruyama'")
    dev = resolve_device(device)
    dtp = resolve_dtype(dtype, dev)
    t_save = check_times(t, device=dev, dtype=dtp)
    span = float(t_save[-1] - t_save[0])
    dt = span / 2000 if dt is None else dt
    check_positive(dt, "dt")

    batch = build_batch(model, perturbations, x0, params, device=dev, dtype=dtp)
    term = batch.term
    rows = torch.arange(batch.n_rows, device=dev).repeat_interleave(int(n_cells))
    args = term.segment(t_save[0].expand(len(rows)), tree_index(term.initial_args, rows))
    x = term.reset(t_save[0].expand(len(rows)), batch.x0.index_select(0, rows), args)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    B, G = x.shape
    out = torch.empty(B, len(t_save), G, device=dev, dtype=dtp)
    out[:, 0] = x
    stops = term.stops.index_select(0, rows) if term.pulsed else None
    n_steps = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(t_save) - 1, desc="CLE", disable=not progress, leave=False)
    with torch.no_grad():
        for i in range(1, len(t_save)):
            t0, t1 = float(t_save[i - 1]), float(t_save[i])
            n = max(1, int(np.ceil((t1 - t0) / dt - 1e-9)))
            h = (t1 - t0) / n
            for j in range(n):
                tj = torch.full((B,), t0 + j * h, device=dev, dtype=dtp)
                if stops is not None:  # pulses switch on the step that starts at or after their time
                    args = term.segment(tj, args)
                    x = term.reset(tj, x, args)
                x = _step(term, model, tj, x, args, h, noise, method, gen)
                x = x.abs() if boundary == "reflect" else x.clamp_min(0.0)
                n_steps += 1
            out[:, i] = x
            bar.update(1)
    bar.close()
    bad = ~torch.isfinite(out).flatten(1).all(dim=1)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten()[:5].tolist()
        raise FloatingPointError(f"{int(bad.sum())} cell(s) became non-finite (rows {idx}): reduce dt or check the "
                                 "parameters")
    labels = [f"{batch.labels[r]} cell {c}" for r in range(batch.n_rows) for c in range(int(n_cells))]
    rep = np.repeat
    return Trajectory(t=t_save, y=out, genes=list(model.genes), labels=labels,
                      conditions=list(rep(np.asarray(batch.conditions, dtype=object), n_cells)),
                      parameter_sets=rep(np.asarray(batch.parameter_sets), n_cells),
                      status=np.zeros(B, dtype=int), stats={"n_steps": np.full(B, n_steps)},
                      method=f"cle-{method}", cells=np.tile(np.arange(int(n_cells)), batch.n_rows),
                      species=getattr(model, "species", None),
                      observables=observed(model, term, t_save, out, tree_index(term.initial_args, rows)),
                      volumes=dict(getattr(model, "volumes", {})))


def _step(term: Any, model: Model, t: Tensor, x: Tensor, args: dict, h: float, noise: float, method: str,
          gen: torch.Generator) -> Tensor:
    """One CLE step for every cell (see module doc)."""
    P, D = term.rates(t, x, args)
    drift = P - D
    if noise == 0:
        return x + h * drift
    channels = getattr(model, "loss_channels", None)
    if channels is not None:  # reactions: each its own Poisson stream, along its stoichiometry
        v, N = channels(t, x, args["p"])
        dW = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * h ** 0.5
        dV = torch.randn(v.shape, generator=gen, device=x.device, dtype=x.dtype) * h ** 0.5
        Pvar = term.production_variance(t, x, args).clamp_min(0.0)
        x_new = x + h * drift + noise * (Pvar.sqrt() * dW + (v.clamp_min(0.0).sqrt() * dV) @ N.T)
        return torch.where(args["clamp"], x, x_new) if term.use_clamp else x_new
    var = (P + D).clamp_min(0.0)
    g = noise * var.sqrt()
    dW = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * h ** 0.5
    x_new = x + h * drift + g * dW
    if method == "milstein":
        dvar = _rate_sum_diagonal(term, model, t, x, args)  # ∂(P_i + D_i)/∂x_i
        dg = noise * dvar / (2 * var.sqrt().clamp_min(1e-300))  # ∂g_i/∂x_i
        x_new = x_new + 0.5 * g * dg * (dW * dW - h)
    if term.use_clamp:
        x_new = torch.where(args["clamp"], x, x_new)
    return x_new


def _rate_sum_diagonal(term: Any, model: Model, t: Tensor, x: Tensor, args: dict) -> Tensor:
    """``∂P_i/∂x_i + ∂D_i/∂x_i`` (B, G): from the model's analytic Jacobians when it has them."""
    p = args["p"]
    if hasattr(model, "production_jacobian") and hasattr(model, "degradation_jacobian"):
        dp = torch.diagonal(model.production_jacobian(t, x, p), dim1=1, dim2=2)
        if term.use_mult:
            dp = dp * args["mult"]
        if hasattr(model, "degradation_diagonal"):
            return dp + model.degradation_diagonal(t, x, p)
        return dp + torch.diagonal(model.degradation_jacobian(t, x, p), dim1=1, dim2=2)
    J = autodiff_jacobian(lambda tt, xx, aa: sum(term.rates(tt, xx, aa)), t, x, args)
    return torch.diagonal(J, dim1=1, dim2=2)

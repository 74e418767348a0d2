"""The fitting problem: free parameters, data, observation model -> residuals, loss and derivatives.

Free model parameters are packed into one unconstrained vector ``θ`` (n,) (the
model's own storage: log for positive parameters, so bounds always hold). Many
candidate vectors ``Θ`` (S, n) (multistart, line-search trials, Jacobian
tangents) are evaluated in ONE batched simulate whose rows are conditions x S.

Residuals (M per start, one per measurement):

    gaussian:  r = (s_g y + o_g - value) / sd          (sd from the data, else 1)
    log:       r = (log(s_g y + o_g + c) - log(value + c)) / sd_log

with optional per-gene scale ``s_g`` (positive) and offset ``o_g`` estimated.
``noise="estimate"`` estimates a per-gene sd ``σ_g`` and the loss becomes the
negative log-likelihood ``Σ r²/2 + Σ log σ``. Loss per start:

    L(θ) = ½ Σ r² [+ Σ_m log σ_g(m)] + ½ l2 |θ - θ_ref|² + l1 Σ_free-folds log λ_e

All derivatives are exact derivatives of the computed solution: gradient (reverse
mode), residual Jacobian (forward sensitivities through the same steps; reverse mode
also available), Hessian-vector products (reverse over reverse).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import native
from ..data import ExpressionData
from ..models.base import Model
from ..perturb import Condition, Knockdown, Knockout, as_conditions
from ..simulate import simulate
from ..solvers import get_method
from ..validation import resolve_device, resolve_dtype

__all__ = ["FitProblem"]

_KO = re.compile(r"^KO\(([^()]+)\)$")
_KD = re.compile(r"^KD\(([^(),]+),([0-9.eE+-]+)\)$")


def _parse_label(label: str) -> list | None:
    """``"KO(A)+KO(B)"`` / ``"KD(A,0.5)"`` / ``"wild type"`` -> perturbations; None if not of that form."""
    if label.strip().lower() in ("wild type", "wt", "wildtype", "control"):
        return []
    perts = []
    for part in label.split("+"):
        part = part.strip()
        if m := _KO.match(part):
            perts.append(Knockout(m.group(1)))
        elif m := _KD.match(part):
            perts.append(Knockdown(m.group(1), float(m.group(2))))
        else:
            return None
    return perts


class FitProblem:
    """Residuals and loss of a model against data, as functions of the free parameters.

    Parameters
    ----------
    model : Model (its current values are the fixed values and the default start).
    data : ExpressionData
    free : parameter names (all entries) or ``{name: entries}`` with entries gene names,
        edge labels/indices or a boolean mask; ``"x0"`` estimates the initial states.
    conditions : ``{data label: perturbation(s)}``; labels like ``"KO(A)+KO(B)"``,
        ``"KD(A,0.5)"`` and ``"wild type"`` are understood without it.
    x0 : initial states: ``None`` = the data at the first time point of each
        condition (mean over replicates), or given (G,) / (C, G).
    noise : ``"gaussian"`` (data sd, or 1), ``"estimate"`` (per-gene sd), ``"log"``.
    scale, offset : estimate a per-gene observation scale / offset.
    l2, l1 : penalty weights (see module doc).
    bounds : ``{name: (low, high)}`` for free model parameters, inside the parameter's own domain
        (``production`` is positive: ``0 <= low``); its start values must lie inside. Every method
        honours them by the change of variables: θ is ``logit((v - low) / (high - low))`` for a box
        (``log(v - low)`` with ``high = inf``), so any step of any optimizer stays inside; near a
        bound the derivative of v with respect to θ vanishes, so an optimum on the bound is reached
        only in the limit (θ -> ±inf), as with every transform-based method.
    """

    def __init__(self, model: Model, data: ExpressionData, free: Sequence[str] | Mapping[str, Any], *,
                 conditions: Mapping[str, Any] | None = None, x0: Any = None, noise: str = "gaussian",
                 scale: bool = False, offset: bool = False, l2: float = 0.0, l1: float = 0.0,
                 t0: float | None = None, method: str = "dopri5", rtol: float = 1e-8, atol: float = 1e-10,
                 log_floor: float = 1e-3, bounds: Mapping[str, tuple[float, float]] | None = None,
                 device: str | torch.device = "cpu", dtype: Any = None) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a genenet Model, got {type(model).__name__}")
        if not isinstance(data, ExpressionData):
            raise TypeError("data must be a gn.ExpressionData (use ExpressionData.from_frame / from_csv)")
        if noise not in ("gaussian", "estimate", "log"):
            raise ValueError(f"unknown noise model {noise!r}; allowed: 'gaussian', 'estimate', 'log'")
        for name, v in (("l2", l2), ("l1", l1)):
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.model, self.data = model, data
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if getattr(get_method(method), "multistep", False):
            raise ValueError(f"method={method!r} gives no gradients (the native BDF kernel has no adjoint); fit with "
                             "'dopri5', 'tsit5', 'rodas5' or 'rodas4'")
        self.method, self.rtol, self.atol = method, rtol, atol
        self.noise, self.l2, self.l1, self.log_floor = noise, float(l2), float(l1), float(log_floor)
        genes = list(model.genes)
        data.check_genes(genes)
        self.t0 = float(data.times.min()) if t0 is None else float(t0)
        data.check_times(self.t0)
        self.genes = genes
        self.labels = data.conditions
        self.conditions = self._conditions(conditions)
        self.times = np.unique(np.concatenate([[self.t0], data.times]))
        tab = data.table
        self.cond_idx = torch.as_tensor(np.array(tab.condition.map({c: i for i, c in enumerate(self.labels)})))
        self.time_idx = torch.as_tensor(np.searchsorted(self.times, tab.time.to_numpy()))
        self.gene_idx = torch.as_tensor(np.array(tab.gene.map({g: i for i, g in enumerate(genes)})))
        self.values = self._t(tab.value.to_numpy())
        self.sd = self._t(tab.sd.to_numpy()) if data.has_sd else torch.ones_like(self.values)
        self.n_obs = len(tab)

        # free entries: (name, entry index) in a fixed order
        free_map = {name: None for name in free} if not isinstance(free, Mapping) else dict(free)
        self.estimate_x0 = "x0" in free_map
        free_map.pop("x0", None)
        if not free_map and not self.estimate_x0 and not (scale or offset or noise == "estimate"):
            raise ValueError("nothing to fit: give free parameter names (e.g. free=['production'])")
        self.blocks: list[tuple[str, np.ndarray]] = []
        for name, sel in free_map.items():
            spec = model._spec(name)
            self.blocks.append((name, self._entries(name, spec, sel)))
        raw = {k: v.detach().to(self.device, self.dtype)[0] for k, v in model.raw.items()}
        self.raw_base = raw
        self.bounded = self._bounds(bounds or {})
        pieces, labels = [], []
        for name, idx in self.blocks:
            if name in self.bounded:  # θ in the user's box: logit (or log) of the value
                pieces.append(self.bounded[name].to_unconstrained(model.specs[name].to_constrained(raw[name])[idx]))
            else:  # θ is the model's own storage
                pieces.append(raw[name][idx])
            entry_labels = model.labels(name)
            labels += [(name, entry_labels[i]) for i in idx]
        # initial states
        G = len(genes)
        self.x0_source = "estimated" if self.estimate_x0 else ("given" if x0 is not None else "data")
        x0_init = self._x0_from_data() if x0 is None else self._x0_given(x0)
        self.x0_fixed = x0_init
        if self.estimate_x0:
            pieces.append(torch.log(x0_init.clamp_min(1e-6)).reshape(-1))
            labels += [("x0", f"{c}:{g}") for c in self.labels for g in genes]
        self.obs_blocks: list[str] = []
        if scale:
            self.obs_blocks.append("scale")
            pieces.append(torch.zeros(G, dtype=self.dtype, device=self.device))  # log scale
            labels += [("scale", g) for g in genes]
        if offset:
            self.obs_blocks.append("offset")
            pieces.append(torch.zeros(G, dtype=self.dtype, device=self.device))
            labels += [("offset", g) for g in genes]
        if noise == "estimate":
            self.obs_blocks.append("sigma")
            spread = torch.stack([self.values[self.gene_idx == i].std() if (self.gene_idx == i).sum() > 1
                                  else torch.tensor(1.0) for i in range(G)]).to(self.dtype)
            pieces.append(torch.log(spread.clamp_min(1e-6)))
            labels += [("sigma", g) for g in genes]
        self.theta0 = torch.cat(pieces) if pieces else torch.zeros(0, dtype=self.dtype)
        self.entry_labels = labels
        self.n = self.theta0.numel()
        self.theta_ref = self.theta0.clone()
        self._fits_folds = any(name == "fold" for name, _ in labels)

    # ------------------------------------------------------------- helpers
    def _t(self, a: Any) -> Tensor:
        return torch.as_tensor(np.array(a, dtype=np.float64), dtype=self.dtype, device=self.device)

    def _conditions(self, mapping: Mapping[str, Any] | None) -> list[Condition]:
        out = []
        mapping = dict(mapping or {})
        for label in self.labels:
            if label in mapping:
                perts = as_conditions(mapping[label])
                if len(perts) != 1:
                    raise ValueError(f"conditions[{label!r}] must be one condition (perturbations applied together)")
                out.append(Condition(perts[0].perturbations, label=label))
                continue
            parsed = _parse_label(label)
            if parsed is None:
                if len(self.labels) == 1:
                    parsed = []
                else:
                    raise KeyError(f"data condition {label!r} is not understood; map it with "
                                   f"conditions={{{label!r}: gn.Knockout('A'), ...}}")
            out.append(Condition(parsed, label=label))
        return out

    def _entries(self, name: str, spec: Any, sel: Any) -> np.ndarray:
        if sel is None:
            return np.arange(spec.size)
        arr = np.asarray(sel)
        if arr.dtype == bool:
            if arr.shape != (spec.size,):
                raise ValueError(f"free mask for {name!r} must have shape ({spec.size},)")
            return np.nonzero(arr)[0]
        labels = self.model.labels(name)
        out = []
        for item in (sel if isinstance(sel, (list, tuple)) else [sel]):
            if isinstance(item, (int, np.integer)):
                if not 0 <= item < spec.size:
                    raise KeyError(f"free entry {item} out of range for {name!r} ({spec.size} entries)")
                out.append(int(item))
            elif item in labels:
                out.append(labels.index(item))
            elif isinstance(item, tuple) and hasattr(self.model, "net"):
                out.append(self.model.net.edge_index(*item))
            else:
                raise KeyError(f"free entry {item!r} is not an entry of {name!r}; entries: {labels[:8]}...")
        return np.asarray(sorted(set(out)), dtype=np.int64)

    def _bounds(self, bounds: Mapping[str, tuple[float, float]]) -> dict[str, Any]:
        """User bounds -> a parameter spec per bounded free parameter, checked: each names a free
        parameter, lies inside the parameter's own domain, and holds its start values."""
        free = {name for name, _ in self.blocks}
        out = {}
        for name, box in bounds.items():
            if name not in free:
                raise KeyError(f"bounds name {name!r}, which is not a free model parameter; free: {sorted(free)}")
            try:
                lo, hi = (float(v) for v in box)
            except (TypeError, ValueError):
                raise ValueError(f"bounds[{name!r}] must be (low, high), got {box!r}") from None
            spec = self.model.specs[name]
            own_lo, own_hi = spec.bounds
            if not (lo < hi) or lo < own_lo or hi > own_hi or math.isnan(lo) or math.isnan(hi):
                raise ValueError(f"bounds[{name!r}] = ({lo}, {hi}) must satisfy {own_lo} <= low < high <= {own_hi} "
                                 f"(the domain of {name!r})")
            idx = dict(self.blocks)[name]
            start = spec.to_constrained(self.raw_base[name])[idx]
            outside = (start <= lo) | (start >= hi) if math.isfinite(lo) and math.isfinite(hi) else (
                (start <= lo) if math.isfinite(lo) else (start >= hi))
            if bool(outside.any()):
                labels = self.model.labels(name)
                bad = [f"{labels[i]} = {float(v):.6g}" for i, v in zip(idx, start) if (v <= lo) or (v >= hi)]
                raise ValueError(f"start values of {name!r} outside bounds ({lo}, {hi}): {', '.join(bad[:5])}; "
                                 "set the model's values inside them first (model.set_params)")
            out[name] = dataclasses.replace(spec, bounds=(lo, hi))
        return out

    def _x0_from_data(self) -> Tensor:
        tab = self.data.table
        x0 = np.full((len(self.labels), len(self.genes)), np.nan)
        first = tab[np.isclose(tab.time, self.t0)]
        means = first.groupby(["condition", "gene"]).value.mean()
        for (cond, gene), v in means.items():
            x0[self.labels.index(cond), self.genes.index(gene)] = v
        missing = np.argwhere(np.isnan(x0))
        if len(missing):
            names = [f"{self.labels[c]}:{self.genes[g]}" for c, g in missing[:5]]
            raise ValueError(f"no measurement at the initial time {self.t0} for {names}"
                             f"{'...' if len(missing) > 5 else ''}; give x0= or estimate it with free=[..., 'x0']")
        return self._t(x0)

    def _x0_given(self, x0: Any) -> Tensor:
        x = self._t(x0)
        C, G = len(self.labels), len(self.genes)
        if x.ndim == 1 and x.shape[0] == G:
            return x.expand(C, G).clone()
        if x.shape == (C, G):
            return x
        raise ValueError(f"x0 must have shape ({G},) or ({C}, {G}), got {tuple(x.shape)}")

    # ---------------------------------------------------------- unpacking
    def unpack(self, theta: Tensor) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """Θ (S, n) -> model parameter overrides ``{name: (S, size)}`` (constrained), x0 (S, C, G),
        observation parameters ``{scale|offset|sigma: (S, G)}``."""
        S = theta.shape[0]
        k = 0
        params: dict[str, Tensor] = {}
        for name in self.model.specs:  # every parameter per start, so S starts are always S parameter sets
            params[name] = self.model.specs[name].to_constrained(self.raw_base[name]).expand(S, -1)
        for name, idx in self.blocks:  # out-of-place, so that torch.func can differentiate it
            at = torch.as_tensor(idx, device=theta.device)
            if name in self.bounded:
                values = self.bounded[name].to_constrained(theta[:, k: k + len(idx)])
                params[name] = params[name].index_copy(1, at, values)
            else:
                raw = self.raw_base[name].expand(S, -1).index_copy(1, at, theta[:, k: k + len(idx)])
                params[name] = self.model.specs[name].to_constrained(raw)
            k += len(idx)
        C, G = len(self.labels), len(self.genes)
        if self.estimate_x0:
            x0 = torch.exp(theta[:, k: k + C * G]).view(S, C, G)
            k += C * G
        else:
            x0 = self.x0_fixed.expand(S, C, G)
        obs = {}
        for block in self.obs_blocks:
            v = theta[:, k: k + G]
            obs[block] = torch.exp(v) if block in ("scale", "sigma") else v
            k += G
        return params, x0, obs

    # ------------------------------------------------------------ forward
    def _admissible(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Starts whose values are finite (an optimizer's trial step can overflow ``exp``) -> mask (S,);
        the others are replaced by θ0 for the solve and reported as failed."""
        with torch.no_grad():
            params, x0, obs = self.unpack(theta.detach())
            ok = torch.isfinite(theta.detach()).all(dim=1) & torch.isfinite(x0).flatten(1).all(dim=1)
            for v in (*params.values(), *obs.values()):
                ok &= torch.isfinite(v).all(dim=1)
        if bool(ok.all()):
            return theta, ok
        return torch.where(ok[:, None], theta, self.theta0.to(theta)), ok

    def simulate(self, theta: Tensor) -> tuple[Tensor, np.ndarray]:
        """States at the data times, (S, C, T, G), and each start's success (S,)."""
        S = theta.shape[0]
        theta, admissible = self._admissible(theta)
        params, x0, _ = self.unpack(theta)
        C = len(self.labels)
        x0_rows = x0.permute(1, 0, 2).reshape(C * S, -1)  # rows: condition-major, then start
        traj = simulate(self.model, self.times, x0=x0_rows, perturbations=self.conditions, params=params,
                        method=self.method, rtol=self.rtol, atol=self.atol, device=self.device,
                        dtype=self.dtype, throw=False, max_steps=20_000)
        y = traj.y.view(C, S, len(self.times), -1).permute(1, 0, 2, 3)
        ok = (traj.status.reshape(C, S) == 0).all(axis=0) & admissible.cpu().numpy()
        return y, ok

    def residuals(self, theta: Tensor) -> Tensor:
        """Residuals (S, M) (non-finite for a start whose simulation failed)."""
        y, ok = self.simulate(theta)
        r = self._residuals_from_states(theta, y)
        bad = torch.as_tensor(~ok, device=r.device)
        return torch.where(bad[:, None], torch.full_like(r, float("nan")), r)

    def _residuals_from_states(self, theta: Tensor, y: Tensor) -> Tensor:
        """Residuals (S, M) from simulated states y (S, C, T, G) at the data times."""
        pred = y[:, self.cond_idx, self.time_idx, self.gene_idx]  # (S, M)
        _, _, obs = self.unpack(theta)
        if "scale" in obs:
            pred = pred * obs["scale"][:, self.gene_idx]
        if "offset" in obs:
            pred = pred + obs["offset"][:, self.gene_idx]
        if self.noise == "log":
            c = self.log_floor
            r = (torch.log(pred.clamp_min(0.0) + c) - torch.log(self.values.clamp_min(0.0) + c)) / self.sd
        else:
            r = (pred - self.values) / self.sd
            if "sigma" in obs:
                r = r / obs["sigma"][:, self.gene_idx]
        return r

    def penalty_residuals(self, theta: Tensor) -> Tensor:
        """The L2 prior as extra residuals ``sqrt(l2) (θ - θ_ref)`` (S, n), for least-squares methods."""
        return math.sqrt(self.l2) * (theta - self.theta_ref)

    def loss_from_residuals(self, theta: Tensor, r: Tensor) -> Tensor:
        L = 0.5 * (r * r).sum(dim=1)
        if "sigma" in self.obs_blocks:
            _, _, obs = self.unpack(theta)
            L = L + torch.log(obs["sigma"][:, self.gene_idx]).sum(dim=1)
        if self.l2:
            L = L + 0.5 * self.l2 * ((theta - self.theta_ref) ** 2).sum(dim=1)
        if self.l1 and self._fits_folds:
            params, _, _ = self.unpack(theta)
            L = L + self.l1 * torch.log(params["fold"]).sum(dim=1) if "fold" in params else L
        return torch.where(torch.isfinite(L), L, torch.full_like(L, float("inf")))

    def loss(self, theta: Tensor) -> Tensor:
        """Loss per start (S,); +inf where the simulation failed."""
        return self.loss_from_residuals(theta, self.residuals(theta))

    # -------------------------------------------------------- derivatives
    def gradient(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Loss (S,) and its gradient (S, n) by backpropagation through the solver."""
        th = theta.detach().clone().requires_grad_(True)
        L = self.loss(th)
        finite = torch.isfinite(L)
        (g,) = torch.autograd.grad(torch.where(finite, L, 0.0).sum(), th)
        return L.detach(), torch.where(finite[:, None], g, torch.full_like(g, float("nan")))

    def jacobian(self, theta: Tensor, *, mode: str = "forward", chunk: int = 256) -> tuple[Tensor, Tensor]:
        """Residuals (S, M) and their Jacobian (S, M, n): the exact derivative of the computed solution.

        ``mode="forward"`` (default): forward sensitivities (:mod:`genenet.sensitivity`) -- the n
        tangent directions ride along with the state through the same steps, one solve of
        (1 + n) G columns per start, then the chain rule through the observation model.
        ``mode="reverse"``: backpropagation with the M cotangents ``e_m`` sent through one
        vectorised backward pass (``is_grads_batched``) in chunks of ``chunk``; costs grow
        with M, so it is the better choice only when M < n. Both agree to rounding.
        A start whose simulation failed gets NaN residuals and Jacobian.
        """
        if mode == "reverse":
            return self._jacobian_reverse(theta, chunk)
        if mode != "forward":
            raise ValueError(f"unknown Jacobian mode {mode!r}; allowed: 'forward', 'reverse'")
        from ..sensitivity import solve_with_tangents

        theta, admissible = self._admissible(theta.detach())
        S, n = theta.shape
        C, G = len(self.labels), len(self.genes)
        with torch.no_grad():
            params, x0, _ = self.unpack(theta)
            params_dot, x0_dot = self._input_tangents(theta, x0)
            x0_rows = x0.permute(1, 0, 2).reshape(C * S, G)  # rows: condition-major, then start
            traj, dy = solve_with_tangents(
                self.model, self.times, x0_rows, self.conditions, params=params, x0_dot=x0_dot,
                params_dot=params_dot, method=self.method, rtol=self.rtol, atol=self.atol, max_steps=20_000,
                throw=False, device=self.device, dtype=self.dtype)
            T = len(self.times)
            y = traj.y.view(C, S, T, G).permute(1, 0, 2, 3)  # (S, C, T, G)
            y_dot = dy.view(C, S, T, n, G).permute(1, 3, 0, 2, 4)  # (S, n, C, T, G)
            ok = torch.as_tensor((traj.status.reshape(C, S) == 0).all(axis=0), device=theta.device) & admissible
            r, J = self._observation_jacobian(theta, y, y_dot)
            r = torch.where(ok[:, None], r, float("nan"))
            J = torch.where(ok[:, None, None] & torch.isfinite(J), J, float("nan"))
        return r, J

    def least_squares_jacobian(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`jacobian` with the L2 prior's rows appended (``penalty_residuals`` and ``√l2 I``), so
        that the loss is ``½ |r|²``: what the least-squares methods and the optimality test use."""
        r, J = self.jacobian(theta)
        if self.l2:
            S, n = theta.shape
            r = torch.cat([r, self.penalty_residuals(theta)], dim=1)
            J = torch.cat([J, self.l2 ** 0.5 * torch.eye(n, dtype=J.dtype, device=J.device).expand(S, n, n)], dim=1)
        return r, J

    def _input_tangents(self, theta: Tensor, x0: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Tangents of the model parameters ``{name: (S, n, size)}`` and of the per-row initial
        states (C*S, n, G) along the n unit directions of θ (closed form: every block of θ maps
        elementwise to its values)."""
        S, n = theta.shape
        params_dot: dict[str, Tensor] = {}
        k = 0
        for name, idx in self.blocks:
            spec = self.model.specs[name]
            m = len(idx)
            raw = self.raw_base[name].expand(S, -1).index_copy(
                1, torch.as_tensor(idx, device=theta.device), theta[:, k: k + m])
            d = theta.new_zeros(S, n, spec.size)
            d[:, k + torch.arange(m), torch.as_tensor(idx)] = (
                self.bounded[name].derivative(theta[:, k: k + m]) if name in self.bounded
                else spec.derivative(raw)[:, idx])
            params_dot[name] = d
            k += m
        if not self.estimate_x0:
            return params_dot, None
        C, G = len(self.labels), len(self.genes)
        d = theta.new_zeros(C, S, n, G)  # x0 = exp(θ block), rows condition-major
        cols = k + torch.arange(C * G).view(C, G)
        for c in range(C):
            d[c, :, cols[c], torch.arange(G)] = x0[:, c, :]
        return params_dot, d.reshape(C * S, n, G)

    def _observation_jacobian(self, theta: Tensor, y: Tensor, y_dot: Tensor) -> tuple[Tensor, Tensor]:
        """Residuals (S, M) and ``dr/dθ`` (S, M, n) by the chain rule through the observation model,
        from states y (S, C, T, G) and their tangents y_dot (S, n, C, T, G)."""
        S, n = theta.shape
        gi = self.gene_idx
        pred = y[:, self.cond_idx, self.time_idx, gi]  # (S, M)
        pred_dot = y_dot[:, :, self.cond_idx, self.time_idx, gi]  # (S, n, M)
        _, _, obs = self.unpack(theta)
        k = sum(len(idx) for _, idx in self.blocks) + (len(self.labels) * len(self.genes) if self.estimate_x0 else 0)
        extra = torch.zeros_like(pred_dot)  # direct dependence on observation parameters
        G = len(self.genes)
        cols = {}
        for block in self.obs_blocks:
            cols[block] = k + gi  # θ column of each measurement's gene
            k += G
        rows = torch.arange(pred.shape[1], device=pred.device)
        if "scale" in obs:
            s_m = obs["scale"][:, gi]
            pred_dot = pred_dot * s_m[:, None, :]
            extra[:, cols["scale"], rows] = pred * s_m  # d(s y)/d log s
            pred = pred * s_m
        if "offset" in obs:
            extra[:, cols["offset"], rows] = 1.0
            pred = pred + obs["offset"][:, gi]
        pred_dot = pred_dot + extra
        if self.noise == "log":
            c = self.log_floor
            r = (torch.log(pred.clamp_min(0.0) + c) - torch.log(self.values.clamp_min(0.0) + c)) / self.sd
            dr = torch.where(pred >= 0, 1.0 / ((pred.clamp_min(0.0) + c) * self.sd), 0.0)
            J = pred_dot * dr[:, None, :]
        else:
            r = (pred - self.values) / self.sd
            J = pred_dot / self.sd
            if "sigma" in obs:
                sig = obs["sigma"][:, gi]
                r, J = r / sig, J / sig[:, None, :]
                J[:, cols["sigma"], rows] -= r  # d(r/σ)/d log σ = -r/σ
        return r, J.transpose(1, 2)

    def _jacobian_reverse(self, theta: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        th = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad(), native.torch_path():  # callers may be under no_grad; batched backward
            r = self.residuals(th)
            S, M = r.shape
            finite = torch.isfinite(r).all(dim=1)
            r_safe = torch.where(finite[:, None], r, torch.zeros_like(r))
            rows = []
            for lo in range(0, M, chunk):
                hi = min(M, lo + chunk)
                cot = torch.zeros(hi - lo, S, M, dtype=r.dtype, device=r.device)
                cot[torch.arange(hi - lo), :, torch.arange(lo, hi)] = 1.0
                (g,) = torch.autograd.grad(r_safe, th, grad_outputs=cot, is_grads_batched=True,
                                           retain_graph=hi < M)
                rows.append(g)  # (m, S, n)
        J = torch.cat(rows).permute(1, 0, 2)
        J = torch.where(finite[:, None, None], J, torch.full_like(J, float("nan")))
        return r.detach(), J.detach()

    def gradient_adjoint(self, theta: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Loss (S,) and gradient (S, n) by the adjoint method (memory independent of the number of
        steps); see :mod:`genenet.fit.adjoint`."""
        from .adjoint import adjoint_gradient

        return adjoint_gradient(self, theta, **kwargs)

    def hvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """Hessian-vector products ``H(θ_s) v_s`` of the loss, (S, n): the gradient's graph
        differentiated again (on the native path the second-order sweep in C, ``hvp.h``; on the
        torch loop reverse over reverse)."""
        th = theta.detach().clone().requires_grad_(True)
        with native.second_order():
            L = self.loss(th)
        (g,) = torch.autograd.grad(L.sum(), th, create_graph=True)
        (hv,) = torch.autograd.grad((g * v.detach()).sum(), th)
        return hv

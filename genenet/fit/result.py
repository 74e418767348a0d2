"""FitResult: the best fit, every start, uncertainty, predictions, plots and JSON."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .problem import FitProblem

__all__ = ["FitResult"]

_Z95 = 1.959963984540054


@dataclass
class FitResult:
    """Outcome of :func:`genenet.fit`.

    Attributes
    ----------
    problem : FitProblem
    theta : Tensor (n,)  best unconstrained free vector
    loss : float         best loss
    converged : bool; reason : str   of the best start
    history : np.ndarray  best loss so far at each iteration
    history_times : np.ndarray  wall time (s) of each history entry since the optimizer started
    starts : DataFrame    every start: start, initial_loss, final_loss, reached_best (within 1% of the best
                          start's loss), converged (a first-order optimum), optimality (the loss fraction a
                          Gauss-Newton step would still remove), iterations, reason
    start_theta : Tensor (S, n)  every start's final vector
    covariance : np.ndarray (n, n)  Gauss-Newton covariance of θ (unconstrained), or None
    method : str
    """

    problem: FitProblem
    theta: Tensor
    loss: float
    converged: bool
    reason: str
    history: np.ndarray
    starts: pd.DataFrame
    start_theta: Tensor
    covariance: np.ndarray | None
    method: str
    history_times: np.ndarray | None = None

    # ----------------------------------------------------------- summary
    @property
    def x0_source(self) -> str:
        """Where the initial states came from: ``"data"``, ``"given"`` or ``"estimated"``."""
        return self.problem.x0_source

    @property
    def params(self) -> pd.DataFrame:
        """Free parameters: ``name, entry, value, ci_low, ci_high, se_log`` (95% Gauss-Newton intervals,
        computed on the unconstrained scale and mapped back, hence asymmetric for positive ones)."""
        prob = self.problem
        th = self.theta
        se = (np.sqrt(np.clip(np.diag(self.covariance), 0, None)) if self.covariance is not None
              else np.full(prob.n, np.nan))
        lo = th - _Z95 * torch.as_tensor(se, dtype=th.dtype)
        hi = th + _Z95 * torch.as_tensor(se, dtype=th.dtype)
        rows = []
        values = [self._constrained(v) for v in (th, lo, hi)]
        for k, (name, entry) in enumerate(prob.entry_labels):
            v, a, b = (vals[k] for vals in values)
            rows.append({"name": name, "entry": entry, "value": v, "ci_low": min(a, b), "ci_high": max(a, b),
                         "se_unconstrained": se[k]})
        return pd.DataFrame(rows)

    def _constrained(self, theta: Tensor) -> np.ndarray:
        prob = self.problem
        params, x0, obs = prob.unpack(theta[None])
        out = []
        for name, idx in prob.blocks:
            out.extend(params[name][0, torch.as_tensor(idx)].tolist())
        if prob.estimate_x0:
            out.extend(x0[0].reshape(-1).tolist())
        for block in prob.obs_blocks:
            out.extend(obs[block][0].tolist())
        return np.asarray(out)

    def summary(self) -> str:
        """One paragraph: the best loss and whether it is a first-order optimum (and why the best start
        stopped), how many starts reached the best loss (within 1%: the waterfall's plateau) and how
        many converged, the problem's size."""
        s = self.starts
        reached = int(s.reached_best.sum()) if "reached_best" in s else 1
        return (f"FitResult ({self.method}): loss {self.loss:.6g}, {'converged' if self.converged else 'NOT converged'}"
                f" ({self.reason}); {len(s)} start(s): {reached} reached the best loss (within 1%), "
                f"{int(s.converged.sum())} converged (first-order optima); "
                f"{self.problem.n} free parameters, {self.problem.n_obs} measurements; x0 from {self.x0_source}")

    def __repr__(self) -> str:
        return f"FitResult(loss={self.loss:.6g}, converged={self.converged}, starts={len(self.starts)})"

    # ------------------------------------------------------------- model
    @property
    def model(self) -> Any:
        """A copy of the model with the fitted values (the original is left unchanged)."""
        prob = self.problem
        params, _, _ = prob.unpack(self.theta[None])
        fitted = copy.deepcopy(prob.model)
        with torch.no_grad():
            fitted.set_params(**{name: v[0].detach().cpu().numpy() for name, v in params.items()})
        return fitted

    def predict(self, t: Any = None, *, dense: int = 0) -> Any:
        """Trajectory of the fitted model for the data's conditions (rows = conditions) at ``t``
        (default the data times; ``dense=N`` for N evenly spaced times)."""
        from ..simulate import simulate

        prob = self.problem
        if t is None:
            t = np.linspace(prob.times[0], prob.times[-1], dense) if dense else prob.times
        _, x0, _ = prob.unpack(self.theta[None])
        return simulate(self.model, t, x0=x0[0].detach(), perturbations=prob.conditions, method=prob.method,
                        rtol=prob.rtol, atol=prob.atol, device=prob.device, dtype=prob.dtype)

    def residuals(self) -> pd.DataFrame:
        """The data table with ``fitted`` and (scaled) ``residual`` columns."""
        prob = self.problem
        with torch.no_grad():
            r = prob.residuals(self.theta[None])[0].cpu().numpy()
            y, _ = prob.simulate(self.theta[None])
            pred = y[0, prob.cond_idx, prob.time_idx, prob.gene_idx].cpu().numpy()
        table = prob.data.table.copy()
        table["fitted"] = pred
        table["residual"] = r
        return table

    # ------------------------------------------------------------- plots
    def plot(self, axes: Any = None, dense: int = 200) -> Any:
        """Data points and fitted curves: one panel per condition, one colour per gene.
        Returns the array of Axes."""
        import matplotlib.pyplot as plt

        prob = self.problem
        C = len(prob.labels)
        if axes is None:
            _, axes = plt.subplots(1, C, figsize=(4.5 * C, 3.5), squeeze=False)
            axes = axes[0]
        axes = np.atleast_1d(axes)
        traj = self.predict(dense=dense)
        tab = prob.data.table
        t = traj.t.cpu().numpy()
        y = traj.numpy()
        for c, ax in enumerate(axes[:C]):
            for g, gene in enumerate(prob.genes):
                color = f"C{g % 10}"
                ax.plot(t, y[c, :, g], color=color, label=gene)
                pts = tab[(tab.condition == prob.labels[c]) & (tab.gene == gene)]
                ax.plot(pts.time, pts.value, "o", color=color, markersize=3)
            ax.set_title(prob.labels[c])
            ax.set_xlabel("time")
        axes[0].set_ylabel("expression")
        axes[0].legend(fontsize="small", frameon=False)
        return axes

    def plot_residuals(self, ax: Any = None) -> Any:
        """Scaled residuals against time, coloured by gene. Returns the Axes."""
        from ..plot import _axes

        ax = _axes(ax)
        table = self.residuals()
        for g, (gene, sub) in enumerate(table.groupby("gene", sort=False)):
            ax.plot(sub.time, sub.residual, "o", color=f"C{g % 10}", markersize=3, label=gene)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xlabel("time")
        ax.set_ylabel("residual")
        ax.legend(fontsize="small", frameon=False)
        return ax

    def plot_waterfall(self, ax: Any = None) -> Any:
        """Final loss of every start, sorted (a plateau at the bottom = a reproducible optimum)."""
        from ..plot import _axes

        ax = _axes(ax)
        losses = np.sort(self.starts.final_loss.to_numpy())
        ax.plot(np.arange(1, len(losses) + 1), losses, "o-")
        ax.set_yscale("log")
        ax.set_xlabel("start (sorted)")
        ax.set_ylabel("final loss")
        return ax

    # ----------------------------------------------------------- profiles
    def profile(self, names: list[Any] | None = None, n_points: int = 11, width: float = 3.0,
                max_iter: int = 50, *, cluster: Any = None) -> pd.DataFrame:
        """Profile likelihood of free entries: for each, hold it at ``n_points`` values across
        ``θ* ± width·se`` (unconstrained scale) and re-optimise all others (LM; all grid points of
        one entry as one batch of starts).

        ``names``: entries as ``(name, entry)`` pairs or plain names (all their entries);
        default every free entry. ``cluster``: the entries' profiles as tasks on Dask workers
        (as for :func:`genenet.fit`; each is the same LM run as in-process). Returns ``name,
        entry, value, loss, delta_loss`` where ``delta_loss = loss - best``; the 95% profile
        interval is where ``delta_loss <= 1.92`` (χ²₁/2). Stored in ``self.profiles`` for
        :meth:`plot_profiles`.
        """
        from ..distributed import map_chunks, uses_cluster

        prob = self.problem
        labels = prob.entry_labels
        if names is None:
            which = list(range(prob.n))
        else:
            which = []
            for item in names:
                hits = [k for k, lab in enumerate(labels) if lab == tuple(item) or lab[0] == item]
                if not hits:
                    raise KeyError(f"{item!r} is not a free entry; free entries: {labels[:8]}...")
                which += hits
        se = (np.sqrt(np.clip(np.diag(self.covariance), 1e-12, None)) if self.covariance is not None
              else np.full(prob.n, 0.5))
        entries = [(k, self.theta[k].item() + np.linspace(-width, width, n_points) * se[k]) for k in which]
        kwargs = dict(problem=prob, theta=self.theta, max_iter=max_iter)
        if uses_cluster(cluster):
            runs = [r for part in map_chunks(_profile_entries, lambda threads: [[e] for e in entries], kwargs,
                                             key="entries", cluster=cluster, desc="profile") for r in part]
        else:
            runs = _profile_entries(**kwargs, entries=entries)
        frames = []
        for (k, _), (theta, loss) in zip(entries, runs):
            values = [self._constrained(theta[i])[k] for i in range(n_points)]
            loss = loss.cpu().numpy()
            frames.append(pd.DataFrame({"name": labels[k][0], "entry": labels[k][1], "value": values,
                                        "loss": loss, "delta_loss": loss - self.loss}))
        table = pd.concat(frames, ignore_index=True)
        self.profiles = table
        return table

    def plot_profiles(self, axes: Any = None) -> Any:
        """Profile likelihood curves (``delta_loss`` vs value) with the 95% threshold; runs
        :meth:`profile` first if needed. Returns the array of Axes."""
        import matplotlib.pyplot as plt

        table = getattr(self, "profiles", None)
        if table is None:
            table = self.profile()
        groups = list(table.groupby(["name", "entry"], sort=False))
        if axes is None:
            _, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3), squeeze=False)
            axes = axes[0]
        axes = np.atleast_1d(axes)
        for ax, ((name, entry), sub) in zip(axes, groups):
            ax.plot(sub.value, sub.delta_loss, "o-")
            ax.axhline(1.92, color="C3", linestyle="--", lw=0.8)
            ax.set_title(f"{name} {entry}".strip(), fontsize="small")
            ax.set_xlabel("value")
        axes[0].set_ylabel("loss - best")
        return axes

    # -------------------------------------------------------------- JSON
    def to_json(self, path: str | Path | None = None) -> str:
        """Fitted values, intervals, loss and start summary as JSON (written to ``path`` if given)."""
        payload = {
            "method": self.method, "loss": self.loss, "converged": self.converged, "reason": self.reason,
            "x0_source": self.x0_source, "theta": self.theta.tolist(),
            "params": self.params.to_dict(orient="records"),
            "starts": self.starts.to_dict(orient="records"),
            "history": np.asarray(self.history).tolist(),
        }
        text = json.dumps(payload, indent=1, default=float)
        if path is not None:
            Path(path).write_text(text)
        return text

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        """Read what :meth:`to_json` wrote: a dict with ``params`` and ``starts`` as DataFrames."""
        payload = json.loads(Path(path).read_text())
        payload["params"] = pd.DataFrame(payload["params"])
        payload["starts"] = pd.DataFrame(payload["starts"])
        return payload


def _profile_entries(problem: Any, theta: Tensor, max_iter: int, entries: list[tuple[int, np.ndarray]]
                     ) -> list[tuple[Tensor, Tensor]]:
    """Per entry ``(k, grid)``: LM from ``theta`` with entry k held at each grid value (one batch
    of starts); the optima (n_points, n) and their losses."""
    from .optimizers import levenberg_marquardt

    out = []
    for k, grid in entries:
        starts = theta[None].repeat(len(grid), 1)
        starts[:, k] = torch.as_tensor(grid, dtype=starts.dtype, device=starts.device)
        fixed = torch.zeros_like(starts, dtype=torch.bool)
        fixed[:, k] = True
        res = levenberg_marquardt(problem, starts, max_iter=max_iter, fixed=fixed)
        out.append((res.theta.detach(), res.loss.detach()))
    return out

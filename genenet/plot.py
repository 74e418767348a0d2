"""Matplotlib figures. Each function takes ``ax=`` (created when ``None``) and returns the Axes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

if TYPE_CHECKING:
    from .trajectory import Trajectory

__all__ = ["plot_trajectory", "plot_screen_heatmap", "plot_phase_portrait", "plot_basins", "plot_bifurcation"]

_MAX_DEFAULT_ROWS = 10


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(7, 4)).add_subplot()


def plot_trajectory(traj: Trajectory, genes: str | Sequence[str] | None = None, rows: Any = None,
                    ax: Any = None, *, legend: bool = True, **line_kwargs: Any) -> Any:
    """Expression of ``genes`` over time, one colour per gene, one line style per row.

    Parameters
    ----------
    traj : Trajectory
    genes : gene name(s); default all genes (up to 12 in the legend).
    rows : row indices or labels; default the first 10 rows.
    ax : matplotlib Axes to draw on; a new figure when ``None``.
    legend : draw a legend.
    **line_kwargs : passed to ``ax.plot``.

    Returns
    -------
    The Axes.
    """
    ax = _axes(ax)
    names = list(traj.genes) if genes is None else ([genes] if isinstance(genes, str) else list(genes))
    gidx = [traj.index(g) for g in names]
    ridx = traj.row_indices(rows) if rows is not None else list(range(min(traj.n_rows, _MAX_DEFAULT_ROWS)))
    t = traj.t.detach().cpu().numpy()
    y = traj.declared()
    colours = [f"C{i}" for i in range(len(names))] if len(names) <= 10 else \
        [matplotlib.colormaps["tab20"](i % 20) for i in range(len(names))]
    styles = ["-", "--", ":", "-."]
    many = len(ridx) > len(styles)  # then rows share a style and fade instead
    for k, r in enumerate(ridx):
        for j, c in enumerate(colours):
            ax.plot(t, y[r, :, gidx[j]], color=c, linestyle="-" if many else styles[k],
                    alpha=max(0.25, 1.0 / np.sqrt(len(ridx))) if many else 1.0,
                    label=names[j] if k == 0 else None, **line_kwargs)
    if 1 < len(ridx) and not many and legend:  # proxy entries: which line style is which row
        for k, r in enumerate(ridx):
            ax.plot([], [], color="0.3", linestyle=styles[k], label=traj.labels[r])
    ax.set_xlabel("time")
    ax.set_ylabel("expression")
    title = traj.labels[ridx[0]] if len(ridx) == 1 else f"{len(ridx)} rows"
    ax.set_title(title)
    if legend and len(names) <= 12:
        ax.legend(loc="best", fontsize="small", frameon=False)
    return ax


def plot_screen_heatmap(table: Any, value: str = "log2fc", *, cluster: bool = False, parameter_set: int = 0,
                        ax: Any = None, cmap: str = "RdBu_r", limit: float | None = None) -> Any:
    """Heatmap of a screen: genes (rows) x conditions (columns), colour = ``value`` (log2 fold change).

    ``table`` is :func:`genenet.screen_table`'s output. ``cluster=True`` orders genes and
    conditions by average-linkage hierarchical clustering (scipy). The colour scale is
    symmetric around 0, clipped at ``limit`` (default the 99th percentile of |value|).
    Returns the Axes.
    """
    ax = _axes(ax)
    data = table[table["parameter_set"] == parameter_set]
    mat = data.pivot(index="gene", columns="condition", values=value)
    mat = mat.loc[list(dict.fromkeys(data["gene"])), list(dict.fromkeys(data["condition"]))]
    if cluster and min(mat.shape) > 2:
        from scipy.cluster.hierarchy import leaves_list, linkage

        mat = mat.iloc[leaves_list(linkage(mat.to_numpy(), "average")),
                       leaves_list(linkage(mat.to_numpy().T, "average"))]
    vals = mat.to_numpy()
    lim = limit if limit is not None else float(np.nanpercentile(np.abs(vals), 99)) or 1.0
    image = ax.imshow(vals, aspect="auto", cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_yticks(range(mat.shape[0]), mat.index, fontsize="small")
    step = max(1, mat.shape[1] // 40)
    ax.set_xticks(range(0, mat.shape[1], step), mat.columns[::step], rotation=90, fontsize="x-small")
    ax.set_xlabel("condition")
    ax.figure.colorbar(image, ax=ax, label=value)
    return ax


def plot_phase_portrait(model: Any, x_range: tuple[float, float] | None = None,
                        y_range: tuple[float, float] | None = None, *, states: Any = None, parameter_set: int = 0,
                        ax: Any = None, grid: int = 60) -> Any:
    """Phase plane of a 2-gene model: flow (streamlines), nullclines and steady states.

    ``states`` (a :class:`~genenet.SteadyStates` or :class:`~genenet.SteadyState`) marks
    stable states filled and unstable ones open. Ranges default to ``[0, 1.1 max level]``.
    Returns the Axes.
    """
    import torch

    from .steady import _prepare

    if model.n_genes != 2:
        raise ValueError(f"a phase portrait needs a 2-gene model, this one has {model.n_genes} genes")
    ax = _axes(ax)
    batch, args, dev, dtp = _prepare(model, None, None, None, "cpu", None)
    row = torch.tensor([parameter_set])
    from .solvers.integrate import tree_index

    args = tree_index(args, row)
    if x_range is None or y_range is None:
        top = model.max_levels(args["p"])[0].detach().numpy() * 1.1 if hasattr(model, "max_levels") else [10, 10]
        x_range = x_range or (0.0, float(top[0]))
        y_range = y_range or (0.0, float(top[1]))
    xs, ys = np.linspace(*x_range, grid), np.linspace(*y_range, grid)
    X, Y = np.meshgrid(xs, ys)
    pts = torch.as_tensor(np.stack([X.ravel(), Y.ravel()], axis=1), dtype=dtp)
    with torch.no_grad():
        F = batch.term.vf(torch.zeros(len(pts), dtype=dtp), pts, tree_index(args, torch.zeros(len(pts),
                                                                                                dtype=torch.long)))
    U, V = F[:, 0].numpy().reshape(X.shape), F[:, 1].numpy().reshape(X.shape)
    ax.streamplot(xs, ys, U, V, color="0.75", density=1.1, linewidth=0.7)
    g = model.genes
    ax.contour(X, Y, U, levels=[0.0], colors="C0")
    ax.contour(X, Y, V, levels=[0.0], colors="C3")
    ax.plot([], [], color="C0", label=f"d{g[0]}/dt = 0")
    ax.plot([], [], color="C3", label=f"d{g[1]}/dt = 0")
    if states is not None:
        if hasattr(states, "states"):
            tab = states.states[states.states.parameter_set == parameter_set]
            pts_s, stab = tab[g].to_numpy(), tab.stable.to_numpy()
        else:
            pts_s, stab = states.x.detach().cpu().numpy(), np.asarray(states.stable)
        for (a, b), s in zip(pts_s, stab):
            ax.plot(a, b, "o", color="k", markerfacecolor="k" if s else "white", markersize=8, zorder=5)
        ax.plot([], [], "o", color="k", label="stable")
        ax.plot([], [], "o", color="k", markerfacecolor="white", label="unstable")
    ax.set_xlim(*x_range)
    ax.set_ylim(*y_range)
    ax.set_xlabel(g[0])
    ax.set_ylabel(g[1])
    ax.legend(loc="upper right", fontsize="small")
    return ax


def plot_basins(result: Any, *, ax: Any = None, max_rows: int = 30) -> Any:
    """Basin fractions of the stable states, one stacked bar per row (condition x parameter set),
    or, for a large ensemble, the RACIPE histogram of how many rows are mono-, bi-, tri-stable.
    Returns the Axes."""
    ax = _axes(ax)
    groups = result.groups
    if len(groups) > max_rows:
        counts = result.multistability()
        ax.bar([str(k) for k in counts.index], counts.to_numpy() / counts.sum(), color="C0")
        ax.set_xlabel("number of stable steady states")
        ax.set_ylabel("fraction of rows")
        return ax
    stable = result.states[result.states.stable]
    labels = [f"{c}" if groups.parameter_set.nunique() == 1 else f"{c} | {s}"
              for c, s in zip(groups.condition, groups.parameter_set)]
    for i, (c, s) in enumerate(zip(groups.condition, groups.parameter_set)):
        part = stable[(stable.condition == c) & (stable.parameter_set == s)]
        bottom = 0.0
        for k, f in enumerate(part.basin_fraction):
            ax.bar(i, f, bottom=bottom, color=f"C{k % 10}", edgecolor="white")
            bottom += f
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="small")
    ax.set_ylabel("basin fraction of each stable state")
    ax.set_ylim(0, 1)
    return ax


def plot_bifurcation(bif: Any, gene: str | None = None, *, ax: Any = None) -> Any:
    """Bifurcation diagram: steady level of ``gene`` (default the first) against the parameter,
    stable parts solid, unstable parts dashed, folds (saddle-node points) marked. Returns the Axes."""
    ax = _axes(ax)
    gene = gene or bif.genes[0]
    if gene not in bif.genes:
        raise KeyError(f"unknown gene {gene!r}; genes are {bif.genes}")
    br = bif.branch
    stable = br.stable.to_numpy()
    cuts = np.nonzero(stable[1:] != stable[:-1])[0] + 1
    first = {True: True, False: True}
    for seg in np.split(np.arange(len(br)), cuts):
        if len(seg) == 0:
            continue
        s = bool(stable[seg[0]])
        idx = np.concatenate([[seg[0] - 1] if seg[0] > 0 else [], seg]).astype(int)
        ax.plot(br.parameter.to_numpy()[idx], br[gene].to_numpy()[idx], color="k", linestyle="-" if s else "--",
                label=("stable" if s else "unstable") if first[s] else None)
        first[s] = False
    if len(bif.folds):
        ax.plot(bif.folds.parameter, bif.folds[gene], "o", color="C3", label="saddle-node")
    ax.set_xlabel(bif.parameter)
    ax.set_ylabel(f"steady {gene}")
    ax.legend(fontsize="small", frameon=False)
    return ax

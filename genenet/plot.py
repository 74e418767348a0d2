"""Matplotlib figures. Each function takes ``ax=`` (created when ``None``) and returns the Axes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

if TYPE_CHECKING:
    from .trajectory import Trajectory

__all__ = ["plot_trajectory"]

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
    y = traj.numpy()
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

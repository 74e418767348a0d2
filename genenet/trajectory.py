"""Trajectory: the result of a simulation, as tensors with labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .solvers.status import Status, describe_failures

__all__ = ["Trajectory"]


@dataclass(frozen=True)
class Trajectory:
    """Simulated time courses of a batch of rows (conditions x parameter sets).

    Attributes
    ----------
    t : Tensor (T,)
        Save times.
    y : Tensor (B, T, G)
        States; differentiable with respect to the model parameters and ``x0``.
        Entries after the point where a row failed are NaN (its ``status`` says why).
    genes : list[str]
        Gene (state) names, G.
    labels : list[str]
        One label per row, B.
    conditions : list[str]
        Condition label of each row (``"wild type"`` without perturbations).
    parameter_sets : np.ndarray (B,)
        Index of each row's parameter set in the model's ensemble.
    status : np.ndarray (B,)
        :class:`~genenet.solvers.Status` code per row (0 = success).
    stats : dict[str, np.ndarray]
        Per-row ``n_steps``, ``n_accepted``, ``n_rejected``, ``n_rhs`` (RHS evaluations).
    method : str
        Solver used.
    cells : np.ndarray (B,) or None
        Cell index of each row (stochastic simulations); ``None`` for deterministic ones.
    species : list[str] or None
        Species of each state for multi-species models (:class:`genenet.TwoStage`: ``"mRNA"``,
        ``"protein"``), whose state names are ``"GENE:species"``; ``None`` otherwise.
    observables : dict[str, Tensor (B, T)]
        The model's declared derived quantities (:meth:`Model.observe`: SBML assignment rules and
        compartment sizes, a reaction network's ``observables``) at the save times, each row with its
        own parameters (and a pulsed ``SetParameter``'s value where it is on); ``traj["name"]``.
    volumes : dict[str, float]
        Compartment size of each state that is a concentration (SBML species without
        ``hasOnlySubstanceUnits``); :meth:`amount` multiplies by it.
    """

    t: Tensor
    y: Tensor
    genes: list[str]
    labels: list[str]
    conditions: list[str]
    parameter_sets: np.ndarray
    status: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = ""
    cells: np.ndarray | None = None
    species: list[str] | None = None
    observables: dict[str, Tensor] = field(default_factory=dict)
    volumes: dict[str, float] = field(default_factory=dict)

    # ---------------------------------------------------------------- summary
    @property
    def n_rows(self) -> int:
        return self.y.shape[0]

    @property
    def success(self) -> bool:
        """True when every row reached the final time."""
        return bool((self.status == Status.SUCCESS).all())

    @property
    def failed(self) -> np.ndarray:
        """Indices of rows that did not reach the final time."""
        return np.nonzero(self.status != Status.SUCCESS)[0]

    @property
    def message(self) -> str:
        if self.success:
            return f"all {self.n_rows} rows reached t = {float(self.t[-1]):g}"
        return describe_failures(self.status, self.labels)

    @property
    def final(self) -> Tensor:
        """States at the last save time, (B, G)."""
        return self.y[:, -1]

    def summary(self) -> str:
        """A few lines: rows, genes, times, solver work and status."""
        steps = self.stats.get("n_steps", np.zeros(1))
        rhs = self.stats.get("n_rhs", np.zeros(1))
        lines = [
            f"Trajectory: {self.n_rows} rows x {len(self.t)} times x {len(self.genes)} genes, "
            f"t in [{float(self.t[0]):g}, {float(self.t[-1]):g}], method {self.method}",
            f"  steps per row: median {np.median(steps):.0f}, max {steps.max():.0f}; "
            f"rejected {int(self.stats.get('n_rejected', np.zeros(1)).sum())}; RHS evaluations {int(rhs.sum())}",
            f"  status: {self.message}",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Trajectory(rows={self.n_rows}, times={len(self.t)}, genes={len(self.genes)}, "
                f"method={self.method!r}, success={self.success})")

    # ----------------------------------------------------------------- access
    def index(self, gene: str) -> int:
        try:
            return self.genes.index(gene)
        except ValueError:
            more = f", observables {list(self.observables)}" if self.observables else ""
            raise KeyError(f"unknown gene {gene!r}; genes are {list(self.genes)}{more}") from None

    def amount(self, name: str) -> Tensor:
        """The amount of a species (B, T): its state times its compartment's size where the state is
        a concentration (:attr:`volumes`), the state itself otherwise (also where an observable of
        the same name gives its concentration: a species integrated as an amount)."""
        if name in self.genes and name in self.observables:
            return self.y[:, :, self.index(name)]
        return self[name] * self.volumes.get(name, 1.0)

    def __getitem__(self, gene: str | tuple[str, str]) -> Tensor:
        """``traj["GENE"]`` -> that gene's values, (B, T); ``traj["GENE", "protein"]`` one species
        of a multi-species model (same as ``traj["GENE:protein"]``); ``traj["name"]`` of one of the
        model's :attr:`observables` (an SBML id: what the model declares, a species' concentration
        unless it has only substance units; :meth:`amount` for amounts)."""
        if isinstance(gene, str) and gene in self.observables:  # before the state: it may declare how a state reads
            return self.observables[gene]
        if isinstance(gene, tuple) and len(gene) == 2 and all(isinstance(g, str) for g in gene):
            if self.species is None:
                raise KeyError(f"{gene!r}: this trajectory has one species per gene; index by gene name")
            if gene[1] not in self.species:
                raise KeyError(f"unknown species {gene[1]!r}; species are {sorted(set(self.species))}")
            gene = f"{gene[0]}:{gene[1]}"
        if not isinstance(gene, str):
            raise TypeError(f"index a Trajectory by gene name or (gene, species), got {type(gene).__name__}")
        return self.y[:, :, self.index(gene)]

    def row_indices(self, rows: int | str | Sequence[int | str] | None) -> list[int]:
        """Row indices from ints, row labels or condition labels (``None``: all)."""
        if rows is None:
            return list(range(self.n_rows))
        if isinstance(rows, (int, np.integer, str)):
            rows = [rows]
        out: list[int] = []
        for r in rows:
            if isinstance(r, (int, np.integer)):
                if not -self.n_rows <= r < self.n_rows:
                    raise IndexError(f"row {r} out of range for {self.n_rows} rows")
                out.append(int(r) % self.n_rows)
            elif r in self.labels:
                out.append(self.labels.index(r))
            elif r in self.conditions:
                out.extend(i for i, c in enumerate(self.conditions) if c == r)
            else:
                raise KeyError(f"unknown row {r!r}; rows are labelled {list(self.labels[:5])}...")
        return out

    def numpy(self) -> np.ndarray:
        """``y`` as a numpy array (B, T, G)."""
        return self.y.detach().cpu().numpy()

    def declared(self) -> np.ndarray:
        """The states as the model declares them, (B, T, G): ``y``, except where an observable has a
        state's name (an SBML species integrated as its amount, read as its concentration n / V)."""
        y = self.numpy()
        shadowed = [k for k, g in enumerate(self.genes) if g in self.observables]
        if shadowed:
            y = y.copy()
            for k in shadowed:
                y[:, :, k] = self.observables[self.genes[k]].detach().cpu().numpy()
        return y

    def to_frame(self, rows: Any = None) -> pd.DataFrame:
        """Long table with columns ``row, condition, parameter_set, time, gene, value`` (the values
        :meth:`declared`); multi-species trajectories have ``gene`` (the gene name) and ``species`` columns."""
        idx = self.row_indices(rows)
        y = self.declared()[idx]
        B, T, G = y.shape
        t = self.t.detach().cpu().numpy()
        names = np.asarray(self.genes, dtype=object)
        columns = {"gene": np.tile(names, B * T)}
        if self.species is not None:
            base = np.asarray([g.rsplit(":", 1)[0] for g in self.genes], dtype=object)
            columns = {"gene": np.tile(base, B * T), "species": np.tile(np.asarray(self.species, dtype=object), B * T)}
        return pd.DataFrame({
            "row": np.repeat(np.asarray(self.labels, dtype=object)[idx], T * G),
            "condition": np.repeat(np.asarray(self.conditions, dtype=object)[idx], T * G),
            "parameter_set": np.repeat(self.parameter_sets[idx], T * G),
            "time": np.tile(np.repeat(t, G), B),
            **columns,
            "value": y.reshape(-1),
        })

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Trajectory:
        """A Trajectory from :meth:`to_frame`'s long table (e.g. the CSV ``genenet simulate --out``
        writes): rows, times and genes in their order of first appearance, ``y`` (B, T, G) in
        float64. A row with a missing or non-finite value gets status ``NONFINITE`` (the table does
        not say why a row failed); no solver stats, no autograd graph.
        """
        need = ["row", "condition", "parameter_set", "time", "gene", "value"]
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"a trajectory table needs columns {need} (and species for multi-species models); "
                             f"missing {missing}")
        species = None
        state = frame["gene"].astype(str)
        if "species" in frame.columns:
            state = state + ":" + frame["species"].astype(str)
        frame = frame.assign(_state=state)
        labels = list(pd.unique(frame["row"]))
        times = np.sort(pd.unique(frame["time"]).astype(float))
        genes = [str(g) for g in pd.unique(frame["_state"])]
        if "species" in frame.columns:
            species = [g.rsplit(":", 1)[1] for g in genes]
        full = pd.MultiIndex.from_product([labels, times], names=["row", "time"])
        table = frame.pivot_table(index=["row", "time"], columns="_state", values="value", aggfunc="first")
        y = table.reindex(index=full, columns=genes).to_numpy(dtype=float).reshape(len(labels), len(times), len(genes))
        first = frame.drop_duplicates("row").set_index("row").loc[labels]
        ok = np.isfinite(y).all(axis=(1, 2))
        return cls(t=torch.tensor(times), y=torch.tensor(y), genes=genes, labels=[str(r) for r in labels],
                   conditions=[str(c) for c in first["condition"]],
                   parameter_sets=first["parameter_set"].to_numpy(dtype=int),
                   status=np.where(ok, int(Status.SUCCESS), int(Status.NONFINITE)), species=species)

    def snapshot(self, time: float, *, condition: str | None = None, capture: float | None = None,
                 library_sd: float = 0.0, dropout_midpoint: float | None = None, dropout_shape: float = 1.0,
                 seed: int = 0, anndata: bool = False) -> Any:
        r"""Cells x genes expression at the save time nearest ``time``, for comparison with single-cell data.

        One row per batch row (cell), indexed by its label, with ``condition`` and ``cell``
        columns first. Optional technical noise, as in SERGIO (Dibaeinia & Sinha 2020):

        - ``capture``: UMI counts ``~ Poisson(capture * L_c * x)`` with a per-cell library
          factor ``L_c ~ LogNormal(0, library_sd)``;
        - ``dropout_midpoint``: each count is zeroed with probability
          ``1 / (1 + exp(dropout_shape * (log x - log dropout_midpoint)))`` (more dropout for
          lowly expressed genes).

        ``anndata=True`` returns an ``anndata.AnnData`` (``obs``: condition, cell) instead
        (needs the ``anndata`` extra). Returns a :class:`pandas.DataFrame` otherwise.
        """
        k = int(np.argmin(np.abs(self.t.detach().cpu().numpy() - float(time))))
        rows = np.arange(self.n_rows) if condition is None else np.flatnonzero(np.asarray(self.conditions) == condition)
        if condition is not None and rows.size == 0:
            raise KeyError(f"no rows with condition {condition!r}; available: {sorted(set(self.conditions))}")
        X = self.y[rows, k].detach().cpu().numpy().astype(np.float64)
        rng = np.random.default_rng(seed)
        if capture is not None:
            if not capture > 0:
                raise ValueError(f"capture must be > 0, got {capture!r}")
            lib = rng.lognormal(0.0, library_sd, size=(len(rows), 1))
            X = rng.poisson(np.clip(capture * lib * X, 0, None)).astype(np.float64)
        if dropout_midpoint is not None:
            level = np.log(np.clip(X, 1e-12, None)) - np.log(dropout_midpoint)
            drop = rng.random(X.shape) < 1.0 / (1.0 + np.exp(np.clip(dropout_shape * level, -50, 50)))
            X = np.where(drop, 0.0, X)
        obs = pd.DataFrame({"condition": np.asarray(self.conditions, dtype=object)[rows],
                            "cell": (self.cells[rows] if self.cells is not None else rows)},
                           index=[self.labels[i] for i in rows])
        if anndata:
            try:
                import anndata as ad
            except ImportError as err:
                raise ImportError("snapshot(anndata=True) needs the anndata package: pip install anndata") from err
            return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(self.genes)))
        return pd.concat([obs, pd.DataFrame(X, columns=list(self.genes), index=obs.index)], axis=1)

    def to(self, device: str | torch.device) -> Trajectory:
        """A copy with ``t``, ``y`` and the observables on ``device``."""
        from dataclasses import replace

        return replace(self, t=self.t.to(device), y=self.y.to(device),
                       observables={k: v.to(device) for k, v in self.observables.items()})

    def plot(self, genes: str | Sequence[str] | None = None, rows: Any = None, ax: Any = None, **kwargs: Any):
        """Time courses of ``genes`` (default all) for ``rows`` (default: up to 10); returns the Axes."""
        from .plot import plot_trajectory

        return plot_trajectory(self, genes=genes, rows=rows, ax=ax, **kwargs)

"""Rows of a batched solve: conditions x parameter sets, with their initial states and labels.

Row ``r = c * P + s`` is condition ``c`` with parameter set ``s``. Shared by
simulate, steady states and screens so that all of them label and order rows alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .models.base import Model
from .perturb import ConditionTerm, as_conditions, compile_conditions
from .validation import check_state, per_gene

__all__ = ["Batch", "build_batch", "check_rows", "count_rows"]


@dataclass
class Batch:
    """Everything a solver needs about the rows, plus their labels."""

    term: ConditionTerm
    x0: Tensor  # (B, G)
    labels: list[str]
    conditions: list[str]  # per row
    parameter_sets: np.ndarray  # (B,)
    n_conditions: int
    n_sets: int
    x0_fixed: Tensor  # (B, G) bool: genes whose initial state the condition sets (knockouts, clamps)
    index: np.ndarray  # (B,) each row's place in the whole batch of C * n_sets rows (``rows=``)

    @property
    def n_rows(self) -> int:
        return self.x0.shape[0]

    @property
    def stops(self) -> Tensor | None:
        """(B, S) switching times, or None without pulses."""
        return self.term.stops if self.term.pulsed else None


def _n_sets(model: Model, params: Mapping[str, Any] | None) -> int:
    """Parameter sets after overrides: each parameter has 1 or P sets."""
    counts = {name: int(v.shape[0]) for name, v in model.raw.items()}
    for name, v in (params or {}).items():
        counts[name] = int(np.shape(v)[0]) if np.ndim(v) == 2 else 1
    many = {c for c in counts.values() if c > 1}
    if len(many) > 1:
        raise ValueError(f"parameter sets disagree after overrides: {counts}; each must be 1 or P")
    return max(many, default=1)


def _layout(model: Model, n_conditions: int, x: Tensor | None, params: Mapping[str, Any] | None
            ) -> tuple[int, bool]:
    """Parameter sets P of the batch (the rows of ``x`` for one condition and one set's replicates)
    and whether those are replicates of one initial state each; checks ``x``'s rows."""
    C, P = n_conditions, _n_sets(model, params)
    if x is not None and x.ndim == 2 and x.shape[0] not in (1, P, C * P):
        if C == 1 and P == 1:  # many initial states of one condition and one parameter set
            return x.shape[0], True
        allowed = f"1, {P} (one per parameter set)" + (f" or {C * P} (conditions x parameter sets)" if C > 1 else "")
        raise ValueError(f"x0 has {x.shape[0]} rows; allowed: {allowed}")
    return P, False


def _initial(model: Model, x0: Any, n_rows: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    if x0 is None:
        return model.default_x0(1, device=device, dtype=dtype)[0]
    x = per_gene(x0, "x0", model.genes, device=device, dtype=dtype, rows=n_rows)
    check_state(x, model.genes)
    return x


def count_rows(model: Model, perturbations: Any, x0: Any = None, params: Mapping[str, Any] | None = None) -> int:
    """Rows ``B`` that :func:`build_batch` makes of these arguments (without compiling them)."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be a genenet Model (e.g. gn.Hill), got {type(model).__name__}")
    C = len(as_conditions(perturbations))
    x = None if x0 is None else per_gene(x0, "x0", model.genes, device=torch.device("cpu"),
                                         dtype=torch.float64, rows=C)
    P, _ = _layout(model, C, x, params)
    return C * P


def check_rows(rows: Any, n_rows: int) -> np.ndarray:
    """``rows``: indices into the batch's ``n_rows`` rows (1-D integers in ``[-n_rows, n_rows)``), a
    boolean mask of length ``n_rows`` (e.g. ``~ss.converged``) or a slice -> int64 array of
    non-negative indices in the given order."""
    if isinstance(rows, slice):
        return np.arange(n_rows)[rows]
    idx = np.asarray(rows.detach().cpu() if isinstance(rows, Tensor) else rows)
    if idx.dtype == bool and idx.ndim == 1:
        if len(idx) != n_rows:
            raise ValueError(f"rows as a boolean mask must have one entry per row ({n_rows}), got {len(idx)}")
        return np.flatnonzero(idx)
    if idx.ndim != 1 or not (idx.size == 0 or np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"rows must be a slice, a boolean mask or 1-D integer indices, got shape {idx.shape} "
                         f"of {idx.dtype}")
    bad = (idx < -n_rows) | (idx >= n_rows)
    if bad.any():
        raise ValueError(f"rows holds {int(idx[bad][0])}; allowed: -{n_rows} .. {n_rows - 1} (the batch has "
                         f"{n_rows} rows: conditions x parameter sets)")
    return np.where(idx < 0, idx + n_rows, idx).astype(np.int64)


def build_batch(model: Model, perturbations: Any, x0: Any, params: Mapping[str, Any] | None, *,
                device: torch.device, dtype: torch.dtype, rows: Any = None) -> Batch:
    """Compile conditions, expand parameters and initial states to ``B = C * P`` rows.

    ``x0``: None (model default), scalar / (G,) / {gene: value} (every row),
    (P, G) (per parameter set), (C*P, G) (per row), or, for one condition and one
    parameter set, (N, G) (N rows from N initial states). Knockouts start at 0 and
    clamps at their value, whatever ``x0`` says. ``rows`` (see :func:`check_rows`):
    only these of the B rows, in that order, labelled as in the whole batch.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a genenet Model (e.g. gn.Hill), got {type(model).__name__}")
    conditions = as_conditions(perturbations)
    compiled = compile_conditions(conditions, model)  # validates before anything is computed
    C, G = len(conditions), model.n_genes
    x = _initial(model, x0, C * _n_sets(model, params), device=device, dtype=dtype)
    P, replicates = _layout(model, C, x, params)
    B = C * P
    index = torch.arange(B, device=device) if rows is None else torch.as_tensor(check_rows(rows, B), device=device)
    cond_of_row = torch.div(index, P, rounding_mode="floor")
    set_of_row = index - cond_of_row * P
    n = index.shape[0]
    if x.ndim == 1 or x.shape[0] == 1:
        x = x.reshape(1, G).expand(n, G)
    elif x.shape[0] == P and B != P:
        x = x.index_select(0, set_of_row)
    elif rows is not None:
        x = x.index_select(0, index)
    mask = torch.as_tensor(compiled.x0_mask, device=device).index_select(0, cond_of_row)
    value = torch.as_tensor(compiled.x0_value, device=device, dtype=dtype).index_select(0, cond_of_row)
    x = torch.where(mask, value, x)

    labels_c = compiled.labels
    if replicates:
        labels = [f"{labels_c[0]} #{i}" for i in index.tolist()]
        set_of_row = torch.zeros(n, dtype=torch.long, device=device)
    elif P == 1:
        labels = [labels_c[c] for c in cond_of_row.tolist()]
    else:
        labels = [f"{labels_c[c]} | set {s}" for c, s in zip(cond_of_row.tolist(), set_of_row.tolist())]
    p = model.row_params(set_of_row, n, device=device, dtype=dtype, overrides=params)
    for name, v in p.items():
        if not torch.isfinite(v.detach()).all():
            raise ValueError(f"parameter {name!r} is not finite")
    term = ConditionTerm(model, compiled, p, cond_of_row, dtype=dtype)
    return Batch(term=term, x0=x, labels=labels, conditions=[labels_c[c] for c in cond_of_row.tolist()],
                 parameter_sets=set_of_row.cpu().numpy(), n_conditions=C, n_sets=P, x0_fixed=mask,
                 index=index.cpu().numpy())

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

__all__ = ["Batch", "build_batch"]


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


def build_batch(model: Model, perturbations: Any, x0: Any, params: Mapping[str, Any] | None, *,
                device: torch.device, dtype: torch.dtype) -> Batch:
    """Compile conditions, expand parameters and initial states to ``B = C * P`` rows.

    ``x0``: None (model default), scalar / (G,) / {gene: value} (every row),
    (P, G) (per parameter set), (C*P, G) (per row), or, for one condition and one
    parameter set, (N, G) (N rows from N initial states). Knockouts start at 0 and
    clamps at their value, whatever ``x0`` says.
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a genenet Model (e.g. gn.Hill), got {type(model).__name__}")
    conditions = as_conditions(perturbations)
    compiled = compile_conditions(conditions, model)  # validates before anything is computed
    C, P = len(conditions), _n_sets(model, params)
    G = model.n_genes
    if x0 is None:
        x = model.default_x0(1, device=device, dtype=dtype)[0]
    else:
        x = per_gene(x0, "x0", model.genes, device=device, dtype=dtype, rows=C * P)
        check_state(x, model.genes)
    replicates = False
    if x.ndim == 2 and x.shape[0] not in (1, P, C * P):
        if C == 1 and P == 1:  # many initial states of one condition and one parameter set
            P, replicates = x.shape[0], True
        else:
            allowed = f"1, {P} (one per parameter set)" + (
                f" or {C * P} (conditions x parameter sets)" if C > 1 else "")
            raise ValueError(f"x0 has {x.shape[0]} rows; allowed: {allowed}")
    B = C * P
    cond_of_row = torch.arange(C, device=device).repeat_interleave(P)
    set_of_row = torch.arange(P, device=device).repeat(C)
    if x.ndim == 1:
        x = x.expand(B, G)
    elif x.shape[0] == 1:
        x = x.expand(B, G)
    elif x.shape[0] == P and B != P:
        x = x.index_select(0, set_of_row)
    mask = torch.as_tensor(compiled.x0_mask, device=device).index_select(0, cond_of_row)
    value = torch.as_tensor(compiled.x0_value, device=device, dtype=dtype).index_select(0, cond_of_row)
    x = torch.where(mask, value, x)

    if replicates:
        set_of_row = torch.zeros(B, dtype=torch.long, device=device)
    p = model.row_params(set_of_row, B, device=device, dtype=dtype, overrides=params)
    for name, v in p.items():
        if not torch.isfinite(v.detach()).all():
            raise ValueError(f"parameter {name!r} is not finite")
    term = ConditionTerm(model, compiled, p, cond_of_row, dtype=dtype)

    labels_c = compiled.labels
    if replicates:
        labels = [f"{labels_c[0]} #{i}" for i in range(B)]
    elif P == 1:
        labels = list(labels_c)
    else:
        labels = [f"{labels_c[c]} | set {s}" for c in range(C) for s in range(P)]
    return Batch(term=term, x0=x, labels=labels, conditions=[labels_c[c] for c in cond_of_row.tolist()],
                 parameter_sets=set_of_row.cpu().numpy(), n_conditions=C, n_sets=P, x0_fixed=mask)

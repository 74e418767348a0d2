"""Screen read-outs: a tidy table of each condition's levels and log2 fold change against wild type."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .perturb import WILD_TYPE

__all__ = ["screen_table"]


def _levels(result: Any) -> np.ndarray:
    """(B, G) final (Trajectory) or steady-state (SteadyState) levels as numpy."""
    x = result.x if hasattr(result, "x") else result.final
    return x.detach().cpu().numpy()


def screen_table(result: Any, reference: str = WILD_TYPE, pseudocount: float = 1e-3) -> pd.DataFrame:
    """Each condition's levels and ``log2 fold change`` against the reference condition.

    Parameters
    ----------
    result : Trajectory (its final time point) or SteadyState (its ``.x``) of a screen
        that includes the ``reference`` condition.
    reference : label of the reference condition (default ``"wild type"``).
    pseudocount : added to both levels before the ratio,
        ``log2fc = log2((x + pc) / (x_ref + pc))``, so knocked-out genes (x = 0) get a
        finite, strongly negative value.

    Returns
    -------
    DataFrame with columns ``condition, parameter_set, gene, value, reference_value,
    log2fc`` (and ``converged`` for steady states), one row per condition x set x gene.
    The reference is matched within each parameter set.
    """
    if not pseudocount > 0:
        raise ValueError(f"pseudocount must be > 0, got {pseudocount!r}")
    x = _levels(result)
    conditions = np.asarray(result.conditions, dtype=object)
    sets = np.asarray(result.parameter_sets)
    is_ref = conditions == reference
    if not is_ref.any():
        raise KeyError(f"reference condition {reference!r} is not in the result; conditions include "
                       f"{sorted(set(conditions.tolist()))[:5]}")
    ref_rows = np.full(sets.max() + 1, -1)
    ref_rows[sets[is_ref]] = np.nonzero(is_ref)[0]
    if (ref_rows[np.unique(sets)] < 0).any():
        raise ValueError(f"reference {reference!r} is missing for some parameter sets")
    ref = x[ref_rows[sets]]
    B, G = x.shape
    genes = np.asarray(result.genes, dtype=object)
    frame = pd.DataFrame({
        "condition": np.repeat(conditions, G),
        "parameter_set": np.repeat(sets, G),
        "gene": np.tile(genes, B),
        "value": x.ravel(),
        "reference_value": ref.ravel(),
        "log2fc": np.log2((x + pseudocount) / (ref + pseudocount)).ravel(),
    })
    converged = getattr(result, "converged", None)
    if converged is not None:
        frame["converged"] = np.repeat(np.asarray(converged.detach().cpu() if hasattr(converged, "detach")
                                                  else converged), G)
    return frame

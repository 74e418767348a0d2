"""Parameter files: JSON or a long CSV table, applied to a model by name and label.

JSON: ``{"production": 5, "degradation": [1, 2, ...], "threshold": {"A -| B": 3}}``
- a scalar sets every entry, a list sets entries in order (or is a (P, n) nested
  list for an ensemble), a dict sets the named entries (gene names, or edge labels
  such as ``"A -> B"`` / ``"A -| B"``; ``"A,B"`` also works) and keeps the rest.

CSV: columns ``name, entry, value`` (``entry`` empty for scalars), as written by
``model.param_table()`` (an optional ``parameter_set`` column selects a set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..models.base import Model

__all__ = ["read_params", "apply_params"]


def _entry_index(model: Model, name: str, label: str) -> int:
    labels = model.labels(name)
    if label in labels:
        return labels.index(label)
    net = getattr(model, "net", None)
    if net is not None and model.specs[name].scope == "edge":
        for sep in ("->", "-|", ",", "\t", " "):
            if sep in label:
                src, tgt = (s.strip() for s in label.split(sep, 1))
                return net.edge_index(src, tgt)
    raise KeyError(f"parameter {name!r} has no entry {label!r}; entries are {labels[:8]}"
                   f"{'...' if len(labels) > 8 else ''}")


def apply_params(model: Model, values: dict[str, Any]) -> Model:
    """Set parameters from ``{name: scalar | list | {label: value}}`` on ``model`` (in place)."""
    updates = {}
    for name, value in values.items():
        model._spec(name)
        if isinstance(value, dict):
            current = model.params[name].detach().cpu().numpy().copy()
            for label, v in value.items():
                current[:, _entry_index(model, name, str(label))] = float(v)
            updates[name] = current
        else:
            updates[name] = np.asarray(value, dtype=np.float64)
    return model.set_params(**updates)


def read_params(path: str | Path, model: Model) -> dict[str, Any]:
    """Read a JSON or CSV parameter file into ``{name: value}`` for :func:`apply_params`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parameter file {str(path)!r} does not exist")
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object {{name: value}}, got {type(data).__name__}")
        return data
    if path.suffix.lower() in (".csv", ".tsv"):
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", keep_default_na=False)
        missing = {"name", "value"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}; need name, entry, value")
        if "parameter_set" in table.columns and table["parameter_set"].nunique() > 1:
            raise ValueError(f"{path}: holds several parameter sets; filter one before reading")
        out: dict[str, Any] = {}
        for row in table.itertuples(index=False):
            entry = str(getattr(row, "entry", "") or "")
            if entry == "":
                out[row.name] = float(row.value)
            else:
                out.setdefault(row.name, {})[entry] = float(row.value)
        return out
    raise ValueError(f"unknown parameter file type {path.suffix!r}; allowed: .json, .csv, .tsv")

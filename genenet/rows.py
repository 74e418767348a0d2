"""Results of row chunks put back together: the field-wise concatenation that every per-row result
(Trajectory, SteadyState, SteadyStates, an optimizer's starts) shares, and the move to the host
that a result needs before it leaves a worker."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = ["LOCAL", "concat_rows", "to_host"]

R = TypeVar("R")

#: metadata of a dataclass field that belongs to the process that made the result (a reference to
#: its batch...): not sent back from a worker, not concatenated; such a field takes its default
LOCAL = {"genenet.local": True}


def _carried(f: dataclasses.Field) -> bool:
    return f.init and not f.metadata.get("genenet.local", False)


def _concat(values: list[Any], name: str) -> Any:
    first = values[0]
    if first is None:
        if any(v is not None for v in values):
            raise ValueError(f"field {name!r} is None in some parts only")
        return None
    if isinstance(first, Tensor):
        return torch.cat([v.to(first.device) for v in values], dim=0)
    if isinstance(first, np.ndarray):
        return np.concatenate(values, axis=0)
    if isinstance(first, pd.DataFrame):
        return pd.concat(values, ignore_index=True)
    if isinstance(first, list):
        return [item for v in values for item in v]
    if isinstance(first, dict):
        keys = set(first)
        if any(set(v) != keys for v in values):
            raise ValueError(f"field {name!r} has different keys in different parts")
        return {k: _concat([v[k] for v in values], f"{name}[{k!r}]") for k in first}
    raise TypeError(f"field {name!r} of type {type(first).__name__} has no row-wise concatenation")


def concat_rows(parts: Sequence[R], shared: Collection[str] = ()) -> R:
    """One result from results of consecutive row chunks, of one dataclass type.

    Every field is concatenated along its first axis (tensors, arrays, data frames;
    lists chained; dicts key by key) except the ``shared`` ones (times, gene names, the
    method...), taken from the first part, and fields that are not part of the
    constructor (``init=False``). Per-row order is the parts' order.
    """
    if not parts:
        raise ValueError("concat_rows needs at least one part")
    first = parts[0]
    kind = type(first)
    if any(type(p) is not kind for p in parts):
        raise TypeError(f"parts must all be {kind.__name__}")
    values = {}
    for f in dataclasses.fields(kind):
        if not _carried(f):
            continue
        got = [getattr(p, f.name) for p in parts]
        values[f.name] = got[0] if f.name in shared else _concat(got, f.name)
    return kind(**values)


def to_host(obj: Any) -> Any:
    """``obj`` with its tensors detached and on the CPU (dataclasses, dicts, lists, tuples walked), so
    that it unpickles on a machine without the worker's device; :data:`LOCAL` fields dropped."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        moved = {f.name: to_host(getattr(obj, f.name)) for f in dataclasses.fields(obj) if _carried(f)}
        return type(obj)(**moved)
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_host(v) for v in obj)
    return obj

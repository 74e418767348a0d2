"""Small named validators run before any solver loop.

Each raises ``ValueError``/``TypeError``/``KeyError`` with a message that names
the argument (and gene or row) at fault and what is allowed, as scipy's
``solve_ivp`` validators do. None of them ``assert``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["resolve_device", "resolve_dtype", "check_times", "check_state", "check_tolerance", "check_positive"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device; "
                         "allowed: 'auto', 'cpu', 'cuda', 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA but torch.cuda.is_available() is False; "
                         "use 'auto' or 'cpu'")
    return dev


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    """``None`` -> float64 on CPU, float32 on CUDA; accepts torch/numpy dtypes and their names."""
    if dtype is None:
        return torch.float32 if device.type == "cuda" else torch.float64
    table = {"float32": torch.float32, "float64": torch.float64, "float": torch.float32, "double": torch.float64,
             torch.float32: torch.float32, torch.float64: torch.float64,
             np.float32: torch.float32, np.float64: torch.float64}
    key = dtype if not isinstance(dtype, np.dtype) else dtype.type
    if key not in table:
        raise TypeError(f"dtype={dtype!r} is not supported; allowed: torch.float32, torch.float64")
    return table[key]


def as_tensor(value: Any, name: str, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Convert to a tensor on ``device``/``dtype``; a tensor keeps its autograd graph."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be numeric (number, array or tensor), got {type(value).__name__}") from None
    if not arr.flags.writeable:  # a read-only view (pandas' to_numpy): torch warns about sharing it
        arr = arr.copy()
    return torch.as_tensor(arr, device=device, dtype=dtype)


def check_times(t: Any, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Save times: a finite, strictly increasing 1-D array with at least one entry (the initial time)."""
    tt = as_tensor(t, "t", device=device, dtype=dtype).detach()
    if tt.ndim != 1:
        raise ValueError(f"t must be a 1-D array of save times, got shape {tuple(tt.shape)}")
    if tt.numel() == 0:
        raise ValueError("t is empty; it must hold at least the initial time")
    if not torch.isfinite(tt).all():
        bad = torch.nonzero(~torch.isfinite(tt)).flatten().tolist()
        raise ValueError(f"t has non-finite entries at positions {bad}")
    d = tt[1:] - tt[:-1]
    if (d <= 0).any():
        i = int(torch.nonzero(d <= 0)[0])
        raise ValueError(f"t must be strictly increasing; t[{i}]={float(tt[i])} >= t[{i + 1}]={float(tt[i + 1])}")
    return tt


def per_gene(value: Any, name: str, genes: Sequence[str], *, device: torch.device, dtype: torch.dtype,
             rows: int | None = None) -> torch.Tensor:
    """A scalar, a ``(G,)`` array, a ``{gene: value}`` dict (unnamed genes 0) or (with ``rows``)
    a ``(B, G)`` array -> tensor.

    Returns shape ``(G,)`` or ``(B, G)``.
    """
    G = len(genes)
    if isinstance(value, Mapping):
        index = {g: i for i, g in enumerate(genes)}
        out = torch.zeros(G, device=device, dtype=dtype)
        for g, v in value.items():
            if g not in index:
                raise KeyError(f"{name} names unknown gene {g!r}; genes are {list(genes)}")
            out[index[g]] = float(v)
        return out
    tensor = as_tensor(value, name, device=device, dtype=dtype)
    if tensor.ndim == 0:
        return tensor.expand(G)
    if tensor.ndim == 1 and tensor.shape[0] == G:
        return tensor
    if rows is not None and tensor.ndim == 2 and tensor.shape[1] == G:
        return tensor
    allowed = f"a scalar, shape ({G},)" + (f" or (B, {G})" if rows is not None else "")
    raise ValueError(f"{name} has shape {tuple(tensor.shape)}; allowed: {allowed} for genes {list(genes)[:6]}"
                     f"{'...' if G > 6 else ''}")


def check_state(x0: torch.Tensor, genes: Sequence[str], name: str = "x0") -> None:
    """Every entry finite; names the row and gene of the first offender."""
    finite = torch.isfinite(x0.detach())
    if not finite.all():
        idx = torch.nonzero(~finite)[0].tolist()
        row, gene = (idx if len(idx) == 2 else (None, idx[0]))
        where = f" row {row}," if row is not None else ""
        raise ValueError(f"{name} is not finite at{where} gene {genes[gene]!r} "
                         f"(value {float(x0.detach().reshape(-1, len(genes))[row or 0, gene])})")


def check_tolerance(value: Any, name: str, genes: Sequence[str], *, device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """rtol/atol: a finite scalar or per-gene ``(G,)`` array, every entry >= 0."""
    if isinstance(value, Mapping):
        raise TypeError(f"{name} must be a scalar or a ({len(genes)},) array in gene order, not a dict")
    tol = per_gene(value, name, genes, device=device, dtype=dtype)
    if not torch.isfinite(tol).all() or (tol < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return tol


def check_positive(value: float, name: str, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if not ok or isinstance(value, bool) or not value > 0 or not np.isfinite(value):
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")

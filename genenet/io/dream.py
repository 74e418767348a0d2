"""Readers for the DREAM challenge file formats (DREAM4 in-silico networks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import ExpressionData

__all__ = ["read_dream_timeseries", "read_dream_gold"]


def read_dream_timeseries(path: str | Path, *, prefix: str = "ts") -> ExpressionData:
    """A DREAM4 ``*_timeseries.tsv``: a ``Time`` column and one column per gene, several time
    courses one after another, separated by blank lines. Each course becomes a condition
    ``ts1, ts2, ...`` (a new course starts where the time drops back)."""
    frame = pd.read_csv(path, sep="\t", skip_blank_lines=True)
    if "Time" not in frame.columns:
        raise ValueError(f"{path}: no 'Time' column; columns are {list(frame.columns)}")
    course = np.concatenate([[0], np.cumsum(np.diff(frame["Time"].to_numpy()) < 0)])
    frame["condition"] = [f"{prefix}{c + 1}" for c in course]
    return ExpressionData.from_wide(frame, time="Time", condition="condition")


def read_dream_gold(path: str | Path) -> pd.DataFrame:
    """A DREAM gold standard ``regulator target 0/1`` (no header) -> DataFrame ``source, target, label``."""
    gold = pd.read_csv(path, sep="\t", header=None, names=["source", "target", "label"])
    if gold.isna().any().any():
        raise ValueError(f"{path}: expected three tab-separated columns: regulator, target, 0/1")
    return gold.astype({"source": str, "target": str, "label": int})

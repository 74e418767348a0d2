"""ExpressionData: measured expression time courses as a validated long table.

Columns: ``condition, time, gene, value`` and optionally ``sd`` (measurement
standard deviation) and ``replicate``. A measurement that was not taken is simply
absent (it is masked out of any loss); a value that is NaN or infinite is an
error unless ``dropna=True`` drops those rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ExpressionData"]

_REQUIRED = ["condition", "time", "gene", "value"]
_OPTIONAL = ["sd", "replicate"]


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.nonzero(mask)[0]
    return ", ".join(map(str, idx[:limit])) + (f" ... ({len(idx)} rows)" if len(idx) > limit else "")


@dataclass(frozen=True)
class ExpressionData:
    """A long table of measurements (see module doc). Build with :meth:`from_frame`,
    :meth:`from_csv`, :meth:`from_wide` or :meth:`from_anndata`."""

    table: pd.DataFrame

    # ------------------------------------------------------------ builders
    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, condition: str | None = None, dropna: bool = False,
                   columns: dict[str, str] | None = None) -> ExpressionData:
        """From a long DataFrame with columns ``condition, time, gene, value`` [``sd``, ``replicate``].

        ``condition`` fills a missing condition column with one label; ``columns`` renames
        columns first (``{"expr": "value"}``). Raises ``ValueError`` naming the column or the
        rows at fault: missing columns, non-numeric or non-finite times/values (unless
        ``dropna``), negative or zero sd, duplicate measurements of one replicate.
        """
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
        df = frame.rename(columns=columns or {}).copy()
        if "condition" not in df.columns:
            df["condition"] = condition if condition is not None else "wild type"
        missing = [c for c in _REQUIRED if c not in df.columns]
        if missing:
            raise ValueError(f"data is missing columns {missing}; need {_REQUIRED} (optional {_OPTIONAL})")
        keep = _REQUIRED + [c for c in _OPTIONAL if c in df.columns]
        df = df[keep].reset_index(drop=True)
        df["condition"] = df["condition"].astype(str)
        df["gene"] = df["gene"].astype(str)
        for col in ["time", "value"] + (["sd"] if "sd" in df.columns else []):
            num = pd.to_numeric(df[col], errors="coerce")
            bad_type = num.isna() & df[col].notna()
            if bad_type.any():
                raise ValueError(f"column {col!r} has non-numeric entries at rows {_rows(bad_type.to_numpy())}")
            df[col] = num.astype(float)
        bad = ~np.isfinite(df["value"].to_numpy()) | ~np.isfinite(df["time"].to_numpy())
        if "sd" in df.columns:
            bad |= ~np.isfinite(df["sd"].to_numpy())
        if bad.any():
            if not dropna:
                raise ValueError(f"NaN or infinite time/value/sd at rows {_rows(bad)}; drop the rows or pass "
                                 "dropna=True (missing measurements may simply be left out)")
            df = df[~bad].reset_index(drop=True)
        if "sd" in df.columns and (df["sd"] <= 0).any():
            raise ValueError(f"column 'sd' must be > 0; rows {_rows((df['sd'] <= 0).to_numpy())} are not")
        if len(df) == 0:
            raise ValueError("data holds no measurements")
        key = ["condition", "time", "gene"] + (["replicate"] if "replicate" in df.columns else [])
        dup = df.duplicated(key, keep=False).to_numpy()
        if dup.any():
            raise ValueError(f"duplicate measurements of the same {'/'.join(key)} at rows {_rows(dup)}; "
                             "add a 'replicate' column to keep replicates")
        return cls(df.sort_values(["condition", "time", "gene"], kind="stable").reset_index(drop=True))

    @classmethod
    def from_csv(cls, path: str | Path, **kwargs: Any) -> ExpressionData:
        """Read a long CSV (or TSV by extension) and validate it like :meth:`from_frame`."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"data file {str(path)!r} does not exist")
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        return cls.from_frame(pd.read_csv(path, sep=sep), **kwargs)

    @classmethod
    def from_wide(cls, frame: pd.DataFrame, *, time: str = "time", condition: str | None = None,
                  genes: Sequence[str] | None = None, sd: float | None = None, dropna: bool = False
                  ) -> ExpressionData:
        """From a wide table: one row per sample, a ``time`` column, genes as columns.

        ``condition`` names the condition column (else all rows are ``"wild type"``);
        ``genes`` picks the gene columns (default: every other numeric column);
        ``sd`` sets one measurement sd for all values.
        """
        if time not in frame.columns:
            raise ValueError(f"wide data has no time column {time!r}; columns are {list(frame.columns)}")
        if condition is not None and condition not in frame.columns:
            raise ValueError(f"wide data has no condition column {condition!r}")
        id_cols = [time] + ([condition] if condition else []) + (["replicate"] if "replicate" in frame else [])
        if genes is None:
            genes = [c for c in frame.columns if c not in id_cols and pd.api.types.is_numeric_dtype(frame[c])]
        else:
            unknown = [g for g in genes if g not in frame.columns]
            if unknown:
                raise KeyError(f"gene columns {unknown} not in the wide data")
        long = frame.melt(id_vars=id_cols, value_vars=list(genes), var_name="gene", value_name="value")
        long = long.rename(columns={time: "time", **({condition: "condition"} if condition else {})})
        if sd is not None:
            long["sd"] = float(sd)
        return cls.from_frame(long, dropna=dropna)

    @classmethod
    def from_trajectory(cls, traj: Any, *, noise: float = 0.0, seed: int = 0, sd_floor: float = 1e-6
                        ) -> ExpressionData:
        """Synthetic data from a simulated :class:`~genenet.Trajectory` (one parameter set).

        ``noise`` is a relative sd: ``value = y (1 + noise ε)``, ε ~ N(0, 1) with ``seed``; the
        ``sd`` column is then ``noise |value| + sd_floor``. Without noise there is no sd column.
        """
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        frame = traj.to_frame()[["condition", "time", "gene", "value"]]
        if noise:
            rng = np.random.default_rng(seed)
            frame["value"] = frame["value"] * (1 + noise * rng.normal(size=len(frame)))
            frame["sd"] = noise * frame["value"].abs() + sd_floor
        return cls.from_frame(frame)

    @classmethod
    def from_anndata(cls, adata: Any, *, time: str = "time", condition: str | None = None,
                     layer: str | None = None) -> ExpressionData:
        """From an AnnData (cells/samples x genes) with ``obs[time]`` (and ``obs[condition]``).

        Needs the optional ``anndata`` package (``pip install genenet[anndata]``).
        """
        try:
            import anndata  # noqa: F401
        except ImportError:
            raise ImportError("from_anndata needs the optional package anndata: pip install anndata") from None
        X = adata.layers[layer] if layer else adata.X
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
        wide = pd.DataFrame(X, columns=list(map(str, adata.var_names)))
        wide["time"] = np.asarray(adata.obs[time], dtype=float)
        if condition:
            wide["condition"] = np.asarray(adata.obs[condition]).astype(str)
        wide["replicate"] = np.arange(len(wide))
        return cls.from_wide(wide, time="time", condition="condition" if condition else None,
                             genes=list(map(str, adata.var_names)))

    # -------------------------------------------------------------- access
    @property
    def genes(self) -> list[str]:
        return list(dict.fromkeys(self.table["gene"]))

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(self.table["condition"]))

    @property
    def times(self) -> np.ndarray:
        """All distinct measurement times, sorted."""
        return np.unique(self.table["time"].to_numpy())

    @property
    def has_sd(self) -> bool:
        return "sd" in self.table.columns

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (f"ExpressionData({len(self)} measurements, {len(self.conditions)} condition(s), "
                f"{len(self.genes)} genes, {len(self.times)} times)")

    def check_genes(self, genes: Iterable[str]) -> None:
        """``KeyError`` naming data genes that the model does not have."""
        known = set(genes)
        unknown = [g for g in self.genes if g not in known]
        if unknown:
            raise KeyError(f"data genes {unknown} are not in the model (genes: {sorted(known)[:10]}...)")

    def check_times(self, t0: float) -> None:
        """``ValueError`` naming rows measured before the initial time ``t0``."""
        early = self.table["time"].to_numpy() < t0
        if early.any():
            raise ValueError(f"measurements before the initial time {t0} at rows {_rows(early)}")

    def wide(self, condition: str | None = None) -> pd.DataFrame:
        """Mean over replicates, times x genes, for one condition (default the first)."""
        cond = condition or self.conditions[0]
        sub = self.table[self.table.condition == cond]
        return sub.pivot_table(index="time", columns="gene", values="value", aggfunc="mean")

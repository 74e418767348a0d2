"""The networks bundled in the repository's ``data/networks/`` folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..network import Network
from .edgelists import read_network

__all__ = ["DATA_DIR", "bundled_networks", "load_network", "load_dream4"]

#: ``data/`` at the repository root (genenet is installed editable from the checkout).
DATA_DIR = Path(__file__).resolve().parents[2] / "data"
_NETWORKS = DATA_DIR / "networks"
DEFAULT_NETWORK = "myeloid"


def bundled_networks() -> list[str]:
    """Names of the bundled networks (file stems in ``data/networks/``)."""
    if not _NETWORKS.is_dir():
        return []
    return sorted(p.stem for p in _NETWORKS.iterdir() if p.suffix in (".tsv", ".topo"))


def load_network(name_or_path: str | Path = DEFAULT_NETWORK) -> Network:
    """Load a bundled network by name (``"toggle_switch"``, ``"repressilator"``,
    ``"myeloid"``, ...) or any network file by path."""
    path = Path(name_or_path)
    if path.suffix and path.exists():
        return read_network(path)
    for suffix in (".topo", ".tsv"):
        candidate = _NETWORKS / f"{name_or_path}{suffix}"
        if candidate.exists():
            return read_network(candidate)
    if path.suffix:
        raise FileNotFoundError(f"network file {str(path)!r} does not exist")
    raise KeyError(f"unknown network {str(name_or_path)!r}; bundled networks: {bundled_networks()}, "
                   "or give a path to a .topo/.tsv file")


def load_dream4(network: int) -> tuple[Any, Any]:
    """The bundled DREAM4 size-10 time series of ``network`` (1-4) as ``(ExpressionData with
    conditions ts1..ts5, gold standard DataFrame source/target/label)``; see data/dream4/SOURCE.md."""
    from .dream import read_dream_gold, read_dream_timeseries

    if network not in (1, 2, 3, 4):
        raise ValueError(f"bundled DREAM4 networks are 1, 2, 3 and 4, got {network!r}")
    folder = DATA_DIR / "dream4"
    return (read_dream_timeseries(folder / f"insilico_size10_{network}_timeseries.tsv"),
            read_dream_gold(folder / f"DREAM4_GoldStandard_InSilico_Size10_{network}.tsv"))

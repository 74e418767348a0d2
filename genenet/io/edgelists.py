"""Readers and writers for network topologies: RACIPE ``.topo`` and TSV edge lists.

RACIPE ``.topo``: a header line ``Source Target Type`` then one edge per line,
whitespace separated, ``Type`` 1 = activation, 2 = inhibition.

TSV edge list: ``source<TAB>target<TAB>sign`` per line, sign any of the forms
:func:`genenet.network.parse_sign` accepts (``1``/``-1``, ``+``/``-``,
``activation``/``repression``); an optional header line whose third column is
``sign``/``type`` is skipped; ``#`` starts a comment.
"""

from __future__ import annotations

from pathlib import Path

from ..network import Network, parse_sign

__all__ = ["read_topo", "write_topo", "read_tsv", "write_tsv", "read_network"]

_TOPO_TYPES = {"1": 1, "2": -1}


def _rows(path: Path, sep: str | None) -> list[tuple[int, list[str]]]:
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            rows.append((lineno, [c.strip() for c in line.split(sep)]))
    return rows


def read_topo(path: str | Path) -> Network:
    """Read a RACIPE ``.topo`` file (``Source Target Type``; 1 activation, 2 inhibition)."""
    path = Path(path)
    edges = []
    for lineno, cols in _rows(path, None):
        if len(cols) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'Source Target Type', got {cols}")
        if [c.lower() for c in cols] == ["source", "target", "type"]:
            continue
        if cols[2] not in _TOPO_TYPES:
            raise ValueError(f"{path}:{lineno}: edge {cols[0]} -> {cols[1]} has type {cols[2]!r}; "
                             "allowed: 1 (activation), 2 (inhibition)")
        edges.append((cols[0], cols[1], _TOPO_TYPES[cols[2]]))
    return Network.from_edges(edges, name=path.stem)


def write_topo(net: Network, path: str | Path) -> None:
    """Write ``net`` as a RACIPE ``.topo`` file."""
    lines = ["Source Target Type"] + [f"{e.source} {e.target} {1 if e.sign > 0 else 2}" for e in net.edges]
    Path(path).write_text("\n".join(lines) + "\n")


def read_tsv(path: str | Path) -> Network:
    """Read a tab-separated ``source target sign`` edge list."""
    path = Path(path)
    edges = []
    for lineno, cols in _rows(path, "\t"):
        if len(cols) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'source<TAB>target<TAB>sign', got {cols}")
        if cols[2].lower() in ("sign", "type"):
            continue
        try:
            sign = parse_sign(cols[2] if not cols[2].lstrip("+-").isdigit() else int(cols[2]),
                              edge=f"{cols[0]} -> {cols[1]}")
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: {err}") from None
        edges.append((cols[0], cols[1], sign))
    return Network.from_edges(edges, name=path.stem)


def write_tsv(net: Network, path: str | Path) -> None:
    """Write ``net`` as a TSV edge list with signs 1/-1 (no header)."""
    Path(path).write_text("".join(f"{e.source}\t{e.target}\t{e.sign}\n" for e in net.edges))


def read_network(path: str | Path) -> Network:
    """Read a network by extension: ``.topo`` (RACIPE), ``.tsv``/``.txt`` (edge list),
    ``.graphml`` (networkx, edge attribute ``sign``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"network file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".topo":
        return read_topo(path)
    if suffix in (".tsv", ".txt", ".tab"):
        return read_tsv(path)
    if suffix == ".graphml":
        import networkx as nx

        return Network.from_networkx(nx.read_graphml(path), name=path.stem)
    raise ValueError(f"unknown network file type {suffix!r} for {path}; allowed: .topo, .tsv, .txt, .graphml")

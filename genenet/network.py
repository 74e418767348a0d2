"""Gene regulatory network topology: genes and signed regulatory edges.

A :class:`Network` is immutable. Its ``edges`` order is the order in which
per-edge parameters (threshold, hill coefficient, fold change) are stored, so it
never changes once the network is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Edge", "Network", "parse_sign"]

_SIGNS: dict[Any, int] = {
    "+": 1, "-": -1, 1: 1, -1: -1,
    "activation": 1, "repression": -1, "activator": 1, "repressor": -1,
    "inhibition": -1, "act": 1, "rep": -1, "inh": -1,
}
_ALLOWED = "'+'/'-', 1/-1, 'activation'/'repression'"


def parse_sign(sign: Any, *, edge: object = None) -> int:
    """Map a user-given sign to ``+1`` (activation) or ``-1`` (repression).

    Accepted: ``"+"``/``"-"``, ``1``/``-1`` (ints or floats equal to them) and
    ``"activation"``/``"repression"`` (case-insensitive; also ``"inhibition"``).
    """
    key = sign.strip().lower() if isinstance(sign, str) else sign
    if isinstance(key, (float, np.floating, np.integer)) and float(key) in (1.0, -1.0):
        key = int(key)
    if isinstance(key, bool) or key not in _SIGNS:
        where = f" on edge {edge}" if edge is not None else ""
        raise ValueError(f"unknown sign {sign!r}{where}; allowed: {_ALLOWED}")
    return _SIGNS[key]


class Edge(NamedTuple):
    """One regulation ``source -> target``; ``sign`` is +1 (activation) or -1 (repression).

    A named tuple, so ``source, target, sign = edge`` works.
    """

    source: str
    target: str
    sign: int

    @property
    def kind(self) -> str:
        """``"activation"`` or ``"repression"``."""
        return "activation" if self.sign > 0 else "repression"

    def __str__(self) -> str:
        return f"{self.source} -{'>' if self.sign > 0 else '|'} {self.target}"


class Network:
    """A signed, directed gene regulatory network (immutable).

    Attributes
    ----------
    genes : list[str]
        Gene names; the state vector of every model follows this order (``G`` genes).
    edges : list[Edge]
        Regulations ``(source, target, sign)`` in a fixed order (``E`` edges);
        per-edge parameters follow it.

    Build one with :meth:`from_edges`, :meth:`from_networkx` or the readers in
    :mod:`genenet.io`. Self-loops (autoregulation) are allowed; duplicate
    ``(source, target)`` pairs are not.
    """

    def __init__(self, genes: Sequence[str], edges: Sequence[Edge], name: str = "") -> None:
        self._genes = tuple(genes)
        self._edges = tuple(edges)
        self.name = name
        if len(self._genes) == 0:
            raise ValueError("empty network: a Network needs at least one gene")
        index: dict[str, int] = {}
        for g in self._genes:
            if not isinstance(g, str) or not g:
                raise ValueError(f"gene names must be non-empty strings, got {g!r}")
            if g in index:
                raise ValueError(f"duplicate gene {g!r} in genes")
            index[g] = len(index)
        seen: set[tuple[str, str]] = set()
        for e in self._edges:
            for end in (e.source, e.target):
                if end not in index:
                    raise KeyError(f"edge {e} names gene {end!r}, which is not in genes {list(self._genes)}")
            if (e.source, e.target) in seen:
                raise ValueError(f"duplicate edge {e.source!r} -> {e.target!r}")
            seen.add((e.source, e.target))
        self._index = index

    @property
    def genes(self) -> list[str]:
        """Gene names in state order (a copy)."""
        return list(self._genes)

    @property
    def edges(self) -> list[Edge]:
        """Edges in parameter order (a copy)."""
        return list(self._edges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Network) and self._genes == other._genes and self._edges == other._edges

    def __hash__(self) -> int:
        return hash((self._genes, self._edges))

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_edges(
        cls,
        edges: Iterable[Sequence[Any]],
        genes: Sequence[str] | None = None,
        *,
        name: str = "",
    ) -> Network:
        """Build a network from ``(source, target, sign)`` triples.

        Parameters
        ----------
        edges : iterable of (source, target, sign)
            ``sign`` is ``"+"``/``"-"``, ``1``/``-1`` or ``"activation"``/``"repression"``.
        genes : sequence of str, optional
            Fixes the gene order (and may add genes without edges). By default,
            genes are ordered by first appearance in ``edges``.

        Raises
        ------
        ValueError
            Empty network, duplicate edge, malformed edge or unknown sign.
        KeyError
            An edge names a gene missing from an explicit ``genes`` list.
        """
        parsed: list[Edge] = []
        for i, e in enumerate(edges):
            if isinstance(e, Edge):
                parsed.append(e)
                continue
            if isinstance(e, str) or len(e) != 3:
                raise ValueError(f"edge #{i} {e!r} must be a (source, target, sign) triple")
            s, t, sign = e
            parsed.append(Edge(str(s), str(t), parse_sign(sign, edge=f"{s} -> {t}")))
        if genes is None:
            order: dict[str, None] = {}
            for e in parsed:
                order.setdefault(e.source)
                order.setdefault(e.target)
            genes = list(order)
        return cls([str(g) for g in genes], parsed, name=name)

    @classmethod
    def random(cls, n_genes: int, regulators: int = 3, seed: int | None = 0, *,
               p_activation: float = 0.5, self_loops: bool = True) -> Network:
        """A random network in which every gene has exactly ``regulators`` distinct regulators.

        Genes are ``G0 .. G{n-1}``; each gene draws its regulators uniformly without
        replacement (itself included when ``self_loops``), each edge activating with
        probability ``p_activation``. ``E = n_genes * regulators`` edges.
        """
        if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
            raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}")
        pool = n_genes if self_loops else n_genes - 1
        if not 0 <= regulators <= pool:
            raise ValueError(f"regulators must lie in [0, {pool}] for {n_genes} genes, got {regulators!r}")
        if not 0.0 <= p_activation <= 1.0:
            raise ValueError(f"p_activation must lie in [0, 1], got {p_activation!r}")
        rng = np.random.default_rng(seed)
        genes = [f"G{i}" for i in range(n_genes)]
        edges = []
        for i in range(n_genes):
            candidates = [j for j in range(n_genes) if self_loops or j != i]
            for j in rng.choice(candidates, regulators, replace=False):
                edges.append((genes[j], genes[i], 1 if rng.random() < p_activation else -1))
        return cls.from_edges(edges, genes=genes, name=f"random_{n_genes}x{regulators}_seed{seed}")

    @classmethod
    def complete(cls, genes: Sequence[str], *, self_loops: bool = False, name: str = "complete") -> Network:
        """Every ordered pair ``j -> i`` (``i != j`` unless ``self_loops``) as an activating edge: the
        candidate network of structure learning, for models with signed weights (:class:`~genenet.Sigmoid`)."""
        genes = [str(g) for g in genes]
        if not genes:
            raise ValueError("complete() needs at least one gene")
        edges = [(s, t, 1) for t in genes for s in genes if self_loops or s != t]
        return cls.from_edges(edges, genes=genes, name=name)

    @classmethod
    def from_networkx(cls, graph: Any, *, sign_attr: str = "sign", name: str = "") -> Network:
        """Build from a ``networkx.DiGraph`` whose edges carry a ``sign`` attribute."""
        edges = []
        for s, t, d in graph.edges(data=True):
            if sign_attr not in d:
                raise ValueError(f"edge {s!r} -> {t!r} has no {sign_attr!r} attribute; allowed signs: {_ALLOWED}")
            edges.append((s, t, d[sign_attr]))
        return cls.from_edges(edges, genes=[str(n) for n in graph.nodes], name=name or str(graph.name or ""))

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` with edge attribute ``sign`` (+1/-1)."""
        import networkx as nx

        g = nx.DiGraph(name=self.name)
        g.add_nodes_from(self._genes)
        for e in self._edges:
            g.add_edge(e.source, e.target, sign=e.sign)
        return g

    # ------------------------------------------------------------------ access
    @property
    def n_genes(self) -> int:
        """Number of genes G."""
        return len(self._genes)

    @property
    def n_edges(self) -> int:
        """Number of edges E."""
        return len(self._edges)

    def index(self, gene: str) -> int:
        """Position of ``gene`` in :attr:`genes`; ``KeyError`` naming it if unknown."""
        try:
            return self._index[gene]
        except (KeyError, TypeError):
            raise KeyError(f"unknown gene {gene!r}; genes are {list(self._genes)}") from None

    def indices(self, genes: str | Iterable[str]) -> list[int]:
        if isinstance(genes, str):
            genes = [genes]
        return [self.index(g) for g in genes]

    def regulators(self, gene: str) -> list[str]:
        """Names of the genes regulating ``gene`` (edge sources into it), in edge order."""
        return [e.source for e in self.in_edges(gene)]

    def in_edges(self, gene: str) -> list[Edge]:
        """Edges into ``gene``, in edge order (with their signs)."""
        self.index(gene)
        return [e for e in self._edges if e.target == gene]

    def out_edges(self, gene: str) -> list[Edge]:
        """Edges out of ``gene``, in edge order."""
        self.index(gene)
        return [e for e in self._edges if e.source == gene]

    def edge_index(self, source: str, target: str) -> int:
        """Position of edge ``source -> target`` in :attr:`edges`."""
        for i, e in enumerate(self._edges):
            if e.source == source and e.target == target:
                return i
        self.index(source)
        self.index(target)
        raise KeyError(f"no edge {source!r} -> {target!r} in the network")

    # tensors the kinetics need, as numpy (models move them to their device)
    @property
    def sources(self) -> np.ndarray:
        return np.array([self._index[e.source] for e in self._edges], dtype=np.int64)

    @property
    def targets_idx(self) -> np.ndarray:
        return np.array([self._index[e.target] for e in self._edges], dtype=np.int64)

    @property
    def signs(self) -> np.ndarray:
        return np.array([e.sign for e in self._edges], dtype=np.int64)

    def adjacency(self) -> np.ndarray:
        """Signed adjacency ``A[source, target] = sign`` (G, G)."""
        a = np.zeros((self.n_genes, self.n_genes), dtype=np.int64)
        a[self.sources, self.targets_idx] = self.signs
        return a

    def __len__(self) -> int:
        return self.n_genes

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"Network({label}{self.n_genes} genes, {self.n_edges} edges)"

    def summary(self) -> str:
        act = int((self.signs > 0).sum())
        return (f"{self!r}: {act} activations, {self.n_edges - act} repressions, "
                f"{sum(e.source == e.target for e in self._edges)} self-loops")

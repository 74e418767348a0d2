"""Perturbations, conditions and screens, compiled once into per-row tensors.

A perturbation never special-cases a model. Every condition compiles to *layers*
of effects; layer 0 is always on, each :class:`Pulse` adds a layer that is on for
``start <= t < end``. A layer holds, per gene (state), a production multiplier, an
additive input, a clamp mask and value, and parameter overrides. At time t the
active layers combine into

    dx/dt = mult * production(t, x, p') + input - degradation(t, x, p'),   dx_i/dt = 0 if clamped,

with ``p'`` the model parameters after overrides. The solver lands exactly on
every switching time, so no step straddles a change of regime.
"""

from __future__ import annotations

import collections
import difflib
import itertools
import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .solvers.jacobian import autodiff_jacobian, autodiff_time_derivative

__all__ = [
    "Perturbation", "Knockout", "Knockdown", "Overexpress", "Clamp", "SetParameter", "Pulse", "Condition",
    "as_conditions", "knockout_screen", "knockdown_screen", "WILD_TYPE",
]

WILD_TYPE = "wild type"


def _gene_list(genes: str | Iterable[str], what: str) -> tuple[str, ...]:
    out = (genes,) if isinstance(genes, str) else tuple(genes)
    if not out or not all(isinstance(g, str) and g for g in out):
        raise ValueError(f"{what} needs one or more gene names, got {genes!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} names a gene twice: {list(out)}")
    return out


def _number(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ValueError(f"{name} must be finite and in {bounds}, got {value!r}")
    return v


def _fmt(v: float) -> str:
    return f"{v:g}"


class Perturbation:
    """Base of all perturbations. Subclasses are frozen dataclasses with a ``label``."""

    @property
    def label(self) -> str:
        raise NotImplementedError

    def genes_named(self) -> tuple[str, ...]:
        return ()

    def __add__(self, other: Perturbation | Condition) -> Condition:
        return Condition([self]) + other


@dataclass(frozen=True)
class Knockout(Perturbation):
    """Production of each gene set to 0, and its initial state 0."""

    genes: tuple[str, ...]

    def __init__(self, genes: str | Iterable[str]) -> None:
        object.__setattr__(self, "genes", _gene_list(genes, "Knockout"))

    @property
    def label(self) -> str:
        return "+".join(f"KO({g})" for g in self.genes)

    def genes_named(self) -> tuple[str, ...]:
        return self.genes


@dataclass(frozen=True)
class Knockdown(Perturbation):
    """Production multiplied by ``1 - fraction`` (``0 <= fraction <= 1``)."""

    genes: tuple[str, ...]
    fraction: float

    def __init__(self, genes: str | Iterable[str], fraction: float) -> None:
        object.__setattr__(self, "genes", _gene_list(genes, "Knockdown"))
        object.__setattr__(self, "fraction", _number(fraction, "Knockdown fraction", low=0.0, high=1.0))

    @property
    def label(self) -> str:
        return "+".join(f"KD({g},{_fmt(self.fraction)})" for g in self.genes)

    def genes_named(self) -> tuple[str, ...]:
        return self.genes


@dataclass(frozen=True)
class Overexpress(Perturbation):
    """Production multiplied by ``fold`` and/or a constant extra production ``rate`` added."""

    genes: tuple[str, ...]
    fold: float | None = None
    rate: float | None = None

    def __init__(self, genes: str | Iterable[str], fold: float | None = None, rate: float | None = None) -> None:
        object.__setattr__(self, "genes", _gene_list(genes, "Overexpress"))
        if fold is None and rate is None:
            raise ValueError("Overexpress needs fold= (production multiplier) and/or rate= (extra production)")
        object.__setattr__(self, "fold", None if fold is None else _number(fold, "Overexpress fold", low=0.0))
        object.__setattr__(self, "rate", None if rate is None else _number(rate, "Overexpress rate", low=0.0))

    @property
    def label(self) -> str:
        parts = ([f"x{_fmt(self.fold)}"] if self.fold is not None else []) + \
                ([f"+{_fmt(self.rate)}"] if self.rate is not None else [])
        return "+".join(f"OE({g},{','.join(parts)})" for g in self.genes)

    def genes_named(self) -> tuple[str, ...]:
        return self.genes


@dataclass(frozen=True)
class Clamp(Perturbation):
    """The gene is held at ``value``: its derivative is 0 and its state exactly ``value``."""

    gene: str
    value: float

    def __init__(self, gene: str, value: float) -> None:
        if not isinstance(gene, str):
            raise ValueError(f"Clamp takes one gene name, got {gene!r}; use one Clamp per gene")
        object.__setattr__(self, "gene", _gene_list(gene, "Clamp")[0])
        object.__setattr__(self, "value", _number(value, f"Clamp value of {gene!r}", low=0.0))

    @property
    def label(self) -> str:
        return f"Clamp({self.gene}={_fmt(self.value)})"

    def genes_named(self) -> tuple[str, ...]:
        return (self.gene,)


@dataclass(frozen=True)
class SetParameter(Perturbation):
    """Override model parameter ``name`` for this condition: all entries, or one ``gene`` / ``edge``.

    ``edge`` is an edge index, a ``(source, target)`` pair or a label such as ``"A -| B"``.
    """

    name: str
    value: float
    gene: str | None = None
    edge: Any = None

    def __init__(self, name: str, value: float, gene: str | None = None, edge: Any = None) -> None:
        if gene is not None and edge is not None:
            raise ValueError("SetParameter takes gene= or edge=, not both")
        object.__setattr__(self, "name", str(name))
        object.__setattr__(self, "value", _number(value, f"SetParameter value of {name!r}"))
        object.__setattr__(self, "gene", gene)
        object.__setattr__(self, "edge", tuple(edge) if isinstance(edge, list) else edge)

    @property
    def label(self) -> str:
        where = f"[{self.gene}]" if self.gene is not None else (
            f"[{'->'.join(self.edge) if isinstance(self.edge, tuple) else self.edge}]" if self.edge is not None
            else "")
        return f"Set({self.name}{where}={_fmt(self.value)})"

    def genes_named(self) -> tuple[str, ...]:
        return (self.gene,) if self.gene is not None else ()


@dataclass(frozen=True)
class Pulse(Perturbation):
    """``perturbation`` applies only for ``start <= t < end`` (a drug pulse, a transient knockdown).

    A pulsed knockout does not reset the initial state; a pulsed clamp sets the
    state to its value at ``start`` and releases it at ``end``.
    """

    perturbation: Perturbation
    start: float
    end: float

    def __init__(self, perturbation: Perturbation, start: float, end: float = math.inf) -> None:
        if not isinstance(perturbation, Perturbation) or isinstance(perturbation, Pulse):
            raise TypeError(f"Pulse wraps one non-pulse perturbation, got {perturbation!r}")
        s = _number(start, "Pulse start")
        e = float(end)
        if math.isnan(e) or e <= s:
            raise ValueError(f"Pulse end must be > start, got start={start!r}, end={end!r}")
        object.__setattr__(self, "perturbation", perturbation)
        object.__setattr__(self, "start", s)
        object.__setattr__(self, "end", e)

    @property
    def label(self) -> str:
        return f"{self.perturbation.label}@[{_fmt(self.start)},{_fmt(self.end)})"

    def genes_named(self) -> tuple[str, ...]:
        return self.perturbation.genes_named()


@dataclass(frozen=True)
class Condition:
    """Perturbations applied together, with a label (default: labels joined by ``+``;
    ``"wild type"`` when empty)."""

    perturbations: tuple[Perturbation, ...] = ()
    label: str = ""

    def __init__(self, perturbations: Iterable[Perturbation] | Perturbation = (), label: str | None = None) -> None:
        perts = (perturbations,) if isinstance(perturbations, Perturbation) else tuple(perturbations)
        for p in perts:
            if not isinstance(p, Perturbation):
                raise TypeError(f"a condition holds perturbations (Knockout, Clamp, ...), got {p!r}")
        object.__setattr__(self, "perturbations", perts)
        object.__setattr__(self, "label", label if label else ("+".join(p.label for p in perts) or WILD_TYPE))

    def __add__(self, other: Perturbation | Condition) -> Condition:
        more = other.perturbations if isinstance(other, Condition) else (other,)
        return Condition(self.perturbations + tuple(more))


def as_conditions(perturbations: Any) -> list[Condition]:
    """Normalise what users pass as ``perturbations=``.

    - ``None`` -> ``[wild type]``
    - a :class:`Perturbation` or :class:`Condition` -> one condition
    - a dict ``{label: perturbation(s)}`` -> one labelled condition per entry
    - a list whose items are perturbations, conditions or lists of perturbations ->
      one condition per item (a plain perturbation is a condition of its own; a
      list inside the list is applied together).
    """
    if perturbations is None:
        return [Condition()]
    if isinstance(perturbations, (Perturbation, Condition)):
        perturbations = [perturbations]
    if isinstance(perturbations, Mapping):
        return [Condition(v if not isinstance(v, Condition) else v.perturbations, label=str(k))
                for k, v in perturbations.items()]
    if isinstance(perturbations, str) or not isinstance(perturbations, Iterable):
        raise TypeError("perturbations must be a Perturbation, a Condition, a list of them, or a dict "
                        f"{{label: perturbations}}; got {type(perturbations).__name__}")
    out = []
    for item in perturbations:
        if isinstance(item, Condition):
            out.append(item)
        elif isinstance(item, Perturbation):
            out.append(Condition([item]))
        elif isinstance(item, (list, tuple)):
            out.append(Condition(item))
        else:
            raise TypeError(f"perturbations entry {item!r} is not a Perturbation, Condition or list of them")
    if not out:
        raise ValueError("perturbations is an empty list; give at least one condition (or None for wild type)")
    labels = [c.label for c in out]
    dup = sorted(lab for lab, k in collections.Counter(labels).items() if k > 1)
    if dup:
        raise ValueError(f"duplicate condition labels {dup[:5]}; give distinct labels (Condition(..., label=))")
    return out


# ------------------------------------------------------------------ screens
def _screen(genes: Sequence[str], order: int, make) -> list[Condition]:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be a non-negative integer, got {order!r}")
    out = [Condition()]
    for k in range(1, min(order, len(genes)) + 1):
        for combo in itertools.combinations(genes, k):
            out.append(Condition([make(g) for g in combo]))
    return out


def _screen_genes(net: Any, genes: Iterable[str] | None) -> list[str]:
    all_genes = list(net.genes)
    if genes is None:
        return all_genes
    chosen = list(genes)
    for g in chosen:
        if g not in all_genes:
            raise KeyError(_unknown_gene(g, all_genes))
    return chosen


def knockout_screen(net: Any, order: int = 2, genes: Iterable[str] | None = None) -> list[Condition]:
    """Wild type + all knockouts of up to ``order`` genes at once (order 2: singles and doubles).

    ``net`` is a Network or a model; ``genes`` restricts the screened genes.
    For G genes and order 2 there are ``1 + G + G(G-1)/2`` conditions, labelled
    ``"wild type"``, ``"KO(A)"``, ``"KO(A)+KO(B)"``.
    """
    return _screen(_screen_genes(net, genes), order, Knockout)


def knockdown_screen(net: Any, fraction: float = 0.5, order: int = 1,
                     genes: Iterable[str] | None = None) -> list[Condition]:
    """Wild type + all knockdowns (production x ``1 - fraction``) of up to ``order`` genes at once."""
    _number(fraction, "knockdown fraction", low=0.0, high=1.0)
    return _screen(_screen_genes(net, genes), order, lambda g: Knockdown(g, fraction))


# ---------------------------------------------------------------- compiling
def _unknown_gene(gene: str, genes: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(gene), list(genes), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown gene {gene!r} in perturbation{hint} (genes: {list(genes)[:10]}{'...' if len(genes) > 10 else ''})"


@dataclass
class _Layer:
    """One set of effects, on for ``start <= t < end`` (per condition)."""

    start: np.ndarray  # (C,)
    end: np.ndarray  # (C,)
    mult: np.ndarray  # (C, G)
    add: np.ndarray  # (C, G)
    clamp: np.ndarray  # (C, G) bool
    clamp_value: np.ndarray  # (C, G)
    overrides: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> value, mask


@dataclass
class CompiledConditions:
    """Conditions as arrays: ``layers[0]`` always on, later layers are pulses; x0 overrides; stops."""

    labels: list[str]
    layers: list[_Layer]
    x0_mask: np.ndarray  # (C, G) bool
    x0_value: np.ndarray  # (C, G)
    stops: np.ndarray  # (C, S) switching times, +inf padded

    @property
    def n_conditions(self) -> int:
        return len(self.labels)

    @property
    def pulsed(self) -> bool:
        return len(self.layers) > 1

    @property
    def identity(self) -> bool:
        """True when nothing is perturbed (plain wild type)."""
        base = self.layers[0]
        return (not self.pulsed and not self.x0_mask.any() and np.all(base.mult == 1) and not base.add.any()
                and not base.clamp.any() and not base.overrides)


def _entry_index(model: Any, p: SetParameter) -> int | slice:
    spec = model._spec(p.name)
    if p.gene is not None:
        if spec.scope != "gene":
            raise ValueError(f"SetParameter({p.name!r}, gene=...) but {p.name!r} is a per-{spec.scope} parameter")
        if p.gene not in model.genes:
            raise KeyError(_unknown_gene(p.gene, model.genes))
        return list(model.genes).index(p.gene)
    if p.edge is not None:
        if spec.scope != "edge":
            raise ValueError(f"SetParameter({p.name!r}, edge=...) but {p.name!r} is a per-{spec.scope} parameter")
        net = getattr(model, "net", None)
        e = p.edge
        if isinstance(e, (int, np.integer)):
            if not 0 <= e < spec.size:
                raise KeyError(f"edge index {e} out of range for {spec.size} edges")
            return int(e)
        if isinstance(e, str):
            for sep in ("->", "-|", ","):
                if sep in e:
                    e = tuple(s.strip() for s in e.split(sep, 1))
                    break
        if not (isinstance(e, tuple) and len(e) == 2) or net is None:
            raise ValueError(f"edge={p.edge!r}: give an edge index, (source, target) or 'source -> target'")
        for g in e:
            if g not in model.genes:
                raise KeyError(_unknown_gene(g, model.genes))
        return net.edge_index(*e)
    return slice(None)


# the last few compiled condition lists of each model: a screen or a fit solves the same conditions
# call after call, and compiling thousands of them costs ~7 µs each (35 ms for the 5051 rows of a
# double-knockout screen of 100 genes) against ~2 µs to hash and compare them
_COMPILED: weakref.WeakKeyDictionary[Any, collections.OrderedDict] = weakref.WeakKeyDictionary()
_COMPILED_PER_MODEL = 4


def compile_conditions(conditions: Sequence[Condition], model: Any) -> CompiledConditions:
    """Check every condition against ``model`` and build the per-condition arrays.

    Raises before any solving: unknown genes (naming the closest names), unknown
    parameters, a clamped gene that is also knocked out, values out of range.
    The result of an equal list of conditions on the same model object is reused (it is
    shared: treat its arrays as read-only).
    """
    key = tuple(conditions)
    try:
        per_model = _COMPILED.setdefault(model, collections.OrderedDict())
        h = hash(key)  # once: a tuple does not keep its hash
    except TypeError:  # an unhashable model or perturbation: no reuse
        return _compile_conditions(key, model)
    entry = per_model.get(h)
    if entry is not None and entry[0] == key:
        per_model.move_to_end(h)
        return entry[1]
    compiled = _compile_conditions(key, model)
    per_model[h] = (key, compiled)
    per_model.move_to_end(h)
    if len(per_model) > _COMPILED_PER_MODEL:
        per_model.popitem(last=False)
    return compiled


def _compile_conditions(conditions: Sequence[Condition], model: Any) -> CompiledConditions:
    genes = list(model.genes)
    names = list(dict.fromkeys([*getattr(model, "gene_names", []), *genes, *getattr(model, "target_names", [])]))
    C, G = len(conditions), len(genes)
    reaction_targets = getattr(model, "reaction_targets", None)

    known = {g: model.perturbation_targets(g) for g in names}  # once per gene, not per perturbation

    def target_of(g: str):
        return known[g] if g in known else model.perturbation_targets(g)

    def targets(gs: Iterable[str], which: int) -> list[int]:
        return [i for g in gs for i in target_of(g)[which]]
    pulses_per = [sum(isinstance(p, Pulse) for p in c.perturbations) for c in conditions]
    L = 1 + max(pulses_per, default=0)

    def new_layer() -> _Layer:
        return _Layer(np.full(C, -np.inf), np.full(C, np.inf), np.ones((C, G)), np.zeros((C, G)),
                      np.zeros((C, G), bool), np.zeros((C, G)))

    layers = [new_layer() for _ in range(L)]
    for layer in layers[1:]:  # unused pulse layers are never on
        layer.start[:] = np.inf
    x0_mask = np.zeros((C, G), bool)
    x0_value = np.zeros((C, G))
    stops: list[list[float]] = [[] for _ in range(C)]

    # effects are gathered as (layer, condition, index) entries and written with a few numpy calls
    # at the end: per-entry numpy indexing costs ~1 µs, too much for a screen of thousands of rows
    mul: list[tuple[int, int, int, float]] = []  # applied in order by np.multiply.at
    add: list[tuple[int, int, int, float]] = []
    clamp: dict[tuple[int, int, int], float] = {}  # the last clamp of a gene wins
    x0_set: dict[tuple[int, int], float] = {}
    for c, cond in enumerate(conditions):
        knocked: set[str] = set()
        clamped: set[str] = set()
        slot = 0
        for pert in cond.perturbations:
            for g in pert.genes_named():
                if target_of(g) is None:
                    raise KeyError(_unknown_gene(g, names))
            if isinstance(pert, Pulse):
                slot += 1
                li, inner = slot, pert.perturbation
                layers[li].start[c], layers[li].end[c] = pert.start, pert.end
                stops[c] += [pert.start] + ([pert.end] if math.isfinite(pert.end) else [])
            else:
                li, inner = 0, pert
            gi = targets(inner.genes_named(), 0)
            factor = (0.0 if isinstance(inner, Knockout) else 1.0 - inner.fraction if isinstance(inner, Knockdown)
                      else inner.fold if isinstance(inner, Overexpress) and inner.fold is not None else None)
            hit = ([k for g in inner.genes_named() for k in reaction_targets(g)]
                   if reaction_targets and isinstance(inner, (Knockout, Knockdown, Overexpress, Clamp)) else [])
            if hit and factor is None:
                raise ValueError(f"{inner.label} on {inner.genes_named()}: names reactions (targets), which "
                                 "knockouts, knockdowns and fold overexpression scale; a rate or a clamp needs a "
                                 "species")
            if hit:  # per-reaction effects: entries of reaction_scale, multiplied where several hit one
                value, mask = layers[li].overrides.setdefault(
                    "reaction_scale", (np.ones((C, len(model.reactions))), np.zeros((C, len(model.reactions)), bool)))
                for k in hit:
                    value[c, k] = (value[c, k] if mask[c, k] else 1.0) * factor
                    mask[c, k] = True
            if isinstance(inner, Knockout):
                mul.extend((li, c, i, 0.0) for i in gi)
                knocked.update(inner.genes)
                if li == 0:
                    x0_set.update(((c, i), 0.0) for i in targets(inner.genes, 1))
            elif isinstance(inner, Knockdown):
                mul.extend((li, c, i, 1.0 - inner.fraction) for i in gi)
            elif isinstance(inner, Overexpress):
                if inner.fold is not None:
                    mul.extend((li, c, i, inner.fold) for i in gi)
                if inner.rate is not None:
                    add.extend((li, c, i, inner.rate) for i in gi)
            elif isinstance(inner, Clamp):
                gi = targets([inner.gene], 2)
                if not gi:
                    raise ValueError(f"Clamp({inner.gene!r}): {inner.gene!r} names reactions, not a species; "
                                     "only a species can be clamped")
                clamp.update(((li, c, i), inner.value) for i in gi)
                clamped.add(inner.gene)
                if li == 0:
                    x0_set.update(((c, i), inner.value) for i in gi)
            elif isinstance(inner, SetParameter):
                layer = layers[li]
                entry = _entry_index(model, inner)
                spec = model.specs[inner.name]
                lo, hi = spec.bounds
                if not lo <= inner.value <= hi:
                    raise ValueError(f"SetParameter value {inner.value} for {inner.name!r} is outside its "
                                     f"bounds [{lo}, {hi}]")
                value, mask = layer.overrides.setdefault(
                    inner.name, (np.zeros((C, spec.size)), np.zeros((C, spec.size), bool)))
                value[c, entry], mask[c, entry] = inner.value, True
            else:
                raise TypeError(f"unsupported perturbation {pert!r}")
        both = knocked & clamped
        if both:
            raise ValueError(f"condition {cond.label!r} both knocks out and clamps {sorted(both)}; "
                             "a gene can be knocked out or clamped, not both")
    for entries, ufunc, field_name in ((mul, np.multiply, "mult"), (add, np.add, "add")):
        if entries:
            e = np.array(entries)
            li, flat = e[:, 0].astype(int), e[:, 1].astype(int) * G + e[:, 2].astype(int)
            for k, layer in enumerate(layers):
                sel = li == k
                ufunc.at(getattr(layer, field_name).reshape(-1), flat[sel], e[sel, 3])
    if clamp:
        lcs, vals = np.array(list(clamp), dtype=int), np.fromiter(clamp.values(), float)
        for k, layer in enumerate(layers):
            sel = lcs[:, 0] == k
            layer.clamp[lcs[sel, 1], lcs[sel, 2]], layer.clamp_value[lcs[sel, 1], lcs[sel, 2]] = True, vals[sel]
    if x0_set:
        cs, gs = np.array(list(x0_set), dtype=int).T
        x0_mask[cs, gs], x0_value[cs, gs] = True, np.fromiter(x0_set.values(), float)
    width = max((len(s) for s in stops), default=0)
    stop_arr = np.full((C, max(width, 1)), np.inf)
    for c, s in enumerate(stops):
        stop_arr[c, : len(s)] = sorted(s)
    return CompiledConditions([c.label for c in conditions], layers, x0_mask, x0_value, stop_arr)


# ------------------------------------------------------------------ the term
class ConditionTerm:
    """The right-hand side of a model under compiled conditions, for the solver loop.

    ``args`` (a dict of per-row tensors, which the loop may index by row) holds the
    layer definitions and the *current* effects (``mult``, ``add``, ``clamp``,
    ``clamp_value``, prepared parameters ``p``). :meth:`segment` recomputes the
    current effects from row times; the loop calls it at the initial time and
    whenever a row lands on a switching time. Static flags skip the arithmetic of
    effects no condition uses.
    """

    def __init__(self, model: Any, compiled: CompiledConditions, params: dict[str, Tensor],
                 row_condition: Tensor, dtype: torch.dtype | None = None) -> None:
        self.model = model
        dev = row_condition.device
        dtype = dtype or next(iter(params.values())).dtype

        def rows(a: np.ndarray, dt: torch.dtype = dtype) -> Tensor:
            return torch.as_tensor(a, device=dev, dtype=dt).index_select(0, row_condition)

        layers = compiled.layers
        self.n_layers = len(layers)
        self.use_mult = any(not np.all(layer.mult == 1) for layer in layers)
        self.use_add = any(layer.add.any() for layer in layers)
        self.use_clamp = any(layer.clamp.any() for layer in layers)
        self.param_layers = [i for i, layer in enumerate(layers) if layer.overrides]
        self.pulsed = compiled.pulsed
        args: dict[str, Any] = {"base_p": params}
        for i, layer in enumerate(layers):
            d: dict[str, Any] = {"start": rows(layer.start), "end": rows(layer.end)}
            if self.use_mult:
                d["mult"] = rows(layer.mult)
            if self.use_add:
                d["add"] = rows(layer.add)
            if self.use_clamp:
                d["clamp"] = rows(layer.clamp, torch.bool)
                d["clamp_value"] = rows(layer.clamp_value)
            if layer.overrides:
                d["over"] = {k: (rows(v), rows(m, torch.bool)) for k, (v, m) in layer.overrides.items()}
            args[f"layer{i}"] = d
        self.initial_args = args
        self.stops = rows(compiled.stops)

    def segment(self, t: Tensor, args: dict) -> dict:
        """Current effects at row times ``t`` (B,): layers with ``start <= t < end`` are on."""
        out = dict(args)
        B = t.shape[0]
        active = [(args[f"layer{i}"]["start"] <= t) & (t < args[f"layer{i}"]["end"]) for i in range(self.n_layers)]
        if self.use_mult:
            mult = None
            for i, on in enumerate(active):
                m = torch.where(on[:, None], args[f"layer{i}"]["mult"], 1.0)
                mult = m if mult is None else mult * m
            out["mult"] = mult
        if self.use_add:
            out["add"] = sum(torch.where(on[:, None], args[f"layer{i}"]["add"], 0.0) for i, on in enumerate(active))
        if self.use_clamp:
            clamp, value = None, None
            for i, on in enumerate(active):
                layer = args[f"layer{i}"]
                c = layer["clamp"] & on[:, None]
                clamp = c if clamp is None else clamp | c
                value = torch.where(c, layer["clamp_value"], 0.0 if value is None else value)
            out["clamp"], out["clamp_value"] = clamp, value
        if "p" not in args or self.param_layers:
            p = dict(args["base_p"])
            p_dot = dict(args["base_p_dot"]) if "base_p_dot" in args else None
            for i in self.param_layers:
                for name, (v, m) in args[f"layer{i}"]["over"].items():
                    on = m & active[i][:, None]
                    p[name] = torch.where(on, v, p[name].expand(B, -1))
                    if p_dot is not None and name in p_dot:  # an override is a constant
                        p_dot[name] = torch.where(on[:, None, :], 0.0, p_dot[name])
            out["p"] = self.model.prepare(p)
            if p_dot is not None:
                out["p_dot"] = p_dot
        return out

    def native_spec(self, args: dict) -> dict | None:
        """The model's native-kernel spec (see :mod:`genenet.native`) with the current condition
        effects (``mult``, ``add``, ``clamp``) of ``args``; ``None`` when the model has no kernel."""
        fn = getattr(self.model, "native_spec", None)
        spec = fn(args["p"]) if fn is not None else None
        if spec is None:
            return None
        spec = dict(spec)
        if self.use_mult:
            spec["mult"] = args["mult"]
        if self.use_add:
            spec["add"] = args["add"]
        if self.use_clamp:
            spec["clamp"] = args["clamp"]
        return spec

    def _effects(self, prod: Tensor, args: dict, add: Tensor | float | None = 1.0) -> Tensor:
        """``mult * prod + add_scale * add`` (``add=None``: no input term), 0 for clamped genes: the
        condition effects on a production-like quantity (rate, its time derivative, its variance)."""
        if self.use_mult:
            prod = prod * args["mult"]
        if self.use_add and add is not None:
            prod = prod + args["add"] * add
        return torch.where(args["clamp"], 0.0, prod) if self.use_clamp else prod

    def rates(self, t: Tensor, x: Tensor, args: dict) -> tuple[Tensor, Tensor]:
        """Production ``mult * production + add`` and degradation (B, G) under the current effects;
        both zero for clamped genes. The CLE's noise is built from these."""
        p = args["p"]
        prod = self._effects(self.model.production(t, x, p), args)
        deg = self.model.degradation(t, x, p)
        if self.use_clamp:
            deg = torch.where(args["clamp"], 0.0, deg)
        return prod, deg

    def production_variance(self, t: Tensor, x: Tensor, args: dict) -> Tensor:
        """Variance rate (B, G) of the production events for the CLE: the model's
        ``synthesis_variance`` (``Σ_r N_ir² v_r`` over a reaction network's synthesis reactions, whose
        events move a species by ``N_ir``: ``c / V`` in concentration) or, without one, production
        itself (unit events), times ``mult``; ``add`` counted in events of the model's
        ``event_size`` (``1 / V``; 1 by default); 0 for clamped genes."""
        p = args["p"]
        fn = getattr(self.model, "synthesis_variance", None)
        var = fn(t, x, p) if fn is not None else self.model.production(t, x, p)
        size = getattr(self.model, "event_size", None)
        return self._effects(var, args, size(x) if size is not None else 1.0)

    def vf(self, t: Tensor, x: Tensor, args: dict) -> Tensor:
        """``mult * production + add - degradation``, zero for clamped genes; (B, G)."""
        prod, deg = self.rates(t, x, args)
        return prod - deg

    def vf_jvp(self, t: Tensor, x: Tensor, x_dot: Tensor, args: dict) -> tuple[Tensor, Tensor]:
        """``vf`` (B, G) and its directional derivatives (B, q, G) along q tangents: state
        tangents ``x_dot`` (B, q, G) and parameter tangents ``args["p_dot"]`` ({name: (B, q, size)},
        absent names held fixed). Condition effects are constants; clamped genes' tangents are 0."""
        p, p_dot = args["p"], args.get("p_dot", {})
        prod, prod_dot = self.model.production_jvp(t, x, p, x_dot, p_dot)
        if self.use_mult:
            prod, prod_dot = prod * args["mult"], prod_dot * args["mult"][:, None, :]
        if self.use_add:
            prod = prod + args["add"]
        deg, deg_dot = self.model.degradation_jvp(t, x, p, x_dot, p_dot)
        dx, dx_dot = prod - deg, prod_dot - deg_dot
        if self.use_clamp:
            dx = torch.where(args["clamp"], 0.0, dx)
            dx_dot = torch.where(args["clamp"][:, None, :], 0.0, dx_dot)
        return dx, dx_dot

    def reset_jvp(self, t: Tensor, x: Tensor, x_dot: Tensor, args: dict) -> tuple[Tensor, Tensor]:
        """``reset`` and its tangent: a clamp sets a constant, so the tangent of a clamped gene is 0."""
        if not self.use_clamp:
            return x, x_dot
        return (torch.where(args["clamp"], args["clamp_value"], x),
                torch.where(args["clamp"][:, None, :], 0.0, x_dot))

    def jacobian(self, t: Tensor, x: Tensor, args: dict) -> Tensor:
        """``d vf / d x``, (B, G, G): the model's analytic production/degradation Jacobians when it
        has them, else forward-mode autodiff per row (``torch.func``). Clamped genes' rows are 0."""
        model, p = self.model, args["p"]
        if hasattr(model, "production_jacobian") and hasattr(model, "degradation_jacobian"):
            # one (B, G, G) allocation: the condition effects scale rows in place and an elementwise
            # degradation goes onto the diagonal; on a 100-gene screen the Jacobian was a third of a
            # Rosenbrock step when every effect made a new (B, G, G) tensor
            J = model.production_jacobian(t, x, p)  # a fresh tensor, written in place below
            free = (~args["clamp"]).to(x.dtype) if self.use_clamp else None
            keep = args["mult"] if self.use_mult else None
            if free is not None:
                keep = free if keep is None else keep * free
            if keep is not None:
                J.mul_(keep[:, :, None])
            if hasattr(model, "degradation_diagonal"):
                deg = model.degradation_diagonal(t, x, p)
                J.diagonal(dim1=1, dim2=2).sub_(deg if free is None else deg * free)
            else:
                D = model.degradation_jacobian(t, x, p)
                J.sub_(D if free is None else D * free[:, :, None])
            return J
        return autodiff_jacobian(self.vf, t, x, args)

    def time_derivative(self, t: Tensor, x: Tensor, args: dict) -> Tensor | None:
        """``∂ vf / ∂t`` (B, G) for models that depend on time explicitly, ``None`` for autonomous
        ones (``model.autonomous``; condition effects are constant between switching times)."""
        if getattr(self.model, "autonomous", False):
            return None
        split = getattr(self.model, "rates_and_time_derivative", None)
        if split is None:
            return autodiff_time_derivative(self.vf, t, x, args)
        prod, deg = split(t, x, args["p"])
        out = self._effects(prod, args, add=None) - deg  # the inputs `add` are constant: no part of it
        return torch.where(args["clamp"], 0.0, out) if self.use_clamp else out

    def reset(self, t: Tensor, x: Tensor, args: dict) -> Tensor:
        """Clamped genes jump to their value when the clamp switches on."""
        if not self.use_clamp:
            return x
        return torch.where(args["clamp"], args["clamp_value"], x)

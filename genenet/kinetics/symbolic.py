"""Models written as reactions or equations: any kinetics, from text or sympy.

A :class:`SymbolicModel` is species, named scalar parameters and reactions, each a net
stoichiometry ``N[:, r]`` and a rate law ``v_r(t, x, p)`` (a sympy expression):

    dx/dt = N v(t, x, p)                                      x: (B, S), v: (B, R), N: (S, R)

split for perturbations (genenet's contract: ``mult * production + input - degradation``) into

    production  = N_syn v_syn      the *synthesis* reactions: those whose net stoichiometry
                                   consumes nothing (∅ -> A; mRNA -> mRNA + A, mRNA a catalyst)
    degradation = -N_rest v_rest   every other reaction (decay, conversion, binding), whose
                                   term may be negative: A + B -> AB makes AB

so a knockout of species A zeroes A's synthesis and its start and leaves conversions and binding
as they are (A + B -> AB still consumes what it makes: mass is conserved); a knockdown or a fold
overexpression scales A's synthesis; ``Overexpress(rate=)`` adds a constant synthesis; a clamp
holds A. (Per-reaction targets, such as a gene whose knockout removes an enzyme-catalysed
conversion, are issue 21's next step.)

Written as equations (:meth:`genenet.Model.from_equations`), each species' right-hand side is cut
into its top-level terms: a term with a minus sign is a degradation of that species, every other
a synthesis. The rates compile once per model structure (:mod:`genenet.kinetics.program`) to a
torch function of batched columns: autograd, any device; parameter values are data, not code.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import sympy
import torch
from torch import Tensor

from ..models.base import Model, ParameterSpec, Params
from .expressions import FUNCTIONS, TIME, Logistic, parse_rate
from .program import Program, torch_function

__all__ = ["Reaction", "SymbolicModel", "ReactionNetwork", "from_equations"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED = {"t", *FUNCTIONS}
_TERM = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*?\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\Z")
_EMPTY = {"", "0", "∅", "Ø", "null", "nothing"}


@dataclass(frozen=True)
class Reaction:
    """One reaction: ``name``, its ``reactants`` and ``products`` (species -> coefficient) and
    its rate law ``rate`` (sympy, over species, parameters and ``t``). The net stoichiometry is
    products minus reactants; species in the rate law but on neither side are modifiers."""

    name: str
    reactants: Mapping[str, float]
    products: Mapping[str, float]
    rate: sympy.Expr

    @property
    def net(self) -> dict[str, float]:
        out = {s: -c for s, c in self.reactants.items()}
        for s, c in self.products.items():
            out[s] = out.get(s, 0.0) + c
        return {s: c for s, c in out.items() if c != 0}

    @property
    def synthesis(self) -> bool:
        """Consumes nothing net and makes something: scaled by perturbations of what it makes."""
        net = self.net
        return bool(net) and all(c > 0 for c in net.values())

    def equation(self) -> str:
        def side(d: Mapping[str, float]) -> str:
            return " + ".join(f"{_coef(c)}{s}" for s, c in d.items()) or "∅"
        return f"{side(self.reactants)} -> {side(self.products)}"


def _coef(c: float) -> str:
    return "" if c == 1 else (f"{int(c)} " if float(c).is_integer() else f"{c:g} ")


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} is not allowed; use letters, digits and _ (not starting with a digit)")
    if name in _RESERVED:
        raise ValueError(f"{what} name {name!r} is reserved (t is time; {', '.join(FUNCTIONS)} are functions)")
    return name


_CACHE: dict[str, Any] = {}


class SymbolicModel(Model):
    """A model from reactions with symbolic rate laws (see the module doc for the equations).

    Parameters
    ----------
    species : sequence of str
        State names, in state order (S).
    reactions : sequence of :class:`Reaction`
        Their net stoichiometry over ``species`` and rate laws.
    params : mapping name -> value
        Scalar parameters (a value, or ``(P,)`` for an ensemble of P sets).
    bounds : mapping name -> (lo, hi), optional
        Default: ``(0, inf)`` (stored as log) for a positive value, unbounded for zero or negative.
    initial : mapping species -> value, optional
        The start used when ``simulate`` gets no ``x0`` (default 0 for every species).
    volumes : mapping species -> size, optional
        Constant compartment sizes of species whose state is a concentration while their rates
        are in amount per time (SBML's convention): ``dx_s/dt = (N v)_s / V_s``. Default 1.
    fixed : sequence of species, optional
        Species no reaction changes (SBML boundary or constant species): their rows of N are 0.
    targets : mapping name -> reaction names, optional
        Which reactions a perturbation of ``name`` scales, beyond a species' own synthesis: a gene
        whose product is not a species (an enzyme written into a rate constant) or a species whose
        knockout removes a conversion it catalyses. ``Knockout(name)`` sets those reactions' rates
        to 0, ``Knockdown`` scales them by ``1 - fraction``, ``Overexpress(fold=)`` by the fold
        (through the vector parameter ``reaction_scale``, one entry per reaction, default 1;
        effects on one reaction multiply). A name that is also a species gets both.
    observables : mapping name -> expression, optional
        Derived quantities over species, parameters and ``t`` (text or sympy), e.g. a total
        ``{"P_total": "P + PB"}``: each simulation evaluates them with each row's parameters and
        keeps them on the trajectory, ``traj["P_total"]`` (B, T). SBML assignment rules and
        compartment sizes arrive here from :func:`genenet.read_sbml`. An observable named as a
        species is how that species reads: ``traj[name]`` gives it while the state stays in
        ``traj.y`` (:func:`genenet.read_sbml` integrates a species in a compartment whose size
        changes as its amount ``n`` and declares its concentration ``n / V``).
    """

    def __init__(self, species: Sequence[str], reactions: Sequence[Reaction], params: Mapping[str, Any], *,
                 bounds: Mapping[str, tuple[float, float]] | None = None,
                 initial: Mapping[str, float] | None = None, volumes: Mapping[str, float] | None = None,
                 fixed: Sequence[str] = (), targets: Mapping[str, Sequence[str]] | None = None,
                 observables: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        species = [_check_name(s, "species") for s in species]
        dup = sorted({s for s in species if species.count(s) > 1})
        if dup:
            raise ValueError(f"duplicate species {dup}")
        params = dict(params)
        for name in params:
            _check_name(name, "parameter")
            if name in species:
                raise ValueError(f"{name!r} is both a species and a parameter")
        bounds = dict(bounds or {})
        unknown = sorted(set(bounds) - set(params))
        if unknown:
            raise KeyError(f"bounds name unknown parameters {unknown}; parameters are {list(params)}")
        names = [r.name for r in reactions]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate reaction names {dup}")
        index = {s: i for i, s in enumerate(species)}
        for r in reactions:
            for s in (*r.reactants, *r.products):
                if s not in index:
                    raise ValueError(f"reaction {r.name!r} ({r.equation()}) names species {s!r}, which is not "
                                     f"among the species {species}")
        self.genes = species
        self.reactions = list(reactions)
        self.param_names = list(params)
        N = np.zeros((len(species), len(reactions)))
        for k, r in enumerate(reactions):
            for s, c in r.net.items():
                N[index[s], k] = c
        for s, size in (volumes or {}).items():
            if s not in index:
                raise KeyError(f"volume given for unknown species {s!r}; species are {species}")
            if not (math.isfinite(float(size)) and float(size) > 0):
                raise ValueError(f"the volume of {s!r} must be a finite number > 0, got {size!r}")
            N[index[s]] /= float(size)
        for s in fixed:
            if s not in index:
                raise KeyError(f"fixed species {s!r} is unknown; species are {species}")
            N[index[s]] = 0.0
        self._N = torch.as_tensor(N)  # effective: per state, volumes divided out
        self.volumes = {s: float(v) for s, v in (volumes or {}).items()}
        # a synthesis consumes nothing that changes: a reaction from a fixed (boundary) species is one too
        self._synthesis = torch.as_tensor((N >= 0).all(axis=0) & (N > 0).any(axis=0), dtype=torch.bool)
        syms = {s: sympy.Symbol(s, real=True) for s in (*species, *params)}
        # the program (CSE) and its torch function are built on first use: a model whose native
        # library is already in the cache never needs them (for a 100-gene network they take seconds)
        self._symbols = ([syms[s] for s in species], [syms[p] for p in params])
        self.observables: dict[str, sympy.Expr] = {}
        for name, text in (observables or {}).items():
            if name in params or name == "reaction_scale":
                raise ValueError(f"observable {name!r} is already a parameter name")
            self.observables[_check_name(name, "observable")] = parse_rate(text, syms, f"observable {name!r}")
        self._observe_fn: Any = None
        self._program: Program | None = None
        self.autonomous = not any(r.rate.has(TIME) for r in reactions)
        self._initial = self._initial_state(initial or {})
        specs = []
        for name, value in params.items():
            arr = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
            if arr.ndim > 1:
                raise ValueError(f"parameter {name!r} must be a scalar or (P,) for an ensemble, got shape {arr.shape}")
            default = (0.0, math.inf) if np.all(arr > 0) else (-math.inf, math.inf)
            specs.append(ParameterSpec(name, 1, "global", tuple(bounds.get(name, default)), doc=""))
        rnames = [r.name for r in reactions]
        self._targets: dict[str, list[int]] = {}
        for name, hit in (targets or {}).items():
            bad = [h for h in hit if h not in rnames]
            if bad or isinstance(hit, str):
                raise KeyError(f"targets[{name!r}] names unknown reactions {bad or hit!r}; reactions are {rnames}")
            self._targets[str(name)] = [rnames.index(h) for h in hit]
        values = dict(params)
        if self._targets:
            if "reaction_scale" in params:
                raise ValueError("'reaction_scale' is reserved for perturbation targets; rename that parameter")
            specs.append(ParameterSpec("reaction_scale", len(reactions), "vector", (0.0, math.inf),
                                       "per-reaction multiplier that perturbations of targets set"))
            values["reaction_scale"] = np.ones(len(reactions))
        self._init_params(specs, values)
        self._on: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}
        self._laws: tuple | None = None
        self._deriv: tuple | None = None
        self._jac_memo: tuple | None = None

    @property
    def program(self) -> Program:
        """The rates as a straight-line program (:mod:`genenet.kinetics.program`), built on first use."""
        if self._program is None:
            self._program = Program.build([r.rate for r in self.reactions], *self._symbols)
        return self._program

    @property
    def _rates_fn(self) -> Any:
        fn = self.__dict__.get("_fn")
        if fn is None:  # once per model: the key prints the whole program
            key = self.program.key()
            if key not in _CACHE:
                _CACHE[key] = torch_function(self.program)
            fn = self.__dict__["_fn"] = _CACHE[key]
        return fn

    def structure_key(self) -> str:
        """A hash of what the compiled code depends on: the rate laws over positional species and
        parameters (values, names, stoichiometry are data). Cheap: no CSE, so a model whose native
        library is cached loads it without building its program."""
        if getattr(self, "_structure_key", None) is None:
            states, params = self._symbols
            rename = {s: sympy.Symbol(f"_x{i}", real=True) for i, s in enumerate(states)}
            rename |= {q: sympy.Symbol(f"_p{j}", real=True) for j, q in enumerate(params)}
            text = repr((len(states), len(params), [sympy.srepr(r.rate.xreplace(rename)) for r in self.reactions]))
            self._structure_key = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._structure_key

    def _initial_state(self, initial: Mapping[str, float]) -> np.ndarray:
        x0 = np.zeros(len(self.genes))
        for s, v in initial.items():
            if s not in self.genes:
                raise KeyError(f"initial value for unknown species {s!r}; species are {self.genes}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"initial value of {s!r} must be finite, got {v}")
            x0[self.genes.index(s)] = v
        return x0

    # ------------------------------------------------------------------ views
    @property
    def species(self) -> list[str]:
        return list(self.genes)

    def stoichiometry(self) -> pd.DataFrame:
        """The net stoichiometry matrix N as a table: species x reactions (rows divided by the
        species' volumes, zero for fixed species: what multiplies the rates)."""
        return pd.DataFrame(self._N.numpy(), index=self.genes, columns=[r.name for r in self.reactions])

    def reaction_table(self) -> pd.DataFrame:
        """One row per reaction: name, equation, rate law, whether it is a synthesis."""
        return pd.DataFrame({"reaction": [r.name for r in self.reactions],
                             "equation": [r.equation() for r in self.reactions],
                             "rate": [str(r.rate) for r in self.reactions],
                             "synthesis": self._synthesis.tolist()})

    def conservation_laws(self) -> tuple[np.ndarray, list[int]] | None:
        """The left null space of the stoichiometry, ``L N = 0`` (exact, rational arithmetic), in
        reduced row echelon form with its pivot species: the moieties a reaction network conserves
        (B + AB for binding A + B <-> AB; a species in no reaction is conserved alone). None if none."""
        if self._laws is None:
            N = sympy.Matrix(self._N.shape[0], self._N.shape[1],
                             [sympy.nsimplify(float(v), rational=True) for v in self._N.flatten().tolist()])
            basis = N.T.nullspace()
            if not basis:
                self._laws = ()
            else:
                L, pivots = sympy.Matrix.hstack(*basis).T.rref()
                self._laws = (np.array(L.tolist(), dtype=np.float64), list(pivots))
        return self._laws or None

    def default_x0(self, n_rows: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The ``initial`` values given at construction (0 elsewhere), ``(n_rows, S)``."""
        return torch.as_tensor(self._initial, device=device, dtype=dtype).expand(n_rows, -1).clone()

    # --------------------------------------------------------------- kinetics
    def _matrices(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        key = (like.device, like.dtype)
        if key not in self._on:
            N = self._N.to(device=like.device, dtype=like.dtype)
            syn = self._synthesis.to(like.device)
            self._on[key] = (N, N * syn, -(N * ~syn))
        return self._on[key]

    def _param_matrix(self, x: Tensor, p: Params) -> Tensor:
        if not self.param_names:
            return x.new_zeros((x.shape[0], 0))
        return torch.cat([p[name].expand(x.shape[0], 1) for name in self.param_names], dim=1)

    def observe(self, t: Tensor, x: Tensor, p: Params) -> dict[str, Tensor]:
        """The ``observables`` (name -> expression over species, parameters and ``t``) at states
        ``x`` (N, S), times ``t`` (N,) and each row's parameters ``p``: name -> (N,)."""
        if not self.observables:
            return {}
        if self._observe_fn is None:
            self._observe_fn = torch_function(Program.build(list(self.observables.values()), *self._symbols))
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        out = self._observe_fn(t, x, self._param_matrix(x, p))
        return {name: out[:, k] for k, name in enumerate(self.observables)}

    def rates(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """Reaction rates ``v`` (B, R) (times ``reaction_scale`` where the model has targets)."""
        v = self._rates_fn(t, x, self._param_matrix(x, p))
        return v * p["reaction_scale"] if self._targets else v

    @property
    def target_names(self) -> list[str]:
        """Names whose perturbations scale reactions (``targets``)."""
        return list(self._targets)

    def reaction_targets(self, name: str) -> list[int]:
        """Indices of the reactions a perturbation of ``name`` scales (``targets``), else []."""
        return list(self._targets.get(name, []))

    def perturbation_targets(self, name: str) -> tuple[list[int], list[int], list[int]] | None:
        """A species' rows (as every model), and no rows for a name that only has reaction targets."""
        rows = super().perturbation_targets(name)
        if rows is None and name in self._targets:
            return [], [], []
        return rows

    def rhs(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``N v``, (B, S)."""
        return self.rates(t, x, p) @ self._matrices(x)[0].T

    def production(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """The synthesis reactions' part of ``N v``, (B, S)."""
        return self.rates(t, x, p) @ self._matrices(x)[1].T

    def degradation(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """Minus every other reaction's part of ``N v``, (B, S) (negative where a conversion makes a species)."""
        return self.rates(t, x, p) @ self._matrices(x)[2].T

    def rates_and_time_derivative(self, t: Tensor, x: Tensor, p: Params) -> tuple[Tensor, Tensor]:
        """``(∂production/∂t, ∂degradation/∂t)``, (B, S) each: the synthesis and the other reactions'
        parts of ``N ∂v/∂t``, with ``∂v/∂t`` (B, R) from the generated derivative entries of the rates
        that read ``t`` (what the Rosenbrock steps need; torch's forward mode through the rates cost
        ~20 ms a step)."""
        fn, rows, _ = self._derivative_function("t")
        vt = x.new_zeros(x.shape[0], len(self.reactions))
        if len(rows):
            vt[:, torch.as_tensor(rows, device=x.device)] = fn(t, x, self._param_matrix(x, p))
        if self._targets:
            vt = vt * p["reaction_scale"]
        _, syn, deg = self._matrices(x)
        return vt @ syn.T, vt @ deg.T

    def rate_jacobian(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``dv/dx`` (B, R, S) from the rates' symbolic derivatives (compiled on first use, cached
        per structure; the same sparse entries as the C backend's, :mod:`genenet.kinetics.codegen`)."""
        # production's, then degradation's at the same point; the memo holds its inputs (not their ids,
        # which a new tensor reuses once the old one is freed: a stale Jacobian)
        memo = self._jac_memo
        if memo is not None and memo[0] is x and memo[1] == x._version and memo[2] is t and memo[3] is p:
            return memo[4]
        fn, rows, cols = self._derivative_function()
        B, R, S = x.shape[0], len(self.reactions), len(self.genes)
        J = x.new_zeros(B, R * S)
        if len(rows):
            J[:, torch.as_tensor(rows * S + cols, device=x.device)] = fn(t, x, self._param_matrix(x, p))
        J = J.view(B, R, S)
        if self._targets:
            J = J * p["reaction_scale"][:, :, None]
        self._jac_memo = (x, x._version, t, p, J)
        return J

    def _derivative_function(self, wrt: str = "x") -> tuple[Any, np.ndarray, np.ndarray]:
        """The compiled nonzero entries of ``dv/dx`` (``wrt="x"``) or ``dv/dp`` (``"p"``) and their
        (reaction, column) indices."""
        if self._deriv is None:
            from .codegen import RateDerivatives

            d = RateDerivatives.of(self.program)
            self._deriv = {}
            for name, entries in (("x", d.vx), ("p", d.vp), ("t", d.vt)):
                prog = d.program(self.program, name)
                key = f"d{name}" + prog.key()
                if key not in _CACHE:
                    _CACHE[key] = torch_function(prog)
                self._deriv[name] = (_CACHE[key], np.array([r for r, _, _ in entries], dtype=np.int64),
                                     np.array([j for _, j, _ in entries], dtype=np.int64))
        return self._deriv[wrt]

    def _rates_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params) -> tuple[Tensor, Tensor]:
        """Rates (B, R) and their tangents (B, q, R): ``dv/dx ẋ + dv/dp ṗ`` from the compiled
        derivative entries (exact, no autodiff: the forward sensitivities of a fit)."""
        B, q = x_dot.shape[:2]
        R = len(self.reactions)
        pm = self._param_matrix(x, p)
        raw = self._rates_fn(t, x, pm)
        scale = p["reaction_scale"] if self._targets else None
        v = raw * scale if scale is not None else raw
        vd = x_dot @ self.rate_jacobian(t, x, p).transpose(1, 2)  # (B, q, R)
        names = [k for k in self.param_names if k in p_dot]
        if names:
            fn, rows, cols = self._derivative_function("p")
            Jp = x.new_zeros(B, R * len(self.param_names))
            if len(rows):
                Jp[:, torch.as_tensor(rows * len(self.param_names) + cols, device=x.device)] = fn(t, x, pm)
            Jp = Jp.view(B, R, len(self.param_names))
            if scale is not None:
                Jp = Jp * scale[:, :, None]
            idx = torch.as_tensor([self.param_names.index(k) for k in names], device=x.device)
            pd = torch.cat([p_dot[k].expand(B, q, 1) for k in names], dim=2)  # (B, q, n)
            vd = vd + pd @ Jp.index_select(2, idx).transpose(1, 2)
        if scale is not None and "reaction_scale" in p_dot:
            vd = vd + p_dot["reaction_scale"] * raw[:, None, :]
        return v, vd

    def production_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params
                       ) -> tuple[Tensor, Tensor]:
        """Production (B, S) and its tangents (B, q, S), from the compiled rate derivatives."""
        v, vd = self._rates_jvp(t, x, p, x_dot, p_dot)
        M = self._matrices(x)[1]
        return v @ M.T, vd @ M.T

    def degradation_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params
                        ) -> tuple[Tensor, Tensor]:
        """Degradation (B, S) and its tangents (B, q, S), from the compiled rate derivatives."""
        v, vd = self._rates_jvp(t, x, p, x_dot, p_dot)
        M = self._matrices(x)[2]
        return v @ M.T, vd @ M.T

    def production_jacobian(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``d production / dx`` (B, S, S), analytic: ``N_syn dv/dx``."""
        return self._matrices(x)[1] @ self.rate_jacobian(t, x, p)

    def degradation_jacobian(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``d degradation / dx`` (B, S, S), analytic: ``-N_rest dv/dx``."""
        return self._matrices(x)[2] @ self.rate_jacobian(t, x, p)

    def loss_channels(self, t: Tensor, x: Tensor, p: Params) -> tuple[Tensor, Tensor]:
        """The non-synthesis reactions as noise streams for the chemical Langevin equation: their
        rates (B, R') and stoichiometry columns (S, R'), ``degradation = -N' v'``."""
        N = self._matrices(x)[0]
        rest = ~self._synthesis.to(x.device)
        return self.rates(t, x, p)[:, rest], N[:, rest]

    def synthesis_variance(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``Σ_r N_ir² v_r`` over the synthesis reactions (B, S): the variance rate of the CLE's
        synthesis stream per species (N effective, volumes divided out)."""
        N = self._matrices(x)[1]  # N restricted to the synthesis reactions
        return self.rates(t, x, p) @ (N * N).T

    def event_size(self, x: Tensor) -> Tensor:
        """How far one unit event moves each state (S,): ``1 / V`` of a concentration, else 1."""
        return x.new_tensor([1.0 / self.volumes.get(s, 1.0) for s in self.genes])

    # --------------------------------------------------------------- native
    def stoichiometry_csc(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """N by reaction for the native kernels: column starts (R + 1), species of each nonzero,
        its value (float64), and per reaction 1 for a synthesis (uint8)."""
        if getattr(self, "_csc", None) is None:
            N = self._N.numpy()
            ptr, rows, vals = [0], [], []
            for k in range(N.shape[1]):
                nz = np.flatnonzero(N[:, k])
                rows += nz.tolist()
                vals += N[nz, k].tolist()
                ptr.append(len(rows))
            self._csc = (np.asarray(ptr, dtype=np.int32), np.asarray(rows or [0], dtype=np.int32),
                         np.asarray(vals or [0.0], dtype=np.float64), self._synthesis.numpy().astype(np.uint8))
        return self._csc

    def stoichiometry_csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N by species for the native kernels: per species i its synthesis entries
        ``ptr[2i]..ptr[2i+1]`` then its other entries up to ``ptr[2i+2]`` (2 S + 1 starts), the
        reaction of each entry and its value N_ir (float64)."""
        if getattr(self, "_csr", None) is None:
            N, syn = self._N.numpy(), self._synthesis.numpy()
            ptr, cols, vals = [0], [], []
            for i in range(N.shape[0]):
                for want in (True, False):
                    nz = [k for k in np.flatnonzero(N[i]) if bool(syn[k]) == want]
                    cols += nz
                    vals += [float(N[i, k]) for k in nz]
                    ptr.append(len(cols))
            self._csr = (np.asarray(ptr, dtype=np.int32), np.asarray(cols or [0], dtype=np.int32),
                         np.asarray(vals or [0.0], dtype=np.float64))
        return self._csr

    def native_spec(self, p: Params) -> dict | None:
        """What the native kernels need (:mod:`genenet.native.compiled`): the parameter matrix
        ``params`` (B or 1, P) in :attr:`param_names` order and ``reaction_scale``; None where the
        model cannot be compiled. Rates that read ``t`` get each stage's time (and the Rosenbrock
        steps ``∂f/∂t`` from the generated ``dv/dt``)."""
        like = next(iter(p.values())) if p else torch.zeros(1, dtype=torch.float64)
        from .. import native
        from ..native import compiled

        if not native.available(like.dtype) or compiled.library(self, like.dtype) is None:
            return None
        B = max([v.shape[0] for v in p.values() if v.ndim > 0] or [1])
        params = (torch.cat([p[n].reshape(-1, 1).expand(B, 1) for n in self.param_names], dim=1)
                  if self.param_names else like.new_zeros(B, 0))
        spec = {"model": self, "params": params}
        if self._targets:
            spec["reaction_scale"] = p["reaction_scale"]
        return spec

    def native_spec_from(self, params: Tensor, dtype: torch.dtype) -> dict | None:
        """The native spec from a ready parameter matrix (B, P) in :attr:`param_names` order, for
        models that run through this one's compiled form (:class:`genenet.TwoStage`); None where
        the kernels do not run (as :meth:`native_spec`). No perturbation targets."""
        from .. import native
        from ..native import compiled

        if not native.available(dtype) or compiled.library(self, dtype) is None:
            return None
        return {"model": self, "params": params}

    def extra_repr(self) -> str:
        return (f"{len(self.genes)} species, {len(self.reactions)} reactions, {self.n_sets} parameter set(s), "
                f"parameters {self.param_names}")


def _parse_side(text: str, where: str) -> dict[str, float]:
    text = text.strip()
    if text in _EMPTY:
        return {}
    out: dict[str, float] = {}
    for term in text.split("+"):
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"{where}: cannot read {term.strip()!r}; write terms as 'A', '2 A' or '2*A', joined "
                             "by '+', and an empty side as '' or '0'")
        c = float(m.group(1)) if m.group(1) else 1.0
        if c <= 0:
            raise ValueError(f"{where}: the coefficient of {m.group(2)!r} must be positive, got {c}")
        out[m.group(2)] = out.get(m.group(2), 0.0) + c
    return out


def _parse_equation(equation: str, where: str) -> tuple[dict[str, float], dict[str, float]]:
    if not isinstance(equation, str):
        raise TypeError(f"{where}: the equation must be a string like 'A + B -> C', got {type(equation).__name__}")
    parts = re.split(r"->|→|=>", equation)
    if len(parts) != 2:
        raise ValueError(f"{where}: {equation!r} is not a reaction; write 'A + B -> C' (one arrow; a reversible "
                         "reaction is two reactions)")
    return _parse_side(parts[0], where), _parse_side(parts[1], where)


class ReactionNetwork(SymbolicModel):
    """A reaction network with rate laws, e.g. Michaelis-Menten conversion with synthesis and decay::

        model = gn.ReactionNetwork(
            reactions=[("-> S", "ks"),                      # synthesis of S
                       ("S -> P", "Vmax * S / (Km + S)"),    # conversion (mass conserving)
                       ("P ->", "kd * P")],                  # decay
            params={"ks": 1.0, "Vmax": 2.0, "Km": 0.5, "kd": 0.3})

    Parameters
    ----------
    reactions : sequence
        Each ``(equation, rate)`` or ``(name, equation, rate)`` or a mapping with keys
        ``equation``, ``rate`` and optionally ``name`` (default ``R1``, ``R2``, ...). Equations:
        ``"2 A + B -> C"``; an empty side is ``""``, ``"0"`` or ``"∅"``. Rates: text (see
        :mod:`genenet.kinetics.expressions` for the functions) or sympy; mass action is written out
        (``"k * A * B"``).
    params : mapping name -> value
        Scalar parameters (``(P,)`` for an ensemble).
    species : sequence of str, optional
        State order; default: species in order of first appearance in the equations. Give it to
        include species that appear only in rate laws (modifiers held constant).
    bounds, initial, targets, observables
        As :class:`SymbolicModel` (``targets``: which reactions a perturbation of a name scales;
        ``observables``: derived quantities kept on trajectories, ``{"P_total": "P + PB"}``).

    The perturbation semantics (knockout = no synthesis and a zero start) are in
    :mod:`genenet.kinetics.symbolic`.
    """

    def __init__(self, reactions: Iterable[Any], params: Mapping[str, Any] | None = None, *,
                 species: Sequence[str] | None = None, bounds: Mapping[str, tuple[float, float]] | None = None,
                 initial: Mapping[str, float] | None = None, targets: Mapping[str, Sequence[str]] | None = None,
                 observables: Mapping[str, Any] | None = None) -> None:
        entries = []
        for k, item in enumerate(reactions):
            if isinstance(item, Mapping):
                extra = sorted(set(item) - {"name", "equation", "rate"})
                if extra or "equation" not in item or "rate" not in item:
                    raise ValueError(f"reaction {k + 1}: a mapping needs keys 'equation' and 'rate' (and may have "
                                     f"'name'); got {sorted(item)}")
                name, eq, rate = item.get("name", f"R{k + 1}"), item["equation"], item["rate"]
            elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
                name, eq, rate = (f"R{k + 1}", *item) if len(item) == 2 else item
            else:
                raise TypeError(f"reaction {k + 1}: give (equation, rate), (name, equation, rate) or a mapping, "
                                f"got {item!r}")
            _check_name(name, "reaction")
            reactants, products = _parse_equation(eq, f"reaction {name!r}")
            entries.append((name, reactants, products, rate))
        if species is None:
            species = list(dict.fromkeys(s for _, a, b, _ in entries for s in (*a, *b)))
        params = dict(params or {})
        syms = {s: sympy.Symbol(s, real=True) for s in (*species, *params)}
        built = [Reaction(name, a, b, parse_rate(rate, syms, f"reaction {name!r}")) for name, a, b, rate in entries]
        super().__init__(species, built, params, bounds=bounds, initial=initial, targets=targets,
                         observables=observables)


def from_equations(equations: Mapping[str, Any], params: Mapping[str, Any] | None = None, *,
                   bounds: Mapping[str, tuple[float, float]] | None = None,
                   initial: Mapping[str, float] | None = None,
                   observables: Mapping[str, Any] | None = None) -> SymbolicModel:
    """A model from one right-hand side per species, e.g. a toggle switch::

        gn.Model.from_equations({"U": "a1 * hill_rep(V, K, n) - U", "V": "a2 * hill_rep(U, K, n) - V"},
                                params={"a1": 3.0, "a2": 3.0, "K": 1.0, "n": 2.0})

    ``equations``: species -> ``dx/dt`` as text or sympy (species in this order are the state).
    Each right-hand side is cut into its top-level terms: a term with a minus sign is a
    degradation of its species, every other a synthesis (what knockouts and knockdowns scale).
    ``params``, ``bounds``, ``initial``, ``observables`` as :class:`SymbolicModel`.
    """
    if not isinstance(equations, Mapping) or not equations:
        raise ValueError("equations must be a non-empty mapping species -> right-hand side")
    species = [_check_name(s, "species") for s in equations]
    params = dict(params or {})
    syms = {s: sympy.Symbol(s, real=True) for s in (*species, *params)}
    reactions = []
    for s, text in equations.items():
        expr = parse_rate(text, syms, f"equation of {s!r}")
        for k, term in enumerate(sympy.Add.make_args(expr)):
            if term == 0:
                continue
            minus = term.could_extract_minus_sign()
            rate = -term if minus else term
            name = f"{s}_{'loss' if minus else 'gain'}{k + 1}"
            reactions.append(Reaction(name, {s: 1.0} if minus else {}, {} if minus else {s: 1.0}, rate))
    return SymbolicModel(species, reactions, params, bounds=bounds, initial=initial, observables=observables)


def _sid(name: str) -> str:
    """An SBML/identifier-safe form of a gene name: other characters become ``_``."""
    out = re.sub(r"[^A-Za-z0-9_]", "_", str(name))
    return out if re.match(r"[A-Za-z_]", out) else f"_{out}"


def symbolic_form(model: Model, parameter_set: int = 0, *, nonnegative: bool = False) -> SymbolicModel:
    """The same equations as a :class:`SymbolicModel` (parameter set ``parameter_set``): for writing
    SBML and for the compiled backends. :class:`genenet.Hill` -> per gene a synthesis
    ``g_i Π_e H_e(x_j)`` and a decay ``k_i x_i`` with, per edge ``e = (j -> i)`` and
    ``s = 1 / (1 + (x_j/T_e)^n_e)``, ``H = 1/λ + (1 - 1/λ) s`` (repression) or ``1 + (1/λ - 1) s``
    (activation); :class:`genenet.TwoStage` -> transcription (the same product over the
    regulators' proteins), mRNA decay, translation ``mRNA -> mRNA + protein`` and protein decay.
    Parameters are scalars named ``production_A``, ``threshold_A_B`` (edge A -> B), ... (TwoStage:
    ``transcription_A``, ...); species are the gene names (TwoStage: ``A_mRNA``, ``A_protein``).
    :class:`genenet.Sigmoid` -> a synthesis ``g_i σ(Σ_e w_e x_j + b_i)`` (``weight_A_B``, ``bias_B``)
    and a decay per gene.
    ``nonnegative=True`` reads each regulator as ``max(x, 0)`` in its Hill factor, as the models'
    own code does (a round-off negative level must not make ``x^n`` NaN): the native kernels' form."""
    from ..models.hill import Hill
    from ..models.sigmoid import Sigmoid
    from ..models.two_stage import TwoStage

    if isinstance(model, SymbolicModel):
        return model
    if not isinstance(model, (Hill, TwoStage, Sigmoid)):
        raise TypeError(f"no symbolic form for {type(model).__name__}; allowed: Hill, TwoStage, Sigmoid, "
                        "SymbolicModel")
    vals = {k: v.detach().cpu().numpy() for k, v in model.params.items()}

    def value(name: str, j: int) -> float:
        v = vals[name]
        return float(v[min(parameter_set, v.shape[0] - 1), j])

    net = model.net
    genes = [_sid(g) for g in net.genes]
    if isinstance(model, Sigmoid):
        return _sigmoid_form(net, genes, value)
    two = isinstance(model, TwoStage)
    regulator = [f"{g}_protein" for g in genes] if two else genes
    params: dict[str, float] = {}
    syms: dict[str, sympy.Symbol] = {}

    def par(name: str, v: float) -> sympy.Symbol:
        params[name] = v
        syms[name] = sympy.Symbol(name, real=True)
        return syms[name]

    species = [*(f"{g}_mRNA" for g in genes), *regulator] if two else genes
    x = {s: sympy.Symbol(s, real=True) for s in species}
    synth = {}
    first = "transcription" if two else "production"
    for i, g in enumerate(genes):
        synth[g] = par(f"{first}_{g}", value(first, i))
    for e, (src, tgt, sign) in enumerate(net.edges):
        a, b = _sid(src), _sid(tgt)
        T = par(f"threshold_{a}_{b}", value("threshold", e))
        n = par(f"hill_{a}_{b}", value("hill", e))
        lam = par(f"fold_{a}_{b}", value("fold", e))
        xr = x[regulator[genes.index(a)]]
        s = 1 / (1 + ((sympy.Max(xr, 0) if nonnegative else xr) / T) ** n)
        H = 1 / lam + (1 - 1 / lam) * s if sign < 0 else 1 + (1 / lam - 1) * s
        synth[b] = synth[b] * H
    reactions = []
    for i, g in enumerate(genes):
        made = f"{g}_mRNA" if two else g
        reactions.append(Reaction(f"synthesis_{made}", {}, {made: 1.0}, synth[g]))
        k = par(f"mrna_degradation_{g}" if two else f"degradation_{g}", value("mrna_degradation" if two else
                                                                              "degradation", i))
        reactions.append(Reaction(f"decay_{made}", {made: 1.0}, {}, k * x[made]))
        if two:
            beta = par(f"translation_{g}", value("translation", i))
            dp = par(f"protein_degradation_{g}", value("protein_degradation", i))
            reactions.append(Reaction(f"translation_{g}", {made: 1.0}, {made: 1.0, f"{g}_protein": 1.0},
                                      beta * x[made]))
            reactions.append(Reaction(f"decay_{g}_protein", {f"{g}_protein": 1.0}, {}, dp * x[f"{g}_protein"]))
    return SymbolicModel(species, reactions, params)


def _sigmoid_form(net: Any, genes: list[str], value: Any) -> SymbolicModel:
    """:func:`symbolic_form` of :class:`genenet.Sigmoid`: ``g_i σ(Σ_e w_e x_j + b_i)`` and ``k_i x_i``."""
    x = {g: sympy.Symbol(g, real=True) for g in genes}
    params: dict[str, float] = {}

    def par(name: str, v: float) -> sympy.Symbol:
        params[name] = v
        return sympy.Symbol(name, real=True)

    g = {a: par(f"production_{a}", value("production", i)) for i, a in enumerate(genes)}
    k = {a: par(f"degradation_{a}", value("degradation", i)) for i, a in enumerate(genes)}
    u = {a: par(f"bias_{a}", value("bias", i)) for i, a in enumerate(genes)}
    for e, (src, tgt, _) in enumerate(net.edges):
        a, b = _sid(src), _sid(tgt)
        u[b] = u[b] + par(f"weight_{a}_{b}", value("weight", e)) * x[a]
    reactions = []
    for a in genes:
        reactions.append(Reaction(f"synthesis_{a}", {}, {a: 1.0}, g[a] * Logistic(u[a])))
        reactions.append(Reaction(f"decay_{a}", {a: 1.0}, {}, k[a] * x[a]))
    return SymbolicModel(genes, reactions, params)

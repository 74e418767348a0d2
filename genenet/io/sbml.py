"""SBML models in: ``gn.read_sbml(path_or_string)`` -> a :class:`genenet.SymbolicModel`.

Needs python-libsbml (``pip install 'genenet[sbml]'``). What is read, and how it maps:

- **species**: the state of a species is what its id means in SBML math: its concentration
  (amount / compartment size) unless ``hasOnlySubstanceUnits``, then its amount. Reactions' rates
  are amounts per time, so a concentration's row of the stoichiometry is divided by its
  compartment's size. Boundary and constant species are states no reaction changes.
- **compartments**: a constant size is a number in the math (not a fit parameter). A size a rule
  changes (rate rule: a state; assignment rule: an expression) is read exactly: a concentration
  species in such a compartment is integrated as its **amount** ``n`` (what reactions change; the
  state ``traj.amount("S")``), and its id reads as ``n / V`` in every expression and on the
  trajectory (``traj["S"]``: the concentration, diluted as the compartment grows). A rate rule
  for such a species gives ``d[S]/dt``: ``dn/dt = V d[S]/dt + [S] dV/dt``.
- **parameters**: global ones keep their SBML ids; a reaction's local ones are named
  ``"reaction__parameter"``. Constant ones are model parameters (``free=["k1"]`` in ``gn.fit``;
  bounds ``(0, inf)`` for a positive value, unbounded otherwise); non-constant ones must be
  defined by a rule.
- **stoichiometries**: numbers; a species reference's id reads as its stoichiometry. One that an
  initial assignment sets is that number; one that a rule changes (assignment or rate rule, L2's
  ``stoichiometryMath``) multiplies the rate: the reaction gets a companion reaction
  ``"<reaction>.product.<species>"`` (or ``.reactant.``) with rate ``v * s(t)`` for that species
  (``targets`` naming the reaction scale its companions too). The chemical Langevin noise takes
  each companion as a reaction of its own (variance ``v s`` where one event of size ``s`` gives
  ``v s^2``): exact for the mean, approximate for the noise of such a reaction.
- **function definitions** (inlined), **assignment rules** (substituted wherever their variable
  appears; the assigned quantities are :attr:`observables`), **rate rules** (the variable becomes
  a state: ``d variable / dt = expression``), **initial assignments** (evaluated at import with the
  values then given; assignment rules hold from ``t = 0`` on), a reaction's id in math (its rate),
  ``time`` and ``avogadro`` (SBML L3's 6.02214179e23), the whole of L3V2 math (``min``, ``max``,
  ``quotient`` and ``rem`` truncating toward zero, ``implies``, the reciprocal trigonometric
  functions; booleans used as numbers are 1 and 0, numbers used as conditions true unless 0).
  A rule or initial assignment without math has no effect. A model with no state at all (only
  parameters and assignments of time) simulates to its observables, ``y`` of shape (B, T, 0).
- units are ignored, never converted: values are taken as written.

Refused with a ``ValueError`` naming the construct and the element id (nothing is dropped):
events, delays, ``rateOf``, algebraic rules, fast reactions, constraints, parameters with no value
from anywhere, and any SBML package (comp, fbc, ...). (A parameter an initial assignment sets to inf or
NaN is a constant of the math, not a fit parameter: ``model.sbml_constants``.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sympy
import torch

from ..kinetics.expressions import TIME, Logistic
from ..kinetics.symbolic import Reaction, SymbolicModel

__all__ = ["read_sbml", "write_sbml", "sbml_values"]

AVOGADRO = 6.02214179e23  # SBML Level 3's value (CODATA 2006), not the 2019 SI's 6.02214076e23


def _libsbml() -> Any:
    try:
        import libsbml
    except ImportError:
        raise ImportError("reading SBML needs python-libsbml: pip install 'genenet[sbml]' "
                          "(or pip install python-libsbml)") from None
    return libsbml


def _document(source: str | os.PathLike) -> Any:
    lib = _libsbml()
    text = str(source)
    if isinstance(source, os.PathLike) or not text.lstrip().startswith("<"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"no SBML file at {path}")
        doc = lib.readSBMLFromFile(str(path))
    else:
        doc = lib.readSBMLFromString(text)
    errors = [doc.getError(i) for i in range(doc.getNumErrors())]
    fatal = [e for e in errors if e.getSeverity() >= lib.LIBSBML_SEV_ERROR]
    if fatal or doc.getModel() is None:
        msgs = "; ".join(f"line {e.getLine()}: {e.getMessage().strip()}" for e in fatal[:5]) or "no model element"
        raise ValueError(f"not a readable SBML model: {msgs}")
    return doc


class _Math:
    """libsbml ASTNode -> sympy, with the model's names resolved by ``names`` (id -> sympy)."""

    def __init__(self, lib: Any, names: Mapping[str, sympy.Expr], functions: Mapping[str, sympy.Lambda]):
        self.lib, self.names, self.functions = lib, names, functions
        L = lib
        self.binary = {L.AST_PLUS: sympy.Add, L.AST_TIMES: sympy.Mul}
        self.unary = {L.AST_FUNCTION_EXP: sympy.exp, L.AST_FUNCTION_LN: sympy.log, L.AST_FUNCTION_ABS: sympy.Abs,
                      L.AST_FUNCTION_FLOOR: sympy.floor, L.AST_FUNCTION_CEILING: sympy.ceiling,
                      L.AST_FUNCTION_SIN: sympy.sin, L.AST_FUNCTION_COS: sympy.cos, L.AST_FUNCTION_TAN: sympy.tan,
                      L.AST_FUNCTION_ARCSIN: sympy.asin, L.AST_FUNCTION_ARCCOS: sympy.acos,
                      L.AST_FUNCTION_ARCTAN: sympy.atan, L.AST_FUNCTION_SINH: sympy.sinh,
                      L.AST_FUNCTION_COSH: sympy.cosh, L.AST_FUNCTION_TANH: sympy.tanh,
                      L.AST_FUNCTION_ARCSINH: sympy.asinh, L.AST_FUNCTION_ARCCOSH: sympy.acosh,
                      L.AST_FUNCTION_ARCTANH: sympy.atanh,
                      L.AST_FUNCTION_SEC: lambda a: 1 / sympy.cos(a), L.AST_FUNCTION_CSC: lambda a: 1 / sympy.sin(a),
                      L.AST_FUNCTION_COT: lambda a: 1 / sympy.tan(a),
                      L.AST_FUNCTION_FACTORIAL: lambda a: sympy.gamma(a + 1),
                      # the reciprocal functions as what codegen prints (MathML's definitions)
                      L.AST_FUNCTION_SECH: lambda a: 1 / sympy.cosh(a),
                      L.AST_FUNCTION_CSCH: lambda a: 1 / sympy.sinh(a),
                      L.AST_FUNCTION_COTH: lambda a: 1 / sympy.tanh(a),
                      L.AST_FUNCTION_ARCSEC: lambda a: sympy.acos(1 / a),
                      L.AST_FUNCTION_ARCCSC: lambda a: sympy.asin(1 / a),
                      L.AST_FUNCTION_ARCCOT: lambda a: sympy.atan(1 / a),
                      L.AST_FUNCTION_ARCSECH: lambda a: sympy.acosh(1 / a),
                      L.AST_FUNCTION_ARCCSCH: lambda a: sympy.asinh(1 / a),
                      L.AST_FUNCTION_ARCCOTH: lambda a: sympy.atanh(1 / a)}
        # L3V2 additions; quotient and rem truncate toward zero (C's integer division and fmod)
        self.nary = {getattr(L, "AST_FUNCTION_MIN", -2): sympy.Min, getattr(L, "AST_FUNCTION_MAX", -3): sympy.Max,
                     getattr(L, "AST_FUNCTION_QUOTIENT", -4): lambda a, b: _trunc(a / b),
                     getattr(L, "AST_FUNCTION_REM", -5): lambda a, b: a - b * _trunc(a / b),
                     getattr(L, "AST_LOGICAL_IMPLIES", -6): lambda a, b: sympy.Or(sympy.Not(_boolean(a)), _boolean(b))}
        self.relational = {L.AST_RELATIONAL_EQ: sympy.Eq, L.AST_RELATIONAL_NEQ: sympy.Ne,
                           L.AST_RELATIONAL_LT: sympy.Lt, L.AST_RELATIONAL_LEQ: sympy.Le,
                           L.AST_RELATIONAL_GT: sympy.Gt, L.AST_RELATIONAL_GEQ: sympy.Ge}
        self.logical = {L.AST_LOGICAL_AND: sympy.And, L.AST_LOGICAL_OR: sympy.Or, L.AST_LOGICAL_XOR: sympy.Xor}

    def __call__(self, ast: Any, where: str, local: Mapping[str, sympy.Expr] | None = None) -> sympy.Expr:
        if ast is None:
            raise ValueError(f"{where}: no math")
        try:
            return self._node(ast, where, local or {})
        except TypeError as e:  # sympy refuses e.g. a number where a condition must be a boolean
            raise ValueError(f"{where}: booleans and numbers mixed in a way genenet does not read ({e})") from None

    def _node(self, n: Any, where: str, local: Mapping[str, sympy.Expr]) -> Any:
        L, t = self.lib, n.getType()
        kids = [self._node(n.getChild(i), where, local) for i in range(n.getNumChildren())] \
            if t not in (L.AST_LAMBDA,) else []
        if t == L.AST_INTEGER:
            return sympy.Integer(n.getInteger())
        if t in (L.AST_REAL, L.AST_REAL_E):
            v = n.getReal()
            if math.isnan(v):
                return sympy.nan
            return sympy.oo if v == math.inf else (-sympy.oo if v == -math.inf else sympy.Float(v))
        if t == L.AST_RATIONAL:
            return sympy.Rational(n.getNumerator(), n.getDenominator())
        if t == L.AST_NAME:
            name = n.getName()
            if name in local:
                return local[name]
            if name in self.names:
                return self.names[name]
            raise ValueError(f"{where}: unknown identifier {name!r}")
        if t == L.AST_NAME_TIME:
            return TIME
        if t == L.AST_NAME_AVOGADRO:
            return sympy.Float(AVOGADRO)
        if t == L.AST_CONSTANT_E:
            return sympy.E
        if t == L.AST_CONSTANT_PI:
            return sympy.pi
        if t == L.AST_CONSTANT_TRUE:
            return sympy.true
        if t == L.AST_CONSTANT_FALSE:
            return sympy.false
        if t == L.AST_LOGICAL_NOT:
            return sympy.Not(_boolean(kids[0]))
        if t in self.logical:
            kids = [_boolean(k) for k in kids]
            return self.logical[t](*kids) if kids else (sympy.true if t == L.AST_LOGICAL_AND else sympy.false)
        if t == L.AST_FUNCTION_PIECEWISE:
            pieces = [(_number(kids[i]), _boolean(kids[i + 1])) for i in range(0, len(kids) - 1, 2)]
            if len(kids) % 2:
                pieces.append((_number(kids[-1]), True))
            return sympy.Piecewise(*pieces)
        kids = [_number(k) for k in kids]  # a comparison's truth used as a number is 1 or 0
        if t in self.nary:
            return self.nary[t](*kids)
        if t in self.binary:
            return self.binary[t](*kids) if kids else (sympy.Integer(0) if t == L.AST_PLUS else sympy.Integer(1))
        if t == L.AST_MINUS:
            return -kids[0] if len(kids) == 1 else kids[0] - kids[1]
        if t == L.AST_DIVIDE:
            return kids[0] / kids[1]
        if t in (L.AST_POWER, L.AST_FUNCTION_POWER):
            return kids[0] ** kids[1]
        if t == L.AST_FUNCTION_ROOT:
            return kids[-1] ** (1 / kids[0]) if len(kids) == 2 else sympy.sqrt(kids[0])
        if t == L.AST_FUNCTION_LOG:  # MathML's log is base 10 unless a logbase is given
            return sympy.log(kids[-1]) / sympy.log(kids[0] if len(kids) == 2 else 10)
        if t in self.unary:
            return self.unary[t](kids[0])
        if t in self.relational:
            return self.relational[t](*kids) if len(kids) == 2 else sympy.And(
                *[self.relational[t](a, b) for a, b in zip(kids, kids[1:])])
        if t == L.AST_FUNCTION:
            name = n.getName()
            if name not in self.functions:
                raise ValueError(f"{where}: unknown function {name!r}")
            return self.functions[name](*kids)
        if t == L.AST_FUNCTION_DELAY:
            raise ValueError(f"{where}: delay() is not supported (a delay differential equation)")
        if t == getattr(L, "AST_FUNCTION_RATE_OF", -1):
            raise ValueError(f"{where}: rateOf() is not supported")
        raise ValueError(f"{where}: the MathML element {n.getName() or t!r} is not supported")


#: truth values (a sympy Symbol is a Boolean too: these are the ones that are nothing else)
_TRUTH = (sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction, sympy.logic.boolalg.BooleanAtom)


def _boolean(e: Any) -> Any:
    """A number where MathML wants a condition: true unless 0."""
    if isinstance(e, _TRUTH):
        return e
    return sympy.Ne(e, 0)


def _number(e: Any) -> Any:
    """A condition where MathML wants a number: 1 or 0."""
    if isinstance(e, _TRUTH):
        return sympy.Piecewise((sympy.Integer(1), e), (sympy.Integer(0), True))
    return e


def _trunc(q: sympy.Expr) -> sympy.Expr:
    return sympy.Piecewise((sympy.floor(q), q >= 0), (sympy.ceiling(q), True))


def _lambda(lib: Any, fd: Any, functions: Mapping[str, sympy.Lambda]) -> sympy.Lambda:
    body = fd.getMath()
    if body is None or body.getType() != lib.AST_LAMBDA:
        raise ValueError(f"function definition {fd.getId()!r}: no lambda")
    n_args = body.getNumChildren() - 1
    args = [sympy.Symbol(body.getChild(i).getName(), real=True) for i in range(n_args)]
    local = {a.name: a for a in args}
    expr = _Math(lib, {}, functions)(body.getChild(n_args), f"function definition {fd.getId()!r}", local)
    return sympy.Lambda(tuple(args), expr)


#: packages that change no equation: libsbml's own plugin for L3V2 core math, diagrams
_HARMLESS = ("l3v2extendedmath", "layout", "render")


def _refuse(doc: Any, model: Any, lib: Any) -> None:
    """Everything outside the subset the module doc lists, named with its element id."""
    for i in range(doc.getNumPlugins()):
        name = doc.getPlugin(i).getPackageName()
        # l3v2extendedmath is libsbml's own plugin for L3V2 core math, not a package of the file
        if name and name not in _HARMLESS and doc.isPackageEnabled(name):
            raise ValueError(f"SBML package {name!r} is not supported (genenet reads SBML core)")
    if model.getNumEvents():
        ids = [model.getEvent(i).getId() or f"#{i + 1}" for i in range(model.getNumEvents())]
        raise ValueError(f"events are not supported: {', '.join(ids)}")
    if model.getNumConstraints():
        raise ValueError(f"constraints are not supported ({model.getNumConstraints()} in the model)")
    for i in range(model.getNumRules()):
        rule = model.getRule(i)
        if rule.isAlgebraic():
            text = lib.formulaToL3String(rule.getMath())
            raise ValueError(f"algebraic rules are not supported (rule #{i + 1}: {text})")
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        if r.isSetFast() and r.getFast():
            raise ValueError(f"fast reactions are not supported: reaction {r.getId()!r}")


def read_sbml(source: str | os.PathLike, *, bounds: Mapping[str, tuple[float, float]] | None = None,
              targets: Mapping[str, list[str]] | None = None) -> SymbolicModel:
    """A :class:`~genenet.SymbolicModel` from an SBML file or string (levels 2 and 3, core).

    Parameters
    ----------
    source : path, or the SBML text itself (a string starting with ``<``)
    bounds : mapping parameter id -> (lo, hi), optional
        Overrides the bounds the import sets from the values.
    targets : mapping name -> reaction ids, optional
        Which reactions a knockout, knockdown or fold overexpression of a name scales (SBML has no
        gene -> reaction map): e.g. ``{"cdc25": ["R7"]}`` for an enzyme written into a rate law.

    Returns the model: ``model.genes`` are the state ids (species, then variables with rate
    rules), ``model.params`` the constant parameters by id, ``model.observables`` the assigned
    quantities (assignment rules) and compartment sizes as sympy expressions, ``model.sbml_units``
    whether each species state is an ``"amount"`` or a ``"concentration"``, ``model.volumes`` the
    compartment size of each concentration species and ``model.compartment_size`` per species.
    A trajectory gives every such id: ``traj["S1"]`` as the model declares it (a concentration unless
    ``hasOnlySubstanceUnits``), ``traj.amount("S1")``, ``traj["rule_id"]`` of an assigned quantity
    evaluated with each row's parameters. See the module doc for what is read and what is refused.

    Example
    -------
    >>> model = gn.read_sbml("BIOMD0000000012.xml")          # the repressilator
    >>> traj = gn.simulate(model, np.linspace(0, 1000, 501), perturbations=[gn.Knockout("PX")])
    >>> traj["PX"].shape                                     # (rows, times)
    """
    lib = _libsbml()
    doc = _document(source)
    model = doc.getModel()
    _refuse(doc, model, lib)
    functions: dict[str, sympy.Lambda] = {}
    for i in range(model.getNumFunctionDefinitions()):
        fd = model.getFunctionDefinition(i)
        functions[fd.getId()] = _lambda(lib, fd, functions)

    # a rule or initial assignment without math (allowed from L3V2 on) has no effect
    rules = [model.getRule(i) for i in range(model.getNumRules())]
    rate_rules = {r.getVariable(): r for r in rules if r.isRate() and r.getMath() is not None}
    assign_rules = {r.getVariable(): r for r in rules if r.isAssignment() and r.getMath() is not None}
    inits = [ia for ia in (model.getInitialAssignment(i) for i in range(model.getNumInitialAssignments()))
             if ia.getMath() is not None]
    ruled = set(rate_rules) | set(assign_rules)

    def sym(name: str) -> sympy.Symbol:
        return sympy.Symbol(name, real=True)

    names: dict[str, sympy.Expr] = {}  # id -> what the id reads as in math
    start: dict[sympy.Symbol, Any] = {}  # symbol -> its value at t = 0, an expression until evaluated
    compartments = [model.getCompartment(i).getId() for i in range(model.getNumCompartments())]
    for i, cid in enumerate(compartments):
        c = model.getCompartment(i)
        names[cid] = sym(cid)
        start[sym(cid)] = sympy.Float(c.getSize() if c.isSetSize() else 1.0)
    varying = {c for c in compartments if c in ruled}  # a size that changes in time

    species, units, compartment_of, amount_states, fixed = [], {}, {}, set(), []
    for i in range(model.getNumSpecies()):
        s = model.getSpecies(i)
        sid, cid = s.getId(), s.getCompartment()
        x, V = sym(sid), (sym(cid) if cid in compartments else sympy.Integer(1))
        amount = s.getHasOnlySubstanceUnits()
        units[sid] = "amount" if amount else "concentration"
        compartment_of[sid] = cid
        names[sid] = x
        if sid in assign_rules:
            continue  # an assigned species: an observable, not a state
        species.append(sid)
        if not amount and cid in varying:  # integrated as an amount n (what reactions change); reads as n / V
            amount_states.add(sid)
            names[sid] = x / V
        in_amount = amount or sid in amount_states
        if s.isSetInitialAmount():
            start[x] = sympy.Float(s.getInitialAmount()) / (1 if in_amount else V)
        elif s.isSetInitialConcentration():
            start[x] = sympy.Float(s.getInitialConcentration()) * (V if in_amount else 1)
        if (s.getBoundaryCondition() or s.getConstant()) and sid not in rate_rules:
            fixed.append(sid)

    params: dict[str, float] = {}
    extra_states = [c for c in compartments if c in rate_rules]
    for i in range(model.getNumParameters()):
        p = model.getParameter(i)
        pid = p.getId()
        names[pid] = sym(pid)
        start[sym(pid)] = sympy.Float(p.getValue()) if p.isSetValue() else sympy.nan
        if pid in rate_rules:
            extra_states.append(pid)
        elif pid not in assign_rules:  # constant, or non-constant without a rule (no event can change it)
            params[pid] = math.nan
    refs = [(model.getReaction(i), ref) for i in range(model.getNumReactions())
            for ref in _species_references(model.getReaction(i))]
    for _, ref in refs:  # a species reference's id is its stoichiometry in math
        if ref.isSetId():
            names[ref.getId()] = sym(ref.getId())
            start[sym(ref.getId())] = sympy.Float(ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0)
            if ref.getId() in rate_rules:
                extra_states.append(ref.getId())
    locals_of: dict[str, dict[str, sympy.Symbol]] = {}
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        law = r.getKineticLaw()
        if law is None or law.getMath() is None:
            raise ValueError(f"reaction {r.getId()!r} has no kinetic law")
        scope = {}
        for j in range(law.getNumParameters()):
            lp = law.getParameter(j)
            name = f"{r.getId()}__{lp.getId()}"
            scope[lp.getId()] = sym(name)
            params[name] = lp.getValue()
            start[sym(name)] = sympy.Float(lp.getValue())
        locals_of[r.getId()] = scope
    math_of = _Math(lib, names, functions)
    laws = {}
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        laws[r.getId()] = math_of(r.getKineticLaw().getMath(), f"reaction {r.getId()!r}", locals_of[r.getId()])
    names.update(laws)  # a reaction's id in math is its rate

    # assignment rules, substituted in order until none is left (SBML forbids cycles)
    assigned = {v: math_of(rule.getMath(), f"assignment rule for {v!r}") for v, rule in assign_rules.items()}
    for _ in range(len(assigned) + 1):
        changed = False
        for v, e in assigned.items():
            new = e.xreplace({sym(k): assigned[k] for k in assigned if sym(k) in e.free_symbols})
            changed |= new != e
            assigned[v] = new
        if not changed:
            break
    subs = {sym(k): e for k, e in assigned.items()}

    def resolve(expr: sympy.Expr) -> sympy.Expr:
        return expr.xreplace(subs) if subs else expr

    # the start: initial assignments override the values given; assignment rules hold from t = 0 on
    for ia in inits:
        v = ia.getSymbol()
        expr = resolve(math_of(ia.getMath(), f"initial assignment of {v!r}"))
        start[sym(v)] = expr * sym(compartment_of[v]) if v in amount_states else expr
    start.update(subs)
    at_start = _evaluate_at_start(start)

    def value(name: str, what: str) -> float:
        v = at_start.get(sym(name))
        if v is None:
            raise ValueError(f"{what} {name!r}: cannot evaluate {start[sym(name)]} at the start")
        return v

    for k in params:
        params[k] = value(k, "parameter")
    given = {ia.getSymbol() for ia in inits}  # an initial assignment may give nan or inf on purpose
    missing = sorted(k for k, v in params.items() if math.isnan(v) and k not in given)
    if missing:
        raise ValueError(f"parameters without a value: {missing}")
    sizes = {c: value(c, "compartment") for c in compartments}
    # what stays constant is a number in the math: compartments and stoichiometries no rule changes, and a
    # parameter set to inf or nan (not a model parameter: those are finite; model.sbml_constants)
    constants = {sym(c): sympy.Float(sizes[c]) for c in compartments if c not in varying}
    for k in [k for k, v in params.items() if not math.isfinite(v)]:
        v = params.pop(k)
        constants[sym(k)] = sympy.nan if math.isnan(v) else (sympy.oo if v > 0 else -sympy.oo)
    constants.update({sym(ref.getId()): sympy.Float(value(ref.getId(), "species reference")) for _, ref in refs
                      if ref.isSetId() and ref.getId() not in ruled})

    def finish(expr: sympy.Expr) -> sympy.Expr:
        return resolve(expr).xreplace(constants)

    states = [*species, *extra_states]
    initial = {k: value(k, "initial value of") for k in states if sym(k) in start}
    volumes = {sid: sizes[compartment_of[sid]] for sid in species
               if units[sid] == "concentration" and sid not in amount_states and compartment_of[sid] in sizes}

    def conversion(sid: str) -> float:
        """SBML L3's conversion factor of a species (its own, else the model's): scales its stoichiometry."""
        s = model.getSpecies(sid)
        cf = s.getConversionFactor() if s is not None and s.isSetConversionFactor() else (
            model.getConversionFactor() if model.isSetConversionFactor() else "")
        if not cf:
            return 1.0
        if cf not in params:
            raise ValueError(f"species {sid!r}: conversion factor {cf!r} must be a constant parameter")
        return float(params[cf])

    reactions, companions = [], {}
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        rate = finish(laws[r.getId()])
        # a stoichiometry a rule changes multiplies the rate: one more reaction for that species
        sides: tuple[dict, dict] = ({}, {})
        varying_parts: dict[tuple[int, str], sympy.Expr] = {}
        for side, ref in [(0, r.getReactant(j)) for j in range(r.getNumReactants())] + \
                         [(1, r.getProduct(j)) for j in range(r.getNumProducts())]:
            sp = ref.getSpecies()
            if sp in assign_rules:
                continue
            if hasattr(ref, "isSetStoichiometryMath") and ref.isSetStoichiometryMath():
                where = f"stoichiometry of {sp!r} in {r.getId()!r}"
                coef = finish(math_of(ref.getStoichiometryMath().getMath(), where))
            elif ref.isSetId():
                coef = finish(sym(ref.getId()))
            else:
                coef = sympy.Float(ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0)
            coef = coef * conversion(sp)
            if coef.is_number:
                sides[side][sp] = sides[side].get(sp, 0.0) + float(coef)
            else:
                varying_parts[side, sp] = varying_parts.get((side, sp), 0) + coef
        reactions.append(Reaction(r.getId(), sides[0], sides[1], rate))
        for (side, sp), coef in varying_parts.items():
            one = {sp: 1.0}
            name = f"{r.getId()}.{'reactant' if side == 0 else 'product'}.{sp}"
            reactions.append(Reaction(name, {} if side else one, one if side else {}, rate * coef))
            companions.setdefault(r.getId(), []).append(name)
    for v, rule in rate_rules.items():
        if v not in states:
            raise ValueError(f"rate rule for {v!r}: only species, compartments, parameters and species "
                             "references may have rate rules")
        expr = finish(math_of(rule.getMath(), f"rate rule for {v!r}"))
        if v in amount_states:  # d[S]/dt given, n = [S] V integrated: dn/dt = V d[S]/dt + [S] dV/dt
            V = finish(sym(compartment_of[v]))
            expr = V * expr + sym(v) / V * _size_rate(compartment_of[v], rate_rules, assigned, finish, math_of)
        # d v / dt = expr in v's own units: the coefficient V cancels the division by the volume
        reactions.append(Reaction(f"rate_rule.{v}", {}, {v: volumes.get(v, 1.0)}, expr))
    # what trajectories carry beside the states, by SBML id: assigned quantities, compartment sizes,
    # stoichiometries, and the concentration of a species integrated as an amount (same id as its state)
    observables = {**{c: sympy.Float(sizes[c]) for c in compartments if c not in varying},
                   **{k: e.xreplace(constants) for k, e in assigned.items()},
                   **{str(k): v for k, v in constants.items() if str(k) not in compartments and v.is_finite},
                   **{sid: names[sid].xreplace(subs).xreplace(constants) for sid in amount_states}}
    if targets and companions:  # a perturbation of a reaction scales its companions too: the same events
        targets = {name: [*hits, *(c for h in hits for c in companions.get(h, []))] if not isinstance(hits, str)
                   else hits for name, hits in targets.items()}
    out = SymbolicModel(states, reactions, params, bounds=bounds, initial=initial, volumes=volumes, fixed=fixed,
                        targets=targets, observables=observables)
    out.volumes = {sid: sizes[c] for sid, c in compartment_of.items()
                   if units[sid] == "concentration" and sid not in amount_states and c in sizes and c not in varying}
    out.sbml_units = units
    out.compartment_of = compartment_of
    out.compartment_size = {sid: sizes[c] for sid, c in compartment_of.items() if c in sizes and c not in varying}
    out.compartments = dict(sizes)
    out.sbml_constants = {str(k): float(v) for k, v in constants.items() if not v.is_finite}
    return out


def _species_references(r: Any) -> list[Any]:
    return [*(r.getReactant(j) for j in range(r.getNumReactants())),
            *(r.getProduct(j) for j in range(r.getNumProducts()))]


def _evaluate_at_start(start: Mapping[sympy.Symbol, Any]) -> dict[sympy.Symbol, float]:
    """Values at t = 0 of expressions over each other (initial assignments, assignment rules, sizes),
    substituted until each is a number; those that never become one are left out."""
    pending = {k: sympy.sympify(sympy.sympify(e).xreplace({TIME: 0})) for k, e in start.items()}
    done: dict[sympy.Symbol, Any] = {}
    while pending:
        ready = {k: e for k, e in pending.items() if not e.free_symbols}
        if not ready:
            break
        done.update(ready)
        pending = {k: sympy.sympify(e.xreplace(ready)) for k, e in pending.items() if k not in ready}
    out = {}
    for k, e in done.items():
        if isinstance(e, sympy.logic.boolalg.BooleanAtom):
            e = sympy.Integer(1 if e else 0)
        out[k] = float(e) if e is not sympy.zoo else math.nan
    return out


def _size_rate(c: str, rate_rules: Mapping[str, Any], assigned: Mapping[str, sympy.Expr], finish: Any,
               math_of: Any) -> sympy.Expr:
    """dV/dt of a compartment whose size changes: its rate rule, or the time derivative of an
    assignment over time and constants (one over states would need their rates: refused)."""
    if c in rate_rules:
        return finish(math_of(rate_rules[c].getMath(), f"rate rule for {c!r}"))
    size = finish(assigned[c])
    if any(s != TIME for s in size.free_symbols):
        raise ValueError(f"compartment {c!r}: a rate rule for a concentration in it needs dV/dt; its assigned "
                         f"size {size} depends on more than time: not supported")
    return sympy.diff(size, TIME)


def sbml_values(model: SymbolicModel, traj: Any, ids: list[str], amounts: Any = ()) -> dict[str, Any]:
    """Time courses (B, T) of SBML ids from a trajectory of a model :func:`read_sbml` made: states
    and the trajectory's observables (assigned quantities, compartment sizes, stoichiometries) as
    the trajectory gives them, constant parameters from the model. A species is given in its
    declared quantity (concentration unless ``hasOnlySubstanceUnits``) or, when its id is in
    ``amounts``, as an amount (times its compartment's size at each time)."""
    B, T = traj.y.shape[:2]
    units = getattr(model, "sbml_units", {})
    where = getattr(model, "compartment_of", {})
    out = {}
    for sid in ids:
        if sid in model.genes or sid in traj.observables:
            v = traj[sid].detach()
        elif sid in model.param_names:
            v = model.params[sid].detach().to(traj.y.dtype).reshape(-1)[:1].expand(B, T)
        elif sid in getattr(model, "sbml_constants", {}):  # a parameter set to inf or nan
            v = torch.full((B, T), model.sbml_constants[sid], dtype=traj.y.dtype)
        else:
            raise KeyError(f"no SBML id {sid!r} in this model; states {model.genes}, parameters "
                           f"{model.param_names}, observables {list(traj.observables)}")
        c = where.get(sid)
        if sid in units and c is not None:  # a species in the quantity asked for
            size = traj[c].detach() if (c in model.genes or c in traj.observables) else 1.0
            if sid in amounts and units[sid] == "concentration":
                v = v * size
            elif sid not in amounts and units[sid] == "amount":
                v = v / size
        out[sid] = v
    return out


def _formula(expr: sympy.Expr) -> str:
    """sympy -> SBML L3 infix (``^`` for powers, ``ln`` for the natural log, piecewise as SBML's)."""
    if expr.is_Symbol:
        return "time" if expr == TIME else expr.name
    if expr.is_Number:
        return repr(float(expr))
    if expr.is_Add:
        return "(" + " + ".join(_formula(a) for a in expr.args) + ")"
    if expr.is_Mul:
        return "(" + " * ".join(_formula(a) for a in expr.args) + ")"
    if expr.is_Pow:
        return f"({_formula(expr.base)} ^ {_formula(expr.exp)})"
    names = {sympy.exp: "exp", sympy.log: "ln", sympy.Abs: "abs", sympy.floor: "floor", sympy.ceiling: "ceil",
             sympy.sin: "sin", sympy.cos: "cos", sympy.tan: "tan", sympy.tanh: "tanh"}
    if expr.func in names:
        return f"{names[expr.func]}({_formula(expr.args[0])})"
    if isinstance(expr, Logistic):  # SBML has no logistic: written out
        return f"(1 / (1 + exp(-{_formula(expr.args[0])})))"
    if isinstance(expr, (sympy.Min, sympy.Max)):
        return f"{'min' if isinstance(expr, sympy.Min) else 'max'}({', '.join(_formula(a) for a in expr.args)})"
    if isinstance(expr, sympy.Piecewise):
        parts = []
        for v, c in expr.args:
            parts += [_formula(v)] if c == sympy.true else [_formula(v), _formula(c)]
        return f"piecewise({', '.join(parts)})"
    if isinstance(expr, sympy.core.relational.Relational):
        return f"({_formula(expr.lhs)} {expr.rel_op} {_formula(expr.rhs)})"
    raise ValueError(f"cannot write {expr.func.__name__} ({expr}) as SBML math")


def write_sbml(model: Any, path: str | os.PathLike | None = None, *, model_id: str = "genenet_model",
               parameter_set: int = 0) -> str:
    """Write ``model`` (:class:`genenet.Hill`, :class:`genenet.TwoStage`, :class:`genenet.Sigmoid` or
    a symbolic model) as SBML Level 3 Version 2 core, so it opens in COPASI, tellurium or
    libroadrunner; returns the text (and writes it to ``path`` when given).

    One compartment ``cell`` of size 1; species with ``hasOnlySubstanceUnits="false"`` and their
    initial concentrations from the model's default start; every parameter a constant global
    parameter (``parameter_set`` of an ensemble); one reaction per reaction of
    :func:`genenet.kinetics.symbolic.symbolic_form` with its rate law. A model written and read
    back (:func:`read_sbml`) simulates the same trajectories (tests/test_sbml.py)."""
    from ..kinetics.symbolic import symbolic_form

    lib = _libsbml()
    sym = symbolic_form(model, parameter_set)
    doc = lib.SBMLDocument(3, 2)
    m = doc.createModel()
    m.setId(model_id)
    c = m.createCompartment()
    c.setId("cell")
    c.setSize(1.0)
    c.setConstant(True)
    c.setSpatialDimensions(3)
    x0 = sym.default_x0(1, device=torch.device("cpu"), dtype=torch.float64)[0].tolist()
    for s, v in zip(sym.genes, x0):
        sp = m.createSpecies()
        for call, arg in ((sp.setId, s), (sp.setCompartment, "cell"), (sp.setInitialConcentration, float(v)),
                          (sp.setHasOnlySubstanceUnits, False), (sp.setBoundaryCondition, False),
                          (sp.setConstant, False)):
            call(arg)
    for name, value in sym.params.items():
        p = m.createParameter()
        p.setId(name)
        p.setValue(float(value.detach()[min(parameter_set, value.shape[0] - 1), 0]))
        p.setConstant(True)
    for r in sym.reactions:
        rx = m.createReaction()
        rx.setId(r.name)
        rx.setReversible(False)
        for side, make in ((r.reactants, rx.createReactant), (r.products, rx.createProduct)):
            for s, coef in side.items():
                ref = make()
                ref.setSpecies(s)
                ref.setStoichiometry(float(coef))
                ref.setConstant(True)
        for s in sorted(str(v) for v in r.rate.free_symbols if str(v) in sym.genes and str(v) not in
                        (*r.reactants, *r.products)):
            mod = rx.createModifier()
            mod.setSpecies(s)
        ast = lib.parseL3Formula(_formula(r.rate))
        if ast is None:
            raise ValueError(f"reaction {r.name!r}: libsbml cannot parse {_formula(r.rate)!r}: "
                             f"{lib.getLastParseL3Error()}")
        law = rx.createKineticLaw()
        law.setMath(ast)
    text = lib.writeSBMLToString(doc)
    if path is not None:
        Path(path).write_text(text)
    return text

"""SBML models in: ``gn.read_sbml(path_or_string)`` -> a :class:`genenet.SymbolicModel`.

Needs python-libsbml (``pip install 'genenet[sbml]'``). What is read, and how it maps:

- **species**: the state of a species is what its id means in SBML math: its concentration
  (amount / compartment size) unless ``hasOnlySubstanceUnits``, then its amount. Reactions' rates
  are amounts per time, so a concentration's row of the stoichiometry is divided by its
  compartment's size. Boundary and constant species are states no reaction changes.
- **compartments**: constant sizes (numbers in the math; not fit parameters). A compartment whose
  size changes (a rule) is refused.
- **parameters**: global ones keep their SBML ids; a reaction's local ones are named
  ``"reaction__parameter"``. Constant ones are model parameters (``free=["k1"]`` in ``gn.fit``;
  bounds ``(0, inf)`` for a positive value, unbounded otherwise); non-constant ones must be
  defined by a rule.
- **function definitions** (inlined), **assignment rules** (substituted wherever their variable
  appears; the assigned quantities are :attr:`observables`), **rate rules** (the variable becomes
  a state: ``d variable / dt = expression``), **initial assignments** (evaluated at import with the
  parameter values then given), ``time`` and ``avogadro``.
- units are ignored, never converted: values are taken as written.

Refused with a ``ValueError`` naming the construct and the element id (nothing is dropped):
events, delays, ``rateOf``, algebraic rules, fast reactions, constraints, non-constant compartments,
stoichiometries that change (``stoichiometryMath``, non-constant species references), and any SBML
package (comp, fbc, ...).
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

AVOGADRO = 6.02214076e23


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
                      L.AST_FUNCTION_ARCTANH: sympy.atanh, L.AST_LOGICAL_NOT: sympy.Not,
                      L.AST_FUNCTION_SEC: sympy.sec, L.AST_FUNCTION_CSC: sympy.csc, L.AST_FUNCTION_COT: sympy.cot,
                      L.AST_FUNCTION_FACTORIAL: lambda a: sympy.gamma(a + 1)}
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
        if t in self.logical:
            return self.logical[t](*kids) if kids else (sympy.true if t == L.AST_LOGICAL_AND else sympy.false)
        if t == L.AST_FUNCTION_PIECEWISE:
            pieces = [(kids[i], kids[i + 1]) for i in range(0, len(kids) - 1, 2)]
            if len(kids) % 2:
                pieces.append((kids[-1], True))
            return sympy.Piecewise(*pieces)
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
        for ref in [*(r.getReactant(j) for j in range(r.getNumReactants())),
                    *(r.getProduct(j) for j in range(r.getNumProducts()))]:
            named = ref.isSetId() and (model.getRule(ref.getId()) is not None
                                       or model.getInitialAssignment(ref.getId()) is not None)
            if (hasattr(ref, "isSetStoichiometryMath") and ref.isSetStoichiometryMath()) or \
                    (ref.isSetConstant() and not ref.getConstant()) or named:
                raise ValueError(f"reaction {r.getId()!r}: the stoichiometry of {ref.getSpecies()!r} may change "
                                 "(stoichiometryMath, a non-constant or named species reference): not supported")
    for i in range(model.getNumCompartments()):
        c = model.getCompartment(i)
        if not c.getConstant() or model.getRule(c.getId()) is not None:
            raise ValueError(f"compartment {c.getId()!r} changes size: not supported")


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

    sizes = {}
    for i in range(model.getNumCompartments()):
        c = model.getCompartment(i)
        sizes[c.getId()] = c.getSize() if c.isSetSize() else 1.0
    rate_rules = {model.getRule(i).getVariable(): model.getRule(i) for i in range(model.getNumRules())
                  if model.getRule(i).isRate()}
    assign_rules = {model.getRule(i).getVariable(): model.getRule(i) for i in range(model.getNumRules())
                    if model.getRule(i).isAssignment()}

    names: dict[str, sympy.Expr] = {c: sympy.Float(v) for c, v in sizes.items()}
    species, initial, volumes, fixed, units, where_of = [], {}, {}, [], {}, {}
    for i in range(model.getNumSpecies()):
        s = model.getSpecies(i)
        sid, V = s.getId(), sizes.get(s.getCompartment(), 1.0)
        amount = s.getHasOnlySubstanceUnits()
        names[sid] = sympy.Symbol(sid, real=True)
        units[sid] = "amount" if amount else "concentration"
        where_of[sid] = V
        if sid in assign_rules:
            continue  # an assigned species: an observable, not a state
        species.append(sid)
        if s.isSetInitialAmount():
            initial[sid] = s.getInitialAmount() if amount else s.getInitialAmount() / V
        elif s.isSetInitialConcentration():
            initial[sid] = s.getInitialConcentration() * V if amount else s.getInitialConcentration()
        if not amount:
            volumes[sid] = V
        if (s.getBoundaryCondition() or s.getConstant()) and sid not in rate_rules:
            fixed.append(sid)

    params: dict[str, float] = {}
    extra_states = []
    for i in range(model.getNumParameters()):
        p = model.getParameter(i)
        pid = p.getId()
        names[pid] = sympy.Symbol(pid, real=True)
        value = p.getValue() if p.isSetValue() else math.nan
        if pid in rate_rules:
            extra_states.append(pid)
            initial[pid] = value
        elif pid not in assign_rules:  # constant, or non-constant without a rule (no event can change it)
            params[pid] = value
    locals_of: dict[str, dict[str, sympy.Symbol]] = {}
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        law = r.getKineticLaw()
        if law is None:
            raise ValueError(f"reaction {r.getId()!r} has no kinetic law")
        scope = {}
        for j in range(law.getNumParameters()):
            lp = law.getParameter(j)
            name = f"{r.getId()}__{lp.getId()}"
            scope[lp.getId()] = sympy.Symbol(name, real=True)
            params[name] = lp.getValue()
        locals_of[r.getId()] = scope

    for i in range(model.getNumReactions()):  # a named, constant stoichiometry is a number in math
        r = model.getReaction(i)
        for ref in [*(r.getReactant(j) for j in range(r.getNumReactants())),
                    *(r.getProduct(j) for j in range(r.getNumProducts()))]:
            if ref.isSetId():
                names[ref.getId()] = sympy.Float(ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0)
    math_of = _Math(lib, names, functions)
    # assignment rules, substituted in order until none is left (SBML forbids cycles)
    assigned = {v: math_of(rule.getMath(), f"assignment rule for {v!r}") for v, rule in assign_rules.items()}
    for _ in range(len(assigned) + 1):
        changed = False
        for v, e in assigned.items():
            new = e.xreplace({names[k]: assigned[k] for k in assigned if names[k] in e.free_symbols})
            changed |= new != e
            assigned[v] = new
        if not changed:
            break
    subs = {names[k]: e for k, e in assigned.items()}

    def resolve(expr: sympy.Expr) -> sympy.Expr:
        return expr.xreplace(subs) if subs else expr

    states = [*species, *extra_states]
    # initial assignments: evaluated now, with the values given (assignment rules substituted)
    values = {names[k]: sympy.Float(v) for k, v in {**params, **initial}.items() if k in names and not math.isnan(v)}
    values.update({sympy.Symbol(k, real=True): sympy.Float(v) for k, v in params.items()})
    for i in range(model.getNumInitialAssignments()):
        ia = model.getInitialAssignment(i)
        v = ia.getSymbol()
        expr = resolve(math_of(ia.getMath(), f"initial assignment of {v!r}")).xreplace({TIME: 0})
        for _ in range(20):  # species values may come from other initial assignments
            new = expr.xreplace(values)
            if new == expr:
                break
            expr = new
        if not expr.is_number:
            raise ValueError(f"initial assignment of {v!r}: cannot evaluate {expr} at the start")
        value = float(expr)
        if v in params:
            params[v] = value
        elif v in states:
            initial[v] = value  # in the units the id has in math: the state's
        elif v in sizes:
            raise ValueError(f"initial assignment of compartment {v!r}: not supported")
        values[names[v]] = sympy.Float(value)
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

    reactions = []
    for i in range(model.getNumReactions()):
        r = model.getReaction(i)
        rate = resolve(math_of(r.getKineticLaw().getMath(), f"reaction {r.getId()!r}", locals_of[r.getId()]))
        reactants, products = {}, {}
        for side, get, n in ((reactants, r.getReactant, r.getNumReactants()),
                             (products, r.getProduct, r.getNumProducts())):
            for j in range(n):
                ref = get(j)
                c = ref.getStoichiometry() if ref.isSetStoichiometry() else 1.0
                if ref.getSpecies() in assign_rules:
                    continue
                side[ref.getSpecies()] = side.get(ref.getSpecies(), 0.0) + c * conversion(ref.getSpecies())
        reactions.append(Reaction(r.getId(), reactants, products, rate))
    for v, rule in rate_rules.items():
        if v not in states:
            raise ValueError(f"rate rule for {v!r}: only species and parameters may have rate rules here")
        expr = resolve(math_of(rule.getMath(), f"rate rule for {v!r}"))
        # d v / dt = expr in v's own units: the coefficient V cancels the division by the volume
        reactions.append(Reaction(f"rate_rule.{v}", {}, {v: volumes.get(v, 1.0)}, expr))
    missing = sorted(k for k, v in params.items() if math.isnan(v))
    if missing:
        raise ValueError(f"parameters without a value: {missing}")
    # what trajectories carry beside the states, by SBML id: assigned quantities and compartment sizes
    out = SymbolicModel(states, reactions, params, bounds=bounds, initial=initial, volumes=volumes, fixed=fixed,
                        targets=targets, observables={**{c: sympy.Float(v) for c, v in sizes.items()}, **assigned})
    out.volumes = {sid: where_of[sid] for sid, u in units.items() if u == "concentration"}
    out.sbml_units = units
    out.compartment_size = where_of
    out.compartments = dict(sizes)
    return out


def sbml_values(model: SymbolicModel, traj: Any, ids: list[str], amounts: Any = ()) -> dict[str, Any]:
    """Time courses (B, T) of SBML ids from a trajectory of a model :func:`read_sbml` made: states
    and the trajectory's observables (assigned quantities, compartment sizes) as the trajectory
    gives them, constant parameters from the model. A species is given in its state's quantity
    (concentration unless ``hasOnlySubstanceUnits``) or, when its id is in ``amounts``, as an amount."""
    B, T = traj.y.shape[:2]
    units = getattr(model, "sbml_units", {})
    out = {}
    for sid in ids:
        if sid in model.genes or sid in traj.observables:
            v = traj[sid].detach()
        elif sid in model.param_names:
            v = model.params[sid].detach().to(traj.y.dtype).reshape(-1)[:1].expand(B, T)
        else:
            raise KeyError(f"no SBML id {sid!r} in this model; states {model.genes}, parameters "
                           f"{model.param_names}, observables {list(traj.observables)}")
        if sid in units:  # a species in the quantity asked for
            if sid in amounts and units[sid] == "concentration":
                v = v * model.compartment_size[sid]
            elif sid not in amounts and units[sid] == "amount":
                v = v / model.compartment_size[sid]
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

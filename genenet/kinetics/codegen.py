"""C for a symbolic model's rate laws: the rates and their sparse first derivatives, per row.

From the rates ``v(t, x, p)`` (R) of a :class:`~genenet.kinetics.symbolic.SymbolicModel` this prints
a C header with

    gm_rates(t, x, p, v)               v (R)
    gm_rates_d(t, x, p, v, vx, vp)     v, the nonzero entries of dv/dx (GM_NX) and of dv/dp (GM_NP)
    gm_rates_t(t, x, p, vt)            dv/dt (R), zero but for the GM_NT rates that read t

and the sparsity: entry e of ``vx`` is ``dv[gm_vx_r[e]] / dx[gm_vx_s[e]]``, entry e of ``vp`` is
``dv[gm_vp_r[e]] / dp[gm_vp_p[e]]``. Every Jacobian, tangent (JVP) and adjoint (VJP) product a
solver needs is a loop over those entries and the stoichiometry, the same for every model, so the
generated code is straight-line arithmetic only: plain functions of scalars and arrays over
``real`` (float or double, ``tgmath.h``), no libc beyond math, no threads: the same source compiles
for a GPU later. Common subexpressions are computed once per function (sympy's CSE over the rates
and all their derivatives together).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy.printing.c import C99CodePrinter

from .expressions import TIME
from .program import Program

__all__ = ["RateDerivatives", "c_header"]


@dataclass(frozen=True)
class RateDerivatives:
    """The sparse first derivatives of a program's outputs (the rates) as a straight-line program:
    ``temporaries`` (the program's, then the derivative temporaries), and ``(r, j, expression)``
    for every structurally nonzero ``dv_r / dx_j`` (``vx``) and ``dv_r / dp_k`` (``vp``), the
    expressions over the states, parameters, ``t`` and those temporaries.

    Forward mode over the program: each temporary ``c = e(a, ...)`` gets, per input it depends on,
    ``dc/dj = sum_a de/da da/dj`` from the local derivatives of its own (small) expression, so the
    cost grows with the program's size rather than with the size of the inlined rates (sympy's
    derivative of a 100-gene network's inlined rate laws and their simplification took minutes).
    Powers with a symbolic exponent differentiate as ``e b^(e-1) b'`` and ``b^e log(b) e'``
    (:class:`_Power`, :class:`PowLog`): finite where a species is 0 (a knockout), where sympy's
    ``e b^e / b`` is 0/0."""

    temporaries: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    vx: tuple[tuple[int, int, sympy.Expr], ...]
    vp: tuple[tuple[int, int, sympy.Expr], ...]
    vt: tuple[tuple[int, int, sympy.Expr], ...] = ()  # dv_r/dt of the rates that read t, (r, 0, expr)

    @classmethod
    def of(cls, program: Program) -> RateDerivatives:
        inputs = {s: ("x", i) for i, s in enumerate(program.states)} | {s: ("p", k) for k, s in
                                                                          enumerate(program.params)}
        if program.uses_time:
            inputs[TIME] = ("t", 0)
        deps: dict[sympy.Symbol, set] = {}
        D: dict[tuple[sympy.Symbol, sympy.Symbol], sympy.Expr] = {}
        extra: list[tuple[sympy.Symbol, sympy.Expr]] = []
        names = sympy.numbered_symbols("_d", real=True)

        def depends(expr: sympy.Expr) -> set:
            out: set = set()
            for a in expr.free_symbols:
                if a in inputs:
                    out.add(a)
                elif a in deps:
                    out |= deps[a]
            return out

        def derivative(expr: sympy.Expr, j: sympy.Symbol) -> sympy.Expr:
            terms = []
            for a in expr.free_symbols:
                da = 1 if a == j else D.get((a, j), 0)
                if da != 0:
                    terms.append(_local_diff(expr, a) * da)
            return sympy.Add(*terms)

        order = {s: n for n, s in enumerate(inputs)}
        for sym, expr in program.temporaries:
            deps[sym] = depends(expr)
            for j in sorted(deps[sym], key=order.__getitem__):
                d = derivative(expr, j)
                if d == 0:
                    continue
                if d.is_Atom:
                    D[(sym, j)] = d
                else:
                    name = next(names)
                    extra.append((name, d))
                    D[(sym, j)] = name
        out: dict[str, list] = {"x": [], "p": [], "t": []}
        for r, expr in enumerate(program.outputs):
            for j in sorted(depends(expr), key=order.__getitem__):
                d = derivative(expr, j)
                if d != 0:
                    kind, idx = inputs[j]
                    out[kind].append((r, idx, d))
        return cls(tuple(program.temporaries) + tuple(extra), tuple(out["x"]), tuple(out["p"]), tuple(out["t"]))

    def program(self, program: Program, wrt: str) -> Program:
        """A program whose outputs are the ``vx`` (``wrt="x"``), ``vp`` (``"p"``) or ``vt`` (``"t"``) entries."""
        entries = {"x": self.vx, "p": self.vp, "t": self.vt}[wrt]
        return Program(program.states, program.params, self.temporaries, tuple(e for _, _, e in entries))


def _local_diff(expr: sympy.Expr, a: sympy.Symbol) -> sympy.Expr:
    """d expr / d a for one program line, powers with a symbolic exponent as :class:`_Power`."""
    e = expr.replace(lambda q: q.is_Pow and not q.exp.is_number, lambda q: _Power(q.base, q.exp))
    d = _powers(sympy.diff(e, a))
    # step functions are flat almost everywhere, as torch's autograd takes them: floor, ceiling and
    # the DiracDelta of Heaviside and sign are 0 (C has no Dirac delta to print)
    d = d.replace(lambda q: isinstance(q, sympy.Derivative) and isinstance(q.expr, (sympy.floor, sympy.ceiling)),
                  lambda q: sympy.S.Zero)
    d = d.replace(lambda q: isinstance(q, sympy.DiracDelta), lambda q: sympy.S.Zero)
    return d.doit() if d.has(sympy.Subs) else d


class _Power(sympy.Function):
    """``b^e`` while differentiating: ``d/db = e b^(e-1)``, ``d/de = b^e log b`` (:class:`PowLog`)."""

    nargs = 2

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        b, e = self.args
        return e * _Power(b, e - 1) if argindex == 1 else PowLog(b, e)


def _powers(d: sympy.Expr) -> sympy.Expr:
    return d.replace(lambda a: isinstance(a, _Power), lambda a: sympy.Pow(*a.args))


class PowLog(sympy.Function):
    """``b^e log(b)``, the derivative of ``b^e`` in ``e``, taken as 0 at ``b = 0`` (its limit for
    e > 0), printed as ``gm_powlog``: written out it is 0 * -inf = NaN for a knocked-out species."""

    nargs = 2


class _CPrinter(C99CodePrinter):
    """C over ``real``: small integer powers as products (``pow`` is ten times slower and GCC
    does not expand it without -ffast-math), ``tgmath`` names for the rest."""

    def _print_Pow(self, expr: sympy.Pow) -> str:
        base, exp = expr.args
        if exp.is_Integer and 1 <= abs(int(exp)) <= 4:
            b = self.parenthesize(base, 1000)
            prod = " * ".join([b] * abs(int(exp)))
            return f"({prod})" if exp > 0 else f"((real)1 / ({prod}))"
        if exp == sympy.Rational(1, 2):
            return f"sqrt({self._print(base)})"
        if not exp.is_number:  # a parameter exponent (a Hill coefficient): integers by multiplication
            return f"gm_pow({self._print(base)}, {self._print(exp)})"
        return f"pow({self._print(base)}, {self._print(exp)})"

    def _print_Float(self, expr: sympy.Float) -> str:
        return f"((real){float(expr)!r})"

    def _print_Integer(self, expr: sympy.Integer) -> str:
        return f"((real){int(expr)})"

    def _print_Rational(self, expr: sympy.Rational) -> str:
        return f"((real){float(expr)!r})"

    def _print_Min(self, expr: sympy.Expr) -> str:
        out = self._print(expr.args[0])
        for a in expr.args[1:]:
            out = f"gm_fmin({out}, {self._print(a)})"
        return out

    def _print_Max(self, expr: sympy.Expr) -> str:
        out = self._print(expr.args[0])
        for a in expr.args[1:]:
            out = f"gm_fmax({out}, {self._print(a)})"
        return out

    def _print_PowLog(self, expr: sympy.Expr) -> str:
        return f"gm_powlog({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_BooleanTrue(self, expr: sympy.Expr) -> str:  # SBML booleans in numbers: true is 1
        return "((real)1)"

    def _print_BooleanFalse(self, expr: sympy.Expr) -> str:
        return "((real)0)"

    def _print_Logistic(self, expr: sympy.Expr) -> str:
        return f"gm_logistic({self._print(expr.args[0])})"

    def _print_polygamma(self, expr: sympy.Expr) -> str:  # d/dx gamma(x) = gamma(x) digamma(x)
        if expr.args[0] != 0:
            raise NotImplementedError(f"no C for {expr}: only polygamma(0, x) (digamma) is printed")
        return f"gm_digamma({self._print(expr.args[1])})"

    def _print_Abs(self, expr: sympy.Expr) -> str:
        return f"fabs({self._print(expr.args[0])})"


def hoist_parameters(program: Program) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]],
                                                  list[tuple[sympy.Symbol, sympy.Expr]], list[sympy.Expr]]:
    """The rates with their parameter-only parts taken out: ``(hoisted, temporaries, outputs)``,
    ``hoisted`` the ``(q_k, expression over parameters)`` a solve computes once per row
    (``gm_prepare``: ``1/T``, ``1/λ``, ``1 - 1/λ`` of a Hill factor), the temporaries and outputs
    over states, ``t`` and those ``q_k``. Maximal parameter-only subexpressions are hoisted; a
    product or sum with mixed factors hoists its parameter-only factors together."""
    params = set(program.params)
    hoisted: list[tuple[sympy.Symbol, sympy.Expr]] = []
    seen: dict[sympy.Expr, sympy.Symbol] = {}
    names = sympy.numbered_symbols("_q", real=True)
    param_temps: dict[sympy.Symbol, sympy.Expr] = {}  # temporaries over parameters only, inlined

    def only_params(e: sympy.Expr) -> bool:
        # conditions and Piecewise branches stay in place: q holds numbers, not booleans
        if isinstance(e, (sympy.logic.boolalg.BooleanFunction, sympy.logic.boolalg.BooleanAtom,
                          sympy.core.relational.Relational, sympy.functions.elementary.piecewise.ExprCondPair)):
            return False
        return bool(e.free_symbols) and e.free_symbols <= params

    def name_of(e: sympy.Expr) -> sympy.Expr:  # a parameter itself too: the rates read q only
        if e not in seen:
            seen[e] = next(names)
            hoisted.append((seen[e], e))
        return seen[e]

    def walk(e: sympy.Expr) -> sympy.Expr:
        e = e.xreplace(param_temps) if param_temps else e
        if only_params(e):
            return name_of(e)
        if e.is_Atom or not e.args:
            return e
        if isinstance(e, (sympy.Mul, sympy.Add)):
            fixed = [a for a in e.args if only_params(a)]
            rest = [walk(a) for a in e.args if not only_params(a)]
            if fixed:
                return e.func(name_of(e.func(*fixed)), *rest)
            return e.func(*rest)
        return e.func(*[walk(a) for a in e.args])

    temps = []
    for sym, expr in program.temporaries:
        full = expr.xreplace(param_temps) if param_temps else expr
        if only_params(full):
            param_temps[sym] = full
            continue
        temps.append((sym, walk(expr)))
    outputs = [walk(e) for e in program.outputs]
    return hoisted, temps, outputs


@dataclass(frozen=True)
class BatchedPower:
    """One power ``w = base^exponent`` that the rates compute first, with the others
    (:func:`batch_powers`), and the reciprocal ``recip = 1 / (w + shift)`` where the rates divide by it
    (a Hill factor's ``1 / (1 + z^n)``), ``recip`` None where they do not."""

    w: sympy.Symbol
    base: sympy.Expr
    exponent: sympy.Symbol
    recip: sympy.Symbol | None = None
    shift: sympy.Expr | None = None


def batch_powers(program: Program, hoisted: list, temporaries: list, outputs: list
                 ) -> tuple[list[BatchedPower], list, list]:
    """The powers ``b^e`` of the hoisted rates whose exponent is a parameter (a Hill coefficient) and
    whose base reads only states, ``t``, parameters and temporaries of those: each becomes a symbol
    ``_w<j>`` that ``gm_rates_q`` computes first, all together (``gm_pow_batch``: one vectorized loop
    when every exponent is a small integer), and a division by ``w + a`` (``a`` a number or a
    parameter) the reciprocal ``_r<j>`` of the same loop: a Hill network's powers and divisions
    vectorize as in the hand-written kernel. Returns ``(powers, temporaries, outputs)``, the last
    two with those replaced."""
    qsyms = {s for s, _ in hoisted}
    plain = set(program.states) | qsyms | {TIME}

    def has_power(e: sympy.Expr) -> bool:
        return any(isinstance(n, sympy.Pow) and n.exp in qsyms for n in sympy.preorder_traversal(e))

    for sym, e in temporaries:  # temporaries computed before any power (a shared max(x, 0)): bases may read them
        if e.free_symbols <= plain and not has_power(e):
            plain.add(sym)
    found: dict[sympy.Expr, sympy.Symbol] = {}
    names = sympy.numbered_symbols("_w", real=True)
    order: list[tuple[sympy.Symbol, sympy.Expr, sympy.Symbol]] = []

    def collect(e: sympy.Expr) -> None:
        for node in sympy.preorder_traversal(e):
            if isinstance(node, sympy.Pow) and node.exp in qsyms and node.base.free_symbols <= plain \
                    and node not in found:
                found[node] = next(names)
                order.append((found[node], node.base, node.exp))

    for _, e in temporaries:
        collect(e)
    for e in outputs:
        collect(e)
    if not found:
        return [], temporaries, outputs
    temporaries = [(sym, e.xreplace(found)) for sym, e in temporaries]
    outputs = [e.xreplace(found) for e in outputs]
    ws = {w for w, _, _ in order}
    recip: dict[sympy.Symbol, tuple[sympy.Symbol, sympy.Expr]] = {}
    replace: dict[sympy.Expr, sympy.Symbol] = {}
    r_names = sympy.numbered_symbols("_r", real=True)
    for e in [e for _, e in temporaries] + outputs:
        for node in sympy.preorder_traversal(e):
            if not (isinstance(node, sympy.Pow) and node.exp == -1 and node.base.is_Add and len(node.base.args) == 2):
                continue
            w = [a for a in node.base.args if a in ws]
            shift = [a for a in node.base.args if a not in ws]
            if len(w) != 1 or not (shift[0].is_number or shift[0] in qsyms):
                continue
            if w[0] not in recip:
                recip[w[0]] = (next(r_names), shift[0])
            if recip[w[0]][1] == shift[0]:
                replace[node] = recip[w[0]][0]
    if replace:
        temporaries = [(sym, e.xreplace(replace)) for sym, e in temporaries]
        outputs = [e.xreplace(replace) for e in outputs]
    powers = [BatchedPower(w, base, exp, *recip.get(w, (None, None))) for w, base, exp in order]
    return powers, temporaries, outputs


def _straight(program: Program, temporaries, outputs: list[tuple[str, sympy.Expr]], hoisted=None,
              powers=None) -> list[str]:
    """Straight-line C from a program's own temporaries (no new CSE): the inputs named, the
    temporaries the outputs need, then ``target = value;`` per output."""
    printer = _CPrinter()
    need: set = set()
    for _, e in outputs:
        need |= e.free_symbols
    lines_t = []
    for sym, e in reversed(temporaries):  # only what the outputs use, in program order
        if sym in need:
            need |= e.free_symbols
            lines_t.append(f"    const real {sym.name} = {printer.doprint(e)};")
    lines = [f"    const real {s.name} = x[{i}];" for i, s in enumerate(program.states) if s in need]
    lines += [f"    const real {s.name} = p[{k}];" for k, s in enumerate(program.params) if s in need]
    lines += [f"    const real {s.name} = q[{k}];" for k, (s, _) in enumerate(hoisted or ()) if s in need]
    lines += [f"    const real {pw.w.name} = w[{j}];" for j, pw in enumerate(powers or ()) if pw.w in need]
    lines += [f"    const real {pw.recip.name} = r[{j}];" for j, pw in enumerate(powers or ())
              if pw.recip is not None and pw.recip in need]
    lines.append("    (void)t;")
    lines += reversed(lines_t)
    lines += [f"    {target} = {printer.doprint(e)};" for target, e in outputs]
    return lines


def c_header(program: Program, derivatives: RateDerivatives | None = None, prefix: str = "gm") -> str:
    """The C header of ``program``'s rates and their derivatives (see the module doc); ``prefix``
    names its functions and arrays. The inputs are ``t``, ``x`` (S) and ``p`` (P) of one row."""
    d = derivatives or RateDerivatives.of(program)
    S, R, P = len(program.states), len(program.outputs), len(program.params)
    rates = [(f"v[{r}]", e) for r, e in enumerate(program.outputs)]
    vx = [(f"vx[{e}]", expr) for e, (_, _, expr) in enumerate(d.vx)]
    vp = [(f"vp[{e}]", expr) for e, (_, _, expr) in enumerate(d.vp)]

    def arr(name: str, values: list[int]) -> str:
        return f"static const int32_t {name}[{max(len(values), 1)}] = {{{', '.join(map(str, values)) or '0'}}};"

    # in blocks of reactions, each its own function with the temporaries it needs (shared ones are
    # recomputed per block): one straight-line function of a large network's thousands of lines
    # took GCC 30 s (its optimizer is superlinear in a function's size), blocks compile in linear time
    def blocks(name: str, temporaries, per_reaction: list[list[tuple[str, sympy.Expr]]],
               signature: str, call: str, hoisted=None, powers=None) -> tuple[list[str], list[str]]:
        out, calls, chunk, size = [], [], [], 0
        groups = [g for g in per_reaction if g]
        for k, group in enumerate(groups):
            chunk += group
            size += sum(len(str(e)) for _, e in group)
            if size > 20_000 or k == len(groups) - 1:
                fn = f"{prefix}_{name}_{len(calls)}"
                out += [f"static void {fn}({signature}) {{", *_straight(program, temporaries, chunk, hoisted, powers),
                        "}"]
                calls.append(f"    {fn}({call});")
                chunk, size = [], 0
        return out, calls

    hoisted, h_temps, h_outputs = hoist_parameters(program)
    powers, h_temps, h_outputs = batch_powers(program, hoisted, h_temps, h_outputs)
    per_r = [[(f"v[{r}]", e)] for r, e in enumerate(h_outputs)]
    rate_blocks, rate_calls = blocks("rates_part", h_temps, per_r,
                                     "real t, const real *restrict x, const real *restrict q, "
                                     "const real *restrict w, const real *restrict r, real *restrict v",
                                     "t, x, q, w, r, v", hoisted, powers)
    prepare = [f"    q[{k}] = {_CPrinter().doprint(e)};" for k, (_, e) in enumerate(hoisted)]
    prepare = ([f"    const real {sym.name} = p[{k}];" for k, sym in enumerate(program.params)
                if any(sym in e.free_symbols for _, e in hoisted)] + prepare)
    Q, K = len(hoisted), len(powers)
    q_index = {sym: k for k, (sym, _) in enumerate(hoisted)}
    if powers:  # q after the hoisted values: each power's exponent, its small integer (or -1), whether all
        # are small, and the shift of its reciprocal
        prepare += [f"    q[{Q + j}] = q[{q_index[pw.exponent]}];" for j, pw in enumerate(powers)]
        prepare += ["    {", "        int all_small = 1;", f"        for (int j = 0; j < {K}; ++j) {{",
                    f"            const int k = gm_small_int(q[{Q} + j]);",
                    f"            q[{Q + K} + j] = gm_int_bits(k >= 0 ? k : 0);", "            all_small &= k >= 0;",
                    "        }", f"        q[{Q + 2 * K}] = (real)all_small;", "    }"]
        prepare += [f"    q[{Q + 2 * K + 1 + j}] = "
                    + ("(real)1" if pw.shift is None else (f"q[{q_index[pw.shift]}]" if pw.shift in q_index
                                                           else _CPrinter().doprint(pw.shift))) + ";"
                    for j, pw in enumerate(powers)]
    bases = _straight(program, h_temps, [(f"wb[{j}]", pw.base) for j, pw in enumerate(powers)], hoisted)
    power_stage = ([f"    real wb[{max(K, 1)}], w[{max(K, 1)}], r[{max(K, 1)}];"] + (
        ["    {", *["    " + line for line in bases], "    }",
         f"    gm_pow_batch({K}, wb, q + {Q}, q + {Q + K}, q[{Q + 2 * K}] != 0, q + {Q + 2 * K + 1}, w, r);"]
        if powers else ["    (void)wb; (void)w; (void)r;"]))
    per_rd = [[rates[r]] for r in range(R)]
    for e, (r, _, _) in enumerate(d.vx):
        per_rd[r].append(vx[e])
    for e, (r, _, _) in enumerate(d.vp):
        per_rd[r].append(vp[e])
    d_blocks, d_calls = blocks("rates_d_part", d.temporaries, per_rd,
                               "real t, const real *restrict x, const real *restrict p, real *restrict v, "
                               "real *restrict vx, real *restrict vp", "t, x, p, v, vx, vp")
    t_blocks, t_calls = blocks("rates_t_part", d.temporaries, [[(f"vt[{r}]", e)] for r, _, e in d.vt],
                               "real t, const real *restrict x, const real *restrict p, real *restrict vt",
                               "t, x, p, vt")
    lines = [f"/* generated by genenet.kinetics.codegen: program {program.key()} */",
             f"#define {prefix.upper()}_S {S}", f"#define {prefix.upper()}_R {R}", f"#define {prefix.upper()}_P {P}",
             f"#define {prefix.upper()}_NX {len(d.vx)}", f"#define {prefix.upper()}_NP {len(d.vp)}",
             f"#define {prefix.upper()}_NQ {Q + 3 * K + 1 if K else Q}", f"#define {prefix.upper()}_NT {len(d.vt)}",
             "#ifndef GM_POWLOG", "#define GM_POWLOG",
             "static inline real gm_powlog(real b, real e) { return b == 0 ? (real)0 : pow(b, e) * log(b); }",
             "/* fmax and fmin (the other argument where one is NaN) inline: GCC calls libm's for them unless",
             "   math is declared finite, a call per Hill factor's max(x, 0) */",
             "static inline real gm_fmax(real a, real b) { return (a >= b || b != b) ? a : b; }",
             "static inline real gm_fmin(real a, real b) { return (a <= b || b != b) ? a : b; }",
             "/* 1 / (1 + e^-u) from e^-|u| <= 1: no overflow for any u */",
             "static inline real gm_logistic(real u) {",
             "    const real e = exp(-fabs(u));",
             "    return u >= 0 ? 1 / (1 + e) : e / (1 + e);",
             "}",
             "/* psi(x) = d log gamma(x) / dx: recurrence up to x >= 10, then the asymptotic series;",
             "   reflection psi(x) = psi(1 - x) - pi / tan(pi x) below 0 (poles at 0, -1, ...) */",
             "static inline real gm_digamma(real x) {",
             "    real acc = 0;",
             "    if (x <= 0) {",
             "        if (x == floor(x)) return NAN;",
             "        acc = -(real)3.14159265358979323846 / tan((real)3.14159265358979323846 * x);",
             "        x = 1 - x;",
             "    }",
             "    for (; x < 10; x += 1) acc -= 1 / x;",
             "    const real f = 1 / (x * x);",
             "    return acc + log(x) - (real)0.5 / x",
             "           - f * ((real)1 / 12 - f * ((real)1 / 120 - f * ((real)1 / 252 - f * ((real)1 / 240",
             "                  - f * ((real)1 / 132 - f * ((real)691 / 32760 - f * ((real)1 / 12)))))));",
             "}",
             "/* a small integer k (0..15) kept in a real's bits (gm_prepare writes them; the batch reads them",
             "   back with integer operations, which vectorize where a select between reals does not: GCC",
             "   if-converts no floating-point select while trapping math is on) */",
             "typedef union { double f; uint64_t u; } gm_bits64;",
             "typedef union { float f; uint32_t u; } gm_bits32;",
             "static inline real gm_int_bits(int k) {",
             "    if (sizeof(real) == 8) { gm_bits64 v; v.u = (uint64_t)k; return (real)v.f; }",
             "    gm_bits32 v; v.u = (uint32_t)k; return (real)v.f;",
             "}",
             "static inline uint64_t gm_bits_int(real r) {",
             "    if (sizeof(real) == 8) { gm_bits64 v = {(double)r}; return v.u; }",
             "    gm_bits32 v = {(float)r}; return v.u;",
             "}",
             "/* bit ? a : 1, by masks on the bits */",
             "static inline real gm_pick(uint64_t bit, real a) {",
             "    if (sizeof(real) == 8) {",
             "        gm_bits64 x = {(double)a}, one = {1.0}, out;",
             "        const uint64_t m = (uint64_t)0 - bit;",
             "        out.u = (x.u & m) | (one.u & ~m);",
             "        return (real)out.f;",
             "    }",
             "    gm_bits32 x = {(float)a}, one = {1.0f}, out;",
             "    const uint32_t m = (uint32_t)0 - (uint32_t)bit;",
             "    out.u = (x.u & m) | (one.u & ~m);",
             "    return (real)out.f;",
             "}",
             "/* k when e is within 8 ulp of an integer k in 0..15, else -1: RACIPE's Hill coefficients, which",
             "   went through their constraint transform (exp of a log) and are a few ulp off the integer",
             "   drawn (b^(k + d) = b^k (1 + d log b) differs by rounding only); as hill.h's integer_hill */",
             "static inline int gm_small_int(real e) {",
             "    const real ulp = sizeof(real) == 4 ? (real)1.1920929e-07f : (real)2.220446049250313e-16;",
             "    const int k = e >= 0 && e <= (real)15.5 ? (int)(e + (real)0.5) : -1;",
             "    return k >= 0 && fabs(e - (real)k) <= 8 * ulp * (k > 1 ? (real)k : (real)1) ? k : -1;",
             "}",
             "/* b^k for k in 0..15: the product of b, b^2, b^4, b^8 by the bits of k (as the Hill kernel's",
             "   small_int_pow), several times cheaper than pow and within an ulp or two of it */",
             "static inline real gm_small_pow(real b, uint64_t k) {",
             "    const real b2 = b * b, b4 = b2 * b2, b8 = b4 * b4;",
             "    return ((gm_pick(k & 1, b) * gm_pick((k >> 1) & 1, b2)) * gm_pick((k >> 2) & 1, b4))",
             "           * gm_pick((k >> 3) & 1, b8);",
             "}",
             "static inline real gm_pow(real b, real e) {",
             "    const int k = gm_small_int(e);",
             "    return k >= 0 ? gm_small_pow(b, (uint64_t)k) : pow(b, e);",
             "}",
             "/* log b for normal b > 0 and e^y for |y| <= 700, written so that a loop of them vectorizes (libm's",
             "   log, exp and pow are a call per element): log m = 2 atanh(s), s = (m - 1) / (m + 1), m in",
             "   [sqrt(1/2), sqrt(2)) from the bits, the series cut where its tail is below the type's rounding;",
             "   e^y = 2^k e^r, k = round(y / ln 2) by the 1.5 2^52 rounding constant, r = y - k ln 2 in two",
             "   parts, e^r by its Taylor series to r^13 (|r| <= 0.347), 2^k from the bits. Each within a few",
             "   ulp of libm's; anything else (b <= 0, inf, NaN, |y| > 700) is left to pow by gm_pow_batch. */",
             "static inline real gm_log_fast(real x) {",
             "    if (sizeof(real) == 8) {",
             "        gm_bits64 a = {(double)x};",
             "        const uint64_t mant = a.u & 0x000fffffffffffffull, big = mant > 0x0006a09e667f3bcdull;",
             "        gm_bits64 eb; /* the exponent as a double through 2^52 + E (no int64 conversion before "
             "AVX-512) */",
             "        eb.u = 0x4330000000000000ull | ((a.u >> 52) + big);",
             "        const double ed = eb.f - 4503599627371519.0;",
             "        a.u = mant | (0x3ff0000000000000ull - (big << 52));",
             "        const double f = a.f - 1.0, sr = f / (2.0 + f), s2 = sr * sr;",
             "        double q = 1.0 / 19 + s2 * (1.0 / 21 + s2 * (1.0 / 23));",
             "        q = 1.0 / 11 + s2 * (1.0 / 13 + s2 * (1.0 / 15 + s2 * (1.0 / 17 + s2 * q)));",
             "        q = 1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * q))));",
             "        return (real)(ed * 6.93147180369123816490e-01 + (ed * 1.90821492927058770002e-10 + "
             "2.0 * sr * q));",
             "    }",
             "    gm_bits32 a = {(float)x};",
             "    const uint32_t mant = a.u & 0x007fffffu, big = mant > 0x003504f3u;",
             "    const float ed = (float)((int32_t)(a.u >> 23) - 127 + (int32_t)big);",
             "    a.u = mant | (0x3f800000u - (big << 23));",
             "    const float f = a.f - 1.0f, sr = f / (2.0f + f), s2 = sr * sr;",
             "    const float q = 1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));",
             "    return (real)(ed * 0.693147182f + 2.0f * sr * q);",
             "}",
             "static inline real gm_exp_fast(real y) {",
             "    if (sizeof(real) == 8) {",
             "        const double magic = 6755399441055744.0, t = (double)y * 1.4426950408889634 + magic;",
             "        gm_bits64 tb = {t}, mb = {magic}, sc;",
             "        const double kf = t - magic;",
             "        const double r = ((double)y - kf * 6.93147180369123816490e-01) - kf * "
             "1.90821492927058770002e-10;",
             "        double q = 1.0 / 6227020800.0;",
             "        q = 1.0 / 479001600.0 + r * q; q = 1.0 / 39916800.0 + r * q; q = 1.0 / 3628800.0 + r * q;",
             "        q = 1.0 / 362880.0 + r * q; q = 1.0 / 40320.0 + r * q; q = 1.0 / 5040.0 + r * q;",
             "        q = 1.0 / 720.0 + r * q; q = 1.0 / 120.0 + r * q; q = 1.0 / 24.0 + r * q; q = 1.0 / 6.0 + r * q;",
             "        q = 0.5 + r * q; q = 1.0 + r * q; q = 1.0 + r * q;",
             "        sc.u = (tb.u - mb.u + 1023) << 52;",
             "        return (real)(q * sc.f);",
             "    }",
             "    const float magic = 12582912.0f, t = (float)y * 1.44269504f + magic;",
             "    gm_bits32 tb = {t}, mb = {magic}, sc;",
             "    const float kf = t - magic;",
             "    const float r = ((float)y - kf * 0.693145752f) - kf * 1.42860677e-06f;",
             "    float q = 1.0f / 40320.0f;",
             "    q = 1.0f / 5040.0f + r * q; q = 1.0f / 720.0f + r * q; q = 1.0f / 120.0f + r * q;",
             "    q = 1.0f / 24.0f + r * q; q = 1.0f / 6.0f + r * q; q = 0.5f + r * q; q = 1.0f + r * q; "
             "q = 1.0f + r * q;",
             "    sc.u = (tb.u - mb.u + 127) << 23;",
             "    return (real)(q * sc.f);",
             "}",
             "/* w_j = b_j^e_j for a model's batched powers and r_j = 1 / (w_j + a_j): when every e_j is an",
             "   integer in 0..15 (its bits in k_j, from gm_prepare) one loop the compiler vectorizes, as the",
             "   Hill kernel's slots; the same products in the same order as gm_pow, so the same bits. Otherwise",
             "   e^(e log b) in loops that vectorize (r holds e log b meanwhile), then pow, or the integer power,",
             "   for the entries outside the fast path's range and for the integer exponents (as gm_pow) */",
             "static inline void gm_pow_batch(int n, const real *restrict b, const real *restrict e,",
             "                                const real *restrict k, int all_small, const real *restrict a,",
             "                                real *restrict w, real *restrict r) {",
             "    if (all_small) {",
             "        for (int j = 0; j < n; ++j) w[j] = gm_small_pow(b[j], gm_bits_int(k[j]));",
             "    } else {",
             "        const real lo = sizeof(real) == 8 ? (real)2.2250738585072014e-308 : (real)1.17549435e-38f;",
             "        const real hi = sizeof(real) == 8 ? (real)1.7976931348623157e308 : (real)3.40282347e38f;",
             "        const real ymax = sizeof(real) == 8 ? (real)700 : (real)85;",
             "        for (int j = 0; j < n; ++j) r[j] = e[j] * gm_log_fast(b[j]);",
             "        for (int j = 0; j < n; ++j) w[j] = gm_exp_fast(r[j]);",
             "        for (int j = 0; j < n; ++j)",
             "            if (!(b[j] >= lo && b[j] <= hi && r[j] >= -ymax && r[j] <= ymax) || gm_small_int(e[j]) >= 0)",
             "                w[j] = gm_pow(b[j], e[j]);",
             "    }",
             "    for (int j = 0; j < n; ++j) r[j] = (real)1 / (w[j] + a[j]);",
             "}",
             "#endif",
             arr(f"{prefix}_vx_r", [r for r, _, _ in d.vx]), arr(f"{prefix}_vx_s", [j for _, j, _ in d.vx]),
             arr(f"{prefix}_vp_r", [r for r, _, _ in d.vp]), arr(f"{prefix}_vp_p", [k for _, k, _ in d.vp]),
             *rate_blocks, *d_blocks, *t_blocks,
             f"static inline void {prefix}_prepare(const real *restrict p, real *restrict q) {{",
             "    (void)p; (void)q;", *prepare, "}",
             f"static inline void {prefix}_rates_q(real t, const real *restrict x, const real *restrict q, "
             "real *restrict v) {", "    (void)t;", *power_stage, *rate_calls, "}",
             f"static inline void {prefix}_rates(real t, const real *restrict x, const real *restrict p, "
             "real *restrict v) {",
             f"    real q[{prefix.upper()}_NQ > 0 ? {prefix.upper()}_NQ : 1];", f"    {prefix}_prepare(p, q);",
             f"    {prefix}_rates_q(t, x, q, v);", "}",
             f"static inline void {prefix}_rates_d(real t, const real *restrict x, const real *restrict p, "
             "real *restrict v, real *restrict vx, real *restrict vp) {", "    (void)t;", *d_calls, "}",
             f"static inline void {prefix}_rates_t(real t, const real *restrict x, const real *restrict p, "
             "real *restrict vt) {", "    (void)t; (void)x; (void)p;",
             f"    for (int k = 0; k < {R}; ++k) vt[k] = 0;", *t_calls, "}"]
    return "\n".join(lines) + "\n"

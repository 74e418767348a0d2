"""C for a symbolic model's rate laws: the rates and their sparse first derivatives, per row.

From the rates ``v(t, x, p)`` (R) of a :class:`~genenet.kinetics.symbolic.SymbolicModel` this prints
a C header with

    gm_rates(t, x, p, v)               v (R)
    gm_rates_d(t, x, p, v, vx, vp)     v, the nonzero entries of dv/dx (GM_NX) and of dv/dp (GM_NP)

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

from .program import Program

__all__ = ["RateDerivatives", "c_header"]


@dataclass(frozen=True)
class RateDerivatives:
    """The sparse first derivatives of a program's outputs (the rates): ``(r, j, expression)`` for
    every structurally nonzero ``dv_r / dx_j`` (``vx``) and ``dv_r / dp_k`` (``vp``)."""

    vx: tuple[tuple[int, int, sympy.Expr], ...]
    vp: tuple[tuple[int, int, sympy.Expr], ...]

    @classmethod
    def of(cls, program: Program) -> RateDerivatives:
        # differentiate the outputs with their temporaries substituted back: CSE runs again over all
        # of them together when the C is printed
        # powers with a symbolic exponent differentiate as e b^(e-1) b' + b^e log(b) e' (_Power): sympy writes
        # e (x/c)^e / x, which is 0/0 at x = 0 (a knocked-out species) where the limit is finite
        full = [_inline(program, e).replace(lambda a: a.is_Pow and not a.exp.is_number,
                                            lambda a: _Power(a.base, a.exp)) for e in program.outputs]
        vx, vp = [], []
        for r, e in enumerate(full):
            syms = e.free_symbols
            vx += [(r, j, sympy.diff(e, s)) for j, s in enumerate(program.states) if s in syms]
            vp += [(r, k, sympy.diff(e, s)) for k, s in enumerate(program.params) if s in syms]
        return cls(tuple((r, j, _at_zero(_powers(d))) for r, j, d in vx if d != 0),
                   tuple((r, k, _at_zero(_powers(d))) for r, k, d in vp if d != 0))


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


def _at_zero(d: sympy.Expr) -> sympy.Expr:
    """A derivative printed so that it is finite where a species is 0: ``n x^n / x`` (sympy's
    d(x^n)/dx) as ``n x^(n-1)`` (powsimp), ``x^n log(x)`` (d(x^n)/dn) as :class:`PowLog`."""
    d = sympy.powsimp(d)

    def has_powlog(m: sympy.Expr) -> bool:
        return m.is_Mul and any(isinstance(a, sympy.log) for a in m.args)

    def powlog(m: sympy.Expr) -> sympy.Expr:
        args = list(m.args)
        for L in [a for a in args if isinstance(a, sympy.log)]:
            for a in args:
                if a.is_Pow and a.base == L.args[0] and not a.exp.is_number:
                    args.remove(L)
                    args.remove(a)
                    return sympy.Mul(*args, PowLog(a.base, a.exp))
        return m
    return d.replace(has_powlog, powlog)


def _inline(program: Program, expr: sympy.Expr) -> sympy.Expr:
    for sym, sub in reversed(program.temporaries):
        expr = expr.xreplace({sym: sub})
    return expr


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
            out = f"fmin({out}, {self._print(a)})"
        return out

    def _print_Max(self, expr: sympy.Expr) -> str:
        out = self._print(expr.args[0])
        for a in expr.args[1:]:
            out = f"fmax({out}, {self._print(a)})"
        return out

    def _print_PowLog(self, expr: sympy.Expr) -> str:
        return f"gm_powlog({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Abs(self, expr: sympy.Expr) -> str:
        return f"fabs({self._print(expr.args[0])})"


def _body(program: Program, outputs: list[tuple[str, sympy.Expr]]) -> list[str]:
    """Straight-line C: the inputs named, CSE temporaries, then ``target = value;`` per output."""
    printer = _CPrinter()
    temps, reduced = sympy.cse([e for _, e in outputs], symbols=sympy.numbered_symbols("c"), optimizations="basic")
    lines = [f"    const real {s.name} = x[{i}];" for i, s in enumerate(program.states)]
    lines += [f"    const real {s.name} = p[{k}];" for k, s in enumerate(program.params)]
    lines.append("    (void)t;")
    used = set().union(*(e.free_symbols for _, e in temps), *(e.free_symbols for e in reduced)) if outputs else set()
    lines = [ln for ln in lines if ln.startswith("    (void)") or ln.split()[2] in {s.name for s in used}]
    lines += [f"    const real {s.name} = {printer.doprint(e)};" for s, e in temps]
    lines += [f"    {target} = {printer.doprint(e)};" for (target, _), e in zip(outputs, reduced)]
    return lines


def c_header(program: Program, derivatives: RateDerivatives | None = None, prefix: str = "gm") -> str:
    """The C header of ``program``'s rates and their derivatives (see the module doc); ``prefix``
    names its functions and arrays. The inputs are ``t``, ``x`` (S) and ``p`` (P) of one row."""
    d = derivatives or RateDerivatives.of(program)
    S, R, P = len(program.states), len(program.outputs), len(program.params)
    rates = [(f"v[{r}]", _inline(program, e)) for r, e in enumerate(program.outputs)]
    vx = [(f"vx[{e}]", expr) for e, (_, _, expr) in enumerate(d.vx)]
    vp = [(f"vp[{e}]", expr) for e, (_, _, expr) in enumerate(d.vp)]

    def arr(name: str, values: list[int]) -> str:
        return f"static const int32_t {name}[{max(len(values), 1)}] = {{{', '.join(map(str, values)) or '0'}}};"

    lines = [f"/* generated by genenet.kinetics.codegen: program {program.key()} */",
             f"#define {prefix.upper()}_S {S}", f"#define {prefix.upper()}_R {R}", f"#define {prefix.upper()}_P {P}",
             f"#define {prefix.upper()}_NX {len(d.vx)}", f"#define {prefix.upper()}_NP {len(d.vp)}",
             "#ifndef GM_POWLOG", "#define GM_POWLOG",
             "static inline real gm_powlog(real b, real e) { return b == 0 ? (real)0 : pow(b, e) * log(b); }",
             "#endif",
             arr(f"{prefix}_vx_r", [r for r, _, _ in d.vx]), arr(f"{prefix}_vx_s", [j for _, j, _ in d.vx]),
             arr(f"{prefix}_vp_r", [r for r, _, _ in d.vp]), arr(f"{prefix}_vp_p", [k for _, k, _ in d.vp]),
             f"static inline void {prefix}_rates(real t, const real *restrict x, const real *restrict p, "
             "real *restrict v) {", *_body(program, rates), "}",
             f"static inline void {prefix}_rates_d(real t, const real *restrict x, const real *restrict p, "
             "real *restrict v, real *restrict vx, real *restrict vp) {", *_body(program, rates + vx + vp), "}"]
    return "\n".join(lines) + "\n"

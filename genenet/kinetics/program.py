"""A straight-line program from expressions: common subexpressions once, then a backend prints it.

``Program.build(outputs, states, params)`` runs sympy's common-subexpression elimination over all
outputs together (rates that share ``K^n + x^n`` compute it once) and keeps the result as
``(temporaries, outputs)``. Backends print that one program: :func:`torch_function` (batched
columns, autograd, any device) here; the native C backend prints the same program. The program
depends on the model's *structure* only (parameter values are data), so it is built once per
structure and cached by :meth:`Program.key`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy
import torch
from sympy.printing.pycode import PythonCodePrinter

from .expressions import TIME

__all__ = ["Program", "torch_function"]


@dataclass(frozen=True)
class Program:
    """Temporaries ``(symbol, expression)`` in order, then the outputs, over the state symbols
    ``states`` (``_x{i}``: column i of x), the parameter symbols ``params`` (``_p{j}``: column j of
    p) and ``t``."""

    states: tuple[sympy.Symbol, ...]
    params: tuple[sympy.Symbol, ...]
    temporaries: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    outputs: tuple[sympy.Expr, ...]

    @classmethod
    def build(cls, outputs: Sequence[sympy.Expr], states: Sequence[sympy.Symbol], params: Sequence[sympy.Symbol]
              ) -> Program:
        # positional names (_x0, _p0): no user name can shadow the generated code's own, and models of
        # the same structure print the same program whatever their species are called
        xs = tuple(sympy.Symbol(f"_x{i}", real=True) for i in range(len(states)))
        ps = tuple(sympy.Symbol(f"_p{j}", real=True) for j in range(len(params)))
        rename = dict(zip(states, xs)) | dict(zip(params, ps))
        temps, reduced = sympy.cse([sympy.sympify(o).xreplace(rename) for o in outputs],
                                   symbols=sympy.numbered_symbols("_c"), optimizations="basic")
        return cls(xs, ps, tuple(temps), tuple(reduced))

    @property
    def uses_time(self) -> bool:
        return any(e.has(TIME) for _, e in self.temporaries) or any(e.has(TIME) for e in self.outputs)

    def key(self) -> str:
        """A hash of the program's text: equal for models of the same structure."""
        text = repr((self.states, self.params, self.temporaries, self.outputs))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_TORCH_FUNCTIONS = {"exp": "exp", "log": "log", "sqrt": "sqrt", "Abs": "abs", "floor": "floor", "ceiling": "ceil",
                    **{f: f for f in ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh",
                                      "acosh", "atanh")}}


class _TorchPrinter(PythonCodePrinter):
    """Python source over torch tensors: every symbol is a (B,) column, numbers stay Python floats."""

    def _print_Function(self, expr: sympy.Expr) -> str:  # exp, log, ... -> torch.exp, torch.log, ...
        name = _TORCH_FUNCTIONS.get(type(expr).__name__)
        if name is None:
            raise NotImplementedError(f"no torch form for {type(expr).__name__}")
        return f"torch.{name}({', '.join(self._as_tensor(a) for a in expr.args)})"

    _print_exp = _print_log = _print_sqrt = _print_Abs = _print_Function
    _print_floor = _print_ceiling = _print_Function
    _print_sin = _print_cos = _print_tan = _print_asin = _print_acos = _print_atan = _print_Function
    _print_sinh = _print_cosh = _print_tanh = _print_asinh = _print_acosh = _print_atanh = _print_Function

    def _print_PowLog(self, expr: sympy.Expr) -> str:  # b^e log b, 0 at b = 0 (codegen.PowLog)
        b, e = (self._as_tensor(a) for a in expr.args)
        return f"torch.where({b} == 0, _full(0.0), ({b}) ** ({e}) * torch.log({b}))"

    def _print_Logistic(self, expr: sympy.Expr) -> str:
        return f"torch.sigmoid({self._as_tensor(expr.args[0])})"

    def _print_gamma(self, expr: sympy.Expr) -> str:
        return f"torch.exp(torch.lgamma({self._as_tensor(expr.args[0])}))"

    def _print_And(self, expr: sympy.Expr) -> str:
        return self._fold("torch.logical_and", expr.args)

    def _print_Or(self, expr: sympy.Expr) -> str:
        return self._fold("torch.logical_or", expr.args)

    def _print_Xor(self, expr: sympy.Expr) -> str:
        return self._fold("torch.logical_xor", expr.args)

    def _print_Not(self, expr: sympy.Expr) -> str:
        return f"torch.logical_not({self._as_tensor(expr.args[0])})"

    def _print_Relational(self, expr: sympy.Expr) -> str:
        return f"({self._as_tensor(expr.lhs)} {expr.rel_op} {self._as_tensor(expr.rhs)})"

    _print_StrictLessThan = _print_LessThan = _print_StrictGreaterThan = _print_GreaterThan = _print_Relational
    _print_Equality = _print_Unequality = _print_Relational

    def _print_BooleanTrue(self, expr: sympy.Expr) -> str:
        return "_full(1.0).bool()"

    def _print_BooleanFalse(self, expr: sympy.Expr) -> str:
        return "_full(0.0).bool()"

    def _print_Pow(self, expr: sympy.Pow, rational: bool = False) -> str:
        base, exp = expr.args
        if exp == sympy.Rational(1, 2):
            return f"torch.sqrt({self._print(base)})"
        if exp == -1:
            return f"(1.0 / {self.parenthesize(base, 1000)})"
        return f"({self.parenthesize(base, 1000)} ** {self.parenthesize(exp, 1000)})"

    def _print_Min(self, expr: sympy.Expr) -> str:
        return self._fold("torch.minimum", expr.args)

    def _print_Max(self, expr: sympy.Expr) -> str:
        return self._fold("torch.maximum", expr.args)

    def _fold(self, fn: str, args: Sequence[sympy.Expr]) -> str:
        out = self._as_tensor(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self._as_tensor(a)})"
        return out

    def _as_tensor(self, a: sympy.Expr) -> str:
        return f"_full({self._print(a)})" if a.is_number else self._print(a)

    def _print_Piecewise(self, expr: sympy.Piecewise) -> str:
        out = None
        for value, cond in reversed(expr.args):
            if cond == sympy.true:
                out = self._as_tensor(value)
                continue
            out = f"torch.where({self._print(cond)}, {self._as_tensor(value)}, {out or '_full(math.nan)'})"
        return out

    def _print_Float(self, expr: sympy.Float) -> str:
        return repr(float(expr))

    def _print_Integer(self, expr: sympy.Integer) -> str:
        return f"{int(expr)}.0"

    def _print_Rational(self, expr: sympy.Rational) -> str:
        return repr(float(expr))

    def _print_Pi(self, expr: sympy.Expr) -> str:
        return repr(math.pi)

    def _print_Exp1(self, expr: sympy.Expr) -> str:
        return repr(math.e)


def torch_function(program: Program) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(t, x, p) -> (B, K)``: the program's K outputs for every row, from ``t`` (scalar or (B,)),
    states ``x`` (B, S) and parameters ``p`` (B, P) in the program's order. Differentiable (plain
    torch operations), any device and dtype; constant outputs are broadcast to (B,)."""
    printer = _TorchPrinter({"fully_qualified_modules": False, "standard": "python3"})
    lines = ["def f(t, x, p):", "    B = x.shape[0]",
             "    def _full(v):", "        return x.new_full((B,), float(v))",
             "    def _num(v):  # a condition used as a number (SBML allows it): 1.0 or 0.0",
             "        return v.to(x.dtype) if v.dtype == torch.bool else v"]
    for i, s in enumerate(program.states):
        lines.append(f"    {s.name} = x[:, {i}]")
    for j, s in enumerate(program.params):
        lines.append(f"    {s.name} = p[:, {j}]")
    if program.uses_time:
        lines.append("    t = t.expand(B) if torch.is_tensor(t) and t.ndim else x.new_full((B,), float(t))")
    for sym, expr in program.temporaries:
        lines.append(f"    {sym.name} = {printer.doprint(expr)}")
    # a constant output is its value (log(10), nan, inf as text float() reads)
    outs = [f"_num({printer.doprint(e)})" if not e.is_number else f"_full('{float(e)!r}')"
            for e in program.outputs]
    if outs:
        lines.append(f"    return torch.stack([{', '.join(outs)}], dim=1)")
    else:
        lines.append("    return x.new_zeros((B, 0))")
    source = "\n".join(lines)
    namespace: dict = {"torch": torch, "math": math}
    exec(compile(source, f"<genenet kinetics {program.key()}>", "exec"), namespace)  # noqa: S102 (our own source)
    fn = namespace["f"]
    fn.source = source
    return fn

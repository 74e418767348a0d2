"""Rate laws as text -> sympy expressions over named species, parameters and time.

The grammar is Python's arithmetic with ``^`` also meaning power (as SBML's infix and most papers
write it), numbers, the names of the model's species and parameters, ``t`` (time) and these
functions:

    exp, log, sqrt, abs, min, max, pow(a, b), sin, cos, tan, tanh (periodic drives: sin(w * t))
    hill_act(x, K, n) = x^n / (K^n + x^n)        (activating Hill function, 0 -> 1)
    hill_rep(x, K, n) = K^n / (K^n + x^n)        (repressing Hill function, 1 -> 0)
    mm(x, Km)         = x / (Km + x)             (Michaelis-Menten saturation)
    sigmoid(u)        = 1 / (1 + exp(-u))        (logistic; overflow-free in the generated code)

Anything else (an unknown name, an unknown function, Python syntax that is not arithmetic) is a
``ValueError`` that names the culprit, where it was found and what is allowed. Text never reaches
``eval`` with Python's builtins: only sympy's number and symbol constructors are in scope.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy
from sympy.core.function import AppliedUndef
from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

__all__ = ["FUNCTIONS", "TIME", "Logistic", "parse_rate"]

#: the symbol of time in every expression
TIME = sympy.Symbol("t", real=True)


def _hill_act(x: sympy.Expr, K: sympy.Expr, n: sympy.Expr) -> sympy.Expr:
    return x ** n / (K ** n + x ** n)


def _hill_rep(x: sympy.Expr, K: sympy.Expr, n: sympy.Expr) -> sympy.Expr:
    return K ** n / (K ** n + x ** n)


def _mm(x: sympy.Expr, Km: sympy.Expr) -> sympy.Expr:
    return x / (Km + x)


class Logistic(sympy.Function):
    """``σ(u) = 1 / (1 + e^{-u})`` kept whole: ``σ' = σ (1 - σ)``, printed as ``torch.sigmoid`` and as
    C that never forms ``e^{-u}`` for large negative ``u`` (written out, its derivative
    ``e^{-u} / (1 + e^{-u})^2`` is inf / inf = NaN below u = -709)."""

    nargs = 1

    @classmethod
    def eval(cls, u: sympy.Expr) -> sympy.Expr | None:
        return 1 / (1 + sympy.exp(-u)) if u.is_Number else None

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return self * (1 - self)

    def _eval_rewrite_as_exp(self, u: sympy.Expr, **kwargs) -> sympy.Expr:
        return 1 / (1 + sympy.exp(-u))


#: the functions a rate law may call, by the name it calls them
FUNCTIONS = {"exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "abs": sympy.Abs, "min": sympy.Min,
             "max": sympy.Max, "pow": sympy.Pow, "hill_act": _hill_act, "hill_rep": _hill_rep, "mm": _mm,
             "sigmoid": Logistic, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "tanh": sympy.tanh}

# what parse_expr's generated code may construct: numbers and symbols, nothing of Python's
_GLOBALS = {name: getattr(sympy, name) for name in ("Integer", "Float", "Rational", "Symbol", "Function")}
_GLOBALS["__builtins__"] = {}
_TRANSFORMS = (*standard_transformations, convert_xor)


def parse_rate(text: str | sympy.Expr | float | int, symbols: Mapping[str, sympy.Symbol], where: str
               ) -> sympy.Expr:
    """The expression ``text`` over ``symbols`` (name -> Symbol: species and parameters) and ``t``.

    ``text`` may already be a sympy expression or a number; ``where`` names its place in the model
    (``"reaction 'R1'"``, ``"equation of 'A'"``) for error messages. Raises ``ValueError`` for
    unparsable text, unknown names and unknown functions; ``TypeError`` for other input types."""
    names = {**FUNCTIONS, **symbols, "t": TIME}
    if isinstance(text, bool) or not isinstance(text, (str, sympy.Expr, int, float)):
        raise TypeError(f"{where}: a rate must be a string, a sympy expression or a number, "
                        f"got {type(text).__name__}")
    if isinstance(text, (int, float)):
        expr = sympy.Float(text) if isinstance(text, float) else sympy.Integer(text)
    elif isinstance(text, str):
        if not text.strip():
            raise ValueError(f"{where}: the rate is empty")
        try:
            expr = parse_expr(text, local_dict=dict(names), global_dict=dict(_GLOBALS), transformations=_TRANSFORMS,
                              evaluate=True)
        except (SyntaxError, TypeError, AttributeError, NameError, ValueError) as e:
            raise ValueError(f"{where}: cannot read the rate {text!r} ({type(e).__name__}: {e}); allowed: "
                             "arithmetic (+ - * / ** ^), numbers, species, parameters, t and "
                             f"{', '.join(FUNCTIONS)}") from None
        if not isinstance(expr, sympy.Expr):
            raise ValueError(f"{where}: the rate {text!r} is not an arithmetic expression (got {type(expr).__name__})")
    else:
        expr = text
    known = set(symbols.values()) | {TIME}
    unknown_fns = sorted({str(f.func) for f in expr.atoms(AppliedUndef)})
    if unknown_fns:
        raise ValueError(f"{where}: unknown function(s) {', '.join(unknown_fns)} in {str(text)!r}; allowed: "
                         f"{', '.join(FUNCTIONS)}")
    # a sympy expression may carry symbols with other assumptions: match them by name
    by_name = {s.name: s for s in known}
    expr = expr.xreplace({s: by_name[s.name] for s in expr.free_symbols if s.name in by_name and s not in known})
    unknown = sorted(s.name for s in expr.free_symbols if s not in known)
    if unknown:
        raise ValueError(f"{where}: unknown name(s) {', '.join(unknown)} in {str(text)!r}; known: species and "
                         f"parameters {sorted(symbols)}, t, and the functions {', '.join(FUNCTIONS)}")
    if expr.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        raise ValueError(f"{where}: the rate {str(text)!r} is not finite as written ({expr})")
    return expr

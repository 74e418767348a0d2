r"""Native kernels for compiled symbolic models: one integrator library, one small rate library per model.

A :class:`~genenet.kinetics.symbolic.SymbolicModel` (reaction networks, equations, SBML) prints
its rates and their sparse derivatives as C (:func:`genenet.kinetics.codegen.c_header`). That
header compiles with ``rates.c`` into the model's *rate library* (a fraction of a second), cached
in ``$GENENET_CACHE/native`` by the hash of the header, the kernel sources, the precision and the
flags, under the same file lock and atomic rename as the Hill kernels (:mod:`genenet.native.build`).
The integrators (``compiled.c``: the model of ``compiled.h`` under the steppers, step loop, tape
adjoint and steady-state iterations the Hill kernels use) compile once per precision for all models
and call a model's rates through the ``Rates`` interface of ``rates.h`` (two function pointers and
the sparsity arrays). Parameter values, the stoichiometry and the condition effects are arguments,
not code: a model with other values, or another stoichiometry over the same rate laws, reuses its
rate library.

What runs here: dopri5/tsit5 (with forward-sensitivity tangents and ``method="auto"``'s stiffness
detection), rodas5/rodas4 with the analytic Jacobian, and the Newton / pseudo-transient steady
states (rates that read ``t`` see each stage's time; the Rosenbrock steps add ``∂f/∂t`` from the
generated ``dv/dt``; steady states take ``t = 0``, as the torch iterations do). Gradients of an explicit
solve are the discrete adjoint in C over the step tape (``adjoint.h``, the Hill kernel's sweep with
the model's VJPs ``vᵀ N ∂v/∂x``, ``vᵀ N ∂v/∂p`` from the compiled derivative entries): the gradient
of the computed solution, as backpropagation through the torch loop gives. Second derivatives (a
gradient taken with ``create_graph=True``) are not native: genenet's own second-order callers
(``FitProblem.hvp``, trust-ncg) run such solves on the torch loop (:func:`genenet.native.second_order`).
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import build

__all__ = ["library", "SPEC_KEYS", "integrate_erk", "integrate_erk_grad", "integrate_rodas", "integrate_bdf", "roots",
           "rhs"]

SPEC_KEYS = ("params", "reaction_scale")  # the differentiable arrays of a compiled model's spec
_REAL = {torch.float32: "float", torch.float64: "double"}
_DRIVERS: dict[str, Any] = {}
_RATES: dict[str, Any] = {}
_FAILED: dict[str, str] = {}
_LOCK = threading.Lock()
_i64, _dbl = ctypes.c_int64, ctypes.c_double
_ENTRY_POINTS = ("genenet_model_erk", "genenet_model_rodas", "genenet_model_bdf", "genenet_model_roots",
                 "genenet_model_rhs", "genenet_model_erk_adjoint")


class Compiled:
    """A model's rate library bound to the integrator library: ``driver`` (ctypes), ``rates`` (the
    ``Rates`` struct's bytes, passed to every entry point) and the rate library that owns the code."""

    def __init__(self, driver: Any, rates_lib: Any) -> None:
        self.driver, self.rates_lib = driver, rates_lib
        rates_lib.genenet_rates_bytes.restype = ctypes.c_int64
        self.rates = ctypes.create_string_buffer(int(rates_lib.genenet_rates_bytes()))
        rates_lib.genenet_rates_fill(self.rates)
        sizes = (ctypes.c_int64 * 5)()
        rates_lib.genenet_rates_sizes(sizes)
        self.sizes = tuple(sizes)  # species, reactions, parameters, nonzeros of dv/dx, of dv/dp

    def __getattr__(self, name: str) -> Any:  # the driver's entry points, called with the rates first
        fn = getattr(self.driver, name)
        return lambda *args: fn(ctypes.cast(self.rates, ctypes.c_void_p), *args)


def _header(model: Any) -> str:
    text = getattr(model, "_c_header", None)
    if text is None:
        from ..kinetics.codegen import c_header

        text = model._c_header = c_header(model.program)
    return text


def _warn(what: str, why: str) -> None:
    from . import NativeKernelWarning

    warnings.warn(f"the native kernel of {what} is unavailable, so it runs on the torch loop (results agree to "
                  f"rounding, 10-100x slower on the CPU). Why: {why}", NativeKernelWarning, stacklevel=4)


def _driver(real: str) -> Any | None:
    if real in _DRIVERS:
        return _DRIVERS[real]
    key = "driver_" + real
    if key in _FAILED:
        return None
    with _LOCK:
        if real not in _DRIVERS and key not in _FAILED:
            try:
                lib = ctypes.CDLL(str(build.cached_library(real, name="models")))
                lib.genenet_source_hash.restype = ctypes.c_char_p
                if lib.genenet_source_hash().decode() != build.source_hash():
                    lib = ctypes.CDLL(str(build.cached_library(real, name="models", rebuild=True)))
                for name in _ENTRY_POINTS:
                    getattr(lib, name).restype = ctypes.c_int
                lib.genenet_tapes_new.restype = ctypes.c_void_p
                lib.genenet_tapes_oom.restype = ctypes.c_int64
                _DRIVERS[real] = lib
            except Exception as err:  # noqa: BLE001 - any failure means: the torch loop, and say why
                _FAILED[key] = f"{type(err).__name__}: {err}"
                _warn("compiled models", _FAILED[key])
    return _DRIVERS.get(real)


def library(model: Any, dtype: torch.dtype) -> Compiled | None:
    """``model``'s compiled kernels in ``dtype`` (built on first use: the integrators once per
    precision, the model's rates once per structure), or None when they cannot be built here (no
    compiler; the first failure warns, with the reason)."""
    if dtype not in _REAL or build.compiler() is None:
        return None
    real = _REAL[dtype]
    driver = _driver(real)
    if driver is None:
        return None
    cc = build.compiler()
    digest = hashlib.sha256("\0".join([model.structure_key(), _codegen_hash(), build.source_hash(), cc,
                                       *build.flags(real)]).encode()).hexdigest()
    key = f"{real}_{digest[:16]}"
    if key in _RATES:
        return _RATES[key]
    if key in _FAILED:
        return None
    with _LOCK:
        if key not in _RATES and key not in _FAILED:
            try:
                lib = Compiled(driver, ctypes.CDLL(str(_build_rates(key, model, real, cc))))
                want = (len(model.genes), len(model.reactions), len(model.param_names))
                if lib.sizes[:3] != want:  # a cached library of another structure must never run
                    raise RuntimeError(f"the cached rate library {key} has (species, reactions, parameters) "
                                       f"{lib.sizes[:3]}, this model {want}")
                _RATES[key] = lib
            except Exception as err:  # noqa: BLE001
                _FAILED[key] = f"{type(err).__name__}: {err}"
                _warn("this compiled model", _FAILED[key])
    return _RATES.get(key)


def _codegen_hash() -> str:
    """The C generator's version (its source and the program builder's): a cached rate library
    printed by another version is not reused."""
    global _CODEGEN
    if _CODEGEN is None:
        from ..kinetics import codegen, program

        h = hashlib.sha256()
        for mod in (codegen, program):
            h.update(Path(mod.__file__).read_bytes())
        _CODEGEN = h.hexdigest()[:16]
    return _CODEGEN


_CODEGEN: str | None = None


def _build_rates(key: str, model: Any, real: str, cc: str) -> Any:
    """The rate library's path, built (header printed, then compiled) only when the cache lacks it."""
    root = build.cache_dir()
    lib_path = root / f"genenet_rates_{key}{build._suffix()}"
    if lib_path.exists():
        return lib_path
    with build.locked(root / f"genenet_rates_{key}.lock"):
        if not lib_path.exists():
            h_path = root / f"genenet_rates_{key}.h"
            tmp = h_path.with_suffix(".h.tmp")
            tmp.write_text(_header(model))
            tmp.replace(h_path)
            build.compile_library(real, lib_path, cc=cc, source=build.DIR / "rates.c",
                                  defines=(f'GM_HEADER="{h_path}"',))
    return lib_path


def _ptr(x: Tensor | np.ndarray | None) -> ctypes.c_void_p:
    if x is None:
        return ctypes.c_void_p(None)
    if isinstance(x, np.ndarray):
        return ctypes.c_void_p(x.ctypes.data)
    return ctypes.c_void_p(x.data_ptr())


def _rows(x: Tensor | None, B: int, dtype: torch.dtype, width: int) -> Tensor | None:
    if x is None:
        return None
    return x.detach().to("cpu", dtype).reshape(-1, width).expand(B, -1).contiguous()


def _model_args(spec: dict, B: int, dtype: torch.dtype) -> tuple[list, list]:
    """The model arguments of every entry point (MODEL_ARGS of compiled.c) and what keeps them alive."""
    model = spec["model"]
    S, R, P = len(model.genes), len(model.reactions), len(model.param_names)
    ptr_, row_, val_, syn_ = model.stoichiometry_csc()
    s_ptr, s_col, s_val = model.stoichiometry_csr()
    real_np = np.float32 if dtype == torch.float32 else np.float64
    clamp = spec.get("clamp")
    keep = [_rows(spec["params"], B, dtype, P) if P else torch.zeros(B, 1, dtype=dtype),
            _rows(spec.get("reaction_scale"), B, dtype, R), _rows(spec.get("mult"), B, dtype, S),
            _rows(spec.get("add"), B, dtype, S),
            None if clamp is None else clamp.detach().to("cpu", torch.uint8).expand(B, -1).contiguous(),
            ptr_, row_, np.ascontiguousarray(val_, dtype=real_np), syn_, s_ptr, s_col,
            np.ascontiguousarray(s_val, dtype=real_np)]
    return [_i64(B), _i64(S), *map(_ptr, keep)], keep


def _solve_args(x0: Tensor, t_save: Tensor, t_start: Tensor | None, rtol: Tensor, atol: Tensor, S: int
                ) -> tuple[list, list]:
    dtype = x0.dtype
    keep = [t_save.detach().to("cpu", dtype).contiguous(),
            None if t_start is None else t_start.detach().to("cpu", dtype).contiguous(),
            x0.detach().to("cpu", dtype).contiguous(), rtol.detach().to("cpu", dtype).expand(S).contiguous(),
            atol.detach().to("cpu", dtype).expand(S).contiguous()]
    return [_i64(t_save.numel()), *map(_ptr, keep)], keep


def _require(spec: dict, dtype: torch.dtype) -> Any:
    lib = library(spec["model"], dtype)
    if lib is None:
        raise RuntimeError("this compiled model's native kernel is unavailable (see the warning)")
    return lib


def integrate_erk(spec: dict, x0: Tensor, t_save: Tensor, *, tableau: Any, rtol: Tensor, atol: Tensor,
                  first_step: float | None, max_steps: int, steady_tol: float | None, window: int, controller: Any,
                  t_start: Tensor | None = None, tape: int | None = None, stiff_after: int | None = None,
                  check_every: int = 8, use_rho: bool = False) -> tuple[Tensor, ...]:
    """The explicit kernel on every row of a compiled model, as :func:`genenet.native.integrate_hill_erk`
    does for the Hill model. ``spec`` (``SymbolicModel.native_spec`` under a condition's effects):
    ``model``, ``params`` (B or 1, P) in ``model.param_names`` order, optional ``reaction_scale``
    (B or 1, R), ``mult``/``add`` (B, S), ``clamp`` (B, S) bool; with forward sensitivities
    ``spec["tangents"] = {"params": (B, q, P), "reaction_scale": (B, q, R)}`` (absent: constant)
    and ``x0 = [x, ẋ_1, ..., ẋ_q]`` (B, (1 + q) S). Returns ``y`` (B, T, W), ``status`` (B,),
    counters (4, B), ``t_last`` (B,), ``y_last`` (B, W)."""
    from . import _erk_arrays, _loop, tangent_layout

    dtype = x0.dtype
    lib = _require(spec, dtype)
    model = spec["model"]
    B, W = x0.shape
    S = len(model.genes)
    Q, tangents = tangent_layout(spec, W, S, "species", SPEC_KEYS)
    widths = {"params": len(model.param_names), "reaction_scale": len(model.reactions)}
    tan = {k: v.detach().to("cpu", dtype).expand(B, Q, widths[k]).contiguous() for k, v in tangents.items()}
    margs, mkeep = _model_args(spec, B, dtype)
    sargs, skeep = _solve_args(x0, t_save, t_start, rtol, atol, S)
    A, E, P = _erk_arrays(tableau)
    loop, outs = _loop(B, t_save.numel(), W, dtype, first_step, max_steps, steady_tol, window, controller,
                       stiff_after or 0, check_every, use_rho)
    rc = lib.genenet_model_erk(*margs, _i64(Q), _ptr(tan.get("params")), _ptr(tan.get("reaction_scale")), *sargs,
                               _i64(tableau.stages), _ptr(A), _ptr(E), _i64(P.shape[1]), _ptr(P),
                               _i64(tableau.error_order), *loop, ctypes.c_void_p(tape))
    if rc != 0:
        raise RuntimeError(f"native model kernel refused the call (code {rc})")
    return tuple(o.to(x0.device) for o in outs)


def _without_tangents(spec: dict, x0: Tensor, t_save: Tensor, t_start: Tensor | None, rtol: Tensor, atol: Tensor,
                      loop_kw: dict, what: str) -> tuple[Any, list, list, tuple, list]:
    """What the kernels that carry no tangents (Rosenbrock, BDF) take: the library, the model and solve
    arguments, the loop's arguments, its outputs, and the arrays that must stay alive for the call."""
    from . import _loop

    dtype = x0.dtype
    lib = _require(spec, dtype)
    if "tangents" in spec:
        raise ValueError(f"the native {what} kernel carries no tangents")
    B, W = x0.shape
    margs, mkeep = _model_args(spec, B, dtype)
    sargs, skeep = _solve_args(x0, t_save, t_start, rtol, atol, W)
    loop, outs = _loop(B, t_save.numel(), W, dtype, **loop_kw)
    return lib, margs + sargs, loop, outs, mkeep + skeep


def _outputs(rc: int, outs: tuple, x0: Tensor) -> tuple[Tensor, ...]:
    if rc != 0:
        raise RuntimeError(f"native model kernel refused the call (code {rc})")
    return tuple(o.to(x0.device) for o in outs)


def integrate_rodas(spec: dict, x0: Tensor, t_save: Tensor, *, tableau: Any, rtol: Tensor, atol: Tensor,
                    t_start: Tensor | None = None, **loop_kw: Any) -> tuple[Tensor, ...]:
    """The Rosenbrock kernel on every row of a compiled model (no tangents); as :func:`integrate_erk`
    (``loop_kw``: its ``first_step``, ``max_steps``, ``steady_tol``, ``window``, ``controller``)."""
    lib, args, loop, outs, _keep = _without_tangents(spec, x0, t_save, t_start, rtol, atol, loop_kw, "Rosenbrock")
    arrays = [np.ascontiguousarray(v, dtype=np.float64) for v in (tableau.a, tableau.C, tableau.b, tableau.e,
                                                                  tableau.H, tableau.c, tableau.d)]
    rc = lib.genenet_model_rodas(*args, _i64(tableau.stages), _dbl(tableau.gamma), *map(_ptr, arrays[:4]),
                                 _i64(tableau.H.shape[0]), _ptr(arrays[4]), _i64(tableau.error_order),
                                 _ptr(arrays[5]), _ptr(arrays[6]), *loop)
    return _outputs(rc, outs, x0)


def integrate_bdf(spec: dict, x0: Tensor, t_save: Tensor, *, rtol: Tensor, atol: Tensor,
                  t_start: Tensor | None = None, tableau: Any = None, **loop_kw: Any) -> tuple[Tensor, ...]:
    """The variable-order BDF kernel (:mod:`genenet.solvers.bdf`) on every row of a compiled model (no
    tangents); arguments and results as :func:`integrate_rodas` (``tableau`` is ignored)."""
    lib, args, loop, outs, _keep = _without_tangents(spec, x0, t_save, t_start, rtol, atol, loop_kw, "BDF")
    return _outputs(lib.genenet_model_bdf(*args, *loop), outs, x0)


def _law_args(spec: dict, B: int, dtype: torch.dtype) -> tuple[list, list]:
    """The conservation laws' arguments (nlaw, L, pivots, totals, on) of the reduced system, from
    ``spec["laws"] = (L (m, S), pivots (m,), totals (B, m), on (B, m))``; none without."""
    if spec.get("laws") is None:
        return [_i64(0), *[ctypes.c_void_p(None)] * 4], []
    L, piv, tot, on = spec["laws"]
    keep = [L.detach().to("cpu", dtype).contiguous(), piv.detach().to("cpu", torch.int32).contiguous(),
            tot.detach().to("cpu", dtype).expand(B, -1).contiguous(),
            on.detach().to("cpu", torch.uint8).expand(B, -1).contiguous()]
    return [_i64(L.shape[0]), *map(_ptr, keep)], keep


def roots(spec: dict, x: Tensor, *, mode: str, tol: float, max_iter: int, give_up: int | None = None,
          active: Tensor | None = None, dt0: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Newton (``mode="newton"``) or pseudo-transient continuation (``"ptc"``) on every row of a
    compiled model, as :func:`genenet.native.roots_hill`; with ``spec["laws"]`` on the moiety-reduced
    system (:mod:`genenet.conservation`). Returns ``(x, converged, iterations)``."""
    dtype = x.dtype
    lib = _require(spec, dtype)
    B, S = x.shape
    margs, mkeep = _model_args(spec, B, dtype)
    largs, lkeep = _law_args(spec, B, dtype)
    xs = x.detach().to("cpu", dtype).clone().contiguous()
    act = None if active is None else active.detach().to("cpu", torch.uint8).contiguous()
    conv, iters = torch.empty(B, dtype=torch.uint8), torch.empty(B, dtype=torch.int64)
    rc = lib.genenet_model_roots(*margs, *largs, _ptr(xs), _ptr(act), _i64(0 if mode == "newton" else 1), _dbl(tol),
                                 _i64(max_iter), _i64(give_up or 0), _dbl(dt0), _ptr(conv), _ptr(iters),
                                 _i64(torch.get_num_threads()))
    if rc != 0:
        raise RuntimeError(f"native model steady-state kernel failed (code {rc})")
    dev = x.device
    return xs.to(dev), conv.to(dev, torch.bool), iters.to(dev)


def rhs(spec: dict, x: Tensor, jacobian: bool = False) -> tuple[Tensor, Tensor | None]:
    """The compiled right-hand side (B, S) at ``x`` (B, S) under the spec (the reduced system's with
    ``spec["laws"]``), and its Jacobian (B, S, S) with ``jacobian=True`` (for tests and checks)."""
    dtype = x.dtype
    lib = _require(spec, dtype)
    B, S = x.shape
    margs, mkeep = _model_args(spec, B, dtype)
    largs, lkeep = _law_args(spec, B, dtype)
    xc = x.detach().to("cpu", dtype).contiguous()
    f = torch.empty(B, S, dtype=dtype)
    J = torch.empty(B, S, S, dtype=dtype) if jacobian else None
    rc = lib.genenet_model_rhs(*margs, *largs, _ptr(xc), _ptr(f), _ptr(J))
    if rc != 0:
        raise RuntimeError(f"native model kernel refused the call (code {rc})")
    return f, J


class _ErkModel(torch.autograd.Function):
    """The explicit kernel of a compiled model as an autograd function of x0, the parameter matrix
    and reaction_scale, its backward the discrete adjoint in C (first order)."""

    @staticmethod
    def forward(ctx: Any, x0: Tensor, params: Tensor, scale: Tensor | None, static: dict) -> tuple[Tensor, ...]:
        from . import _taped_solve

        spec = {**static["spec"], "params": params}
        if scale is not None:
            spec["reaction_scale"] = scale
        lib = _require(spec, x0.dtype)
        B, G = x0.shape
        tapes, outs = _taped_solve(lib.driver, B, static["tableau"].stages, G, "species",
                                   lambda h: integrate_erk(spec, x0, static["t_save"], tape=h, **static["kw"]))
        ctx.tapes, ctx.static, ctx.spec, ctx.lib = tapes, static, spec, lib
        y, status, counters, t_last, y_last = outs
        ctx.mark_non_differentiable(status, counters, t_last)
        return y, status, counters, t_last, y_last

    @staticmethod
    def backward(ctx: Any, y_bar: Tensor | None, _s: Any, _c: Any, _t: Any, last_bar: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        from . import _cotangents, _erk_arrays

        if torch.is_grad_enabled():
            raise RuntimeError("second derivatives (create_graph=True) through a compiled model's native solve are "
                               "not available; run the solve inside genenet.native.second_order() (or "
                               "genenet.native.torch_path()), which takes the torch loop")
        static, spec = ctx.static, ctx.spec
        model = spec["model"]
        B, G = static["shape"]
        dtype, t_save = static["dtype"], static["t_save"]
        ybar, lbar = _cotangents(static, y_bar, last_bar)
        margs, mkeep = _model_args(spec, B, dtype)
        A, _, P = _erk_arrays(static["tableau"])
        ts = t_save.detach().to("cpu", dtype).contiguous()
        x0b = torch.empty(B, G, dtype=dtype)
        pb = torch.empty(B, max(len(model.param_names), 1), dtype=dtype)
        sb = torch.empty(B, len(model.reactions), dtype=dtype) if "reaction_scale" in spec else None
        rc = ctx.lib.genenet_model_erk_adjoint(*margs, _i64(t_save.numel()), _ptr(ts), _i64(A.shape[0]), _ptr(A),
                                               _i64(P.shape[1]), _ptr(P), ctypes.c_void_p(ctx.tapes.handle),
                                               _ptr(ybar), _ptr(lbar), _ptr(x0b), _ptr(pb), _ptr(sb),
                                               _i64(torch.get_num_threads()))
        if rc != 0:
            raise RuntimeError(f"native model adjoint refused the call (code {rc})")
        dev = static["device"]
        needs = ctx.needs_input_grad
        return (x0b.to(dev) if needs[0] else None,
                pb[:, : len(model.param_names)].to(dev) if needs[1] else None,
                sb.to(dev) if sb is not None and needs[2] else None, None)


def integrate_erk_grad(spec: dict, x0: Tensor, t_save: Tensor, *, tableau: Any, **kw: Any) -> tuple[Tensor, ...]:
    """:func:`integrate_erk` (no tangents) differentiable with respect to ``x0``, ``params`` and
    ``reaction_scale`` by the discrete adjoint in C; the condition effects are constants."""
    B = x0.shape[0]
    model = spec["model"]
    static = {"spec": {k: spec[k] for k in ("model", "mult", "add", "clamp") if k in spec},
              "tableau": tableau, "t_save": t_save, "kw": {"tableau": tableau, **kw}, "shape": tuple(x0.shape),
              "dtype": x0.dtype, "device": x0.device}
    params = spec["params"].reshape(-1, len(model.param_names)).expand(B, -1)
    scale = spec.get("reaction_scale")
    return _ErkModel.apply(x0, params, None if scale is None else scale.expand(B, -1), static)


def drivers() -> list[Any]:
    """The loaded integrator libraries (their tape pools, for :func:`genenet.native.release_memory`)."""
    return list(_DRIVERS.values())

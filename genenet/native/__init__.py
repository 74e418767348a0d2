r"""Native CPU kernels: whole-trajectory adaptive integration of the Hill model, one row per task.

The batched Python loop (:func:`genenet.solvers.integrate.integrate`) pays a few
microseconds of dispatch per tensor operation and about a hundred operations per step;
on the CPU that overhead is as large as the arithmetic itself for a 100-gene network.
These kernels (``kernels.c``: the model in ``hill.h``, one row's step loop in ``driver.h``)
run each row's whole step loop in C — the CPU analogue of a per-trajectory GPU kernel
(DiffEqGPU's ``EnsembleGPUKernel``) — and reproduce the Python loop step for step (same
initial step, PI control, save window, dense output, steady-state stop, status codes and
counters), which the tests check. Two step methods share the loop: the FSAL explicit pairs
(dopri5, tsit5; with ``method="auto"``'s stiffness detection, so both of its phases run here)
and the Rosenbrock methods (rodas5, rodas4; analytic Jacobian, LU with partial pivoting per step).

They are built with portable flags (no ``-march=native``, no fused multiply-adds), at install
time into the package or at first use into ``$GENENET_CACHE/native`` (default
``~/.cache/genenet``) under a file lock, once per source version, precision, compiler and flags,
and loaded with :mod:`ctypes`; :mod:`genenet.native.build` says how and why. Without a compiler,
or with ``GENENET_NATIVE=0``, everything runs on the pure-torch path, which is the reference (the
first solve that wanted the kernel warns once, :class:`NativeKernelWarning`). :func:`available`
says which, :func:`reason` why not.

Gradients: a differentiable explicit solve (an input requires grad) runs the explicit
kernel with a *tape* — each accepted step's t, h and stage inputs — and its backward pass
replays the tape in reverse in C (:func:`integrate_hill_erk_grad`): the discrete adjoint,
i.e. the same gradient as backpropagation through the torch loop (exact for the computed
solution, step sizes constant), for the Hill parameters and the initial state, with the
tape's memory (S G numbers per accepted step and row) in place of autograd's graph. Freed
tapes go to a pool that keeps the last set's memory for the next solve (repeated gradients
skip the page faults of fresh memory); :func:`release_memory` hands it back.
Second derivatives: a gradient taken with ``create_graph=True`` is itself differentiable
(:class:`_ErkHillAdjoint`), and its backward is the second-order discrete adjoint in C (``hvp.h``:
the tangent of every step along the tape, then the adjoint sweep carried with its tangent), so
Hessian-vector products (``FitProblem.hvp``, ``trust-ncg``) and Jacobian-vector products (the
trajectory's tangent) cost a small multiple of a gradient instead of a double backward through the
torch loop. Rosenbrock solves with gradients take the torch path. The explicit kernel also carries
forward sensitivities (:func:`genenet.sensitivities`, the residual Jacobian of
``gn.fit(method="lm")``): q tangent directions ride along with the state through the same
steps, as the torch loop does with ``n_primal``. The steady-state iterations of
:mod:`genenet.steady` (Newton with its line search, pseudo-transient continuation) also run
here, one row per task (``roots.h``, :func:`roots_hill`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..solvers.memory import available_memory
from . import build

__all__ = ["available", "reason", "NativeKernelWarning", "torch_path", "release_memory", "tape_memory", "hill_vjp",
           "integrate_hill_erk", "integrate_hill_rodas", "integrate_hill_erk_grad", "roots_hill", "adjoint_sweep",
           "integrate_erk", "integrate_rodas", "integrate_bdf", "integrate_hill_bdf", "roots", "spec_width",
           "spec_keys", "second_order"]

_LIBS: dict[torch.dtype, Any] = {}
_FAILED: dict[torch.dtype, str] = {}
_REAL = {torch.float32: "float", torch.float64: "double"}


class NativeKernelWarning(UserWarning):
    """The native kernel was wanted but cannot be used here; the torch loop runs instead."""


_BUILD_LOCK = threading.Lock()
_ENTRY_POINTS = ("genenet_erk_hill", "genenet_rodas_hill", "genenet_bdf_hill", "genenet_erk_hill_adjoint",
                 "genenet_erk_hill_hvp", "genenet_roots_hill", "genenet_hill_adjoint_sweep")


def _open(path: Path) -> Any:
    """Load a built library and declare the return types the wrappers rely on."""
    lib = ctypes.CDLL(str(path))
    for name in _ENTRY_POINTS:
        getattr(lib, name).restype = ctypes.c_int
    lib.genenet_tapes_new.restype = ctypes.c_void_p
    lib.genenet_tapes_oom.restype = ctypes.c_int64
    lib.genenet_source_hash.restype = ctypes.c_char_p
    lib.genenet_isa.restype = ctypes.c_char_p
    return lib


def _built_for_here(lib: Any) -> str | None:
    """Why a library does not fit this source and CPU (None when it does)."""
    built = lib.genenet_source_hash().decode()
    if built != build.source_hash():
        return f"built from other sources ({built or 'unknown'}, these are {build.source_hash()})"
    isa, choice = lib.genenet_isa().decode(), build.arch_choice()
    if choice == "portable":
        if isa not in build.cpu_isa_levels():
            runs = build.cpu_isa_levels()
            return f"built for {isa or 'another target'}, which this CPU does not run (it runs {runs})"
    elif isa != choice:
        return f"built for {isa or 'the default target'}, not the GENENET_NATIVE_ARCH={choice} asked for"
    return None


def _build(dtype: torch.dtype) -> Any:
    """The library for ``dtype``: the one built at install time if it fits, else the cache's (built now
    if missing; rebuilt once if the cached file does not load). See :mod:`genenet.native.build`."""
    real = _REAL[dtype]
    notes = []
    installed = None if os.environ.get("GENENET_EXTRA_CFLAGS") else build.installed_library(real)
    if installed is not None:
        try:
            lib = _open(installed)
            why = _built_for_here(lib)
        except (OSError, AttributeError) as err:
            why = f"does not load ({err})"
        if why is None:
            return lib
        notes.append(f"the installed {installed.name} {why}")
    path = build.cached_library(real)
    try:
        lib = _open(path)
    except (OSError, AttributeError):  # a damaged file in the cache (a full disk, a killed copy): build anew
        lib = _open(build.cached_library(real, rebuild=True))
    why = _built_for_here(lib)
    if why is not None:
        raise RuntimeError(f"the cached kernel {path} {why}" + "".join(f"; {n}" for n in notes))
    return lib


def _lib(dtype: torch.dtype) -> Any | None:
    if dtype in _LIBS:
        return _LIBS[dtype]
    if dtype in _FAILED or dtype not in _REAL:
        return None
    with _BUILD_LOCK:  # threads of one process build once
        if dtype not in _LIBS and dtype not in _FAILED:
            try:
                _LIBS[dtype] = _build(dtype)
            except Exception as err:  # noqa: BLE001 - any failure means: use the torch path, and say why
                _FAILED[dtype] = f"{type(err).__name__}: {err}"
                warnings.warn(
                    f"genenet's native kernel for {dtype} is unavailable here, so solves of the Hill model run on the "
                    f"torch loop (about 10-100x slower on the CPU; results agree to rounding). Why: {_FAILED[dtype]}. "
                    "genenet.native.reason() repeats this; install a C compiler (gcc or clang) for the kernel, or set "
                    "GENENET_NATIVE=0 to use the torch loop without this warning.", NativeKernelWarning, stacklevel=2)
    return _LIBS.get(dtype)


def _require_lib(dtype: torch.dtype) -> Any:
    """The compiled library for ``dtype``, or RuntimeError saying why there is none."""
    lib = _lib(dtype)
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {reason(dtype)}")
    return lib


_STATE = threading.local()


@contextlib.contextmanager
def second_order() -> Iterator[None]:
    """Solves inside this block will be differentiated twice (``create_graph=True``: Hessian-vector
    products): compiled models, whose native adjoint is first order, take the torch loop there; the
    Hill model keeps its native second-order sweep."""
    before = getattr(_STATE, "second", False)
    _STATE.second = True
    try:
        yield
    finally:
        _STATE.second = before


def wants_second_order() -> bool:
    """True inside :func:`second_order`."""
    return getattr(_STATE, "second", False)


@contextlib.contextmanager
def torch_path() -> Iterator[None]:
    """Solves inside this block run on the pure-torch loop: for batched backward passes
    (``is_grads_batched``) and third derivatives, which need a graph of torch operations rather than
    the kernel's adjoint (whose second derivative is native, see the module doc)."""
    before = getattr(_STATE, "off", False)
    _STATE.off = True
    try:
        yield
    finally:
        _STATE.off = before


def available(dtype: torch.dtype = torch.float64) -> bool:
    """True when the native kernel for ``dtype`` is enabled, compiles here and no
    :func:`torch_path` block is active."""
    return (os.environ.get("GENENET_NATIVE", "1") != "0" and not getattr(_STATE, "off", False)
            and _lib(dtype) is not None)


def reason(dtype: torch.dtype = torch.float64) -> str | None:
    """Why the native kernel is not used (``None`` when it is)."""
    if os.environ.get("GENENET_NATIVE", "1") == "0":
        return "disabled by GENENET_NATIVE=0"
    if getattr(_STATE, "off", False):
        return "inside genenet.native.torch_path()"
    if dtype not in _REAL:
        return f"no native kernel for {dtype}"
    _lib(dtype)
    return _FAILED.get(dtype)


def _ptr(x: Tensor | np.ndarray | None) -> ctypes.c_void_p:
    if x is None:
        return ctypes.c_void_p(None)
    if isinstance(x, np.ndarray):
        return ctypes.c_void_p(x.ctypes.data)
    return ctypes.c_void_p(x.data_ptr())


def _rows(x: Tensor | None, B: int, dtype: torch.dtype) -> Tensor | None:
    """(1 or B, n) -> contiguous (B, n) on the CPU in ``dtype``."""
    if x is None:
        return None
    return x.detach().to("cpu", dtype).expand(B, -1).contiguous()


TANGENT_KEYS = ("c0", "c1", "inv_threshold", "hill", "production", "degradation")
_i64, _dbl = ctypes.c_int64, ctypes.c_double


def _problem(lib_dtype: torch.dtype, spec: dict, x0: Tensor, t_save: Tensor, t_start: Tensor | None,
             rtol: Tensor, atol: Tensor) -> tuple[list, dict]:
    """The model/problem arguments every kernel takes, and the arrays that must stay alive."""
    dtype = lib_dtype
    B, W = x0.shape
    G = spec["production"].shape[-1]
    keep = {
        "x0": x0.detach().to("cpu", dtype).contiguous(),
        "t_save": t_save.detach().to("cpu", dtype).contiguous(),
        "t_start": None if t_start is None else t_start.detach().to("cpu", dtype).contiguous(),
        "rtol": rtol.detach().to("cpu", dtype).expand(G).contiguous(),
        "atol": atol.detach().to("cpu", dtype).expand(G).contiguous(),
    }
    model = _model_arrays(spec, B, dtype)
    args = ([_i64(B), _i64(G), _i64(int(spec["K"])), _i64(t_save.numel())]
            + [_ptr(keep[k]) for k in ("t_save", "t_start", "x0")] + [_ptr(v) for v in model.values()]
            + [_ptr(keep["rtol"]), _ptr(keep["atol"])])
    return args, {**keep, **model}


_MODEL_KEYS = TANGENT_KEYS  # the parameter arrays: tangents, gradients and kernel arguments alike


def _model_arrays(spec: dict, B: int, dtype: torch.dtype) -> dict[str, Tensor | None]:
    """The spec's model arrays as the kernels take them, in their argument order: ``slot_src``,
    the parameter arrays (B, ...), ``mult``, ``add`` and ``clamp`` (uint8) or None."""
    clamp = spec.get("clamp")
    return {"slot_src": spec["slot_source"].to("cpu", torch.int32).contiguous(),
            **{k: _rows(spec[k], B, dtype) for k in _MODEL_KEYS},
            "mult": _rows(spec.get("mult"), B, dtype), "add": _rows(spec.get("add"), B, dtype),
            "clamp": None if clamp is None else clamp.detach().to("cpu", torch.uint8).expand(B, -1).contiguous()}


def _loop(B: int, T: int, W: int, dtype: torch.dtype, first_step: float | None, max_steps: int,
          steady_tol: float | None, window: int, controller: Any, stiff_after: int = 0, check_every: int = 8,
          use_rho: bool = False) -> tuple[list, tuple[Tensor, ...]]:
    """The step-loop arguments and the output arrays (y, status, counters, t_last, y_last)."""
    # y: the kernels write every entry (NaN where a row saved nothing), so no prefill of a large array
    outs = (torch.empty((B, T, W), dtype=dtype), torch.empty(B, dtype=torch.int64),
            torch.zeros(4, B, dtype=torch.int64), torch.empty(B, dtype=dtype), torch.empty(B, W, dtype=dtype))
    args = [_dbl(first_step if first_step is not None else -1.0), _i64(max_steps),
            _dbl(steady_tol if steady_tol is not None else -1.0), _i64(window),
            _dbl(controller.safety), _dbl(controller.beta), _dbl(controller.factor_min),
            _dbl(controller.factor_max), _i64(stiff_after), _i64(check_every), _i64(int(use_rho)),
            *map(_ptr, outs), _i64(torch.get_num_threads())]
    return args, outs


def _erk_arrays(tableau: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    S = tableau.stages
    A = np.zeros((S, S))
    for i, row in enumerate(tableau.a):
        A[i, : len(row)] = row
    return (A, np.ascontiguousarray(tableau.e, dtype=np.float64),
            np.ascontiguousarray(tableau.dense_matrix(), dtype=np.float64))


def tangent_layout(spec: dict, W: int, G: int, what: str, allowed: tuple[str, ...]) -> tuple[int, dict]:
    """The number of tangent directions q in a state of width ``W = (1 + q) G`` and the spec's
    tangents (``{}`` for x0's only); ValueError when the width does not fit, KeyError for a tangent
    of an array the kernel does not follow (``allowed``)."""
    tangents = spec.get("tangents")
    Q = W // G - 1
    if W % G or (Q > 0) != (tangents is not None):
        raise ValueError(f"state width {W} does not fit {G} {what} {'with' if tangents is not None else 'without'}"
                         " tangents")
    tangents = tangents or {}
    unknown = set(tangents) - set(allowed)
    if unknown:
        raise KeyError(f"no native tangent for {sorted(unknown)}; allowed: {list(allowed)}")
    return Q, tangents


def integrate_hill_erk(spec: dict, x0: Tensor, t_save: Tensor, *, tableau: Any, rtol: Tensor, atol: Tensor,
                       first_step: float | None, max_steps: int, steady_tol: float | None, window: int,
                       controller: Any, t_start: Tensor | None = None, tape: int | None = None,
                       stiff_after: int | None = None, check_every: int = 8, use_rho: bool = False
                       ) -> tuple[Tensor, ...]:
    """Run the explicit kernel on every row. ``spec`` (from ``ConditionTerm.native_spec``): ``slot_source``
    (K*G,), ``K``, ``c0``/``c1``/``inv_threshold``/``hill`` (B or 1, K*G), ``production``/``degradation``
    (B or 1, G), optional ``mult``/``add`` (B, G) and ``clamp`` (B, G) bool. ``tableau``: an FSAL
    :class:`~genenet.solvers.tableau.ButcherTableau`. ``t_start`` (B,): per-row start times (default
    ``t_save[0]``; save times at or before a later start keep NaN).

    Forward sensitivities: ``spec["tangents"] = {key: (B, q, width)}`` for any of
    :data:`TANGENT_KEYS` (absent keys: constant; ``{}``: tangents of x0 only); ``x0`` is then
    ``[x, ẋ_1, ..., ẋ_q]`` (B, (1 + q) G) and so are the outputs; step control sees only the first
    G columns. ``tape``: a ``genenet_tapes_new`` handle that records the accepted steps (no tangents).
    ``stiff_after`` / ``check_every`` / ``use_rho``: stiffness detection as the torch loop's (a row whose
    steps sit on the stability edge, ``h ρ > 2.5``, ``stiff_after`` times ends with status STIFF at its
    ``t_last``, ``y_last``; ρ from Hairer's estimate and, with ``use_rho``, the Jacobian's spectral
    radius refreshed every ``check_every`` attempts); no tangents.

    Returns ``y`` (B, T, W) (NaN after a failure; W = G or (1 + q) G), ``status`` (B,), counters
    (4, B) (steps, accepted, rejected, RHS evaluations), ``t_last`` (B,), ``y_last`` (B, W)."""
    dtype = x0.dtype
    lib = _require_lib(dtype)
    B, W = x0.shape
    G = spec["production"].shape[-1]
    Q, tangents = tangent_layout(spec, W, G, "genes", TANGENT_KEYS)
    tan = {k: v.detach().to("cpu", dtype).expand(B, Q, -1).contiguous() for k, v in tangents.items()}
    prob, keep = _problem(dtype, spec, x0, t_save, t_start, rtol, atol)
    S = tableau.stages
    A, E, P = _erk_arrays(tableau)
    loop, outs = _loop(B, t_save.numel(), W, dtype, first_step, max_steps, steady_tol, window, controller,
                       stiff_after or 0, check_every, use_rho)
    rc = lib.genenet_erk_hill(*prob, _i64(Q), *(_ptr(tan.get(k)) for k in TANGENT_KEYS), _i64(S), _ptr(A),
                              _ptr(E), _i64(P.shape[1]), _ptr(P), _i64(tableau.error_order), *loop,
                              ctypes.c_void_p(tape))
    if rc != 0:
        raise RuntimeError(f"native kernel rejected the tableau ({S} stages, dense degree {P.shape[1]})")
    return tuple(o.to(x0.device) for o in outs)


def _hill_without_tangents(spec: dict, x0: Tensor, t_save: Tensor, t_start: Tensor | None, rtol: Tensor,
                           atol: Tensor, loop_kw: dict, what: str) -> tuple[Any, list, list, tuple, dict]:
    """What the Hill kernels that carry no tangents (Rosenbrock, BDF) take: the library, the problem's
    arguments, the loop's, its outputs, and the arrays that must stay alive for the call."""
    dtype = x0.dtype
    lib = _require_lib(dtype)
    if "tangents" in spec:
        raise ValueError(f"the native {what} kernel carries no tangents")
    B, W = x0.shape
    prob, keep = _problem(dtype, spec, x0, t_save, t_start, rtol, atol)
    loop, outs = _loop(B, t_save.numel(), W, dtype, **loop_kw)
    return lib, prob, loop, outs, keep


def integrate_hill_rodas(spec: dict, x0: Tensor, t_save: Tensor, *, tableau: Any, rtol: Tensor, atol: Tensor,
                         t_start: Tensor | None = None, **loop_kw: Any) -> tuple[Tensor, ...]:
    """Run the Rosenbrock kernel on every row: as :func:`integrate_hill_erk` (no tangents) with a
    :class:`~genenet.solvers.rosenbrock.RosenbrockTableau`; an autonomous model (``∂f/∂t = 0``).
    ``loop_kw``: ``first_step``, ``max_steps``, ``steady_tol``, ``window``, ``controller``."""
    lib, prob, loop, outs, _keep = _hill_without_tangents(spec, x0, t_save, t_start, rtol, atol, loop_kw,
                                                          "Rosenbrock")
    arrays = [np.ascontiguousarray(v, dtype=np.float64) for v in (tableau.a, tableau.C, tableau.b, tableau.e,
                                                                  tableau.H)]
    S, M = tableau.stages, tableau.H.shape[0]
    rc = lib.genenet_rodas_hill(*prob, _i64(S), _dbl(tableau.gamma), *map(_ptr, arrays[:4]), _i64(M),
                                _ptr(arrays[4]), _i64(tableau.error_order), *loop)
    if rc != 0:
        raise RuntimeError(f"native kernel rejected the tableau ({S} stages, {M} dense rows)")
    return tuple(o.to(x0.device) for o in outs)


def integrate_hill_bdf(spec: dict, x0: Tensor, t_save: Tensor, *, rtol: Tensor, atol: Tensor,
                       t_start: Tensor | None = None, tableau: Any = None, **loop_kw: Any) -> tuple[Tensor, ...]:
    """Run the variable-order BDF kernel (:mod:`genenet.solvers.bdf`) on every row of the Hill model:
    arguments and results as :func:`integrate_hill_rodas` (no tangents; ``controller`` and ``window``
    are not used, the method has its own step and order control; ``tableau`` is ignored)."""
    lib, prob, loop, outs, _keep = _hill_without_tangents(spec, x0, t_save, t_start, rtol, atol, loop_kw, "BDF")
    rc = lib.genenet_bdf_hill(*prob, *loop)
    if rc != 0:
        raise RuntimeError(f"native BDF kernel refused the call (code {rc})")
    return tuple(o.to(x0.device) for o in outs)


def spec_width(spec: dict) -> int:
    """The state width (genes or species) of a native spec: the Hill model's or a compiled model's."""
    return len(spec["model"].genes) if "model" in spec else int(spec["production"].shape[-1])


def spec_keys(spec: dict) -> tuple[str, ...]:
    """The spec's parameter arrays that forward tangents may follow: :data:`TANGENT_KEYS` for the
    Hill model, ``("params", "reaction_scale")`` for a compiled model (:mod:`genenet.native.compiled`)."""
    from . import compiled

    return compiled.SPEC_KEYS if "model" in spec else TANGENT_KEYS


def integrate_erk(spec: dict, x0: Tensor, t_save: Tensor, **kw: Any) -> tuple[Tensor, ...]:
    """The explicit kernel for whichever model the spec is of: :func:`integrate_hill_erk` or
    :func:`genenet.native.compiled.integrate_erk` (same arguments and results)."""
    if "model" in spec:
        from . import compiled

        return compiled.integrate_erk(spec, x0, t_save, **kw)
    return integrate_hill_erk(spec, x0, t_save, **kw)


def integrate_erk_grad(spec: dict, x0: Tensor, t_save: Tensor, **kw: Any) -> tuple[Tensor, ...]:
    """The differentiable explicit kernel for whichever model the spec is of (:func:`integrate_hill_erk_grad`
    or :func:`genenet.native.compiled.integrate_erk_grad`)."""
    if "model" in spec:
        from . import compiled

        return compiled.integrate_erk_grad(spec, x0, t_save, **kw)
    return integrate_hill_erk_grad(spec, x0, t_save, **kw)


def integrate_rodas(spec: dict, x0: Tensor, t_save: Tensor, **kw: Any) -> tuple[Tensor, ...]:
    """The Rosenbrock kernel for whichever model the spec is of (see :func:`integrate_erk`)."""
    if "model" in spec:
        from . import compiled

        return compiled.integrate_rodas(spec, x0, t_save, **kw)
    return integrate_hill_rodas(spec, x0, t_save, **kw)


def integrate_bdf(spec: dict, x0: Tensor, t_save: Tensor, **kw: Any) -> tuple[Tensor, ...]:
    """The BDF kernel for whichever model the spec is of (see :func:`integrate_erk`)."""
    if "model" in spec:
        from . import compiled

        return compiled.integrate_bdf(spec, x0, t_save, **kw)
    return integrate_hill_bdf(spec, x0, t_save, **kw)


def roots(spec: dict, x: Tensor, **kw: Any) -> tuple[Tensor, Tensor, Tensor]:
    """The steady-state iterations for whichever model the spec is of (:func:`roots_hill`'s arguments)."""
    if "model" in spec:
        from . import compiled

        return compiled.roots(spec, x, **kw)
    return roots_hill(spec, x, **kw)


def hill_vjp(spec: dict, x: Tensor, a: Tensor, model: dict | None = None
             ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The Hill right-hand side under the spec's condition effects at ``x`` (B, G) and its vector-Jacobian
    products with ``a`` (B, G): ``f``, ``aᵀ ∂f/∂x`` (B, G) and ``aᵀ ∂f/∂spec[k]`` per row for the
    parameter arrays :data:`_MODEL_KEYS` ((B, K G) or (B, G)), in one C call (no graph). For the
    continuous adjoint's augmented system (:mod:`genenet.fit.adjoint`), which calls it once per RHS
    evaluation: ``model`` (``vjp_arrays(spec, B, dtype)``) skips rebuilding the kernel's arrays."""
    dtype = x.dtype
    lib = _require_lib(dtype)
    B, G = x.shape
    model = model if model is not None else _model_arrays(spec, B, dtype)
    on_cpu = x.device.type == "cpu"
    xc = x.detach().contiguous() if on_cpu else x.detach().to("cpu").contiguous()
    ac = a.detach().to(dtype).contiguous() if on_cpu else a.detach().to("cpu", dtype).contiguous()
    f, xbar = torch.empty(B, G, dtype=dtype), torch.empty(B, G, dtype=dtype)
    bars = {k: torch.empty_like(model[k]) for k in _MODEL_KEYS}
    lib.genenet_hill_vjp(_i64(B), _i64(G), _i64(int(spec["K"])), *(_ptr(v) for v in model.values()), _ptr(xc),
                         _ptr(ac), _ptr(f), _ptr(xbar), *(_ptr(bars[k]) for k in _MODEL_KEYS),
                         _i64(torch.get_num_threads()))
    if on_cpu:
        return f, xbar, bars
    dev = x.device
    return f.to(dev), xbar.to(dev), {k: v.to(dev) for k, v in bars.items()}


def roots_hill(spec: dict, x: Tensor, *, mode: str, tol: float, max_iter: int, give_up: int | None = None,
               active: Tensor | None = None, dt0: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Steady-state iterations of every row in C (``roots.h``), as :func:`genenet.steady.newton`
    (``mode="newton"``) or :func:`genenet.steady.pseudo_transient` (``mode="ptc"``) do on the
    torch path, iteration for iteration, one row per task. ``spec``: the model's native spec under
    the rows' condition effects (``ConditionTerm.native_spec``); ``x`` (B, G) the starts; rows not
    ``active`` (B,) bool are only checked for convergence.

    Returns ``(x, converged (B,) bool, iterations (B,) int64)`` on ``x``'s device."""
    if mode not in ("newton", "ptc"):
        raise ValueError(f"unknown mode {mode!r}; allowed: 'newton', 'ptc'")
    dtype = x.dtype
    lib = _require_lib(dtype)
    B, G = x.shape
    model = _model_arrays(spec, B, dtype)
    xs = x.detach().to("cpu", dtype).clone().contiguous()
    act = None if active is None else active.detach().to("cpu", torch.uint8).contiguous()
    conv, iters = torch.empty(B, dtype=torch.uint8), torch.empty(B, dtype=torch.int64)
    rc = lib.genenet_roots_hill(_i64(B), _i64(G), _i64(int(spec["K"])), *(_ptr(v) for v in model.values()),
                                _ptr(xs), _ptr(act), _i64(0 if mode == "newton" else 1), _dbl(tol),
                                _i64(max_iter), _i64(give_up or 0), _dbl(dt0), _ptr(conv), _ptr(iters),
                                _i64(torch.get_num_threads()))
    if rc != 0:
        raise RuntimeError(f"native steady-state kernel failed (code {rc})")
    dev = x.device
    return xs.to(dev), conv.to(dev, torch.bool), iters.to(dev)


def adjoint_sweep(spec: dict, t_fine: Tensor, xs_fine: Tensor, dL: Tensor, data_at: np.ndarray, *, tableau: Any,
                  rtol: float, atol: float, controller: Any, window: int = 8, max_steps: int = 40_000
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The continuous adjoint's whole backward pass in C, each row's intervals in turn (``kernels.c``
    ``genenet_hill_adjoint_sweep``), as :func:`genenet.fit.adjoint.adjoint_gradient`'s loop does with
    the torch loop: from the last of the F checkpoint times ``t_fine`` (F,) to the first, the
    augmented system ``[x, a, g]`` integrated in ``s = -t`` by the explicit FSAL ``tableau`` with
    step control over all its columns, ``x`` restarted at each checkpoint ``xs_fine`` (B, F, G), the
    data's pull ``dL`` (B, T, G) added to ``a`` where ``data_at`` (F,) int names a data time (-1
    elsewhere). Returns ``a`` (B, G) = dL/dx0, ``g`` (B, P) = dL/dspec in the spec arrays' order
    (:data:`TANGENT_KEYS`, P = 4 K G + 2 G), ``status`` (B,) and the steps taken (B,); a row whose
    integration failed has NaN in ``a`` and ``g`` and its status."""
    dtype = xs_fine.dtype
    lib = _require_lib(dtype)
    B, F, G = xs_fine.shape
    K = int(spec["K"])
    model = _model_arrays(spec, B, dtype)
    keep = [t_fine.detach().to("cpu", dtype).contiguous(), xs_fine.detach().to("cpu", dtype).contiguous(),
            dL.detach().to("cpu", dtype).contiguous(), np.ascontiguousarray(data_at, dtype=np.int64)]
    A, E, P = _erk_arrays(tableau)
    a, g = torch.empty(B, G, dtype=dtype), torch.empty(B, 4 * K * G + 2 * G, dtype=dtype)
    status, steps = torch.empty(B, dtype=torch.int64), torch.empty(B, dtype=torch.int64)
    rc = lib.genenet_hill_adjoint_sweep(
        _i64(B), _i64(G), _i64(K), *(_ptr(v) for v in model.values()), _i64(F), _ptr(keep[0]), _ptr(keep[1]),
        _i64(dL.shape[1]), _ptr(keep[2]), _ptr(keep[3]), _i64(tableau.stages), _ptr(A), _ptr(E), _i64(P.shape[1]),
        _ptr(P), _i64(tableau.error_order), _dbl(rtol), _dbl(atol), _dbl(controller.safety), _dbl(controller.beta),
        _dbl(controller.factor_min), _dbl(controller.factor_max), _i64(window), _i64(max_steps), _ptr(a), _ptr(g),
        _ptr(status), _ptr(steps), _i64(torch.get_num_threads()))
    if rc != 0:
        raise RuntimeError(f"native adjoint sweep rejected the tableau ({tableau.stages} stages)")
    dev = xs_fine.device
    return a.to(dev), g.to(dev), status.to(dev), steps.to(dev)


def vjp_arrays(spec: dict, B: int, dtype: torch.dtype) -> dict:
    """The kernel's arrays of ``spec`` for ``B`` rows, to pass to :func:`hill_vjp` again and again."""
    return _model_arrays(spec, B, dtype)


def release_memory() -> None:
    """Free the step-tape memory the native kernels keep pooled after a gradient (at most one
    differentiable solve's tapes: S G numbers per accepted step and row)."""
    from . import compiled

    for lib in [*_LIBS.values(), *compiled.drivers()]:
        lib.genenet_tape_pool_release()


def tape_memory(reset_peak: bool = False) -> tuple[int, int]:
    """Bytes of step tapes (the native discrete adjoint's memory) in use now and at most since the last
    reset, over the loaded kernels; ``reset_peak=True`` starts a new peak from the current use."""
    from . import compiled

    now = peak = 0
    for lib in [*_LIBS.values(), *compiled.drivers()]:
        a, b = ctypes.c_int64(), ctypes.c_int64()
        lib.genenet_tape_bytes(ctypes.byref(a), ctypes.byref(b), ctypes.c_int(int(reset_peak)))
        now, peak = now + a.value, peak + b.value
    return now, peak


def _taped_solve(lib: Any, B: int, S: int, G: int, unit: str, solve: Any) -> tuple[Any, tuple]:
    """``solve(handle)`` (a forward explicit solve) recording B tapes of S-stage steps of G states, the
    tapes allowed up to 90% of the memory available now (as GraphMemoryGuard for the torch loop);
    returns ``(tapes, outputs)``, or raises MemoryError when rows ran out of it."""
    tapes = _Tapes(lib, B, S, G)
    avail = available_memory(torch.device("cpu"))
    lib.genenet_tape_budget(_i64(-1 if avail is None else int(0.9 * avail)))
    outs = solve(tapes.handle)
    lost = int(lib.genenet_tapes_oom(ctypes.c_void_p(tapes.handle), _i64(B)))
    if lost:
        raise MemoryError(
            f"this solve records a tape of its steps for gradients (an input requires grad; {B} rows of {G} "
            f"{unit}, {S - 1} stage states per step) and {lost} rows ran out of the memory available when it "
            f"started ({(avail or 0) / 2**30:.1f} GiB). When no gradient is needed, run it under torch.no_grad(); "
            "for gradients of long solves use the adjoint method (FitProblem.gradient_adjoint, memory independent "
            "of the number of steps), fewer rows per call, or a shorter span.")
    return tapes, outs


class _Tapes:
    """Owner of the C tapes of one differentiable solve; freed with the autograd graph."""

    def __init__(self, lib: Any, B: int, S: int, G: int) -> None:
        self.lib, self.B = lib, B
        self.handle = lib.genenet_tapes_new(_i64(B), _i64(S), _i64(G))
        if not self.handle:
            raise MemoryError(f"could not allocate the step tapes of {B} rows")

    def __del__(self) -> None:
        if getattr(self, "handle", None):
            self.lib.genenet_tapes_free(ctypes.c_void_p(self.handle), _i64(self.B))
            self.handle = None


def _adjoint(static: dict, spec: dict, tapes: _Tapes, ybar: Tensor, lbar: Tensor, need: dict[str, bool]
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """The discrete adjoint over the tapes (``genenet_erk_hill_adjoint``): x0's cotangent (B, G) and
    the spec arrays' (those in ``need``; zeros for the others), on the CPU."""
    t_save = static["t_save"]
    B, G = static["shape"]
    T = t_save.numel()
    dtype = static["dtype"]
    model = _model_arrays(spec, B, dtype)
    grads = {k: torch.zeros_like(model[k]) for k in _MODEL_KEYS}
    x0b = torch.zeros(B, G, dtype=dtype)
    A, _, P = _erk_arrays(static["tableau"])
    ts = t_save.detach().to("cpu", dtype).contiguous()
    # the slot parameters' cotangents (and hill's log) only where they are wanted
    slot = any(need[k] for k in ("c0", "c1", "inv_threshold", "hill"))
    wants = int(slot) | (int(need["hill"]) << 1)
    rc = _lib(dtype).genenet_erk_hill_adjoint(
        _i64(B), _i64(G), _i64(int(spec["K"])), _i64(T), _ptr(ts), *(_ptr(v) for v in model.values()),
        _i64(A.shape[0]), _ptr(A), _i64(P.shape[1]), _ptr(P), ctypes.c_void_p(tapes.handle), _ptr(ybar),
        _ptr(lbar), _ptr(x0b), *(_ptr(grads[k]) for k in _MODEL_KEYS), _i64(wants), _i64(torch.get_num_threads()))
    if rc != 0:
        raise RuntimeError("native adjoint rejected the tableau")
    return x0b, grads


def _cotangents(static: dict, y_bar: Tensor | None, last_bar: Tensor | None) -> tuple[Tensor, Tensor]:
    """The output cotangents as the kernels take them: (B, T, G) and (B, G) on the CPU, NaN -> 0."""
    B, G = static["shape"]
    T, dtype = static["t_save"].numel(), static["dtype"]
    ybar = (torch.zeros(B, T, G, dtype=dtype) if y_bar is None
            else torch.nan_to_num(y_bar.detach().to("cpu", dtype), nan=0.0).contiguous())
    lbar = (torch.zeros(B, G, dtype=dtype) if last_bar is None
            else torch.nan_to_num(last_bar.detach().to("cpu", dtype), nan=0.0).contiguous())
    return ybar, lbar


class _ErkHill(torch.autograd.Function):
    """The explicit kernel as an autograd function of x0 and the spec arrays (see the module doc).
    Twice differentiable: under ``create_graph`` its backward is :class:`_ErkHillAdjoint`, whose own
    backward is the second-order sweep in C."""

    @staticmethod
    def forward(ctx: Any, x0: Tensor, c0: Tensor, c1: Tensor, it: Tensor, hill: Tensor, prod: Tensor,
                deg: Tensor, static: dict) -> tuple[Tensor, ...]:
        spec = {**static["spec"], "c0": c0, "c1": c1, "inv_threshold": it, "hill": hill, "production": prod,
                "degradation": deg}
        lib = _lib(x0.dtype)
        B, G = x0.shape
        tapes, outs = _taped_solve(lib, B, static["tableau"].stages, G, "genes",
                                   lambda h: integrate_hill_erk(spec, x0, static["t_save"], tape=h, **static["kw"]))
        ctx.tapes, ctx.static, ctx.spec = tapes, static, spec
        ctx.save_for_backward(x0, c0, c1, it, hill, prod, deg)
        y, status, counters, t_last, y_last = outs
        ctx.mark_non_differentiable(status, counters, t_last)
        return y, status, counters, t_last, y_last

    @staticmethod
    def backward(ctx: Any, y_bar: Tensor | None, _s: Any, _c: Any, _t: Any, last_bar: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        static, spec = ctx.static, ctx.spec
        need = dict(zip(_MODEL_KEYS, ctx.needs_input_grad[1:1 + len(_MODEL_KEYS)]))
        dev = static["device"]
        if torch.is_grad_enabled():  # create_graph: a backward that is itself differentiable
            B, G = static["shape"]
            T, dtype = static["t_save"].numel(), static["dtype"]
            yb = y_bar if y_bar is not None else torch.zeros(B, T, G, dtype=dtype, device=dev)
            lb = last_bar if last_bar is not None else torch.zeros(B, G, dtype=dtype, device=dev)
            outs = _ErkHillAdjoint.apply(torch.nan_to_num(yb, nan=0.0), torch.nan_to_num(lb, nan=0.0),
                                         *ctx.saved_tensors, {"static": static, "spec": spec, "tapes": ctx.tapes})
            return (outs[0], *(o if need[k] else None for k, o in zip(_MODEL_KEYS, outs[1:])), None)
        ybar, lbar = _cotangents(static, y_bar, last_bar)
        x0b, grads = _adjoint(static, spec, ctx.tapes, ybar, lbar, need)
        return (x0b.to(dev), *(grads[k].to(dev) if need[k] else None for k in _MODEL_KEYS), None)


class _ErkHillAdjoint(torch.autograd.Function):
    """The discrete adjoint as a function of the output cotangents, x0 and the spec arrays, so that
    a gradient can be differentiated again (Hessian-vector products, Gauss-Newton products): its
    backward along the incoming direction (the cotangents of x0's and the arrays' gradients) is the
    second-order sweep of ``hvp.h`` — the trajectory's tangent for the output cotangents' gradient,
    and the Hessian of ``<ybar, y>`` times the direction for x0's and the arrays'."""

    @staticmethod
    def forward(ctx: Any, y_bar: Tensor, last_bar: Tensor, x0: Tensor, c0: Tensor, c1: Tensor, it: Tensor,
                hill: Tensor, prod: Tensor, deg: Tensor, held: dict) -> tuple[Tensor, ...]:
        static = held["static"]
        ybar, lbar = _cotangents(static, y_bar, last_bar)
        x0b, grads = _adjoint(static, held["spec"], held["tapes"], ybar, lbar, dict.fromkeys(_MODEL_KEYS, True))
        ctx.held, ctx.ybar, ctx.lbar = held, ybar, lbar
        dev = static["device"]
        return (x0b.to(dev), *(grads[k].to(dev) for k in _MODEL_KEYS))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, x0_dir: Tensor | None, *dirs: Tensor | None) -> tuple[Tensor | None, ...]:
        held = ctx.held
        static, spec = held["static"], held["spec"]
        t_save = static["t_save"]
        B, G = static["shape"]
        T, dtype, K = t_save.numel(), static["dtype"], int(spec["K"])
        model = _model_arrays(spec, B, dtype)
        x0d = (torch.zeros(B, G, dtype=dtype) if x0_dir is None
               else x0_dir.detach().to("cpu", dtype).expand(B, G).contiguous())
        d = {k: None if v is None else v.detach().to("cpu", dtype).expand_as(model[k]).contiguous()
             for k, v in zip(_MODEL_KEYS, dirs)}
        ydot, ylast_dot, x0h = torch.empty(B, T, G, dtype=dtype), torch.empty(B, G, dtype=dtype), torch.empty(B, G,
                                                                                                             dtype=dtype)
        hs = {k: torch.empty_like(model[k]) for k in _MODEL_KEYS}
        A, _, P = _erk_arrays(static["tableau"])
        ts = t_save.detach().to("cpu", dtype).contiguous()
        # the second-order sweep only where x0's or an array's gradient is wanted (not for J v alone)
        needs = ctx.needs_input_grad
        wants = int(any(needs[2:9])) | (int(needs[6]) << 1)
        rc = _lib(dtype).genenet_erk_hill_hvp(
            _i64(B), _i64(G), _i64(K), _i64(T), _ptr(ts), *(_ptr(v) for v in model.values()), _i64(A.shape[0]),
            _ptr(A), _i64(P.shape[1]), _ptr(P), ctypes.c_void_p(held["tapes"].handle), _ptr(ctx.ybar),
            _ptr(ctx.lbar), _ptr(x0d), *(_ptr(d[k]) for k in _MODEL_KEYS), _ptr(ydot), _ptr(ylast_dot), _ptr(x0h),
            *(_ptr(hs[k]) for k in _MODEL_KEYS), _i64(wants), _i64(torch.get_num_threads()))
        if rc == -2:
            raise MemoryError(f"out of memory for the step tangents of {B} rows ({G} genes) in a Hessian-vector "
                              "product")
        if rc != 0:
            raise RuntimeError("native second-order adjoint rejected the tableau")
        dev = static["device"]
        if not wants & 1:
            return ydot.to(dev), ylast_dot.to(dev), *([None] * 8)
        return (ydot.to(dev), ylast_dot.to(dev), x0h.to(dev) if needs[2] else None,
                *(hs[k].to(dev) if need else None for k, need in zip(_MODEL_KEYS, needs[3:9])), None)


def integrate_hill_erk_grad(spec: dict, x0: Tensor, t_save: Tensor, *, tableau: Any, **kw: Any
                            ) -> tuple[Tensor, ...]:
    """:func:`integrate_hill_erk` (no tangents) differentiable with respect to ``x0`` and the spec's
    parameter arrays (:data:`_MODEL_KEYS`) by the discrete adjoint in C (see the module doc); the
    condition effects (``mult``, ``add``, ``clamp``) are constants."""
    B = x0.shape[0]
    static = {"spec": {k: spec[k] for k in ("K", "slot_source", "mult", "add", "clamp") if k in spec},
              "tableau": tableau, "t_save": t_save, "kw": {"tableau": tableau, **kw}, "shape": tuple(x0.shape),
              "dtype": x0.dtype, "device": x0.device}
    params = [spec[k].expand(B, -1) for k in _MODEL_KEYS]
    return _ErkHill.apply(x0, *params, static)

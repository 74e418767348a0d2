r"""Native CPU kernels: whole-trajectory adaptive Runge-Kutta for the Hill model, one row per task.

The batched Python loop (:func:`genenet.solvers.integrate.integrate`) pays a few
microseconds of dispatch per tensor operation and about a hundred operations per step;
on the CPU that overhead is as large as the arithmetic itself for a 100-gene network.
This kernel (``erk_hill.c``) runs each row's whole step loop in C — the CPU analogue of
a per-trajectory GPU kernel (DiffEqGPU's ``EnsembleGPUKernel``) — and reproduces the
Python loop step for step (same initial step, PI control, save window, dense output,
steady-state stop, status codes and counters), which the tests check.

It is compiled at first use with the system C compiler (``$CC``, else ``cc``/``gcc``;
OpenMP when available) into ``$GENENET_CACHE/native`` (default ``~/.cache/genenet``),
once per source version, precision and compiler, and loaded with :mod:`ctypes`. Without a
compiler, or with ``GENENET_NATIVE=0``, everything runs on the pure-torch path, which is
the reference. :func:`available` says which, :func:`reason` why not.

The kernel is a forward solver: it is used when no gradient is being recorded
(``torch.no_grad()``, or no input requires grad); differentiable solves take the torch path.
It also carries forward sensitivities (:func:`genenet.sensitivities`, the residual Jacobian
of ``gn.fit(method="lm")``): q tangent directions ride along with the state through the same
steps, as the torch loop does with ``n_primal``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["available", "reason", "integrate_hill_erk"]

_SOURCE = Path(__file__).with_name("erk_hill.c")
_LIBS: dict[torch.dtype, Any] = {}
_FAILED: dict[torch.dtype, str] = {}
_REAL = {torch.float32: "float", torch.float64: "double"}


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand.split()[0]):
            return cand
    return None


def _cpu_id() -> str:
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = info.splitlines()
        return " ".join(next((ln for ln in lines if ln.startswith(key)), "") for key in ("model name", "flags"))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("GENENET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "genenet")
    return Path(root) / "native"


def _build(dtype: torch.dtype) -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc)")
    src = _SOURCE.read_bytes()
    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", f"-DREAL={_REAL[dtype]}"]
    # -march=native: the library is built for this CPU, so the CPU is part of its name
    key = hashlib.sha256(src + " ".join([cc, *flags, sys.platform, _cpu_id()]).encode()).hexdigest()[:16]
    lib_path = _cache_dir() / f"erk_hill_{_REAL[dtype]}_{key}.so"
    if not lib_path.exists():
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for extra in (["-fopenmp"], []):  # OpenMP threads when the compiler has them
            with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
                tmp_lib = Path(tmp) / lib_path.name
                cmd = [*cc.split(), *flags, *extra, str(_SOURCE), "-o", str(tmp_lib), "-lm"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode == 0:
                    os.replace(tmp_lib, lib_path)  # atomic: concurrent builders never see half a file
                    break
                errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
        else:
            raise RuntimeError("compiling the native kernel failed:\n" + "\n".join(errors))
    lib = ctypes.CDLL(str(lib_path))
    fn = lib.genenet_erk_hill
    fn.restype = ctypes.c_int
    return lib


def _lib(dtype: torch.dtype) -> Any | None:
    if dtype in _LIBS:
        return _LIBS[dtype]
    if dtype in _FAILED or dtype not in _REAL:
        return None
    try:
        _LIBS[dtype] = _build(dtype)
    except Exception as err:  # noqa: BLE001 - any failure means: use the torch path, and say why
        _FAILED[dtype] = f"{type(err).__name__}: {err}"
        return None
    return _LIBS[dtype]


def available(dtype: torch.dtype = torch.float64) -> bool:
    """True when the native kernel for ``dtype`` is enabled and compiles here."""
    return os.environ.get("GENENET_NATIVE", "1") != "0" and _lib(dtype) is not None


def reason(dtype: torch.dtype = torch.float64) -> str | None:
    """Why the native kernel is not used (``None`` when it is)."""
    if os.environ.get("GENENET_NATIVE", "1") == "0":
        return "disabled by GENENET_NATIVE=0"
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


def integrate_hill_erk(spec: dict, x0: Tensor, t_save: Tensor, *, tableau: Any, rtol: Tensor, atol: Tensor,
                       first_step: float | None, max_steps: int, steady_tol: float | None, window: int,
                       controller: Any) -> tuple[Tensor, ...]:
    """Run the kernel on every row. ``spec`` (from ``ConditionTerm.native_spec``): ``slot_source``
    (K*G,), ``K``, ``c0``/``c1``/``inv_threshold``/``hill`` (B or 1, K*G), ``production``/``degradation``
    (B or 1, G), optional ``mult``/``add`` (B, G) and ``clamp`` (B, G) bool. ``tableau``: an FSAL
    :class:`~genenet.solvers.tableau.ButcherTableau`.

    Forward sensitivities: ``spec["tangents"] = {key: (B, q, width)}`` for any of
    :data:`TANGENT_KEYS` (absent keys: constant; ``{}``: tangents of x0 only); ``x0`` is then
    ``[x, ẋ_1, ..., ẋ_q]`` (B, (1 + q) G) and so are the outputs; step control sees only the first
    G columns.

    Returns ``y`` (B, T, W) (NaN after a failure; W = G or (1 + q) G), ``status`` (B,), counters
    (4, B) (steps, accepted, rejected, RHS evaluations), ``t_last`` (B,), ``y_last`` (B, W)."""
    dtype = x0.dtype
    lib = _lib(dtype)
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {reason(dtype)}")
    B, W = x0.shape
    G = spec["production"].shape[-1]
    tangents = spec.get("tangents")
    Q = W // G - 1
    if W % G or (Q > 0) != (tangents is not None):
        raise ValueError(f"state width {W} does not fit {G} genes {'with' if tangents is not None else 'without'}"
                         " tangents")
    tangents = tangents or {}
    unknown = set(tangents) - set(TANGENT_KEYS)
    if unknown:
        raise KeyError(f"no native tangent for {sorted(unknown)}; allowed: {list(TANGENT_KEYS)}")
    tan = {k: None if v is None else v.detach().to("cpu", dtype).expand(B, Q, -1).contiguous()
           for k, v in tangents.items()}
    T = t_save.numel()
    K = int(spec["K"])
    x0c = x0.detach().to("cpu", dtype).contiguous()
    ts = t_save.detach().to("cpu", dtype).contiguous()
    slot_src = spec["slot_source"].to("cpu", torch.int32).contiguous()
    per_slot = [_rows(spec[k], B, dtype) for k in ("c0", "c1", "inv_threshold", "hill")]
    per_gene = [_rows(spec[k], B, dtype) for k in ("production", "degradation")]
    mult, add = _rows(spec.get("mult"), B, dtype), _rows(spec.get("add"), B, dtype)
    clamp = spec.get("clamp")
    clamp = None if clamp is None else clamp.detach().to("cpu", torch.uint8).expand(B, -1).contiguous()
    rt = rtol.detach().to("cpu", dtype).expand(G).contiguous()
    at = atol.detach().to("cpu", dtype).expand(G).contiguous()
    S = tableau.stages
    A = np.zeros((S, S))
    for i, row in enumerate(tableau.a):
        A[i, : len(row)] = row
    E = np.ascontiguousarray(tableau.e, dtype=np.float64)
    P = np.ascontiguousarray(tableau.dense_matrix(), dtype=np.float64)
    out = torch.full((B, T, W), float("nan"), dtype=dtype)
    status = torch.empty(B, dtype=torch.int64)
    counters = torch.zeros(4, B, dtype=torch.int64)
    t_last = torch.empty(B, dtype=dtype)
    y_last = torch.empty(B, W, dtype=dtype)
    i64, dbl = ctypes.c_int64, ctypes.c_double
    rc = lib.genenet_erk_hill(
        i64(B), i64(G), i64(K), i64(T), _ptr(ts), _ptr(x0c), _ptr(slot_src), *map(_ptr, per_slot),
        *map(_ptr, per_gene), _ptr(mult), _ptr(add), _ptr(clamp),
        i64(Q), *(_ptr(tan.get(k)) for k in TANGENT_KEYS), _ptr(rt), _ptr(at),
        i64(S), _ptr(A), _ptr(E), i64(P.shape[1]), _ptr(P), i64(tableau.error_order),
        dbl(first_step if first_step is not None else -1.0), i64(max_steps),
        dbl(steady_tol if steady_tol is not None else -1.0), i64(window),
        dbl(controller.safety), dbl(controller.beta), dbl(controller.factor_min), dbl(controller.factor_max),
        _ptr(out), _ptr(status), _ptr(counters), _ptr(t_last), _ptr(y_last), i64(torch.get_num_threads()))
    if rc != 0:
        raise RuntimeError(f"native kernel rejected the tableau ({S} stages, dense degree {P.shape[1]})")
    dev = x0.device
    return out.to(dev), status.to(dev), counters.to(dev), t_last.to(dev), y_last.to(dev)

"""The batched, masked, per-row integration loop shared by every method (explicit RK and Rosenbrock).

Each row has its own time, step size, controller state, save pointer and stop
pointer. A step is attempted for every active row at once; rows advance where
``accept & running`` and every stateful tensor is merged by that row mask
(torchode's pattern). A failed row is frozen with its status while the batch
goes on. The host is consulted only every ``check_every`` steps (to stop, and to
drop finished rows from the working batch so they cost nothing more).

Saving: dense output at the requested times. Only a window of ``window`` save
times after each row's pointer is considered per step, and a step never spans
more than that window, so the work per step is O(B * window * S * G) whatever
the number of save times.

Stops: per-row times the step must land on exactly (the final time, and later
the switching times of pulses); no step straddles one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .controller import PIController
from .memory import GraphMemoryGuard
from .status import Status
from .tableau import ExplicitRK

__all__ = ["Solution", "integrate", "integrate_in_chunks"]


@dataclass(frozen=True)
class Solution:
    """Raw output of :func:`integrate`: ``y`` (B, T, G), per-row ``status`` and counters, and
    where each row stopped (``t_last``, ``y_last``: a row declared stiff resumes from there)."""

    y: Tensor
    status: Tensor
    n_steps: Tensor
    n_accepted: Tensor
    n_rejected: Tensor
    n_rhs: Tensor
    t_last: Tensor | None = None  # (B,) time each row stopped at
    y_last: Tensor | None = None  # (B, G) its state there
    switched: Tensor | None = None  # (B,) rows that method="auto" moved to the implicit method


def tree_index(tree: Any, idx: Tensor) -> Any:
    """Index every tensor of a nested dict/tuple of per-row tensors by rows ``idx``."""
    if isinstance(tree, Tensor):
        return tree[idx]
    if isinstance(tree, dict):
        return {k: tree_index(v, idx) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(tree_index(v, idx) for v in tree)
    return tree


def tree_cast(tree: Any, dtype: torch.dtype) -> Any:
    """Every floating tensor of a nested dict/tuple converted to ``dtype`` (others unchanged)."""
    if isinstance(tree, Tensor):
        return tree.to(dtype) if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: tree_cast(v, dtype) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(tree_cast(v, dtype) for v in tree)
    return tree


def tree_where(mask: Tensor, new: Any, old: Any) -> Any:
    """Row-wise ``where(mask, new, old)`` over a nested dict/tuple of per-row tensors."""
    if isinstance(new, Tensor):
        if new is old:
            return new
        return torch.where(mask.view(-1, *([1] * (new.ndim - 1))), new, old)
    if isinstance(new, dict):
        return {k: tree_where(mask, v, old[k]) if k in old else v for k, v in new.items()}
    if isinstance(new, tuple):
        return tuple(tree_where(mask, a, b) for a, b in zip(new, old))
    return new


# |h λ| past which DOPRI5/Tsit5 steps are limited by stability: the real stability boundary is ~3.3, and
# the step controller settles a little inside it (~2.7 on a stiff Hill network); a mode with |h λ| > 2.5
# decays by e^-2.5 per step, so accuracy no longer asks for such small steps
STIFF_BOUND = 2.5


def spectral_radius(J: Tensor, iterations: int = 12) -> Tensor:
    """Power-iteration estimate of each row's largest |eigenvalue| of J (B, G, G) -> (B,)."""
    G = J.shape[-1]
    v = torch.cos(torch.arange(G, device=J.device, dtype=J.dtype) * 1.7 + 0.3).expand(J.shape[0], G)
    v = v / v.norm(dim=1, keepdim=True)
    norm = torch.zeros(J.shape[0], device=J.device, dtype=J.dtype)
    for _ in range(iterations):
        w = (J @ v[..., None])[..., 0]
        norm = w.norm(dim=1)
        v = w / norm.clamp_min(1e-300)[:, None]
    return torch.nan_to_num(norm, nan=0.0, posinf=0.0)


def _rms_norm(v: Tensor) -> Tensor:
    return v.pow(2).mean(dim=-1).sqrt()


def initial_step(f: Callable, t0: Tensor, y0: Tensor, f0: Tensor, args: dict, order: int,
                 rtol: Tensor, atol: Tensor, span: Tensor, primal: slice = slice(None)) -> Tensor:
    """Hairer's starting step size (Solving ODEs I, II.4), per row (B,), from the ``primal`` columns."""
    scale = atol + rtol * y0[:, primal].abs()
    d0 = _rms_norm(y0[:, primal] / scale)
    d1 = _rms_norm(f0[:, primal] / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = torch.minimum(h0, span)
    f1 = f(t0 + h0, y0 + h0[:, None] * f0, args)
    d2 = _rms_norm((f1 - f0)[:, primal] / scale) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / dmax.clamp_min(1e-300)).pow(1.0 / (order + 1)))
    h = torch.minimum(100 * h0, h1)
    h = torch.where(torch.isfinite(h) & (h > 0), h, torch.full_like(h, 1e-6))
    return torch.minimum(h, span)


def _prepare_stops(t_save: Tensor, stops: Tensor | None, B: int, include_saves: bool) -> Tensor:
    """Per-row sorted, de-duplicated stop times in (t0, t_end], +inf padded, (B, S)."""
    t0, t_end = t_save[0], t_save[-1]
    parts = [t_end.expand(B, 1)]
    if include_saves and t_save.numel() > 2:
        parts.append(t_save[1:-1].expand(B, -1))
    if stops is not None:
        s = stops.to(t_save).reshape(B if stops.ndim == 2 else 1, -1).expand(B, -1)
        parts.append(torch.where((s > t0) & (s < t_end), s, torch.full_like(s, float("inf"))))
    s = torch.sort(torch.cat(parts, dim=1), dim=1).values
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    s = torch.where(dup, torch.full_like(s, float("inf")), s)
    s = torch.sort(s, dim=1).values
    return torch.cat([s, torch.full_like(s[:, :1], float("inf"))], dim=1)


def integrate(
    f: Callable[[Tensor, Tensor, dict], Tensor],
    x0: Tensor,
    t_save: Tensor,
    *,
    method: ExplicitRK,
    args: dict | None = None,
    rtol: Tensor | float = 1e-6,
    atol: Tensor | float = 1e-8,
    dt: float | None = None,
    first_step: float | None = None,
    max_steps: int = 10_000,
    stops: Tensor | None = None,
    segment: Callable[[Tensor, dict], dict] | None = None,
    reset: Callable[[Tensor, Tensor, dict], Tensor] | None = None,
    steady_tol: float | None = None,
    controller: PIController | None = None,
    check_every: int = 8,
    window: int = 8,
    progress: Callable[[float], None] | None = None,
    n_primal: int | None = None,
    jac: Callable[[Tensor, Tensor, dict], Tensor] | None = None,
    tgrad: Callable[[Tensor, Tensor, dict], Tensor | None] | None = None,
    t_start: Tensor | None = None,
    stiff_after: int | None = None,
    native: Callable[[dict], dict | None] | None = None,
) -> Solution:
    """Integrate ``dx/dt = f(t, x, args)`` for a batch of rows, saving at ``t_save``.

    Parameters
    ----------
    f : callable ``(t (B,), x (B, G), args) -> (B, G)``
        ``args`` is a dict of per-row tensors (leading dim B); the loop indexes it
        when it drops finished rows, so ``f`` sees matching rows.
    x0 : (B, G) initial states at ``t_save[0]``.
    t_save : (T,) strictly increasing save times.
    method : an :class:`ExplicitRK`; adaptive if it has an error estimate, else fixed step ``dt``.
    rtol, atol : scalars or (G,) tensors.
    stops : (S,) or (B, S) times every step must land on (padding ``inf`` allowed).
    segment : ``(t (B,), args) -> args``, the arguments valid from row times ``t`` on; called
        at the initial time and when a row lands on an interior stop (a switching time).
    reset : ``(t, x, args) -> x``, a state jump applied at those same moments (clamps).
    steady_tol : stop a row early once ``max|f| <= steady_tol * (1 + max|x|)`` and no
        switching time is ahead; its remaining save times get the steady state.
    n_primal : only the first ``n_primal`` columns of the state steer step control, the
        initial step and steady detection (default: all). The other columns ride along with
        the same steps, e.g. forward sensitivities, whose discrete derivative is then exact.
    jac, tgrad : ``(t, x, args) -> ∂f/∂x`` (B, G, G) and ``∂f/∂t`` (B, G) (or ``None``: autonomous),
        for implicit methods (:mod:`genenet.solvers.rosenbrock`), which overwrite the tensor ``jac``
        returns (return a fresh one, never a cached one); default: forward-mode autodiff of ``f``.
    t_start : (B,) per-row start times in ``[t_save[0], t_save[-1])`` (default ``t_save[0]``); a row
        starting later fills only the save times after its start (``y`` keeps NaN before).
    stiff_after : stiffness detection for DOPRI5/Tsit5: a row whose step sits on the stability
        boundary (``h·ρ > 2.5``) for this many accepted steps, not interrupted by 6 non-stiff ones,
        stops with status ``STIFF`` at ``(t_last, y_last)``. ``ρ`` is the larger of Hairer's
        estimate from the last two stages and, when ``jac`` is given, a power-iteration
        estimate of the Jacobian's spectral radius refreshed every ``check_every`` steps.
    native : ``args -> spec`` (e.g. ``ConditionTerm.native_spec``): when it gives a spec and the solve
        qualifies (CPU, an adaptive FSAL explicit or Rosenbrock method, PI control, no switching
        times; with ``n_primal``, an explicit method and a spec that carries the tangents; when a
        gradient is being recorded, an explicit method, differentiated by the kernel's discrete
        adjoint; with ``stiff_after``, an explicit method, no gradient, no tangents, ``check_every``
        >= 2), every row runs in the native whole-trajectory kernel (:mod:`genenet.native`)
        instead of this loop, with the same steps and results to rounding. (A solve with
        switching times reaches the kernels as a chain of solves without them:
        :mod:`genenet.solvers.segments`, from :func:`genenet.simulate`.)

    Returns
    -------
    Solution with ``y`` (B, T, G) (NaN after the point where a row failed).
    """
    args = dict(args or {})
    controller = controller or PIController()
    B, G = x0.shape
    T = t_save.numel()
    n_primal = G if n_primal is None else int(n_primal)
    if not 0 < n_primal <= G:
        raise ValueError(f"n_primal must be in 1..{G}, got {n_primal}")
    primal = slice(0, n_primal)
    dev, dtype = x0.device, x0.dtype
    status_all = torch.full((B,), int(Status.SUCCESS), device=dev, dtype=torch.long)
    counters_all = torch.zeros(4, B, device=dev, dtype=torch.long)  # steps, accepted, rejected, rhs
    if T == 1:
        return Solution(x0[:, None, :].clone(), status_all, *counters_all, t_last=t_save[:1].expand(B), y_last=x0)

    adaptive = method.adaptive
    multistep = getattr(method, "multistep", False)
    if getattr(method, "implicit", False) and not multistep:
        from .jacobian import autodiff_jacobian, autodiff_time_derivative

        step_fn = partial(method.step, jac=jac or partial(autodiff_jacobian, f),
                          tgrad=tgrad if jac is not None else partial(autodiff_time_derivative, f))
    else:
        step_fn = getattr(method, "step", None)  # None: the multistep BDF, native kernel only
    if steady_tol is not None and not (adaptive and (multistep or method.tableau.fsal)):
        raise ValueError(f"steady_tol needs an adaptive FSAL method (dopri5, tsit5), not {method.name!r}")
    if not adaptive and (dt is None or not dt > 0):
        raise ValueError(f"method={method.name!r} is fixed-step and needs dt > 0, got dt={dt!r}")
    t_end = t_save[-1]
    stop_table = _prepare_stops(t_save, stops, B, include_saves=not adaptive)
    K = max(1, min(window, T - 1))
    karange = torch.arange(K, device=dev)
    eps = torch.finfo(dtype).eps
    tiny = 16 * eps * max(abs(float(t_save[0])), abs(float(t_end)), 1.0)  # step underflow threshold
    on_cuda = dev.type == "cuda"
    switching = segment is not None and stops is not None  # interior switching times exist
    rows = torch.arange(B, device=dev)

    t = t_save[0].expand(B).clone() if t_start is None else t_start.to(dtype).clone()
    y = x0
    if segment is not None:
        args = segment(t, args)
    if reset is not None:
        y = reset(t, y, args)
    if native is not None:
        sol = _try_native(native, args, y, t_save, method, rtol, atol, first_step, max_steps, stops,
                          steady_tol, window, controller, n_primal, t_start,
                          stiff_after=stiff_after, check_every=check_every, use_rho=jac is not None)
        if sol is not None:
            if progress is not None:
                progress(float(t_end))
            return sol
    if multistep:
        raise ValueError(_multistep_refusal(method, native, args, y, t_save, rtol, atol, stops, controller,
                                            n_primal, G, stiff_after))
    out = torch.full((B, T + 1, G), float("nan"), device=dev, dtype=dtype)  # slot T: sink for masked writes
    out[:, 0] = x0
    if t_start is None:
        out[:, 0] = y
    else:  # later starts: the save times at or before a row's start belong to someone else
        out[:, 0] = torch.where((t_start <= t_save[0])[:, None], y, out[:, 0])
    f0 = f(t, y, args)
    counters = torch.zeros(4, B, device=dev, dtype=torch.long)
    counters[3] += 1
    if adaptive:
        if first_step is not None:
            h = torch.full((B,), float(first_step), device=dev, dtype=dtype)
        else:
            with torch.no_grad():  # step sizes are not differentiated (the controller acts on detached errors)
                h = initial_step(f, t, y, f0, args, method.tableau.error_order, rtol, atol, t_end - t,
                                 primal).detach()
            counters[3] += 1
    else:
        h = torch.full((B,), float(dt), device=dev, dtype=dtype)
    status = torch.full((B,), int(Status.RUNNING), device=dev, dtype=torch.long)
    prev_err = torch.ones(B, device=dev, dtype=dtype)
    rejected_before = torch.zeros(B, device=dev, dtype=torch.bool)
    last_nonfinite = torch.zeros(B, device=dev, dtype=torch.bool)
    last_singular = torch.zeros(B, device=dev, dtype=torch.bool)
    save_ptr = torch.ones(B, device=dev, dtype=torch.long)
    stop_ptr = torch.zeros(B, device=dev, dtype=torch.long)
    if t_start is not None:
        save_ptr = torch.searchsorted(t_save, t[:, None].contiguous(), right=True)[:, 0].clamp(min=1)
        stop_ptr = (stop_table <= t[:, None]).sum(dim=1)
    stiff_count = torch.zeros(B, device=dev, dtype=torch.long)
    rho = None
    calm_count = torch.zeros(B, device=dev, dtype=torch.long)
    t_last_all = torch.full((B,), float("nan"), device=dev, dtype=dtype)
    y_last_all = torch.full((B, G), float("nan"), device=dev, dtype=dtype)
    rhs_per_step = method.rhs_per_step

    def retire(keep: Tensor | None) -> None:
        """Write status and counters of rows leaving the working batch."""
        done = torch.ones_like(status, dtype=torch.bool) if keep is None else ~keep
        idx = rows[done]
        status_all[idx] = status[done]
        counters[2] = counters[0] - counters[1]  # rejected = attempted - accepted
        counters_all[:, idx] = counters[:, done]
        t_last_all[idx] = t[done]
        y_last_all[idx] = y[done]

    # a differentiable solve keeps every step's graph: fail with a message before the OOM killer does
    guard = GraphMemoryGuard(dev) if torch.is_grad_enabled() and requires_grad((y, args)) else None
    step = 0
    while True:
        if step % check_every == 0:
            running = status == Status.RUNNING
            n_running = int(running.sum())
            if progress is not None and n_running:
                progress(float(t[running].min()))
            if n_running == 0:
                break
            if guard is not None and step:
                guard.check(step, n_running, float(t[running].min()), float(t_end))
            if n_running < running.numel():  # drop finished rows: they would only cost
                retire(running)
                rows, t, y, f0, h = rows[running], t[running], y[running], f0[running], h[running]
                status, prev_err, counters = status[running], prev_err[running], counters[:, running]
                rejected_before, last_nonfinite = rejected_before[running], last_nonfinite[running]
                last_singular = last_singular[running]
                stiff_count, calm_count = stiff_count[running], calm_count[running]
                rho = None
                save_ptr, stop_ptr, stop_table = save_ptr[running], stop_ptr[running], stop_table[running]
                args = tree_index(args, running)
        step += 1
        running = status == Status.RUNNING

        # --- land on the next stop, and never span more than the save window
        next_stop = stop_table.gather(1, stop_ptr[:, None]).squeeze(1)
        window_end = t_save[(save_ptr + K - 1).clamp(max=T - 1)]
        target = torch.minimum(next_stop, window_end)
        land = h * (1 + 1e-6) >= target - t  # stretch by <= 1e-6 rather than leave a sliver step
        h_try = torch.where(land, target - t, h)
        t1 = torch.where(land, target, t + h_try)

        y1, err, ks, f1, singular = step_fn(f, t, y, f0, h_try, args)
        counters[3] += running * rhs_per_step
        if adaptive:
            # a NaN/inf anywhere in y1 or the stages (f1 included) makes err_norm NaN/inf:
            # the error weights of every method here touch the last stage, and |y1| enters the scale
            scale = atol + rtol * torch.maximum(y[:, primal].detach().abs(), y1[:, primal].detach().abs())
            err_norm = _rms_norm(err[:, primal].detach() / scale)
            finite = torch.isfinite(err_norm)
            err_norm = torch.where(finite, err_norm, torch.full_like(err_norm, float("inf")))
            accept = running & (err_norm <= 1.0)
        else:
            finite = torch.isfinite(y1).all(dim=-1)
            accept = running & finite

        # --- dense output at the save times inside (t, t1] of accepted rows
        sidx = save_ptr[:, None] + karange  # (B, K)
        valid = sidx < T
        sidx_c = sidx.clamp(max=T - 1)
        ts = t_save[sidx_c]
        inside = valid & (ts <= t1[:, None]) & accept[:, None]
        # on CUDA always interpolate (no host sync); on CPU a sync is free and most steps save nothing
        if on_cuda or bool(inside.any()):
            h_div = torch.where(h_try > 0, h_try, torch.ones_like(h_try))  # finished rows: h_try may be 0
            theta = ((ts - t[:, None]) / h_div[:, None]).clamp(0.0, 1.0)
            values = method.interpolate(y, h_try, ks, theta)
            values = torch.where((ts == t1[:, None])[..., None], y1[:, None, :], values)
            dest = torch.where(inside, sidx_c, torch.full_like(sidx_c, T))
            out.index_put_((rows[:, None].expand(-1, K), dest), values)
            save_ptr = save_ptr + inside.sum(dim=1)

        # --- merge accepted rows
        t = torch.where(accept, t1, t)
        y = torch.where(accept[:, None], y1, y)
        if f1 is not None:
            f0 = torch.where(accept[:, None], f1, f0)
        on_stop = accept & land & (t1 == next_stop)
        stop_ptr = stop_ptr + on_stop.long()
        if switching:  # a new regime from the switching time on: effects, jumps, fresh FSAL
            switch = on_stop & (t1 < t_end)
            if on_cuda or bool(switch.any()):
                args = tree_where(switch, segment(t, args), args)
                if reset is not None:
                    y_new = reset(t, y, args)
                    y = torch.where(switch[:, None], y_new, y)
                    # a save exactly at the switching time reports the state after the jump
                    last = (save_ptr - 1).clamp(min=0)
                    resave = switch & (t_save[last] == t)
                    out.index_put_((rows, torch.where(resave, last, torch.full_like(last, T))), y)
                if method.tableau.fsal:
                    f0 = torch.where(switch[:, None], f(t, y, args), f0)
                    counters[3] += switch
        counters[0] += running
        counters[1] += accept
        if stiff_after is not None:
            hl = method.stiffness(h_try, ks)
            if hl is None:
                raise ValueError(f"stiffness detection needs DOPRI5 or Tsit5, not {method.name!r}")
            if jac is not None:  # the Jacobian's spectral radius, refreshed every few steps
                if step % check_every == 1 or rho is None:
                    with torch.no_grad():
                        rho = spectral_radius(jac(t, y.detach(), args))
                hl = torch.maximum(hl, h_try.detach() * rho)
            on_edge = accept & (hl > STIFF_BOUND)
            calm = accept & ~on_edge
            calm_count = torch.where(on_edge, 0, calm_count + calm.long())
            stiff_count = torch.where(on_edge, stiff_count + 1, torch.where(calm_count >= 6, 0, stiff_count))
            status = torch.where(running & (stiff_count >= stiff_after) & (t < t_end), int(Status.STIFF), status)

        if steady_tol is not None:  # f0 is f(t, y) after an accepted FSAL step
            ahead = stop_table.gather(1, stop_ptr[:, None]).squeeze(1) < t_end
            size = 1.0 + y[:, primal].detach().abs().amax(dim=-1)
            steady = accept & ~ahead & (t < t_end) & (f0[:, primal].detach().abs().amax(dim=-1) <= steady_tol * size)
            if on_cuda or bool(steady.any()):
                idx = torch.arange(T, device=dev)
                fill = steady[:, None] & (idx[None, :] >= save_ptr[:, None])
                dest = torch.where(fill, idx[None, :], torch.full_like(fill, T, dtype=torch.long))
                out.index_put_((rows[:, None].expand(-1, T), dest), y[:, None, :].expand(-1, T, -1))
                save_ptr = torch.where(steady, torch.full_like(save_ptr, T), save_ptr)
                status = torch.where(steady, int(Status.SUCCESS), status)
                t = torch.where(steady, t_end.expand_as(t), t)

        # --- next step size and status
        if adaptive:
            h_new, prev_err = controller.propose(h_try, err_norm, prev_err, accept, rejected_before,
                                                 method.tableau.error_order)
            h_new = torch.where(accept & land, torch.maximum(h_new, h), h_new)  # a clipped step is no signal
            rejected_before = torch.where(running, ~accept, rejected_before)
            last_nonfinite = torch.where(running, ~finite, last_nonfinite)
            if singular is not None:
                last_singular = torch.where(running, singular, last_singular)
            h = torch.where(running, h_new, h)
            underflow = running & ~accept & (h < tiny)
            status = torch.where(underflow & last_singular, int(Status.SINGULAR), status)
            status = torch.where(underflow & ~last_singular & last_nonfinite, int(Status.NONFINITE), status)
            status = torch.where(underflow & ~last_singular & ~last_nonfinite, int(Status.STEP_UNDERFLOW), status)
        else:
            status = torch.where(running & ~finite, int(Status.NONFINITE), status)
        finished = accept & (t >= t_end)
        status = torch.where(finished, int(Status.SUCCESS), status)
        status = torch.where((status == Status.RUNNING) & (counters[0] >= max_steps), int(Status.MAX_STEPS),
                             status)

    retire(None)
    return Solution(out[:, :T], status_all, *counters_all, t_last=t_last_all, y_last=y_last_all)


def requires_grad(tree: Any) -> bool:
    """Whether any tensor of a nested dict/tuple/list records a gradient."""
    if isinstance(tree, Tensor):
        return tree.requires_grad
    if isinstance(tree, dict):
        return any(requires_grad(v) for v in tree.values())
    if isinstance(tree, (tuple, list)):
        return any(requires_grad(v) for v in tree)
    return False


def native_may_run(method: Any, y0: Tensor, args: dict, rtol: Any, atol: Any) -> bool:
    """What a solve needs before its spec is asked for, to run in a native kernel: the CPU, a built
    kernel, an adaptive FSAL method or the multistep BDF, and, when a gradient is being recorded, an explicit method
    (the Rosenbrock kernel has no adjoint) and tolerances that are not differentiated."""
    from .. import native as native_mod

    tab = getattr(method, "tableau", None)
    one_step_fsal = tab is not None and tab.fsal
    if y0.device.type != "cpu" or not method.adaptive or not (one_step_fsal or getattr(method, "multistep", False)):
        return False
    if getattr(method, "multistep", False):  # its results carry no gradient (see genenet.solvers.bdf)
        return native_mod.available(y0.dtype)
    if torch.is_grad_enabled() and requires_grad((y0, args, rtol, atol)) and (
            getattr(method, "implicit", False) or requires_grad((rtol, atol))):
        return False
    return native_mod.available(y0.dtype)


def _try_native(native: Callable, args: dict, y0: Tensor, t_save: Tensor, method: Any, rtol: Any, atol: Any,
                first_step: float | None, max_steps: int, stops: Tensor | None, steady_tol: float | None,
                window: int, controller: PIController, n_primal: int, t_start: Tensor | None, *,
                stiff_after: int | None = None, check_every: int = 8, use_rho: bool = False) -> Solution | None:
    """The native kernel's solution when the solve qualifies (see ``integrate``'s ``native``), else None.
    Columns after ``n_primal`` are tangents: the spec must carry theirs (``spec["tangents"]``).
    Stiffness detection (``stiff_after``) runs in the explicit kernel for solves without gradients or
    tangents, from the first save time (the kernel refreshes ρ on the same attempts as the loop)."""
    from .. import native as native_mod

    implicit = getattr(method, "implicit", False)
    if type(controller) is not PIController or not native_may_run(method, y0, args, rtol, atol):
        return None
    if stops is not None and bool(((stops > t_save[0]) & (stops < t_save[-1])).any()):
        return None  # switching times: the regime changes inside the run
    multistep = getattr(method, "multistep", False)
    grad = torch.is_grad_enabled() and requires_grad((y0, args, rtol, atol)) and not multistep
    if stiff_after is not None and (implicit or grad or t_start is not None or check_every < 2
                                    or not getattr(method, "detects_stiffness", False)):
        return None
    spec = native(args)
    if spec is None or "laws" in spec or native_mod.spec_width(spec) != n_primal:
        return None  # laws: the reduced system of the steady-state solvers, not a dynamics
    if ("tangents" in spec) != (n_primal < y0.shape[1]):
        return None
    if implicit and "tangents" in spec:
        return None  # the Rosenbrock kernel carries no tangents
    if grad and ("tangents" in spec or requires_grad([spec.get(k) for k in ("mult", "add")])):
        return None  # the native adjoint differentiates x0 and the model parameters only
    if stiff_after is not None and "tangents" in spec:
        return None  # stiffness detection runs without tangents
    if grad and "model" in spec and native_mod.wants_second_order():
        return None  # the compiled adjoint is first order: a solve differentiated twice takes the torch loop
    if grad:
        kernel = native_mod.integrate_erk_grad
    elif getattr(method, "multistep", False):
        kernel = native_mod.integrate_bdf
    else:
        kernel = native_mod.integrate_rodas if implicit else native_mod.integrate_erk
    extra = {} if stiff_after is None else {"stiff_after": stiff_after, "check_every": check_every,
                                            "use_rho": use_rho}
    y, status, counters, t_last, y_last = kernel(
        spec, y0, t_save, tableau=method.tableau, rtol=torch.as_tensor(rtol, dtype=y0.dtype),
        atol=torch.as_tensor(atol, dtype=y0.dtype), first_step=first_step, max_steps=max_steps,
        steady_tol=steady_tol, window=window, controller=controller, t_start=t_start, **extra)
    return Solution(y, status, *counters, t_last=t_last, y_last=y_last)


def _multistep_refusal(method: Any, native: Callable | None, args: dict, y0: Tensor, t_save: Tensor, rtol: Any,
                       atol: Any, stops: Tensor | None, controller: Any, n_primal: int, G: int,
                       stiff_after: int | None) -> str:
    """Why a solve with a native-only multistep method (``bdf``) could not run in the native kernel."""
    from .. import native as native_mod

    head = (f"method={method.name!r} runs only in genenet's native CPU kernel (no torch-loop version) and this "
            "solve does not qualify: ")
    tail = "; use method='rodas5' (stiff) or 'dopri5' here"
    if y0.device.type != "cpu":
        why = f"the state is on {y0.device}, the kernel runs on the CPU"
    elif not native_mod.available(y0.dtype):
        why = f"no native kernel here ({native_mod.reason(y0.dtype)})"
    elif native is None or native(args) is None:
        why = "the model has no native form (only gn.Hill and compiled symbolic/SBML models do)"
    elif n_primal < G:
        why = "forward sensitivities (tangent columns) are not carried by the BDF kernel"
    elif stiff_after is not None:
        why = "stiffness detection is for the explicit methods"
    elif type(controller) is not PIController:
        why = f"a {type(controller).__name__} step controller (the BDF kernel has its own step and order control)"
    elif stops is not None:
        why = "switching times inside the run (genenet.simulate cuts such a run into pieces)"
    else:
        why = "the native kernel refused this spec"
    return head + why + tail


def integrate_in_chunks(f: Callable, x0: Tensor, t_save: Tensor, *, chunk: int | None, args: dict | None = None,
                        stops: Tensor | None = None, t_start: Tensor | None = None, **kw: Any) -> Solution:
    """:func:`integrate` over groups of at most ``chunk`` rows, joined; ``chunk=None`` or ``B <= chunk``
    is one call. For the implicit methods on the CPU: their per-row (G, G) matrices of a large batch
    spill out of the caches (1000 rows x 100 genes run ~1.8x slower in one batch than in ten)."""
    B = x0.shape[0]
    if chunk is None or B <= chunk:
        return integrate(f, x0, t_save, args=args, stops=stops, t_start=t_start, **kw)
    parts = []
    for lo in range(0, B, chunk):
        idx = torch.arange(lo, min(B, lo + chunk), device=x0.device)
        parts.append(integrate(f, x0[idx], t_save, args=tree_index(dict(args or {}), idx),
                               stops=stops[idx] if stops is not None and stops.ndim == 2 else stops,
                               t_start=None if t_start is None else t_start[idx], **kw))
    return Solution(*(torch.cat([getattr(p, name) for p in parts]) for name in
                      ("y", "status", "n_steps", "n_accepted", "n_rejected", "n_rhs", "t_last", "y_last")))


def implicit_chunk(method: Any, B: int, G: int, device: torch.device) -> int | None:
    """Rows per chunk for an implicit method: about 2^20 Jacobian entries (8 MB in float64) on the
    CPU, all rows at once on a GPU (which wants the largest batch)."""
    if not getattr(method, "implicit", False) or device.type != "cpu":
        return None
    return max(16, (1 << 20) // max(G * G, 1))

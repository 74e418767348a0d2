"""Loss gradients by the adjoint method: memory independent of the number of solver steps.

Backward in time over each interval between data times, with ``s = -t``,

    dx/ds = -f(x, p),     da/ds = aᵀ ∂f/∂x,     dg/ds = aᵀ ∂f/∂p,

from ``x(t_i)`` (the forward solution, stored at the data times and, for stiff systems, at
extra checkpoints between them so that backward integration of fast-decaying modes stays
stable: ``ρ Δt <= 2`` with ρ the largest Jacobian eigenvalue magnitude at the data times),
``a(t_i⁻) = a(t_i⁺) + ∂L/∂x(t_i)`` (the data's pull at each measurement time),
and ``g = 0`` at the final time. At the initial time ``a = ∂L/∂x0`` and ``g = ∂L/∂p``.
The vector-Jacobian products come from autograd on one RHS evaluation; nothing is recorded
across steps. For the Hill model on the CPU with an explicit method the whole backward pass
runs in C (:func:`genenet.native.adjoint_sweep`: each row's intervals in turn, the same steps
as the torch loop, the VJPs as :func:`genenet.native.hill_vjp`'s), with the parameter
quadrature kept in the kernel's spec arrays and chained to θ once at the end, and the forward
passes to the checkpoints run in the native kernel. This is the continuous adjoint: it
converges to the exact gradient as the tolerance tightens (the discrete gradient of backpropagation is exact
for the computed solution; both are checked against finite differences).

With an implicit method (``FitProblem(..., method="rodas5")``) the backward system is stiff
exactly when the forward one is (its Jacobian holds ``-J`` and ``Jᵀ``); the Rosenbrock steps
get the augmented system's exact Jacobian, second derivatives included (``aug_jacobian``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..batch import build_batch
from ..solvers import get_method, integrate
from ..solvers.controller import PIController
from ..solvers.integrate import spectral_radius, tree_index

__all__ = ["adjoint_gradient"]

_SWEEP_IN_C = True  # the Hill model's backward pass in C (native.adjoint_sweep); False: the torch loop


def adjoint_gradient(problem, theta: Tensor, *, rtol: float | None = None, atol: float | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Loss (S,) and its gradient (S, n) by the adjoint method (see module doc). No pulses."""
    prob = problem
    th = theta.detach().clone().requires_grad_(True)
    S = th.shape[0]
    C, G = len(prob.labels), len(prob.genes)
    T = len(prob.times)
    rtol = prob.rtol if rtol is None else rtol
    atol = prob.atol if atol is None else atol
    with torch.enable_grad():
        params, x0, _ = prob.unpack(th)
        x0_rows = x0.permute(1, 0, 2).reshape(C * S, G)
        batch = build_batch(prob.model, prob.conditions, x0_rows.detach(), {k: v.detach() for k, v in params.items()},
                            device=prob.device, dtype=prob.dtype)
        if batch.term.pulsed:
            raise ValueError("the adjoint gradient does not support Pulse perturbations; use gradient()")
        term = batch.term
        B = batch.n_rows
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in term.initial_args["base_p"].items()}
        args0 = dict(term.initial_args)
        args0["base_p"] = leaves
        args = term.segment(torch.full((B,), float(prob.times[0]), dtype=prob.dtype, device=prob.device), args0)
        p_used = args["p"]
        names = list(p_used)
        # the Hill model on the CPU: the augmented system's VJPs in C, its parameter quadrature in the
        # spec arrays' space (chained to θ once at the end) -- no autograd per RHS evaluation
        spec = _native_spec(term, args, prob)

    # forward pass: states at the data times only (no graph)
    t_save = torch.as_tensor(prob.times, dtype=prob.dtype, device=prob.device)
    method = get_method(prob.method)
    with torch.no_grad():
        x_start = term.reset(t_save[:1].expand(B), batch.x0, args)
        fwd = integrate(term.vf, x_start, t_save, method=method, args=args, rtol=rtol, atol=atol,
                        max_steps=20_000, jac=term.jacobian, tgrad=term.time_derivative, native=term.native_spec)
    xs = fwd.y  # (B, T, G)
    # Checkpoints: the state is integrated backward (dx/ds = -f) from the last checkpoint, which is
    # unstable for fast-decaying modes (they grow like e^{ρ Δt} backward). Between data times add
    # checkpoints so that ρ Δt <= 2 for the largest |eigenvalue| ρ seen at the data times; memory stays
    # independent of the solver's step count.
    with torch.no_grad():
        t_rows = t_save[:, None].expand(T, B).reshape(-1)
        rho = float(spectral_radius(term.jacobian(t_rows, xs.transpose(0, 1).reshape(T * B, G),
                                                  tree_index(args, torch.arange(B, device=xs.device).repeat(T)))
                                    ).nan_to_num(0.0).max()) if T > 1 else 0.0
    gaps = torch.diff(t_save)
    n_sub = [max(1, min(int(math.ceil(float(d) * rho / 2.0)), 10_000)) for d in gaps]
    if max(n_sub, default=1) > 1:
        pieces = [t_save[:1]] + [t_save[i] + (t_save[i + 1] - t_save[i]) * torch.arange(1, n + 1, dtype=prob.dtype,
                                                                                        device=prob.device) / n
                                 for i, n in enumerate(n_sub)]
        t_fine = torch.cat(pieces)
        t_fine[np.cumsum(n_sub)] = t_save[1:]  # data times exactly
        with torch.no_grad():
            xs_fine = integrate(term.vf, x_start, t_fine, method=method, args=args, rtol=rtol, atol=atol,
                                max_steps=20_000 + len(t_fine), jac=term.jacobian, tgrad=term.time_derivative,
                                native=term.native_spec).y
    else:
        t_fine, xs_fine = t_save, xs
    data_at = {int(k): i for i, k in enumerate(np.concatenate([[0], np.cumsum(n_sub)]))}  # fine index -> data index

    # the loss as a function of the saved states (and θ for observation parameters / penalties)
    with torch.enable_grad():
        y = xs.detach().view(C, S, T, G).permute(1, 0, 2, 3).clone().requires_grad_(True)
        L = prob.loss_from_residuals(th, prob._residuals_from_states(th, y))
        dL_dy, dL_dth_direct = torch.autograd.grad(L.sum(), [y, th], allow_unused=True)
    dL_dx = dL_dy.permute(1, 0, 2, 3).reshape(B, T, G)

    sizes = [p_used[k].shape[1] for k in names]
    if spec is not None:
        from .. import native

        keys = native.TANGENT_KEYS
        spec_rows = {k: spec[k].detach().expand(B, -1).contiguous() for k in keys}
        for k in ("mult", "add", "clamp"):
            if spec.get(k) is not None:
                spec_rows[k] = spec[k].detach().expand(B, -1).contiguous()
        static_spec = {"K": spec["K"], "slot_source": spec["slot_source"]}
        args = dict(args, _spec_rows=spec_rows)  # indexed by row with the rest when rows finish
        sizes = [spec_rows[k].shape[1] for k in keys]

        cache: list = []  # (the rows' c0 tensor, spec, kernel arrays): rebuilt when rows leave the batch

        def aug_native(s: Tensor, z: Tensor, a_args: dict) -> Tensor:
            rows = a_args["_spec_rows"]
            if not cache or cache[0] is not rows["c0"]:  # holding the tensor: its identity stays unique
                full = {**static_spec, **rows}
                cache[:] = [rows["c0"], full, native.vjp_arrays(full, z.shape[0], z.dtype)]
            _, full, model = cache
            f, xbar, bars = native.hill_vjp(full, z[:, :G], z[:, G: 2 * G], model=model)
            return torch.cat([-f, xbar, *(bars[k] for k in keys)], dim=1)

    def aug(s: Tensor, z: Tensor, a_args: dict) -> Tensor:
        x, a = z[:, :G], z[:, G: 2 * G]
        with torch.enable_grad():  # a local graph of one RHS evaluation, for the two vjps
            xg = x.detach().requires_grad_(True)
            ps = [a_args["p"][k].detach().requires_grad_(True) for k in names]
            local = dict(a_args)
            local["p"] = dict(zip(names, ps))
            f = term.vf(-s, xg, local)
            grads = torch.autograd.grad(f, [xg, *ps], grad_outputs=a, allow_unused=True)
        ax = grads[0]
        ap = [torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], ps)]
        return torch.cat([-f.detach(), ax, *ap], dim=1)

    implicit = getattr(method, "implicit", False)
    if implicit and not getattr(prob.model, "autonomous", False):
        raise ValueError("the adjoint with an implicit method needs an autonomous model (model.autonomous); "
                         "use gradient() (backpropagation through the stiff solver) instead")

    def aug_jacobian(s: Tensor, z: Tensor, a_args: dict) -> Tensor:
        """Exact Jacobian of ``aug`` for the implicit methods, (B, D, D) with D = 2G + P:
        ``[[-J, 0, 0], [∂(Jᵀa)/∂x, Jᵀ, 0], [∂(f_pᵀa)/∂x, f_pᵀ, 0]]`` from 2G + P backward passes
        (rows are independent, so one pass serves every row)."""
        x, a = z[:, :G], z[:, G: 2 * G]
        Bz, P = z.shape[0], sum(sizes)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            ps = [a_args["p"][k].detach().requires_grad_(True) for k in names]
            local = dict(a_args)
            local["p"] = dict(zip(names, ps))
            f = term.vf(-s, xg, local)
            Jrows, Prows = [], []
            for i in range(G):  # row i of ∂f/∂x and ∂f/∂p, kept differentiable in x
                gi = torch.autograd.grad(f[:, i].sum(), [xg, *ps], retain_graph=True, create_graph=True,
                                         allow_unused=True)
                Jrows.append(gi[0] if gi[0] is not None else torch.zeros_like(xg))
                Prows.append(torch.cat([torch.zeros_like(p) if q is None else q for q, p in zip(gi[1:], ps)], 1))
            J, Fp = torch.stack(Jrows, 1), torch.stack(Prows, 1)  # (B, G, G), (B, G, P)
            lin = torch.cat([torch.einsum("bi,bij->bj", a, J), torch.einsum("bi,bip->bp", a, Fp)], 1)
            second = []
            for j in range(G + P):  # ∂(Jᵀa, f_pᵀa)_j / ∂x
                if not lin.requires_grad:
                    second.append(torch.zeros_like(xg))
                    continue
                (gj,) = torch.autograd.grad(lin[:, j].sum(), xg, retain_graph=True, allow_unused=True)
                second.append(torch.zeros_like(xg) if gj is None else gj)
        D = 2 * G + P
        out = z.new_zeros(Bz, D, D)
        out[:, :G, :G] = -J.detach()
        out[:, G:, :G] = torch.stack(second, 1).detach()
        out[:, G: 2 * G, G: 2 * G] = J.detach().transpose(1, 2)
        out[:, 2 * G:, G: 2 * G] = Fp.detach().transpose(1, 2)
        return out

    tab = getattr(method, "tableau", None)
    if spec is not None and _SWEEP_IN_C and getattr(method, "adaptive", False) and tab is not None and tab.fsal:
        # the whole backward pass in C: each row's intervals in turn, the same steps as the loop below
        from .. import native

        at = np.full(len(t_fine), -1, dtype=np.int64)
        at[list(data_at)] = list(data_at.values())
        a, g, _, _ = native.adjoint_sweep(spec_rows | static_spec, t_fine, xs_fine, dL_dx, at, tableau=tab,
                                          rtol=float(rtol), atol=float(atol), controller=PIController())
    else:
        a = torch.zeros(B, G, dtype=prob.dtype, device=prob.device)
        g = torch.zeros(B, sum(sizes), dtype=prob.dtype, device=prob.device)
        with torch.no_grad():
            for i in range(len(t_fine) - 1, 0, -1):
                if i in data_at:
                    a = a + dL_dx[:, data_at[i]]
                z0 = torch.cat([xs_fine[:, i], a, g], dim=1)
                span = torch.stack([-t_fine[i], -t_fine[i - 1]])
                sol = integrate(aug if spec is None else aug_native, z0, span, method=method, args=args, rtol=rtol,
                                atol=atol, max_steps=40_000, jac=aug_jacobian if implicit else None)
                z = sol.y[:, -1]
                a, g = z[:, G: 2 * G], z[:, 2 * G:]
            a = a + dL_dx[:, 0]
    failed = ~(torch.isfinite(a).all(dim=1) & torch.isfinite(g).all(dim=1))
    if bool(failed.any()):
        rows = [batch.labels[int(r)] for r in torch.nonzero(failed).squeeze(1)[:5]]
        raise RuntimeError(f"the adjoint's backward integration failed for {int(failed.sum())} of {B} rows "
                           f"(first: {rows}); try a looser rtol/atol, method='rodas5' for a stiff system, "
                           "or gradient() (backpropagation)")

    # chain to θ: through the prepared parameters (p_used), the clamps of x0, and unpack
    g_parts = torch.split(g, sizes, dim=1)
    with torch.enable_grad():
        outs = ([p_used[k] for k in names] if spec is None
                else [spec[k].expand(B, -1) for k in native.TANGENT_KEYS])
        leaf_grads = torch.autograd.grad(outs, list(leaves.values()), grad_outputs=list(g_parts), allow_unused=True)
        # knocked-out / clamped genes start at fixed values: no dependence on x0 there
        outputs, grads_out = [x0_rows], [a * _x0_free_mask(batch, prob)]
        for name, lg in zip(leaves, leaf_grads):
            if name in params and lg is not None:
                outputs.append(params[name].repeat(C, 1))  # rows are condition-major: c * S + s
                grads_out.append(lg)
        pairs = [(o, go) for o, go in zip(outputs, grads_out) if o.requires_grad]
        grad_th = (torch.autograd.grad([o for o, _ in pairs], th, grad_outputs=[go for _, go in pairs],
                                       allow_unused=True)[0] if pairs else None)
    total = grad_th if grad_th is not None else torch.zeros_like(th)
    if dL_dth_direct is not None:
        total = total + dL_dth_direct
    return L.detach(), total.detach()


def _native_spec(term, args: dict, prob) -> dict | None:
    """The native spec of ``args`` (its arrays keep their graph to the parameters) when the augmented
    system can run its VJPs in C: the Hill model, an explicit method, the CPU; else None."""
    from .. import native

    if prob.device.type != "cpu" or getattr(get_method(prob.method), "implicit", False):
        return None
    if not native.available(prob.dtype):
        return None
    with torch.enable_grad():
        spec = term.native_spec(args)
    if spec is None or any(not torch.is_tensor(spec.get(k)) for k in native.TANGENT_KEYS):
        return None
    return spec


def _x0_free_mask(batch, prob) -> Tensor:
    """1 where the row's initial state comes from x0, 0 where a knockout or clamp fixes it."""
    from ..perturb import compile_conditions

    compiled = compile_conditions(prob.conditions, prob.model)
    S = batch.n_rows // len(prob.labels)
    fixed = torch.as_tensor(compiled.x0_mask, device=prob.device).repeat_interleave(S, dim=0)
    return (~fixed).to(prob.dtype)

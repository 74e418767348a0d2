"""Reference problems with answers computed independently of genenet.

The Hill right-hand side here is written from the documented equations with
plain numpy loops; solutions come from scipy's Radau at tight tolerance.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

import genenet as gn


def random_network(n_genes: int, regulators: int, seed: int) -> gn.Network:
    return gn.Network.random(n_genes, regulators, seed=seed)


def hill_values(model: gn.Hill, s: int = 0) -> dict[str, np.ndarray]:
    """Constrained parameters of set ``s`` as numpy arrays."""
    return {k: v.detach().cpu().numpy()[min(s, v.shape[0] - 1)] for k, v in model.params.items()}


def hill_rhs_numpy(net: gn.Network, p: dict[str, np.ndarray]):
    """dx_i/dt = g_i prod_{j->i} H(x_j) - k_i x_i, straight from the equations."""
    idx = {g: i for i, g in enumerate(net.genes)}

    def f(t, x):
        prod = np.ones(net.n_genes)
        for e, edge in enumerate(net.edges):
            xj = max(x[idx[edge.source]], 0.0)
            lam, T, n = p["fold"][e], p["threshold"][e], p["hill"][e]
            s = 1.0 / (1.0 + (xj / T) ** n)
            if edge.sign > 0:
                H = 1.0 + (1.0 / lam - 1.0) * s
            else:
                H = 1.0 / lam + (1.0 - 1.0 / lam) * s
            prod[idx[edge.target]] *= H
        return p["production"] * prod - p["degradation"] * x

    return f


def radau(f, t: np.ndarray, x0: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """scipy Radau at rtol = atol = tol, (T, G)."""
    sol = solve_ivp(f, (t[0], t[-1]), x0, method="Radau", rtol=tol, atol=tol, t_eval=t, dense_output=False)
    assert sol.success, sol.message
    return sol.y.T


def repressilator(fold: float = 100.0, hill: float = 3.0, production: float = 10.0) -> gn.Hill:
    net = gn.load_network("repressilator")
    return gn.Hill(net, production=production, degradation=1.0, threshold=1.0, hill=hill, fold=fold)


def period_from_peaks(t: np.ndarray, x: np.ndarray, skip: float) -> float:
    """Mean period from successive maxima (parabolic refinement) after time ``skip``."""
    peaks = []
    for i in range(1, len(t) - 1):
        if t[i] > skip and x[i] > x[i - 1] and x[i] >= x[i + 1]:
            y0, y1, y2 = x[i - 1], x[i], x[i + 1]
            dt = t[i] - t[i - 1]
            denom = y0 - 2 * y1 + y2
            peaks.append(t[i] + (0.5 * (y0 - y2) / denom * dt if denom != 0 else 0.0))
    peaks = np.asarray(peaks)
    assert len(peaks) >= 3, "not oscillating"
    return float(np.mean(np.diff(peaks)))


def sub_condition_case():
    """Knockouts of the 100-gene network that only Newton from a sub-condition's steady state can solve,
    by construction rather than by the rounding of a borderline row: the wild type starts at its steady
    state (Newton converges at once), the knockouts at x = 1, where Newton does not converge in 100
    iterations, and with ``max_iter=10`` and ``t_max=1e-3`` neither Newton from x0 (10 iterations),
    integration (to t = 0.001) nor pseudo-transient continuation (30 iterations; these rows need
    hundreds) can get there, while Newton from the wild type's state with the knockouts set converges
    in 2-3 iterations. Returns (model, conditions, x0, keyword arguments)."""
    net = random_network(100, 3, seed=0)
    model = gn.Hill.random(net, n=1, seed=0)
    ko = gn.Knockout
    conds = [gn.Condition(), ko("G2"), ko("G20"), ko("G21"), ko("G42"), gn.Condition([ko("G2"), ko("G21")]),
             gn.Condition([ko("G20"), ko("G42")])]
    x0 = np.ones((len(conds), net.n_genes))
    x0[0] = gn.steady_state(model).x[0].numpy()
    return model, conds, x0, {"max_iter": 10, "t_max": 1e-3}


def native_runs(dtype=None) -> bool:
    """Whether solves here run in the native kernel (where results of the same rows in other batches
    are bitwise equal, so tests may compare step counts and which fallback solved a row)."""
    import torch

    from genenet import native

    return native.available(dtype or torch.float64)


def assert_same_rows(a, b, rtol: float = 1e-10) -> None:
    """Results of the same rows computed in different batches (chunks, row subsets, Dask workers).

    Bitwise where the native kernel runs: each row's arithmetic there is fixed by the source and
    rows never mix. On the torch loop (``GENENET_NATIVE=0``, no compiler) to rounding only: torch's
    vectorized elementwise kernels (``pow``, ``sigmoid``...) round an element by whether it falls in
    the SIMD body or the scalar tail, which moves with the batch's size."""
    import torch

    a, b = (torch.as_tensor(np.array(v)) if isinstance(v, np.ndarray) else torch.as_tensor(v).detach() for v in (a, b))
    if native_runs(a.dtype if a.is_floating_point() else torch.float64):
        assert torch.equal(a, b)
    else:
        scale = float(b.abs().nan_to_num().max()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale, equal_nan=True)


def central_difference_gradient(loss, theta, eps: float = 1e-6):
    """d loss / d theta (1, n) by central differences, one pair of loss evaluations per entry."""
    import torch

    return torch.stack([(loss(theta + eps * e) - loss(theta - eps * e)) / (2 * eps)
                        for e in torch.eye(theta.shape[-1], dtype=theta.dtype)], dim=-1)

"""Stiff solvers: Rosenbrock (Rodas4, Rodas5P) against scipy's Radau, convergence order,
gradients vs finite differences, singular-matrix reporting, and method="auto"."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import genenet as gn
from genenet.solvers import RODAS4, RODAS5, Status


def _robertson():
    def prod(t, x, p):
        y1, y2, y3 = x.unbind(-1)
        return torch.stack([1e4 * y2 * y3, 0.04 * y1, 3e7 * y2 * y2], -1)

    def deg(t, x, p):
        y1, y2, y3 = x.unbind(-1)
        return torch.stack([0.04 * y1, 1e4 * y2 * y3 + 3e7 * y2 * y2, 0 * y3], -1)

    def f(t, y):
        return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]

    return gn.Model.from_functions(["y1", "y2", "y3"], prod, deg, {}), f, [1.0, 0.0, 0.0]


def _hires_rhs(t, y, xp=np):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[..., i] for i in range(8))
    r = 280.0 * y6 * y8
    return [-1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007, 1.71 * y1 - 8.75 * y2, -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4, -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -r + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7, r - 1.81 * y7, -r + 1.81 * y7]


def _hires():
    model = gn.Model.from_functions([f"y{i}" for i in range(1, 9)], lambda t, x, p: torch.stack(_hires_rhs(t, x), -1),
                                    lambda t, x, p: 0.0 * x, {})
    x0 = [1.0, 0, 0, 0, 0, 0, 0, 0.0057]
    return model, (lambda t, y: _hires_rhs(t, np.asarray(y))), x0


@pytest.mark.parametrize("problem,t_end,method", [(_robertson, 40.0, "rodas5"), (_robertson, 40.0, "rodas4"),
                                                  pytest.param(_hires, 321.8122, "rodas5", marks=pytest.mark.heavy),
                                                  (_robertson, 40.0, "auto")])
def test_stiff_test_set_against_radau(problem, t_end, method):
    model, f, x0 = problem()
    ref = solve_ivp(f, (0, t_end), x0, method="Radau", rtol=1e-12, atol=1e-16).y[:, -1]
    traj = gn.simulate(model, [0.0, t_end], x0=x0, method=method, rtol=1e-8, atol=1e-14)
    y = traj.y[0, -1].numpy()
    big = np.abs(ref) > 1e-12
    assert np.max(np.abs(y[big] / ref[big] - 1)) < 1e-6
    assert traj.method == method


def _stiff_hill(G=50, seed=0):
    rng = np.random.default_rng(seed)
    model = gn.Hill.random_stiff(gn.Network.random(G, 3, seed=seed), seed=seed, rng=rng)
    levels = (model.params["production"] / model.params["degradation"]).detach()[0].numpy()
    return model, levels * rng.uniform(0.2, 1.5, G)  # starts around the levels g/k


def _radau_reference(model, t, x0):
    def f(_, x):
        with torch.no_grad():
            return model.rhs(torch.zeros(1, dtype=torch.float64), torch.as_tensor(x)[None],
                             model.row_params(None, 1, device=torch.device("cpu"), dtype=torch.float64))[0].numpy()

    def jac(_, x):
        from genenet.perturb import ConditionTerm  # noqa: F401  (the model's analytic Jacobian)
        p = model.row_params(None, 1, device=torch.device("cpu"), dtype=torch.float64)
        xt = torch.as_tensor(x)[None]
        with torch.no_grad():
            return (model.production_jacobian(None, xt, p) - model.degradation_jacobian(None, xt, p))[0].numpy()

    return solve_ivp(f, (t[0], t[-1]), x0, method="Radau", t_eval=t, rtol=1e-11, atol=1e-12, jac=jac).y.T


@pytest.mark.heavy
def test_stiff_hill_network_rodas_and_auto_vs_radau_and_dopri5():
    model, x0 = _stiff_hill()
    t = np.linspace(0, 50, 11)
    ref = _radau_reference(model, t, x0)
    scale = np.abs(ref).max()
    rhs = {}
    for method in ("rodas5", "auto"):
        traj = gn.simulate(model, t, x0=x0, method=method, rtol=1e-8, atol=1e-10)
        assert np.abs(traj.y[0].detach().numpy() - ref).max() / scale < 1e-6, method
        rhs[method] = int(traj.stats["n_rhs"][0])
        if method == "auto":
            assert traj.stats["switched"][0]
    with torch.no_grad():
        # its steps are limited by stability (h <= ~3/1000), not by the tolerance
        explicit = gn.simulate(model, t, x0=x0, method="dopri5", rtol=1e-6, atol=1e-8, max_steps=200_000)
    rhs["dopri5"] = int(explicit.stats["n_rhs"][0])
    assert rhs["dopri5"] > 10 * rhs["rodas5"], rhs  # measured ~13x
    assert rhs["dopri5"] > 10 * rhs["auto"], rhs


def _local_error(method, h):
    """One step of ``y' = -y^2 + cos(t) y`` (y(0.3) = 1.2) against a tight DOP853 reference."""
    f = lambda t, y, a: -y * y + torch.cos(t)[:, None] * y  # noqa: E731
    jac = lambda t, y, a: (-2 * y + torch.cos(t)[:, None])[:, :, None]  # noqa: E731
    tgrad = lambda t, y, a: -torch.sin(t)[:, None] * y  # noqa: E731
    t0 = torch.tensor([0.3], dtype=torch.float64)
    y0 = torch.tensor([[1.2]], dtype=torch.float64)
    hh = torch.tensor([h], dtype=torch.float64)
    y1, err, dense, f1, singular = method.step(f, t0, y0, f(t0, y0, {}), hh, {}, jac=jac, tgrad=tgrad)
    exact = solve_ivp(lambda t, y: -y * y + np.cos(t) * y, (0.3, 0.3 + h), [1.2], method="DOP853", rtol=3e-14,
                      atol=1e-16, dense_output=True)
    mid = method.interpolate(y0, hh, dense, torch.tensor([[0.5]], dtype=torch.float64))
    return abs(float(y1) - exact.y[0, -1]), abs(float(mid[0, 0, 0]) - exact.sol(0.3 + h / 2)[0])


@pytest.mark.parametrize("method,order,dense_order,hs", [(RODAS4, 4, 3, [0.2, 0.1, 0.05]),
                                                         (RODAS5, 5, 4, [0.1, 0.05, 0.025])])
def test_convergence_order(method, order, dense_order, hs):
    errs = [_local_error(method, h) for h in hs]
    local = np.log2([errs[i][0] / errs[i + 1][0] for i in range(len(hs) - 1)])
    dense = np.log2([errs[i][1] / errs[i + 1][1] for i in range(len(hs) - 1)])
    # local error O(h^(p+1)), dense output O(h^(q+1)); the last halving is closest to the asymptote
    assert local.min() > order and local[-1] > order + 1 - 0.5, local
    assert dense.min() > dense_order and dense[-1] > dense_order + 1 - 0.5, dense


def test_backprop_through_rodas_matches_finite_differences():
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-"), ("A", "C", "+")])
    model = gn.Hill(net, production=[40.0, 300.0, 2.0], degradation=[10.0, 100.0, 0.5], threshold=2.0, hill=2.0,
                    fold=5.0)
    t = np.linspace(0, 3, 7)

    def loss(g):
        traj = gn.simulate(model, t, x0=[1.0, 0.5, 0.1], params={"production": g}, method="rodas5", rtol=1e-10,
                           atol=1e-12)
        return (traj.y ** 2).sum()

    g = torch.tensor([40.0, 300.0, 2.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(g), g)
    eps = 1e-4
    fd = []
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = eps * float(g[i].detach())
        with torch.no_grad():
            fd.append(float((loss(g + e) - loss(g - e)) / (2 * e[i])))
    np.testing.assert_allclose(grad.numpy(), fd, rtol=1e-5)


def test_singular_matrix_is_reported_per_row():
    # f(x) = x^2 / h-independent blow-up with a Jacobian that is NaN for one row: that row fails, the other runs
    model = gn.Model.from_functions(["x"], lambda t, x, p: p["a"] * torch.sqrt(x), lambda t, x, p: x, {"a": 1.0})
    traj = gn.simulate(model, [0.0, 1.0], x0=np.array([[1.0], [0.0]]), method="rodas5", throw=False)
    assert traj.status[0] == Status.SUCCESS
    assert traj.status[1] == Status.SINGULAR
    with pytest.raises(gn.SolverError, match="SINGULAR"):
        gn.simulate(model, [0.0, 1.0], x0=np.array([[1.0], [0.0]]), method="rodas5")


# degradation 200 over t in [0, 4]: the adjoint needs ~400 checkpoint intervals (about 2 minutes on
# 2 cores), so that case is slow; degradation 20 over [0, 2] is stiff enough for rodas5 and quick
@pytest.mark.slow  # 31 s with the native kernel (the stiff gradients run on the torch loop): over CI's budget
@pytest.mark.parametrize("k_fast, t_end", [(20.0, 2.0), (200.0, 4.0)])
def test_adjoint_and_backprop_gradients_with_the_stiff_solver(k_fast, t_end):
    from genenet.fit import FitProblem

    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-"), ("A", "C", "+")])
    true = gn.Hill(net, production=[2 * k_fast, 3.0, 2.0], degradation=[k_fast, 1.0, 0.5],
                   threshold=[1.5, 2.0, 1.0], hill=2.0, fold=5.0)
    traj = gn.simulate(true, np.linspace(0, t_end, 9), x0=[0.5, 2.0, 1.0], method="rodas5", rtol=1e-10,
                       atol=1e-12)
    data = gn.ExpressionData.from_trajectory(traj, noise=0.05, seed=0)
    start = gn.Hill(net, production=[1.5 * k_fast, 3.5, 2.5], degradation=[k_fast, 1.0, 0.5],
                    threshold=[1.5, 2.0, 1.0], hill=2.0, fold=5.0)
    prob = FitProblem(start, data, free=["production", "threshold"], method="rodas5", rtol=1e-10, atol=1e-12)
    theta = prob.theta0[None]
    L_adj, g_adj = prob.gradient_adjoint(theta)
    L, g = prob.gradient(theta)
    eps = 1e-6
    fd = []
    for j in range(theta.shape[1]):
        e = torch.zeros_like(theta)
        e[0, j] = eps
        with torch.no_grad():
            fd.append(float((prob.loss(theta + e) - prob.loss(theta - e))[0] / (2 * eps)))
    torch.testing.assert_close(L_adj, L, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(g[0].numpy(), fd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_adj[0].numpy(), fd, rtol=1e-4, atol=1e-6)


def test_row_chunks_give_the_same_solution():
    from genenet.solvers.integrate import integrate_in_chunks

    model, x0 = _stiff_hill(G=8, seed=1)
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    batch_x0 = torch.as_tensor(x0)[None] * torch.linspace(0.5, 1.5, 5, dtype=torch.float64)[:, None]
    from genenet.batch import build_batch

    batch = build_batch(model, None, batch_x0, None, device=torch.device("cpu"), dtype=torch.float64)
    term = batch.term
    kw = dict(method=RODAS5, args=term.initial_args, rtol=1e-8, atol=1e-10, segment=term.segment,
              reset=term.reset, jac=term.jacobian, tgrad=term.time_derivative)
    whole = integrate_in_chunks(term.vf, batch.x0, t, chunk=None, **kw)
    parts = integrate_in_chunks(term.vf, batch.x0, t, chunk=2, **kw)
    torch.testing.assert_close(parts.y, whole.y, rtol=1e-12, atol=1e-12)  # batched BLAS may round differently
    assert torch.equal(parts.n_steps, whole.n_steps)

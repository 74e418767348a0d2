"""Solver accuracy, order, per-row control, failures and gradients against independent references."""

import numpy as np
import pytest
import torch

import genenet as gn
from genenet.solvers import METHODS, Status
from reference import hill_rhs_numpy, hill_values, period_from_peaks, radau, random_network, repressilator

ADAPTIVE = ["dopri5", "tsit5"]


@pytest.fixture(scope="module")
def net20():
    return random_network(20, 3, seed=11)


@pytest.fixture(scope="module")
def case20(net20):
    model = gn.Hill.random(net20, n=1, seed=5)
    t = np.linspace(0.0, 20.0, 21)
    x0 = np.random.default_rng(2).uniform(0.0, 60.0, net20.n_genes)
    ref = radau(hill_rhs_numpy(net20, hill_values(model)), t, x0)
    return model, t, x0, ref


@pytest.mark.parametrize("method", ADAPTIVE)
def test_accuracy_vs_radau_20_genes(case20, method):
    model, t, x0, ref = case20
    traj = gn.simulate(model, t, x0=x0, method=method, rtol=1e-10, atol=1e-12)
    rel = np.abs(traj.numpy()[0] - ref) / np.maximum(np.abs(ref), 1e-6)
    assert rel.max() < 1e-7


@pytest.mark.parametrize("method", ADAPTIVE)
def test_tolerance_proportionality(case20, method):
    model, t, x0, ref = case20
    rtols = [1e-4, 1e-6, 1e-8, 1e-10]
    errors = []
    for rtol in rtols:
        y = gn.simulate(model, t, x0=x0, method=method, rtol=rtol, atol=rtol * 1e-2).numpy()[0]
        errors.append(np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1e-6)))
    slope = np.polyfit(np.log10(rtols), np.log10(errors), 1)[0]
    assert 0.8 < slope < 1.2, (errors, slope)
    for rtol, err in zip(rtols, errors):
        assert err < 50 * rtol


def _exact(t):  # y' = -y + sin t, y(0) = 1
    return 1.5 * np.exp(-t) + 0.5 * (np.sin(t) - np.cos(t))


def _forced(t, y, args):
    return -y + torch.sin(t)[:, None]


def _logistic(t, y, args):  # y' = y (1 - y), y(0) = 0.1 -> y = 1 / (1 + 9 e^{-t})
    return y * (1.0 - y)


@pytest.mark.parametrize("name,order", [("euler", 1), ("rk4", 4), ("dopri5", 5), ("tsit5", 5)])
def test_convergence_order(name, order):
    method = METHODS[name]
    errors, hs = [], []
    for n in (16, 32, 64, 128):
        h = torch.full((1,), 8.0 / n)
        t, y = torch.zeros(1), torch.full((1, 1), 0.1)
        f0 = _logistic(t, y, {})
        for _ in range(n):
            y, _, _, f1, _ = method.step(_logistic, t, y, f0, h, {})
            t = t + h
            f0 = f1 if f1 is not None else _logistic(t, y, {})
        errors.append(abs(float(y[0, 0]) - 1.0 / (1.0 + 9.0 * np.exp(-8.0))))
        hs.append(8.0 / n)
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert order - 0.3 < slope < order + 0.6, (errors, slope)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_dense_output_order(name):
    method = METHODS[name]
    errs, hs = [], []
    for h in (0.4, 0.2, 0.1, 0.05):
        t, y = torch.zeros(1), torch.ones(1, 1)
        hh = torch.full((1,), h)
        y1, _, ks, _, _ = method.step(_forced, t, y, _forced(t, y, {}), hh, {})
        theta = torch.tensor([[0.3, 0.5, 1.0]])
        vals = method.interpolate(y, hh, ks, theta)[0, :, 0].numpy()
        assert vals[-1] == pytest.approx(float(y1[0, 0]), rel=1e-14)
        errs.append(np.max(np.abs(vals[:2] - _exact(h * np.array([0.3, 0.5])))))
        hs.append(h)
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert slope > 4.5, (errs, slope)  # local error of a 4th-order interpolant is O(h^5)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_row_alone_equals_row_in_batch(net20, method):
    model = gn.Hill.random(net20, n=6, seed=9)
    t = np.linspace(0, 30, 31)
    x0 = np.random.default_rng(1).uniform(0, 80, (6, net20.n_genes))
    batch = gn.simulate(model, t, x0=x0, method=method, rtol=1e-7, atol=1e-9)
    steps = batch.stats["n_steps"]
    assert len(set(steps.tolist())) > 1  # rows really took different step sequences
    for r in (0, 3, 5):
        alone_model = gn.Hill(net20, **{k: v.detach()[r] for k, v in model.params.items()})
        alone = gn.simulate(alone_model, t, x0=x0[r], method=method, rtol=1e-7, atol=1e-9)
        assert alone.stats["n_steps"][0] == steps[r]
        np.testing.assert_allclose(alone.numpy()[0], batch.numpy()[r], rtol=1e-12, atol=1e-12)


def test_failing_row_does_not_poison_batch():
    # dx/dt = a x^2 blows up at t = 1/(a x0): the row with a = 1 fails, a = 0.01 is fine until t = 100
    model = gn.Model.from_functions(["x"], lambda t, x, p: p["a"] * x * x, lambda t, x, p: 0.0 * x,
                                    {"a": [[0.01], [1.0], [0.02]]})
    t = np.linspace(0, 2, 5)
    with pytest.raises(gn.SolverError, match="1 of 3 rows failed"):
        gn.simulate(model, t, x0=1.0)
    traj = gn.simulate(model, t, x0=1.0, throw=False)
    assert traj.status[1] in (Status.STEP_UNDERFLOW, Status.NONFINITE, Status.MAX_STEPS)
    assert traj.status[0] == Status.SUCCESS and traj.status[2] == Status.SUCCESS
    assert not traj.success and list(traj.failed) == [1]
    exact = 1.0 / (1.0 - np.array([[0.01], [0.02]]) * t)
    np.testing.assert_allclose(traj.numpy()[[0, 2], :, 0], exact, rtol=1e-5)
    y1 = traj.numpy()[1, :, 0]
    assert np.isfinite(y1[:3]).all() and np.isnan(y1[3:]).all()  # NaN only after the failure, flagged
    alone = gn.simulate(gn.Model.from_functions(["x"], lambda t, x, p: p["a"] * x * x, lambda t, x, p: 0.0 * x,
                                                {"a": 0.02}), t, x0=1.0)
    np.testing.assert_allclose(alone.numpy()[0], traj.numpy()[2], rtol=1e-13)


def test_max_steps_reported_per_row(net20):
    model = gn.Hill.random(net20, n=2, seed=1)
    traj = gn.simulate(model, np.linspace(0, 50, 3), x0=10.0, max_steps=5, throw=False)
    assert (traj.status == Status.MAX_STEPS).all()
    assert "max_steps" in traj.message
    assert (traj.stats["n_steps"] == 5).all()


def test_nonfinite_rhs_is_reported():
    model = gn.Model.from_functions(["x"], lambda t, x, p: torch.where(t[:, None] > 0.5, x / 0.0, x),
                                    lambda t, x, p: p["k"] * x, {"k": 1.0})
    traj = gn.simulate(model, [0.0, 1.0], x0=1.0, throw=False)
    assert traj.status[0] == Status.NONFINITE
    assert "NaN/inf" in traj.message


def test_empty_span_returns_x0(net20):
    model = gn.Hill.random(net20, n=3, seed=0)
    traj = gn.simulate(model, [2.0], x0=np.arange(20.0))
    assert traj.y.shape == (3, 1, 20)
    np.testing.assert_array_equal(traj.numpy()[:, 0], np.tile(np.arange(20.0), (3, 1)))


def test_repressilator_period_matches_radau():
    model = repressilator()
    t = np.linspace(0.0, 60.0, 3001)
    x0 = np.array([1.0, 2.0, 5.0])
    ref = radau(hill_rhs_numpy(model.net, hill_values(model)), t, x0, tol=1e-11)
    traj = gn.simulate(model, t, x0=x0, rtol=1e-9, atol=1e-11)
    y = traj.numpy()[0]
    p_ref = period_from_peaks(t, ref[:, 0], skip=20.0)
    p_gn = period_from_peaks(t, y[:, 0], skip=20.0)
    assert np.ptp(y[t > 30, 0]) > 1.0  # sustained oscillation, not decay
    assert abs(p_gn - p_ref) / p_ref < 1e-3
    assert 2.0 < p_ref < 20.0


def _fd_batched(loss_rows, value: torch.Tensor, eps: float = 1e-5) -> np.ndarray:
    """Central differences of a per-row loss, all 2n perturbations simulated as one batch."""
    n = value.numel()
    step = eps * value.abs().clamp_min(1.0)
    plus = value.repeat(n, 1) + torch.diag(step)
    minus = value.repeat(n, 1) - torch.diag(step)
    out = loss_rows(torch.cat([plus, minus]))
    return ((out[:n] - out[n:]) / (2 * step)).detach().numpy()


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_gradients_match_finite_differences(method):
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-"), ("A", "C", "+"), ("C", "C", "+")])
    base = gn.Hill(net, production=[4.0, 3.0, 2.0], degradation=[1.0, 0.7, 0.5], threshold=[1.5, 2.0, 1.0, 2.5],
                   hill=[2.0, 3.0, 2.5, 1.5], fold=[5.0, 8.0, 3.0, 4.0])
    t = np.linspace(0, 5, 6)
    weights = torch.as_tensor(np.random.default_rng(0).normal(size=(6, 3)))
    kw = dict(method=method, rtol=1e-11, atol=1e-12, dt=0.05)

    def loss_rows(params, x0):
        traj = gn.simulate(base, t, x0=x0, params=params, **kw)
        return (traj.y * weights).sum(dim=(1, 2))

    values = {k: v.detach()[0].clone() for k, v in base.params.items()}
    x0 = torch.tensor([0.5, 2.0, 1.0])
    leaves = {k: v.clone().requires_grad_(True) for k, v in values.items()}
    x0_leaf = x0.clone().requires_grad_(True)
    loss_rows(leaves, x0_leaf).sum().backward()
    for name, v in values.items():
        fd = _fd_batched(lambda rows, name=name: loss_rows({**values, name: rows}, x0), v)
        np.testing.assert_allclose(leaves[name].grad.numpy(), fd, rtol=1e-5, atol=1e-7, err_msg=name)
    fd = _fd_batched(lambda rows: loss_rows(values, rows), x0)
    np.testing.assert_allclose(x0_leaf.grad.numpy(), fd, rtol=1e-5, atol=1e-7, err_msg="x0")


def test_gradient_reaches_model_raw_parameters():
    model = repressilator()
    traj = gn.simulate(model, np.linspace(0, 3, 4), x0=[1.0, 2.0, 3.0])
    traj.y.sum().backward()
    for name, raw in model.raw.items():
        assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0, name


def test_float32_and_dtype_selection(case20):
    model, t, x0, ref = case20
    traj = gn.simulate(model, t, x0=x0, dtype=torch.float32, rtol=1e-5, atol=1e-6)
    assert traj.y.dtype == torch.float32
    rel = np.abs(traj.numpy()[0] - ref) / np.maximum(np.abs(ref), 1e-3)
    assert rel.max() < 1e-3
    assert gn.simulate(model, t, x0=x0, device="cpu").y.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(case20):
    model, t, x0, ref = case20
    traj = gn.simulate(model, t, x0=x0, device="cuda", dtype=torch.float64, rtol=1e-10, atol=1e-12)
    assert traj.y.is_cuda
    assert gn.simulate(model, t, x0=x0, device="auto").y.dtype == torch.float32
    np.testing.assert_allclose(traj.numpy()[0], ref, rtol=1e-7, atol=1e-9)


def test_a_differentiable_solve_that_exhausts_memory_fails_with_a_message(monkeypatch):
    """The graph of a long differentiable solve grows per step; when the memory left falls below a
    tenth of what the solve started with, a MemoryError names the way out (no OOM kill)."""
    from genenet.solvers import memory

    levels = iter([10 * 2**30] + [5 * 2**30, 0.5 * 2**30] + [0.4 * 2**30] * 1000)
    monkeypatch.setattr(memory, "available_memory", lambda device: next(levels))
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.Hill(net)
    # the torch loop keeps autograd's graph (the native kernel keeps a step tape instead)
    with pytest.raises(MemoryError, match=r"torch\.no_grad\(\).*adjoint"), gn.native.torch_path():
        gn.simulate(model, np.linspace(0, 200, 5), x0=[1.0, 2.0], rtol=1e-10, atol=1e-12)
    # without a graph nothing is watched: the same memory readings do not stop a no_grad solve
    levels = iter([10 * 2**30] + [0.1 * 2**30] * 1000)
    with torch.no_grad():
        traj = gn.simulate(model, np.linspace(0, 200, 5), x0=[1.0, 2.0], rtol=1e-10, atol=1e-12)
    assert (traj.status == 0).all()

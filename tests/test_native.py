"""The native whole-trajectory kernel against the pure-torch loop it must reproduce.

Same steps (counts per row), same statuses, values equal to rounding in float64; in
float32 within the tolerance the solve asks for (rounding may flip a step decision).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genenet as gn
from genenet import native
from genenet.solvers import Status


def _solve(monkeypatch, use_native: bool, *args, **kw):
    monkeypatch.setenv("GENENET_NATIVE", "1" if use_native else "0")
    with torch.no_grad():
        return gn.simulate(*args, **kw)


def _both(monkeypatch, *args, **kw):
    return _solve(monkeypatch, False, *args, **kw), _solve(monkeypatch, True, *args, **kw)


def _assert_same(ref, fast, rtol=1e-10):
    for key in ("n_steps", "n_accepted", "n_rejected", "n_rhs"):
        np.testing.assert_array_equal(fast.stats[key], ref.stats[key], err_msg=key)
    np.testing.assert_array_equal(fast.status, ref.status)
    scale = float(np.nanmax(np.abs(ref.y.numpy())))
    np.testing.assert_allclose(fast.y.numpy(), ref.y.numpy(), rtol=rtol, atol=rtol * scale)


def test_kernel_builds_here():
    assert native.available(torch.float64), native.reason(torch.float64)
    assert native.available(torch.float32), native.reason(torch.float32)


def test_is_used_and_matches_the_torch_loop_on_a_knockout_screen(monkeypatch):
    net = gn.Network.random(30, regulators=3, seed=2)
    model = gn.Hill.random(net, n=1, seed=2)
    screen = gn.knockout_screen(net, order=2)[:60]
    t = np.linspace(0, 10, 11)
    ref, fast = _both(monkeypatch, model, t, x0=1.0, perturbations=screen, rtol=1e-7, atol=1e-9)
    _assert_same(ref, fast)
    # and the native path really ran for the second solve
    calls = []
    real = native.integrate_hill_erk
    monkeypatch.setattr(native, "integrate_hill_erk", lambda *a, **k: calls.append(1) or real(*a, **k))
    _solve(monkeypatch, True, model, t, x0=1.0, perturbations=screen)
    assert calls


def test_condition_effects_and_non_integer_hill_coefficients(monkeypatch):
    net = gn.Network.random(12, regulators=2, seed=5)
    model = gn.Hill.random(net, n=4, seed=5)
    model.set_params(hill=np.linspace(1.3, 4.7, net.n_edges))  # pow path, not integer powers
    genes = list(net.genes)
    conds = [[], gn.Knockdown(genes[0], 0.7), gn.Overexpress(genes[1], fold=3.0),
             gn.Overexpress(genes[2], rate=2.0), gn.Clamp(genes[3], 1.5), gn.Knockout(genes[4])]
    t = np.linspace(0, 8, 17)
    ref, fast = _both(monkeypatch, model, t, x0=0.5, perturbations=conds, rtol=1e-8, atol=1e-10)
    _assert_same(ref, fast)
    clamp_rows = [i for i, lab in enumerate(ref.labels) if "Clamp" in str(lab) or "clamp" in str(lab)]
    assert clamp_rows and np.allclose(fast.y[clamp_rows][..., 3].numpy(), 1.5)


def test_tsit5_first_step_steady_stop_and_failures(monkeypatch):
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.Hill(net, production=[5.0, 4.0], degradation=[1.0, 1.0], hill=4.0, fold=20.0)
    t = np.linspace(0, 200, 41)
    x0 = np.random.default_rng(0).uniform(0, 5, (64, 2))
    for kw in (dict(method="tsit5"), dict(first_step=1e-3), dict(steady_tol=1e-7)):
        ref, fast = _both(monkeypatch, model, t, x0=x0, rtol=1e-8, atol=1e-10, **kw)
        _assert_same(ref, fast)
    ref, fast = _both(monkeypatch, model, t, x0=x0, max_steps=7, throw=False)
    _assert_same(ref, fast)
    assert (fast.status == Status.MAX_STEPS).all()
    # a float32 state at the edge of overflow: its stages overflow to inf in both, and the row fails alone
    ref, fast = _both(monkeypatch, model, t, x0=np.array([[3e38, 1.0], [1.0, 1.0]]), throw=False,
                      dtype=torch.float32)
    np.testing.assert_array_equal(fast.status, ref.status)
    assert fast.status[0] != Status.SUCCESS and fast.status[1] == Status.SUCCESS


def test_float32_agrees_within_the_tolerance(monkeypatch):
    net = gn.Network.random(40, regulators=3, seed=1)
    model = gn.Hill.random(net, n=1, seed=1)
    t = np.linspace(0, 20, 21)
    kw = dict(x0=1.0, perturbations=gn.knockout_screen(net, order=1), rtol=1e-5, atol=1e-6, dtype=torch.float32)
    ref, fast = _both(monkeypatch, model, t, **kw)
    scale = float(ref.y.abs().max())
    assert float((fast.y - ref.y).abs().max()) < 1e-3 * scale
    steps_same = np.mean(fast.stats["n_steps"] == ref.stats["n_steps"])
    assert steps_same > 0.5


def test_gradients_take_the_torch_path(monkeypatch):
    monkeypatch.setenv("GENENET_NATIVE", "1")
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.Hill(net)
    traj = gn.simulate(model, [0.0, 1.0], x0=[1.0, 2.0])  # parameters require grad: differentiable
    assert traj.y.requires_grad
    traj.y.sum().backward()
    assert model.raw["production"].grad is not None


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("GENENET_NATIVE", "0")
    assert not native.available()
    assert "GENENET_NATIVE" in native.reason()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_model_without_a_kernel_runs_on_the_torch_path(monkeypatch, dtype):
    model = gn.Model.from_functions(["x"], lambda t, x, p: p["g"] + 0 * x, lambda t, x, p: p["k"] * x,
                                   {"g": 2.0, "k": 0.5})
    traj = _solve(monkeypatch, True, model, np.linspace(0, 4, 5), x0=[0.0], dtype=dtype, rtol=1e-8, atol=1e-10)
    exact = 4.0 * (1 - np.exp(-0.5 * np.linspace(0, 4, 5)))
    np.testing.assert_allclose(traj.y[0, :, 0].numpy(), exact, rtol=1e-5 if dtype == torch.float32 else 1e-7)

"""Chemical Langevin simulation: birth-death statistics, weak order, reproducibility, snapshots."""

import numpy as np
import pytest
import torch

import genenet as gn


def _birth_death(g, k):
    return gn.Model.from_functions(["x"], lambda t, x, p: p["g"].expand_as(x), lambda t, x, p: p["k"] * x,
                                   {"g": g, "k": k})


@pytest.mark.parametrize("method", ["euler-maruyama", "milstein"])
def test_birth_death_stationary_mean_and_variance_are_g_over_k(method):
    g, k, n = 50.0, 1.0, 20000
    traj = gn.simulate_stochastic(_birth_death(g, k), np.linspace(0, 10, 3), n_cells=n, x0=[g / k], method=method,
                                  dt=0.01, seed=1)
    x = traj.y[:, -1, 0].numpy()
    mean_se = np.sqrt(g / k / n)
    var_se = g / k * np.sqrt(2.0 / (n - 1))
    assert abs(x.mean() - g / k) < 3 * mean_se
    assert abs(x.var(ddof=1) - g / k) < 3 * var_se


def test_weak_order_one_of_the_mean():
    # linear drift: the exact mean is g/k + (x0 - g/k) e^{-kt}; Euler's mean error is O(dt)
    g, k, x0, n = 100.0, 1.0, 50.0, 20000
    exact = g / k + (x0 - g / k) * np.exp(-k)
    errs = []
    for dt in (0.1, 0.05):
        traj = gn.simulate_stochastic(_birth_death(g, k), [0.0, 1.0], n_cells=n, x0=[x0], dt=dt, seed=3)
        errs.append(abs(float(traj.y[:, -1, 0].mean()) - exact))
    se = np.sqrt(g / k / n)
    assert errs[0] > 5 * se  # the O(dt) bias is resolved above the Monte Carlo error
    assert 1.4 < errs[0] / errs[1] < 2.8  # halving dt halves the weak error


def test_seeds_reproduce_bit_for_bit_and_differ_between_seeds():
    net = gn.load_network("toggle_switch") if "toggle_switch" in gn.bundled_networks() else None
    model = gn.Hill(net) if net is not None else _birth_death(5.0, 1.0)
    kw = dict(n_cells=50, perturbations=None, dt=0.01, method="milstein")
    a = gn.simulate_stochastic(model, np.linspace(0, 2, 5), seed=7, **kw)
    b = gn.simulate_stochastic(model, np.linspace(0, 2, 5), seed=7, **kw)
    c = gn.simulate_stochastic(model, np.linspace(0, 2, 5), seed=8, **kw)
    assert torch.equal(a.y, b.y)
    assert not torch.equal(a.y, c.y)
    assert (a.y >= 0).all()


def test_rows_are_conditions_by_cells_and_knockouts_stay_zero():
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.Hill(net, production=20.0, degradation=1.0, threshold=10.0, hill=4.0, fold=10.0)
    conds = [gn.Condition([]), gn.Knockout("A")]
    traj = gn.simulate_stochastic(model, np.linspace(0, 5, 6), n_cells=30, perturbations=conds, x0=[5.0, 5.0], seed=0)
    assert traj.y.shape == (60, 6, 2)
    ko = np.asarray(traj.conditions) == "KO(A)"
    assert ko.sum() == 30 and np.all(traj.cells[:30] == np.arange(30))
    assert float(traj.y[ko][:, :, 0].abs().max()) == 0.0
    snap = traj.snapshot(5.0, condition="KO(A)")
    assert list(snap.columns) == ["condition", "cell", "A", "B"] and len(snap) == 30
    counts = traj.snapshot(5.0, capture=0.5, library_sd=0.3, dropout_midpoint=2.0, seed=1)
    values = counts[["A", "B"]].to_numpy()
    assert np.all(values == np.round(values)) and (values == 0).mean() > 0.4  # KO(A) zeros + dropout


def test_noise_zero_is_the_deterministic_solution():
    model = _birth_death(3.0, 0.5)
    traj = gn.simulate_stochastic(model, np.linspace(0, 4, 5), n_cells=2, x0=[0.0], noise=0.0, dt=1e-3)
    ode = gn.simulate(model, np.linspace(0, 4, 5), x0=[0.0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(traj.y[0, :, 0].numpy(), ode.y[0, :, 0].detach().numpy(), rtol=2e-3)


@pytest.mark.parametrize("kw,match", [({"method": "gillespie"}, "allowed"), ({"noise": -1.0}, "noise"),
                                      ({"n_cells": 0}, "n_cells"), ({"boundary": "absorb"}, "boundary")])
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        gn.simulate_stochastic(_birth_death(1.0, 1.0), [0.0, 1.0], **kw)

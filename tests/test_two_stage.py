"""TwoStage (mRNA + protein) model: equations vs scipy Radau, perturbations, species access, Jacobian."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import genenet as gn


@pytest.fixture
def toggle():
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-"), ("A", "C", "+")])
    return net, gn.TwoStage(net, transcription=[12.0, 8.0, 5.0], mrna_degradation=[20.0, 1.0, 2.0],
                            translation=[2.0, 1.5, 1.0], protein_degradation=[0.3, 0.5, 0.2], threshold=[6.0, 4.0, 5.0],
                            hill=[2.0, 3.0, 1.0], fold=[8.0, 5.0, 10.0])


def _reference(t, x0, ko=None):
    """The same equations written out by hand for scipy."""
    a, dm, b, dp = np.array([12.0, 8.0, 5.0]), np.array([20.0, 1.0, 2.0]), np.array([2.0, 1.5, 1.0]), \
        np.array([0.3, 0.5, 0.2])
    if ko is not None:
        a = a.copy()
        a[ko] = 0.0

    def H_rep(x, T, n, lam):
        s = 1 / (1 + (x / T) ** n)
        return 1 / lam + (1 - 1 / lam) * s

    def H_act(x, T, n, lam):
        s = 1 / (1 + (x / T) ** n)
        return 1 + (1 / lam - 1) * s

    def f(_, y):
        m, p = y[:3], y[3:]
        tx = a * np.array([H_rep(p[1], 4.0, 3.0, 5.0), H_rep(p[0], 6.0, 2.0, 8.0), H_act(p[0], 5.0, 1.0, 10.0)])
        return np.concatenate([tx - dm * m, b * m - dp * p])

    return solve_ivp(f, (t[0], t[-1]), x0, method="Radau", t_eval=t, rtol=1e-12, atol=1e-12).y.T


@pytest.mark.parametrize("method", ["dopri5", "rodas5", "auto"])
def test_two_stage_matches_radau(toggle, method):
    net, model = toggle
    t = np.linspace(0, 15, 16)
    x0 = np.array([0.5, 1.0, 0.0, 3.0, 1.0, 0.5])
    traj = gn.simulate(model, t, x0=x0, method=method, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(traj.numpy()[0], _reference(t, x0), rtol=1e-6, atol=1e-8)


def test_knockout_zeroes_transcription_and_both_species(toggle):
    net, model = toggle
    t = np.linspace(0, 10, 11)
    x0 = np.array([0.5, 1.0, 0.2, 3.0, 1.0, 0.5])
    traj = gn.simulate(model, t, x0=x0, perturbations=gn.Knockout("A"), rtol=1e-9, atol=1e-11)
    expected_x0 = x0.copy()
    expected_x0[[0, 3]] = 0.0
    np.testing.assert_allclose(traj.numpy()[0], _reference(t, expected_x0, ko=0), rtol=1e-6, atol=1e-8)
    assert float(traj["A", "mRNA"].detach().abs().max()) == 0.0
    assert float(traj["A", "protein"].detach().abs().max()) == 0.0
    # a clamp holds the protein
    clamped = gn.simulate(model, t, x0=x0, perturbations=gn.Clamp("A", 7.0))
    assert torch.allclose(clamped["A", "protein"], torch.full_like(clamped["A", "protein"], 7.0))


def test_species_access_and_frame(toggle):
    net, model = toggle
    traj = gn.simulate(model, [0.0, 1.0, 2.0], x0=np.ones(6))
    assert model.genes == ["A:mRNA", "B:mRNA", "C:mRNA", "A:protein", "B:protein", "C:protein"]
    assert torch.equal(traj["B", "protein"], traj["B:protein"])
    frame = traj.to_frame()
    assert {"gene", "species"} <= set(frame.columns)
    assert set(frame.gene) == {"A", "B", "C"} and set(frame.species) == {"mRNA", "protein"}
    with pytest.raises(KeyError, match="species"):
        traj["A", "RNA"]
    with pytest.raises(KeyError, match="closest|unknown"):
        gn.simulate(model, [0.0, 1.0], perturbations=gn.Knockout("Z"))
    assert list(model.param_table().query("name == 'transcription'").entry) == ["A", "B", "C"]


def test_analytic_jacobian_matches_autodiff(toggle):
    net, model = toggle
    x = torch.tensor([[0.5, 1.0, 0.2, 3.0, 1.0, 0.5]], dtype=torch.float64)
    p = model.row_params(None, 1, device=torch.device("cpu"), dtype=torch.float64)
    J = model.production_jacobian(None, x, p) - model.degradation_jacobian(None, x, p)
    auto = torch.autograd.functional.jacobian(lambda xx: model.rhs(None, xx[None], p)[0], x[0])
    torch.testing.assert_close(J[0], auto)


@pytest.mark.slow  # 29 s (TwoStage runs on the torch loop): over CI's budget
def test_fast_mrna_turnover_is_stiff_and_auto_switches():
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.TwoStage(net, transcription=2000.0, mrna_degradation=1000.0, translation=1.0,
                        protein_degradation=0.1)
    traj = gn.simulate(model, np.linspace(0, 50, 11), x0=[0.0, 0.0, 5.0, 1.0], method="auto")
    explicit = gn.simulate(model, np.linspace(0, 50, 11), x0=[0.0, 0.0, 5.0, 1.0], method="dopri5",
                           max_steps=100_000)
    assert traj.stats["switched"][0]
    assert explicit.stats["n_rhs"][0] > 10 * traj.stats["n_rhs"][0]
    np.testing.assert_allclose(traj.numpy(), explicit.numpy(), rtol=1e-4, atol=1e-6)

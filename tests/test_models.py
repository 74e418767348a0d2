import math

import numpy as np
import pytest
import torch

import genenet as gn
from reference import hill_rhs_numpy, hill_values, random_network

CPU = torch.device("cpu")


def _rhs(model, x, s=0):
    p = model.row_params(torch.tensor([s]), 1, device=CPU, dtype=torch.float64)
    return model.rhs(torch.zeros(1), torch.as_tensor(x)[None], p)[0].detach().numpy()


def test_hill_matches_equations_on_mixed_network():
    net = gn.Network.from_edges([("A", "B", "+"), ("B", "A", "-"), ("C", "A", "+"), ("A", "A", "-"),
                                 ("B", "C", "-")], genes=["A", "B", "C", "D"])
    rng = np.random.default_rng(0)
    model = gn.Hill(net, production=rng.uniform(1, 10, 4), degradation=rng.uniform(0.1, 1, 4),
                    threshold=rng.uniform(0.5, 5, 5), hill=rng.uniform(1, 5, 5), fold=rng.uniform(1, 50, 5))
    ref = hill_rhs_numpy(net, hill_values(model))
    for _ in range(5):
        x = rng.uniform(0, 10, 4)
        np.testing.assert_allclose(_rhs(model, x), ref(0.0, x), rtol=1e-12)
    # D has no regulators: production is exactly g
    x = rng.uniform(0, 10, 4)
    g, k = hill_values(model)["production"], hill_values(model)["degradation"]
    assert _rhs(model, x)[3] == pytest.approx(g[3] - k[3] * x[3], rel=1e-14)


def test_shifted_hill_limits():
    # repression: 1 at x=0, 1/lambda at x >> T; activation: 1/lambda at x=0, 1 at x >> T
    net = gn.Network.from_edges([("R", "X", "-"), ("A", "Y", "+")])
    model = gn.Hill(net, production=1.0, degradation=1.0, threshold=1.0, hill=2.0, fold=4.0)
    low = _rhs(model, np.array([0.0, 0.0, 0.0, 0.0]))
    high = _rhs(model, np.array([1e6, 0.0, 1e6, 0.0]))
    genes = list(net.genes)
    assert low[genes.index("X")] == pytest.approx(1.0)
    assert low[genes.index("Y")] == pytest.approx(0.25)
    assert high[genes.index("X")] == pytest.approx(0.25, rel=1e-6)
    assert high[genes.index("Y")] == pytest.approx(1.0, rel=1e-6)
    # at x = T the Hill switch is half way
    half = _rhs(model, np.array([1.0, 0.0, 1.0, 0.0]))
    assert half[genes.index("X")] == pytest.approx(0.25 + 0.75 * 0.5)


def test_parameter_shapes_and_ensembles():
    net = gn.load_network("toggle_switch")
    m = gn.Hill(net, production=[1.0, 2.0], threshold=np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    assert m.n_sets == 3
    assert m.params["production"].shape == (1, 2)
    assert m.params["threshold"].shape == (3, 2)
    np.testing.assert_allclose(m.params["threshold"].detach().numpy()[2], [5.0, 6.0])
    with pytest.raises(ValueError, match=r"parameter 'threshold' has shape \(3,\); allowed"):
        gn.Hill(net, threshold=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"'fold' must lie in \[1.0, inf\]"):
        gn.Hill(net, fold=0.5)
    with pytest.raises(ValueError, match="'production' has non-finite"):
        gn.Hill(net, production=[1.0, np.nan])
    with pytest.raises(ValueError, match="disagree on the number of sets"):
        gn.Hill(net, production=np.ones((2, 2)), degradation=np.ones((3, 2)))
    with pytest.raises(KeyError, match="unknown parameter 'speed'"):
        m.set_params(speed=1.0)
    with pytest.raises(TypeError, match="genenet.Network"):
        gn.Hill([("A", "B", "-")])


def test_unconstrained_storage_roundtrip():
    spec_pos = gn.ParameterSpec("k", 3, "gene", (0.0, math.inf))
    spec_box = gn.ParameterSpec("f", 3, "gene", (1.0, 5.0))
    spec_fold = gn.ParameterSpec("l", 3, "edge", (1.0, math.inf))
    v = torch.tensor([[0.5, 2.0, 4.0]])
    for spec in (spec_pos, spec_box, spec_fold):
        vv = v + 1.0 if spec.bounds[0] == 1.0 else v
        np.testing.assert_allclose(spec.to_constrained(spec.to_unconstrained(vv)).numpy(), vv.numpy(), rtol=1e-12)
    # any unconstrained value maps inside the bounds
    u = torch.linspace(-30, 30, 50)
    assert (spec_box.to_constrained(u) >= 1.0).all() and (spec_box.to_constrained(u) <= 5.0).all()
    assert (spec_pos.to_constrained(u) > 0).all()


def test_random_racipe_ensemble():
    net = gn.load_network("myeloid")
    m = gn.Hill.random(net, n=2000, seed=7)
    p = {k: v.detach().numpy() for k, v in m.params.items()}
    assert p["production"].shape == (2000, net.n_genes) and p["threshold"].shape == (2000, net.n_edges)
    assert p["production"].min() >= 1 and p["production"].max() <= 100
    assert p["degradation"].min() >= 0.1 and p["degradation"].max() <= 1
    assert p["fold"].min() >= 1 and p["fold"].max() <= 100
    assert set(np.unique(np.round(p["hill"], 9))) == {1, 2, 3, 4, 5, 6}
    # half-functional rule: thresholds spread over (0.02 M, 1.98 M) with mean ~ M of the source
    tmin, tmax = p["threshold"].min(axis=0), p["threshold"].max(axis=0)
    assert np.all(tmax / tmin <= 99.0) and np.all(tmax / tmin > 30.0)
    # edges from the same source share M
    first = {}
    for e, s in enumerate(net.sources):
        first.setdefault(s, e)
        assert tmax[e] / tmax[first[s]] == pytest.approx(1.0, rel=0.05)
    # the rule makes each regulation "on" (source level above T at steady state) in about half the sets
    x0 = np.random.default_rng(0).uniform(0, 50, (2000, net.n_genes))
    with torch.no_grad():
        final = gn.simulate(m, [0.0, 100.0], x0=x0, rtol=1e-5, atol=1e-6).final.numpy()
    on = (final[:, net.sources] > p["threshold"]).mean()
    assert 0.35 < on < 0.65
    again = gn.Hill.random(net, n=2000, seed=7)
    assert torch.equal(again.raw["threshold"], m.raw["threshold"])
    other = gn.Hill.random(net, n=2000, seed=8)
    assert not torch.equal(other.raw["threshold"], m.raw["threshold"])
    with pytest.raises(ValueError, match="positive integer"):
        gn.Hill.random(net, n=0)


def test_model_from_functions_simulates_and_differentiates():
    # dx/dt = g - k x  ->  x(t) = g/k + (x0 - g/k) exp(-k t)
    model = gn.Model.from_functions(["x", "y"], lambda t, x, p: p["g"].expand_as(x),
                                    lambda t, x, p: p["k"] * x, {"g": [2.0, 1.0], "k": 0.5})
    t = np.linspace(0, 4, 9)
    traj = gn.simulate(model, t, x0=[0.0, 3.0], rtol=1e-10, atol=1e-12)
    g, k = np.array([2.0, 1.0]), 0.5
    exact = g / k + (np.array([0.0, 3.0]) - g / k) * np.exp(-k * t[:, None])
    np.testing.assert_allclose(traj.numpy()[0], exact, rtol=1e-8)
    traj.y[0, -1, 0].backward()
    # d x(4)/d log k  for x0 = 0: x = g/k (1 - e^{-kt});  dx/dk = -g/k^2 (1-e^{-kt}) + g/k t e^{-kt}
    dk = -2.0 / k**2 * (1 - np.exp(-k * 4)) + 2.0 / k * 4 * np.exp(-k * 4)
    assert model.raw["k"].grad.item() == pytest.approx(dk * k, rel=1e-6)  # chain rule through log storage
    with pytest.raises(TypeError, match="production must be callable"):
        gn.Model.from_functions(["x"], None, lambda t, x, p: x, {})


def test_model_param_table_labels():
    net = random_network(5, 2, seed=1)
    m = gn.Hill.random(net, n=3, seed=0)
    table = m.param_table()
    assert set(table["name"]) == {"production", "degradation", "threshold", "hill", "fold"}
    thr = table[(table["name"] == "threshold") & (table["parameter_set"] == 2)]
    assert list(thr["entry"]) == [str(e) for e in net.edges]

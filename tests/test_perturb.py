"""Perturbations against references: Radau on the perturbed equations and closed forms."""

import math

import numpy as np
import pytest
import torch

import genenet as gn
from reference import hill_rhs_numpy, hill_values, radau, random_network


@pytest.fixture(scope="module")
def net10():
    return random_network(10, 3, seed=21)


@pytest.fixture(scope="module")
def model10(net10):
    return gn.Hill.random(net10, n=1, seed=2)


def test_knockout_gene_stays_zero_and_others_match_radau(net10, model10):
    t = np.linspace(0, 15, 16)
    x0 = np.random.default_rng(0).uniform(1, 30, 10)
    ko = ["G3", "G7"]
    traj = gn.simulate(model10, t, x0=x0, perturbations=gn.Knockout(ko), rtol=1e-10, atol=1e-12)
    y = traj.numpy()[0]
    idx = [net10.index(g) for g in ko]
    assert np.all(y[:, idx] == 0.0)  # exactly
    p = hill_values(model10)
    p["production"] = p["production"].copy()
    p["production"][idx] = 0.0
    x0_ref = x0.copy()
    x0_ref[idx] = 0.0
    ref = radau(hill_rhs_numpy(net10, p), t, x0_ref)
    np.testing.assert_allclose(y, ref, rtol=1e-7, atol=1e-10)
    assert traj.labels == ["KO(G3)+KO(G7)"] and traj.conditions == ["KO(G3)+KO(G7)"]


def test_clamp_holds_exactly_and_others_match_radau(net10, model10):
    t = np.linspace(0, 15, 16)
    x0 = np.random.default_rng(1).uniform(1, 30, 10)
    traj = gn.simulate(model10, t, x0=x0, perturbations=gn.Clamp("G2", 7.5), rtol=1e-10, atol=1e-12)
    y = traj.numpy()[0]
    i = net10.index("G2")
    assert np.all(y[:, i] == 7.5)
    f = hill_rhs_numpy(net10, hill_values(model10))

    def clamped(tt, x):
        d = f(tt, x)
        d[i] = 0.0
        return d

    x0_ref = x0.copy()
    x0_ref[i] = 7.5
    np.testing.assert_allclose(y, radau(clamped, t, x0_ref), rtol=1e-7, atol=1e-10)


def _one_gene(g=2.0, k=0.5):
    return gn.Model.from_functions(["x"], lambda t, x, p: p["g"].expand_as(x), lambda t, x, p: p["k"] * x,
                                   {"g": g, "k": k})


def _relax(x0, target, k, dt):
    return target + (x0 - target) * np.exp(-k * dt)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rk4"])
def test_pulse_switching_times_analytic(method):
    # dx/dt = g m(t) - k x, knockdown to 20% production on [1.3, 3.7): piecewise exponential
    g, k, s, e = 2.0, 0.5, 1.3, 3.7
    model = _one_gene(g, k)
    t = np.array([0.0, 1.0, 1.3, 2.0, 3.0, 3.7, 4.5, 6.0])
    traj = gn.simulate(model, t, x0=0.0, perturbations=gn.Pulse(gn.Knockdown("x", 0.8), s, e), method=method,
                       rtol=1e-11, atol=1e-12, dt=0.01)
    xs = _relax(0.0, g / k, k, s)
    xe = _relax(xs, 0.2 * g / k, k, e - s)
    exact = np.where(t < s, _relax(0.0, g / k, k, t),
                     np.where(t < e, _relax(xs, 0.2 * g / k, k, t - s), _relax(xe, g / k, k, t - e)))
    tol = 1e-9 if method != "rk4" else 1e-8
    np.testing.assert_allclose(traj.numpy()[0, :, 0], exact, rtol=tol, atol=tol)
    assert traj.labels == ["KD(x,0.8)@[1.3,3.7)"]


def test_pulsed_clamp_jumps_and_releases():
    g, k, s, e = 2.0, 0.5, 1.0, 2.0
    traj = gn.simulate(_one_gene(g, k), [0.0, 0.5, 1.0, 1.5, 2.0, 3.0], x0=0.0,
                       perturbations=gn.Pulse(gn.Clamp("x", 10.0), s, e), rtol=1e-11, atol=1e-12)
    y = traj.numpy()[0, :, 0]
    assert y[2] == 10.0 and y[3] == 10.0  # on from t = start (right-continuous), held exactly
    np.testing.assert_allclose(y[:2], _relax(0.0, g / k, k, np.array([0.0, 0.5])), rtol=1e-10)
    np.testing.assert_allclose(y[4:], _relax(10.0, g / k, k, np.array([0.0, 1.0])), rtol=1e-9)


def test_overexpress_knockdown_and_set_parameter_steady_levels():
    net = gn.Network.from_edges([("A", "B", "+")])
    model = gn.Hill(net, production=[4.0, 3.0], degradation=[2.0, 1.0], threshold=1.0, hill=2.0, fold=5.0)
    conds = {
        "oe": gn.Overexpress("A", fold=3.0, rate=1.0),
        "kd": gn.Knockdown("A", 0.25),
        "set": gn.SetParameter("degradation", 4.0, gene="A"),
        "set_edge": [gn.SetParameter("threshold", 100.0, edge=("A", "B"))],
    }
    traj = gn.simulate(model, [0, 60.0], x0=[0.0, 0.0], perturbations=conds, rtol=1e-10, atol=1e-12)
    a = traj.final[:, 0].detach().numpy()
    np.testing.assert_allclose(a, [(4 * 3 + 1) / 2, 4 * 0.75 / 2, 4 / 4, 2.0], rtol=1e-8)
    # B under a huge threshold: activation stays at its floor 1/fold
    b = traj.final[3, 1].item()
    assert b == pytest.approx(3.0 * (1 + (1 / 5 - 1) / (1 + (2.0 / 100) ** 2)), rel=1e-8)
    assert traj.labels == ["oe", "kd", "set", "set_edge"]


def test_conditions_times_parameter_sets(net10):
    ens = gn.Hill.random(net10, n=3, seed=1)
    screen = gn.knockout_screen(net10, order=1)
    traj = gn.simulate(ens, [0, 5], perturbations=screen)
    assert traj.y.shape == (11 * 3, 2, 10)
    assert traj.labels[:4] == ["wild type | set 0", "wild type | set 1", "wild type | set 2", "KO(G0) | set 0"]
    frame = traj.to_frame()
    assert {"condition", "parameter_set"} <= set(frame.columns)
    assert frame.groupby("condition").parameter_set.nunique().eq(3).all()
    # the same row simulated alone agrees: conditions x sets really is a plain batch
    alone_model = gn.Hill(net10, **{k: v.detach()[2] for k, v in ens.params.items()})
    alone = gn.simulate(alone_model, [0, 5], perturbations=gn.Knockout("G0"))
    np.testing.assert_allclose(alone.numpy()[0], traj.numpy()[5], rtol=1e-12)


def test_screens_and_screen_table(net10, model10):
    screen = gn.knockout_screen(net10, order=2)
    assert len(screen) == 1 + 10 + 45
    assert screen[0].label == "wild type" and screen[11].label == "KO(G0)+KO(G1)"
    assert len(gn.knockout_screen(net10, order=3, genes=["G1", "G2", "G3"])) == 1 + 3 + 3 + 1
    kd = gn.knockdown_screen(net10, fraction=0.5)
    assert len(kd) == 11 and kd[1].label == "KD(G0,0.5)"
    traj = gn.simulate(model10, [0, 30], x0=5.0, perturbations=screen[:12])
    table = gn.screen_table(traj)
    assert len(table) == 12 * 10
    wt = table[table.condition == "wild type"]
    assert np.allclose(wt.log2fc, 0.0)
    ko = table[(table.condition == "KO(G0)") & (table.gene == "G0")]
    assert ko.value.item() == 0.0 and ko.log2fc.item() < -5
    with pytest.raises(KeyError, match="reference condition 'control'"):
        gn.screen_table(traj, reference="control")


def test_compiled_conditions_are_reused_for_an_equal_list_on_the_same_model(net10, model10):
    from genenet.perturb import _COMPILED, compile_conditions

    screen = gn.knockout_screen(net10, order=2)
    first = compile_conditions(screen, model10)
    assert compile_conditions(list(gn.knockout_screen(net10, order=2)), model10) is first  # equal, not the same list
    other = compile_conditions(screen[:-1] + [gn.Condition(gn.Knockdown("G1", 0.5))], model10)
    assert other is not first and np.all(other.layers[0].mult[-1] == np.where(np.arange(10) == 1, 0.5, 1.0))
    twin = gn.Hill.random(net10, n=1, seed=2)
    assert compile_conditions(screen, twin) is not first  # another model object compiles its own
    for extra in range(5):  # a few lists per model are kept: the oldest goes
        compile_conditions(screen[: 3 + extra], model10)
    assert compile_conditions(screen, model10) is not first
    # a solve with the reused compile equals one with a fresh compile
    t = [0.0, 2.0]
    _COMPILED.clear()
    fresh = gn.simulate(model10, t, x0=3.0, perturbations=screen[:12]).numpy()
    assert len(_COMPILED[model10]) == 1
    reused = gn.simulate(model10, t, x0=3.0, perturbations=screen[:12]).numpy()
    np.testing.assert_array_equal(fresh, reused)


def test_bad_perturbations_fail_before_solving(model10):
    t = [0.0, 1.0]
    with pytest.raises(KeyError, match=r"unknown gene 'G33'.*did you mean 'G3'"):
        gn.simulate(model10, t, perturbations=gn.Knockout("G33"))
    with pytest.raises(KeyError, match="unknown gene 'X'"):
        gn.knockout_screen(model10.net, genes=["G1", "X"])
    with pytest.raises(ValueError, match=r"fraction must be finite and in \[0.0, 1.0\]"):
        gn.Knockdown("G1", 1.5)
    with pytest.raises(ValueError, match="Overexpress rate must be"):
        gn.Overexpress("G1", rate=-1.0)
    with pytest.raises(ValueError, match="Overexpress fold must be"):
        gn.Overexpress("G1", fold=-2.0)
    with pytest.raises(ValueError, match="Overexpress needs fold"):
        gn.Overexpress("G1")
    with pytest.raises(ValueError, match="Clamp value of 'G1' must be"):
        gn.Clamp("G1", -1.0)
    with pytest.raises(ValueError, match="Pulse end must be > start"):
        gn.Pulse(gn.Knockout("G1"), 2.0, 2.0)
    with pytest.raises(KeyError, match="unknown parameter 'speed'"):
        gn.simulate(model10, t, perturbations=gn.SetParameter("speed", 1.0))
    with pytest.raises(ValueError, match="both knocks out and clamps"):
        gn.simulate(model10, t, perturbations=[[gn.Knockout("G1"), gn.Clamp("G1", 2.0)]])
    with pytest.raises(ValueError, match="outside its bounds"):
        gn.simulate(model10, t, perturbations=gn.SetParameter("fold", 0.5))
    with pytest.raises(ValueError, match="duplicate condition labels"):
        gn.simulate(model10, t, perturbations=[gn.Knockout("G1"), gn.Knockout("G1")])
    with pytest.raises(ValueError, match="per-gene"):
        gn.simulate(model10, t, perturbations=gn.SetParameter("production", 1.0, edge=0))


def test_gradient_through_pulse_matches_finite_differences():
    model = _one_gene(2.0, 0.5)
    t = [0.0, 2.0, 5.0]

    def final(k):
        traj = gn.simulate(model, t, x0=1.0, params={"k": k}, rtol=1e-11, atol=1e-12,
                           perturbations=gn.Pulse(gn.Overexpress("x", fold=3.0), 1.0, 3.0))
        return traj.y[0, -1, 0]

    k = torch.tensor(0.5, requires_grad=True)
    final(k).backward()
    eps = 1e-6
    fd = (final(torch.tensor(0.5 + eps)) - final(torch.tensor(0.5 - eps))).item() / (2 * eps)
    assert k.grad.item() == pytest.approx(fd, rel=1e-6)
    assert math.isfinite(fd)

"""Structure learning: edge scoring metrics, the Sigmoid model, infer_network on synthetic and DREAM4 data."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

import genenet as gn
from reference import radau

GENES = ["A", "B", "C", "D"]


def _pairs():
    return [(a, b) for b in GENES for a in GENES if a != b]


def _brute_force(scores, true):
    """AUROC by counting pairs, AUPR as precision averaged at each true edge's rank (no ties)."""
    pos = [scores[p] for p in scores if p in true]
    neg = [scores[p] for p in scores if p not in true]
    auroc = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)])
    ranked = sorted(scores, key=lambda p: -scores[p])
    hits, precisions = 0, []
    for k, p in enumerate(ranked, start=1):
        if p in true:
            hits += 1
            precisions.append(hits / k)
    return auroc, float(np.mean(precisions))


def test_score_edges_matches_brute_force_and_limits():
    rng = np.random.default_rng(0)
    true = {("A", "B"), ("C", "A"), ("D", "C")}
    for _ in range(5):
        scores = {p: float(rng.random()) for p in _pairs()}
        frame = pd.DataFrame([(a, b, s) for (a, b), s in scores.items()], columns=["source", "target", "score"])
        got = gn.score_edges(frame, list(true))
        auroc, aupr = _brute_force(scores, true)
        assert got["auroc"] == pytest.approx(auroc) and got["aupr"] == pytest.approx(aupr)
    perfect = {p: float(p in true) for p in _pairs()}
    s = gn.score_edges(pd.Series(perfect), list(true))
    assert s["auroc"] == 1.0 and s["aupr"] == 1.0 and s["n_candidates"] == 12
    worst = gn.score_edges(pd.Series({p: -v for p, v in perfect.items()}), list(true))
    assert worst["auroc"] == 0.0
    ties = gn.score_edges(pd.Series({p: 1.0 for p in _pairs()}), list(true))
    assert ties["auroc"] == 0.5 and ties["aupr"] == pytest.approx(3 / 12)
    # square regulator x target table and a missing pair (ranks last)
    square = pd.DataFrame(0.0, index=GENES, columns=GENES)
    square.loc["A", "B"] = 1.0
    assert gn.score_edges(square, [("A", "B")])["auroc"] == 1.0
    partial = pd.Series({("A", "B"): 2.0, ("B", "A"): 1.0})
    assert gn.score_edges(partial, [("A", "B")], genes=GENES)["auroc"] == 1.0


def test_score_edges_bad_input():
    s = pd.Series({p: 1.0 for p in _pairs()})
    with pytest.raises(KeyError, match="Z"):
        gn.score_edges(s, [("A", "Z")])
    with pytest.raises(ValueError, match="both"):
        gn.score_edges(s, [])
    with pytest.raises(TypeError, match="scores"):
        gn.score_edges([1, 2, 3], [("A", "B")])
    with pytest.raises(ValueError, match="NaN"):
        gn.score_edges(pd.Series({("A", "B"): float("nan"), ("B", "A"): 1.0}), [("A", "B")])


def test_sigmoid_model_against_scipy_and_its_derivatives():
    net = gn.Network.from_edges([("A", "B", "+"), ("B", "C", "-"), ("C", "A", "-"), ("A", "C", "+")])
    m = gn.Sigmoid(net, production=[2.0, 1.5, 1.0], degradation=[0.5, 1.0, 0.8], weight=[3.0, -2.0, -4.0, 1.0],
                   bias=[-1.0, 0.5, 0.0])
    w = np.array([3.0, -2.0, -4.0, 1.0])
    g, k, b = np.array([2.0, 1.5, 1.0]), np.array([0.5, 1.0, 0.8]), np.array([-1.0, 0.5, 0.0])
    src, tgt = net.sources, net.targets_idx

    def f(t, x):
        u = b.copy()
        for e in range(len(w)):
            u[tgt[e]] += w[e] * x[src[e]]
        return g / (1 + np.exp(-u)) - k * x

    t = np.linspace(0, 10, 11)
    ref = radau(f, t, np.array([0.1, 0.5, 1.0]))
    traj = gn.simulate(m, t, x0=[0.1, 0.5, 1.0], rtol=1e-10, atol=1e-12, device="cpu")
    np.testing.assert_allclose(traj.numpy()[0], ref, rtol=1e-7, atol=1e-9)
    x = torch.tensor([[0.3, 0.7, 1.2]])
    p = m.row_params(None, 1, device=torch.device("cpu"), dtype=torch.float64)
    J = m.production_jacobian(None, x, p) - m.degradation_jacobian(None, x, p)
    J_auto = torch.autograd.functional.jacobian(lambda xx: m.rhs(None, xx[None], p)[0], x[0])
    torch.testing.assert_close(J[0], J_auto)
    S = gn.sensitivities(m, t, x0=[0.1, 0.5, 1.0], wrt=["production", "weight", "bias", "degradation"],
                         device="cpu")

    class AutoSigmoid(gn.Sigmoid):
        production_jvp = gn.Model.production_jvp
        degradation_jvp = gn.Model.degradation_jvp

    auto = AutoSigmoid(net, **{k_: v.detach()[0] for k_, v in m.params.items()})
    S2 = gn.sensitivities(auto, t, x0=[0.1, 0.5, 1.0], wrt=["production", "weight", "bias", "degradation"],
                          device="cpu")
    torch.testing.assert_close(S.dy, S2.dy, rtol=1e-10, atol=1e-12)


def _synthetic_courses(seed=0):
    """Time courses of a known 5-gene Sigmoid network from 6 initial states, 2% noise."""
    net = gn.Network.from_edges([("A", "B", "+"), ("B", "C", "-"), ("C", "D", "+"), ("D", "E", "-"),
                                 ("E", "A", "-"), ("A", "D", "+")])
    model = gn.Sigmoid(net, production=2.0, degradation=1.0, weight=[4.0, -4.0, 4.0, -4.0, -4.0, 3.0], bias=-1.0)
    rng = np.random.default_rng(seed)
    frames = []
    for c in range(6):
        traj = gn.simulate(model, np.linspace(0, 6, 25), x0=rng.uniform(0, 2, 5), device="cpu")
        frame = gn.ExpressionData.from_trajectory(traj, noise=0.02, seed=c).table
        frames.append(frame.assign(condition=f"course{c}"))
    return net, gn.ExpressionData.from_frame(pd.concat(frames))


def test_infer_network_recovers_a_known_network():
    net, data = _synthetic_courses()
    inferred = gn.infer_network(data, l1=0.005)  # clean data: a light penalty
    score = inferred.score(net)
    assert score["auroc"] > 0.9 and score["aupr"] > 0.7, score
    top = inferred.network(top=len(net.edges))
    signs = {(e.source, e.target): e.sign for e in net.edges}
    found = [e for e in top.edges if (e.source, e.target) in signs]
    assert len(found) >= 5
    assert all(e.sign == signs[(e.source, e.target)] for e in found)  # signs of the true edges recovered
    traj = gn.simulate(inferred.model, [0, 1, 2], x0=1.0, device="cpu")  # the fitted model simulates
    assert traj.success


def test_infer_network_bad_input():
    _, data = _synthetic_courses()
    with pytest.raises(KeyError, match="Z"):
        gn.infer_network(data, genes=["A", "Z"])
    with pytest.raises(ValueError, match="l1"):
        gn.infer_network(data, l1=-1)
    short = gn.ExpressionData.from_frame(data.table[data.table.time < 0.5])
    with pytest.raises(ValueError, match="time points"):
        gn.infer_network(short)
    with pytest.raises(ValueError, match="exactly one"):
        gn.infer_network(data).network()


def test_dream4_reader():
    data, gold = gn.load_dream4(1)
    assert data.conditions == [f"ts{i}" for i in range(1, 6)]
    assert len(data.times) == 21 and len(data.genes) == 10 and len(data) == 1050
    assert len(gold) == 90 and gold.label.sum() == 15
    with pytest.raises(ValueError, match="1, 2, 3 and 4"):
        gn.load_dream4(5)


def test_dream4_inference_beats_correlation_and_linear_ode_baselines():
    """Issue 4: on the DREAM4 size-10 time series (networks 1-4), the mean AUROC and AUPR of
    infer_network exceed both baselines computed on the same data."""
    ours, corr, lin = [], [], []
    for n in (1, 2, 3, 4):
        data, gold = gn.load_dream4(n)
        ours.append(list(gn.infer_network(data, input_window=(0, 500)).score(gold).values())[:2])
        corr.append(list(gn.score_edges(gn.baseline_scores(data, "correlation"), gold).values())[:2])
        lin.append(list(gn.score_edges(gn.baseline_scores(data, "linear-ode"), gold).values())[:2])
    ours, corr, lin = (np.mean(a, axis=0) for a in (ours, corr, lin))
    assert (ours > corr).all() and (ours > lin).all(), (ours, corr, lin)

"""Forward sensitivities: finite differences, backpropagation and the generic autodiff path."""

import numpy as np
import pytest
import torch

import genenet as gn
from reference import random_network

T = np.linspace(0, 5, 6)


@pytest.fixture(scope="module")
def setup():
    net = random_network(6, 2, seed=3)
    model = gn.Hill.random(net, n=1, seed=2)
    g = net.genes
    conds = [gn.Condition([]), gn.Knockout(g[0]), gn.Pulse(gn.Overexpress(g[1], 3.0), 1.0, 2.5),
             gn.SetParameter("degradation", 0.5, gene=g[2]), gn.Pulse(gn.Clamp(g[3], 0.7), 2.0, 3.0)]
    return model, conds, np.linspace(0.5, 3, 6)


WRT = ["production", "degradation", "threshold", "hill", "fold", "x0"]


@pytest.mark.heavy
def test_sensitivities_match_central_differences(setup):
    model, conds, x0 = setup
    S = gn.sensitivities(model, T, x0=x0, perturbations=conds, wrt=WRT, rtol=1e-10, atol=1e-12, device="cpu")
    G = model.n_genes
    assert S.dy.shape == (len(conds), len(T), 3 * G + 3 * model.net.n_edges, G)
    scale = S.dy.abs().amax(dim=(0, 1, 3))  # per direction
    base = {k: v.detach()[0].clone() for k, v in model.params.items()}

    def run(**kw):
        return gn.simulate(model, T, perturbations=conds, rtol=1e-12, atol=1e-14, device="cpu", **kw).y.detach()

    rng = np.random.default_rng(0)
    for j in sorted(rng.choice(len(S.wrt), 18, replace=False)):  # every parameter kind is sampled
        name, label = S.wrt[j]
        if name == "x0":
            i = model.genes.index(label)
            h = 1e-6 * x0[i]
            xp, xm = x0.copy(), x0.copy()
            xp[i] += h
            xm[i] -= h
            fd = (run(x0=xp) - run(x0=xm)) / (2 * h)
        else:
            e = model.labels(name).index(label)
            h = 1e-6 * float(base[name][e])
            vp, vm = base[name].clone(), base[name].clone()
            vp[e] += h
            vm[e] -= h
            fd = (run(x0=x0, params={name: vp}) - run(x0=x0, params={name: vm})) / (2 * h)
        # central differences carry solver noise ~ rtol |y| / h on top of O(h^2)
        noise = 1e-12 * float(S.trajectory.y.abs().max()) / h
        err = float((fd - S.dy[:, :, j]).abs().max())
        assert err < 1e-5 * float(scale[j]) + 10 * noise, (name, label, err, float(scale[j]))
    # knocked-out and clamped genes have zero sensitivity where they are fixed
    ko = model.genes.index(model.genes[0])
    assert S.dy[1, :, :, ko].abs().max() == 0
    clamp_rows = (T >= 2.0) & (T < 3.0)
    assert S.dy[4, clamp_rows, :, 3].abs().max() == 0


def test_sensitivities_equal_backpropagation_of_the_same_solution(setup):
    model, conds, x0 = setup
    S = gn.sensitivities(model, T, x0=x0, perturbations=conds, wrt=["threshold", "fold"], rtol=1e-6, atol=1e-8,
                         device="cpu")
    thr = model.params["threshold"].detach()[0].clone().requires_grad_(True)
    fold = model.params["fold"].detach()[0].clone().requires_grad_(True)
    y = gn.simulate(model, T, x0=x0, perturbations=conds, params={"threshold": thr, "fold": fold}, rtol=1e-6,
                    atol=1e-8, device="cpu").y
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    g_thr, g_fold = torch.autograd.grad((w * y).sum(), (thr, fold))
    fwd = torch.einsum("btqg,btg->q", S.dy, w)
    E = model.net.n_edges
    # exact derivative of the computed solution both ways: agreement to rounding, not to rtol
    torch.testing.assert_close(fwd[:E], g_thr, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(fwd[E:], g_fold, rtol=1e-9, atol=1e-11)


class AutodiffHill(gn.Hill):
    """Hill kinetics with the generic (torch.func) tangent path instead of the closed form."""

    production_jvp = gn.Model.production_jvp
    degradation_jvp = gn.Model.degradation_jvp


def test_generic_autodiff_tangents_equal_closed_form(setup):
    model, conds, x0 = setup
    auto = AutodiffHill(model.net, **{k: v.detach()[0] for k, v in model.params.items()})
    a = gn.sensitivities(model, T, x0=x0, perturbations=conds, wrt=WRT, device="cpu")
    b = gn.sensitivities(auto, T, x0=x0, perturbations=conds, wrt=WRT, device="cpu")
    torch.testing.assert_close(a.dy, b.dy, rtol=1e-10, atol=1e-12)


def test_sensitivities_table_and_normalized(setup):
    model, conds, x0 = setup
    S = gn.sensitivities(model, T, x0=x0, perturbations=conds[:2], wrt="production", device="cpu")
    frame = S.to_frame()
    assert len(frame) == S.dy.numel()
    assert set(frame.columns) >= {"condition", "time", "gene", "parameter", "entry", "sensitivity"}
    N = S.normalized()
    g = model.params["production"].detach()[0]
    i = 2
    expected = S.dy[0, -1, i, i] * g[i] / S.trajectory.y[0, -1, i]
    torch.testing.assert_close(N[0, -1, i, i], expected)


def test_sensitivities_bad_input(setup):
    model, conds, x0 = setup
    with pytest.raises(KeyError, match="nope"):
        gn.sensitivities(model, T, wrt=["nope"], device="cpu")
    with pytest.raises(ValueError, match="adaptive"):
        gn.sensitivities(model, T, wrt=["production"], method="rk4", device="cpu")

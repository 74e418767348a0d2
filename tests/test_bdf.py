"""method="bdf": the native variable-order BDF kernel (genenet/native/bdf.h) against scipy's Radau at
tight tolerance (an independent method), against scipy's BDF (the same algorithm with two of CVODE's
economies: no more RHS evaluations, an error like scipy's), on the Hill model and compiled models,
with pulses, early steady stop and failure reporting; and its refusals where it cannot run."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import genenet as gn
from genenet import native
from genenet.fit import FitProblem
from genenet.solvers import Status

pytestmark = [pytest.mark.native, pytest.mark.usefixtures("native_kernel")]

DATA = Path(__file__).parent / "data"


def _robertson():
    # the classic stiff chemical kinetics test (Robertson 1966), as a reaction network
    return gn.ReactionNetwork([("r1", "A -> B", "k1 * A"), ("r2", "B + B -> C + B", "k2 * B * B"),
                               ("r3", "B + C -> A + C", "k3 * B * C")],
                              params={"k1": 0.04, "k2": 3e7, "k3": 1e4}, initial={"A": 1.0, "B": 0.0, "C": 0.0})


def _robertson_f(t, y):
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]


def _robertson_jac(t, y):
    return [[-0.04, 1e4 * y[2], 1e4 * y[1]], [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]], [0, 6e7 * y[1], 0]]


def test_robertson_against_radau_over_eleven_decades():
    m = _robertson()
    t = np.concatenate([[0.0], np.logspace(-5, 6, 23)])
    ref = solve_ivp(_robertson_f, (0, t[-1]), [1.0, 0, 0], method="Radau", t_eval=t, rtol=1e-12, atol=1e-20,
                    jac=_robertson_jac).y.T
    traj = gn.simulate(m, t, method="bdf", rtol=1e-8, atol=1e-14)
    y = traj.y[0].numpy()
    assert traj.status.tolist() == [0]
    # relative to each species' own size at each time (B spans 4e-7 .. 1e-11), above 100 atol
    assert (np.abs(y - ref) <= 1e-6 * np.abs(ref) + 1e-12).all()
    assert np.abs(y.sum(axis=1) - 1).max() < 1e-10  # mass: BDF conserves linear invariants
    # the steps are far fewer than an explicit method's (which is limited by stability, h < ~1e-3)
    assert int(traj.stats["n_steps"][0]) < 3000


def test_same_work_and_accuracy_as_scipy_bdf():
    # the kernel steps as scipy.integrate.BDF does (same formulas, step and order control, Jacobian only
    # on a Newton failure) with CVODE's LU reuse and a Newton tolerance that does not tighten with rtol:
    # no more RHS than scipy, an error against Radau like scipy's, a solution within a few rtol of scipy's
    m = _robertson()
    t = np.linspace(0.0, 40.0, 41)
    exact = solve_ivp(_robertson_f, (0, 40), [1.0, 0, 0], method="Radau", t_eval=t, rtol=1e-12, atol=1e-20,
                      jac=_robertson_jac).y.T
    scale = np.abs(exact).max(axis=0)
    for rtol in (1e-4, 1e-7, 1e-10):
        ref = solve_ivp(_robertson_f, (0, 40), [1.0, 0, 0], method="BDF", t_eval=t, rtol=rtol, atol=rtol * 1e-6,
                        jac=_robertson_jac)
        traj = gn.simulate(m, t, method="bdf", rtol=rtol, atol=rtol * 1e-6)
        y = traj.y[0].numpy()
        assert int(traj.stats["n_rhs"][0]) <= 1.05 * ref.nfev, (traj.stats, ref.nfev)  # measured 0.71-0.89
        err, err_scipy = (np.max(np.abs(v - exact) / scale) for v in (y, ref.y.T))
        assert err < 2 * err_scipy, (err, err_scipy)  # measured 1.16-1.48
        assert np.max(np.abs(y - ref.y.T) / scale) < 5 * rtol  # measured 0.17-2.5 rtol


def test_stiff_hill_network_against_radau_and_rodas5():
    rng = np.random.default_rng(1)
    model = gn.Hill.random_stiff(gn.Network.random(15, 3, seed=1), seed=1, rng=rng)  # rates over 5 decades
    levels = (model.params["production"] / model.params["degradation"]).detach()[0].numpy()
    x0 = levels * rng.uniform(0.2, 1.5, 15)
    t = np.linspace(0, 10, 11)
    p = model.row_params(None, 1, device=torch.device("cpu"), dtype=torch.float64)

    def f(_, x):
        with torch.no_grad():
            return model.rhs(torch.zeros(1, dtype=torch.float64), torch.as_tensor(x)[None], p)[0].numpy()

    def jac(_, x):
        xt = torch.as_tensor(x)[None]
        with torch.no_grad():
            return (model.production_jacobian(None, xt, p) - model.degradation_jacobian(None, xt, p))[0].numpy()

    ref = solve_ivp(f, (0, 10), x0, method="Radau", t_eval=t, rtol=1e-9, atol=1e-11, jac=jac).y.T
    got = gn.simulate(model, t, x0=x0, method="bdf", rtol=1e-8, atol=1e-10)
    scale = np.abs(ref).max()
    assert np.abs(got.y[0].numpy() - ref).max() / scale < 1e-5
    with torch.no_grad():
        stiff = gn.simulate(model, t, x0=x0, method="rodas5", rtol=1e-8, atol=1e-10)
    assert np.abs(got.y[0].numpy() - stiff.y[0].numpy()).max() / scale < 1e-5


def test_imported_sbml_model_against_roadrunner_accuracy_class():
    # BIOMD0000000012 (repressilator) from SBML: bdf at rtol 1e-9 within 1e-5 of Radau at 1e-12
    pytest.importorskip("libsbml")
    m = gn.read_sbml(DATA / "BIOMD0000000012.xml")
    t = np.linspace(0, 200, 41)
    with torch.no_grad():
        ref = gn.simulate(m, t, method="rodas5", rtol=1e-11, atol=1e-13).y[0].numpy()
        got = gn.simulate(m, t, method="bdf", rtol=1e-9, atol=1e-12)
    assert got.status.tolist() == [0]
    scale = np.abs(ref).max(axis=0)
    assert np.max(np.abs(got.y[0].numpy() - ref) / scale) < 1e-5


def test_conditions_pulses_and_rows_match_rodas5():
    # knockouts, a knockdown pulse (switching times: a chain of solves) and many rows in one call
    net = gn.Network.random(12, 2, seed=3)
    model = gn.Hill.random(net, n=4, seed=3)  # 4 parameter sets x 3 conditions = 12 rows
    gene = model.genes[0]
    conds = [gn.Condition([]), gn.Knockout(gene), gn.Pulse(gn.Knockdown(gene, 0.2), start=2.0, end=6.0)]
    t = np.linspace(0, 10, 21)
    with torch.no_grad():
        ref = gn.simulate(model, t, perturbations=conds, method="rodas5", rtol=1e-10, atol=1e-12)
        got = gn.simulate(model, t, perturbations=conds, method="bdf", rtol=1e-8, atol=1e-10)
    assert got.y.shape == ref.y.shape and got.y.shape[0] == 12 and (got.status == 0).all()
    scale = ref.y.abs().amax(dim=(1,), keepdim=True).clamp(min=1e-3)
    assert ((got.y - ref.y).abs() / scale).max() < 1e-5


def test_steady_state_early_stop():
    net = gn.Network.random(8, 2, seed=4)
    model = gn.Hill.random(net, n=3, seed=4)
    t = np.linspace(0, 500, 11)
    with torch.no_grad():
        early = gn.simulate(model, t, method="bdf", rtol=1e-8, atol=1e-10, steady_tol=1e-9)
        full = gn.simulate(model, t, method="bdf", rtol=1e-8, atol=1e-10)
    assert (early.stats["n_steps"] < full.stats["n_steps"]).all()
    torch.testing.assert_close(early.y[:, -1], full.y[:, -1], rtol=1e-6, atol=1e-8)


def test_blow_up_is_reported_per_row_not_returned_as_numbers():
    # dx/dt = k x^2 from x0 = 1 blows up at t = 1/k: the row with k = 1 fails before t = 2, k = 0.1 does not
    m = gn.ReactionNetwork([("auto", "X -> X + X", "k * X * X")], params={"k": 1.0}, initial={"X": 1.0})
    t = np.linspace(0, 2, 5)
    traj = gn.simulate(m, t, params={"k": torch.tensor([[1.0], [0.1]], dtype=torch.float64)}, method="bdf",
                       rtol=1e-6, atol=1e-9, throw=False, max_steps=5000)
    assert traj.status[0] != Status.SUCCESS and traj.status[1] == Status.SUCCESS
    assert torch.isnan(traj.y[0, -1]).all()  # nothing after the failure is reported as a value
    np.testing.assert_allclose(traj.y[1, :, 0].numpy(), 1 / (1 - 0.1 * t), rtol=1e-4)


def test_refusals_name_the_reason():
    m = _robertson()
    t = np.linspace(0, 1, 3)
    # no adjoint: a fit refuses it, and a result computed with it carries no gradient
    data = gn.ExpressionData.from_trajectory(gn.simulate(m, t, method="rodas5"))
    with pytest.raises(ValueError, match="no adjoint"):
        FitProblem(m, data, free=["k1"], method="bdf")
    k1 = torch.tensor([[0.04]], dtype=torch.float64, requires_grad=True)
    assert not gn.simulate(m, t, params={"k1": k1}, method="bdf").y.requires_grad
    # the torch loop has no BDF
    with native.torch_path(), pytest.raises(ValueError, match="bdf.*native"):
        gn.simulate(m, t, method="bdf")
    # a model without a native form (arbitrary torch functions)
    f = gn.Model.from_functions(["x"], lambda t, x, p: 1.0 + 0 * x, lambda t, x, p: x, {})
    with pytest.raises(ValueError, match="no native form"):
        gn.simulate(f, t, method="bdf")

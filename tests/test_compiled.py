"""Compiled symbolic models in the native kernels (genenet.native.compiled): every native path equals
the torch loop to rounding (which test_kinetics checks against scipy Radau), gradients match central
finite differences, and the native path is the one that ran."""

from pathlib import Path

import numpy as np
import pytest
import torch

import genenet as gn
from genenet import native
from genenet.fit import FitProblem
from genenet.native import compiled

pytestmark = [pytest.mark.native, pytest.mark.usefixtures("native_kernel")]

DATA = Path(__file__).parent / "data"


def _network(**kw):
    # synthesis under feedback, Michaelis-Menten conversion, binding (a conservation law) and decay
    return gn.ReactionNetwork(
        [("syn", "-> S", "ks * hill_rep(P, K, n)"), ("conv", "S -> P", "kcat * S / (Km + S)"), ("P ->", "kd * P"),
         ("bind", "P + B -> PB", "kon * P * B"), ("unbind", "PB -> P + B", "koff * PB")],
        params={"ks": 2.0, "K": 0.7, "n": 2.5, "kcat": 2.0, "Km": 0.5, "kd": 0.3, "kon": 1.2, "koff": 0.4},
        initial={"S": 0.3, "P": 0.1, "B": 1.0, "PB": 0.2}, **kw)


class _Spy:
    """Counts calls of a genenet.native.compiled entry point."""

    def __init__(self, monkeypatch, name):
        self.calls, fn = 0, getattr(compiled, name)

        def wrapped(*a, **k):
            self.calls += 1
            return fn(*a, **k)
        monkeypatch.setattr(compiled, name, wrapped)


def _assert_gradients_match_the_torch_loop(m, loss, rtol, atol):
    """d loss / d (every raw parameter of m): the native adjoint's against the torch loop's."""
    got = torch.autograd.grad(loss(), list(m.raw.values()))
    with native.torch_path():
        ref = torch.autograd.grad(loss(), list(m.raw.values()))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


CONDITIONS = [gn.Condition([]), gn.Knockout("S"), gn.Knockdown("E", 0.6), gn.Overexpress("P", rate=0.5),
              gn.Clamp("B", 0.4), gn.Knockdown("E", 0.5) + gn.Overexpress("S", fold=2.0)]


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rodas5", "rodas4"])
def test_native_solve_equals_the_torch_loop_under_perturbations(method, monkeypatch):
    m = _network(targets={"E": ["conv"]})
    t = np.linspace(0, 12, 13)
    spy = _Spy(monkeypatch, "integrate_rodas" if method.startswith("rodas") else "integrate_erk")
    with torch.no_grad():
        got = gn.simulate(m, t, perturbations=CONDITIONS, method=method, rtol=1e-9, atol=1e-11)
        with native.torch_path():
            ref = gn.simulate(m, t, perturbations=CONDITIONS, method=method, rtol=1e-9, atol=1e-11)
    assert spy.calls >= 1
    assert bool((got.status == 0).all())
    torch.testing.assert_close(got.y, ref.y, rtol=1e-9, atol=1e-11)
    # the clamp holds B; binding conserves B + PB elsewhere
    np.testing.assert_allclose(got.y[4, :, 2].numpy(), 0.4, atol=1e-12)
    tot = (got.y[0, :, 2] + got.y[0, :, 3]).numpy()
    np.testing.assert_allclose(tot, 1.2, rtol=1e-8)


def test_native_gradient_matches_the_torch_loop_and_finite_differences(monkeypatch):
    m = _network(targets={"E": ["conv"]})
    t = np.linspace(0, 6, 7)
    conds = [gn.Condition([]), gn.Knockdown("E", 0.5)]
    spy = _Spy(monkeypatch, "integrate_erk_grad")
    names = ["ks", "n", "Km", "kon"]

    def loss(values, torch_loop=False):
        params = {k: v for k, v in zip(names, values)}
        if torch_loop:
            with native.torch_path():
                y = gn.simulate(m, t, perturbations=conds, params=params, rtol=1e-10, atol=1e-12).y
        else:
            y = gn.simulate(m, t, perturbations=conds, params=params, rtol=1e-10, atol=1e-12).y
        return (y ** 2 * torch.arange(1, 5, dtype=y.dtype)).sum()

    base = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (2.0, 2.5, 0.5, 1.2)]
    g = torch.autograd.grad(loss(base), base)
    assert spy.calls >= 1
    g_ref = torch.autograd.grad(loss(base, torch_loop=True), base)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        for i, gi in enumerate(g):
            h = 1e-5 * float(base[i])
            up = [b.detach().clone() for b in base]
            dn = [b.detach().clone() for b in base]
            up[i] += h
            dn[i] -= h
            fd = (loss(up) - loss(dn)) / (2 * h)
            assert abs(float(gi) - float(fd)) <= 1e-5 * max(1.0, abs(float(fd))), (names[i], float(gi), float(fd))


def test_native_forward_sensitivities_match_the_torch_loop(monkeypatch):
    m = _network(targets={"E": ["conv"]})
    t = np.linspace(0, 8, 9)
    spy = _Spy(monkeypatch, "integrate_erk")
    got = gn.sensitivities(m, t, perturbations=[gn.Condition([]), gn.Knockdown("E", 0.5)],
                           wrt=["kcat", "n", "reaction_scale", "x0"], rtol=1e-10, atol=1e-12)
    assert spy.calls >= 1
    with native.torch_path():
        ref = gn.sensitivities(m, t, perturbations=[gn.Condition([]), gn.Knockdown("E", 0.5)],
                               wrt=["kcat", "n", "reaction_scale", "x0"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.dy, ref.dy, rtol=1e-8, atol=1e-10)


def test_native_steady_states_match_the_torch_loop(monkeypatch):
    m = _network(targets={"E": ["conv"]})
    conds = [gn.Condition([]), gn.Knockdown("E", 0.5), gn.Overexpress("S", fold=3.0)]
    spy = _Spy(monkeypatch, "roots")
    got = gn.steady_state(m, conds)
    assert spy.calls >= 1
    with native.torch_path():
        ref = gn.steady_state(m, conds)
    assert bool(got.converged.all()) and bool(ref.converged.all())
    torch.testing.assert_close(got.x, ref.x, rtol=1e-8, atol=1e-10)
    # at a steady state: f = 0, and B + PB kept at its start's total
    f, _ = compiled.rhs(m.native_spec(m.row_params(None, 1, device="cpu", dtype=torch.float64)), got.x[:1])
    assert float(f.abs().max()) < 1e-9
    np.testing.assert_allclose((got.x[:, 2] + got.x[:, 3]).numpy(), 1.2, rtol=1e-8)


def test_compiled_jacobian_matches_autodiff():
    m = _network(targets={"E": ["conv"]})
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.uniform(0.0, 2.0, (5, 4)))
    x[0, 1] = 0.0  # hill_rep at P = 0
    p = m.row_params(None, 5, device="cpu", dtype=torch.float64)
    p["reaction_scale"] = torch.as_tensor(rng.uniform(0.5, 1.5, (5, 5)))
    f, J = compiled.rhs(m.native_spec(p), x, jacobian=True)
    t = torch.zeros(5, dtype=x.dtype)
    torch.testing.assert_close(f, m.rhs(t, x, p), rtol=1e-13, atol=1e-13)
    J_ref = torch.func.vmap(torch.func.jacrev(lambda xi, pi: m.rhs(t[:1], xi[None], {k: v[None] for k, v in
                                                                                    pi.items()})[0]))(x, p)
    torch.testing.assert_close(J, J_ref, rtol=1e-12, atol=1e-12)


def test_step_functions_gamma_and_piecewise_compile_with_their_derivatives():
    # SBML math beyond the usual rate laws: floor and ceiling (derivative 0, as torch's autograd takes
    # it), gamma (d/dx = gamma digamma, digamma written in the header), abs and a piecewise rate
    import sympy as sp
    S, P, ks, kcat, kd = sp.symbols("S P ks kcat kd", real=True)
    m = gn.ReactionNetwork(
        [("syn", "-> S", ks * sp.gamma(1 + 3 * S) + sp.floor(2 * P) * S + sp.ceiling(S)),
         ("conv", "S -> P", kcat * S * sp.Piecewise((1, S > 0.5), (0.2, True))), ("P ->", kd * P * sp.Abs(P - 1))],
        params={"ks": 0.3, "kcat": 2.0, "kd": 0.3}, initial={"S": 0.3, "P": 0.1})
    x = torch.tensor([[0.3, 0.7], [1.7, 1.2], [2.5, 0.2], [0.1, 0.3], [0.02, 2.0]], dtype=torch.float64)
    p = m.row_params(None, 5, device="cpu", dtype=torch.float64)
    f, J = compiled.rhs(m.native_spec(p), x, jacobian=True)
    t = torch.zeros(5, dtype=x.dtype)
    torch.testing.assert_close(f, m.rhs(t, x, p).detach(), rtol=1e-13, atol=1e-13)
    J_ref = torch.func.vmap(torch.func.jacrev(lambda xi, pi: m.rhs(t[:1], xi[None], {k: v[None] for k, v in
                                                                                    pi.items()})[0]))(x, p)
    torch.testing.assert_close(J, J_ref.detach(), rtol=1e-12, atol=1e-12)


def test_imported_repressilator_runs_natively_and_equals_the_torch_loop(monkeypatch):
    pytest.importorskip("libsbml")
    m = gn.read_sbml(DATA / "BIOMD0000000012.xml")
    spy = _Spy(monkeypatch, "integrate_erk")
    t = np.linspace(0, 200, 101)
    with torch.no_grad():
        got = gn.simulate(m, t, rtol=1e-9, atol=1e-11)
        with native.torch_path():
            ref = gn.simulate(m, t, rtol=1e-9, atol=1e-11)
    assert spy.calls == 1
    torch.testing.assert_close(got.y, ref.y, rtol=1e-8, atol=1e-9)


def _forced():
    # a drive that reads t (a light-dark cycle, a decaying dose) into Michaelis-Menten conversion and binding
    return gn.ReactionNetwork(
        [("syn", "-> S", "ks * (1 + 0.8 * sin(w * t)) * hill_rep(P, K, 2)"), ("conv", "S -> P", "kcat * S / (Km + S)"),
         ("P ->", "kd * P * (1 + exp(-t / tau))"), ("bind", "P + B -> PB", "kon * P * B"),
         ("PB -> P + B", "koff * PB")],
        params={"ks": 2.0, "w": 1.3, "K": 0.7, "kcat": 2.0, "Km": 0.5, "kd": 0.3, "tau": 2.0, "kon": 1.2, "koff": 0.4},
        initial={"S": 0.3, "P": 0.1, "B": 1.0, "PB": 0.2})


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "rodas5", "rodas4"])
def test_time_dependent_rates_run_natively_and_equal_the_torch_loop(method, monkeypatch):
    # each stage at its own time; the Rosenbrock stages add d_s h df/dt from the generated dv/dt
    m = _forced()
    t = np.linspace(0, 8, 17)
    conds = [gn.Condition([]), gn.Knockdown("S", 0.5), gn.Overexpress("P", rate=0.5)]
    spy = _Spy(monkeypatch, "integrate_rodas" if method.startswith("rodas") else "integrate_erk")
    with torch.no_grad():
        got = gn.simulate(m, t, perturbations=conds, method=method, rtol=1e-8, atol=1e-10)
        with native.torch_path():
            ref = gn.simulate(m, t, perturbations=conds, method=method, rtol=1e-8, atol=1e-10)
    assert spy.calls >= 1 and bool((got.status == 0).all())
    torch.testing.assert_close(got.y, ref.y, rtol=1e-9, atol=1e-11)
    if method == "rodas5":  # and both solve the ODE: scipy Radau at tight tolerance
        from scipy.integrate import solve_ivp

        p = m.row_params(None, 1, device="cpu", dtype=torch.float64)

        def f(s, x):
            with torch.no_grad():
                return m.rhs(torch.tensor([s], dtype=torch.float64), torch.as_tensor(x)[None], p)[0].numpy()

        sol = solve_ivp(f, (0, 8), got.y[0, 0].numpy(), method="Radau", t_eval=t, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(got.y[0].numpy(), sol.y.T, rtol=1e-6, atol=1e-8)


def test_time_dependent_gradients_and_sensitivities_match_the_torch_loop(monkeypatch):
    m = _forced()
    t = np.linspace(0, 6, 7)
    spy = _Spy(monkeypatch, "integrate_erk_grad")

    def loss():
        return gn.simulate(m, t, rtol=1e-10, atol=1e-12).y.square().sum()

    _assert_gradients_match_the_torch_loop(m, loss, rtol=1e-7, atol=1e-10)
    assert spy.calls == 1
    got = gn.sensitivities(m, t, wrt=["w", "tau", "x0"], rtol=1e-10, atol=1e-12)
    with native.torch_path():
        ref = gn.sensitivities(m, t, wrt=["w", "tau", "x0"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.dy, ref.dy, rtol=1e-8, atol=1e-10)


def test_second_derivatives_take_the_torch_loop_and_match_finite_differences():
    m = _network()
    t = np.linspace(0, 4, 9)
    data = gn.ExpressionData.from_trajectory(gn.simulate(m, t, params={"ks": 2.3, "kcat": 1.7}, rtol=1e-11,
                                                         atol=1e-12))
    prob = FitProblem(m, data, free=["ks", "kcat"], rtol=1e-10, atol=1e-12)
    theta = prob.theta0[None]
    v = torch.tensor([[1.0, -0.5]], dtype=theta.dtype)
    hv = prob.hvp(theta, v)
    h = 1e-5
    fd = (prob.gradient(theta + h * v)[1] - prob.gradient(theta - h * v)[1]) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-7)
    # a second derivative through the native (first-order) adjoint outside second_order() says what to do
    y = gn.simulate(m, t).y
    (g,) = torch.autograd.grad(y.sum(), m.params["ks"], create_graph=True) if False else (None,)
    with pytest.raises(RuntimeError, match="second_order"):
        torch.autograd.grad((y ** 2).sum(), list(m.parameters()), create_graph=True)


def _network_model(kind):
    net = gn.Network.random(12, 2, seed=3)
    if kind == "two_stage":
        rng = np.random.default_rng(0)
        return gn.TwoStage(net, transcription=rng.uniform(5, 15, (2, 12)), hill=rng.uniform(1.5, 4, (2, net.n_edges)))
    w = np.random.default_rng(0).normal(0.0, 2.0, (2, net.n_edges))
    return gn.Sigmoid(net, weight=w, bias=np.array([[-0.5], [0.5]]) * np.ones((2, 12)))


@pytest.mark.parametrize("kind", ["two_stage", "sigmoid"])
def test_network_models_run_natively_through_their_compiled_form(kind, monkeypatch):
    # TwoStage and Sigmoid: simulate and the adjoint gradient in the kernels, equal to their own torch code
    m = _network_model(kind)
    gene = m.net.genes[0]
    conds = [gn.Condition([]), gn.Knockout(gene), gn.Knockdown(m.net.genes[1], 0.5), gn.Overexpress(gene, fold=2.0)]
    t = np.linspace(0, 10, 11)
    spy = _Spy(monkeypatch, "integrate_erk")
    with torch.no_grad():
        got = gn.simulate(m, t, perturbations=conds, rtol=1e-9, atol=1e-11)
        with native.torch_path():
            ref = gn.simulate(m, t, perturbations=conds, rtol=1e-9, atol=1e-11)
    assert spy.calls == 1 and got.y.shape[0] == 8
    torch.testing.assert_close(got.y, ref.y, rtol=1e-8, atol=1e-10)

    def loss():
        return gn.simulate(m, t[:6], rtol=1e-10, atol=1e-12).y.square().sum()

    _assert_gradients_match_the_torch_loop(m, loss, rtol=1e-6, atol=1e-9)
    assert spy.calls == 2

    class Other(type(m)):  # other kinetics: not the compiled form's equations
        def production(self, t, x, p):
            return 2 * super().production(t, x, p)

    other = Other.__new__(Other)
    other.__dict__.update(m.__dict__)
    assert other.native_spec(m.row_params(None, 2, device="cpu", dtype=torch.float64)) is None


def test_sigmoid_form_stays_finite_far_in_the_tails():
    # weights that drive the input to -1000: e^{-u} overflows, the logistic and its derivative must not
    net = gn.Network.random(4, 1, seed=0)
    m = gn.Sigmoid(net, weight=np.full(net.n_edges, 400.0), bias=-1000.0)
    x = torch.tensor([[0.0, 0.5, 1.0, 5.0], [2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    p = m.row_params(None, 2, device="cpu", dtype=torch.float64)
    f, J = compiled.rhs(m.native_spec(p), x, jacobian=True)
    assert bool(torch.isfinite(f).all() and torch.isfinite(J).all())
    torch.testing.assert_close(f, m.rhs(torch.zeros(2), x, p).detach(), rtol=1e-13, atol=1e-13)
    J_ref = torch.func.vmap(torch.func.jacrev(lambda xi, pi: m.rhs(torch.zeros(1), xi[None], {k: v[None] for k, v in
                                                                                           pi.items()})[0]))(x, p)
    torch.testing.assert_close(J, J_ref.detach(), rtol=1e-12, atol=1e-12)


def test_time_derivative_of_the_rates_matches_autodiff():
    # the Rosenbrock steps' df/dt (torch loop and kernels): generated dv/dt under knockdown, input and clamp
    from genenet.batch import build_batch
    from genenet.solvers.jacobian import autodiff_time_derivative

    m = _forced()
    conds = [gn.Knockdown("S", 0.5), gn.Overexpress("P", rate=0.5), gn.Clamp("B", 0.4)]
    term = build_batch(m, conds, None, None, device=torch.device("cpu"), dtype=torch.float64).term
    t = torch.tensor([0.3, 1.3, 4.0], dtype=torch.float64)
    args = term.segment(t, term.initial_args)
    x = torch.as_tensor(np.random.default_rng(0).uniform(0.1, 2.0, (3, 4)))
    ft = term.time_derivative(t, x, args).detach()
    torch.testing.assert_close(ft, autodiff_time_derivative(term.vf, t, x, args).detach(), rtol=1e-13, atol=1e-14)
    assert bool((ft[:, 0] != 0).all()) and float(ft[2, 2].abs()) == 0.0  # the drive acts; the clamp holds


def test_powers_with_parameter_exponents_fast_path_and_edge_cases():
    # b^n with a fitted (non-integer) exponent: e^(n log b) in vectorized loops where b is a positive
    # normal number and |n log b| <= 700, libm's pow elsewhere (0, subnormal, negative, inf and NaN
    # bases, overflow) and the integer power for integer exponents: every entry as torch.pow gives it
    m = gn.ReactionNetwork([("-> A", "k * A^n"), ("-> B", "k * B^e")], params={"k": 1.5, "n": 2.37, "e": 0.8},
                           initial={"A": 0.3, "B": 0.1})
    rng = np.random.default_rng(0)
    vals = np.concatenate([np.exp(rng.uniform(-40, 40, 200)), np.exp(rng.uniform(-700, 700, 50)),
                           [0.0, 1e-310, -0.5, np.inf, np.nan, 1e300, 1e-300]])
    x = torch.tensor(np.stack([vals, vals[::-1]], axis=1), dtype=torch.float64)
    B = x.shape[0]
    for n in (2.37, 3.0, 0.5, 1.3e-3, 11.2):
        p = m.row_params(None, B, device="cpu", dtype=torch.float64, overrides={"n": torch.tensor(n)})
        f, _ = compiled.rhs(m.native_spec(p), x)
        ref = 1.5 * torch.stack([x[:, 0] ** n, x[:, 1] ** 0.8], dim=1)
        torch.testing.assert_close(f, ref, rtol=5e-14, atol=0, equal_nan=True)

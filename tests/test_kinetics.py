"""Symbolic models (reactions, equations): against scipy Radau on hand-written right-hand sides,
perturbation semantics (mass conservation), derivatives, and bad input."""

import numpy as np
import pytest
import sympy
import torch
from scipy.integrate import solve_ivp

import genenet as gn
from genenet.fit import FitProblem
from genenet.kinetics import Program, parse_rate
from reference import central_difference_gradient


def _radau(f, x0, t):
    sol = solve_ivp(f, (t[0], t[-1]), x0, method="Radau", t_eval=t, rtol=1e-11, atol=1e-13)
    assert sol.success
    return sol.y.T


def _binding(**kw):
    # synthesis and decay of A, reversible binding A + B <-> AB: B + AB is conserved whatever A does
    return gn.ReactionNetwork([("-> A", "ks"), ("A ->", "kd * A"), ("bind", "A + B -> AB", "kon * A * B"),
                               ("unbind", "AB -> A + B", "koff * AB")],
                              params={"ks": 2.0, "kd": 0.5, "kon": 1.5, "koff": 0.3},
                              initial={"A": 1.0, "B": 2.0, "AB": 0.5}, **kw)


def _binding_rhs(ks=2.0, kd=0.5, kon=1.5, koff=0.3):
    def f(t, x):
        A, B, AB = x
        v = kon * A * B - koff * AB
        return [ks - kd * A - v, -v, v]
    return f


def test_toggle_from_equations_matches_radau():
    m = gn.Model.from_equations({"U": "a1 * hill_rep(V, K, n) - U", "V": "a2 / (1 + (U / K)^n) - V"},
                                params={"a1": 3.0, "a2": 2.5, "K": 1.0, "n": 2.5}, initial={"U": 0.2, "V": 2.0})
    t = np.linspace(0, 8, 17)
    traj = gn.simulate(m, t, rtol=1e-10, atol=1e-12)
    ref = _radau(lambda t, x: [3.0 / (1 + x[1] ** 2.5) - x[0], 2.5 / (1 + x[0] ** 2.5) - x[1]], [0.2, 2.0], t)
    np.testing.assert_allclose(traj.y[0].detach().numpy(), ref, rtol=1e-7, atol=1e-9)
    assert m.autonomous and list(m.genes) == ["U", "V"]
    # minus-signed terms are degradation, the rest synthesis
    tab = m.reaction_table()
    assert set(tab.rate[~tab.synthesis]) == {"U", "V"} and tab.synthesis.sum() == 2


def test_reaction_network_matches_radau_and_conserves_mass():
    m = _binding()
    assert list(m.genes) == ["A", "B", "AB"]
    t = np.linspace(0, 10, 21)
    y = gn.simulate(m, t, rtol=1e-10, atol=1e-12).y[0].detach().numpy()
    np.testing.assert_allclose(y, _radau(_binding_rhs(), [1.0, 2.0, 0.5], t), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(y[:, 1] + y[:, 2], 2.5, rtol=1e-9)
    N = m.stoichiometry()
    assert N.loc["A", "bind"] == -1 and N.loc["AB", "bind"] == 1 and N.loc["B", "unbind"] == 1


def test_knockout_removes_synthesis_and_keeps_binding_mass_conserving():
    # Knockout(A): A's synthesis is gone and A starts at 0; binding still consumes what it makes,
    # so B + AB stays at its start (zeroing the "production" of every species that a reaction makes,
    # as a per-species split would, breaks this)
    m = _binding()
    t = np.linspace(0, 10, 11)
    conds = [gn.Condition([]), gn.Knockout("A"), gn.Knockdown("A", 0.25), gn.Knockout("B")]
    y = gn.simulate(m, t, perturbations=conds, rtol=1e-10, atol=1e-12).y.detach().numpy()
    np.testing.assert_allclose(y[1], _radau(_binding_rhs(ks=0.0), [0.0, 2.0, 0.5], t), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(y[2], _radau(_binding_rhs(ks=1.5), [1.0, 2.0, 0.5], t), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(y[3], _radau(_binding_rhs(), [1.0, 0.0, 0.5], t), rtol=1e-7, atol=1e-9)
    for row in y:
        np.testing.assert_allclose(row[:, 1] + row[:, 2], row[0, 1] + row[0, 2], rtol=1e-9)


def test_michaelis_menten_with_time_dependent_input():
    m = gn.ReactionNetwork([("-> S", "ks * exp(-t / tau)"), ("S -> P", "Vmax * mm(S, Km)"), ("P -> 0", "kd * P")],
                           params={"ks": 3.0, "tau": 2.0, "Vmax": 2.0, "Km": 0.5, "kd": 0.3})
    assert not m.autonomous
    t = np.linspace(0, 12, 25)
    y = gn.simulate(m, t, rtol=1e-10, atol=1e-12).y[0].detach().numpy()

    def f(t, x):
        v = 2.0 * x[0] / (0.5 + x[0])
        return [3.0 * np.exp(-t / 2.0) - v, v - 0.3 * x[1]]
    np.testing.assert_allclose(y, _radau(f, [0.0, 0.0], t), rtol=1e-7, atol=1e-9)
    for method in ("rodas5", "tsit5"):
        y2 = gn.simulate(m, t, method=method, rtol=1e-7, atol=1e-9).y[0].detach().numpy()
        np.testing.assert_allclose(y2, y, rtol=1e-5, atol=1e-7)


def test_fit_gradient_matches_finite_differences_and_lm_recovers_rate_constants():
    true = gn.ReactionNetwork([("-> S", "ks"), ("S -> P", "Vmax * S / (Km + S)"), ("P ->", "kd * P")],
                              params={"ks": 1.0, "Vmax": 2.0, "Km": 0.5, "kd": 0.3})
    traj = gn.simulate(true, np.linspace(0, 10, 11), rtol=1e-11, atol=1e-12)
    data = gn.ExpressionData.from_trajectory(traj)
    start = gn.ReactionNetwork([("-> S", "ks"), ("S -> P", "Vmax * S / (Km + S)"), ("P ->", "kd * P")],
                               params={"ks": 1.0, "Vmax": 1.2, "Km": 0.9, "kd": 0.3})
    prob = FitProblem(start, data, free=["Vmax", "Km"], rtol=1e-10, atol=1e-12)
    th = prob.theta0[None]
    L, g = prob.gradient(th)
    fd = central_difference_gradient(prob.loss, th)
    torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-7)
    res = gn.fit(start, data, free=["Vmax", "Km"], method="lm", progress=False)
    assert res.converged
    fitted = {k: float(v.detach()) for k, v in res.model.params.items()}
    assert abs(fitted["Vmax"] - 2.0) < 1e-4 and abs(fitted["Km"] - 0.5) < 1e-4


def test_parameters_bounds_and_ensembles():
    m = gn.Model.from_equations({"x": "b + a * x - x^3"}, params={"a": [-1.0, 0.5, 2.0], "b": 0.0})
    assert m.n_sets == 3
    assert m.specs["a"].bounds == (-np.inf, np.inf) and m.specs["b"].bounds == (-np.inf, np.inf)
    m2 = gn.Model.from_equations({"x": "k - g * x"}, params={"k": 1.0, "g": 2.0}, bounds={"g": (0.5, 4.0)})
    assert m2.specs["k"].bounds == (0.0, np.inf) and m2.specs["g"].bounds == (0.5, 4.0)
    y = gn.simulate(m, np.linspace(0, 30, 4), x0=np.full((3, 1), 0.5)).y[:, -1, 0].detach().numpy()
    np.testing.assert_allclose(y, [0.0, np.sqrt(0.5), np.sqrt(2.0)], atol=1e-5)  # x* = 0 or sqrt(a)


def test_same_structure_same_program():
    a = gn.ReactionNetwork([("-> X", "k"), ("X ->", "d * X")], params={"k": 1.0, "d": 0.1})
    b = gn.ReactionNetwork([("-> mRNA", "alpha"), ("mRNA ->", "gamma * mRNA")], params={"alpha": 5.0, "gamma": 2.0})
    assert a.program.key() == b.program.key() and a._rates_fn is b._rates_fn
    # shared subexpressions are computed once
    p = Program.build([sympy.sympify("x**n/(K**n + x**n)"), sympy.sympify("K**n/(K**n + x**n)")],
                      [sympy.Symbol("x")], sympy.symbols("K n"))
    assert len(p.temporaries) >= 1


@pytest.mark.parametrize("equations, match", [
    ({"A": "k * B"}, "unknown name.*B"),
    ({"A": "k * foo(A)"}, "unknown function.*foo"),
    ({"A": "k * A +"}, "cannot read"),
    ({"A": "__import__('os').getcwd()"}, "cannot read|unknown"),
    ({"t": "k"}, "reserved"),
    ({"2A": "k"}, "not allowed"),
    ({"A": "k / 0"}, "not finite"),
    ({"A": ""}, "empty"),
])
def test_bad_equations_are_named(equations, match):
    with pytest.raises(ValueError, match=match):
        gn.Model.from_equations(equations, params={"k": 1.0})


@pytest.mark.parametrize("reactions, match, err", [
    ([("A -> B -> C", "k")], "one arrow", ValueError),
    ([("A + -1 B -> C", "k")], "cannot read", ValueError),
    ([("A -> B", "k"), ("A -> B", "k * A")], None, None),
    ([("r", "A -> B", "k"), ("r", "B -> A", "k")], "duplicate reaction", ValueError),
    ([("A -> B",)], "give \\(equation, rate\\)", TypeError),
    ([{"equation": "A -> B"}], "needs keys", ValueError),
    ([("A -> B", 3)], None, None),
    ([("A -> B", None)], "must be a string", TypeError),
])
def test_bad_reactions_are_named(reactions, match, err):
    if err is None:
        gn.ReactionNetwork(reactions, params={"k": 1.0})
        return
    with pytest.raises(err, match=match):
        gn.ReactionNetwork(reactions, params={"k": 1.0})


def test_species_list_and_names_checked():
    with pytest.raises(ValueError, match="names species 'C'"):
        gn.ReactionNetwork([("A -> C", "k * A")], params={"k": 1.0}, species=["A", "B"])
    with pytest.raises(ValueError, match="both a species and a parameter"):
        gn.ReactionNetwork([("A -> B", "A")], params={"A": 1.0})
    with pytest.raises(KeyError, match="unknown species 'Z'"):
        gn.ReactionNetwork([("A -> B", "k * A")], params={"k": 1.0}, initial={"Z": 1.0})
    with pytest.raises(KeyError, match="bounds name unknown parameters"):
        gn.ReactionNetwork([("A -> B", "k * A")], params={"k": 1.0}, bounds={"q": (0, 1)})
    # a modifier that is on neither side is a species held by nothing: give the species list
    m = gn.ReactionNetwork([("-> A", "k * E")], params={"k": 1.0}, species=["A", "E"], initial={"E": 2.0})
    y = gn.simulate(m, [0.0, 1.0]).y[0, -1].detach().numpy()
    np.testing.assert_allclose(y, [2.0, 2.0], rtol=1e-6)


def test_parse_rate_accepts_sympy_and_numbers():
    x, k = sympy.symbols("x k", positive=True)  # other assumptions than the model's: matched by name
    syms = {"x": sympy.Symbol("x", real=True), "k": sympy.Symbol("k", real=True)}
    e = parse_rate(k * x, syms, "test")
    assert e.free_symbols == {syms["x"], syms["k"]}
    assert parse_rate(2, syms, "test") == 2 and parse_rate("x^2", syms, "test") == syms["x"] ** 2


def _compile_rates(model, tmp_path):
    """The generated header in a tiny harness: rates and sparse derivatives of B rows, via ctypes."""
    import ctypes
    import subprocess

    from genenet.kinetics.codegen import RateDerivatives, c_header
    from genenet.native import build

    cc = build.compiler()
    if cc is None:
        pytest.skip("no C compiler on PATH: the generated C cannot be compiled here")
    d = RateDerivatives.of(model.program)
    src = tmp_path / "harness.c"
    src.write_text("#include <stdint.h>\n#include <tgmath.h>\ntypedef double real;\n" + c_header(model.program, d)
                   + """
void eval_rows(int64_t B, const double *t, const double *x, const double *p, double *v, double *vx, double *vp) {
    for (int64_t b = 0; b < B; b++)
        gm_rates_d(t[b], x + b * GM_S, p + b * GM_P, v + b * GM_R, vx + b * (GM_NX ? GM_NX : 1),
                   vp + b * (GM_NP ? GM_NP : 1));
}
""")
    lib = tmp_path / "harness.so"
    proc = subprocess.run([*cc.split(), "-O2", "-fPIC", "-shared", "-ffp-contract=off", str(src), "-o", str(lib),
                           "-lm"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return ctypes.CDLL(str(lib)), d


@pytest.mark.parametrize("kind", ["binding", "toggle", "mm_time"])
def test_generated_c_rates_and_derivatives_match_torch_autograd(kind, tmp_path):
    import ctypes

    if kind == "binding":
        m = _binding()
    elif kind == "toggle":
        m = gn.Model.from_equations({"U": "a1 * hill_rep(V, K, n) - U", "V": "a2 * hill_act(U, K, 3) - max(V, 0)"},
                                    params={"a1": 3.0, "a2": 2.5, "K": 1.0, "n": 2.5})
    else:
        m = gn.ReactionNetwork([("-> S", "ks * exp(-t / tau)"), ("S -> P", "Vmax * S / (Km + S)"),
                                ("P -> 0", "kd * P^2 + sqrt(P + 1)")],
                               params={"ks": 3.0, "tau": 2.0, "Vmax": 2.0, "Km": 0.5, "kd": 0.3})
    lib, d = _compile_rates(m, tmp_path)
    rng = np.random.default_rng(0)
    B, S, P, R = 5, len(m.genes), len(m.param_names), len(m.reactions)
    t = rng.uniform(0, 3, B)
    x = rng.uniform(0.1, 3, (B, S))
    x[0] = 0.0  # a knocked-out species: d(x^n)/dx = n x^(n-1) is 0 there, not 0/0
    p = np.stack([np.full(B, float(m.params[k].detach()[0, 0])) for k in m.param_names], axis=1) * rng.uniform(
        0.5, 1.5, (B, P))
    v, vx, vp = np.zeros((B, R)), np.zeros((B, max(len(d.vx), 1))), np.zeros((B, max(len(d.vp), 1)))
    ptr = ctypes.POINTER(ctypes.c_double)
    lib.eval_rows(ctypes.c_int64(B), *(np.ascontiguousarray(a).ctypes.data_as(ptr) for a in (t, x, p, v, vx, vp)))
    tt, xx, pp = (torch.as_tensor(a).requires_grad_(True) for a in (t, x, p))
    vt = m._rates_fn(tt, xx, pp)
    np.testing.assert_allclose(v, vt.detach().numpy(), rtol=1e-13, atol=1e-14)
    # every derivative entry, and nothing outside the sparsity, against autograd's full Jacobians
    for r in range(R):
        gx, gp = torch.autograd.grad(vt[:, r].sum(), (xx, pp), retain_graph=True)
        dense_x, dense_p = np.zeros((B, S)), np.zeros((B, P))
        for e, (rr, j, _) in enumerate(d.vx):
            if rr == r:
                dense_x[:, j] = vx[:, e]
        for e, (rr, k, _) in enumerate(d.vp):
            if rr == r:
                dense_p[:, k] = vp[:, e]
        np.testing.assert_allclose(dense_x, gx.numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(dense_p, gp.numpy(), rtol=1e-12, atol=1e-13)


def test_conservation_laws_are_the_left_null_space():
    m = _binding()
    L, pivots = m.conservation_laws()
    np.testing.assert_array_equal(L, [[0.0, 1.0, 1.0]])  # B + AB
    assert pivots == [1]
    assert gn.Model.from_equations({"x": "k - x"}, params={"k": 1.0}).conservation_laws() is None
    enz = _enzyme()
    L, pivots = enz.conservation_laws()
    assert L.shape == (1, 4) and np.allclose(L @ enz.stoichiometry().to_numpy(), 0)


def _enzyme():
    # E + S <-> ES -> E + P with synthesis of S and decay of P: E + ES is conserved
    return gn.ReactionNetwork([("-> S", "ks"), ("E + S -> ES", "kf * E * S"), ("ES -> E + S", "kr * ES"),
                               ("ES -> E + P", "kcat * ES"), ("P ->", "kd * P")],
                              params={"ks": 1.0, "kf": 2.0, "kr": 0.5, "kcat": 1.5, "kd": 0.4},
                              initial={"E": 1.0, "S": 0.5, "ES": 0.2})


@pytest.mark.parametrize("which", ["binding", "enzyme"])
def test_steady_state_stays_in_the_starts_conservation_class(which):
    # the Jacobian is singular (a conserved total): Newton on f(x) = 0 alone ended on another total
    # (B + AB = 7.08 from a start with 2.5); the reduced system gives the steady state of the start's class,
    # here in closed form
    m = _binding() if which == "binding" else _enzyme()
    conds = [gn.Condition([])] + ([gn.Knockout("A")] if which == "binding" else [gn.Knockdown("S", 0.5)])
    ss = gn.steady_state(m, conds)
    assert ss.converged.all() and ss.stable.all()
    if which == "binding":  # A = ks/kd, kon A B = koff AB, B + AB = 2.5; the knockout: no A, all B free
        A = 2.0 / 0.5
        B = 2.5 / (1 + 1.5 * A / 0.3)
        expected = [[A, B, 2.5 - B], [0.0, 2.5, 0.0]]
    else:  # flux ks' = kcat ES, P = ks'/kd, E + ES = 1.2, kf E S = (kr + kcat) ES
        expected = []
        for ks in (1.0, 0.5):
            ES = ks / 1.5
            E = 1.2 - ES
            expected.append([E, (0.5 + 1.5) * ES / (2.0 * E), ES, ks / 0.4])
        order = [m.genes.index(s) for s in ("E", "S", "ES", "P")]
        expected = np.asarray(expected)[:, np.argsort(order)]
    np.testing.assert_allclose(ss.x.numpy(), expected, rtol=1e-8, atol=1e-10)
    # one conserved direction: a zero eigenvalue reported, not counted against stability
    assert (ss.jacobian_eigenvalues.abs() < 1e-12).sum(dim=1).tolist() == [1] * len(conds)


def test_an_input_that_breaks_a_law_has_no_steady_state_and_says_so():
    # B made at a constant rate: B + AB grows for ever (no law, no steady state); a clamp drops the law too
    m = _binding()
    ss = gn.steady_state(m, [gn.Overexpress("B", rate=1.0), gn.Clamp("B", 1.0)], max_iter=30, t_max=50.0)
    assert list(ss.converged) == [False, True]
    np.testing.assert_allclose(ss.x[1].numpy(), [4.0, 1.0, 20.0], rtol=1e-9)  # A = ks/kd, AB = kon A B / koff


def test_steady_state_sensitivity_at_fixed_totals_matches_finite_differences():
    m = _binding()
    conds = [gn.Condition([]), gn.Clamp("B", 1.0)]
    ss = gn.steady_state(m, conds)
    S = gn.steady_state_sensitivity(m, ss, ["ks", "kon"])
    h = 1e-6
    for name in ("ks", "kon"):
        value = float(m.params[name].detach())
        up = gn.steady_state(m, conds, params={name: value + h}).x
        down = gn.steady_state(m, conds, params={name: value - h}).x
        torch.testing.assert_close(S[name][:, :, 0], (up - down) / (2 * h), rtol=1e-5, atol=1e-7)


def test_chemical_langevin_noise_acts_along_reactions():
    # binding moves A, B and AB by one event: B + AB stays exactly at its start in every cell (far from 0,
    # so the reflecting boundary never acts); a per-species sqrt(P + D) noise would spread the total
    m = gn.ReactionNetwork([("-> A", "ks"), ("A ->", "kd * A"), ("A + B -> AB", "kon * A * B"),
                            ("AB -> A + B", "koff * AB")], params={"ks": 200.0, "kd": 1.0, "kon": 0.01, "koff": 0.5},
                           initial={"A": 200.0, "B": 300.0, "AB": 100.0})
    cells = gn.simulate_stochastic(m, np.linspace(0, 5, 11), n_cells=200, seed=1, dt=0.005)
    y = cells.y.detach().numpy()
    assert y.min() > 10
    np.testing.assert_allclose(y[:, :, 1] + y[:, :, 2], 400.0, rtol=1e-12)
    assert y[:, -1, 1].std() > 1.0  # and the species themselves do fluctuate
    # birth-death: stationary mean = variance = ks/kd, as for the per-species noise
    bd = gn.ReactionNetwork([("-> X", "ks"), ("X ->", "kd * X")], params={"ks": 50.0, "kd": 1.0},
                            initial={"X": 50.0})
    late = gn.simulate_stochastic(bd, np.linspace(0, 20, 5), n_cells=4000, seed=2, dt=0.01).y[:, -1, 0].numpy()
    assert abs(late.mean() - 50.0) < 0.6 and abs(late.var() / 50.0 - 1.0) < 0.1
    with pytest.raises(ValueError, match="needs diagonal noise"):
        gn.simulate_stochastic(bd, [0.0, 1.0], method="milstein")


@pytest.mark.parametrize("kind", ["binding", "toggle"])
def test_analytic_jacobian_matches_autodiff_and_drives_rosenbrock(kind):
    from genenet.solvers.jacobian import autodiff_jacobian

    m = _binding() if kind == "binding" else gn.Model.from_equations(
        {"U": "a1 * hill_rep(V, K, n) - U", "V": "a2 * hill_act(U, K, n) - V"},
        params={"a1": 3.0, "a2": 2.5, "K": 1.0, "n": 2.5})
    x = torch.as_tensor(np.random.default_rng(0).uniform(0.0, 3.0, (4, len(m.genes))))
    x[0, 0] = 0.0  # a species at zero: the derivative of x^n is 0 there, not NaN
    p = m.row_params(None, 4, device=x.device, dtype=x.dtype)
    t = torch.zeros(4, dtype=x.dtype)
    J = m.production_jacobian(t, x, p) - m.degradation_jacobian(t, x, p)
    ref = autodiff_jacobian(lambda tt, xx, aa: m.rhs(tt, xx, aa), t, x, p)
    torch.testing.assert_close(J, ref, rtol=1e-12, atol=1e-12)
    tt = np.linspace(0, 6, 7)
    a = gn.simulate(m, tt, method="rodas5", rtol=1e-9, atol=1e-11).y
    b = gn.simulate(m, tt, method="dopri5", rtol=1e-10, atol=1e-12).y
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_reaction_targets_scale_the_reactions_a_gene_hits():
    # E is an enzyme gene written into the conversion's rate constant: knocking it out removes S -> P (not a
    # species' synthesis); a knockdown scales it; two effects on one reaction multiply; S's own knockout
    # still removes S's synthesis
    def model(**kw):
        return gn.ReactionNetwork([("-> S", "ks"), ("conv", "S -> P", "kcat * S"), ("P ->", "kd * P")],
                                  params={"ks": 1.0, "kcat": 2.0, "kd": 0.5}, **kw)

    m = model(targets={"E": ["conv"], "F": ["conv"]})
    assert m.params["reaction_scale"].shape == (1, 3)
    conds = [gn.Condition([]), gn.Knockout("E"), gn.Knockdown("E", 0.5),
             gn.Knockdown("E", 0.5) + gn.Knockdown("F", 0.5), gn.Knockout("S")]
    t = np.linspace(0, 6, 7)
    y = gn.simulate(m, t, perturbations=conds, rtol=1e-10, atol=1e-12).y.detach().numpy()
    for row, kcat in zip(y[:4], (2.0, 0.0, 1.0, 0.5)):
        ref = gn.simulate(model(), t, params={"kcat": kcat} if kcat else {"kcat": 1e-300}, rtol=1e-10,
                          atol=1e-12).y[0].detach().numpy()
        np.testing.assert_allclose(row, ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(y[4], 0.0, atol=1e-12)  # no synthesis of S, S and P start at 0
    with pytest.raises(ValueError, match="only a species can be clamped|a rate or a clamp needs a species"):
        gn.simulate(m, t, perturbations=[gn.Clamp("E", 1.0)])
    with pytest.raises(KeyError, match="unknown reactions"):
        model(targets={"E": ["nope"]})


def test_compiled_tangents_match_autodiff():
    # production/degradation JVPs from the compiled derivative entries (forward sensitivities, LM Jacobians)
    from genenet.models.base import _jvp_by_autodiff

    m = gn.ReactionNetwork([("-> S", "ks * hill_rep(P, K, n)"), ("conv", "S -> P", "kcat * S / (Km + S)"),
                            ("P ->", "kd * P")], params={"ks": 1.0, "K": 0.7, "n": 2.5, "kcat": 2.0, "Km": 0.5,
                                                         "kd": 0.3}, targets={"E": ["conv"]})
    rng = np.random.default_rng(3)
    B, q = 4, 3
    x = torch.as_tensor(rng.uniform(0.0, 2.0, (B, 2)))
    x[0, 1] = 0.0
    p = m.row_params(None, B, device=x.device, dtype=x.dtype)
    p["reaction_scale"] = torch.as_tensor(rng.uniform(0.5, 1.5, (B, 3)))
    x_dot = torch.as_tensor(rng.normal(size=(B, q, 2)))
    p_dot = {"n": torch.as_tensor(rng.normal(size=(B, q, 1))), "Km": torch.as_tensor(rng.normal(size=(B, q, 1))),
             "reaction_scale": torch.as_tensor(rng.normal(size=(B, q, 3)))}
    t = torch.zeros(B, dtype=x.dtype)
    for name in ("production", "degradation"):
        got = getattr(m, f"{name}_jvp")(t, x, p, x_dot, p_dot)
        ref = _jvp_by_autodiff(getattr(m, name), m, t, x, p, x_dot, p_dot)
        torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-12)


def test_observables_follow_each_rows_parameters_and_pulses():
    # a derived quantity is evaluated with the row's own parameter set and the pulsed value where on
    m = gn.ReactionNetwork([("bind", "P + B -> PB", "kon * P * B"), ("unbind", "PB -> P + B", "koff * PB"),
                            ("-> P", "ks"), ("P ->", "kd * P")],
                           params={"kon": 1.2, "koff": 0.4, "ks": 0.5, "kd": np.array([0.2, 0.4, 0.8])},
                           initial={"P": 0.1, "B": 1.0}, observables={"P_total": "P + PB", "decay": "kd * P * t"})
    t = np.linspace(0, 5, 11)
    traj = gn.simulate(m, t, perturbations=[gn.Condition([]), gn.Pulse(gn.SetParameter("kd", 2.0), 1.0, 3.0)])
    assert traj["P_total"].shape == (6, 11)
    torch.testing.assert_close(traj["P_total"], traj["P"] + traj["PB"])
    kd = torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64).repeat(2)[:, None].expand(6, 11).clone()
    tt = torch.as_tensor(t)
    kd[3:, (tt >= 1) & (tt < 3)] = 2.0
    torch.testing.assert_close(traj["decay"], kd * traj["P"] * tt)
    with pytest.raises(ValueError, match="already a parameter"):
        gn.ReactionNetwork([("-> P", "ks")], params={"ks": 1.0}, observables={"ks": "2 * P"})
    # an observable named as a species is how it reads (the state stays in y and is its amount)
    m2 = gn.ReactionNetwork([("-> P", "ks")], params={"ks": 1.0}, observables={"P": "P / 4"})
    tr = gn.simulate(m2, t)
    torch.testing.assert_close(tr["P"], tr.y[:, :, 0] / 4)
    torch.testing.assert_close(tr.amount("P"), tr.y[:, :, 0])
    with pytest.raises(KeyError, match="observables"):
        traj["nothing"]


def test_chemical_langevin_noise_counts_events_in_the_compartment():
    # birth-death of A as a concentration in a compartment of size V (rates in amount per time):
    # amounts are Poisson with mean = variance = ks / kd, so the concentration has mean ks / (kd V)
    # and variance ks / (kd V^2); a synthesis noise of sqrt(P) would give (ks / (kd V^2)) (V + 1) / 2
    from genenet.kinetics.symbolic import Reaction, SymbolicModel

    A, ks, kd, V = sympy.Symbol("A", real=True), sympy.Symbol("ks", real=True), sympy.Symbol("kd", real=True), 4.0
    m = SymbolicModel(["A"], [Reaction("syn", {}, {"A": 1.0}, ks), Reaction("deg", {"A": 1.0}, {}, kd * A * V)],
                      {"ks": 400.0, "kd": 1.0}, volumes={"A": V}, initial={"A": 100.0})
    late = gn.simulate_stochastic(m, np.linspace(0, 20, 5), n_cells=4000, seed=3, dt=0.01).y[:, -1, 0].numpy()
    assert abs(late.mean() - 100.0) < 0.3
    assert abs(late.var() / (400.0 / V ** 2) - 1.0) < 0.1

"""Steady states, Jacobians, stability and sensitivities against independent references."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.optimize import fsolve

import genenet as gn
from genenet.solvers.integrate import tree_index
from genenet.steady import _prepare, newton
from reference import hill_rhs_numpy, hill_values, random_network, repressilator, sub_condition_case


@pytest.fixture(scope="module")
def toggle():
    return gn.Hill(gn.load_network("toggle_switch"), production=10.0, degradation=1.0, threshold=2.0, hill=4.0,
                   fold=100.0)


@pytest.mark.heavy
@pytest.mark.parametrize("sample", [12, pytest.param(None, marks=pytest.mark.slow)])
def test_double_knockout_screen_matches_scipy(sample):
    net = random_network(10, 3, seed=22)
    model = gn.Hill.random(net, n=1, seed=2)
    screen = gn.knockout_screen(net, order=2)
    x0 = np.full(10, 5.0)
    ss = gn.steady_state(model, screen, x0=x0, method="integrate")
    assert ss.converged.all() and ss.x.shape == (56, 10)
    base = hill_values(model)
    rng = np.random.default_rng(0)
    # a sample of the 56 conditions keeps the default suite quick; `-m slow` checks all of them
    for r in (range(56) if sample is None else rng.choice(56, sample, replace=False)):
        p = {k: v.copy() for k, v in base.items()}
        ko = [net.index(g) for g in net.genes if f"KO({g})" in ss.conditions[r].split("+")]
        p["production"][ko] = 0.0
        start = x0.copy()
        start[ko] = 0.0
        f = hill_rhs_numpy(net, p)
        end = solve_ivp(f, (0, 400), start, method="Radau", rtol=1e-10, atol=1e-12).y[:, -1]
        ref = fsolve(lambda x, f=f: f(0, x), end, xtol=1e-13)
        np.testing.assert_allclose(ss.x[r].numpy(), ref, rtol=1e-6, atol=1e-9, err_msg=ss.labels[r])


def test_toggle_saddle_and_stable_states(toggle):
    ss = gn.steady_state(toggle, x0=[[3.0, 3.0], [8.0, 0.5], [0.5, 8.0]])
    assert ss.converged.all()
    x = ss.x.numpy()
    assert x[0, 0] == pytest.approx(x[0, 1])  # the symmetric start finds the saddle
    assert not ss.stable[0] and ss.stable[1] and ss.stable[2]
    ev = ss.jacobian_eigenvalues.numpy()
    assert (ev[0].real > 0).sum() == 1  # a saddle: one unstable direction
    assert x[1, 0] > 9 and x[1, 1] < 0.2 and x[2, 1] > 9
    # each is a zero of the equations written independently
    f = hill_rhs_numpy(toggle.net, hill_values(toggle))
    for row in x:
        assert np.abs(f(0, row)).max() < 1e-8
    reached = gn.steady_state(toggle, x0=[3.0, 2.9], method="integrate")
    assert reached.stable[0] and reached.x[0, 0] > reached.x[0, 1]


def test_repressilator_has_one_unstable_steady_state():
    ss = gn.steady_state(repressilator(), x0=[1.0, 2.0, 5.0])
    assert ss.converged[0] and not ss.stable[0]
    ev = ss.jacobian_eigenvalues[0].numpy()
    assert np.any((ev.real > 0) & (np.abs(ev.imag) > 0))  # a Hopf-unstable focus: oscillation around it
    x = ss.x[0].numpy()
    assert np.allclose(x, x[0])  # by symmetry all three equal


@pytest.mark.heavy
def test_screen_with_oscillating_rows_finds_their_unstable_steady_states():
    # in this 20-gene network about half of the knockout rows oscillate: Newton from the
    # default start fails, integration never settles, and the steady state inside each
    # cycle is found by Newton from points of the trajectory
    net = random_network(20, 3, seed=3)
    model = gn.Hill.random(net, n=1, seed=3)
    screen = gn.knockout_screen(net, order=1)
    ss = gn.steady_state(model, screen)
    assert ss.converged.all()
    assert (ss.method == "integrate").any()
    base = hill_values(model)
    unstable = 0
    for r in range(len(screen)):
        p = {k: v.copy() for k, v in base.items()}
        ko = [net.index(g) for g in net.genes if f"KO({g})" in ss.conditions[r].split("+")]
        p["production"][ko] = 0.0
        f = hill_rhs_numpy(net, p)
        x = ss.x[r].numpy()
        assert np.abs(f(0, x)).max() <= 1e-10 * (1 + np.abs(x).max()), ss.labels[r]
        # stability from a finite-difference Jacobian of the independent equations
        h = 1e-6 * (1 + np.abs(x))
        J = np.stack([(f(0, x + h[j] * e) - f(0, x - h[j] * e)) / (2 * h[j]) for j, e in enumerate(np.eye(20))], 1)
        stable = (np.linalg.eigvals(J).real < 0).all()
        assert stable == ss.stable[r], ss.labels[r]
        if not stable:
            unstable += 1
            late = solve_ivp(f, (0, 300), np.full(20, 1.0), rtol=1e-8, atol=1e-10, t_eval=np.linspace(250, 300, 51)).y
            assert np.ptp(late, axis=1).max() > 1e-2, ss.labels[r]  # still moving: no integration reaches x
    assert unstable >= 5


def test_newton_touches_only_active_rows():
    net = random_network(8, 3, seed=1)
    model = gn.Hill.random(net, n=1, seed=1)
    screen = gn.knockout_screen(net, order=1)
    batch, args, _, dtype = _prepare(model, screen, np.full(8, 3.0), None, "cpu", torch.float64)
    x0 = batch.x0.detach()
    active = torch.zeros(len(screen), dtype=torch.bool)
    active[::2] = True
    with torch.no_grad():
        x, conv, iters = newton(batch.term, x0, args, tol=1e-10, max_iter=50, active=active)
        sub = torch.nonzero(active).squeeze(1)
        x_sub, conv_sub, _ = newton(batch.term, x0[sub], tree_index(args, sub), tol=1e-10, max_iter=50)
    assert torch.equal(x[~active], x0[~active]) and (iters[~active] == 0).all() and not conv[~active].any()
    torch.testing.assert_close(x[active], x_sub, rtol=0, atol=0)
    assert torch.equal(conv[active], conv_sub) and conv_sub.any()


@pytest.mark.native
@pytest.mark.parametrize("mode", ["newton", "ptc"])
def test_native_steady_iterations_match_the_torch_loop(mode, monkeypatch):
    # the C iterations (native.roots_hill) against the torch loop they reproduce, on a screen with
    # oscillating rows (Newton struggles there), knockdowns, overexpression and a clamp, from starts
    # near and far from the steady states, with an inactive row and Newton's give-up rule
    from genenet import native, steady

    monkeypatch.setenv("GENENET_NATIVE", "1")
    if not native.available(torch.float64):
        pytest.skip(f"native kernel unavailable: {native.reason(torch.float64)}")
    net = random_network(20, 3, seed=3)
    model = gn.Hill.random(net, n=1, seed=3)
    g = net.genes
    screen = [*gn.knockout_screen(net, order=1), [gn.Knockdown(g[2], 0.3)], [gn.Overexpress(g[5], 3.0)],
              [gn.Clamp(g[7], 2.0), gn.Knockout(g[1])]]
    batch, args, _, dtype = _prepare(model, screen, None, None, "cpu", torch.float64)
    B = len(screen)
    rng = np.random.default_rng(0)
    with torch.no_grad():  # even rows start within 30% of a steady state, odd rows anywhere in [0, 8]
        near = gn.steady_state(model, screen).x.numpy() * rng.uniform(0.7, 1.3, (B, 20))
    start = np.where((np.arange(B) % 2 == 0)[:, None], near, rng.uniform(0, 8, (B, 20)))
    x0 = batch.term.reset(torch.zeros(B, dtype=dtype), torch.as_tensor(start), args)
    active = torch.ones(B, dtype=torch.bool)
    active[3] = False
    kw = dict(tol=1e-10, max_iter=60, active=active)
    if mode == "newton":
        kw["give_up"] = 10
    fn = steady.newton if mode == "newton" else steady.pseudo_transient
    calls, roots = [], native.roots_hill
    monkeypatch.setattr(native, "roots_hill", lambda *a, **k: calls.append(1) or roots(*a, **k))
    with torch.no_grad():
        x_c, conv_c, it_c = fn(batch.term, x0, args, **kw)
        assert calls, "the CPU Hill iteration did not run in C"
        with native.torch_path():
            x_t, conv_t, it_t = fn(batch.term, x0, args, **kw)
    assert conv_t.any() and (~conv_t).any() and it_t.max() > 5
    assert torch.equal(conv_c, conv_t) and torch.equal(it_c, it_t)
    assert torch.equal(x_c[3], x0[3]) and it_c[3] == 0
    # rows that stop unconverged may have crept along the shortest steps, where the two LUs' rounding
    # grows; the converged ones agree to the tolerance
    torch.testing.assert_close(x_c[conv_t], x_t[conv_t], rtol=1e-9, atol=1e-12)


def test_jacobian_analytic_matches_finite_differences():
    net = random_network(6, 3, seed=3)
    model = gn.Hill.random(net, n=3, seed=1)
    x = np.random.default_rng(2).uniform(0.5, 20, (3, 6))
    J = gn.jacobian(model, x).detach().numpy()
    assert J.shape == (3, 6, 6)
    for s in range(3):
        f = hill_rhs_numpy(net, hill_values(model, s))
        fd = np.zeros((6, 6))
        for j in range(6):
            e = np.zeros(6)
            e[j] = 1e-6 * max(1.0, x[s, j])
            fd[:, j] = (f(0, x[s] + e) - f(0, x[s] - e)) / (2 * e[j])
        np.testing.assert_allclose(J[s], fd, rtol=1e-6, atol=1e-7)
    # user models fall back to autodiff and agree with the closed form
    m = gn.Model.from_functions(["a", "b"], lambda t, x, p: p["g"] * x.flip(1) ** 2, lambda t, x, p: p["k"] * x,
                                {"g": 2.0, "k": 0.5})
    Jm = gn.jacobian(m, [1.0, 3.0])[0].detach().numpy()
    np.testing.assert_allclose(Jm, [[-0.5, 2 * 2 * 3.0], [2 * 2 * 1.0, -0.5]])


def test_steady_state_sensitivity_matches_finite_differences():
    net = random_network(5, 2, seed=4)
    model = gn.Hill.random(net, n=1, seed=3)
    ss = gn.steady_state(model, x0=5.0, method="integrate")
    assert ss.converged.all() and ss.stable.all()
    S = gn.steady_state_sensitivity(model, ss)
    base = {k: v.detach()[0].clone() for k, v in model.params.items()}
    for name, entries in (("production", [0, 3]), ("degradation", [1]), ("threshold", [0, 5]), ("hill", [2]),
                          ("fold", [7])):
        for j in entries:
            h = 1e-5 * max(1.0, abs(float(base[name][j])))
            vals = []
            for sign in (1, -1):
                v = base[name].clone()
                v[j] += sign * h
                vals.append(gn.steady_state(model, x0=ss.x, params={name: v}, tol=1e-13).x[0].numpy())
            fd = (vals[0] - vals[1]) / (2 * h)
            np.testing.assert_allclose(S[name][0, :, j].numpy(), fd, rtol=1e-5, atol=1e-8, err_msg=f"{name}[{j}]")


def test_clamped_gene_steady_state_and_stability(toggle):
    ss = gn.steady_state(toggle, gn.Clamp("A", 1.0), x0=[1.0, 5.0], tol=1e-13)
    assert ss.x[0, 0].item() == 1.0 and ss.stable[0]
    b = 10.0 * (1 / 100 + (1 - 1 / 100) / (1 + (1.0 / 2.0) ** 4))
    assert ss.x[0, 1].item() == pytest.approx(b, rel=1e-10)
    assert sorted(ss.jacobian_eigenvalues[0].real.tolist()) == pytest.approx([-1.0, -1.0])


def test_eigvals_of_a_batch_over_threads_equal_torchs_one_call(monkeypatch):
    from genenet.steady import eigvals

    J = torch.randn(37, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ev = eigvals(J)  # split over the threads: 37 matrices in chunks
    assert ev.shape == (37, 12) and torch.equal(ev, torch.linalg.eigvals(J))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert torch.equal(eigvals(J), torch.linalg.eigvals(J))
    assert eigvals(J[:0]).shape == (0, 12)


@pytest.mark.native
def test_integration_starts_in_row_blocks_equal_one_block(monkeypatch):
    # the start-finding integration runs in row blocks (memory) where the native kernel runs; rows
    # are independent there, so any blocking gives the same four starts per row, bit for bit (on the
    # torch loop a row's rounding moves with the batch's size, and at this integration's rtol 1e-4
    # other steps give starts that differ at that tolerance)
    from genenet import native
    from genenet.steady import _integrate_to_steady

    monkeypatch.setenv("GENENET_NATIVE", "1")
    if not native.available(torch.float64):
        pytest.skip(f"native kernel unavailable: {native.reason(torch.float64)}")

    net = random_network(12, 3, seed=2)
    model = gn.Hill.random(net, n=4, seed=1)
    batch, args, _, dtp = _prepare(model, gn.knockout_screen(net, order=1), None, None, "cpu", None)
    x = batch.term.reset(torch.zeros(batch.n_rows, dtype=dtp), batch.x0, args)
    whole = _integrate_to_steady(batch.term, args, x, 200.0, block=batch.n_rows)
    parts = _integrate_to_steady(batch.term, args, x, 200.0, block=7)
    assert len(whole) == 4 and whole[0].shape == (batch.n_rows, 12) and whole[0].dtype == dtp
    for a, b in zip(whole, parts):
        assert torch.equal(a, b)
    assert not torch.equal(whole[0], whole[1])  # the late mean is not the last state


def test_steady_state_table_and_bad_input(toggle):
    screen = gn.knockout_screen(toggle.net, order=2)
    ss = gn.steady_state(toggle, screen, x0=[6.0, 1.0], method="integrate")
    assert ss.labels == ["wild type", "KO(A)", "KO(B)", "KO(A)+KO(B)"]
    table = gn.screen_table(ss)
    assert set(table.columns) >= {"condition", "gene", "value", "log2fc", "converged"}
    ko_a = table[(table.condition == "KO(A)") & (table.gene == "B")]
    assert ko_a.value.item() == pytest.approx(10.0, rel=1e-6)
    assert len(ss.to_frame()) == 8 and "1 rows" not in ss.summary()
    with pytest.raises(ValueError, match="Pulse"):
        gn.steady_state(toggle, gn.Pulse(gn.Knockout("A"), 1.0, 2.0))
    with pytest.raises(ValueError, match="unknown method 'euler'"):
        gn.steady_state(toggle, method="euler")
    torch.testing.assert_close(ss["B"], ss.x[:, 1])


def test_steady_state_progress_bar(toggle, capsys):
    quiet = gn.steady_state(toggle, x0=[[8.0, 0.5], [3.0, 3.0]])
    assert "steady_state" not in capsys.readouterr().err
    shown = gn.steady_state(toggle, x0=[[8.0, 0.5], [3.0, 3.0]], progress=True)
    assert "steady_state" in capsys.readouterr().err
    torch.testing.assert_close(shown.x, quiet.x)


def test_sub_condition_candidates_same_set_fewest_perturbations_removed_first():
    from genenet.steady import _sub_condition_candidates, _sub_condition_rows

    a, b, c = gn.Knockout("A"), gn.Knockout("B"), gn.Knockout("C")
    conds = [gn.Condition(), gn.Condition(a), gn.Condition(b), gn.Condition([a, b]), gn.Condition([a, b, c])]
    P = 2  # rows c * 2 + s
    conv = np.ones(10, bool)
    conv[[2, 3]] = False  # set 0 of KO(A) and set 1 of KO(A) fail; KO(B) converged in both sets
    known, groups = _sub_condition_candidates(conds, P, np.arange(10))
    assert set(known) == set(range(8))  # every candidate once: no row has the triple's
    picks = _sub_condition_rows(groups, conv[known], 10)
    first, second, third = np.where(picks >= 0, known[np.maximum(picks, 0)], -1)
    # KO(A)+KO(B), set 0: KO(A) failed, so KO(B) (row 4), then the wild type (row 0)
    assert (first[6], second[6], third[6]) == (4, 0, -1)
    assert (first[7], second[7]) == (5, 1)  # set 1: KO(A) row 3 failed too
    # the triple: the double first (one fewer), then KO(B) (two fewer; KO(A) failed), then the wild type
    assert (first[8], second[8], third[8]) == (6, 4, 0)
    assert first[0] == -1 and first[2] == 0  # the wild type has none; KO(A) set 0: the wild type


def _assert_knockout_steady_states(model, ss, rows_genes):
    """Each row's state is a steady state of the knocked-out system, by the numpy right-hand side."""
    net, p = model.net, hill_values(model)
    for row, genes in rows_genes:
        q = dict(p, production=p["production"].copy())
        for gene in genes:
            i = net.index(gene)
            assert abs(ss.x[row, i].item()) <= 1e-12  # knocked out (Newton moves it by rounding only)
            q["production"][i] = 0.0
        f = hill_rhs_numpy(net, q)(0.0, ss.x[row].numpy())
        assert np.abs(f).max() <= 1e-9 * (1 + ss.x[row].abs().max().item())


def test_screen_rows_unsolved_from_their_start_solve_from_a_sub_condition():
    # rows of the standard 100-gene screen that oscillate from their start (the steady state is
    # unstable): Newton from x0 and integration to t = 1000 fail on them, and pseudo-transient
    # continuation only just converges or not (which one depends on the CPU's rounding), so
    # the sub-condition fallback is what makes every row converge whatever the machine (on the
    # torch loop's rounding, integration happens to settle KO(G7))
    net = random_network(100, 3, seed=0)
    model = gn.Hill.random(net, n=1, seed=0)
    conds = [gn.Condition(), gn.Knockout("G7"), gn.Knockout("G65")]
    ss = gn.steady_state(model, conds)
    assert ss.converged.all()
    _assert_knockout_steady_states(model, ss, [(1, ["G7"]), (2, ["G65"])])
    # a case that only Newton from a sub-condition's steady state can solve, by construction
    model, conds, x0, kw = sub_condition_case()
    ss = gn.steady_state(model, conds, x0=x0, **kw)
    assert ss.converged.all() and list(ss.method) == ["newton"] + ["sub-condition"] * 6
    _assert_knockout_steady_states(model, ss, [(r, [g for p in c.perturbations for g in p.genes]) for r, c in
                                               enumerate(gn.perturb.as_conditions(conds)) if r > 0])
    without = gn.steady_state(model, conds[1:], x0=x0[1:], **kw)  # no sub-condition in the batch: no rescue
    assert not without.converged.any()

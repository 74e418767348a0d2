"""The native whole-trajectory kernel against the pure-torch loop it must reproduce.

Same steps (counts per row), same statuses, values equal to rounding in float64; in
float32 within the tolerance the solve asks for (rounding may flip a step decision).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import genenet as gn
from genenet import native
from genenet.native import build
from genenet.solvers import Status

# the kernel is part of genenet wherever a C compiler is found (or it was built at install time);
# without one these tests have nothing to test, and test_kernel_builds_here checks that it says why
pytestmark = [pytest.mark.native,
              pytest.mark.skipif(build.compiler() is None and build.installed_library("double") is None,
                                 reason="no C compiler here: the native kernel cannot be built")]


def _solve(monkeypatch, use_native: bool, *args, **kw):
    monkeypatch.setenv("GENENET_NATIVE", "1" if use_native else "0")
    with torch.no_grad():
        return gn.simulate(*args, **kw)


def _both(monkeypatch, *args, **kw):
    return _solve(monkeypatch, False, *args, **kw), _solve(monkeypatch, True, *args, **kw)


def _count_calls(monkeypatch, name: str) -> list:
    """Record the calls of ``genenet.native.<name>`` (proof that the native path ran)."""
    calls, real = [], getattr(native, name)
    monkeypatch.setattr(native, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _assert_same(ref, fast, rtol=1e-10):
    for key in ("n_steps", "n_accepted", "n_rejected", "n_rhs"):
        np.testing.assert_array_equal(fast.stats[key], ref.stats[key], err_msg=key)
    np.testing.assert_array_equal(fast.status, ref.status)
    a, b = ref.y.detach().numpy(), fast.y.detach().numpy()
    scale = float(np.nanmax(np.abs(a)))
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale)


def test_kernel_builds_here(monkeypatch):
    monkeypatch.setenv("GENENET_NATIVE", "1")
    assert native.available(torch.float64), native.reason(torch.float64)
    assert native.available(torch.float32), native.reason(torch.float32)
    lib = native._LIBS[torch.float64]
    assert lib.genenet_source_hash().decode() == build.source_hash()
    assert lib.genenet_isa().decode() in build.cpu_isa_levels()  # portable flags, never -march=native


def test_portable_flags_never_contract_or_target_this_cpu(monkeypatch):
    monkeypatch.delenv("GENENET_NATIVE_ARCH", raising=False)
    monkeypatch.delenv("GENENET_EXTRA_CFLAGS", raising=False)
    flags = build.flags("double")
    assert "-ffp-contract=off" in flags and "-march=native" not in flags and not any("fast-math" in f for f in flags)
    monkeypatch.setenv("GENENET_NATIVE_ARCH", "native")
    assert "-march=native" in build.flags("double")
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        build.flags("half")


_BUILD_AND_LOAD = """
import ctypes, sys
from genenet.native import build
path = build.cached_library("double")
lib = ctypes.CDLL(str(path))
lib.genenet_source_hash.restype = ctypes.c_char_p
assert lib.genenet_source_hash().decode() == build.source_hash()
print(path)
"""


def test_processes_building_at_once_share_one_cache(tmp_path):
    # the workers of a Dask LocalCluster, or parallel test runs, start with an empty cache together
    env = {**os.environ, "GENENET_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_AND_LOAD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1  # one library, built once under the lock
    name = Path(paths.pop()).name
    assert sorted(q.name for q in (tmp_path / "native").iterdir()) == [name, name + ".lock"]  # no half builds left


def test_a_damaged_cached_library_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GENENET_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "installed_library", lambda real: None)
    path = build.cache_path("double", build.compiler())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a library")  # a full disk, a killed copy
    lib = native._build(torch.float64)
    assert lib.genenet_source_hash().decode() == build.source_hash() and path.stat().st_size > 1000


def test_an_installed_library_is_used_only_when_it_fits(tmp_path, monkeypatch):
    monkeypatch.setenv("GENENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENENET_NATIVE_ARCH", raising=False)
    fits = tmp_path / "fits" / "_kernels_double.so"
    build.compile_library("double", fits)
    monkeypatch.setattr(build, "installed_library", lambda real: fits)
    assert native._build(torch.float64)._name == str(fits)
    # from other sources (an editable install whose kernels.c changed since): the cache's instead
    stale = tmp_path / "stale" / "_kernels_double.so"
    monkeypatch.setenv("GENENET_EXTRA_CFLAGS", "-UGENENET_SOURCE_HASH -DGENENET_SOURCE_HASH=\"0123\"")
    build.compile_library("double", stale)
    monkeypatch.delenv("GENENET_EXTRA_CFLAGS")
    monkeypatch.setattr(build, "installed_library", lambda real: stale)
    lib = native._build(torch.float64)
    assert lib._name != str(stale) and lib.genenet_source_hash().decode() == build.source_hash()
    assert native._built_for_here(native._open(stale)).startswith("built from other sources (0123")


def test_without_a_compiler_the_torch_loop_runs_and_says_so_once(monkeypatch):
    monkeypatch.setenv("GENENET_NATIVE", "1")
    monkeypatch.setattr(build, "compiler", lambda: None)
    monkeypatch.setattr(build, "installed_library", lambda real: None)
    monkeypatch.setattr(native, "_LIBS", {})
    monkeypatch.setattr(native, "_FAILED", {})
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    with pytest.warns(native.NativeKernelWarning, match="no C compiler found"):
        traj = gn.simulate(gn.Hill(net), [0.0, 1.0, 2.0])
    assert not native.available() and "no C compiler found" in native.reason()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the second solve is silent
        again = gn.simulate(gn.Hill(net), [0.0, 1.0, 2.0])
    assert torch.equal(traj.y, again.y) and traj.success


def test_is_used_and_matches_the_torch_loop_on_a_knockout_screen(monkeypatch):
    net = gn.Network.random(30, regulators=3, seed=2)
    model = gn.Hill.random(net, n=1, seed=2)
    screen = gn.knockout_screen(net, order=2)[:60]
    t = np.linspace(0, 10, 11)
    ref, fast = _both(monkeypatch, model, t, x0=1.0, perturbations=screen, rtol=1e-7, atol=1e-9)
    _assert_same(ref, fast)
    # and the native path really ran for the second solve
    calls = _count_calls(monkeypatch, "integrate_hill_erk")
    _solve(monkeypatch, True, model, t, x0=1.0, perturbations=screen)
    assert calls


def test_condition_effects_and_non_integer_hill_coefficients(monkeypatch):
    net = gn.Network.random(12, regulators=2, seed=5)
    model = gn.Hill.random(net, n=4, seed=5)
    model.set_params(hill=np.linspace(1.3, 4.7, net.n_edges))  # pow path, not integer powers
    genes = list(net.genes)
    conds = [[], gn.Knockdown(genes[0], 0.7), gn.Overexpress(genes[1], fold=3.0),
             gn.Overexpress(genes[2], rate=2.0), gn.Clamp(genes[3], 1.5), gn.Knockout(genes[4])]
    t = np.linspace(0, 8, 17)
    ref, fast = _both(monkeypatch, model, t, x0=0.5, perturbations=conds, rtol=1e-8, atol=1e-10)
    _assert_same(ref, fast)
    clamp_rows = [i for i, lab in enumerate(ref.labels) if "Clamp" in str(lab) or "clamp" in str(lab)]
    assert clamp_rows and np.allclose(fast.y[clamp_rows][..., 3].numpy(), 1.5)


def test_tsit5_first_step_steady_stop_and_failures(monkeypatch):
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.Hill(net, production=[5.0, 4.0], degradation=[1.0, 1.0], hill=4.0, fold=20.0)
    t = np.linspace(0, 200, 41)
    x0 = np.random.default_rng(0).uniform(0, 5, (64, 2))
    for kw in (dict(method="tsit5"), dict(first_step=1e-3), dict(steady_tol=1e-7)):
        ref, fast = _both(monkeypatch, model, t, x0=x0, rtol=1e-8, atol=1e-10, **kw)
        _assert_same(ref, fast)
    ref, fast = _both(monkeypatch, model, t, x0=x0, max_steps=7, throw=False)
    _assert_same(ref, fast)
    assert (fast.status == Status.MAX_STEPS).all()
    # a float32 state at the edge of overflow: its stages overflow to inf in both, and the row fails alone
    ref, fast = _both(monkeypatch, model, t, x0=np.array([[3e38, 1.0], [1.0, 1.0]]), throw=False,
                      dtype=torch.float32)
    np.testing.assert_array_equal(fast.status, ref.status)
    assert fast.status[0] != Status.SUCCESS and fast.status[1] == Status.SUCCESS


def test_float32_agrees_within_the_tolerance(monkeypatch):
    net = gn.Network.random(40, regulators=3, seed=1)
    model = gn.Hill.random(net, n=1, seed=1)
    t = np.linspace(0, 20, 21)
    kw = dict(x0=1.0, perturbations=gn.knockout_screen(net, order=1), rtol=1e-5, atol=1e-6, dtype=torch.float32)
    ref, fast = _both(monkeypatch, model, t, **kw)
    scale = float(ref.y.abs().max())
    assert float((fast.y - ref.y).abs().max()) < 1e-3 * scale
    steps_same = np.mean(fast.stats["n_steps"] == ref.stats["n_steps"])
    assert steps_same > 0.5


def test_gradients_take_the_torch_path(monkeypatch):
    monkeypatch.setenv("GENENET_NATIVE", "1")
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.Hill(net)
    traj = gn.simulate(model, [0.0, 1.0], x0=[1.0, 2.0])  # parameters require grad: differentiable
    assert traj.y.requires_grad
    traj.y.sum().backward()
    assert model.raw["production"].grad is not None


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("GENENET_NATIVE", "0")
    assert not native.available()
    assert "GENENET_NATIVE" in native.reason()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_model_without_a_kernel_runs_on_the_torch_path(monkeypatch, dtype):
    model = gn.Model.from_functions(["x"], lambda t, x, p: p["g"] + 0 * x, lambda t, x, p: p["k"] * x,
                                   {"g": 2.0, "k": 0.5})
    traj = _solve(monkeypatch, True, model, np.linspace(0, 4, 5), x0=[0.0], dtype=dtype, rtol=1e-8, atol=1e-10)
    exact = 4.0 * (1 - np.exp(-0.5 * np.linspace(0, 4, 5)))
    np.testing.assert_allclose(traj.y[0, :, 0].numpy(), exact, rtol=1e-5 if dtype == torch.float32 else 1e-7)


def _sens(monkeypatch, use_native: bool, *args, **kw):
    monkeypatch.setenv("GENENET_NATIVE", "1" if use_native else "0")
    return gn.sensitivities(*args, **kw)


@pytest.mark.parametrize("wrt", [["production"], ["threshold", "hill", "fold", "degradation", "x0"]])
def test_forward_sensitivities_match_the_torch_loop(monkeypatch, wrt):
    """Tangents ride along in the kernel: same steps, state and tangents equal to rounding, under
    every kind of condition effect (multiplier, added input, clamp, knockout) and pow hill powers."""
    net = gn.Network.random(8, regulators=2, seed=4)
    model = gn.Hill.random(net, n=1, seed=4)
    model.set_params(hill=np.linspace(1.0, 3.5, net.n_edges))  # n = 1 (x = 0 limit), integers, and pow
    genes = list(net.genes)
    conds = [[], gn.Knockdown(genes[0], 0.6), gn.Overexpress(genes[1], fold=2.0),
             gn.Overexpress(genes[2], rate=1.5), gn.Clamp(genes[3], 0.8), gn.Knockout(genes[4])]
    t = np.linspace(0, 6, 13)
    kw = dict(x0=np.linspace(0.0, 2.0, 8), perturbations=conds, wrt=wrt, rtol=1e-8, atol=1e-10)
    ref = _sens(monkeypatch, False, model, t, **kw)
    calls = _count_calls(monkeypatch, "integrate_hill_erk")
    fast = _sens(monkeypatch, True, model, t, **kw)
    assert calls, "the native kernel did not run"
    _assert_same(ref.trajectory, fast.trajectory)
    scale = float(ref.dy.abs().max())
    assert scale > 0
    np.testing.assert_allclose(fast.dy.numpy(), ref.dy.numpy(), rtol=1e-9, atol=1e-10 * scale)


def test_native_sensitivities_agree_with_finite_differences(monkeypatch):
    """An independent check of the kernel's tangents: central differences of native forward solves."""
    monkeypatch.setenv("GENENET_NATIVE", "1")
    net = gn.Network.random(6, regulators=2, seed=7)
    model = gn.Hill.random(net, n=1, seed=7)
    t = np.linspace(0, 5, 6)
    sens = gn.sensitivities(model, t, x0=1.0, wrt=["threshold"], rtol=1e-11, atol=1e-13)
    base = model.params["threshold"].detach()[0].numpy()
    j = 6  # G2 -> G3, and G3 regulates three genes: the tangent spreads through the network
    ys = []
    for sign in (1, -1):
        v = base.copy()
        v[j] *= 1 + sign * 1e-5
        with torch.no_grad():
            ys.append(gn.simulate(model, t, x0=1.0, params={"threshold": v}, rtol=1e-11, atol=1e-13).y[0].numpy())
    fd = (ys[0] - ys[1]) / (2e-5 * base[j])
    assert (np.abs(fd[-1]) > 1e-3).sum() >= 3
    # FD noise: the perturbed solves take other steps, ~rtol / 1e-5 of the state
    np.testing.assert_allclose(sens.dy[0, :, j].numpy(), fd, rtol=1e-5, atol=1e-6 * np.abs(ys[0]).max())


def _stiff_problem(G=20, seed=0):
    rng = np.random.default_rng(seed)
    net = gn.Network.random(G, 3, seed=seed)
    model = gn.Hill.random_stiff(net, seed=seed, rng=rng)
    levels = (model.params["production"] / model.params["degradation"]).detach()[0].numpy()
    return net, model, levels * rng.uniform(0.2, 1.5, G)


@pytest.mark.parametrize("method", ["rodas5", "rodas4", "auto"])
def test_rosenbrock_kernel_matches_the_torch_loop(monkeypatch, method):
    """Same steps and values to rounding for the stiff methods, under every condition effect; for
    "auto" the implicit phase starts mid-run (per-row start times) in the kernel."""
    net, model, x0 = _stiff_problem()
    genes = list(net.genes)
    conds = [[], gn.Knockout(genes[0]), gn.Knockdown(genes[1], 0.3), gn.Overexpress(genes[2], fold=2.0),
             gn.Overexpress(genes[3], rate=5.0), gn.Clamp(genes[4], 2.0)]
    t = np.linspace(0, 20, 9)
    kw = dict(x0=x0, perturbations=conds, method=method, rtol=1e-6, atol=1e-8)
    ref = _solve(monkeypatch, False, model, t, **kw)
    calls = _count_calls(monkeypatch, "integrate_hill_rodas")
    fast = _solve(monkeypatch, True, model, t, **kw)
    assert calls, "the native Rosenbrock kernel did not run"
    _assert_same(ref, fast, rtol=1e-9)
    assert ref.stats["n_steps"].min() > 50  # a stiff solve, not a trivial one
    if method == "auto":
        np.testing.assert_array_equal(fast.stats["switched"], ref.stats["switched"])
        assert fast.stats["switched"].any()


def test_rosenbrock_kernel_against_scipy_radau_and_its_failures(monkeypatch):
    """An independent reference for the native Rosenbrock path, and per-row failure statuses."""
    from scipy.integrate import solve_ivp

    from reference import hill_rhs_numpy, hill_values

    monkeypatch.setenv("GENENET_NATIVE", "1")
    net, model, x0 = _stiff_problem(G=12, seed=3)
    t = np.linspace(0, 10, 6)
    with torch.no_grad():
        traj = gn.simulate(model, t, x0=x0, method="rodas5", rtol=1e-9, atol=1e-11)
    f = hill_rhs_numpy(net, hill_values(model))
    ref = solve_ivp(f, (0, 10), x0, method="Radau", t_eval=t, rtol=1e-12, atol=1e-14).y.T
    assert np.abs(traj.y[0].numpy() - ref).max() < 1e-6 * np.abs(ref).max()
    with torch.no_grad():
        short = gn.simulate(model, t, x0=x0, method="rodas5", max_steps=5, throw=False)
    assert (short.status == Status.MAX_STEPS).all()
    assert np.isnan(short.y[0, -1].numpy()).all()


def test_rosenbrock_kernel_float32(monkeypatch):
    net, model, x0 = _stiff_problem(G=15, seed=1)
    t = np.linspace(0, 10, 6)
    kw = dict(x0=x0, perturbations=gn.knockout_screen(net, order=1), method="rodas5", rtol=1e-4, atol=1e-5,
              dtype=torch.float32)
    ref, fast = _both(monkeypatch, model, t, **kw)
    scale = float(ref.y.abs().max())
    assert float((fast.y - ref.y).abs().max()) < 1e-3 * scale


def _loss_grads(monkeypatch, use_native, model, t, x0, conds, **kw):
    monkeypatch.setenv("GENENET_NATIVE", "1" if use_native else "0")
    model.zero_grad()
    x0 = torch.as_tensor(x0, dtype=torch.float64).clone().requires_grad_(True)
    traj = gn.simulate(model, t, x0=x0, perturbations=conds, rtol=1e-8, atol=1e-10, **kw)
    loss = (traj.y ** 2).sum() + traj.y[:, -1].sum()
    loss.backward()
    grads = {k: v.grad.clone() for k, v in model.raw.items()}
    return float(loss.detach()), grads, x0.grad.clone(), traj


def _condition_effects_case():
    """8 genes with non-integer hill coefficients under every condition effect: multiplier, added
    input (fold and rate), clamp, knockout; the model, conditions, x0 and the number of raw
    parameters + x0 entries."""
    net = gn.Network.random(8, regulators=2, seed=6)
    model = gn.Hill.random(net, n=1, seed=6)
    model.set_params(hill=np.linspace(1.0, 3.5, net.n_edges))
    genes = list(net.genes)
    conds = [[], gn.Knockdown(genes[0], 0.6), gn.Overexpress(genes[1], fold=2.0),
             gn.Overexpress(genes[2], rate=1.5), gn.Clamp(genes[3], 0.8), gn.Knockout(genes[4])]
    x0 = np.linspace(0.1, 2.0, 8)
    n = sum(v.numel() for v in model.raw.values()) + 8
    return model, conds, x0, n


@pytest.mark.parametrize("kw", [{}, {"method": "tsit5"}])
def test_native_adjoint_matches_backpropagation_through_the_torch_loop(monkeypatch, kw):
    """A differentiable solve runs the kernel with a tape and reverses it in C: the gradient of a loss
    with respect to every Hill parameter and x0 equals backprop through the torch loop to rounding,
    under condition effects (multiplier, added input, clamp, knockout) and a steady-state stop."""
    model, conds, x0, _ = _condition_effects_case()
    t = np.linspace(0, 6, 13)
    ref = _loss_grads(monkeypatch, False, model, t, x0, conds, **kw)
    calls = _count_calls(monkeypatch, "integrate_hill_erk_grad")
    fast = _loss_grads(monkeypatch, True, model, t, x0, conds, **kw)
    assert calls, "the native adjoint did not run"
    _assert_same(ref[3], fast[3])
    assert fast[0] == pytest.approx(ref[0], rel=1e-12)
    for name, g in ref[1].items():
        assert float(g.abs().max()) > 0, name
        np.testing.assert_allclose(fast[1][name].numpy(), g.numpy(), rtol=1e-8, atol=1e-10 * float(g.abs().max()),
                                   err_msg=name)
    np.testing.assert_allclose(fast[2].numpy(), ref[2].numpy(), rtol=1e-8, atol=1e-12)


def test_native_adjoint_agrees_with_finite_differences(monkeypatch):
    monkeypatch.setenv("GENENET_NATIVE", "1")
    net = gn.Network.random(6, regulators=2, seed=8)
    model = gn.Hill.random(net, n=1, seed=8)
    t = np.linspace(0, 5, 6)
    target = torch.linspace(0.0, 1.0, 6)

    def loss_of(fold):
        return float(((gn.simulate(model, t, x0=1.0, params={"fold": fold}, rtol=1e-11, atol=1e-13).y[0]
                        - target) ** 2).sum())

    model.zero_grad()
    traj = gn.simulate(model, t, x0=1.0, rtol=1e-11, atol=1e-13)
    ((traj.y[0] - target) ** 2).sum().backward()
    lam = model.params["fold"].detach()[0].numpy()
    grad_raw = model.raw["fold"].grad[0].numpy()
    # raw storage: fold = 1 + exp(raw) (bounded below by 1), so dL/draw = dL/dfold * (fold - 1)
    j = 2
    with torch.no_grad():
        up, down = lam.copy(), lam.copy()
        up[j] *= 1 + 1e-6
        down[j] *= 1 - 1e-6
        fd = (loss_of(up) - loss_of(down)) / (2e-6 * lam[j])
    assert grad_raw[j] == pytest.approx(fd * (lam[j] - 1), rel=1e-5)


def test_native_adjoint_through_a_steady_state_stop(monkeypatch):
    """Rows that stop early at a steady state copy it to their remaining save times; the adjoint
    sends those outputs' cotangents to the final state."""
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])
    model = gn.Hill(net, production=[5.0, 4.0], degradation=[1.0, 1.2], hill=4.0, fold=20.0)
    t = np.linspace(0, 200, 41)
    x0 = [[3.0, 0.5], [0.4, 2.0], [1.0, 1.1]]
    ref = _loss_grads(monkeypatch, False, model, t, x0, None, steady_tol=1e-7)
    fast = _loss_grads(monkeypatch, True, model, t, x0, None, steady_tol=1e-7)
    full = _loss_grads(monkeypatch, True, model, t, x0, None)
    assert (fast[3].stats["n_steps"] < full[3].stats["n_steps"]).all()  # the stop happened
    _assert_same(ref[3], fast[3])
    for name, g in ref[1].items():
        np.testing.assert_allclose(fast[1][name].numpy(), g.numpy(), rtol=1e-8, atol=1e-10 * float(g.abs().max()),
                                   err_msg=name)
    np.testing.assert_allclose(fast[2].numpy(), ref[2].numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vectorized_log_matches_libm(dtype):
    """The adjoint's vectorized log (hill.h, log_pos) against numpy over 600 decades and around 1,
    where the bits' split into exponent and mantissa switches; 0 for x <= 0."""
    lib = native._lib(dtype)
    if lib is None:
        pytest.skip(f"no native kernel: {native._FAILED.get(dtype)}")
    tiny = torch.finfo(dtype).tiny
    x = torch.cat([torch.logspace(np.log10(tiny), np.log10(torch.finfo(dtype).max) - 1, 20001, dtype=torch.float64),
                   1 + torch.linspace(-0.4, 0.6, 20001, dtype=torch.float64),
                   torch.tensor([np.sqrt(0.5), np.sqrt(2.0), 1.0, 2.0, 0.5])]).to(dtype)
    x = torch.cat([x, torch.tensor([0.0, -1.0, -1e-30], dtype=dtype)])
    out = torch.empty_like(x)
    lib.genenet_log_pos(ctypes.c_int64(x.numel()), native._ptr(x), native._ptr(out))
    ref = torch.log(x[:-3].double())
    ulp = torch.finfo(dtype).eps * ref.abs().clamp(min=1e-300)
    err = (out[:-3].double() - ref).abs()
    assert float((err / ulp).max()) <= 4, float((err / ulp).max())
    assert out[-3:].tolist() == [0.0, 0.0, 0.0]


def test_pooled_tapes_give_the_same_gradient_again(monkeypatch):
    """Freed tapes go to a pool that the next differentiable solve draws from (another tape size
    replaces it; release_memory empties it): repeated gradients are identical either way."""
    monkeypatch.setenv("GENENET_NATIVE", "1")
    net = gn.Network.random(7, regulators=2, seed=3)
    model = gn.Hill.random(net, n=1, seed=3)
    t = np.linspace(0, 8, 9)

    def grad(m=model):
        m.zero_grad()
        traj = gn.simulate(m, t, x0=1.0, perturbations=gn.knockout_screen(net, order=1))
        (traj.y ** 2).sum().backward()
        return torch.cat([v.grad.reshape(-1) for v in m.raw.values()])

    first = grad()
    again = grad()  # from the pool
    other = gn.Hill.random(gn.Network.random(5, regulators=2, seed=4), n=1, seed=4)
    other.zero_grad()
    (gn.simulate(other, t, x0=1.0).y ** 2).sum().backward()  # another block size: the pool is replaced
    third = grad()
    native.release_memory()
    fourth = grad()
    assert float(first.abs().max()) > 0
    for g in (again, third, fourth):
        assert torch.equal(g, first)


@pytest.mark.parametrize("free", [["production"], ["degradation", "fold"], ["threshold"], ["hill", "production"]])
def test_native_adjoint_of_a_subset_of_parameters(monkeypatch, free):
    """Only the parameters that require grad get cotangents (the kernel skips the slot parameters'
    sums, or hill's logs, when autograd does not ask for them); those equal backprop through the
    torch loop."""
    net = gn.Network.random(8, regulators=2, seed=11)
    t = np.linspace(0, 6, 7)
    conds = [[], gn.Knockdown(net.genes[0], 0.5), gn.Knockout(net.genes[1])]

    def grads(native_on: bool) -> dict:
        monkeypatch.setenv("GENENET_NATIVE", "1" if native_on else "0")
        model = gn.Hill.random(net, n=1, seed=11)
        for name, v in model.raw.items():
            v.requires_grad_(name in free)
        y = gn.simulate(model, t, x0=1.0, perturbations=conds, rtol=1e-9, atol=1e-11).y
        (y ** 2).sum().backward()
        return {k: v.grad for k, v in model.raw.items()}

    calls = _count_calls(monkeypatch, "integrate_hill_erk_grad")
    fast = grads(True)
    assert calls, "the native adjoint did not run"
    ref = grads(False)
    for name in ref:
        if name not in free:
            assert fast[name] is None and ref[name] is None, name
            continue
        assert float(ref[name].abs().max()) > 0, name
        np.testing.assert_allclose(fast[name].numpy(), ref[name].numpy(), rtol=1e-8,
                                   atol=1e-10 * float(ref[name].abs().max()), err_msg=name)


def test_stiffness_detection_runs_in_the_explicit_kernel(monkeypatch):
    """method="auto"'s explicit phase runs in the kernel with the torch loop's stiffness detection
    (Hairer's estimate and the Jacobian's spectral radius refreshed on the same attempts): the same
    rows stop STIFF at the same step, time and state; the others finish as in the loop."""
    import genenet.solvers.switching as switching

    net, model, x0 = _stiff_problem(G=16, seed=3)
    genes = list(net.genes)
    conds = [[], gn.Knockout(genes[0]), gn.Knockdown(genes[1], 0.5), gn.Clamp(genes[2], 1.0)]
    # rows on a mild copy too (degradations 100x smaller): those must not be declared stiff
    mild = gn.Hill(net, **{k: v.detach()[0] for k, v in model.params.items()})
    mild.set_params(degradation=model.params["degradation"].detach()[0].numpy() / 100)
    t = np.linspace(0, 10, 6)
    phases = []
    real = switching.integrate

    def spy(*a, **k):
        sol = real(*a, **k)
        if k.get("stiff_after") is not None:
            phases.append(sol)
        return sol

    monkeypatch.setattr(switching, "integrate", spy)
    results = {}
    for use_native in (False, True):
        phases.clear()
        calls = _count_calls(monkeypatch, "integrate_hill_erk")
        for m in (model, mild):
            _solve(monkeypatch, use_native, m, t, x0=x0, perturbations=conds, method="auto", rtol=1e-6, atol=1e-8)
        assert bool(calls) == use_native
        results[use_native] = list(phases)
    for ref, fast in zip(results[False], results[True]):
        np.testing.assert_array_equal(fast.status.numpy(), ref.status.numpy())
        for key in ("n_steps", "n_accepted", "n_rejected", "n_rhs"):
            np.testing.assert_array_equal(getattr(fast, key).numpy(), getattr(ref, key).numpy(), err_msg=key)
        np.testing.assert_allclose(fast.t_last.numpy(), ref.t_last.numpy(), rtol=1e-9)  # rounding, ~500 steps
        np.testing.assert_allclose(fast.y_last.numpy(), ref.y_last.numpy(), rtol=1e-9, atol=1e-9)
    stiff_model, mild_model = (r.status.numpy() == int(Status.STIFF) for r in results[True])
    assert stiff_model.any() and not mild_model.any()


def test_native_tape_stops_with_a_memory_error_before_memory_runs_out(monkeypatch):
    """The tapes of a differentiable solve may take at most 90% of the memory available when it starts;
    past that the solve raises MemoryError naming the ways out (here the 'available' memory is made
    small); the next solve, with the real budget, works."""
    monkeypatch.setenv("GENENET_NATIVE", "1")
    net = gn.Network.random(12, regulators=2, seed=5)
    model = gn.Hill.random(net, n=1, seed=5)
    t = np.linspace(0, 30, 7)
    native.release_memory()  # no pooled blocks: every block is a fresh allocation
    monkeypatch.setattr(native, "available_memory", lambda device: 200_000)  # 0.2 MB
    with pytest.raises(MemoryError, match="gradient_adjoint"):
        gn.simulate(model, t, x0=1.0, perturbations=gn.knockout_screen(net, order=1)).y.sum().backward()
    monkeypatch.undo()
    monkeypatch.setenv("GENENET_NATIVE", "1")
    model.zero_grad()
    gn.simulate(model, t, x0=1.0, perturbations=gn.knockout_screen(net, order=1)).y.sum().backward()
    assert float(model.raw["production"].grad.abs().max()) > 0


def _fit_problem(seed: int, effect, t: np.ndarray, n_sets: int, **kw) -> gn.FitProblem:
    """A 6-gene fit of every Hill parameter kind to noisy data of wild type, ``effect`` (Knockdown 0.5
    or Overexpress 2) on the first gene, a knockout and a clamp; ``n_sets`` starting parameter sets."""
    net = gn.Network.random(6, regulators=2, seed=seed)
    truth = gn.Hill.random(net, n=1, seed=seed)
    genes = list(net.genes)
    strength = 0.5 if effect is gn.Knockdown else 2.0
    conds = [gn.Condition([], label="wt"), gn.Condition([effect(genes[0], strength)], label="fx"),
             gn.Condition([gn.Knockout(genes[1])], label="ko"), gn.Condition([gn.Clamp(genes[2], 0.7)], label="cl")]
    data = gn.ExpressionData.from_trajectory(gn.simulate(truth, t, x0=1.0, perturbations=conds), noise=0.05,
                                             seed=seed)
    start = gn.Hill.random(net, n=n_sets, seed=seed + 1)
    return gn.FitProblem(start, data, free=["production", "degradation", "threshold", "hill", "fold"],
                         conditions={c.label: c for c in conds}, x0=np.ones(6), **kw)


def _compare_adjoints(prob, theta, L, g, *, loss_rtol, rtol, bp_rtol, bp_atol):
    """(L, g) against gradient_adjoint as now configured (the reference path) and against backprop."""
    L_ref, g_ref = prob.gradient_adjoint(theta)
    _, g_bp = prob.gradient(theta)
    assert float(g_ref.abs().min()) > 0
    torch.testing.assert_close(L, L_ref, rtol=loss_rtol, atol=0)
    torch.testing.assert_close(g, g_ref, rtol=rtol, atol=rtol * 1e-3 * float(g_ref.abs().max()))
    torch.testing.assert_close(g, g_bp, rtol=bp_rtol, atol=bp_atol * float(g_bp.abs().max()))


def test_continuous_adjoint_with_native_vjps(monkeypatch):
    """FitProblem.gradient_adjoint on the Hill model takes its augmented system's VJPs from one C call
    per RHS (native.hill_vjp, parameter quadrature in the spec arrays' space): the same gradient as
    the autograd VJPs and as backpropagation, for every kind of parameter, under condition effects."""
    prob = _fit_problem(4, gn.Knockdown, np.linspace(0, 6, 7), n_sets=1, rtol=1e-10, atol=1e-12)
    theta = prob.theta0[None]
    from genenet.fit import adjoint

    monkeypatch.setattr(adjoint, "_SWEEP_IN_C", False)  # the torch loop with C VJPs (the sweep: next test)
    calls = _count_calls(monkeypatch, "hill_vjp")
    monkeypatch.setenv("GENENET_NATIVE", "1")
    L_nat, g_nat = prob.gradient_adjoint(theta)
    assert calls, "the native VJP did not run"
    monkeypatch.setenv("GENENET_NATIVE", "0")
    _compare_adjoints(prob, theta, L_nat, g_nat, loss_rtol=1e-9, rtol=1e-6, bp_rtol=1e-6, bp_atol=1e-8)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_continuous_adjoint_sweep_in_c(monkeypatch, method):
    """The continuous adjoint's whole backward pass in C (native.adjoint_sweep) against the same pass
    on the torch loop with the same C VJPs (the same steps: agreement to rounding) and against
    backpropagation (agreement to the tolerance), for every kind of parameter under condition effects,
    data at some of the checkpoint times only."""
    from genenet.fit import adjoint

    monkeypatch.setenv("GENENET_NATIVE", "1")  # this module tests the kernel, also inside a GENENET_NATIVE=0 run
    prob = _fit_problem(7, gn.Overexpress, np.array([0.0, 0.5, 2.0, 2.5, 6.0]), n_sets=2, rtol=1e-9, atol=1e-11,
                        method=method)
    theta = torch.stack([prob.theta0, prob.theta0 * 1.05])
    calls = _count_calls(monkeypatch, "adjoint_sweep")
    L_c, g_c = prob.gradient_adjoint(theta)
    assert calls, "the C sweep did not run"
    monkeypatch.setattr(adjoint, "_SWEEP_IN_C", False)
    _compare_adjoints(prob, theta, L_c, g_c, loss_rtol=1e-12, rtol=1e-9, bp_rtol=1e-5, bp_atol=1e-7)


def test_a_compiler_that_lacks_the_level_builds_the_baseline(tmp_path, monkeypatch):
    # GCC < 11 does not know -march=x86-64-v3; the baseline build gives the same bits, a bit slower
    monkeypatch.delenv("GENENET_NATIVE_ARCH", raising=False)
    if build.cpu_isa_levels()[0] in ("", "x86-64") or build.compiler() is None:
        pytest.skip("no x86-64 level above the baseline on this CPU, or no compiler")
    old = tmp_path / "oldcc"
    old.write_text(f'#!/bin/sh\ncase "$*" in *x86-64-v*) echo "error: bad value for -march" >&2; exit 1;; esac\n'
                   f'exec {build.compiler()} "$@"\n')
    old.chmod(0o755)
    cmd = build.compile_library("double", tmp_path / "lib.so", cc=str(old))
    assert "-march=x86-64" in cmd
    lib = ctypes.CDLL(str(tmp_path / "lib.so"))
    lib.genenet_isa.restype = ctypes.c_char_p
    assert lib.genenet_isa().decode() == "x86-64"


def _hvp(monkeypatch, native_on: bool, model, t, x0, conds, direction, **kw):
    """Gradient and Hessian-vector product of a loss of the trajectory with respect to every raw Hill
    parameter and x0 (flattened in that order), by differentiating the gradient again."""
    monkeypatch.setenv("GENENET_NATIVE", "1" if native_on else "0")
    raws = list(model.raw.values())
    x0 = torch.as_tensor(x0, dtype=torch.float64).clone().requires_grad_(True)
    traj = gn.simulate(model, t, x0=x0, perturbations=conds, rtol=1e-8, atol=1e-10, **kw)
    loss = (traj.y ** 2).sum() + (traj.y[:, -1] ** 3).sum()
    grads = torch.autograd.grad(loss, [*raws, x0], create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hv = torch.autograd.grad((flat * direction).sum(), [*raws, x0])
    return flat.detach(), torch.cat([h.reshape(-1) for h in hv]), traj


@pytest.mark.parametrize("kw", [{}, {"method": "tsit5"}, {"steady_tol": 1e-7}])
def test_native_hessian_vector_products_match_the_torch_loop(monkeypatch, kw):
    """A gradient taken with create_graph is differentiable again on the native path: the second-order
    sweep in C (hvp.h) gives the Hessian-vector product of a loss of the trajectory with respect to
    every Hill parameter and x0, under condition effects (multiplier, added input, clamp, knockout),
    non-integer hill coefficients and a steady-state stop, equal to reverse-over-reverse through the
    torch loop to rounding. (No knockout here: torch's second derivative of z^n at z = 0 is NaN for
    non-integer n; the knockout case is checked against finite differences below.)"""
    model, conds, x0, n = _condition_effects_case()
    conds = conds[:-1]
    t = np.linspace(0, 6, 13)
    if "steady_tol" in kw:  # a toggle switch that settles well before t = 200
        model = gn.Hill(gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")]), production=[5.0, 4.0],
                        degradation=[1.0, 1.2], hill=[4.0, 3.3], fold=20.0)
        conds, x0, t = [[], gn.Knockdown("A", 0.7)], [[3.0, 0.5], [0.4, 2.0]], np.linspace(0, 200, 41)
        n = sum(v.numel() for v in model.raw.values()) + 4
    direction = torch.as_tensor(np.random.default_rng(0).normal(size=n))
    calls = _count_calls(monkeypatch, "integrate_hill_erk_grad")
    g_fast, h_fast, traj_fast = _hvp(monkeypatch, True, model, t, x0, conds, direction, **kw)
    assert calls, "the native adjoint did not run"
    g_ref, h_ref, traj_ref = _hvp(monkeypatch, False, model, t, x0, conds, direction, **kw)
    _assert_same(traj_ref, traj_fast)
    if "steady_tol" in kw:  # the rows stopped early
        with torch.no_grad():
            full = gn.simulate(model, t, x0=x0, perturbations=conds, rtol=1e-8, atol=1e-10)
        assert (traj_fast.stats["n_steps"] < full.stats["n_steps"]).all()
    np.testing.assert_allclose(g_fast.numpy(), g_ref.numpy(), rtol=1e-8, atol=1e-10 * float(g_ref.abs().max()))
    assert bool(torch.isfinite(h_ref).all()) and int((h_ref != 0).sum()) > n // 2
    np.testing.assert_allclose(h_fast.numpy(), h_ref.numpy(), rtol=1e-7, atol=1e-9 * float(h_ref.abs().max()))


def test_native_hessian_vector_products_agree_with_finite_differences_of_the_gradient(monkeypatch):
    """H v against (g(θ + εv) - g(θ - εv)) / 2ε of the native gradient, per raw parameter block and x0."""
    model, conds, x0, n = _condition_effects_case()
    t = np.linspace(0, 6, 7)
    direction = torch.as_tensor(np.random.default_rng(1).normal(size=n))
    _, hv, _ = _hvp(monkeypatch, True, model, t, x0, conds, direction)
    eps = 1e-5
    base = {k: v.detach().clone() for k, v in model.raw.items()}

    def grad_at(step: float) -> torch.Tensor:
        k = 0
        with torch.no_grad():
            for name, v in model.raw.items():
                v.copy_(base[name] + step * direction[k: k + v.numel()].view_as(v))
                k += v.numel()
        g, _, _ = _hvp(monkeypatch, True, model, t, x0 + step * direction[k:].numpy(), conds, direction)
        return g

    fd = (grad_at(eps) - grad_at(-eps)) / (2 * eps)
    with torch.no_grad():
        for name, v in model.raw.items():
            v.copy_(base[name])
    k = 0
    for name, v in [*model.raw.items(), ("x0", torch.zeros(8))]:
        m = v.numel()
        np.testing.assert_allclose(hv[k: k + m].numpy(), fd[k: k + m].numpy(), rtol=2e-5,
                                   atol=2e-5 * float(fd.abs().max()), err_msg=name)
        k += m


def _pulsed_case():
    """The condition-effects model under pulses: switching times inside the span (one shared by two
    conditions, two on save times) and a clamp whose jump lands on a save."""
    model, _, x0, _ = _condition_effects_case()
    genes = list(model.genes)
    conds = [[], gn.Pulse(gn.Knockdown(genes[0], 0.8), 1.0, 3.0), gn.Pulse(gn.Clamp(genes[3], 2.5), 1.5, 4.25),
             [gn.Pulse(gn.Overexpress(genes[1], fold=3.0), 1.0, 2.2), gn.Knockout(genes[4])]]
    return model, conds, x0


@pytest.mark.parametrize("method", ["dopri5", "rodas5", "auto"])
def test_pulses_run_natively_one_regime_at_a_time(monkeypatch, method):
    # the loop follows each row's switching times; the native kernels run one regime per call, chained
    # at the union of the switching times (genenet.solvers.segments): the same solution within tolerance
    model, conds, x0 = _pulsed_case()
    t = np.linspace(0, 6, 25)  # saves at 1.0, 1.5 and 4.25: the state after the jump
    kernel = "integrate_rodas" if method == "rodas5" else "integrate_erk"
    calls = _count_calls(monkeypatch, kernel)
    ref, fast = _both(monkeypatch, model, t, x0=x0, perturbations=conds, method=method, rtol=1e-10, atol=1e-12)
    assert len(calls) >= 5, "the pieces did not run natively"  # 4 distinct interior switching times: 5 pieces
    assert fast.success and ref.success
    np.testing.assert_allclose(fast.y.numpy(), ref.y.numpy(), rtol=1e-7, atol=1e-9)
    clamped = fast[list(model.genes)[3]][2].numpy()
    assert clamped[5] != 2.5 and (clamped[6:18] == 2.5).all() and clamped[18] != 2.5  # held on [1.5, 4.25]
    assert (fast.stats["n_steps"] > 0).all()


def test_pulses_native_adjoint_matches_the_loop(monkeypatch):
    model, conds, x0 = _pulsed_case()
    t = np.linspace(0, 6, 13)
    ref = _loss_grads(monkeypatch, False, model, t, x0, conds, method="dopri5")
    calls = _count_calls(monkeypatch, "integrate_erk_grad")
    fast = _loss_grads(monkeypatch, True, model, t, x0, conds, method="dopri5")
    assert calls, "the native adjoint did not run"
    assert fast[0] == pytest.approx(ref[0], rel=1e-6)
    for name, g in ref[1].items():
        np.testing.assert_allclose(fast[1][name].numpy(), g.numpy(), rtol=1e-5, atol=1e-6 * float(g.abs().max()),
                                   err_msg=name)
    np.testing.assert_allclose(fast[2].numpy(), ref[2].numpy(), rtol=1e-5, atol=1e-8)

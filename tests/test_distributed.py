"""Rows of a batch on their own (``rows=``) and in chunks on Dask workers (``cluster=``): the same
rows, labels and values as one in-process call."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch

import genenet as gn
from genenet.distributed import row_chunks
from reference import assert_same_rows, native_runs, sub_condition_case


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def tcim():
    net = gn.load_network("tcim")
    return net, gn.Hill.random(net, n=2, seed=1), gn.knockout_screen(net, order=2)


def _same_rows(a, b, idx):
    assert a.labels == [b.labels[i] for i in idx]
    assert a.conditions == [b.conditions[i] for i in idx]
    np.testing.assert_array_equal(a.parameter_sets, b.parameter_sets[idx])


def test_rows_are_those_of_the_whole_batch():
    net = gn.load_network("toggle_switch")
    model = gn.Hill.random(net, n=3, seed=0)
    conds = [gn.Condition(), gn.Knockout("A"), gn.Overexpress("B", 3.0)]
    t = np.linspace(0, 5, 6)
    x0 = torch.rand(9, 2) + 0.1  # one per row
    full = gn.simulate(model, t, x0=x0, perturbations=conds)
    idx = [7, 0, 8, 4]
    part = gn.simulate(model, t, x0=x0, perturbations=conds, rows=[7, 0, -1, 4])
    _same_rows(part, full, idx)
    assert part.labels[:2] == ["OE(B,x3) | set 1", "wild type | set 0"]
    assert_same_rows(part.y, full.y[idx])
    assert_same_rows(gn.simulate(model, t, perturbations=conds, rows=slice(2, 5)).y,
                     gn.simulate(model, t, perturbations=conds).y[2:5])
    mask = np.zeros(9, bool)
    mask[[1, 6]] = True
    assert_same_rows(gn.simulate(model, t, x0=x0, perturbations=conds, rows=mask).y, full.y[[1, 6]])
    # replicates: N initial states of one condition and one parameter set
    one = gn.Hill(net)
    starts = torch.rand(5, 2) * 4
    reps = gn.simulate(one, t, x0=starts)
    sub = gn.simulate(one, t, x0=starts, rows=[4, 1])
    assert sub.labels == ["wild type #4", "wild type #1"]
    assert_same_rows(sub.y, reps.y[[4, 1]])


@pytest.mark.parametrize("rows, match", [([9], r"rows holds 9; allowed: -9 \.\. 8"), ([[0, 1]], "1-D integer"),
                                         ([0.5], "1-D integer"), ([True, False], "one entry per row")])
def test_rows_out_of_range_or_not_indices_are_refused(rows, match):
    model = gn.Hill.random(gn.load_network("toggle_switch"), n=3, seed=0)
    with pytest.raises(ValueError, match=match):
        gn.simulate(model, [0, 1], perturbations=[gn.Condition(), gn.Knockout("A"), gn.Knockout("B")], rows=rows)


def test_steady_state_rows_solve_their_sub_conditions_outside_the_chunk():
    # asked for in chunks without their sub-conditions, which are then solved for them: as far as one
    # call has them when that fallback starts (there the singles are not solved yet, so the doubles
    # start from the wild type), so every row's state is the one call's, bit for bit
    model, conds, x0, kw = sub_condition_case()
    full = gn.steady_state(model, conds, x0=x0, **kw)
    assert full.converged.all() and list(full.method) == ["newton"] + ["sub-condition"] * 6
    for rows in ([2, 1], [5], [6, 3]):
        part = gn.steady_state(model, conds, x0=x0, rows=rows, **kw)
        assert list(part.method) == list(full.method[rows]) and part.converged.all()
        assert_same_rows(part.x, full.x[rows], rtol=1e-8)


def test_row_chunks_cover_the_rows_in_order():
    chunks = row_chunks(10, 4, n_workers=3)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(row_chunks(1000, None, n_workers=2)) == 8  # about four per worker thread
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        row_chunks(10, 0, n_workers=1)


@pytest.mark.heavy
def test_simulate_on_a_cluster_equals_one_call(client, tcim):
    net, model, screen = tcim
    t = np.linspace(0, 20, 11)
    ref = gn.simulate(model, t, perturbations=screen)
    got = gn.simulate(model, t, perturbations=screen, cluster=client, chunk_size=100)
    _same_rows(got, ref, np.arange(ref.n_rows))
    # bitwise with the native kernel; on the torch loop rounding may change a step, so to the tolerance
    assert_same_rows(got.y, ref.y, rtol=1e-4)
    assert got.y.grad_fn is None
    if native_runs():
        for k, v in ref.stats.items():
            np.testing.assert_array_equal(got.stats[k], v)
    sub = gn.simulate(model, t, perturbations=screen, cluster=client, rows=[5, 1000, 3])
    assert_same_rows(sub.y, ref.y[[5, 1000, 3]], rtol=1e-4)


def test_failed_rows_on_a_cluster_raise_or_come_back_with_their_status(client, tcim):
    net, model, screen = tcim
    conds = screen[:6]
    with pytest.raises(gn.SolverError, match="12 of 12 rows failed"):
        gn.simulate(model, [0, 20], perturbations=conds, max_steps=3, cluster=client, chunk_size=5)
    got = gn.simulate(model, [0, 20], perturbations=conds, max_steps=3, throw=False, cluster=client, chunk_size=5)
    ref = gn.simulate(model, [0, 20], perturbations=conds, max_steps=3, throw=False)
    np.testing.assert_array_equal(got.status, ref.status)
    assert (got.status == gn.Status.MAX_STEPS).all()


@pytest.mark.heavy
def test_steady_states_on_a_cluster_equal_one_call(client, tcim):
    net, model, screen = tcim
    ref = gn.steady_state(model, screen)
    got = gn.steady_state(model, screen, cluster=client, chunk_size=150)
    _same_rows(got, ref, np.arange(ref.n_rows))
    np.testing.assert_array_equal(got.converged, ref.converged)
    if native_runs():  # on the torch loop a borderline row may take another fallback to the same state
        assert torch.equal(got.x, ref.x)
        np.testing.assert_array_equal(got.method, ref.method)
    else:
        assert_same_rows(got.x[ref.converged], ref.x[ref.converged], rtol=1e-6)
    # the result keeps what the implicit-function sensitivities need
    rows = slice(0, 40)
    s_ref = gn.steady_state_sensitivity(model, ref, ["production"])["production"][rows]
    s_got = gn.steady_state_sensitivity(model, got, ["production"])["production"][rows]
    torch.testing.assert_close(s_got, s_ref, equal_nan=True)


def test_find_steady_states_on_a_cluster_equals_one_call(client):
    net = gn.load_network("toggle_switch")
    model = gn.Hill.random(net, n=40, seed=0)
    ref = gn.find_steady_states(model, n_initial=30, seed=3)
    got = gn.find_steady_states(model, n_initial=30, seed=3, cluster=client, chunk_size=7)
    assert got.states.equals(ref.states) and got.groups.equals(ref.groups)
    part = gn.find_steady_states(model, n_initial=30, seed=3, rows=[12, 3])  # same starts per row
    assert part.groups.reset_index(drop=True).equals(ref.groups.iloc[[12, 3]].reset_index(drop=True))


@pytest.mark.heavy
def test_fit_starts_on_a_cluster_end_where_one_call_ends(client):
    net = gn.load_network("toggle_switch")
    t = np.linspace(0, 10, 6)
    data = gn.simulate(gn.Hill(net, production=[4.0, 2.0]), t, x0=[1.0, 0.5]).to_frame()
    data = gn.ExpressionData.from_frame(data[["condition", "time", "gene", "value"]])
    model = gn.Hill(net)
    ref = gn.fit(model, data, free=["production"], multistart=5, progress=False)
    got = gn.fit(model, data, free=["production"], multistart=5, progress=False, cluster=client, chunk_size=2)
    assert_same_rows(got.starts.final_loss.to_numpy(), ref.starts.final_loss.to_numpy(), rtol=1e-6)
    prof = ref.profile(n_points=5, max_iter=20)
    if native_runs():  # the same iterations bit for bit; on the torch loop to the fit's tolerance
        np.testing.assert_array_equal(got.starts.iterations, ref.starts.iterations)
        np.testing.assert_array_equal(got.history, ref.history)
        assert got.loss == ref.loss
        # profile likelihood: one task per entry, each the in-process LM run
        pd.testing.assert_frame_equal(got.profile(n_points=5, max_iter=20, cluster=client), prof)
    else:
        pd.testing.assert_frame_equal(got.profile(n_points=5, max_iter=20, cluster=client), prof, rtol=1e-6)


def test_cluster_arguments_are_checked_before_any_work():
    model = gn.Hill(gn.load_network("toggle_switch"))
    assert_same_rows(gn.simulate(model, [0, 1], cluster=False).y, gn.simulate(model, [0, 1]).y)  # in-process
    for bad in (3, "", 2.5):
        with pytest.raises(TypeError, match=r"cluster must be 'local' \(or True\), a scheduler address"):
            gn.simulate(model, [0, 1], cluster=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        gn.simulate(model, [0, 1], cluster="local", chunk_size=-1)


def test_cluster_without_dask_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    model = gn.Hill(gn.load_network("toggle_switch"))
    with pytest.raises(ImportError, match=r"pip install 'genenet\[dask\]'"):
        gn.simulate(model, [0, 1], cluster="local")


def test_local_cluster_of_this_machine():
    pytest.importorskip("distributed")
    model = gn.Hill.random(gn.load_network("toggle_switch"), n=6, seed=0)
    t = np.linspace(0, 5, 3)
    assert_same_rows(gn.simulate(model, t, cluster=True).y, gn.simulate(model, t).y)


@pytest.mark.heavy
def test_cli_commands_on_a_running_cluster_write_what_they_write_in_process(client, tmp_path):
    from genenet.cli import main

    address = client.scheduler.address
    runs = {
        "simulate": ["simulate", "toggle_switch", "--ensemble", "12", "--t-end", "5", "--points", "6", "-q"],
        "steady-state": ["steady-state", "toggle_switch", "--ensemble", "6", "--initial", "30", "-q"],
    }
    for name, args in runs.items():
        here, there = tmp_path / f"{name}_here.csv", tmp_path / f"{name}_there.csv"
        assert main([*args, "--out", str(here)]) == 0
        assert main([*args, "--out", str(there), "--cluster", address]) == 0
        pd.testing.assert_frame_equal(pd.read_csv(there), pd.read_csv(here))
    net = gn.load_network("toggle_switch")
    data = gn.simulate(gn.Hill(net, production=[6.0, 4.0]), [0, 1, 2, 4], x0=[1.0, 3.0]).to_frame()
    data[["condition", "time", "gene", "value"]].to_csv(tmp_path / "d.csv", index=False)
    fits = []
    for extra in ([], ["--cluster", address]):
        out = tmp_path / f"fit{len(extra)}.json"
        assert main(["fit", "toggle_switch", str(tmp_path / "d.csv"), "--multistart", "4", "--out", str(out), "-q",
                     *extra]) == 0
        fits.append(gn.FitResult.load(out))
    pd.testing.assert_frame_equal(fits[1]["params"], fits[0]["params"])

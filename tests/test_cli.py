import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import genenet as gn
from genenet.cli import main


def test_simulate_bundled_writes_csv_and_png(tmp_path):
    out, png = tmp_path / "traj.csv", tmp_path / "traj.png"
    rc = main(["simulate", "toggle_switch", "--t-end", "10", "--points", "11", "--x0", "A=3,B=1",
               "--out", str(out), "--plot", str(png), "-q"])
    assert rc == 0
    frame = pd.read_csv(out)
    assert len(frame) == 22 and set(frame.gene) == {"A", "B"}
    assert png.stat().st_size > 1000


def test_simulate_topo_file_with_ensemble_and_params(tmp_path, capsys):
    net = gn.Network.from_edges([("X", "Y", "+"), ("Y", "X", "-")])
    gn.write_topo(net, tmp_path / "n.topo")
    (tmp_path / "p.json").write_text('{"hill": 2}')
    rc = main(["simulate", str(tmp_path / "n.topo"), "--ensemble", "5", "--method", "tsit5", "--rtol", "1e-5",
               "--params", str(tmp_path / "p.json"), "--out", str(tmp_path / "o.csv")])
    assert rc == 0
    assert "5 rows" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "o.csv").parameter_set.nunique() == 5


def test_bad_network_is_a_clear_error(capsys):
    assert main(["simulate", "no_such_network", "-q"]) == 1
    assert "unknown network 'no_such_network'" in capsys.readouterr().err


def test_help_documents_options():
    proc = subprocess.run([sys.executable, "-m", "genenet.cli", "simulate", "--help"], capture_output=True,
                          text=True, check=True)
    for option in ("--t-end", "--points", "--method", "--rtol", "--atol", "--params", "--out", "--plot"):
        assert option in proc.stdout


@pytest.mark.parametrize("n", [20])
def test_demo_runs(tmp_path, capsys, n):
    assert main(["demo", "--out-dir", str(tmp_path), "-n", str(n)]) == 0
    out = capsys.readouterr().out
    assert "Trajectory:" in out and "expression patterns" in out
    assert (tmp_path / "genenet_demo.png").stat().st_size > 1000


def test_screen_writes_table_and_heatmap(tmp_path, capsys):
    out, png = tmp_path / "screen.csv", tmp_path / "heat.png"
    assert main(["screen", "toggle_switch", "--order", "2", "--out", str(out), "--plot", str(png), "-q"]) == 0
    table = pd.read_csv(out)
    assert list(table.condition.unique()) == ["wild type", "KO(A)", "KO(B)", "KO(A)+KO(B)"]
    assert table.converged.all() and png.stat().st_size > 1000
    kd = tmp_path / "kd.csv"
    assert main(["screen", "toggle_switch", "--order", "1", "--knockdown", "0.5", "--out", str(kd), "-q"]) == 0
    assert "KD(A,0.5)" in set(pd.read_csv(kd).condition)


@pytest.mark.heavy
def test_screen_on_a_local_dask_cluster_matches_in_process(tmp_path):
    pytest.importorskip("distributed")
    args = ["screen", "myeloid", "--order", "2", "--chunk-size", "20", "-q"]
    here, there = tmp_path / "here.csv", tmp_path / "there.csv"
    assert main([*args, "--out", str(here)]) == 0
    assert main([*args, "--out", str(there), "--cluster", "local"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(there), pd.read_csv(here))


def test_screen_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch):
    import genenet.steady as steady

    args = ["screen", "myeloid", "--order", "2", "--chunk-size", "10", "-q"]
    full = tmp_path / "full.csv"
    assert main([*args, "--out", str(full)]) == 0

    real = steady.steady_state
    calls = {"n": 0}

    def dies_on_fourth(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:  # WT + 2 chunks done, killed during the third
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "resumed.csv"
    monkeypatch.setattr(steady, "steady_state", dies_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(out)])
    parts = sorted(p.name for p in (tmp_path / "resumed.csv.parts").glob("part_*.csv"))
    assert parts == ["part_00000.csv", "part_00001.csv"] and not out.exists()
    assert main([*args, "--out", str(out)]) == 1  # refuses to overwrite the unfinished run without --resume

    calls["n"] = 0

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(steady, "steady_state", counting)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    n_chunks = -(-66 // 10)
    assert calls["n"] == 1 + n_chunks - 2  # WT reference + only the unfinished chunks
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(full))
    assert not (tmp_path / "resumed.csv.parts").exists()


def test_steady_state_command(tmp_path, capsys):
    out = tmp_path / "states.csv"
    assert main(["steady-state", "toggle_switch", "--initial", "100", "--out", str(out)]) == 0
    assert "bistable" in capsys.readouterr().out
    states = pd.read_csv(out)
    assert states.stable.sum() == 2 and len(states) == 3


@pytest.mark.heavy
def test_screen_resume_after_sigkill(tmp_path):
    import signal
    import time

    out = tmp_path / "killed.csv"
    parts = tmp_path / "killed.csv.parts"
    args = ["screen", "myeloid", "--order", "2", "--chunk-size", "5", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "genenet.cli", *args, "--out", str(out)])
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if len(list(parts.glob("part_*.csv"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the screen finished before it could be killed"
    finished = sorted(parts.glob("part_*.csv"))
    assert 2 <= len(finished) < 14 and not out.exists()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    full = tmp_path / "full.csv"
    assert main([*args, "--out", str(full)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(full))


def test_fit_command(tmp_path, capsys):
    net = gn.load_network("toggle_switch")
    true = gn.Hill(net, production=[6.0, 4.0], degradation=1.0, threshold=2.0, hill=2.0, fold=10.0)
    traj = gn.simulate(true, [0, 1, 2, 4, 8], x0=[1.0, 3.0], perturbations=[gn.Condition([]), gn.Knockout("A")])
    traj.to_frame()[["condition", "time", "gene", "value"]].to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "p.json").write_text('{"threshold": 2.0, "hill": 2.0, "fold": 10.0, "production": [3.0, 8.0]}')
    out, png = tmp_path / "fit.json", tmp_path / "fit.png"
    rc = main(["fit", "toggle_switch", str(tmp_path / "d.csv"), "--params", str(tmp_path / "p.json"),
               "--free", "production", "--out", str(out), "--plot", str(png), "-q"])
    assert rc == 0 and png.stat().st_size > 1000
    params = gn.FitResult.load(out)["params"]
    np.testing.assert_allclose(params.value, [6.0, 4.0], rtol=1e-5)


def test_config_file_gives_options_and_the_command_line_overrides_them(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('network = "toggle_switch"\nt-end = 10\npoints = 11\nmethod = "tsit5"\nx0 = "A=3,B=1"\n'
                   "quiet = true\n")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["simulate", "--config", str(cfg), "--out", str(a)]) == 0
    assert main(["simulate", "--config", str(cfg), "--points", "6", "--out", str(b)]) == 0
    ta, tb = pd.read_csv(a), pd.read_csv(b)
    assert sorted(ta.time.unique()) == list(np.linspace(0, 10, 11)) and ta.time.nunique() == 11
    assert tb.time.nunique() == 6 and ta[ta.time == 0].value.tolist() == [3.0, 1.0]
    ref = gn.simulate(gn.Hill(gn.load_network("toggle_switch")), np.linspace(0, 10, 11), x0={"A": 3, "B": 1},
                      method="tsit5")
    np.testing.assert_allclose(ta.value.to_numpy(), ref.numpy().reshape(-1))
    capsys.readouterr()
    for text, message in (('network = "toggle_switch"\nmehtod = "tsit5"\n', "unknown option 'mehtod'"),
                          ('network = "toggle_switch"\nmethod = "rk45"\n', "method = 'rk45'; allowed"),
                          ('network = "toggle_switch"\npoints = "many"\n', "points = 'many' is not a int"),
                          ("t-end = 5\n", "NETWORK is required")):
        cfg.write_text(text)
        assert main(["simulate", "--config", str(cfg)]) == 1
        assert message in capsys.readouterr().err


def test_plot_command_draws_each_table_the_commands_write(tmp_path, capsys):
    traj, screen, states = tmp_path / "t.csv", tmp_path / "s.csv", tmp_path / "st.csv"
    assert main(["simulate", "toggle_switch", "--ensemble", "3", "--t-end", "5", "-q", "--out", str(traj)]) == 0
    assert main(["screen", "myeloid", "--order", "1", "-q", "--out", str(screen)]) == 0
    assert main(["steady-state", "toggle_switch", "--ensemble", "20", "--initial", "20", "-q",
                 "--out", str(states)]) == 0
    for table in (traj, screen, states):
        png = tmp_path / (table.stem + ".png")
        assert main(["plot", str(table), "--out", str(png), "-q"]) == 0
        assert png.stat().st_size > 5000
    other = tmp_path / "other.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(other, index=False)
    assert main(["plot", str(other), "--out", str(tmp_path / "x.png")]) == 1
    assert "not a table genenet writes" in capsys.readouterr().err


def test_tables_read_back_into_results():
    net = gn.load_network("toggle_switch")
    model = gn.Hill.random(net, n=3, seed=0)
    traj = gn.simulate(model, np.linspace(0, 5, 6), perturbations=[gn.Condition(), gn.Knockout("A")])
    back = gn.Trajectory.from_frame(traj.to_frame())
    assert torch.equal(back.y, traj.y) and back.labels == traj.labels and back.conditions == traj.conditions
    np.testing.assert_array_equal(back.parameter_sets, traj.parameter_sets)
    two = gn.simulate(gn.TwoStage(net), np.linspace(0, 5, 6))
    back2 = gn.Trajectory.from_frame(two.to_frame())
    assert back2.genes == two.genes and back2.species == two.species and torch.equal(back2.y, two.y)
    frame = traj.to_frame()
    frame.loc[frame.row == traj.labels[4], "value"] = np.nan  # a failed row
    assert gn.Trajectory.from_frame(frame).status.tolist() == [0, 0, 0, 0, int(gn.Status.NONFINITE), 0]
    found = gn.find_steady_states(gn.Hill.random(net, n=6, seed=0), n_initial=30)
    again = gn.SteadyStates.from_frame(found.states)
    pd.testing.assert_series_equal(again.multistability(), found.multistability())
    assert again.genes == ["A", "B"]


def test_simulate_and_screen_an_sbml_model(tmp_path):
    # an SBML file where a network goes: its own kinetics; parameters by SBML id; screens name its species
    model = gn.ReactionNetwork([("-> A", "ks"), ("A ->", "kd * A"), ("A + B -> AB", "kon * A * B"),
                                ("AB -> A + B", "koff * AB")], params={"ks": 2.0, "kd": 0.5, "kon": 1.5, "koff": 0.3},
                               initial={"A": 1.0, "B": 2.0, "AB": 0.5})
    xml = tmp_path / "binding.xml"
    gn.write_sbml(model, xml)
    (tmp_path / "p.json").write_text('{"ks": 4.0}')
    out = tmp_path / "traj.csv"
    assert main(["simulate", str(xml), "--t-end", "5", "--points", "6", "--params", str(tmp_path / "p.json"),
                 "--out", str(out), "-q"]) == 0
    frame = pd.read_csv(out)
    assert set(frame.gene) == {"A", "B", "AB"}
    ref = gn.simulate(model, np.linspace(0, 5, 6), params={"ks": 4.0}).y[0].detach().numpy()
    got = frame.pivot(index="time", columns="gene", values="value")[["A", "B", "AB"]].to_numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert main(["screen", str(xml), "--order", "1", "--out", str(tmp_path / "s.csv"), "-q"]) == 0
    assert main(["simulate", str(xml), "--ensemble", "3", "-q"]) == 1  # RACIPE ensembles are for networks


def test_simulate_takes_every_method_stiff_ones_included(tmp_path):
    # --method offers what gn.simulate does (the stiff methods, auto and the native bdf too); the stiff
    # ones run on an SBML model
    from genenet import native
    from genenet.cli import build_parser
    from genenet.solvers import METHODS

    for method in METHODS:
        assert build_parser().parse_args(["simulate", "toggle_switch", "--method", method]).method == method
    pytest.importorskip("libsbml")
    xml = Path(__file__).parent / "data" / "BIOMD0000000012.xml"
    lengths = []
    for method in ("dopri5", "rodas5", "auto", "bdf"):
        if method == "bdf" and not native.available(torch.float64):
            continue  # bdf runs in the native kernel only; its refusal is tested in test_bdf.py
        out = tmp_path / f"{method}.csv"
        assert main(["simulate", str(xml), "--t-end", "20", "--points", "5", "--method", method, "--out", str(out),
                     "-q"]) == 0, method
        lengths.append(len(pd.read_csv(out)))
    assert len(set(lengths)) == 1 and lengths[0] > 0

import subprocess
import sys

import pandas as pd
import pytest

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

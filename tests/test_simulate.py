"""simulate() inputs and the Trajectory contract."""

import json

import matplotlib.axes
import numpy as np
import pandas as pd
import pytest
import torch

import genenet as gn
from genenet.io import apply_params, read_params


@pytest.fixture
def toggle():
    return gn.Hill(gn.load_network("toggle_switch"), production=10.0, degradation=1.0, threshold=2.0, hill=4.0,
                   fold=100.0)


def test_trajectory_contract(toggle):
    t = np.linspace(0, 10, 11)
    traj = gn.simulate(toggle, t, x0={"A": 5.0})
    assert traj.y.shape == (1, 11, 2) and traj.t.shape == (11,)
    assert traj.genes == ["A", "B"] and traj.labels == ["wild type"]
    assert traj.success and traj.status.tolist() == [0]
    assert set(traj.stats) == {"n_steps", "n_accepted", "n_rejected", "n_rhs"}
    assert traj.stats["n_rhs"][0] >= 6 * traj.stats["n_accepted"][0]
    assert traj["A"].shape == (1, 11)
    assert traj["A"][0, -1].item() > 5.0 > traj["B"][0, -1].item()  # A wins the toggle
    frame = traj.to_frame()
    assert list(frame.columns) == ["row", "condition", "parameter_set", "time", "gene", "value"]
    assert len(frame) == 22
    a = frame[(frame.gene == "A")].value.to_numpy()
    np.testing.assert_allclose(a, traj["A"][0].detach().numpy())
    ax = traj.plot()
    assert isinstance(ax, matplotlib.axes.Axes) and len(ax.lines) == 2
    import matplotlib.pyplot as plt

    _, given = plt.subplots()
    assert traj.plot(genes="B", ax=given) is given and len(given.lines) == 1
    assert "1 rows" in traj.summary()
    with pytest.raises(KeyError, match="unknown gene 'C'"):
        traj["C"]


def test_ensemble_rows_and_x0_batches(toggle):
    net = toggle.net
    ens = gn.Hill.random(net, n=4, seed=0)
    traj = gn.simulate(ens, [0, 1, 2], x0=[1.0, 2.0])
    assert traj.y.shape == (4, 3, 2) and traj.parameter_sets.tolist() == [0, 1, 2, 3]
    assert len(set(traj.labels)) == 4
    many = gn.simulate(toggle, [0, 5], x0=[[5.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    assert many.y.shape == (3, 2, 2) and many.parameter_sets.tolist() == [0, 0, 0]
    assert many.numpy()[0, -1, 0] > many.numpy()[0, -1, 1] and many.numpy()[1, -1, 1] > many.numpy()[1, -1, 0]
    frame = traj.to_frame(rows=[1])
    assert set(frame.parameter_set) == {1}
    with pytest.raises(ValueError, match=r"x0 has 3 rows; allowed: 1, 4 \(one per parameter set\)"):
        gn.simulate(ens, [0, 1], x0=np.ones((3, 2)))


def test_params_override_ensemble(toggle):
    traj = gn.simulate(toggle, [0, 3], x0=[0.0, 0.0], params={"production": [[1.0, 1.0], [5.0, 5.0]]})
    assert traj.y.shape == (2, 2, 2)
    # dx/dt = g H - x from 0 with symmetric g: both equal, row 1 higher
    y = traj.numpy()
    assert y[0, -1, 0] == pytest.approx(y[0, -1, 1]) and y[1, -1, 0] > y[0, -1, 0]


@pytest.mark.parametrize("t,match", [
    ([0, 2, 1], "strictly increasing"),
    ([[0, 1]], "1-D"),
    ([], "empty"),
    ([0, np.inf], "non-finite"),
])
def test_bad_times(toggle, t, match):
    with pytest.raises(ValueError, match=match):
        gn.simulate(toggle, t)


def test_bad_inputs_name_the_culprit(toggle):
    t = [0.0, 1.0]
    with pytest.raises(ValueError, match="x0 is not finite at gene 'B'"):
        gn.simulate(toggle, t, x0=[1.0, np.nan])
    with pytest.raises(ValueError, match="row 1, gene 'A'"):
        gn.simulate(toggle, t, x0=[[1.0, 1.0], [np.inf, 1.0]])
    with pytest.raises(KeyError, match="unknown gene 'C'"):
        gn.simulate(toggle, t, x0={"C": 1.0})
    with pytest.raises(ValueError, match=r"x0 has shape \(3,\)"):
        gn.simulate(toggle, t, x0=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown method 'rk45'"):
        gn.simulate(toggle, t, method="rk45")
    with pytest.raises(ValueError, match="atol must be finite and >= 0"):
        gn.simulate(toggle, t, atol=-1.0)
    with pytest.raises(ValueError, match=r"rtol has shape \(3,\)"):
        gn.simulate(toggle, t, rtol=[1e-6, 1e-6, 1e-6])
    with pytest.raises(ValueError, match="rtol \\+ atol must be > 0"):
        gn.simulate(toggle, t, rtol=0.0, atol=0.0)
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        gn.simulate(toggle, t, max_steps=0)
    with pytest.raises(ValueError, match="dt must be a positive"):
        gn.simulate(toggle, t, method="rk4", dt=-0.1)
    with pytest.raises(TypeError, match="model must be a genenet Model"):
        gn.simulate("toggle", t)
    with pytest.raises(TypeError, match="dtype"):
        gn.simulate(toggle, t, dtype=torch.int32)
    with pytest.raises(ValueError, match="device"):
        gn.simulate(toggle, t, device="gpu0")
    with pytest.raises(KeyError, match="unknown parameter 'speed'"):
        gn.simulate(toggle, t, params={"speed": 1.0})
    with pytest.raises(TypeError, match="perturbations entry 'KO' is not a Perturbation"):
        gn.simulate(toggle, t, perturbations=["KO"])


def test_per_gene_tolerances(toggle):
    loose = gn.simulate(toggle, [0, 20], x0=[3.0, 1.0], atol=[1e-8, 1e-2], rtol=[1e-6, 1e-2])
    tight = gn.simulate(toggle, [0, 20], x0=[3.0, 1.0])
    assert loose.stats["n_steps"][0] < tight.stats["n_steps"][0]


def test_fixed_step_methods_land_on_save_times(toggle):
    t = np.array([0.0, 0.33, 1.0, 2.5])
    traj = gn.simulate(toggle, t, x0=[3.0, 1.0], method="rk4", dt=0.1)
    ref = gn.simulate(toggle, t, x0=[3.0, 1.0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(traj.numpy(), ref.numpy(), rtol=1e-4)
    # steps of 0.1 plus one landing step per save time that is not a multiple of dt
    assert traj.stats["n_steps"][0] <= 25 + 3


def test_progress_bar_runs(toggle, capsys):
    traj = gn.simulate(toggle, [0, 10], x0=[3.0, 1.0], progress=True)
    assert traj.success


def test_param_files(toggle, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"production": 4.0, "threshold": {"A -| B": 3.0}, "degradation": [1.0, 2.0]}))
    apply_params(toggle, read_params(path, toggle))
    p = {k: v.detach().numpy()[0] for k, v in toggle.params.items()}
    assert p["production"].tolist() == pytest.approx([4.0, 4.0])
    assert p["threshold"].tolist() == pytest.approx([3.0, 2.0])
    assert p["degradation"].tolist() == pytest.approx([1.0, 2.0])
    table = toggle.param_table()
    table.loc[table.name == "hill", "value"] = 2.0
    table.to_csv(tmp_path / "p.csv", index=False)
    model = gn.Hill(toggle.net)
    apply_params(model, read_params(tmp_path / "p.csv", model))
    for name in toggle.params:
        expected = table[table.name == name].value.to_numpy()
        np.testing.assert_allclose(model.params[name].detach().numpy()[0], expected, rtol=1e-12)
    with pytest.raises(KeyError, match="unknown gene 'Q'"):
        apply_params(model, {"threshold": {"A -> Q": 1.0}})
    pd.DataFrame({"nm": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing columns"):
        read_params(tmp_path / "bad.csv", model)

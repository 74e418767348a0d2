import numpy as np
import pandas as pd
import pytest

import genenet as gn


def _frame():
    return pd.DataFrame({"condition": ["wild type"] * 4, "time": [0.0, 0.0, 1.0, 1.0], "gene": ["A", "B", "A", "B"],
                         "value": [1.0, 2.0, 1.5, 2.5]})


def test_from_frame_csv_and_wide(tmp_path):
    d = gn.ExpressionData.from_frame(_frame())
    assert d.genes == ["A", "B"] and d.conditions == ["wild type"] and list(d.times) == [0.0, 1.0]
    _frame().to_csv(tmp_path / "d.csv", index=False)
    assert gn.ExpressionData.from_csv(tmp_path / "d.csv").table.equals(d.table)
    wide = pd.DataFrame({"time": [0.0, 1.0], "A": [1.0, 1.5], "B": [2.0, 2.5]})
    w = gn.ExpressionData.from_wide(wide, sd=0.1)
    assert len(w) == 4 and w.has_sd and set(w.table.gene) == {"A", "B"}
    np.testing.assert_allclose(w.wide().loc[1.0, "B"], 2.5)


def test_bad_data_names_the_culprit():
    f = _frame()
    f.loc[2, "value"] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite time/value/sd at rows 2"):
        gn.ExpressionData.from_frame(f)
    assert len(gn.ExpressionData.from_frame(f, dropna=True)) == 3
    f = _frame()
    f["sd"] = [0.1, -0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="'sd' must be > 0; rows 1"):
        gn.ExpressionData.from_frame(f)
    with pytest.raises(ValueError, match=r"missing columns \['value'\]"):
        gn.ExpressionData.from_frame(_frame().drop(columns="value"))
    f = _frame().astype({"time": object})
    f.loc[3, "time"] = "late"
    with pytest.raises(ValueError, match="column 'time' has non-numeric entries at rows 3"):
        gn.ExpressionData.from_frame(f)
    f = pd.concat([_frame(), _frame().iloc[:1]])
    with pytest.raises(ValueError, match="duplicate measurements"):
        gn.ExpressionData.from_frame(f)
    d = gn.ExpressionData.from_frame(_frame())
    with pytest.raises(KeyError, match=r"data genes \['B'\] are not in the model"):
        d.check_genes(["A", "C"])
    with pytest.raises(ValueError, match="before the initial time 0.5 at rows 0, 1"):
        d.check_times(0.5)
    with pytest.raises(FileNotFoundError):
        gn.ExpressionData.from_csv("/no/such/file.csv")


def test_from_trajectory_noise_is_seeded_and_relative():
    traj = gn.simulate(gn.Hill(gn.load_network("toggle_switch")), [0, 1, 2], x0=[1.0, 2.0])
    exact = gn.ExpressionData.from_trajectory(traj)
    assert not exact.has_sd and len(exact) == 6
    a = gn.ExpressionData.from_trajectory(traj, noise=0.1, seed=4)
    b = gn.ExpressionData.from_trajectory(traj, noise=0.1, seed=4)
    pd.testing.assert_frame_equal(a.table, b.table)
    rel = (a.table.value - exact.table.value) / exact.table.value
    assert 0 < np.abs(rel).max() < 0.6 and np.allclose(a.table.sd, 0.1 * a.table.value.abs() + 1e-6)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        gn.ExpressionData.from_trajectory(traj, noise=-1)

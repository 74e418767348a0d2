import numpy as np
import pytest

import genenet as gn


def test_toggle_bistable_window_has_two_saddle_nodes():
    toggle = gn.Hill(gn.load_network("toggle_switch"), production=10.0, degradation=1.0, threshold=2.0, hill=4.0,
                     fold=100.0)
    bif = gn.scan(toggle, "production", [0.5, 400.0], gene="A", x0=[0.1, 10.0])
    assert len(bif.folds) == 2
    low, high = bif.bistable_window()
    assert 1.0 < low < high < 400.0
    br = bif.branch
    assert br.stable.any() and (~br.stable).any()
    # every branch point is a steady state of the equations
    for _, row in br.iloc[::10].iterrows():
        J_row = gn.steady_state(toggle, x0=[row.A, row.B], params={"production": [row.parameter, 10.0]}, tol=1e-9)
        np.testing.assert_allclose(J_row.x[0].numpy(), [row.A, row.B], rtol=1e-6, atol=1e-9)
    # at a fold the Jacobian is singular
    for _, f in bif.folds.iterrows():
        J = gn.jacobian(toggle, [f.A, f.B], params={"production": [f.parameter, 10.0]})[0].detach().numpy()
        assert np.min(np.abs(np.linalg.eigvals(J))) < 0.05 * np.max(np.abs(np.linalg.eigvals(J)))
    # independent check with the multistart search: bistable inside the window, monostable outside
    for g, n_stable in ((0.8 * low, 1), (np.sqrt(low * high), 2), (1.2 * high, 1)):
        m = gn.Hill(toggle.net, production=[g, 10.0], degradation=1.0, threshold=2.0, hill=4.0, fold=100.0)
        assert gn.find_steady_states(m, n_initial=100).groups.n_stable.item() == n_stable
    ax = bif.plot("A")
    assert len(ax.lines) >= 3


def test_scan_bad_input():
    toggle = gn.Hill(gn.load_network("toggle_switch"))
    with pytest.raises(ValueError, match="at least two"):
        gn.scan(toggle, "production", [1.0], gene="A")
    with pytest.raises(KeyError, match="unknown gene 'Z'"):
        gn.scan(toggle, "production", [1.0, 2.0], gene="Z")
    with pytest.raises(KeyError, match="unknown parameter 'speed'"):
        gn.scan(toggle, "speed", [1.0, 2.0])


def test_scan_one_set_of_an_ensemble():
    ens = gn.Hill(gn.load_network("toggle_switch"), production=np.array([[10.0, 10.0], [10.0, 3.0]]),
                  degradation=1.0, threshold=2.0, hill=4.0, fold=100.0)
    a = gn.scan(ens, "production", [0.5, 400.0], gene="A", x0=[0.1, 10.0], parameter_set=0)
    b = gn.scan(ens, "production", [0.5, 400.0], gene="A", x0=[0.1, 10.0], parameter_set=1)
    assert len(a.folds) == 2 and a.bistable_window() != b.bistable_window()
    with pytest.raises(ValueError, match="parameter_set=2 out of range"):
        gn.scan(ens, "production", [0.5, 4.0], gene="A", parameter_set=2)

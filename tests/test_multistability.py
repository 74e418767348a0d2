import numpy as np
import pytest

import genenet as gn
from reference import repressilator


@pytest.fixture(scope="module")
def toggle():
    return gn.Hill(gn.load_network("toggle_switch"), production=10.0, degradation=1.0, threshold=2.0, hill=4.0,
                   fold=100.0)


def test_toggle_two_stable_states_and_the_saddle(toggle):
    res = gn.find_steady_states(toggle, n_initial=400, seed=1)
    states = res.states
    assert len(states) == 3 and states.stable.sum() == 2
    saddle = states[~states.stable].iloc[0]
    assert saddle.A == pytest.approx(saddle.B, rel=1e-9) and saddle.basin_fraction == 0.0
    stable = states[states.stable]
    assert stable.basin_fraction.sum() == pytest.approx(1.0)
    assert all(0.4 < f < 0.6 for f in stable.basin_fraction)  # the diagonal splits the symmetric starts
    hi = stable.sort_values("A").iloc[-1]
    assert hi.A > 9.9 and hi.B < 0.2
    assert res.groups.n_stable.tolist() == [2] and res.multistability().to_dict() == {2: 1}
    assert "bistable" in res.summary()
    again = gn.find_steady_states(toggle, n_initial=400, seed=1)
    np.testing.assert_array_equal(again.states.n_starts, states.n_starts)


def test_repressilator_one_unstable_state():
    res = gn.find_steady_states(repressilator(), n_initial=20, seed=0, max_steps=1500)
    assert len(res.states) == 1 and not res.states.stable.iloc[0]
    assert res.groups.unconverged_fraction.iloc[0] == 1.0  # every start keeps oscillating


def test_ensemble_and_conditions(toggle):
    ens = gn.Hill.random(toggle.net, n=30, seed=3)
    res = gn.find_steady_states(ens, perturbations=gn.knockout_screen(toggle.net, order=1), n_initial=40)
    assert len(res.groups) == 3 * 30
    ko = res.groups[res.groups.condition == "KO(A)"]
    assert (ko.n_stable == 1).all()  # without A nothing is bistable
    ko_states = res.states[res.states.condition == "KO(A)"]
    assert (ko_states.A == 0).all()
    long = res.to_frame()
    assert set(long.gene) == {"A", "B"} and len(long) == 2 * len(res.states)
    with pytest.raises(ValueError, match="n_initial must be a positive integer"):
        gn.find_steady_states(toggle, n_initial=0)


def test_find_steady_states_progress_bar_over_its_stages(capsys):
    model = gn.Hill.random(gn.load_network("toggle_switch"), n=4, seed=0)
    quiet = gn.find_steady_states(model, n_initial=20)
    assert "find_steady_states" not in capsys.readouterr().err
    shown = gn.find_steady_states(model, n_initial=20, progress=True)
    assert "find_steady_states" in capsys.readouterr().err
    assert shown.states.equals(quiet.states)

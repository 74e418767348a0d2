"""Every plot takes ax= and returns it, and draws what it says."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

import genenet as gn


@pytest.fixture(scope="module")
def toggle():
    return gn.Hill(gn.load_network("toggle_switch"), production=10.0, degradation=1.0, threshold=2.0, hill=4.0,
                   fold=100.0)


def test_screen_heatmap(toggle):
    ss = gn.steady_state(toggle, gn.knockout_screen(toggle.net), x0=[6.0, 1.0], method="integrate")
    _, ax = plt.subplots()
    assert gn.plot_screen_heatmap(gn.screen_table(ss), cluster=True, ax=ax) is ax
    image = ax.images[0].get_array()
    assert image.shape == (2, 4)  # genes x conditions
    assert np.nanmax(np.abs(image)) > 1


def test_phase_portrait_marks_states(toggle):
    states = gn.find_steady_states(toggle, n_initial=50)
    _, ax = plt.subplots()
    assert gn.plot_phase_portrait(toggle, states=states, ax=ax) is ax
    markers = [line for line in ax.lines if line.get_marker() == "o" and len(line.get_xdata())]
    assert len(markers) == 3
    filled = [m.get_markerfacecolor() for m in markers]
    assert sum(f == "white" for f in filled) == 1  # the saddle is open
    with pytest.raises(ValueError, match="2-gene"):
        gn.plot_phase_portrait(gn.Hill(gn.load_network("repressilator")))


def test_basins_and_multistability_histogram(toggle):
    one = gn.find_steady_states(toggle, n_initial=50)
    _, ax = plt.subplots()
    assert gn.plot_basins(one, ax=ax) is ax
    assert len(ax.patches) == 2
    many = gn.find_steady_states(gn.Hill.random(toggle.net, n=40, seed=0), n_initial=20)
    _, ax2 = plt.subplots()
    gn.plot_basins(many, ax=ax2)
    assert sum(p.get_height() for p in ax2.patches) == pytest.approx(1.0)


def test_bifurcation_plot_styles(toggle):
    bif = gn.scan(toggle, "production", [0.5, 400.0], gene="A", x0=[0.1, 10.0])
    _, ax = plt.subplots()
    assert gn.plot_bifurcation(bif, "B", ax=ax) is ax
    styles = {line.get_linestyle() for line in ax.lines if line.get_label() in ("stable", "unstable")}
    assert styles == {"-", "--"}

"""Bifurcation diagram of the toggle switch in the production rate of A.

Follows the steady states of A and B (fold 100, hill 4, symmetric otherwise) as
A's production rate runs from 0.5 to 400 by pseudo-arclength continuation, through
both saddle-node points; prints the bistable window and writes toggle_bifurcation.png.

    python examples/toggle_bifurcation.py [--out toggle_bifurcation.png]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import genenet as gn  # noqa: E402


def main(out: str = "toggle_bifurcation.png") -> None:
    net = gn.load_network("toggle_switch")
    model = gn.Hill(net, production=10.0, degradation=1.0, threshold=2.0, hill=4.0, fold=100.0)
    bif = gn.scan(model, "production", [0.5, 400.0], gene="A", x0=[0.1, 10.0])
    low, high = bif.bistable_window()
    print(f"{len(bif.branch)} branch points, {int((~bif.branch.stable).sum())} unstable")
    for _, f in bif.folds.iterrows():
        print(f"saddle-node at production[A] = {f.parameter:.4f}: A = {f.A:.4f}, B = {f.B:.4f}")
    print(f"bistable for {low:.3f} < production[A] < {high:.3f}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bif.plot("A", ax=ax1)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_title("toggle switch: steady A")
    states = gn.find_steady_states(model, n_initial=200)
    gn.plot_phase_portrait(model, states=states, ax=ax2)
    ax2.set_title("phase plane at production[A] = 10")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="toggle_bifurcation.png")
    main(parser.parse_args().out)

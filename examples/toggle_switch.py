"""Bistable genetic toggle switch (Gardner, Cantor & Collins 2000): two mutual repressors.

A grid of 400 initial states is simulated as one batch; each settles in one of the
two stable states (A high / B low or the reverse), split by the diagonal A = B.
Writes toggle_switch.png (time courses and the phase plane) and prints the basins.

    python examples/toggle_switch.py [--out toggle_switch.png]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import genenet as gn  # noqa: E402


def main(out: str = "toggle_switch.png") -> None:
    net = gn.load_network("toggle_switch")
    model = gn.Hill(net, production=10.0, degradation=1.0, threshold=2.0, hill=4.0, fold=100.0)
    grid = np.linspace(0.0, 12.0, 20)
    x0 = np.array([[a, b] for a in grid for b in grid])
    t = np.linspace(0.0, 15.0, 151)
    with torch.no_grad():
        traj = gn.simulate(model, t, x0=x0)
    final = traj.final.numpy()
    diff = final[:, 0] - final[:, 1]
    a_wins, b_wins = diff > 1.0, diff < -1.0
    saddle = ~(a_wins | b_wins)  # symmetric starts stay on A = B and approach the unstable state
    a_state, b_state = final[a_wins].mean(axis=0), final[b_wins].mean(axis=0)
    print(traj.summary())
    print(f"stable state 1 (A high): A = {a_state[0]:.3f}, B = {a_state[1]:.3f}  <- {a_wins.mean():.1%} of starts")
    print(f"stable state 2 (B high): A = {b_state[0]:.3f}, B = {b_state[1]:.3f}  <- {b_wins.mean():.1%} of starts")
    print(f"on the separatrix A = B (heading to the saddle): {saddle.mean():.1%} of starts, "
          f"A = B = {final[saddle, 0].mean():.3f} at t = 15")
    off_diag = np.abs(x0[:, 0] - x0[:, 1]) > 1e-9
    agree = (a_wins == (x0[:, 0] > x0[:, 1]))[off_diag].mean()
    print(f"the start's larger gene wins in {agree:.1%} of off-diagonal starts (the separatrix is A = B)")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [int(np.argmax(a_wins)), int(np.argmax(b_wins))]
    traj.plot(rows=rows, ax=ax1)
    ax1.set_title("two starts, two fates")
    y = traj.numpy()
    for r in range(0, len(x0), 7):
        ax2.plot(y[r, :, 0], y[r, :, 1], color="C0" if a_wins[r] else ("C3" if b_wins[r] else "k"), lw=0.6, alpha=0.6)
    ax2.plot(*a_state, "ko")
    ax2.plot(*b_state, "ko")
    ax2.plot([0, 12], [0, 12], "k--", lw=0.8)
    ax2.set_xlabel("A")
    ax2.set_ylabel("B")
    ax2.set_title("phase plane: trajectories to the two stable states")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="toggle_switch.png")
    main(parser.parse_args().out)

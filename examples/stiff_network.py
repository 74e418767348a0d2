"""A stiff gene network: degradation rates over five decades, solved explicitly and implicitly.

50 genes (random network, 3 regulators each) whose degradation rates span 1e-2..1e3 per
time unit, e.g. fast mRNA-like turnover beside stable proteins. The explicit dopri5 must
keep h * k_max below its stability limit (~3), so it takes thousands of tiny steps long
after the fast genes have settled; the Rosenbrock method rodas5 steps by accuracy only,
and method="auto" starts explicit and switches each row once it detects stiffness.
Prints steps, right-hand-side evaluations, time and the largest difference between the
three; writes stiff_network.png (a fast, a medium and a slow gene). On the CPU dopri5 runs in
the native kernel (genenet.native), so for this single row its wall time stays small despite
the steps; the step and RHS counts are what stiffness costs, and they grow with k_max.

    python examples/stiff_network.py [--out stiff_network.png]
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import genenet as gn  # noqa: E402


def stiff_hill(G: int = 50, seed: int = 0) -> tuple[gn.Hill, np.ndarray]:
    """A RACIPE network with degradation rates log-uniform over 1e-2..1e3 (levels g/k kept)."""
    rng = np.random.default_rng(seed)
    model = gn.Hill.random_stiff(gn.Network.random(G, 3, seed=seed), seed=seed, rng=rng)
    levels = (model.params["production"] / model.params["degradation"]).detach()[0].numpy()
    return model, levels * rng.uniform(0.2, 1.5, G)  # starts around the levels g/k


def main(out: str = "stiff_network.png") -> None:
    model, x0 = stiff_hill()
    t = np.linspace(0, 50, 201)
    runs = {}
    for method in ("dopri5", "rodas5", "auto"):
        began = time.perf_counter()
        with torch.no_grad():
            traj = gn.simulate(model, t, x0=x0, method=method, rtol=1e-6, atol=1e-8, max_steps=200_000)
        runs[method] = traj
        switched = f", switched to rodas5: {bool(traj.stats['switched'][0])}" if "switched" in traj.stats else ""
        print(f"{method:7s} steps {int(traj.stats['n_steps'][0]):6d}  RHS evaluations {int(traj.stats['n_rhs'][0]):6d}"
              f"  {time.perf_counter() - began:5.2f} s{switched}")
    ref = runs["dopri5"].numpy()
    for method in ("rodas5", "auto"):
        diff = np.abs(runs[method].numpy() - ref).max() / np.abs(ref).max()
        print(f"max |{method} - dopri5| / max level = {diff:.1e}")

    k = model.params["degradation"].detach()[0].numpy()
    order = np.argsort(k)
    picks = [order[-1], order[len(k) // 2], order[0]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, g in enumerate(picks):
        ax.plot(t, runs["auto"].numpy()[0, :, g], color=f"C{i}", label=f"{model.genes[g]} (k = {k[g]:.3g})")
        ax.plot(t[::10], ref[0, ::10, g], "k.", ms=3)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("time (symlog)")
    ax.set_ylabel("level")
    ax.set_title("stiff network: method='auto' (lines) vs dopri5 (dots)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="stiff_network.png")
    main(ap.parse_args().out)

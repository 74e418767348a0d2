"""RACIPE-style multistability of the toggle switch and the myeloid circuit.

1000 random parameter sets (gn.Hill.random) x 100 random initial states each:
how many parameter sets are mono-, bi-, tri-stable, as RACIPE reports
(Huang et al. 2017). Writes multistability.png. Takes a few minutes on a 2-core
CPU at the defaults; use --sets 200 --initial 50 for a quick look.

    python examples/multistability.py [--sets 1000] [--initial 100] [--out multistability.png]
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import genenet as gn  # noqa: E402


def main(sets: int = 1000, initial: int = 100, out: str = "multistability.png") -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("toggle_switch", "myeloid")):
        model = gn.Hill.random(gn.load_network(name), n=sets, seed=0)
        start = time.perf_counter()
        res = gn.find_steady_states(model, n_initial=initial, seed=0)
        took = time.perf_counter() - start
        counts = res.multistability()
        print(f"{name}: {sets} parameter sets x {initial} initial states in {took:.1f} s")
        for k, n in counts.items():
            kind = {0: "no stable state", 1: "monostable", 2: "bistable", 3: "tristable"}.get(k, f"{k}-stable")
            print(f"  {kind:16s} {n:5d} ({n / sets:.1%})")
        gn.plot_basins(res, ax=ax)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--out", default="multistability.png")
    a = parser.parse_args()
    main(a.sets, a.initial, a.out)

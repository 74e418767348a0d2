"""A double-knockout screen over a RACIPE ensemble, solved in chunks on a Dask cluster.

TCIM (32 genes, 159 edges; EMT and stemness) with 8 random parameter sets: wild type + 32
single + 496 double knockouts = 529 conditions x 8 sets = 4232 rows, each started from its
set's wild-type steady state and followed to its new steady state. The rows go to Dask workers
in chunks (``cluster=``: ``local`` starts one worker per core of this machine; a scheduler
address such as ``tcp://host:8786`` uses a running cluster); the result is the one a single
in-process call gives, row for row (``--check`` computes that too and compares). Prints how
often each single knockout moves the EMT markers (CDH1, VIM) by more than 2-fold across the
ensemble, and writes a heatmap of parameter set 0's screen (screen_on_a_cluster.png).

Needs the dask extra: ``pip install 'genenet[dask]'``.

    python examples/screen_on_a_cluster.py [--cluster local|ADDRESS] [--check] [--out PNG]
"""

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

import genenet as gn  # noqa: E402


def main(cluster: str = "local", check: bool = False, out: str = "screen_on_a_cluster.png") -> None:
    net = gn.load_network("tcim")
    model = gn.Hill.random(net, n=8, seed=0)
    wild = gn.steady_state(model, method="integrate")  # one row per set: the screen's starting points
    screen = gn.knockout_screen(net, order=2)
    start = time.perf_counter()
    ss = gn.steady_state(model, screen, x0=wild.x, method="integrate", cluster=cluster, progress=True)
    print(f"{ss.n_rows} rows ({len(screen)} conditions x {model.n_sets} parameter sets) on the cluster in "
          f"{time.perf_counter() - start:.1f} s (with its start-up); {int(ss.converged.sum())} converged")
    if check:
        start = time.perf_counter()
        here = gn.steady_state(model, screen, x0=wild.x, method="integrate")
        same = torch.equal(here.x, ss.x)
        print(f"in-process: {time.perf_counter() - start:.1f} s; same states: {same}")
    table = gn.screen_table(ss)
    markers = table[table.gene.isin(["CDH1", "VIM"]) & ~table.condition.str.contains(r"\+", regex=True)
                    & ~table.condition.isin(["wild type", "KO(CDH1)", "KO(VIM)"])]
    moved = (markers.assign(big=np.abs(markers.log2fc) > 1).groupby(["condition", "parameter_set"]).big.any()
             .groupby("condition").mean().sort_values(ascending=False))
    print("single knockouts (of other genes) that move CDH1 or VIM more than 2-fold, share of parameter sets:")
    for cond, share in moved.head(8).items():
        print(f"  {cond:14s} {share:.0%}")
    ax = gn.plot_screen_heatmap(table, cluster=True, parameter_set=0)
    ax.figure.set_size_inches(14, 6)
    ax.set_title("TCIM, parameter set 0: log2 fold change vs wild type (double-knockout screen)")
    ax.figure.tight_layout()
    ax.figure.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default="local", help="'local' or a Dask scheduler address")
    parser.add_argument("--check", action="store_true", help="also solve in-process and compare")
    parser.add_argument("--out", default="screen_on_a_cluster.png")
    args = parser.parse_args()
    main(args.cluster, args.check, args.out)

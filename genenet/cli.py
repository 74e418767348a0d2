"""Command line: ``genenet simulate | demo | networks``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

__all__ = ["main"]


def _simulate(args: argparse.Namespace) -> int:
    from .io import apply_params, load_network, read_params
    from .models import Hill
    from .simulate import simulate

    net = load_network(args.network)
    model = Hill.random(net, n=args.ensemble, seed=args.seed) if args.ensemble else Hill(net)
    if args.params:
        apply_params(model, read_params(args.params, model))
    t = np.linspace(args.t_start, args.t_end, args.points)
    x0 = None
    if args.x0 is not None:
        x0 = float(args.x0) if "=" not in args.x0 else {
            k.strip(): float(v) for k, v in (kv.split("=") for kv in args.x0.split(","))}
    traj = simulate(model, t, x0=x0, method=args.method, rtol=args.rtol, atol=args.atol, dt=args.dt,
                    max_steps=args.max_steps, device=args.device, dtype=args.dtype, throw=False,
                    progress=not args.quiet)
    if not args.quiet:
        print(traj.summary())
    if args.out:
        traj.to_frame().to_csv(args.out, index=False)
        if not args.quiet:
            print(f"wrote {args.out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        ax = traj.plot()
        ax.figure.savefig(args.plot, dpi=120)
        if not args.quiet:
            print(f"wrote {args.plot}")
    return 0 if traj.success else 2


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out_dir, n_sets=args.n, seed=args.seed, device=args.device)
    return 0


def _networks(args: argparse.Namespace) -> int:
    from .io import bundled_networks, load_network

    for name in bundled_networks():
        print(f"{name:24s} {load_network(name).summary()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genenet", description="Gene regulatory network dynamics.")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a network with Hill kinetics",
                         description="Simulate NETWORK (a .topo/.tsv/.graphml path or a bundled name, see "
                                     "`genenet networks`) with the RACIPE shifted-Hill model and write the "
                                     "trajectory as a long CSV (row, condition, parameter_set, time, gene, value) "
                                     "and/or a plot. Exit code 2 if any row failed.")
    sim.add_argument("network", help="path to .topo/.tsv/.graphml, or a bundled network name")
    sim.add_argument("--t-start", type=float, default=0.0, help="initial time (default 0)")
    sim.add_argument("--t-end", type=float, default=50.0, help="final time (default 50)")
    sim.add_argument("--points", type=int, default=101, help="number of save times, evenly spaced (default 101)")
    sim.add_argument("--method", default="dopri5", choices=["dopri5", "tsit5", "rk4", "euler"],
                     help="solver (default dopri5)")
    sim.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance (default 1e-6)")
    sim.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance (default 1e-8)")
    sim.add_argument("--dt", type=float, default=None, help="step of the fixed-step methods rk4/euler")
    sim.add_argument("--max-steps", type=int, default=10_000, help="step limit per row (default 10000)")
    sim.add_argument("--params", metavar="FILE", help="parameter file: JSON {name: value|list|{entry: value}} "
                                                      "or CSV with columns name,entry,value")
    sim.add_argument("--ensemble", type=int, default=0, metavar="P",
                     help="simulate P random RACIPE parameter sets instead of the defaults")
    sim.add_argument("--seed", type=int, default=0, help="seed of --ensemble (default 0)")
    sim.add_argument("--x0", default=None, help="initial state: one number for all genes, or GENE=value,...")
    sim.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    sim.add_argument("--dtype", default=None, choices=["float32", "float64"],
                     help="default float64 on CPU, float32 on CUDA")
    sim.add_argument("--out", metavar="CSV", help="write the trajectory as a long CSV table")
    sim.add_argument("--plot", metavar="PNG", help="write a plot of the trajectory")
    sim.add_argument("-q", "--quiet", action="store_true", help="print nothing, show no progress bar")
    sim.set_defaults(func=_simulate)

    demo = sub.add_parser("demo", help="run the README demo on the bundled default network")
    demo.add_argument("--out-dir", default=".", help="where to write genenet_demo.png (default .)")
    demo.add_argument("-n", type=int, default=500, help="parameter sets in the ensemble (default 500)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_demo)

    nets = sub.add_parser("networks", help="list the bundled networks")
    nets.set_defaults(func=_networks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"genenet {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

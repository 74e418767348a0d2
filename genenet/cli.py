"""Command line: ``genenet simulate | screen | steady-state | fit | plot | demo | networks``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["main"]


def _save_plot(args: argparse.Namespace, draw: Callable[[], Any]) -> None:
    """If ``--plot PATH`` was given: draw (off-screen), lay out, save, say so."""
    if not args.plot:
        return
    import matplotlib

    matplotlib.use("Agg")
    fig = draw()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    if not args.quiet:
        print(f"wrote {args.plot}")


def _simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate

    _, model = _model(args)
    t = np.linspace(args.t_start, args.t_end, args.points)
    x0 = None
    if args.x0 is not None:
        x0 = float(args.x0) if "=" not in args.x0 else {
            k.strip(): float(v) for k, v in (kv.split("=") for kv in args.x0.split(","))}
    traj = simulate(model, t, x0=x0, method=args.method, rtol=args.rtol, atol=args.atol, dt=args.dt,
                    max_steps=args.max_steps, device=args.device, dtype=args.dtype, throw=False,
                    progress=not args.quiet, cluster=args.cluster)
    if not args.quiet:
        print(traj.summary())
    if args.out:
        traj.to_frame().to_csv(args.out, index=False)
        if not args.quiet:
            print(f"wrote {args.out}")
    _save_plot(args, lambda: traj.plot().figure)
    return 0 if traj.success else 2


def _model(args: argparse.Namespace):
    from .io import apply_params, load_network, read_params
    from .models import Hill

    if str(args.network).lower().endswith((".xml", ".sbml")):  # an SBML model: its own kinetics and parameters
        from .io import read_sbml

        if args.ensemble:
            raise ValueError("--ensemble draws RACIPE Hill parameters; an SBML model brings its own")
        model = read_sbml(args.network)
        net = model  # screens name its species (knockout_screen takes a model)
    else:
        net = load_network(args.network)
        model = Hill.random(net, n=args.ensemble, seed=args.seed) if args.ensemble else Hill(net)
    if args.params:
        apply_params(model, read_params(args.params, model))
    return net, model


def _screen(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    import pandas as pd
    from tqdm.auto import tqdm

    from .distributed import connect
    from .perturb import knockdown_screen, knockout_screen
    from .screen import screen_table
    from .steady import steady_state

    net, model = _model(args)
    genes = args.genes.split(",") if args.genes else None
    if args.knockdown is not None:
        conditions = knockdown_screen(net, fraction=args.knockdown, order=args.order, genes=genes)
    else:
        conditions = knockout_screen(net, order=args.order, genes=genes)
    wild, rest = conditions[0], conditions[1:]
    chunks = [rest[i: i + args.chunk_size] for i in range(0, len(rest), args.chunk_size)] or [[]]
    out = Path(args.out)
    parts = out.with_name(out.name + ".parts")
    manifest = {"network": str(args.network), "order": args.order, "knockdown": args.knockdown,
                "genes": args.genes, "ensemble": args.ensemble, "seed": args.seed, "params": args.params,
                "chunk_size": args.chunk_size, "n_conditions": len(conditions)}
    if parts.exists() and not args.resume:
        raise ValueError(f"{parts} exists from an earlier run; pass --resume to continue it or remove it")
    parts.mkdir(parents=True, exist_ok=True)
    mpath = parts / "manifest.json"
    if mpath.exists() and json.loads(mpath.read_text()) != manifest:
        raise ValueError(f"{parts} holds a different screen ({mpath}); remove it or rerun with the same options")
    mpath.write_text(json.dumps(manifest, indent=1))

    with connect(args.cluster) as cluster:  # one connection for all chunks
        # the wild-type steady state is every condition's starting point and the fold-change reference
        wt = steady_state(model, method="integrate", device=args.device)  # one row: in-process
        x_wt = wt.x
        done = 0
        bar = tqdm(total=len(conditions), desc="screen", unit="condition", disable=args.quiet)
        for i, chunk in enumerate(chunks):
            part = parts / f"part_{i:05d}.csv"
            if part.exists():  # finished in an earlier run: written atomically, never partial
                done += len(chunk)
                bar.update(len(chunk) + (1 if i == 0 else 0))
                continue
            ss = steady_state(model, [wild, *chunk], x0=x_wt, method="integrate", device=args.device,
                              cluster=cluster)
            table = screen_table(ss)
            if i > 0:
                table = table[table.condition != wild.label]
            tmp = part.with_suffix(".tmp")
            table.to_csv(tmp, index=False)
            os.replace(tmp, part)
            done += len(chunk)
            bar.update(len(chunk) + (1 if i == 0 else 0))
    bar.close()
    table = pd.concat([pd.read_csv(parts / f"part_{i:05d}.csv") for i in range(len(chunks))], ignore_index=True)
    table.to_csv(out, index=False)
    for f in parts.iterdir():
        f.unlink()
    parts.rmdir()
    if not args.quiet:
        n_conv = int(table.groupby(["condition", "parameter_set"]).converged.all().sum())
        print(f"screen of {len(conditions)} conditions x {model.n_sets} parameter set(s): "
              f"{n_conv} steady states converged; wrote {out}")
    def heatmap():
        from .plot import plot_screen_heatmap

        fig = plot_screen_heatmap(table, cluster=True).figure
        fig.set_size_inches(max(6, 0.12 * len(conditions) + 3), max(4, 0.25 * len(net.genes) + 2))
        return fig

    _save_plot(args, heatmap)
    return 0


def _steady(args: argparse.Namespace) -> int:
    from .multistability import find_steady_states

    _, model = _model(args)
    res = find_steady_states(model, n_initial=args.initial, seed=args.seed, device=args.device, cluster=args.cluster,
                             progress=not args.quiet)
    if not args.quiet:
        print(res.summary())
    if args.out:
        res.states.to_csv(args.out, index=False)
        if not args.quiet:
            print(f"wrote {args.out}")
    from .plot import plot_basins

    _save_plot(args, lambda: plot_basins(res).figure)
    return 0


def _fit(args: argparse.Namespace) -> int:
    from .data import ExpressionData
    from .fit import fit

    _, model = _model(args)
    data = ExpressionData.from_csv(args.data, dropna=args.dropna)
    free = [f.strip() for f in args.free.split(",") if f.strip()]
    res = fit(model, data, free=free, method=args.method, multistart=args.multistart, seed=args.seed,
              max_iter=args.max_iter, progress=not args.quiet, noise=args.noise, device=args.device,
              cluster=args.cluster)
    if not args.quiet:
        print(res.summary())
        print(res.params.to_string(index=False, float_format=lambda v: f"{v:.5g}"))
    if args.out:
        res.to_json(args.out)
        if not args.quiet:
            print(f"wrote {args.out}")
    _save_plot(args, lambda: res.plot()[0].figure)
    return 0 if res.converged else 2


def _plot(args: argparse.Namespace) -> int:
    import pandas as pd

    from .multistability import SteadyStates
    from .plot import plot_basins, plot_screen_heatmap, plot_trajectory
    from .trajectory import Trajectory

    try:
        table = pd.read_csv(args.input)
    except pd.errors.ParserError as err:
        raise ValueError(f"{args.input}: not a CSV table ({err})") from None
    cols = set(table.columns)
    genes = [g.strip() for g in args.genes.split(",")] if args.genes else None
    if {"row", "time", "gene", "value"} <= cols:  # genenet simulate --out
        traj = Trajectory.from_frame(table)

        def draw():
            ax = plot_trajectory(traj, genes=genes, rows=list(range(min(args.rows, traj.n_rows))))
            return ax.figure
    elif {"gene", "log2fc"} <= cols:  # genenet screen --out
        def draw():
            sub = table[table.gene.isin(genes)] if genes else table
            ax = plot_screen_heatmap(sub, cluster=True, parameter_set=args.parameter_set)
            n_cond = sub.condition.nunique()
            ax.figure.set_size_inches(max(6, 0.12 * n_cond + 3), max(4, 0.25 * sub.gene.nunique() + 2))
            return ax.figure
    elif {"state", "stable", "basin_fraction"} <= cols:  # genenet steady-state --out
        states = SteadyStates.from_frame(table)

        def draw():
            return plot_basins(states).figure
    else:
        raise ValueError(f"{args.input}: not a table genenet writes; expected the columns of simulate --out "
                         "(row, condition, parameter_set, time, gene, value), screen --out (..., gene, log2fc) "
                         f"or steady-state --out (..., state, stable, basin_fraction); got {sorted(cols)}")
    _save_plot(args, draw)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out_dir, n_sets=args.n, seed=args.seed, device=args.device)
    return 0


def _networks(args: argparse.Namespace) -> int:
    from .io import bundled_networks, load_network

    for name in bundled_networks():
        print(f"{name:24s} {load_network(name).summary()}")
    return 0


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("network", nargs="?", help="path to .topo/.tsv/.graphml, an SBML model (.xml/.sbml: its own "
                                              "kinetics), or a bundled network name (or network = ... in --config)")
    p.add_argument("--config", metavar="TOML", help="options from a TOML file: keys are the long option names "
                                                    "(t-end = 50, method = \"tsit5\", network = \"tcim\"); "
                                                    "flags on the command line override it")
    p.add_argument("--params", metavar="FILE", help="parameter file (JSON or CSV name,entry,value)")
    p.add_argument("--ensemble", type=int, default=0, metavar="P", help="P random RACIPE parameter sets")
    p.add_argument("--seed", type=int, default=0, help="seed of --ensemble and of random initial states")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    p.add_argument("--cluster", default=None, metavar="ADDRESS",
                   help="run the rows (fit: the starts) in chunks on Dask workers: 'local' for this machine's "
                        "cores, or a scheduler address such as tcp://host:8786 (needs genenet[dask])")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, show no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from .solvers import METHODS

    parser = argparse.ArgumentParser(prog="genenet", description="Gene regulatory network dynamics.")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a network with Hill kinetics",
                         description="Simulate NETWORK (a .topo/.tsv/.graphml path or a bundled name, see "
                                     "`genenet networks`) with the RACIPE shifted-Hill model and write the "
                                     "trajectory as a long CSV (row, condition, parameter_set, time, gene, value) "
                                     "and/or a plot. Exit code 2 if any row failed.")
    _model_options(sim)
    sim.add_argument("--t-start", type=float, default=0.0, help="initial time (default 0)")
    sim.add_argument("--t-end", type=float, default=50.0, help="final time (default 50)")
    sim.add_argument("--points", type=int, default=101, help="number of save times, evenly spaced (default 101)")
    sim.add_argument("--method", default="dopri5", choices=sorted(METHODS),
                     help="solver (default dopri5; stiff models: rodas5, auto or bdf)")
    sim.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance (default 1e-6)")
    sim.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance (default 1e-8)")
    sim.add_argument("--dt", type=float, default=None, help="step of the fixed-step methods rk4/euler")
    sim.add_argument("--max-steps", type=int, default=10_000, help="step limit per row (default 10000)")
    sim.add_argument("--x0", default=None, help="initial state: one number for all genes, or GENE=value,...")
    sim.add_argument("--dtype", default=None, choices=["float32", "float64"],
                     help="default float64 on CPU, float32 on CUDA")
    sim.add_argument("--out", metavar="CSV", help="write the trajectory as a long CSV table")
    sim.add_argument("--plot", metavar="PNG", help="write a plot of the trajectory")
    sim.set_defaults(func=_simulate)

    scr = sub.add_parser("screen", help="knockout/knockdown screen: steady states and log2 fold changes",
                         description="Steady states of wild type and every knockout (or knockdown) of up to ORDER "
                                     "genes, each started from the wild-type steady state, with log2 fold change "
                                     "against wild type. Results are written in chunks as they finish; --resume "
                                     "continues an interrupted screen without recomputing finished chunks.")
    _model_options(scr)
    scr.add_argument("--order", type=int, default=2, help="knock out up to ORDER genes at once (default 2)")
    scr.add_argument("--knockdown", type=float, default=None, metavar="FRACTION",
                     help="knock down by FRACTION (0..1) instead of knocking out")
    scr.add_argument("--genes", default=None, help="comma-separated genes to screen (default all)")
    scr.add_argument("--chunk-size", type=int, default=500, help="conditions per chunk (default 500)")
    scr.add_argument("--resume", action="store_true", help="continue an interrupted screen writing to --out")
    scr.add_argument("--out", required=True, metavar="CSV",
                     help="tidy table: condition, parameter_set, gene, value, reference_value, log2fc, converged")
    scr.add_argument("--plot", metavar="PNG", help="heatmap of log2 fold changes (genes x conditions)")
    scr.set_defaults(func=_screen)

    st = sub.add_parser("steady-state", help="all steady states from many initial states (RACIPE-style)",
                        description="Find the distinct steady states of NETWORK (or of each parameter set of "
                                    "--ensemble) from --initial random initial states: stability and basin fraction.")
    _model_options(st)
    st.add_argument("--initial", type=int, default=500, help="random initial states per parameter set (default 500)")
    st.add_argument("--out", metavar="CSV", help="one line per state: stable, basin_fraction, gene levels")
    st.add_argument("--plot", metavar="PNG", help="basin fractions / multistability histogram")
    st.set_defaults(func=_steady)

    ft = sub.add_parser("fit", help="fit Hill parameters to expression time courses",
                        description="Fit the free parameters of the Hill model on NETWORK to DATA (a long CSV with "
                                    "columns condition,time,gene,value[,sd]); initial states are the data at the "
                                    "first time point. Condition labels like KO(A), KO(A)+KO(B), KD(A,0.5) and "
                                    "'wild type' are understood. Exit code 2 if the best start did not converge.")
    _model_options(ft)
    ft.add_argument("data", nargs="?", help="long CSV/TSV: condition, time, gene, value [, sd] (or data = ... in "
                                            "--config)")
    ft.add_argument("--free", default="production", help="comma-separated parameters to fit (default production); "
                                                          "add x0 to estimate initial states")
    ft.add_argument("--method", default="lm", choices=["lm", "trust-ncg", "lbfgs", "adam"])
    ft.add_argument("--multistart", type=int, default=1, help="number of starts (Latin hypercube), default 1")
    ft.add_argument("--max-iter", type=int, default=100)
    ft.add_argument("--noise", default="gaussian", choices=["gaussian", "estimate", "log"])
    ft.add_argument("--dropna", action="store_true", help="drop NaN/inf measurements instead of failing")
    ft.add_argument("--out", metavar="JSON", help="fitted values, intervals and start table")
    ft.add_argument("--plot", metavar="PNG", help="data points and fitted curves")
    ft.set_defaults(func=_fit)

    pl = sub.add_parser("plot", help="plot a table written by simulate, screen or steady-state",
                        description="Draw the figure of a CSV that `genenet simulate --out` (time courses), "
                                    "`genenet screen --out` (clustered log2 fold-change heatmap) or `genenet "
                                    "steady-state --out` (basin fractions / multistability) wrote; the kind is "
                                    "recognised by the columns.")
    pl.add_argument("input", help="CSV written by genenet simulate/screen/steady-state --out")
    pl.add_argument("--out", dest="plot", required=True, metavar="PNG", help="where to write the figure")
    pl.add_argument("--genes", default=None, help="comma-separated genes to show (default all)")
    pl.add_argument("--rows", type=int, default=10, help="time courses: the first ROWS rows (default 10)")
    pl.add_argument("--parameter-set", type=int, default=0, help="screen: which parameter set (default 0)")
    pl.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    pl.set_defaults(func=_plot)

    demo = sub.add_parser("demo", help="run the README demo on the bundled default network")
    demo.add_argument("--out-dir", default=".", help="where to write genenet_demo.png (default .)")
    demo.add_argument("-n", type=int, default=500, help="parameter sets in the ensemble (default 500)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default="auto")
    demo.set_defaults(func=_demo)

    nets = sub.add_parser("networks", help="list the bundled networks")
    nets.set_defaults(func=_networks)
    parser._genenet_commands = sub.choices  # type: ignore[attr-defined]  # for --config
    return parser


def _with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                 args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the options of ``--config FILE.toml`` as defaults under the command line's own."""
    path = getattr(args, "config", None)
    if path:
        command = parser._genenet_commands[args.command]  # type: ignore[attr-defined]
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ValueError("--config needs Python >= 3.11 (tomllib) or the tomli package") from None
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
        actions = {a.dest: a for a in command._actions if a.dest not in ("help", "config")}
        values = {}
        for key, value in config.items():
            dest = key.replace("-", "_")
            if dest not in actions:
                raise ValueError(f"{path}: unknown option {key!r} for 'genenet {args.command}'; allowed: "
                                 f"{sorted(k.replace('_', '-') for k in actions)}")
            action = actions[dest]
            if action.type is not None and not isinstance(value, bool):
                try:
                    value = action.type(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: {key} = {value!r} is not a {action.type.__name__}") from None
            if action.choices is not None and value not in action.choices:
                raise ValueError(f"{path}: {key} = {value!r}; allowed: {list(action.choices)}")
            values[dest] = value
        command.set_defaults(**values)
        args = parser.parse_args(argv)
    for name in ("network", "data"):
        if name in vars(args) and getattr(args, name) is None:
            raise ValueError(f"{name.upper()} is required: give it on the command line or as {name} = ... in --config")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args = _with_config(parser, argv, args)
        return args.func(args)
    except (ValueError, KeyError, TypeError, OSError) as err:
        print(f"genenet {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

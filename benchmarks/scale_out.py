"""Scale-out: the standard screen in one process vs in row chunks on a Dask cluster (cluster=).

Jobs, each run in-process and on a distributed.LocalCluster of this machine (one single-threaded
worker process per core, started once before the timings; its start-up is reported apart):

- simulate: the standard problem of solve_screen.py (Network.random(100, 3, seed=0), Hill.random
  seed 0, wild type + all single + all double knockouts = 5051 rows, t in [0, 20], 21 save times,
  dopri5, rtol 1e-6, atol 1e-8, float64);
- steady_state: the same 5051 rows (steady_screen.py's job);
- find_steady_states: RACIPE on the toggle switch, --sets parameter sets x 100 initial states.

Every distributed result is compared with the in-process one (max |difference|; 0 = bitwise).
On one machine a cluster buys nothing over the in-process threads; this measures what the
chunking costs, which is what a real multi-machine cluster adds per machine.

    python benchmarks/scale_out.py [--rows 5051] [--sets 1000] [--workers N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from solve_screen import machine, standard_network, versions, write_results

import genenet as gn

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5051)
    ap.add_argument("--sets", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    net = standard_network()
    model = gn.Hill.random(net, n=1, seed=0)
    screen = gn.knockout_screen(net, order=2)[: args.rows]
    t = np.linspace(0.0, 20.0, 21)
    toggle = gn.Hill.random(gn.load_network("toggle_switch"), n=args.sets, seed=0)

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    client.run(lambda: __import__("genenet"))  # workers import genenet once, as a long-lived cluster would have
    startup = time.perf_counter() - t0

    jobs = {
        "simulate": (lambda **kw: gn.simulate(model, t, perturbations=screen, **kw), lambda r: r.y),
        "steady_state": (lambda **kw: gn.steady_state(model, screen, **kw), lambda r: r.x),
        "find_steady_states": (lambda **kw: gn.find_steady_states(toggle, n_initial=100, seed=0, **kw),
                               lambda r: torch.as_tensor(r.states[toggle.genes].to_numpy())),
    }
    rows = []
    for name, (run, values) in jobs.items():
        run()  # warm-up: kernel build, compile caches
        run(cluster=client)
        here, a = timed(run)
        there, b = timed(lambda: run(cluster=client))  # noqa: B023 - called at once
        va, vb = values(a), values(b)
        same = va.shape == vb.shape
        diff = float((va - vb).abs().nan_to_num(0.0).max()) if same else float("nan")
        rows.append({"job": name, "in_process_s": here, "cluster_s": there, "ratio": there / here,
                     "max_abs_difference": diff})
        print(f"{name:20s} in-process {here:7.2f} s   cluster {there:7.2f} s   x{there / here:5.2f}   "
              f"max |diff| {diff:.1e}")
    client.close()
    cluster.close()

    date = dt.date.today().isoformat()
    lines = [f"# Scale-out: one process vs row chunks on a Dask LocalCluster ({date})", "",
             f"Machine: {machine(torch.device('cpu'))}; cluster: {args.workers} worker processes x 1 thread, "
             f"started in {startup:.1f} s (not in the timings).", "",
             f"Versions: {json.dumps(versions())}", "",
             "Settings: standard screen (Network.random(100, 3, seed=0), Hill.random seed 0, "
             f"{len(screen)} rows, t in [0, 20], 21 saves, dopri5 rtol 1e-6 atol 1e-8, float64); steady_state on "
             f"the same rows; find_steady_states on the toggle switch, {args.sets} sets x 100 initial states. "
             "Default chunk_size (about four chunks per worker). Best of one timed run after a warm-up.", "",
             "| job | in-process (s) | cluster (s) | cluster / in-process | max abs difference |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['job']} | {r['in_process_s']:.2f} | {r['cluster_s']:.2f} | {r['ratio']:.2f} | "
              f"{r['max_abs_difference']:.1e} |" for r in rows]
    out = args.out or HERE / "results" / f"scale_out_cpu_{date}.md"
    write_results(out, lines)


if __name__ == "__main__":
    main()

"""RACIPE job: P random parameter sets x I random initial states, each taken to steady state.

genenet: ``gn.find_steady_states(gn.Hill.random(net, n=P, seed=0), n_initial=I)`` — the whole job:
every start integrated until steady (dopri5 at GRiNS's tolerances rtol 1e-5, atol 1e-6, stop when
max|dx/dt| <= 1e-5 (1 + max|x|), t <= 1000), polished by Newton (tol 1e-9), Newton from every
start as well (to find unstable states), clustering of the distinct states and their
stability; float64 on the CPU. Also timed with find_steady_states' own stricter defaults (rtol
1e-6, atol 1e-9, stop at 1e-8 (1 + max|x|)), and the found stable states compared.

GRiNS (RACIPE in JAX/diffrax, ``grins.racipe_run.topo_simulate``, run with ``--grins-python``
in its own Python >= 3.12 with ``JAX_PLATFORMS=cpu``): Tsit5, rtol 1e-5, atol 1e-6, t <= 200,
diffrax ``steady_state_event`` (rms(f) < 1e-6 + 1e-5 rms(x)), float32, integration only
(no polishing, no stability, no clustering); its own Sobol parameter sets and initial states.
Time: GRiNS's second call (its call re-jits, so first and second are alike); genenet's second
call after a warm-up.

    python benchmarks/racipe_job.py --sizes 100x100 128x128 [--grins-python /path/to/python3.12]
    python benchmarks/racipe_job.py --network tcim --sizes 100x100 [--grins-python ...]

``--network`` is ``toggle`` (default, A -| B -| A) or a bundled network name (``tcim``: 32 genes,
159 edges, the issue's second RACIPE network); GRiNS gets the same topology as a .topo file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from solve_screen import machine, versions, write_results

import genenet as gn

HERE = Path(__file__).resolve().parent

GRINS_RUNNER = '''
import sys, time, json, glob
import pandas as pd
from grins.racipe_run import gen_topo_param_files, topo_simulate
P, I = int(sys.argv[1]), int(sys.argv[2])
gen_topo_param_files("TS.topo", ".", num_replicates=1, num_params=P, num_init_conds=I, sampling_method="Sobol")
rep = "./TS/001"
params = pd.read_parquet(glob.glob(rep + "/*params*.parquet")[0])
ics = pd.read_parquet(glob.glob(rep + "/*init_conds*.parquet")[0])
times = []
for i in range(2):
    t0 = time.perf_counter()
    sol = topo_simulate("TS.topo", rep, ics, params, batch_size=10000)
    times.append(time.perf_counter() - t0)
print(json.dumps({"first_s": times[0], "seconds": times[1], "rows": len(sol),
                  "steady_fraction": float(sol["SteadyStateFlag"].mean())}))
'''


def toggle() -> gn.Network:
    return gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-")])


def network(name: str) -> gn.Network:
    return toggle() if name == "toggle" else gn.load_network(name)


# GRiNS's integration tolerances; its stop rms(f) < 1e-6 + 1e-5 rms(x) ~ genenet's max|f| <= 1e-5 (1 + max|x|)
MATCHED = {"rtol": 1e-5, "atol": 1e-6, "steady_tol": 1e-5}


def run_genenet(net: gn.Network, P: int, I: int, tolerances: dict | None = None) -> dict:
    kw = tolerances or {}
    model = gn.Hill.random(net, n=P, seed=0)
    gn.find_steady_states(model, n_initial=I, seed=0, **kw)  # warm-up (and the native kernel's first build)
    t0 = time.perf_counter()
    res = gn.find_steady_states(model, n_initial=I, seed=0, **kw)
    sec = time.perf_counter() - t0
    counts = res.groups["n_stable"].value_counts().sort_index()
    return {"seconds": sec, "stable_counts": {int(k): int(v) for k, v in counts.items()}}


def run_grins(python: str, net: gn.Network, P: int, I: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        gn.write_topo(net, Path(tmp, "TS.topo"))
        Path(tmp, "runner.py").write_text(GRINS_RUNNER)
        proc = subprocess.run([python, "runner.py", str(P), str(I)], cwd=tmp, capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["100x100", "128x128"])
    parser.add_argument("--grins-python", default=None)
    parser.add_argument("--network", default="toggle", help="toggle (default) or a bundled network name, e.g. tcim")
    args = parser.parse_args()
    net = network(args.network)
    rows = []
    for size in args.sizes:
        P, I = (int(v) for v in size.split("x"))
        entry = {"P": P, "I": I, "genenet": run_genenet(net, P, I, MATCHED),
                 "genenet default": run_genenet(net, P, I)}
        print(f"P={P} I={I} genenet {entry['genenet']['seconds']:.2f} s (default tolerances "
              f"{entry['genenet default']['seconds']:.2f} s)", flush=True)
        if args.grins_python:
            try:
                entry["grins"] = run_grins(args.grins_python, net, P, I)
                print(f"P={P} I={I} GRiNS {entry['grins']['seconds']:.2f} s", flush=True)
            except Exception as err:  # noqa: BLE001 - report, keep going
                entry["grins"] = {"error": f"{type(err).__name__}: {err}"}
        rows.append(entry)
    today = dt.date.today().isoformat()
    label = "toggle switch" if args.network == "toggle" else f"{args.network}: {net.n_genes} genes, {net.n_edges} edges"
    suffix = "" if args.network == "toggle" else f"_{args.network}"
    out = HERE / "results" / f"racipe{suffix}_cpu_{today}.md"
    lines = [f"# RACIPE job ({label}), {today}", "",
             f"- machine: {machine(torch.device('cpu'))}", f"- versions: {json.dumps(versions())}",
             "- genenet: the whole find_steady_states job (integrate to steady + Newton polish to max|f| <= 1e-9 "
             "(1 + max|x|) + Newton from every start + stability + clustering), float64, dopri5 at GRiNS's "
             "tolerances rtol 1e-5 atol 1e-6, integration stopped at max|f| <= 1e-5 (1 + max|x|); 'default': "
             "find_steady_states' own rtol 1e-6, atol 1e-9, stop at 1e-8 (1 + max|x|)",
             "- 'same states': the stable-state counts per parameter set agree between the two genenet runs",
             "- GRiNS: topo_simulate (Tsit5 rtol 1e-5 atol 1e-6, steady_state_event rms(f) < 1e-6 + 1e-5 rms(x), "
             "t <= 200, float32), integration only",
             "- command: `python benchmarks/racipe_job.py "
             + ("" if args.network == "toggle" else f"--network {args.network} ") + "--sizes " + " ".join(args.sizes)
             + (" --grins-python PY" if args.grins_python else "") + "`", "",
             "| P x I | simulations | genenet s | genenet s (default tolerances) | same states | GRiNS s "
             "| GRiNS / genenet |", "|---|---|---|---|---|---|---|"]
    for e in rows:
        g, gd = e["genenet"]["seconds"], e["genenet default"]["seconds"]
        same = "yes" if e["genenet"]["stable_counts"] == e["genenet default"]["stable_counts"] else "no"
        r = e.get("grins", {}).get("seconds")
        head = f"| {e['P']} x {e['I']} | {e['P'] * e['I']} | {g:.2f} | {gd:.2f} | {same} |"
        lines.append(f"{head} {r:.2f} | {r / g:.2f}x |" if r else f"{head} - | - |")
    write_results(out, lines)


if __name__ == "__main__":
    main()

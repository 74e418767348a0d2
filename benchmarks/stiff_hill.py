"""Stiff knockout screen: genenet rodas5 / auto vs scipy solve_ivp (Radau, BDF) in a loop, and diffrax.

Problem (issue 5): a 100-gene random Hill network (3 regulators per gene, Hill.random seed 0)
whose degradation rates are spread log-uniformly over 1e-2..1e3 (five decades), production
rescaled so each gene keeps its level g/k; moderate regulation (n = 2, λ = 5) so the time
step is set by stiffness, not by oscillations. 1000 conditions: wild type, the 100 single
and the first 899 double knockouts; t in [0, 50], 11 save times, rtol 1e-6, atol 1e-8,
float64 on the CPU.

- genenet: one call for all 1000 rows (analytic Hill Jacobian); on the CPU each row's whole
  Rosenbrock loop runs in the native kernel (genenet/native/kernels.c, LU with partial pivoting
  per step, OpenMP over rows), the torch loop (batched LU) where the kernel is off.
- scipy: solve_ivp per condition with the same analytic Jacobian (``jac=``), timed on the
  first ``--scipy-rows`` conditions and scaled to 1000 (its cost is linear in the rows).
- diffrax: Kvaerno5 + PIDController, jit(vmap) over the rows, if ``--diffrax-python`` names a
  Python with jax and diffrax (run as a subprocess: ``benchmarks/peers/diffrax_stiff.py``);
  timed (second call) on the first ``--diffrax-rows`` conditions and scaled to 1000.

Errors: max |x - x_ref| / max |x_ref| over the first ``--scipy-rows`` conditions against
scipy Radau at rtol 1e-10, atol 1e-12.

    python benchmarks/stiff_hill.py [--scipy-rows 20] [--diffrax-python /path/to/python]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from solve_screen import machine, versions, write_results

import genenet as gn
from genenet import native

HERE = Path(__file__).resolve().parent
RTOL, ATOL, T_END, N_ROWS = 1e-6, 1e-8, 50.0, 1000


def stiff_hill(G: int = 100, seed: int = 0) -> tuple[gn.Hill, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = gn.Hill.random_stiff(gn.Network.random(G, 3, seed=seed), seed=seed, rng=rng)
    levels = (model.params["production"] / model.params["degradation"]).detach()[0].numpy()
    return model, levels * rng.uniform(0.2, 1.5, G)  # starts around the levels g/k


def conditions(model: gn.Hill) -> list:
    return gn.knockout_screen(model.net, order=2)[:N_ROWS]


def scipy_loop(model, x0, conds, t, method, rows, rtol, atol):
    """solve_ivp per condition with the analytic Jacobian; returns seconds and states (rows, T, G)."""
    batch_params = model.row_params(None, 1, device=torch.device("cpu"), dtype=torch.float64)
    genes = list(model.genes)
    out = []
    t0 = time.perf_counter()
    for cond in conds[:rows]:
        mask = np.ones(len(genes))
        for p in cond.perturbations:
            for g in p.genes:
                mask[genes.index(g)] = 0.0
        p = dict(batch_params)
        p["production"] = p["production"] * torch.as_tensor(mask)[None]

        def f(_, x, p=p):
            with torch.no_grad():
                return model.rhs(None, torch.as_tensor(x)[None], p)[0].numpy()

        def jac(_, x, p=p):
            xt = torch.as_tensor(x)[None]
            with torch.no_grad():
                return (model.production_jacobian(None, xt, p) - model.degradation_jacobian(None, xt, p))[0].numpy()

        sol = solve_ivp(f, (t[0], t[-1]), x0 * mask, method=method, t_eval=t, rtol=rtol, atol=atol, jac=jac)
        out.append(sol.y.T)
    return time.perf_counter() - t0, np.stack(out)


def export_for_diffrax(model, x0, conds, t, path: Path) -> None:
    p = {k: v.detach()[0].numpy() for k, v in model.params.items()}
    genes = list(model.genes)
    masks = np.ones((len(conds), len(genes)))
    for i, cond in enumerate(conds):
        for pert in cond.perturbations:
            for g in pert.genes:
                masks[i, genes.index(g)] = 0.0
    np.savez(path, sources=model.net.sources, targets=model.net.targets_idx, signs=model.net.signs, masks=masks,
             x0=x0, t=t, rtol=RTOL, atol=ATOL, **p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scipy-rows", type=int, default=20)
    ap.add_argument("--diffrax-python", default=None)
    ap.add_argument("--diffrax-rows", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    model, x0 = stiff_hill()
    conds = conditions(model)
    t = np.linspace(0, T_END, 11)
    n_sub = args.scipy_rows
    _, ref = scipy_loop(model, x0, conds, t, "Radau", n_sub, 1e-10, 1e-12)
    scale = np.abs(ref).max()
    rows = {}
    with torch.no_grad():  # warm-up: one-off imports and the native kernel's build
        gn.simulate(model, t, x0=x0, perturbations=conds[:4], method="rodas5", rtol=RTOL, atol=ATOL)
    for method in ("rodas5", "auto"):
        t0 = time.perf_counter()
        with torch.no_grad():
            traj = gn.simulate(model, t, x0=x0, perturbations=conds, method=method, rtol=RTOL, atol=ATOL)
        sec = time.perf_counter() - t0
        err = np.abs(traj.numpy()[:n_sub] - ref).max() / scale
        extra = {"switched": int(traj.stats["switched"].sum())} if "switched" in traj.stats else {}
        rows[f"genenet {method}"] = {"seconds": sec, "error": err, "mean_steps": float(traj.stats["n_steps"].mean()),
                                     **extra}
        print(method, rows[f"genenet {method}"], flush=True)
    for method in ("Radau", "BDF"):
        sec, y = scipy_loop(model, x0, conds, t, method, n_sub, RTOL, ATOL)
        rows[f"scipy solve_ivp {method} loop (analytic Jacobian)"] = {
            "seconds": sec * N_ROWS / n_sub, "error": np.abs(y - ref).max() / scale,
            "note": f"timed on {n_sub} rows x {N_ROWS // n_sub}"}
        print(method, rows[f"scipy solve_ivp {method} loop (analytic Jacobian)"], flush=True)
    if args.diffrax_python:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "problem.npz"
            export_for_diffrax(model, x0, conds[: args.diffrax_rows], t, data)
            out = subprocess.run([args.diffrax_python, str(HERE / "peers" / "diffrax_stiff.py"), str(data)],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            y = np.load(Path(tmp) / "problem_diffrax.npy")
        rows[f"diffrax {res['solver']} jit(vmap) (jax {res['jax']})"] = {
            "seconds": res["seconds"] * N_ROWS / args.diffrax_rows, "error": np.abs(y[:n_sub] - ref).max() / scale,
            "note": f"second call on {args.diffrax_rows} rows x {N_ROWS / args.diffrax_rows:g}; "
                    f"first call (with compile) {res['first_seconds']:.0f} s"}
        print("diffrax", res, flush=True)
    today = dt.date.today().isoformat()
    base = rows["scipy solve_ivp Radau loop (analytic Jacobian)"]["seconds"]
    lines = [f"# Stiff knockout screen benchmark, {today}", "", f"- machine: {machine(torch.device('cpu'))}",
             f"- versions: {json.dumps(versions())}",
             f"- problem: 100-gene random Hill network, degradation 1e-2..1e3 (log-uniform), n = 2, fold 5; "
             f"{N_ROWS} conditions (wild type, 100 single, 899 double knockouts); t in [0, {T_END:g}], 11 save "
             f"times; rtol {RTOL:g}, atol {ATOL:g}; float64 CPU",
             f"- error: max |x - ref| / max |ref| over the first {n_sub} conditions, ref = scipy Radau rtol 1e-10",
             "- genenet backend: " + ("native whole-trajectory Rosenbrock kernel (genenet/native/kernels.c)"
                                      if native.available(torch.float64) else "batched torch loop"),
             "- command: `python benchmarks/stiff_hill.py" + (" --diffrax-python PY" if args.diffrax_python else "")
             + "`", "",
             "| tool | seconds (1000 rows) | max rel. error | speed-up vs scipy Radau loop | note |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        note = r.get("note", "") or (f"mean steps {r['mean_steps']:.0f}" + (
            f", {r['switched']} rows switched" if "switched" in r else ""))
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['error']:.1e} | {base / r['seconds']:.1f}x | {note} |")
    out_path = HERE / "results" / f"stiff_cpu_{today}.md"
    write_results(out_path, lines)


if __name__ == "__main__":
    sys.exit(main())

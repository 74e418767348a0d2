"""Steady states of the whole double-knockout screen of the standard network (issue 6).

Problem: the standard 100-gene network of solve_screen.py (Network.random(100, 3, seed=0),
Hill.random seed 0); rows = wild type + 100 single + 4950 double knockouts (5051); each row
from the model's default state (knocked-out genes at 0); float64, convergence when
max_i |f_i| <= 1e-10 (1 + max_i x_i). Most rows of this network oscillate (a steady state
exists in every row, but it is unstable and no integration reaches it), so this is a hard
root-finding job, not a relaxation.

genenet: one call of gn.steady_state(model, screen) (Newton, then integration + Newton from
four points of each row's trajectory, then pseudo-transient continuation + Newton).
Peer: scipy.optimize.root per row (MINPACK hybr, with genenet's exact Jacobian, and the
same after following the dynamics with solve_ivp LSODA to t=1000), on a sample of rows,
extrapolated to the screen. Every converged row's residual is re-checked with an
independent numpy right-hand side.

    python benchmarks/steady_screen.py [--rows 5051] [--peer-rows 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.optimize import root
from solve_screen import machine, standard_network, versions, write_results

import genenet as gn
from genenet.solvers.integrate import tree_index
from genenet.steady import _prepare

HERE = Path(__file__).resolve().parent
TOL = 1e-10


def numpy_rhs(model: gn.Hill, mask: np.ndarray):
    """The Hill right-hand side written again in numpy (per row: production x mask)."""
    p = {k: v.detach()[0].numpy() for k, v in model.params.items()}
    net = model.net
    src, tgt, sign = np.asarray(net.sources), np.asarray(net.targets_idx), np.asarray(net.signs)
    inv_l = 1.0 / p["fold"]

    def f(x: np.ndarray) -> np.ndarray:
        s = 1.0 / (1.0 + (np.maximum(x[src], 0.0) / p["threshold"]) ** p["hill"])
        H = np.where(sign > 0, 1 + (inv_l - 1) * s, inv_l + (1 - inv_l) * s)
        prod = np.ones(len(model.genes))
        np.multiply.at(prod, tgt, H)
        return p["production"] * mask * prod - p["degradation"] * x

    return f


def masks(screen, genes) -> np.ndarray:
    out = np.ones((len(screen), len(genes)))
    for r, cond in enumerate(screen):
        for pert in cond.perturbations:
            for g in pert.genes:
                out[r, genes.index(g)] = 0.0
    return out


def scipy_rows(model, screen, rows: np.ndarray, follow: bool) -> tuple[float, int]:
    """scipy root (hybr) per row with genenet's analytic Jacobian; with ``follow`` first
    integrate the row with LSODA to t=1000. Returns (seconds, converged rows)."""
    sub = [screen[i] for i in rows]
    batch, args, _, dtp = _prepare(model, sub, None, None, "cpu", torch.float64)
    term = batch.term
    x0 = term.reset(torch.zeros(len(sub), dtype=dtp), batch.x0.detach(), args).numpy()
    m = masks(sub, model.genes)
    ok = 0
    t0 = time.perf_counter()
    for b in range(len(sub)):
        f = numpy_rhs(model, m[b])
        ab, tt = tree_index(args, torch.tensor([b])), torch.zeros(1, dtype=dtp)

        def jac(x, ab=ab, tt=tt):
            with torch.no_grad():
                return term.jacobian(tt, torch.from_numpy(x)[None], ab)[0].numpy()

        start = x0[b]
        if follow:
            start = solve_ivp(lambda _, x, f=f: f(x), (0.0, 1000.0), start, method="LSODA", rtol=1e-6,
                              atol=1e-9).y[:, -1]
        with np.errstate(all="ignore"):
            sol = root(f, start, jac=jac, method="hybr")
            r = np.abs(f(sol.x)).max()
        ok += bool(np.isfinite(r) and r <= TOL * (1 + np.abs(sol.x).max()) and (sol.x >= -1e-9).all())
    return time.perf_counter() - t0, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5051)
    ap.add_argument("--peer-rows", type=int, default=50)
    a = ap.parse_args()
    net = standard_network()
    model = gn.Hill.random(net, n=1, seed=0)
    screen = gn.knockout_screen(net, order=2)[:a.rows]
    gn.steady_state(model, screen[:10], dtype=torch.float64)  # warm-up: native kernel build, imports
    t0 = time.perf_counter()
    ss = gn.steady_state(model, screen, tol=TOL, dtype=torch.float64)
    seconds = time.perf_counter() - t0
    conv = ss.converged
    m = masks(screen, model.genes)
    x = ss.x.numpy()
    check = max((np.abs(numpy_rhs(model, m[i])(x[i])).max() / (1 + np.abs(x[i]).max()) for i in np.nonzero(conv)[0]),
                default=float("nan"))
    with torch.no_grad():
        traj = gn.simulate(model, np.linspace(0.0, 1000.0, 201), perturbations=screen, dtype=torch.float64,
                           throw=False)
    late = traj.y.numpy()[:, -41:]  # t in [800, 1000]
    oscillating = int(((late.max(1) - late.min(1)).max(-1) > 1e-3 * (1 + late.max((1, 2)))).sum())
    print(ss.summary(), f"{seconds:.1f} s", flush=True)

    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(a.rows, size=min(a.peer_rows, a.rows), replace=False))
    peers = {}
    for follow in (False, True):
        s, ok = scipy_rows(model, screen, sample, follow)
        name = "scipy root (hybr, exact Jacobian)" + (" after solve_ivp LSODA to t=1000" if follow else " from x0")
        peers[name] = (s, ok)
        print(name, s, ok, flush=True)

    today = dt.date.today().isoformat()
    counts = {k: int((ss.method == k).sum()) for k in ("newton", "integrate", "ptc", "sub-condition", "failed")}
    lines = [f"# Steady states of the double-knockout screen, {today}", "",
             f"- machine: {machine(torch.device('cpu'))}", f"- versions: {json.dumps(versions())}",
             f"- problem: standard network (100 genes, 300 edges, Hill.random seed 0), {a.rows} rows "
             "(WT + singles + doubles), default start (knocked-out genes at 0), float64, "
             f"converged when max|f| <= {TOL:g} (1 + max x)",
             f"- rows still oscillating over t in [800, 1000] (simulate, amplitude > 1e-3 relative): "
             f"{oscillating} of {a.rows}; their steady states are unstable",
             f"- genenet: gn.steady_state(model, screen) once, after a 10-row warm-up; converged rows re-checked "
             f"with an independent numpy right-hand side: max relative residual {check:.1e}",
             f"- peer: scipy.optimize.root per row on {len(sample)} random rows (seed 0), extrapolated to {a.rows}",
             "- command: `python benchmarks/steady_screen.py" + (f" --rows {a.rows}" if a.rows != 5051 else "") + "`",
             "", "| tool | seconds | converged | stable | how |", "|---|---|---|---|---|",
             f"| genenet steady_state | {seconds:.1f} | {int(conv.sum())}/{a.rows} ({conv.mean():.0%}) | "
             f"{int(ss.stable.sum())} | " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " |"]
    for name, (s, ok) in peers.items():
        lines.append(f"| {name} | {s * a.rows / len(sample):.0f} (extrapolated from {s:.1f} s) | "
                     f"{ok}/{len(sample)} ({ok / len(sample):.0%}) | | per row |")
    out = HERE / "results" / f"steady_screen_cpu_{today}.md"
    write_results(out, lines)


if __name__ == "__main__":
    main()

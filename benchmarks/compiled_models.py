"""Compiled models in the native kernels: the cost of generality, and TwoStage/Sigmoid before/after.

Both on the standard network (``Network.random(100, regulators=3, seed=0)``), 200 rows (wild type,
the 100 single and the first 99 double knockouts), t in [0, 20], 21 save times, dopri5, rtol 1e-6,
atol 1e-8, float64, forward pass, CPU:

A. ``gn.Hill.random(net, n=1, seed=0)`` (one RACIPE parameter set) in its hand-written native
   kernel (``hill.h``) vs the same equations as a compiled symbolic model
   (``symbolic_form(model, nonnegative=True)``: the generated C of ``genenet.kinetics.codegen``
   under ``compiled.h``): time per right-hand-side evaluation (time / the RHS evaluations the
   solves counted), of the kernel call (the native solve and its arrays' marshalling, timed around
   ``genenet.native.integrate_hill_erk`` / ``genenet.native.compiled.integrate_erk``: the step loop
   and the RHS, what the goal is about) and of the whole ``gn.simulate`` call (the kernel plus
   Python's per-call work: the compiled form has 1100 scalar parameters, checked and transformed
   one by one). Goal (issue 21): within 2x.
B. ``gn.TwoStage(net)`` (100 genes' mRNA and protein, 200 species) and ``gn.Sigmoid(net)`` (100
   genes, default weights = edge signs): their native runs through the compiled form vs the torch
   loop they ran on before (``genenet.native.torch_path()``).

The first use of a network structure generates and compiles its C (about 40 s for 100 genes, then
cached on disk; a later process only rebuilds the symbolic form, 4-5 s); the timings are of later
calls (best of ``--repeat``).

    python benchmarks/compiled_models.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch
from solve_screen import machine, standard_network, versions, write_results

import genenet as gn
from genenet import native
from genenet.kinetics.symbolic import symbolic_form
from genenet.native import compiled

HERE = Path(__file__).resolve().parent
RTOL, ATOL, ROWS = 1e-6, 1e-8, 200


def conditions(net: gn.Network) -> list:
    return gn.knockout_screen(net, order=2)[:ROWS]


KERNEL = [0.0]  # seconds spent in the native explicit kernels' calls, summed (clock_kernels)


def clock_kernels() -> None:
    """Time every call of the Hill model's and compiled models' explicit kernels into KERNEL."""
    for mod, name in ((native, "integrate_hill_erk"), (compiled, "integrate_erk")):
        fn = getattr(mod, name)

        def timed(*a, _fn=fn, **k):
            start = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                KERNEL[0] += time.perf_counter() - start
        setattr(mod, name, timed)


def run(model, conds, t, repeat: int) -> tuple[float, int, torch.Tensor, float]:
    """Best of ``repeat`` calls: wall time, RHS count, trajectory, and that call's kernel time."""
    best, rhs, y, kernel = float("inf"), 0, None, float("nan")
    for _ in range(repeat):
        before = KERNEL[0]
        with torch.no_grad():
            start = time.perf_counter()
            traj = gn.simulate(model, t, perturbations=conds, rtol=RTOL, atol=ATOL, dtype=torch.float64)
            wall = time.perf_counter() - start
        if wall < best:
            best, rhs, y = wall, int(traj.stats["n_rhs"].sum()), traj.y
            kernel = KERNEL[0] - before
    return best, rhs, y, kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    net = standard_network()
    conds = conditions(net)
    t = np.linspace(0.0, 20.0, 21)

    hill = gn.Hill.random(net, n=1, seed=0)
    start = time.perf_counter()
    form = symbolic_form(hill, nonnegative=True)
    run(form, conds[:2], t, 1)  # generates and compiles the C (cached afterwards)
    first_form = time.perf_counter() - start
    run(hill, conds[:2], t, 1)
    clock_kernels()
    w_h, n_h, y_h, k_h = run(hill, conds, t, args.repeat)
    w_c, n_c, y_c, k_c = run(form, conds, t, args.repeat)
    diff_a = float((y_h - y_c).abs().max() / y_h.abs().max())

    before_after = []
    for label, model in (("TwoStage (200 species)", gn.TwoStage(net)), ("Sigmoid (100 species)", gn.Sigmoid(net))):
        start = time.perf_counter()
        run(model, conds[:2], t, 1)
        first = time.perf_counter() - start
        w_n, n_n, y_n, _ = run(model, conds, t, args.repeat)
        with native.torch_path():
            w_t, n_t, y_t, _ = run(model, conds, t, 1)
        diff = float((y_n - y_t).abs().max() / y_t.abs().max())
        before_after += [f"### {label}", "", "| path | wall (s) | RHS evaluations | speed-up |", "|---|---|---|---|",
                         f"| torch loop (before) | {w_t:.3f} | {n_t} | 1.0x |",
                         f"| native, compiled form | {w_n:.3f} | {n_n} | {w_t / w_n:.1f}x |", "",
                         f"Max difference: {diff:.1e} of the largest value. First use in this process: {first:.1f} s "
                         "(as above).", ""]

    lines = ["# Compiled models in the native kernels (issue 21)", "",
             f"- date: {dt.date.today()}; machine: {machine(torch.device('cpu'))}", f"- versions: {versions()}",
             f"- settings: standard network (100 genes, 300 edges), {ROWS} rows (wild type, single and double "
             f"knockouts), t = 0..20, 21 save times, dopri5, rtol {RTOL}, atol {ATOL}, float64, best of {args.repeat}",
             "- command: `python benchmarks/compiled_models.py`", "",
             "## A. Hill: hand-written kernel vs the compiled symbolic form", "",
             "| kernel | kernel call (s) | us per RHS evaluation of one row, kernel | ratio | whole simulate (s) "
             "| us per RHS evaluation, whole call | ratio | RHS evaluations (summed over rows) |",
             "|---|---|---|---|---|---|---|---|",
             f"| hill.h (hand-written) | {k_h:.3f} | {1e6 * k_h / n_h:.2f} | 1.00 | {w_h:.3f} | "
             f"{1e6 * w_h / n_h:.2f} | 1.00 | {n_h} |",
             f"| compiled symbolic form | {k_c:.3f} | {1e6 * k_c / n_c:.2f} | {(k_c / n_c) / (k_h / n_h):.2f} | "
             f"{w_c:.3f} | {1e6 * w_c / n_c:.2f} | {(w_c / n_c) / (w_h / n_h):.2f} | {n_c} |", "",
             f"Max difference of the trajectories: {diff_a:.1e} of the largest value. First use in this process "
             f"(the form built; its rate library generated and compiled unless the disk cache has it): "
             f"{first_form:.1f} s.", "",
             "## B. TwoStage and Sigmoid: native (compiled form) vs the torch loop", "", *before_after]
    print("\n".join(lines))
    write_results(args.out or HERE / "results" / f"compiled_models_cpu_{dt.date.today()}.md", lines)


if __name__ == "__main__":
    main()

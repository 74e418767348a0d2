"""Gradient of a sum-of-squares loss over a knockout screen: genenet vs torchdiffeq, and vs the forward solve.

Problem (issue 6): the standard network of solve_screen.py (100 genes, 300 edges, Hill.random
seed 0), t in [0, 20], 21 save times, rows = wild type + single + double knockouts (first N),
x0 = 1 (knocked-out genes 0), dopri5, float32, rtol 1e-5, atol 1e-6. Loss
L = sum over rows, times, genes of (x - 1)^2; gradient with respect to every parameter
(production, degradation per gene; threshold, hill, fold per edge; 1100 numbers).

- genenet: ``loss.backward()`` after ``gn.simulate`` with the model's parameters requiring grad.
  On the CPU the solve runs in the native kernel with a step tape, reversed in C (the discrete
  adjoint, genenet/native/kernels.c); also timed with ``GENENET_NATIVE=0`` (backpropagation
  through the batched torch loop), and its gradient compared with the native one.
- torchdiffeq: ``odeint`` (dopri5) of the same right-hand side with the same prepared
  parameters as leaf tensors, backpropagation through its steps.
Forward times: the same solve under ``torch.no_grad()``. Median of --repeats calls after a warm-up;
genenet's forward and gradient calls alternate, so that both see the same state of the machine.

N = 5051 is the whole double-knockout screen the issue names; the peers' backpropagation keeps every
step's intermediates (about 5 GB at N = 1000), so they run only up to --peers-up-to rows.

    python benchmarks/gradient_screen.py [--sizes 200 1000 5051] [--repeats 9] [--peers-up-to 1000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from solve_screen import machine, standard_network, versions, write_results

import genenet as gn

HERE = Path(__file__).resolve().parent
RTOL, ATOL = 1e-5, 1e-6


def interleaved_times(fns, repeats: int) -> list[tuple[float, object]]:
    """Median time of each function, the calls interleaved (f1, f2, f1, f2, ...) after a warm-up of
    each, so that both see the same state of a shared machine."""
    outs = [fn() for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - start)
    return [(statistics.median(ts), out) for ts, out in zip(times, outs)]


def median_time(fn, repeats: int) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def genenet_case(n: int, dtype: torch.dtype):
    net = standard_network()
    model = gn.Hill.random(net, n=1, seed=0)
    conds = gn.knockout_screen(net, order=2)[:n]
    t = np.linspace(0.0, 20.0, 21)

    def forward():
        with torch.no_grad():
            return gn.simulate(model, t, x0=1.0, perturbations=conds, rtol=RTOL, atol=ATOL, dtype=dtype).y

    def gradient():
        model.zero_grad()
        y = gn.simulate(model, t, x0=1.0, perturbations=conds, rtol=RTOL, atol=ATOL, dtype=dtype).y
        ((y - 1.0) ** 2).sum().backward()
        return torch.cat([v.grad.reshape(-1) for v in model.raw.values()]).clone()

    return forward, gradient


def torchdiffeq_case(n: int, dtype: torch.dtype):
    from solve_screen import problem
    from torchdiffeq import odeint

    model, _, x0, p, t = problem(n, torch.device("cpu"), dtype)
    leaves = {k: v.clone().requires_grad_(k in ("production", "degradation", "_c0", "_c1", "_inv_threshold",
                                                   "_hill")) for k, v in p.items()}

    def f(_, x):
        return model.rhs(None, x, leaves)

    def forward():
        with torch.no_grad():
            return odeint(f, x0, t, rtol=RTOL, atol=ATOL, method="dopri5")

    def gradient():
        for v in leaves.values():
            v.grad = None
        y = odeint(f, x0, t, rtol=RTOL, atol=ATOL, method="dopri5")
        ((y - 1.0) ** 2).sum().backward()
        return None

    return forward, gradient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 5051])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--peers-up-to", type=int, default=1000,
                    help="run the torch-loop and torchdiffeq gradients only up to this many rows (their memory)")
    args = ap.parse_args()
    dtype = torch.float32
    rows = []
    for n in args.sizes:
        fwd, grad = genenet_case(n, dtype)
        (t_fwd, _), (t_grad, g_native) = interleaved_times([fwd, grad], args.repeats)
        t_loop = diff = d_fwd = d_grad = float("nan")
        if n <= args.peers_up_to:
            os.environ["GENENET_NATIVE"] = "0"
            try:
                t_loop, g_loop = median_time(grad, 1)
            finally:
                os.environ["GENENET_NATIVE"] = "1"
            diff = float((g_native - g_loop).abs().max() / g_loop.abs().max())
            fwd_d, grad_d = torchdiffeq_case(n, dtype)
            d_fwd, _ = median_time(fwd_d, args.repeats)
            d_grad, _ = median_time(grad_d, 1)
        row = {"N": n, "genenet forward": t_fwd, "genenet gradient": t_grad, "genenet torch-loop gradient": t_loop,
               "gradient difference": diff, "torchdiffeq forward": d_fwd, "torchdiffeq gradient": d_grad}
        rows.append(row)
        print(json.dumps(row), flush=True)
    today = dt.date.today().isoformat()
    lines = [f"# Gradient of a screen loss, {today}", "", f"- machine: {machine(torch.device('cpu'))}",
             f"- versions: {json.dumps(versions())}",
             "- problem: standard network (100 genes, 300 edges, Hill.random seed 0), WT + single + double "
             "knockouts (first N rows), t in [0, 20], 21 saves, dopri5, float32, rtol 1e-5, atol 1e-6; "
             "L = sum (x - 1)^2; gradient w.r.t. all 1100 parameters",
             "- genenet gradient: native kernel with a step tape + reverse sweep in C (discrete adjoint); "
             "torch-loop gradient: the same with GENENET_NATIVE=0 (one call); 'difference': max |native - "
             "torch loop| / max |torch loop| over all 1100 gradient entries",
             f"- times: median of {args.repeats} calls after a warm-up, genenet's forward and gradient calls "
             "alternating (torch-loop and torchdiffeq gradients: one call)",
             f"- torch-loop and torchdiffeq gradients only up to N = {args.peers_up_to} (their backpropagation "
             "keeps every step's intermediates: ~5 GB at N = 1000); '-': not run",
             "- command: `python benchmarks/gradient_screen.py`", "",
             "| N | genenet forward | genenet gradient | gradient / forward | torch-loop gradient | difference "
             "| torchdiffeq forward | torchdiffeq gradient | torchdiffeq gradient / genenet gradient |",
             "|---|---|---|---|---|---|---|---|---|"]
    def ms(v: float) -> str:
        return "-" if v != v else f"{1e3 * v:.0f} ms"

    for r in rows:
        peer = r["torchdiffeq gradient"] / r["genenet gradient"]
        diff = r["gradient difference"]
        lines.append(f"| {r['N']} | {ms(r['genenet forward'])} | {ms(r['genenet gradient'])} | "
                     f"{r['genenet gradient'] / r['genenet forward']:.2f}x | {ms(r['genenet torch-loop gradient'])} | "
                     f"{'-' if diff != diff else f'{diff:.1e}'} | {ms(r['torchdiffeq forward'])} | "
                     f"{ms(r['torchdiffeq gradient'])} | {'-' if peer != peer else f'{peer:.1f}x'} |")
    out = HERE / "results" / f"gradient_cpu_{today}.md"
    write_results(out, lines)


if __name__ == "__main__":
    main()

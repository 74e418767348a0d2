"""Peak memory of a loss gradient against the length of the integration span (issue 6).

Problem: the standard network of solve_screen.py (100 genes, 300 edges, Hill.random seed 0),
wild type + the first N-1 single knockouts, data: the model's own trajectories at 21 times on
[0, span] with 2% noise (``ExpressionData.from_trajectory``), ``FitProblem`` with every Hill
parameter free (1100 numbers), dopri5, float64, rtol 1e-6, atol 1e-8; span 20, 40, 80 (the solver's
step count grows with it, the data stay 21 times). Gradient of the loss at the true parameters by:

- ``adjoint``: ``FitProblem.gradient_adjoint`` (continuous adjoint: states kept at the data times
  and at stability checkpoints, nothing per step; genenet/fit/adjoint.py);
- ``native tape``: ``FitProblem.gradient`` on the CPU (the kernel's discrete adjoint: a tape of
  S G numbers per accepted step and row; its exact size from ``genenet.native.tape_memory``);
- ``torch loop``: ``FitProblem.gradient`` with ``GENENET_NATIVE=0`` (autograd's graph of the loop).

Each case runs in a fresh process: a warm-up gradient of a 2-row problem, then the peak is reset
and the first gradient of the real problem measured: on CUDA ``torch.cuda.max_memory_allocated``;
on the CPU the peak of the heap in use (glibc ``mallinfo2``: bytes handed out by malloc, which
serves torch's CPU tensors and the native tapes) sampled every 0.5 ms during the call, minus its
value before.

    python benchmarks/adjoint_memory.py [--rows 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SPANS = (20.0, 40.0, 80.0)
METHODS = ("adjoint", "native tape", "torch loop")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use() -> int:
    """Bytes malloc has handed out and not got back, over all arenas and mmapped chunks (glibc)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


class _PeakSampler:
    """Peak of _heap_in_use during a block, sampled every 0.5 ms by a thread. (The resident set is
    no measure here: freed heap pages stay resident and are reused, and the kernel's VmHWM is only
    updated at unmap.) torch's CPU tensors and the native tapes both come from malloc."""

    def __enter__(self) -> _PeakSampler:
        self.peak, self._stop = _heap_in_use(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _heap_in_use())
            time.sleep(0.0005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _heap_in_use())


def _problem(span: float, rows: int, device: str):
    from solve_screen import standard_network

    import genenet as gn

    net = standard_network()
    model = gn.Hill.random(net, n=1, seed=0)
    conds = gn.knockout_screen(net, order=1)[:rows]
    t = np.linspace(0.0, span, 21)
    truth = gn.simulate(model, t, x0=1.0, perturbations=conds, rtol=1e-8, atol=1e-10)
    data = gn.ExpressionData.from_trajectory(truth, noise=0.02, seed=0)
    problem = gn.FitProblem(model, data, free=["production", "degradation", "threshold", "hill", "fold"],
                            conditions={c.label: c for c in conds}, x0=np.ones(net.n_genes), rtol=1e-6,
                            atol=1e-8, device=device)
    steps = gn.simulate(model, t, x0=1.0, perturbations=conds, rtol=1e-6, atol=1e-8).stats["n_accepted"]
    return problem, float(np.mean(steps))


def one_case(method: str, span: float, rows: int, device: str) -> dict:
    """Run in a child process: warm up on a 2-row problem (kernels loaded, torch initialised), then
    measure the first gradient of the real one."""
    import genenet as gn

    def grad_of(problem):
        return problem.gradient_adjoint if method == "adjoint" else problem.gradient

    small, _ = _problem(span, 2, device)
    grad_of(small)(small.theta0[None])
    problem, steps = _problem(span, rows, device)
    gn.native.release_memory()  # the measured call allocates its tapes afresh
    theta = problem.theta0[None]
    cuda = problem.device.type == "cuda"
    gn.native.tape_memory(reset_peak=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss, g = grad_of(problem)(theta)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _heap_in_use()
        with _PeakSampler() as sampler:
            start = time.perf_counter()
            loss, g = grad_of(problem)(theta)
            wall = time.perf_counter() - start
        peak = sampler.peak - base
    tape = gn.native.tape_memory()[1]
    return {"method": method, "span": span, "rows": rows, "peak_MB": peak / 2**20, "tape_MB": tape / 2**20,
            "time_s": wall, "loss": float(loss[0]), "grad_norm": float(g.norm()), "mean_steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--case", nargs=2, metavar=("METHOD", "SPAN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case[0], float(args.case[1]), args.rows, args.device)))
        return
    from solve_screen import machine, versions, write_results

    rows = []
    for method in METHODS:
        for span in SPANS:
            env = dict(os.environ, GENENET_NATIVE="0" if method == "torch loop" else "1")
            out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--device", args.device,
                                  "--case", method, str(span)], env=env, capture_output=True, text=True,
                                 cwd=HERE)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    today = dt.date.today().isoformat()
    dev = torch.device(args.device)
    lines = [f"# Peak memory of a gradient against the integration span, {today}", "",
             f"- machine: {machine(dev)}", f"- versions: {json.dumps(versions())}",
             f"- problem: standard network (100 genes, 300 edges, Hill.random seed 0), {args.rows} rows (wild type + "
             "single knockouts), 21 data times on [0, span] (2% noise), FitProblem with all 1100 Hill parameters "
             "free, dopri5, float64, rtol 1e-6, atol 1e-8; gradient of the loss at the true parameters",
             "- peak: " + ("torch.cuda.max_memory_allocated above the allocation before the call" if dev.type == "cuda"
                           else "peak heap in use (glibc mallinfo2, sampled every 0.5 ms) during the call above its "
                                "value before")
             + "; a warm-up gradient of a 2-row problem first; each case in a fresh process",
             "- command: `python benchmarks/adjoint_memory.py`", "",
             "- tape: the native kernel's step tapes at their peak (genenet.native.tape_memory), exact", "",
             "| method | span | mean accepted steps | peak memory | of which step tapes | time | loss |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['span']:g} | {r['mean_steps']:.0f} | {r['peak_MB']:.1f} MB | "
                     f"{r['tape_MB']:.1f} MB | {r['time_s']:.2f} s | {r['loss']:.6g} |")
    out = HERE / "results" / f"adjoint_memory_{dev.type}_{today}.md"
    write_results(out, lines)


if __name__ == "__main__":
    main()

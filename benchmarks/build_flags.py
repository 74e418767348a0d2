"""The native kernels' build flags: speed of each and whether their results agree bit for bit (issue 19).

Each build is made in a fresh cache (``GENENET_CACHE``) by a child process of this script with
``GENENET_NATIVE_ARCH`` set, which times three jobs on the standard problem (the 100-gene RACIPE
network of solve_screen.py, Hill.random seed 0, wild type + single + double knockouts, first N rows,
x0 = 1, t in [0, 20], 21 saves) and saves their results:

- solve: ``gn.simulate`` under no_grad, dopri5, float32 rtol 1e-5 atol 1e-6 (N = 1000) and float64
  rtol 1e-8 atol 1e-10 (N = 1000);
- gradient: sum of (x - 1)^2 over the float32 solve, backward to all 1100 parameters (native tape);
- steady: ``gn.steady_state`` of the first --steady-rows rows of the screen, float64, tol 1e-10.

Builds: ``native`` (``-march=native``, the compiler's default FMA contraction: what genenet did up to
issue 19), ``native-nofma`` (``-march=native -ffp-contract=off``), and the portable levels
``x86-64-v4``, ``x86-64-v3``, ``x86-64-v2`` and ``x86-64`` (all ``-ffp-contract=off``) that this CPU runs.
Times are medians of --repeats calls after a warm-up; the builds run in turn, --rounds times, and
each job's time is the median over the rounds (a shared machine drifts). Results are compared
bitwise with the portable default's.

    python benchmarks/build_flags.py [--rows 1000] [--steady-rows 1000] [--repeats 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def child(args: argparse.Namespace) -> None:
    """Time the jobs with the build GENENET_NATIVE_ARCH names; write times and results to args.out."""
    import torch
    from solve_screen import standard_network

    import genenet as gn
    from genenet import native

    assert native.available(torch.float64) and native.available(torch.float32), native.reason()
    lib = native._LIBS[torch.float64]
    net = standard_network()
    model = gn.Hill.random(net, n=1, seed=0)
    screen = gn.knockout_screen(net, order=2)
    conds = screen[: args.rows]
    t = np.linspace(0.0, 20.0, 21)

    def solve(dtype, rtol, atol):
        with torch.no_grad():
            return gn.simulate(model, t, x0=1.0, perturbations=conds, rtol=rtol, atol=atol, dtype=dtype).y.numpy()

    def gradient():
        model.zero_grad()
        y = gn.simulate(model, t, x0=1.0, perturbations=conds, rtol=1e-5, atol=1e-6, dtype=torch.float32).y
        ((y - 1.0) ** 2).sum().backward()
        return np.concatenate([p.grad.detach().numpy().ravel() for p in model.parameters()])

    def steady():
        ss = gn.steady_state(model, screen[: args.steady_rows], tol=1e-10, dtype=torch.float64)
        return np.concatenate([ss.x.numpy().ravel(), np.asarray(ss.converged, dtype=float)])

    jobs = {"solve float32": lambda: solve(torch.float32, 1e-5, 1e-6),
            "solve float64": lambda: solve(torch.float64, 1e-8, 1e-10), "gradient float32": gradient,
            "steady float64": steady}
    times, results = {}, {}
    for name, fn in jobs.items():
        results[name] = fn()  # warm-up (and the result)
        ts = []
        for _ in range(args.repeats if not name.startswith("steady") else max(1, args.repeats // 2)):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
        times[name] = statistics.median(ts)
    np.savez(args.out, **{k.replace(" ", "_"): v for k, v in results.items()})
    Path(args.out + ".json").write_text(json.dumps({"times": times, "isa": lib.genenet_isa().decode()}))


def compiler_version(cc: str) -> str:
    return subprocess.run([*cc.split(), "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--steady-rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(HERE))
    import torch
    from solve_screen import machine, versions, write_results

    from genenet.native import build

    levels = build.cpu_isa_levels()
    names = ["native", "native-nofma",
             *[lv for lv in ("x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64") if lv in levels]]
    default = levels[0]
    work = Path(tempfile.mkdtemp(prefix="genenet-flags-"))
    times: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    outs: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for name in names:
            env = dict(os.environ, GENENET_CACHE=str(work / name), PYTHONPATH=str(HERE))
            if name == "native-nofma":  # -march=native without contraction: a -march value of its own
                env["GENENET_NATIVE_ARCH"], env["GENENET_EXTRA_CFLAGS"] = "native", "-ffp-contract=off"
            else:
                env["GENENET_NATIVE_ARCH"] = name
            out = str(work / f"{name}-{rnd}")
            cmd = [sys.executable, __file__, "--child", "--out", out, "--rows", str(args.rows), "--steady-rows",
                   str(args.steady_rows), "--repeats", str(args.repeats)]
            print(f"round {rnd + 1}: {name}", flush=True)
            subprocess.run(cmd, env=env, check=True)
            info = json.loads(Path(out + ".json").read_text())
            for job, sec in info["times"].items():
                times[name].setdefault(job, []).append(sec)
            outs[name] = dict(np.load(out + ".npz"))
    jobs = list(times[names[0]])
    ref = outs[default]
    lines = [f"# Native kernel build flags, {dt.date.today().isoformat()}", "",
             f"- machine: {machine(torch.device('cpu'))}", f"- versions: {versions()}",
             f"- compiler: {build.compiler()} ({compiler_version(build.compiler())})",
             f"- settings: standard problem (100 genes, 300 edges), first {args.rows} screen rows for solve and "
             f"gradient, first {args.steady_rows} for steady states; median of {args.repeats} calls after a warm-up "
             f"(steady: {max(1, args.repeats // 2)}), median over {args.rounds} rounds of all builds in turn",
             f"- portable default on this CPU: `{default}` with `-ffp-contract=off`", "",
             "| build | " + " | ".join(jobs) + " |", "|---|" + "---|" * len(jobs)]
    for name in names:
        cells = []
        for job in jobs:
            sec = statistics.median(times[name][job])
            rel = sec / statistics.median(times[default][job])
            cells.append(f"{sec * 1e3:.0f} ms ({rel:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"(x = time / the portable default's, `{default}`)", "",
              f"Results against the portable default (`{default}`): max |difference| / max |value| per job "
              "(0 = bitwise equal)", "", "| build | " + " | ".join(jobs) + " |", "|---|" + "---|" * len(jobs)]
    for name in names:
        cells = []
        for job in jobs:
            a, b = ref[job.replace(" ", "_")], outs[name][job.replace(" ", "_")]
            if np.array_equal(a, b, equal_nan=True):
                cells.append("bitwise equal")
            else:
                d = np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(a))
                cells.append(f"{d:.1e} ({np.mean(a != b) * 100:.0f}% of values differ)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    path = HERE / "results" / f"build_flags_cpu_{dt.date.today().isoformat()}.md"
    write_results(path, lines)


if __name__ == "__main__":
    main()

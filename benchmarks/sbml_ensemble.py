"""SBML models from BioModels: an ensemble of parameter sets, genenet vs libroadrunner, torch loop, torchdiffeq.

Problem (issue 21): a BioModels file read by ``gn.read_sbml``, 1000 parameter sets (every
parameter of the model times an independent log-uniform factor in [1/1.25, 1.25], seed 0), each
simulated from the model's initial state over ``--t-end`` with ``--points`` save times, rtol 1e-6,
atol 1e-9, float64 on the CPU:

- genenet native: one ``gn.simulate`` call of all rows (the model compiled to C, each row's whole
  step loop in the kernel, OpenMP over rows), bdf (variable-order BDF, CVODE's family), dopri5,
  rodas5 and auto (dopri5 switching to rodas5 where a row turns stiff); failed rows (max_steps) are
  counted, their NaNs left out of the errors;
- libroadrunner: its usual use, a loop of ``reset`` + set the parameters + ``simulate`` per set
  (CVODE, same rtol/atol);
- genenet's torch loop (``genenet.native.torch_path()``) and torchdiffeq (dopri5 over the rows as
  one system, the model's torch right-hand side): timed on the first ``--slow-rows`` sets and scaled
  to 1000. Their cost is mostly per step rather than per row, so scaling a few sets up overstates
  it: use at least 10 sets for numbers to quote.

Errors: max over the first 10 sets, times and species of |x - x_ref| / max_t |x_ref| (per species),
the reference libroadrunner at rtol 1e-12, atol 1e-14. Single-run latency: one set, median of 20
calls (``gn.simulate`` of one row vs roadrunner's reset + simulate).

Work-precision: the same tolerance is not the same accuracy (a BDF method, CVODE's or genenet's,
at rtol 1e-6 lands farther from the reference than a Rosenbrock or Runge-Kutta method does), so the
first ``--wp-rows`` sets are also run by libroadrunner and genenet native bdf/rodas5/dopri5 at rtol
1e-4, 1e-6, 1e-8 (atol = rtol / 1000), time and error side by side.

    python benchmarks/sbml_ensemble.py [--model BIOMD0000000012] [--t-end 1000] [--points 1001] [--repeat 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch
from solve_screen import machine, versions, write_results

import genenet as gn
from genenet import native

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data"
SHARED = HERE.parent.parent / "shared" / "data" / "biomodels"
RTOL, ATOL, ROWS = 1e-6, 1e-9, 1000


def model_path(name: str) -> Path:
    for root in (DATA, SHARED):
        if (root / f"{name}.xml").exists():
            return root / f"{name}.xml"
    raise FileNotFoundError(f"{name}.xml in neither {DATA} nor {SHARED}")


def parameter_sets(model, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = {k: float(v.detach().reshape(-1)[0]) for k, v in model.params.items() if k in model.param_names}
    return {k: v * np.exp(rng.uniform(-np.log(1.25), np.log(1.25), rows)) for k, v in base.items()}


def roadrunner_loop(path: Path, sets: dict, rows: int, t: np.ndarray, species: list[str], rtol: float,
                    atol: float) -> tuple[float, np.ndarray, int]:
    """Wall time, the trajectories (NaN for a row CVODE gave up on) and how many rows failed."""
    import roadrunner

    rr = roadrunner.RoadRunner(str(path))
    rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = rtol, atol
    rr.timeCourseSelections = ["time", *[f"[{s}]" for s in species]]
    out = np.full((rows, len(t), len(species)), np.nan)
    failed = 0
    start = time.perf_counter()
    for b in range(rows):
        rr.reset()
        for k, v in sets.items():
            rr[k] = v[b]
        try:
            res = rr.simulate(float(t[0]), float(t[-1]), len(t))
        except RuntimeError:  # CVODE's convergence failures: a row like genenet's failed ones
            failed += 1
            continue
        out[b] = np.asarray(res)[:, 1:]
    return time.perf_counter() - start, out, failed


def genenet_run(model, sets: dict, rows: int, t: np.ndarray, method: str, rtol: float = RTOL, atol: float = ATOL
                ) -> tuple[float, np.ndarray, int]:
    params = {k: torch.as_tensor(v[:rows])[:, None] for k, v in sets.items()}
    with torch.no_grad():
        start = time.perf_counter()
        traj = gn.simulate(model, t, params=params, method=method, rtol=rtol, atol=atol, max_steps=200_000,
                           throw=False)
        wall = time.perf_counter() - start
    return wall, traj.y.numpy(), int((traj.status != 0).sum())


def torchdiffeq_run(model, sets: dict, rows: int, t: np.ndarray) -> tuple[float, np.ndarray]:
    from torchdiffeq import odeint

    p = model.row_params(None, rows, device=torch.device("cpu"), dtype=torch.float64,
                         overrides={k: torch.as_tensor(v[:rows])[:, None] for k, v in sets.items()})
    x0 = model.default_x0(rows, device=torch.device("cpu"), dtype=torch.float64)
    tt = torch.as_tensor(t)
    with torch.no_grad():
        start = time.perf_counter()
        y = odeint(lambda s, x: model.rhs(s.expand(rows), x, p), x0, tt, rtol=RTOL, atol=ATOL, method="dopri5")
        wall = time.perf_counter() - start
    return wall, y.transpose(0, 1).numpy()


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    ref = ref[:len(y)]  # the slow tools may have timed fewer than 10 sets
    scale = np.abs(ref).max(axis=1, keepdims=True)
    ok = np.isfinite(y).all(axis=(1, 2))  # failed rows are counted apart
    return float((np.abs(y[ok] - ref[ok]) / np.maximum(scale[ok], 1e-300)).max()) if ok.any() else float("nan")


def latency(fn, n: int = 20) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="BIOMD0000000012")
    ap.add_argument("--t-end", type=float, default=1000.0)
    ap.add_argument("--points", type=int, default=1001)
    ap.add_argument("--slow-rows", type=int, default=100)
    ap.add_argument("--wp-rows", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2, help="ensemble timings: best of this many runs per tool")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    path = model_path(args.model)
    model = gn.read_sbml(path)
    species = list(model.genes)
    t = np.linspace(0.0, args.t_end, args.points)
    sets = parameter_sets(model, ROWS)
    vals = {k: v[:1] for k, v in sets.items()}
    # first use compiles the model's rates (not timed; cached on disk afterwards)
    genenet_run(model, vals, 1, t, "dopri5")
    results = {}
    print("roadrunner reference (rtol 1e-12) ...")
    _, ref, _ = roadrunner_loop(path, sets, 10, t, species, 1e-12, 1e-14)
    # the ensemble timings: best of --repeat runs, each tool alike (shared machines are noisy)
    wall = min(roadrunner_loop(path, sets, ROWS, t, species, RTOL, ATOL)[0] for _ in range(args.repeat - 1)) \
        if args.repeat > 1 else float("inf")
    last, y, failed = roadrunner_loop(path, sets, ROWS, t, species, RTOL, ATOL)
    results["libroadrunner loop (CVODE)"] = (min(wall, last), rel_error(y[:10], ref), failed, ROWS)
    for method in ("bdf", "dopri5", "rodas5", "auto"):
        runs = [genenet_run(model, sets, ROWS, t, method) for _ in range(args.repeat)]
        wall, (_, y, failed) = min(r[0] for r in runs), runs[-1]
        results[f"genenet native {method}"] = (wall, rel_error(y[:10], ref), failed, ROWS)
    n = args.slow_rows
    with native.torch_path():
        wall, y, failed = genenet_run(model, sets, n, t, "dopri5")
    results["genenet torch loop dopri5"] = (wall * ROWS / n, rel_error(y[:10], ref), failed, n)
    try:
        wall, y = torchdiffeq_run(model, sets, n, t)
        results["torchdiffeq dopri5"] = (wall * ROWS / n, rel_error(y[:10], ref), 0, n)
    except ImportError:
        print("torchdiffeq not installed: skipped")
    import roadrunner

    rr = roadrunner.RoadRunner(str(path))
    rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = RTOL, ATOL

    def rr_one() -> None:
        rr.reset()
        rr.simulate(float(t[0]), float(t[-1]), len(t))

    single = {"libroadrunner reset + simulate": latency(rr_one),
              "genenet simulate, native bdf": latency(lambda: genenet_run(model, vals, 1, t, "bdf")),
              "genenet simulate, native dopri5": latency(lambda: genenet_run(model, vals, 1, t, "dopri5")),
              "genenet simulate, native rodas5": latency(lambda: genenet_run(model, vals, 1, t, "rodas5"))}
    wp = []
    for rtol in (1e-4, 1e-6, 1e-8):
        row = [f"{rtol:g}"]
        wall, y, failed = roadrunner_loop(path, sets, args.wp_rows, t, species, rtol, rtol * 1e-3)
        row += [f"{wall:.2f}", f"{rel_error(y[:10], ref):.1e}" + (f" ({failed} failed)" if failed else "")]
        for method in ("bdf", "rodas5", "dopri5"):
            wall, y, failed = genenet_run(model, sets, args.wp_rows, t, method, rtol, rtol * 1e-3)
            row += [f"{wall:.2f}", f"{rel_error(y[:10], ref):.1e}" + (f" ({failed} failed)" if failed else "")]
        wp.append("| " + " | ".join(row) + " |")
    rr_wall = results["libroadrunner loop (CVODE)"][0]
    lines = [f"# SBML ensemble: {args.model} ({len(species)} species, {len(model.reactions)} reactions), "
             f"{ROWS} parameter sets", "",
             f"- date: {dt.date.today()}; machine: {machine(torch.device('cpu'))}",
             f"- versions: {versions()}, libroadrunner {roadrunner.__version__}",
             f"- settings: t = 0..{args.t_end:g}, {args.points} save times, rtol {RTOL}, atol {ATOL}, float64; "
             f"ensemble times best of {args.repeat} runs per tool; "
             "parameters x log-uniform [1/1.25, 1.25] (seed 0); torch loop and torchdiffeq timed on "
             f"{n} sets and scaled to {ROWS}", "- command: `python benchmarks/sbml_ensemble.py --model "
             f"{args.model} --t-end {args.t_end:g} --points {args.points}`", "",
             "| tool | time for 1000 sets (s) | vs roadrunner | max rel. error (first 10 sets timed) | failed rows "
             "| rows timed |",
             "|---|---|---|---|---|---|"]
    for name, (wall, err, failed, rows) in results.items():
        lines.append(f"| {name} | {wall:.3f} | {rr_wall / wall:.2f}x | {err:.1e} | {failed} | {rows} |")
    lines += ["", "Single run (one parameter set, median of 20 calls):", "", "| call | seconds | vs roadrunner |",
              "|---|---|---|"]
    for name, sec in single.items():
        lines.append(f"| {name} | {sec * 1e3:.2f} ms | {single['libroadrunner reset + simulate'] / sec:.2f}x |")
    lines += ["", f"Work-precision ({args.wp_rows} sets, atol = rtol / 1000; time in s, max rel. error of the "
              "first 10 sets):", "",
              "| rtol | roadrunner time | roadrunner error | bdf time | bdf error | rodas5 time | rodas5 error "
              "| dopri5 time | dopri5 error |",
              "|---|---|---|---|---|---|---|---|---|", *wp]
    print("\n".join(lines))
    out = args.out or HERE / "results" / f"sbml_{args.model}_cpu_{dt.date.today()}.md"
    write_results(out, lines)


if __name__ == "__main__":
    main()

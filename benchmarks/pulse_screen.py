"""A drug pulse over an ensemble: genenet's native kernels (one regime per call, chained at the
switching times) vs genenet's torch loop vs torchdiffeq, side by side.

Problem: the standard 100-gene RACIPE network (`gn.Network.random(100, regulators=3, seed=0)`),
N parameter sets (`gn.Hill.random(net, n=N, seed=0)`), two conditions per set: untreated and a
drug pulse `gn.Pulse(gn.Knockdown(gene 0, 0.9), 5, 10)` (its production x 0.1 for 5 <= t < 10);
x0 = 1, t in [0, 20], 41 save times, dopri5 at rtol 1e-6, atol 1e-8, float64, forward only.
torchdiffeq integrates the same right-hand side (genenet's Hill kinetics with the pulse as a
function of t) with its dopri5, told the switching times (`jump_t`). Errors: max relative error
(|err| / max(|ref|, 1e-3)) against scipy's DOP853 at rtol 1e-12 on the first 20 rows, solved
piecewise between the switching times. Times: median of --repeats calls after one warm-up.

    python benchmarks/pulse_screen.py                 # N = 100 (200 rows), 500 (1000 rows)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from solve_screen import machine, timeit, versions, write_results

import genenet as gn

HERE = Path(__file__).resolve().parent
ON, OFF, FRACTION = 5.0, 10.0, 0.9


def problem(n_sets: int):
    net = gn.Network.random(100, regulators=3, seed=0)
    model = gn.Hill.random(net, n=n_sets, seed=0)
    conds = [gn.Condition([]), gn.Pulse(gn.Knockdown(net.genes[0], FRACTION), ON, OFF)]
    t = torch.linspace(0.0, 20.0, 41, dtype=torch.float64)
    return model, conds, t


def run_genenet(model, conds, t, native: bool):
    os.environ["GENENET_NATIVE"] = "1" if native else "0"
    try:
        return gn.simulate(model, t, x0=1.0, perturbations=conds, method="dopri5", rtol=1e-6, atol=1e-8).y
    finally:
        os.environ.pop("GENENET_NATIVE", None)


def _rows(model, conds, t):
    """Per-row prepared parameters, x0 and the pulse mask in genenet's row order (condition-major)."""
    B = len(conds) * model.n_sets
    sets = torch.arange(B) % model.n_sets
    p = model.row_params(sets, B, device=torch.device("cpu"), dtype=torch.float64)
    p = {k: v.detach().contiguous() for k, v in model.prepare(p).items()}
    treated = torch.zeros(B, dtype=torch.bool)
    treated[model.n_sets:] = True  # rows: all sets untreated, then all sets pulsed
    return p, torch.ones(B, model.n_genes, dtype=torch.float64), treated


def _pulsed_rhs(model, p, treated):
    def f(t, x):
        v = model.production(t, x, p)
        on = treated & (ON <= float(t)) & (float(t) < OFF)
        v = v.clone()
        v[on, 0] *= 1 - FRACTION
        return v - model.degradation(t, x, p)
    return f


def run_torchdiffeq(model, conds, t):
    from torchdiffeq import odeint

    p, x0, treated = _rows(model, conds, t)
    f = _pulsed_rhs(model, p, treated)
    return odeint(f, x0, t, rtol=1e-6, atol=1e-8, method="dopri5",
                  options={"jump_t": torch.tensor([ON, OFF], dtype=torch.float64)}).transpose(0, 1)


def reference(model, conds, t, rows: np.ndarray) -> np.ndarray:
    p, x0, treated = _rows(model, conds, t)
    p = {k: v[rows] if v.shape[0] == x0.shape[0] else v for k, v in p.items()}
    x, treated = x0[rows], treated[rows]
    B, G = x.shape
    f = _pulsed_rhs(model, p, treated)
    out, ts = [], t.numpy()
    y = x.numpy().ravel()
    for a, b in ((0.0, ON), (ON, OFF), (OFF, 20.0)):
        mid = 0.5 * (a + b)  # the regime of the piece: evaluate the pulse at its midpoint
        keep = ts[(ts >= a) & (ts < b)]
        sol = solve_ivp(lambda s, z, mid=mid: f(torch.tensor(mid), torch.from_numpy(z).view(B, G)).numpy().ravel(),
                        (a, b), y, method="DOP853", rtol=1e-12, atol=1e-12, t_eval=np.append(keep, b))
        out.append(sol.y[:, :len(keep)])
        y = sol.y[:, -1]
    out.append(y[:, None])  # t = 20
    return np.concatenate(out, axis=1).reshape(B, G, -1).transpose(0, 2, 1)


def max_rel_error(y: torch.Tensor, ref: np.ndarray, rows: np.ndarray) -> float:
    got = y.detach().numpy()[rows]
    return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-3)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    lines = [f"# Drug pulse over an ensemble, CPU, {dt.date.today()}", "",
             f"Machine: {machine(torch.device('cpu'))}; versions: {versions()}", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "| rows | tool | time (s) | vs genenet native | max rel. error |", "|---|---|---|---|---|"]
    for n in args.sets:
        model, conds, t = problem(n)
        rows = np.arange(0, 2 * n, max(1, 2 * n // 20))[:20]
        ref = reference(model, conds, t, rows)
        results = {}
        for name, fn in (("genenet native (pieces)", partial(run_genenet, model, conds, t, True)),
                         ("genenet torch loop", partial(run_genenet, model, conds, t, False)),
                         ("torchdiffeq dopri5", partial(run_torchdiffeq, model, conds, t))):
            sec, y = timeit(fn, args.repeats if "torch loop" not in name else 1, torch.device("cpu"))
            results[name] = (sec, max_rel_error(y, ref, rows))
            print(f"{2 * n} rows {name}: {sec:.3f} s, error {results[name][1]:.2e}", flush=True)
        base = results["genenet native (pieces)"][0]
        for name, (sec, err) in results.items():
            lines.append(f"| {2 * n} | {name} | {sec:.3f} | {sec / base:.1f}x | {err:.1e} |")
    out = args.out or HERE / "results" / f"pulse_screen_cpu_{dt.date.today()}.md"
    write_results(out, lines)


if __name__ == "__main__":
    main()

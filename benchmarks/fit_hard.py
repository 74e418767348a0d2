"""Fits beyond the easy case (issue 20): every genenet method and its peers from the same start.

Problem "30": a 10-gene Hill network (``gn.Network.random(10, 2, seed=3, self_loops=False)``, 20
edges), parameters ``gn.Hill.random(net, n=1, seed=5)``; data: its wild type + 10 single knockouts
at t = 0, 1, ..., 10 with 2% multiplicative noise (``ExpressionData.from_trajectory(noise=0.02,
seed=0)``, sd = 2% of the value); 30 free parameters (production, threshold), started at each true
value x exp(N(0, 0.4)) (numpy default_rng(--start-seed)). float64, dopri5 rtol 1e-8 atol 1e-10.

Problem "700" (``--problem 700``): the standard 100-gene RACIPE network (``gn.Network.random(100, 3,
seed=0)``, 300 edges, ``gn.Hill.random(net, n=1, seed=0)``), its wild type + 100 single knockouts at
t = 0, 1, ..., 20 (101 x 21 x 100 = 212 100 measurements, 2% noise as above), 700 free parameters
(production, threshold, hill), started as above.

Methods, all from that start, each timed alone (with ``--budget`` seconds each: ``max_time``):

- genenet ``lm``, ``trust-ncg`` with ``hessian="exact"`` and ``"gauss-newton"``, ``lbfgs``, ``adam``
  (``gn.fit``, max_iter as given);
- scipy ``least_squares(method="trf", x_scale="jac")`` on genenet's residuals with genenet's exact
  Jacobian (forward sensitivities), and with a finite-difference Jacobian ("2-point");
- torch Adam (lr 0.05) on torchdiffeq's ``odeint`` (dopri5, same tolerances) of the same equations,
  the loss summed over the conditions, log-parameters: what a deep-learning user writes.

Reported per method: time to reach within 1% of the best loss any method found, final loss,
iterations, whether genenet/scipy call it converged. genenet's ``converged`` is its own
first-order test; scipy's is ``success``. Loss against wall time of all methods in one figure.
``--multistart 32``: the batched multistart of lm and lbfgs (32 starts: the start above and a Latin
hypercube, seed 0) against 32 single-start runs of the same starts: the fraction of starts reaching
the best loss and the wall time.

    python benchmarks/fit_hard.py [--max-iter 200] [--adam-iter 500] [--tde-iter 500] [--multistart 32]
    python benchmarks/fit_hard.py --problem 700 --budget 600 --multistart 0
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from solve_screen import machine, versions, write_results  # noqa: E402

import genenet as gn  # noqa: E402
from genenet.fit import FitProblem  # noqa: E402
from genenet.fit.api import latin_hypercube_starts  # noqa: E402

FREE = ["production", "threshold"]
PROBLEMS = {"30": dict(genes=10, regulators=2, net_seed=3, self_loops=False, param_seed=5, t_end=10,
                       free=["production", "threshold"]),
            "700": dict(genes=100, regulators=3, net_seed=0, self_loops=True, param_seed=0, t_end=20,
                        free=["production", "threshold", "hill"])}


def knockout_problem(name: str, start_seed: int):
    """The network, true model, start model, data and screen of problem ``name`` (see the module doc)."""
    spec = PROBLEMS[name]
    net = gn.Network.random(spec["genes"], spec["regulators"], seed=spec["net_seed"], self_loops=spec["self_loops"])
    true = gn.Hill.random(net, n=1, seed=spec["param_seed"])
    screen = gn.knockout_screen(net, order=1)
    traj = gn.simulate(true, np.linspace(0, spec["t_end"], spec["t_end"] + 1), perturbations=screen)
    data = gn.ExpressionData.from_trajectory(traj, noise=0.02, seed=0)
    start = gn.Hill(net, **{k: v.detach()[0].numpy() for k, v in true.params.items()})
    rng = np.random.default_rng(start_seed)
    start.set_params(**{k: start.params[k].detach()[0].numpy() * np.exp(rng.normal(0, 0.4, start.params[k].shape[1]))
                        for k in spec["free"]})
    return net, true, start, data, screen


def problem_30(start_seed: int):
    return knockout_problem("30", start_seed)


class Trace:
    """(wall time, loss) of every evaluation of a peer, best so far."""

    def __init__(self):
        self.t0, self.times, self.losses = time.perf_counter(), [], []

    def add(self, loss: float) -> None:
        self.times.append(time.perf_counter() - self.t0)
        self.losses.append(min(loss, self.losses[-1]) if self.losses else loss)


def run_genenet(start, data, method, max_iter, free=FREE, hessian="exact", budget=None):
    t0 = time.perf_counter()
    res = gn.fit(start, data, free=free, method=method, max_iter=max_iter, progress=False, hessian=hessian,
                 max_time=budget)
    wall = time.perf_counter() - t0
    times = res.history_times if res.history_times is not None else np.linspace(0, wall, len(res.history))
    name = f"genenet {method}" + (f" ({hessian})" if method == "trust-ncg" else "")
    return dict(method=name, wall=wall, loss=res.loss, iterations=int(res.starts.iterations[0]),
                converged=res.converged, note=res.reason, times=np.asarray(times), losses=np.asarray(res.history))


class OutOfTime(Exception):
    pass


def run_scipy(prob: FitProblem, jac: str, budget=None):
    from scipy.optimize import least_squares

    trace = Trace()
    th0 = prob.theta0.numpy()

    def fun(x):
        if budget is not None and time.perf_counter() - trace.t0 > budget:
            raise OutOfTime
        with torch.no_grad():
            r = prob.residuals(torch.as_tensor(x)[None])[0].numpy()
        r = np.nan_to_num(r, nan=1e6)
        trace.add(0.5 * float(r @ r))
        return r

    def exact(x):
        with torch.no_grad():
            return np.nan_to_num(prob.jacobian(torch.as_tensor(x)[None])[1][0].numpy())

    t0 = time.perf_counter()
    try:
        sol = least_squares(fun, th0, jac=exact if jac == "exact" else "2-point", method="trf", x_scale="jac",
                            ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=3000)
        loss, iters, ok, note = float(sol.cost), int(sol.njev or 0), bool(sol.success), sol.message
    except OutOfTime:
        loss, iters, ok, note = min(trace.losses), -1, False, f"stopped at the {budget:.0f} s budget"
    wall = time.perf_counter() - t0
    return dict(method=f"scipy trf ({jac} Jacobian)", wall=wall, loss=loss, iterations=iters,
                converged=ok, note=note, times=np.asarray(trace.times), losses=np.asarray(trace.losses))


def run_torchdiffeq_adam(net, start, data, screen, iters: int, free=FREE, budget=None):
    """Adam on the log-parameters through torchdiffeq's odeint of the Hill equations (one batch of
    all conditions), the residuals as genenet's (r = (y - value) / sd)."""
    from torchdiffeq import odeint

    prob = FitProblem(start, data, free=free)
    model = gn.Hill(net, **{k: v.detach()[0].numpy() for k, v in start.params.items()})
    t = torch.as_tensor(prob.times)
    C = len(prob.labels)
    x0 = prob.x0_fixed.clone()
    mult = torch.ones(C, net.n_genes, dtype=torch.float64)  # knockouts: production x 0
    for c, cond in enumerate(prob.conditions):
        for p in cond.perturbations:
            for g in p.genes:
                mult[c, net.index(g)] = 0.0
    logp = {k: torch.log(model.params[k].detach()[0]).clone().requires_grad_(True) for k in free}
    opt = torch.optim.Adam(list(logp.values()), lr=0.05)
    trace = Trace()

    def prepared():  # genenet's Hill equations (Model.rhs), the knockouts as production x 0
        over = {k: torch.exp(v)[None].expand(C, -1) for k, v in logp.items()}
        over["production"] = over.get("production", model.params["production"].detach()) * mult
        return model.prepare(model.row_params(None, C, device=torch.device("cpu"), dtype=torch.float64,
                                              overrides=over))

    ci, ti, gi = prob.cond_idx, prob.time_idx, prob.gene_idx
    t0 = time.perf_counter()
    loss_val = float("nan")
    done = 0
    for _ in range(iters):
        if budget is not None and time.perf_counter() - t0 > budget:
            break
        done += 1
        opt.zero_grad()
        if not all(bool(torch.isfinite(v).all()) for v in logp.values()):
            break  # a non-finite gradient sent Adam's parameters to NaN: stop and say so
        p = prepared()
        y = odeint(lambda _, x, p=p: model.rhs(None, x, p), x0, t, method="dopri5", rtol=prob.rtol,
                   atol=prob.atol).permute(1, 0, 2)  # (C, T, G)
        r = (y[ci, ti, gi] - prob.values) / prob.sd
        loss = 0.5 * (r * r).sum()
        loss.backward()
        opt.step()
        loss_val = float(loss.detach())
        trace.add(loss_val)
    wall = time.perf_counter() - t0
    finite = all(bool(torch.isfinite(v).all()) for v in logp.values())
    note = ("parameters went NaN (a non-finite gradient) at iteration " + str(done) if not finite
            else "fixed iterations" if done == iters else f"stopped at the {budget:.0f} s budget")
    return dict(method="torch Adam on torchdiffeq odeint", wall=wall, loss=min(trace.losses), iterations=done,
                converged=False, note=note, times=np.asarray(trace.times),
                losses=np.asarray(trace.losses))


def derivative_costs(prob: FitProblem, torch_hvp: bool) -> list[str]:
    """Wall time of one loss, gradient, Hessian-vector product (exact; Gauss-Newton) and residual Jacobian
    at the start, as the optimizers use them (the products once the solve's graph is kept)."""
    from genenet import native

    fit_opt = sys.modules["genenet.fit.optimizers"]
    th = prob.theta0[None]
    v = torch.as_tensor(np.random.default_rng(0).normal(size=th.shape))

    def timed(fn, repeat, warm=True):
        if warm:
            fn()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) / repeat

    rep = 10 if prob.n < 100 else 1
    with torch.no_grad():
        t_loss = timed(lambda: prob.loss(th), rep)
    t_grad = timed(lambda: prob.gradient(th), rep)
    rows = [("loss (one solve of the screen)", t_loss), ("gradient (solve + native adjoint)", t_grad)]
    for hessian in ("exact", "gauss-newton"):
        t_setup = timed(lambda h=hessian: fit_opt._second_order_model(prob, th, h), rep)
        _, _, product, _ = fit_opt._second_order_model(prob, th, hessian)
        rows += [(f"{hessian}: loss, gradient and kept graph", t_setup),
                 (f"{hessian}: one Hessian-vector product on the kept graph", timed(lambda p=product: p(v), rep))]
    k = fit_opt.SCALE_PROBES
    rows.append((f"gauss-newton: the same with the scaling estimate ({k} random VJPs)",
                 timed(lambda: fit_opt._second_order_model(prob, th, "gauss-newton", k), rep)))
    with torch.no_grad():
        rows.append((f"residual Jacobian (forward sensitivities, {prob.n} tangents)",
                     timed(lambda: prob.jacobian(th), 1 if prob.n > 100 else rep, warm=prob.n <= 100)))
    if torch_hvp:
        with native.torch_path():
            rows.append(("exact Hessian-vector product on the torch loop (double backward)",
                         timed(lambda: prob.hvp(th, v), 1)))
    return ["| derivative | wall time | x gradient |", "|---|---|---|"] + [
        f"| {name} | {t * 1e3:.1f} ms | {t / t_grad:.2f} |" for name, t in rows]


def time_to(row, target):
    hit = np.nonzero(row["losses"] <= target)[0]
    return row["times"][hit[0]] if len(hit) else float("nan")


# trust-ncg with the exact Hessian is left out here: its Hessian-vector products are per-row work in C,
# so 32 starts cost about 32 starts' time batched or not (8 starts: 252 s batched, 299 s alone)
MULTISTART = (("lm", "exact"), ("trust-ncg", "gauss-newton"), ("lbfgs", "exact"))


def multistart(start, data, n, max_iter, free=FREE, methods=MULTISTART):
    out = []
    for method, hessian in methods:
        t0 = time.perf_counter()
        batched = gn.fit(start, data, free=free, method=method, multistart=n, seed=0, max_iter=max_iter,
                         progress=False, hessian=hessian)
        t_batched = time.perf_counter() - t0
        theta = latin_hypercube_starts(batched.problem, n, seed=0)
        t0 = time.perf_counter()
        singles = [gn.fit(start, data, free=free, method=method, starts=theta[i:i + 1], max_iter=max_iter,
                          progress=False, hessian=hessian).loss for i in range(n)]
        t_single = time.perf_counter() - t0
        name = method + (f" ({hessian})" if method == "trust-ncg" else "")
        out.append((name, batched, t_batched, np.asarray(singles), t_single))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="30")
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--adam-iter", type=int, default=500)
    parser.add_argument("--tde-iter", type=int, default=300)
    parser.add_argument("--budget", type=float, default=None, help="seconds per method (max_time)")
    parser.add_argument("--multistart", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[])
    parser.add_argument("--costs-only", action="store_true", help="only the derivative costs table")
    parser.add_argument("--multistart-only", nargs="*", default=None,
                        help="only the multistart of these methods (lm, trust-ncg-gauss-newton, lbfgs)")
    args = parser.parse_args()
    name, budget = args.problem, args.budget
    free = PROBLEMS[name]["free"]
    net, true, start, data, screen = knockout_problem(name, args.start_seed)
    warm = FitProblem(start, data, free=free)
    warm.gradient(warm.theta0[None])  # warm-up: kernels built, first-call costs paid
    if args.multistart_only is not None:
        day = dt.date.today().isoformat()
        chosen = [(m, h) for m, h in MULTISTART
                  if (m if m != "trust-ncg" else f"trust-ncg-{h}") in (args.multistart_only or ["lm"])]
        lines = [f"# Multistart, fit problem {name} (issue 20), {day}", "",
                 f"- machine: {machine(torch.device('cpu'))}", f"- versions: {versions()}",
                 f"- problem {name} of `benchmarks/fit_hard.py`; {args.multistart} starts (its start + a Latin "
                 f"hypercube, seed 0), max_iter {args.max_iter}; float64, dopri5 rtol 1e-8",
                 f"- command: `python benchmarks/fit_hard.py {' '.join(sys.argv[1:])}`", "",
                 "| method | starts within 1% of the best | batched wall time | "
                 f"{args.multistart} single-start runs | speed-up |", "|---|---|---|---|---|"]
        for method, batched, t_b, singles, t_s in multistart(start, data, args.multistart, args.max_iter, free,
                                                             chosen):
            b = min(batched.loss, singles.min())
            frac = int((batched.starts.final_loss <= b * 1.01).sum())
            lines.append(f"| genenet {method} | {frac}/{args.multistart} (best {b:.6g}) | {t_b:.2f} s | {t_s:.2f} s | "
                         f"{t_s / t_b:.1f}x |")
        write_results(HERE / "results" / f"fit_hard_multistart_{name}_cpu_{day}.md", lines)
        return
    costs = derivative_costs(FitProblem(start, data, free=free), torch_hvp=name == "30")
    if args.costs_only:
        write_results(HERE / "results" / f"fit_hard_costs_{name}_cpu_{dt.date.today().isoformat()}.md",
                      [f"# Derivative costs, fit problem {name} (issue 20), {dt.date.today().isoformat()}", "",
                       f"- machine: {machine(torch.device('cpu'))}", f"- versions: {versions()}",
                       f"- problem {name} of `benchmarks/fit_hard.py`, at its start; float64, dopri5 rtol 1e-8", "",
                       *costs])
        return
    rows = []
    for method, hessian, iters in (("lm", "exact", args.max_iter), ("trust-ncg", "exact", args.max_iter),
                                   ("trust-ncg", "gauss-newton", args.max_iter), ("lbfgs", "exact", args.max_iter),
                                   ("adam", "exact", args.adam_iter)):
        label = method if method != "trust-ncg" else f"trust-ncg-{hessian}"
        if label in args.skip or method in args.skip:
            continue
        print(f"genenet {label}", flush=True)
        rows.append(run_genenet(start, data, method, iters, free=free, hessian=hessian, budget=budget))
        print({k: v for k, v in rows[-1].items() if k not in ("times", "losses")}, flush=True)  # partial results
    prob = FitProblem(start, data, free=free)
    skipped = []
    for jac in ("exact", "2-point"):
        if jac == "2-point" and name == "700":
            t0 = time.perf_counter()
            with torch.no_grad():
                prob.loss(prob.theta0[None])
            one = time.perf_counter() - t0
            skipped.append(f"scipy trf with a finite-difference Jacobian: one Jacobian is {prob.n} solves of the "
                           f"screen ({prob.n} x {one:.1f} s = {prob.n * one / 60:.0f} min), so a fit does not finish "
                           "in an hour")
            continue
        if f"scipy-{jac}" in args.skip:
            continue
        print(f"scipy trf {jac}", flush=True)
        rows.append(run_scipy(prob, jac, budget=budget))
        print({k: v for k, v in rows[-1].items() if k not in ("times", "losses")}, flush=True)
    if "torchdiffeq" not in args.skip:
        try:
            print("torchdiffeq adam", flush=True)
            rows.append(run_torchdiffeq_adam(net, start, data, screen, args.tde_iter, free=free, budget=budget))
            print({k: v for k, v in rows[-1].items() if k not in ("times", "losses")}, flush=True)
        except ImportError:
            print("torchdiffeq not installed: pip install torchdiffeq")
    best = min(r["loss"] for r in rows)
    target = best * 1.01
    day = dt.date.today().isoformat()
    n_obs = prob.n_obs
    what = ("10 genes, 20 edges, 11 conditions x 11 times" if name == "30"
            else "100 genes, 300 edges, 101 conditions x 21 times")
    lines = [f"# Fitting beyond the easy case (issue 20): problem {name}, {day}", "",
             f"- machine: {machine(torch.device('cpu'))}", f"- versions: {versions()}",
             f"- problem {name}: {what} ({n_obs} measurements, 2% noise), free {' + '.join(free)} ({prob.n} "
             f"parameters), start = truth x exp(N(0, 0.4)) (default_rng({args.start_seed})); float64, dopri5 "
             "rtol 1e-8 atol 1e-10 for every tool",
             f"- budget per method: {'none' if budget is None else f'{budget:.0f} s (max_time)'}; max_iter "
             f"{args.max_iter} (adam {args.adam_iter}, torchdiffeq adam {args.tde_iter})",
             f"- best loss any method found: {best:.6g}; target (within 1%): {target:.6g}",
             f"- command: `python benchmarks/fit_hard.py {' '.join(sys.argv[1:])}`", "",
             "| method | time to within 1% of best | total time | final loss | iterations | converged | stop |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        tt = time_to(r, target)
        lines.append(f"| {r['method']} | {'not reached' if np.isnan(tt) else f'{tt:.2f} s'} | {r['wall']:.2f} s | "
                     f"{r['loss']:.6g} | {r['iterations']} | {r['converged']} | {str(r['note'])[:160]} |")
    lines += [f"- not run: {why}" for why in skipped]
    lines += ["", "Cost of one derivative at the start (float64, this machine):", "", *costs]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.plot(np.maximum(r["times"], 1e-3), r["losses"], label=r["method"])
    ax.axhline(target, color="k", lw=0.6, ls=":", label="best + 1%")
    ax.set(xscale="log", yscale="log", xlabel="wall time (s)", ylabel="loss (best so far)",
           title=f"{prob.n}-parameter knockout-screen fit, same start")
    ax.legend(fontsize=7)
    png = HERE / "results" / f"fit_hard_{name}_cpu_{day}.png"
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    lines += ["", f"Loss against wall time: `{png.name}`."]
    if args.multistart:
        print("multistart", flush=True)
        lines += ["", f"Multistart, {args.multistart} starts (the start above + a Latin hypercube, seed 0), "
                  f"max_iter {args.max_iter}:", "",
                  "| method | starts within 1% of the best | batched wall time | "
                  f"{args.multistart} single-start runs | speed-up |",
                  "|---|---|---|---|---|"]
        for method, batched, t_b, singles, t_s in multistart(start, data, args.multistart, args.max_iter, free):
            b = min(batched.loss, singles.min(), best)
            frac = int((batched.starts.final_loss <= b * 1.01).sum())
            lines.append(f"| genenet {method} | {frac}/{args.multistart} | {t_b:.2f} s | {t_s:.2f} s | "
                         f"{t_s / t_b:.1f}x |")
    suffix = "" if name == "30" else f"_{name}"
    write_results(HERE / "results" / f"fit_hard{suffix}_cpu_{day}.md", lines)


if __name__ == "__main__":
    main()

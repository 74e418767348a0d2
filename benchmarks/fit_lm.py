"""Time to fit: genenet lm / trust-ncg vs scipy least_squares + solve_ivp with finite-difference Jacobians.

Problem (issue 4): a 10-gene random Hill network (3 regulators per gene, Hill.random seed 1),
5 conditions (wild type + 4 single knockouts) x 21 times on [0, 20], 2% noise; the 10
production rates are fitted from the same start (true values x a fixed factor in [1/3, 3]).
scipy's side: least_squares (trf) on the same residuals, each evaluation 5 solve_ivp
calls (LSODA, atol = rtol/100) of a vectorised numpy Hill right-hand side,
Jacobian by 2-point finite differences. Reported: wall time, final loss of each, and the
loss of its fitted parameters re-evaluated with one tight solve (tools run at rtol 1e-8 and 1e-6).

    python benchmarks/fit_lm.py
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.optimize import least_squares
from solve_screen import machine, versions, write_results

import genenet as gn

HERE = Path(__file__).resolve().parent


def setup():
    net = gn.Network.random(10, 3, seed=1)
    true = gn.Hill.random(net, n=1, seed=1)
    conds = [gn.Condition([])] + [gn.Knockout(g) for g in net.genes[:4]]
    t = np.linspace(0, 20, 21)
    x0 = np.full(10, 5.0)
    traj = gn.simulate(true, t, x0=x0, perturbations=conds, rtol=1e-10, atol=1e-12)
    data = gn.ExpressionData.from_trajectory(traj, noise=0.02, seed=0)
    g_true = true.params["production"].detach()[0].numpy()
    factor = np.exp(np.random.default_rng(1).uniform(np.log(1 / 3), np.log(3), 10))
    start = gn.Hill(net, **{k: v.detach()[0] for k, v in true.params.items()})
    start.set_params(production=g_true * factor)
    return net, true, start, data, conds, g_true * factor


def scipy_fit(net, start, data, conds, g0, rtol=1e-8):
    p = {k: v.detach()[0].numpy() for k, v in start.params.items()}
    src, tgt, sign = net.sources, net.targets_idx, net.signs
    inv_l, T, n = 1.0 / p["fold"], p["threshold"], p["hill"]
    k = p["degradation"]
    tab = data.table
    genes = list(net.genes)
    times = np.unique(tab.time)
    masks = []
    for c in data.conditions:
        m = np.ones(10)
        if c.startswith("KO("):
            m[genes.index(c[3:-1])] = 0.0
        masks.append(m)
    obs = [tab[tab.condition == c].pivot(index="time", columns="gene", values="value")[genes].to_numpy()
           for c in data.conditions]
    sds = [tab[tab.condition == c].pivot(index="time", columns="gene", values="sd")[genes].to_numpy()
           for c in data.conditions]

    def rhs(_, x, g):
        s = 1.0 / (1.0 + (np.maximum(x[src], 0) / T) ** n)
        H = np.where(sign > 0, 1 + (inv_l - 1) * s, inv_l + (1 - inv_l) * s)
        prod = np.ones(10)
        np.multiply.at(prod, tgt, H)
        return g * prod - k * x

    def residuals(logg):
        g = np.exp(logg)
        out = []
        for m, y, sd in zip(masks, obs, sds):
            x0 = y[0] * m
            sol = solve_ivp(rhs, (times[0], times[-1]), x0, method="LSODA", t_eval=times, rtol=rtol, atol=rtol * 1e-2,
                            args=(g * m,))
            out.append(((sol.y.T - y) / sd).ravel())
        return np.concatenate(out)

    t0 = time.perf_counter()
    res = least_squares(residuals, np.log(g0), method="trf", jac="2-point", xtol=1e-10, ftol=1e-10)
    return time.perf_counter() - t0, 0.5 * float(res.fun @ res.fun), int(res.njev), np.exp(res.x)


def scipy_with_genenet_jacobian(start, data):
    """scipy least_squares (trf) fed genenet's residuals and exact forward-sensitivity Jacobian
    (one solve gives both; cached for the last point)."""
    prob = gn.FitProblem(start, data, free=["production"])
    cache = {}

    def both(x):
        key = x.tobytes()
        if key not in cache:
            cache.clear()
            with torch.no_grad():
                r, J = prob.jacobian(torch.as_tensor(x)[None])
            cache[key] = (r[0].numpy(), J[0].numpy())
        return cache[key]

    t0 = time.perf_counter()
    res = least_squares(lambda x: both(x)[0], prob.theta0.numpy(), jac=lambda x: both(x)[1], method="trf",
                        xtol=1e-10, ftol=1e-10)
    return time.perf_counter() - t0, 0.5 * float(res.fun @ res.fun), int(res.njev), np.exp(res.x)


def reference_loss(start, data, production):
    """The loss of fitted production rates re-evaluated with one tight solve (rtol 1e-11), so
    that fits run at different tolerances are compared on the same scale."""
    model = gn.Hill(start.net, **{k: v.detach()[0] for k, v in start.params.items()})
    model.set_params(production=np.asarray(production))
    prob = gn.FitProblem(model, data, free=["production"], rtol=1e-11, atol=1e-13)
    with torch.no_grad():
        return float(prob.loss(prob.theta0[None])[0])


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    net, true, start, data, conds, g0 = setup()
    rows = {}
    gn.fit(start, data, free=["production"], method="lm", progress=False, max_iter=1)  # one-off imports
    for method, rtol in (("lm", 1e-8), ("lm", 1e-6), ("trust-ncg", 1e-8)):
        t0 = time.perf_counter()
        res = gn.fit(start, data, free=["production"], method=method, progress=False, max_iter=100, rtol=rtol,
                     atol=rtol * 1e-2)
        g = res.model.params["production"].detach()[0].numpy()
        rows[f"genenet {method}, rtol {rtol:g}"] = {"seconds": time.perf_counter() - t0, "loss": res.loss,
                                                    "iterations": int(res.starts.iterations.iloc[0]),
                                                    "reference": reference_loss(start, data, g)}
        print(method, rtol, rows[f"genenet {method}, rtol {rtol:g}"], flush=True)
    seconds, loss, njev, g = scipy_with_genenet_jacobian(start, data)
    rows["scipy least_squares + genenet residuals and exact Jacobian, rtol 1e-8"] = {
        "seconds": seconds, "loss": loss, "iterations": njev, "reference": reference_loss(start, data, g)}
    for rtol in (1e-8, 1e-6):
        seconds, loss, njev, g = scipy_fit(net, start, data, conds, g0, rtol=rtol)
        rows[f"scipy least_squares + solve_ivp LSODA (FD Jacobian), rtol {rtol:g}"] = {
            "seconds": seconds, "loss": loss, "iterations": njev, "reference": reference_loss(start, data, g)}
        print("scipy", rtol, rows[f"scipy least_squares + solve_ivp LSODA (FD Jacobian), rtol {rtol:g}"], flush=True)
    today = dt.date.today().isoformat()
    base = rows["scipy least_squares + solve_ivp LSODA (FD Jacobian), rtol 1e-08"]["seconds"]
    lines = [f"# Fitting benchmark, {today}", "", f"- machine: {machine(torch.device('cpu'))}",
             f"- versions: {json.dumps(versions())}",
             "- problem: 10-gene Hill.random(seed=1) network, 5 conditions (WT + 4 KOs) x 21 times, 2% noise, "
             "10 production rates free, same start for all; genenet float64 dopri5, atol = rtol/100; "
             "genenet's Jacobian: forward sensitivities (exact derivative of the computed solution); "
             "timings after one warm-up call that pays one-off imports",
             "- final loss: as the tool reports it (at its own tolerance); reference loss: the fitted parameters "
             "re-evaluated with one rtol 1e-11 solve, the fair comparison across tolerances",
             "- iterations: Jacobian evaluations (genenet: LM / trust-region iterations; scipy: njev); "
             "ms / iteration = wall time / iterations, which includes the rejected trial steps",
             "- command: `python benchmarks/fit_lm.py`", "",
             "| tool | seconds | iterations | ms / iteration | final loss | reference loss "
             "| speed-up vs scipy rtol 1e-8 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        per = 1e3 * r["seconds"] / r["iterations"]
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['iterations']} | {per:.0f} | {r['loss']:.4f} | "
                     f"{r['reference']:.4f} | {base / r['seconds']:.2f}x |")
    same = {tol: rows[f"scipy least_squares + solve_ivp LSODA (FD Jacobian), rtol {tol}"]["seconds"]
            / rows[f"genenet lm, rtol {tol}"]["seconds"] for tol in ("1e-08", "1e-06")}
    refs = {name: r["reference"] for name, r in rows.items()}
    best = min(refs.values())
    off = {name: (v - best) / best for name, v in refs.items() if (v - best) / best > 5e-7}
    agree = ("Every row reaches the same reference loss to 6 significant digits." if not off else
             "Every row reaches the best reference loss to 6 significant digits except "
             + "; ".join(f"{name} (+{rel:.1e} relative)" for name, rel in off.items()) + ".")
    lines += ["", "genenet lm vs scipy at the same tolerance: "
              + ", ".join(f"rtol {tol}: {ratio:.2f}x" for tol, ratio in same.items()) + ". " + agree]
    out = HERE / "results" / f"fit_cpu_{today}.md"
    write_results(out, lines)


if __name__ == "__main__":
    main()

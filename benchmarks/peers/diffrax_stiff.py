"""diffrax runner for benchmarks/stiff_hill.py (run with a Python that has jax and diffrax).

Reads the problem exported by stiff_hill.py (npz), integrates every condition with
Kvaerno5 + PIDController (same rtol/atol, same save times) under jit(vmap), float64 on the
CPU, and prints one JSON line: seconds of the second call, first-call seconds, solver, jax
version; the states go to ``<problem>_diffrax.npy``.

    python benchmarks/peers/diffrax_stiff.py problem.npz
"""

import json
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def main(path: str) -> None:
    d = np.load(path)
    src, tgt, sign = (jnp.asarray(d[k]) for k in ("sources", "targets", "signs"))
    T, n, lam = (jnp.asarray(d[k]) for k in ("threshold", "hill", "fold"))
    g, k = jnp.asarray(d["production"]), jnp.asarray(d["degradation"])
    masks, x0, t = jnp.asarray(d["masks"]), jnp.asarray(d["x0"]), jnp.asarray(d["t"])
    G = g.shape[0]

    def rhs(_, x, mask):  # the same shifted-Hill kinetics as genenet.Hill
        s = 1.0 / (1.0 + (jnp.maximum(x[src], 0.0) / T) ** n)
        H = jnp.where(sign > 0, 1.0 + (1.0 / lam - 1.0) * s, 1.0 / lam + (1.0 - 1.0 / lam) * s)
        prod = jnp.exp(jnp.zeros(G).at[tgt].add(jnp.log(H)))  # product over regulators (H > 0)
        return mask * g * prod - k * x

    term = diffrax.ODETerm(rhs)
    solver = diffrax.Kvaerno5()
    ctrl = diffrax.PIDController(rtol=float(d["rtol"]), atol=float(d["atol"]))

    def one(mask):
        sol = diffrax.diffeqsolve(term, solver, t0=t[0], t1=t[-1], dt0=None, y0=x0 * mask, args=mask,
                                  saveat=diffrax.SaveAt(ts=t), stepsize_controller=ctrl, max_steps=100_000)
        return sol.ys

    run = jax.jit(jax.vmap(one))
    t0 = time.perf_counter()
    run(masks).block_until_ready()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    ys = run(masks).block_until_ready()
    sec = time.perf_counter() - t0
    np.save(path.replace(".npz", "_diffrax.npy"), np.asarray(ys))
    print(json.dumps({"seconds": sec, "first_seconds": first, "solver": "Kvaerno5", "jax": jax.__version__}))


if __name__ == "__main__":
    main(sys.argv[1])

"""diffrax runner for benchmarks/solve_screen.py (run with a Python that has jax and diffrax).

Reads the standard problem exported by solve_screen.py (npz: genenet's Hill slot layout,
per-row production masks, x0, save times, tolerances, dtype), integrates every row with
Tsit5 + PIDController (same rtol/atol, same save times) under jit(vmap) on jax's default
device, and prints one JSON line: median seconds of ``repeats`` calls after the first
(compiling) call, the first call's seconds, solver and jax version; the states go to
``<problem>_diffrax.npy``.

    python benchmarks/peers/diffrax_solve.py problem.npz [repeats]
"""

import json
import statistics
import sys
import time

import numpy as np


def main(path: str, repeats: int = 3) -> None:
    d = np.load(path)
    import jax

    if str(d["dtype"]) == "float64":
        jax.config.update("jax_enable_x64", True)
    import diffrax
    import jax.numpy as jnp

    dt = jnp.float64 if str(d["dtype"]) == "float64" else jnp.float32
    src = jnp.asarray(d["slot_source"])
    c0, c1, inv_t, n = (jnp.asarray(d[k], dtype=dt) for k in ("c0", "c1", "inv_threshold", "hill"))
    g, k = jnp.asarray(d["production"], dtype=dt), jnp.asarray(d["degradation"], dtype=dt)
    masks, x0, t = jnp.asarray(d["masks"], dtype=dt), jnp.asarray(d["x0"], dtype=dt), jnp.asarray(d["t"], dtype=dt)
    K, G = int(d["K"]), g.shape[0]

    def rhs(_, x, mask):  # genenet.Hill in its slot layout: H = c0 + c1 / (1 + (x/T)^n), product over K
        s = 1.0 / (1.0 + (jnp.maximum(x[src], 0.0) * inv_t) ** n)
        return mask * g * (c0 + c1 * s).reshape(K, G).prod(axis=0) - k * x

    term = diffrax.ODETerm(rhs)
    solver = diffrax.Tsit5()
    ctrl = diffrax.PIDController(rtol=float(d["rtol"]), atol=float(d["atol"]))

    def one(x_init, mask):
        sol = diffrax.diffeqsolve(term, solver, t0=t[0], t1=t[-1], dt0=None, y0=x_init, args=mask,
                                  saveat=diffrax.SaveAt(ts=t), stepsize_controller=ctrl, max_steps=100_000)
        return sol.ys

    run = jax.jit(jax.vmap(one))
    t0 = time.perf_counter()
    run(x0, masks).block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ys = run(x0, masks).block_until_ready()
        times.append(time.perf_counter() - t0)
    np.save(path.replace(".npz", "_diffrax.npy"), np.asarray(ys, dtype=np.float64))
    print(json.dumps({"seconds": statistics.median(times), "first_seconds": first, "solver": "Tsit5",
                      "jax": jax.__version__, "device": str(jax.devices()[0])}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)

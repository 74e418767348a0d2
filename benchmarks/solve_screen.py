"""Batched solve of a RACIPE Hill network: genenet vs torchdiffeq and torchode, side by side.

Standard problem (issue 2/6): 100 genes, 300 edges (3 regulators per gene), one
`gn.Hill.random` parameter set (seed 0), t in [0, 20], 21 save times; rows are
wild type + all single + all double knockouts (a production mask; knocked-out
genes start at 0), the first N of them. Every tool integrates the same
right-hand side (genenet's Hill kinetics) with dopri5 at the same rtol/atol;
each tool's max error against a tight float64 reference (scipy DOP853,
rtol 1e-12 atol 1e-12, on the flattened batch) is reported next to its time.

Times: median of --repeats calls after one warm-up call, forward only (no_grad).

    python benchmarks/solve_screen.py                    # CPU, N = 1, 200, 1000, float32
    python benchmarks/solve_screen.py --device cuda --sizes 1 1000 5050
    python benchmarks/solve_screen.py --collect          # only rebuild results/<date>-<device>.md

Each run writes results/solve_<device>_<dtype>_<date>.md and then rebuilds the day's summary for
the device, results/<date>-<device>.md (the file issue 6 names): every solve table of that date and
device, float32 first, as written by their runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

import genenet as gn

HERE = Path(__file__).resolve().parent


def standard_network() -> gn.Network:
    return gn.Network.random(100, regulators=3, seed=0)


def knockout_masks(n_genes: int, n_rows: int) -> np.ndarray:
    """Rows: wild type, singles, doubles (in that order), the first n_rows; 1 = expressed."""
    rows = [()] + [(i,) for i in range(n_genes)] + list(itertools.combinations(range(n_genes), 2))
    if n_rows > len(rows):
        rows = (rows * (n_rows // len(rows) + 1))[:n_rows]
    mask = np.ones((n_rows, n_genes))
    for r, ko in enumerate(rows[:n_rows]):
        mask[r, list(ko)] = 0.0
    return mask


def problem(n_rows: int, device: torch.device, dtype: torch.dtype):
    net = standard_network()
    model = gn.Hill.random(net, n=1, seed=0)
    mask = knockout_masks(net.n_genes, n_rows)
    g = model.params["production"].detach().numpy() * mask
    x0 = np.full((n_rows, net.n_genes), 1.0) * mask
    p = model.row_params(None, n_rows, device=device, dtype=dtype, overrides={"production": g})
    p = {k: v.detach().contiguous() for k, v in model.prepare(p).items()}  # peers get the same precomputation
    t = torch.linspace(0.0, 20.0, 21, device=device, dtype=dtype)
    return model, g, torch.as_tensor(x0, device=device, dtype=dtype), p, t


def reference(n_rows: int) -> np.ndarray:
    model, _, x0, p, t = problem(n_rows, torch.device("cpu"), torch.float64)
    B, G = x0.shape

    def f(_, flat):
        with torch.no_grad():
            return model.rhs(None, torch.from_numpy(flat).view(B, G), p).numpy().ravel()

    sol = solve_ivp(f, (0.0, 20.0), x0.numpy().ravel(), method="DOP853", rtol=1e-12, atol=1e-12,
                    t_eval=t.numpy())
    assert sol.success, sol.message
    return sol.y.T.reshape(len(t), B, G).transpose(1, 0, 2)


def run_genenet(model, g, x0, p, t, rtol, atol, device, dtype):
    traj = gn.simulate(model, t, x0=x0, params={"production": g}, rtol=rtol, atol=atol, device=device,
                       dtype=dtype)
    return traj.y


def run_torchdiffeq(model, g, x0, p, t, rtol, atol, device, dtype):
    from torchdiffeq import odeint

    def f(_, x):
        return model.rhs(None, x, p)

    return odeint(f, x0, t, rtol=rtol, atol=atol, method="dopri5").transpose(0, 1)


def run_torchode(model, g, x0, p, t, rtol, atol, device, dtype):
    import torchode as to

    def f(_, x):
        return model.rhs(None, x, p)

    term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=atol, rtol=rtol, term=term))
    sol = solver.solve(to.InitialValueProblem(y0=x0, t_eval=t.expand(x0.shape[0], -1)))
    return sol.ys


def export_problem(n_rows: int, dtype: torch.dtype, rtol: float, atol: float, path: Path) -> None:
    """The standard problem in genenet's slot layout, for the peers outside this Python (diffrax)."""
    model, g, x0, p, t = problem(n_rows, torch.device("cpu"), torch.float64)
    slot_source, _, K = model._slots(torch.device("cpu"))
    mask = knockout_masks(model.n_genes, n_rows)
    np.savez(path, slot_source=slot_source.numpy(), K=K, c0=p["_c0"][0].numpy(), c1=p["_c1"][0].numpy(),
             inv_threshold=p["_inv_threshold"][0].numpy(), hill=p["_hill"][0].numpy(),
             production=model.params["production"].detach()[0].numpy(),
             degradation=model.params["degradation"].detach()[0].numpy(), masks=mask, x0=x0.numpy(), t=t.numpy(),
             rtol=rtol, atol=atol, dtype=str(dtype).replace("torch.", ""))


def run_diffrax_subprocess(python: str, n_rows: int, dtype: torch.dtype, rtol: float, atol: float, repeats: int
                           ) -> tuple[float, np.ndarray, dict]:
    """diffrax Tsit5 under jit(vmap) in ``python`` (benchmarks/peers/diffrax_solve.py): seconds (median
    after the compiling call), states (B, T, G), and what the runner reported."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problem.npz"
        export_problem(n_rows, dtype, rtol, atol, path)
        proc = subprocess.run([python, str(HERE / "peers" / "diffrax_solve.py"), str(path), str(repeats)],
                              capture_output=True, text=True, check=True)
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        ys = np.load(str(path).replace(".npz", "_diffrax.npy"))
    return info["seconds"], ys, info


TOOLS = {"genenet": run_genenet, "torchdiffeq": run_torchdiffeq, "torchode": run_torchode}


def timeit(fn, repeats: int, device: torch.device):
    with torch.no_grad():
        out = fn()  # warm-up
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times), out


def genenet_backend(device: torch.device, dtype: torch.dtype) -> str:
    from genenet import native

    if device.type == "cpu" and native.available(dtype):
        return "native whole-trajectory kernel (genenet/native/kernels.c, dopri5, OpenMP over rows)"
    why = native.reason(dtype) if device.type == "cpu" else "not CPU"
    return f"batched torch loop ({why})"


def write_results(path: Path | str, lines: list[str]) -> Path:
    """Write a results file (one markdown line per entry) and say where."""
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "genenet": gn.__version__}
    for mod in ("torchdiffeq", "torchode"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod)
        except Exception:  # noqa: BLE001 - not installed
            out[mod] = "not installed"
    return out


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        desc += f", GPU {torch.cuda.get_device_name(device)}"
    return desc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 200, 1000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tools", nargs="+", default=list(TOOLS))
    parser.add_argument("--diffrax-python", default=None,
                        help="a Python with jax and diffrax: adds diffrax Tsit5 jit(vmap) to the table")
    parser.add_argument("--out", default=None,
                        help="results file (default benchmarks/results/solve_<device>_<dtype>_<date>.md)")
    parser.add_argument("--collect", action="store_true",
                        help="only rebuild results/<date>-<device>.md from the day's solve tables")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    if args.collect:
        collect(device.type, dt.date.today().isoformat())
        return

    rows = []
    diffrax_info: dict = {}
    for n in args.sizes:
        ref = reference(n)
        scale = np.abs(ref).max()
        entry = {"N": n}
        for tool in args.tools:
            model, g, x0, p, t = problem(n, device, dtype)
            try:
                call = functools.partial(TOOLS[tool], model, g, x0, p, t, args.rtol, args.atol, device, dtype)
                seconds, y = timeit(call, args.repeats, device)
            except Exception as err:  # noqa: BLE001 - report, keep benchmarking the others
                entry[tool] = {"error": f"{type(err).__name__}: {err}"}
                continue
            y = y.detach().double().cpu().numpy()
            err_abs = float(np.abs(y - ref).max())
            err_rel = float((np.abs(y - ref) / (np.abs(ref) + 1e-3 * scale)).max())
            entry[tool] = {"seconds": seconds, "max_abs_err": err_abs, "max_rel_err": err_rel}
            print(f"N={n:6d} {tool:12s} {seconds * 1e3:9.1f} ms   max abs err {err_abs:.2e}  rel {err_rel:.2e}",
                  flush=True)
        if args.diffrax_python:
            try:
                seconds, y, info = run_diffrax_subprocess(args.diffrax_python, n, dtype, args.rtol, args.atol,
                                                          args.repeats)
                err_abs = float(np.abs(y - ref).max())
                err_rel = float((np.abs(y - ref) / (np.abs(ref) + 1e-3 * scale)).max())
                entry["diffrax"] = {"seconds": seconds, "max_abs_err": err_abs, "max_rel_err": err_rel}
                diffrax_info = info
                print(f"N={n:6d} {'diffrax':12s} {seconds * 1e3:9.1f} ms   max abs err {err_abs:.2e}  "
                      f"rel {err_rel:.2e}  (first call {info['first_seconds']:.1f} s)", flush=True)
            except Exception as err:  # noqa: BLE001 - report, keep the others
                entry["diffrax"] = {"error": f"{type(err).__name__}: {err}"}
        rows.append(entry)
    tools = list(args.tools) + (["diffrax"] if args.diffrax_python else [])

    today = dt.date.today().isoformat()
    out = Path(args.out) if args.out else HERE / "results" / f"solve_{device.type}_{args.dtype}_{today}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Batched solve benchmark, {today}",
        "",
        f"- machine: {machine(device)}",
        f"- versions: {json.dumps(versions())}",
        f"- problem: 100 genes, 300 edges, Hill.random(seed=0), t in [0, 20], 21 save times, rows = WT + single + "
        f"double knockouts (production mask), dopri5, {args.dtype}, rtol {args.rtol:g}, atol {args.atol:g}, "
        f"device {device}",
        f"- time: median of {args.repeats} calls after a warm-up call, forward only (torch.no_grad)",
        f"- genenet backend: {genenet_backend(device, dtype)}",
        *([f"- diffrax: Tsit5 + PIDController, jit(vmap) over rows, jax {diffrax_info.get('jax')} on "
           f"{diffrax_info.get('device')}; time excludes the first (compiling) call"] if diffrax_info else []),
        "- error: vs scipy DOP853 float64 rtol=atol=1e-12 on the flattened batch; "
        "rel = |y-ref|/(|ref| + 1e-3 max|ref|)",
        "- command: `python benchmarks/solve_screen.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("out", "diffrax_python"))
        + (" --diffrax-python PY" if args.diffrax_python else "") + "`",
        "",
        "| N | " + " | ".join(f"{tool} ms (max rel err)" for tool in tools) + " | "
        + " | ".join(f"{tool} / genenet" for tool in tools if tool != "genenet") + " |",
        "|---" * (1 + len(tools) + len(tools) - 1) + "|",
    ]
    for entry in rows:
        cells = []
        for tool in tools:
            r = entry.get(tool, {})
            cells.append(f"{r['seconds'] * 1e3:.1f} ({r['max_rel_err']:.1e})" if "seconds" in r
                         else r.get("error", "-"))
        base = entry.get("genenet", {}).get("seconds")
        ratios = [f"{entry[tool]['seconds'] / base:.2f}x" if base and "seconds" in entry.get(tool, {}) else "-"
                  for tool in tools if tool != "genenet"]
        lines.append(f"| {entry['N']} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    write_results(out, lines)
    collect(device.type, today)


def collect(device: str, day: str) -> Path | None:
    """results/<day>-<device>.md: the day's solve tables for the device (float32, then float64), each
    as its run wrote it, one heading level down."""
    tables = sorted((HERE / "results").glob(f"solve_{device}_*_{day}.md"), key=lambda f: "float64" in f.name)
    if not tables:
        return None
    lines = [f"# Standard problem, batched solves on {device}, {day}", "",
             "Collected by `python benchmarks/solve_screen.py --collect` from: "
             + ", ".join(f"`{f.name}`" for f in tables) + "."]
    for f in tables:
        lines += ["", *("#" + line if line.startswith("#") else line for line in f.read_text().splitlines())]
    return write_results(HERE / "results" / f"{day}-{device}.md", lines)


if __name__ == "__main__":
    main()

"""Compiling the native kernels: compiler, flags, the library's name, the cache and its lock.

Standard library only: ``setup.py`` loads this file by path to build the kernels at install time
(``pip install`` runs it in an isolated environment without torch), and :mod:`genenet.native`
uses it to find or build them at first use.

**Flags, and what they mean for reproducibility.** The kernels are built with
``-O3 -ffp-contract=off`` and an instruction-set level that every CPU of a family has, never
``-march=native``:

- ``-ffp-contract=off``: no fused multiply-adds. GCC fuses ``a * b + c`` into one FMA wherever
  the target has it (x86-64 with ``-march=native`` on any CPU since 2013, every aarch64), and a
  fused result differs from the separate product and sum in the last bit. Which expressions
  are fused depends on the target, so with contraction results depend on the CPU, and a row on
  the edge of a basin can end in another steady state on another machine (issue 19: a test
  passed on AMD EPYC and failed on an Intel Xeon).
- no ``-ffast-math`` or ``-fassociative-math``: sums are added in the order the source writes
  them, also when the loops vectorize, so vector width changes speed, not results.
- the level: ``x86-64-v4`` (AVX-512: Intel servers since 2017, AMD Zen 4) where the CPU has it,
  else ``x86-64-v3`` (AVX2, 2013 and later), else ``x86-64-v2`` (SSE4.2, 2009), else the x86-64
  baseline; on other architectures the compiler's default.
  Without contraction and reassociation the levels give bitwise equal results (checked on the
  benchmark problems: ``benchmarks/build_flags.py``); v3 is faster where the loops vectorize.

Measured on the standard solve, gradient and steady-state problems (``benchmarks/build_flags.py``,
``benchmarks/results/build_flags_cpu_2026-12-06.md``, 2-core AMD EPYC, GCC 12): ``x86-64-v3``
without contraction is the fastest build that gives the same bits everywhere; ``x86-64-v2`` takes
1.12-1.25x its time, the baseline 1.26-1.38x, ``-march=native -ffp-contract=off`` 0.93-0.98x (run
to run noise), and ``-march=native`` with contraction, what genenet built before, 1.04-1.19x — and
its steady states of the same 1000 knockout rows differ by up to 0.17 of the largest value (rows
that end in another steady state), its float64 trajectories by 2e-15 relative. All the builds
without contraction are bitwise equal to each other on all four jobs. On a 2-core Intel Xeon with
AVX-512 (``build_flags_cpu_2026-12-07.md``) all the builds without contraction are bitwise equal again,
v4 included, and ``x86-64-v4`` is the fastest (v3 takes 1.11x its time on the float64 solve, 1.77x on
the gradient's tape sweeps). So the portable build, at the CPU's best level, is the default.
``GENENET_NATIVE_ARCH`` chooses otherwise: ``native`` (``-march=native``, contraction on: this CPU
only, results not bitwise equal to other machines') or a ``-march`` value such as ``x86-64-v2``
(a shared cache for a cluster whose nodes differ); ``GENENET_EXTRA_CFLAGS`` appends flags (experiments).

**Where the library comes from**, first match wins:

1. built at install time (``pip install`` runs :func:`compile_library` through ``setup.py``) into
   the package, ``genenet/native/_kernels_<real>.<ext>``: used when its embedded source hash is
   the source's and this CPU has its instruction-set level;
2. the cache, ``$GENENET_CACHE/native`` (default ``~/.cache/genenet/native``): one file per
   source, precision, compiler and flags, built at first use (about a second per precision) under a
   file lock, so processes that start together (a Dask cluster's workers, parallel test runs) build
   it once and never see half a file;
3. none: the torch loop runs, and says so once (:func:`genenet.native.reason` says why).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

DIR = Path(__file__).resolve().parent
REALS = ("float", "double")

# optional speed flags: hot loops at fixed alignment (without them a change anywhere in the file
# moved the forward's time by 10-20%, identical code, measured in one process); dropped when the
# compiler does not know them
_ALIGN = ["-falign-functions=64", "-falign-loops=64"]
# x86-64 micro-architecture levels and the /proc/cpuinfo flags each needs beyond the one below
_X86_LEVELS = (
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave", "abm"}),
    ("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
)


def sources() -> list[Path]:
    """The kernel sources: ``kernels.c``, ``compiled.c``, ``rates.c`` and the headers they include."""
    return sorted([*DIR.glob("*.c"), *DIR.glob("*.h")])


def source_hash() -> str:
    """First 16 hex digits of the SHA-256 of the sources: the version a built library must match."""
    h = hashlib.sha256()
    for f in sources():
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def compiler() -> str | None:
    """The C compiler: ``$CC`` if set and found, else ``cc``, ``gcc`` or ``clang`` on PATH; None without one."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand.split()[0]):
            return cand
    return None


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa_levels() -> list[str]:
    """The x86-64 levels this CPU runs, best first (``["x86-64-v4", "x86-64-v3", "x86-64-v2", "x86-64"]``);
    ``[""]`` (the compiler's default target) elsewhere."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return [""]
    flags = _cpu_flags()
    if not flags:  # no /proc/cpuinfo (not Linux): the baseline every x86-64 runs
        return ["x86-64"]
    levels, need = [], set()
    for name, extra in reversed(_X86_LEVELS):  # v2 needs its own flags, v3 those and its own
        need |= extra
        if need <= flags:
            levels.insert(0, name)
    return [*levels, "x86-64"]


def arch_choice() -> str:
    """``GENENET_NATIVE_ARCH`` (``portable`` unless set): ``portable``, ``native`` or a ``-march`` value."""
    return os.environ.get("GENENET_NATIVE_ARCH", "").strip() or "portable"


def target_flags(arch: str | None = None) -> tuple[str, list[str]]:
    """The instruction-set level and its flags for ``arch`` (default :func:`arch_choice`):
    ``portable``: the best level of :func:`cpu_isa_levels` without contraction; ``native``:
    ``-march=native`` with the compiler's default contraction; else ``-march=<arch>``."""
    arch = arch or arch_choice()
    if arch == "native":
        return "native", ["-march=native", "-ffp-contract=fast"]
    level = cpu_isa_levels()[0] if arch == "portable" else arch
    return level, ([f"-march={level}"] if level else []) + ["-ffp-contract=off"]


def flags(real: str, arch: str | None = None) -> list[str]:
    """Every flag of one build but OpenMP's and the optional alignment (see the module doc)."""
    if real not in REALS:
        raise ValueError(f"unknown precision {real!r}; allowed: {list(REALS)}")
    level, target = target_flags(arch)
    extra = os.environ.get("GENENET_EXTRA_CFLAGS", "").split()  # for experiments: after the defaults, so they win
    return ["-O3", *target, "-fno-math-errno", "-fPIC", "-shared", "-pthread", f"-DREAL={real}",
            f'-DGENENET_SOURCE_HASH="{source_hash()}"', f'-DGENENET_ISA="{level}"', *extra]


def compile_library(real: str, out: Path | str, *, cc: str | None = None, arch: str | None = None,
                    source: Path | None = None, defines: tuple[str, ...] = ()) -> list[str]:
    """Compile the kernels for ``real`` (``"float"`` or ``"double"``) into the shared library ``out``,
    written atomically (a temporary file renamed into place). Tries OpenMP and the alignment flags
    first and drops what the compiler refuses. ``source``: the translation unit (default
    ``kernels.c``; ``compiled.c`` for a compiled model), ``defines``: extra ``-D`` flags. Returns
    the command that succeeded; RuntimeError naming each command and the compiler's message when
    none does."""
    cc = cc or compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc or clang)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    targets = [flags(real, arch)]
    if (arch or arch_choice()) == "portable" and target_flags()[0] not in ("", "x86-64"):
        # a compiler older than the level names (GCC < 11, Clang < 12): the baseline gives the same bits
        targets.append(flags(real, "x86-64"))
    errors = []
    for base in targets:
        for extra in (["-fopenmp", *_ALIGN], ["-fopenmp"], _ALIGN, []):  # OpenMP threads when the compiler has them
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
                tmp_lib = Path(tmp) / out.name
                cmd = [*cc.split(), *base, *extra, *(f"-D{d}" for d in defines), str(source or DIR / "kernels.c"),
                       "-o", str(tmp_lib), "-lm"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode == 0:
                    os.replace(tmp_lib, out)  # atomic: a reader never sees half a file
                    return cmd
                errors.append(f"{' '.join(cmd)}: {proc.stderr.strip()[-500:]}")
    raise RuntimeError("compiling the native kernel failed:\n" + "\n".join(errors))


def cache_dir() -> Path:
    """``$GENENET_CACHE/native``, default ``~/.cache/genenet/native``."""
    root = os.environ.get("GENENET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "genenet")
    return Path(root) / "native"


def cache_path(real: str, cc: str, arch: str | None = None, name: str = "kernels") -> Path:
    """The cached library of this source, precision, compiler and flags (``name``: ``kernels``, the
    Hill kernels of ``kernels.c``, or ``models``, the compiled models' integrators of ``compiled.c``)."""
    key = hashlib.sha256(" ".join([cc, *flags(real, arch), sys.platform, platform.machine()]).encode())
    return cache_dir() / f"genenet_{name}_{real}_{key.hexdigest()[:16]}{_suffix()}"


def _suffix() -> str:
    return ".dll" if sys.platform == "win32" else ".dylib" if sys.platform == "darwin" else ".so"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) across processes; without fcntl (Windows) none:
    the atomic rename alone keeps concurrent builds safe there, they only duplicate work."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_library(real: str, *, rebuild: bool = False, name: str = "kernels") -> Path:
    """The cached library for ``real``, built first if missing (or ``rebuild``) under a lock, so
    concurrent first uses build it once. ``name``: ``kernels`` (``kernels.c``) or ``models``
    (``compiled.c``). RuntimeError when there is no compiler or it fails."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc or clang)")
    path = cache_path(real, cc, name=name)
    if path.exists() and not rebuild:
        return path
    source = DIR / ("kernels.c" if name == "kernels" else "compiled.c")
    with locked(path.with_name(path.name + ".lock")):
        if rebuild or not path.exists():  # another process may have built it while we waited
            compile_library(real, path, cc=cc, source=source)
    return path


def installed_library(real: str) -> Path | None:
    """The library built at install time into the package, if there is one."""
    found = sorted(DIR.glob(f"_kernels_{real}.*"))
    found = [p for p in found if p.suffix in (".so", ".pyd", ".dylib", ".dll")]
    return found[0] if found else None

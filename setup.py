"""Builds genenet's native kernels at install time (everything else is in pyproject.toml).

The kernels are plain C shared libraries loaded with ctypes, not Python extension modules; they
are declared as extensions so that ``pip install`` compiles them (into the wheel, or into the source
tree for an editable install) with the same flags and code as the first-use build
(``genenet/native/build.py``, loaded here by path: the build runs without torch). Without a C
compiler the install goes on and genenet builds the kernels at first use or runs on the torch loop;
with a compiler that fails, the install fails and shows the compiler's message.
``GENENET_NATIVE=0`` at install skips the build.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _native_build():
    spec = importlib.util.spec_from_file_location("_genenet_native_build", HERE / "genenet" / "native" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildKernels(build_ext):
    """Compile each kernel library with genenet.native.build.compile_library."""

    def build_extension(self, ext: Extension) -> None:
        real = ext.name.rsplit("_", 1)[-1]
        cmd = _native_build().compile_library(real, self.get_ext_fullpath(ext.name))
        print("genenet: " + " ".join(cmd))

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # a ctypes library, not a module: no PyInit_ symbol


def _kernels() -> list[Extension]:
    """The kernel libraries to build, or none (decided here, not in build_ext: an editable install
    copies every declared extension's output, so one that is skipped must not be declared)."""
    if os.environ.get("GENENET_NATIVE", "1") == "0":
        print("genenet: GENENET_NATIVE=0, not building the native kernels")
        return []
    if _native_build().compiler() is None:
        print("genenet: no C compiler found, not building the native kernels: genenet will build them at first use "
              "where a compiler is found, else run on the torch loop")
        return []
    return [Extension(f"genenet.native._kernels_{real}", sources=["genenet/native/kernels.c"])
            for real in ("float", "double")]


setup(ext_modules=_kernels(), cmdclass={"build_ext": BuildKernels})

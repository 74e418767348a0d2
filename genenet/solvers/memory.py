"""A guard against the autograd graph of a long differentiable solve exhausting memory.

Backpropagation through the solver keeps every step's stages alive until ``backward``:
memory grows linearly with the number of steps and rows (a 5051-row screen of a 100-gene
network keeps ~30 MB per step). Without a guard such a solve ends in the operating
system's out-of-memory kill, with no message. :class:`GraphMemoryGuard` watches the
memory still available while a differentiable solve runs (``MemAvailable`` of
``/proc/meminfo`` on the CPU, ``torch.cuda.mem_get_info`` plus the allocator's free cache
on CUDA) and raises :class:`MemoryError` naming the way out once the solve has used up all
but ``reserve`` of what was available when it started. The graph is freed as the error
unwinds.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["GraphMemoryGuard", "available_memory"]


def available_memory(device: torch.device) -> int | None:
    """Bytes still available to this process on ``device``; None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


class GraphMemoryGuard:
    """Raise :class:`MemoryError` when a differentiable solve has consumed all but ``reserve``
    (a fraction) of the memory available at its start; ``check`` is called every few steps."""

    def __init__(self, device: torch.device, reserve: float = 0.1) -> None:
        self.device, self.reserve = device, reserve
        self.start = available_memory(device)

    def check(self, steps: int, rows: int, t_min: float, t_end: float) -> None:
        if self.start is None:
            return
        now = available_memory(self.device)
        if now is None or now >= self.reserve * self.start:
            return
        used = (self.start - now) / 2**30
        raise MemoryError(
            f"this solve records the autograd graph for gradients (an input requires grad) and its {steps} steps "
            f"over {rows} rows have used {used:.1f} GiB, leaving {now / 2**30:.1f} GiB, with the slowest row at "
            f"t={t_min:.4g} of {t_end:.4g}. When no gradient is needed, run it under torch.no_grad() (on the CPU "
            f"that also selects the native kernel); for gradients of long solves use the adjoint method "
            f"(FitProblem.gradient_adjoint, memory independent of the number of steps), fewer rows per call, "
            f"or a shorter span.")

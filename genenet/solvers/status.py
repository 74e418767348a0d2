"""Per-row solver status codes and the messages that say what to do about them."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Status", "SolverError"]


class Status(IntEnum):
    """Outcome of one batch row. ``RUNNING`` only appears inside the solver loop."""

    STIFF = -2  # internal: handed from the explicit to the implicit method by method="auto"
    RUNNING = -1
    SUCCESS = 0
    MAX_STEPS = 1
    STEP_UNDERFLOW = 2
    NONFINITE = 3
    SINGULAR = 4

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.STIFF: "detected stiff and stopped for an implicit method to take over (method='auto')",
    Status.RUNNING: "still running",
    Status.SUCCESS: "reached the final time",
    Status.MAX_STEPS: "stopped after max_steps steps before the final time: raise max_steps, loosen rtol/atol, "
                      "or, if the row is stiff (fast degradation, steep Hill functions), use a stiff method",
    Status.STEP_UNDERFLOW: "the step size fell below the resolution of t: the row is stiff or its solution blows up; "
                           "use a stiff method, float64, or check the parameters",
    Status.NONFINITE: "the right-hand side gave NaN/inf even at tiny steps: check parameters and the initial state "
                      "(negative or huge values, division by zero in user kinetics)",
    Status.SINGULAR: "the implicit method's matrix I/(h*gamma) - J stayed singular (or J non-finite) down to tiny "
                     "steps: check the model's Jacobian (production_jacobian) and parameters",
}


class SolverError(RuntimeError):
    """Raised by ``simulate(..., throw=True)`` when any row fails; ``.status`` holds every row's code."""

    def __init__(self, message: str, status=None) -> None:
        super().__init__(message)
        self.status = status


def describe_failures(status, labels, limit: int = 5) -> str:
    """One line per failing status code: how many rows, which ones (first few), and the fix."""
    import numpy as np

    codes = np.asarray(status)
    lines = []
    for code in sorted(set(codes.tolist()) - {int(Status.SUCCESS)}):
        rows = np.nonzero(codes == code)[0]
        names = ", ".join(str(labels[i]) for i in rows[:limit]) + (", ..." if len(rows) > limit else "")
        lines.append(f"{len(rows)} row(s) {Status(code).name} [{names}]: {Status(code).message}")
    return "\n".join(lines)

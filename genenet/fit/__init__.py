"""Fitting models to expression data: problem, optimizers, results."""

from .api import fit, latin_hypercube_starts
from .problem import FitProblem
from .result import FitResult

__all__ = ["fit", "FitProblem", "FitResult", "latin_hypercube_starts"]

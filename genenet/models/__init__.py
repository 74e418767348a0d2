"""Kinetic models: each is production(x) - degradation(x), batched over rows."""

from .base import FunctionModel, Model, ParameterSpec
from .hill import Hill
from .sigmoid import Sigmoid
from .two_stage import TwoStage

__all__ = ["Model", "FunctionModel", "ParameterSpec", "Hill", "Sigmoid", "TwoStage"]

"""Kinetics as expressions: rate laws parsed to sympy, compiled once per structure to every backend."""

from .expressions import FUNCTIONS, parse_rate
from .program import Program, torch_function
from .symbolic import Reaction, ReactionNetwork, SymbolicModel, from_equations

__all__ = ["FUNCTIONS", "parse_rate", "Program", "torch_function", "Reaction", "ReactionNetwork", "SymbolicModel",
           "from_equations"]

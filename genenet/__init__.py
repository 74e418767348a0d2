"""genenet: gene regulatory network dynamics as batched, differentiable PyTorch ODEs."""

from .continuation import Bifurcation, scan
from .data import ExpressionData
from .fit import FitProblem, FitResult, fit
from .infer import InferredNetwork, baseline_scores, infer_network, score_edges
from .io import (
    bundled_networks,
    load_dream4,
    load_network,
    read_dream_gold,
    read_dream_timeseries,
    read_network,
    read_sbml,
    read_topo,
    read_tsv,
    write_sbml,
    write_topo,
    write_tsv,
)
from .kinetics import ReactionNetwork, SymbolicModel
from .models import FunctionModel, Hill, Model, ParameterSpec, Sigmoid, TwoStage
from .multistability import SteadyStates, find_steady_states
from .network import Edge, Network
from .perturb import (
    Clamp,
    Condition,
    Knockdown,
    Knockout,
    Overexpress,
    Perturbation,
    Pulse,
    SetParameter,
    knockdown_screen,
    knockout_screen,
)
from .plot import plot_basins, plot_bifurcation, plot_phase_portrait, plot_screen_heatmap, plot_trajectory
from .screen import screen_table
from .sensitivity import Sensitivities, sensitivities
from .simulate import simulate
from .solvers import SolverError, Status
from .steady import SteadyState, jacobian, steady_state, steady_state_sensitivity
from .stochastic import simulate_stochastic
from .trajectory import Trajectory

__version__ = "0.1.0"

__all__ = [
    "Network", "Edge", "Model", "FunctionModel", "ParameterSpec", "Hill", "simulate", "Trajectory",
    "Status", "SolverError", "load_network", "bundled_networks", "read_network", "read_topo", "read_tsv",
    "write_topo", "write_tsv", "__version__", "Perturbation", "Knockout", "Knockdown", "Overexpress", "Clamp",
    "SetParameter", "Pulse", "Condition", "knockout_screen", "knockdown_screen", "screen_table",
    "plot_trajectory", "plot_screen_heatmap", "plot_phase_portrait", "plot_basins", "plot_bifurcation",
    "scan", "Bifurcation",
    "ExpressionData", "fit", "FitProblem", "FitResult", "sensitivities", "Sensitivities",
    "Sigmoid", "infer_network", "InferredNetwork", "score_edges", "baseline_scores", "read_dream_timeseries",
    "read_dream_gold", "load_dream4", "simulate_stochastic", "TwoStage",
    "SteadyState", "steady_state", "SteadyStates", "find_steady_states", "jacobian", "steady_state_sensitivity",
    "ReactionNetwork", "SymbolicModel", "read_sbml", "write_sbml",
]

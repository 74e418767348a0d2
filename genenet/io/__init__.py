"""Reading and writing networks (and, later, data sets)."""

from .bundled import bundled_networks, load_dream4, load_network
from .dream import read_dream_gold, read_dream_timeseries
from .edgelists import read_network, read_topo, read_tsv, write_topo, write_tsv
from .params import apply_params, read_params
from .sbml import read_sbml, write_sbml

__all__ = ["apply_params", "read_params", "bundled_networks", "load_network", "read_network", "read_topo",
           "read_tsv", "write_topo", "write_tsv", "read_dream_timeseries", "read_dream_gold", "load_dream4",
           "read_sbml", "write_sbml"]

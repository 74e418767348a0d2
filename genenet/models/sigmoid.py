"""Additive sigmoid regulation (Mjolsness, Sharp & Reinitz 1991; Wahde & Hertz 2000)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..network import Network
from .base import CompiledForm, LinearDegradation, Model, ParameterSpec, Params

__all__ = ["Sigmoid"]


class Sigmoid(CompiledForm, LinearDegradation, Model):
    r"""Regulators act additively inside a sigmoid; each edge has a signed weight.

    .. math::

        \frac{dx_i}{dt} = g_i\, \sigma\Big(\sum_{e=(j\to i)} w_e x_j + b_i\Big) - k_i x_i,
        \qquad \sigma(u) = \frac{1}{1 + e^{-u}}

    Unlike :class:`Hill`, the sign of an edge is not fixed by the network: ``w_e > 0``
    activates, ``w_e < 0`` represses and ``w_e = 0`` removes the edge. That makes it the
    model for structure learning on a fully connected or candidate network
    (:func:`genenet.infer_network`), where ``|w_e|`` is the edge strength. The network's
    edge signs only set the sign of the default weights.

    Parameters
    ----------
    net : Network
    production : g per gene, ``> 0`` (default 1)
    degradation : k per gene, ``> 0`` (default 1)
    weight : w per edge, any real (default ``sign * 1``)
    bias : b per gene, any real (default 0)
    """

    autonomous = True

    def __init__(self, net: Network, production: Any = 1.0, degradation: Any = 1.0, weight: Any = None,
                 bias: Any = 0.0) -> None:
        super().__init__()
        if not isinstance(net, Network):
            raise TypeError(f"net must be a genenet.Network, got {type(net).__name__}")
        self.net = net
        self.genes = net.genes
        G, E = net.n_genes, net.n_edges
        specs = [
            ParameterSpec("production", G, "gene", (0.0, math.inf), "maximal production rate g"),
            ParameterSpec("degradation", G, "gene", (0.0, math.inf), "degradation rate k"),
            ParameterSpec("weight", E, "edge", (-math.inf, math.inf), "signed regulation weight w"),
            ParameterSpec("bias", G, "gene", (-math.inf, math.inf), "basal input b"),
        ]
        if weight is None:
            weight = np.asarray(net.signs, dtype=np.float64) if E else np.zeros(0)
        self._init_params(specs, {"production": production, "degradation": degradation, "weight": weight,
                                  "bias": bias})
        self._index: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _edges(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._index:
            self._index[device] = (torch.as_tensor(self.net.sources, device=device),
                                   torch.as_tensor(self.net.targets_idx, device=device))
        return self._index[device]

    def _input(self, x: Tensor, p: Params) -> Tensor:
        """``u_i = Σ_e w_e x_src(e) + b_i``, (B, G)."""
        src, tgt = self._edges(x.device)
        u = p["bias"].expand_as(x).clone()
        if len(src):
            u.index_add_(1, tgt, p["weight"] * x.index_select(1, src))
        return u

    def production(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``g_i σ(u_i)``, (B, G)."""
        return p["production"] * torch.sigmoid(self._input(x, p))

    def production_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params
                       ) -> tuple[Tensor, Tensor]:
        """``g σ(u)`` and ``ġ σ(u) + g σ'(u) (Σ_e (ẇ_e x_src + w_e ẋ_src) + ḃ)``; shapes (B, G), (B, q, G)."""
        src, tgt = self._edges(x.device)
        B, q, G = x_dot.shape
        sig = torch.sigmoid(self._input(x, p))
        u_dot = x_dot.new_zeros(B, q, G)
        if len(src):
            contrib = p["weight"][:, None, :] * x_dot.index_select(2, src)
            if "weight" in p_dot:
                contrib = contrib + p_dot["weight"] * x.index_select(1, src)[:, None, :]
            u_dot.index_add_(2, tgt, contrib)
        if "bias" in p_dot:
            u_dot = u_dot + p_dot["bias"]
        g = p["production"]
        P_dot = (g * sig * (1 - sig))[:, None, :] * u_dot
        if "production" in p_dot:
            P_dot = P_dot + p_dot["production"] * sig[:, None, :]
        return g * sig, P_dot

    def production_jacobian(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``dP_i/dx_j = g_i σ'(u_i) w_(j->i)``, (B, G, G)."""
        src, tgt = self._edges(x.device)
        B, G = x.shape
        sig = torch.sigmoid(self._input(x, p))
        J = x.new_zeros(B, G * G)
        if len(src):
            slope = (p["production"] * sig * (1 - sig)).index_select(1, tgt)
            J.index_add_(1, tgt * G + src, slope * p["weight"])
        return J.view(B, G, G)

    def labels(self, name: str) -> list[str]:
        if self._spec(name).scope == "edge":
            return [str(e) for e in self.net.edges]
        return super().labels(name)

r"""Two-stage gene expression: mRNA and protein per gene, regulation by proteins (shifted Hill)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..network import Network
from .base import CompiledForm, LinearDegradation, Model, ParameterSpec, Params
from .hill import Hill

__all__ = ["TwoStage"]

SPECIES = ("mRNA", "protein")


class TwoStage(CompiledForm, LinearDegradation, Model):
    r"""mRNA ``m`` and protein ``p`` for every gene of a signed network.

    .. math::

        \frac{dm_i}{dt} = \alpha_i \prod_{e=(j\to i)} H_e(p_j) - \delta^m_i m_i, \qquad
        \frac{dp_i}{dt} = \beta_i m_i - \delta^p_i p_i

    with the same shifted Hill factors ``H_e`` as :class:`genenet.Hill` (threshold,
    hill coefficient and fold change per edge), acting on the regulator's **protein**.

    Parameters (names as in ``model.params``)
    ------------------------------------------
    net : Network
    transcription : α, per gene, ``> 0`` (default 10)
    mrna_degradation : δm, per gene, ``> 0`` (default 1)
    translation : β, per gene, ``> 0`` (default 1)
    protein_degradation : δp, per gene, ``> 0`` (default 0.2)
    threshold : T, per edge (default: half the source protein's maximal level ``α β / (δm δp) / 2``)
    hill : n, per edge (default 4);  fold : λ >= 1, per edge (default 10)

    The state has 2G entries: ``model.genes`` are ``"A:mRNA", ..., "A:protein", ...`` (all mRNAs,
    then all proteins); ``model.gene_names`` the G genes. Perturbations name genes: a
    knockout zeroes transcription and starts mRNA and protein at 0; knockdown and
    overexpression scale transcription; a clamp holds the protein level. A state name
    (``"A:mRNA"``) targets that species alone. ``traj["A", "protein"]`` selects a species and
    ``traj.to_frame()`` has a ``species`` column. Fast mRNA turnover (large δm) makes the
    system stiff: use ``method="auto"`` or ``"rodas5"``.
    """

    autonomous = True
    _rate_names = ("mrna_degradation", "protein_degradation")

    def __init__(self, net: Network, transcription: Any = 10.0, mrna_degradation: Any = 1.0, translation: Any = 1.0,
                 protein_degradation: Any = 0.2, threshold: Any = None, hill: Any = 4.0, fold: Any = 10.0) -> None:
        super().__init__()
        if not isinstance(net, Network):
            raise TypeError(f"net must be a genenet.Network, got {type(net).__name__}")
        self.net = net
        self.gene_names = list(net.genes)
        self.genes = [f"{g}:{s}" for s in SPECIES for g in net.genes]
        self.species = [s for s in SPECIES for _ in net.genes]
        G, E = net.n_genes, net.n_edges
        pos = (0.0, math.inf)
        specs = [
            ParameterSpec("transcription", G, "gene", pos, "maximal transcription rate α"),
            ParameterSpec("mrna_degradation", G, "gene", pos, "mRNA degradation rate δm"),
            ParameterSpec("translation", G, "gene", pos, "translation rate β (protein per mRNA per time)"),
            ParameterSpec("protein_degradation", G, "gene", pos, "protein degradation rate δp"),
            ParameterSpec("threshold", E, "edge", pos, "threshold T on the regulator's protein"),
            ParameterSpec("hill", E, "edge", pos, "hill coefficient n"),
            ParameterSpec("fold", E, "edge", (1.0, math.inf), "fold change lambda >= 1"),
        ]
        if threshold is None:
            a, dm, b, dp = (self._canonical(s, v) for s, v in zip(
                specs[:4], (transcription, mrna_degradation, translation, protein_degradation)))
            threshold = (a * b / (dm * dp) / 2.0)[:, torch.as_tensor(net.sources)]
        self._init_params(specs, {"transcription": transcription, "mrna_degradation": mrna_degradation,
                                  "translation": translation, "protein_degradation": protein_degradation,
                                  "threshold": threshold, "hill": hill, "fold": fold})
        # the regulation layout and arithmetic are Hill's; kept out of the module tree (no parameters)
        self.__dict__["_regulation"] = Hill(net, threshold=1.0)

    def labels(self, name: str) -> list[str]:
        spec = self._spec(name)
        if spec.scope == "gene":
            return list(self.gene_names)
        return [str(e) for e in self.net.edges]

    def perturbation_targets(self, name: str) -> tuple[list[int], list[int], list[int]] | None:
        G = len(self.gene_names)
        if name in self.gene_names:
            i = self.gene_names.index(name)
            return [i], [i, G + i], [G + i]
        return super().perturbation_targets(name)

    # --------------------------------------------------------------- kinetics
    def _hill_params(self, p: Params) -> Params:
        q = {"production": p["transcription"], "threshold": p["threshold"], "hill": p["hill"], "fold": p["fold"]}
        q.update({k: v for k, v in p.items() if k.startswith("_")})
        return q

    def prepare(self, p: Params) -> Params:
        return self._regulation.prepare({**p, "production": p["transcription"]})

    def production(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``[α_i Π H_e(p_j), β_i m_i]``, (B, 2G)."""
        G = len(self.gene_names)
        m, prot = x[:, :G], x[:, G:]
        transcription = self._regulation.production(t, prot, self._hill_params(p))
        return torch.cat([transcription, p["translation"] * m], dim=1)

    def production_jacobian(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``[[0, ∂transcription/∂p], [diag β, 0]]``, (B, 2G, 2G)."""
        G = len(self.gene_names)
        B = x.shape[0]
        J = x.new_zeros(B, 2 * G, 2 * G)
        J[:, :G, G:] = self._regulation.production_jacobian(t, x[:, G:], self._hill_params(p))
        J[:, G:, :G] = torch.diag_embed(p["translation"].expand(B, G))
        return J

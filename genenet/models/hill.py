"""The RACIPE shifted-Hill model (Huang et al. 2017, PLoS Comput Biol 13:e1005456)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..network import Network
from .base import LinearDegradation, Model, ParameterSpec, Params

__all__ = ["Hill"]


class Hill(LinearDegradation, Model):
    r"""RACIPE shifted-Hill kinetics on a signed network.

    .. math::

        \frac{dx_i}{dt} = g_i \prod_{e=(j\to i)} H_e(x_j) - k_i x_i

    with, per edge ``e`` (threshold ``T``, hill coefficient ``n``, fold change ``λ >= 1``)
    and ``s = 1 / (1 + (x/T)^n)``::

        repression:  H(x) = 1/λ + (1 - 1/λ) s      (1 at x=0, falls to 1/λ)
        activation:  H(x) = 1 + (1/λ - 1) s        (1/λ at x=0, rises to 1)

    The product is 1 for a gene without regulators. Both forms are
    ``H = 1 + (1/λ - 1) (r + σ s)`` with ``σ = +1, r = 0`` for activation and
    ``σ = -1, r = 1`` for repression, which is how it is evaluated.

    Parameters
    ----------
    net : Network
    production : g, per gene, ``> 0`` (default 10)
    degradation : k, per gene, ``> 0`` (default 1)
    threshold : T, per edge, ``> 0`` (default: half the source's maximal level, ``g_src / (2 k_src)``)
    hill : n, per edge, ``> 0`` (default 4)
    fold : λ, per edge, ``>= 1`` (default 10)

    Each accepts a scalar, a 1-D array (per gene ``(G,)`` / per edge ``(E,)`` in
    ``net.edges`` order) or a 2-D array ``(P, G)`` / ``(P, E)`` for an ensemble of P
    parameter sets.
    """

    autonomous = True

    def __init__(self, net: Network, production: Any = 10.0, degradation: Any = 1.0,
                 threshold: Any = None, hill: Any = 4.0, fold: Any = 10.0) -> None:
        super().__init__()
        if not isinstance(net, Network):
            raise TypeError(f"net must be a genenet.Network, got {type(net).__name__}")
        self.net = net
        self.genes = net.genes
        G, E = net.n_genes, net.n_edges
        specs = [
            ParameterSpec("production", G, "gene", (0.0, math.inf), "maximal production rate g"),
            ParameterSpec("degradation", G, "gene", (0.0, math.inf), "degradation rate k"),
            ParameterSpec("threshold", E, "edge", (0.0, math.inf), "threshold T of the shifted Hill function"),
            ParameterSpec("hill", E, "edge", (0.0, math.inf), "hill coefficient n"),
            ParameterSpec("fold", E, "edge", (1.0, math.inf), "fold change lambda >= 1"),
        ]
        if threshold is None:  # half the source's maximal level g/k, per set
            g, k = self._canonical(specs[0], production), self._canonical(specs[1], degradation)
            if g.shape[0] != k.shape[0] and min(g.shape[0], k.shape[0]) > 1:
                raise ValueError(f"parameter ensembles disagree on the number of sets P: production has "
                                 f"{g.shape[0]}, degradation {k.shape[0]}; each must be 1 or P")
            threshold = (g / k / 2.0)[:, torch.as_tensor(net.sources)]
        self._init_params(specs, {"production": production, "degradation": degradation,
                                  "threshold": threshold, "hill": hill, "fold": fold})
        self._structure: dict[torch.device, tuple[Tensor, ...]] = {}

    # ------------------------------------------------------------ structure
    def _slots(self, device: torch.device) -> tuple[Tensor, Tensor, int]:
        """The regulation *slot* layout, cached per device.

        Slot ``(k, i)`` (flattened as ``k * G + i``) holds the k-th regulator of gene
        i, for k < K = max in-degree; unused slots point at a dummy edge (index E)
        whose factor is exactly 1. The product over regulators is then a plain
        reduction over the K axis of a (B, K, G) view, with no gather.
        Returns ``slot_source`` (K*G,), ``slot_edge`` (K*G,) and K.
        """
        if device not in self._structure:
            net = self.net
            G, E = net.n_genes, net.n_edges
            tgt = net.targets_idx
            K = int(np.bincount(tgt, minlength=G).max()) if E else 0
            slot_edge = np.full((K, G), E, dtype=np.int64)
            fill = np.zeros(G, dtype=np.int64)
            for e, i in enumerate(tgt):
                slot_edge[fill[i], i] = e
                fill[i] += 1
            slot_source = np.append(net.sources, 0)[slot_edge]
            self._structure[device] = (torch.as_tensor(slot_source.ravel(), device=device),
                                       torch.as_tensor(slot_edge.ravel(), device=device), K)
        return self._structure[device]

    def _slot_sign(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Edge sign σ per slot (K*G,), 0 for dummy slots."""
        _, slot_edge, _ = self._slots(device)
        return torch.as_tensor(np.append(self.net.signs, 0), device=device)[slot_edge].to(dtype)

    def prepare(self, p: Params) -> Params:
        """Per-solve folding of the edge parameters into slot layout (B, K*G), so that
        ``H = c0 + c1 * s`` with ``c0 = 1 + (1/λ - 1) r``, ``c1 = (1/λ - 1) σ``; also ``1/T`` and ``n``.
        Dummy slots get ``c0 = 1, c1 = 0``."""
        if "_c0" in p:
            return p
        device = p["fold"].device
        _, slot_edge, _ = self._slots(device)
        sign = self._slot_sign(device, p["fold"].dtype)
        pad = torch.zeros_like(p["fold"][:, :1])

        def slots(per_edge: Tensor, fill: float) -> Tensor:
            return torch.cat([per_edge, pad + fill], dim=1).index_select(1, slot_edge)

        a = slots(torch.reciprocal(p["fold"]) - 1.0, 0.0)
        out = dict(p)
        out["_c0"] = 1.0 + a * (sign < 0).to(a.dtype)
        out["_c1"] = a * sign
        out["_inv_threshold"] = slots(torch.reciprocal(p["threshold"]), 1.0)
        out["_hill"] = slots(p["hill"], 1.0)
        # for production_jvp: -c1 n, and (dH/dx)/H at x = 0 (= -c1 / T / (c0 + c1) for n = 1, else 0)
        out["_neg_c1_n"] = -out["_c1"] * out["_hill"]
        out["_w_at_zero"] = torch.where(out["_hill"] == 1, out["_neg_c1_n"] * out["_inv_threshold"]
                                        / (out["_c0"] + out["_c1"]), 0.0)
        return out

    def regulation(self, x: Tensor, p: Params) -> Tensor:
        """Per-edge shifted-Hill factors ``H_e(x_source)``, shape ``(B, E)`` in ``net.edges`` order."""
        _, slot_edge, _ = self._slots(x.device)
        H = self._slot_factors(x, self.prepare(p))
        order = torch.argsort(slot_edge)[: self.net.n_edges]  # slot of each edge
        return H.index_select(1, order)

    def native_spec(self, p: Params) -> dict | None:
        """What the native whole-trajectory kernel (:mod:`genenet.native`) needs: the slot layout
        and the prepared per-row parameters; ``None`` for a subclass with other kinetics."""
        if type(self).production is not Hill.production or type(self).degradation is not Hill.degradation:
            return None
        slot_source, _, K = self._slots(p["production"].device)
        q = self.prepare(p)
        return {"K": K, "slot_source": slot_source, "c0": q["_c0"], "c1": q["_c1"],
                "inv_threshold": q["_inv_threshold"], "hill": q["_hill"],
                "production": p["production"], "degradation": self._degradation_rates(p)}

    def _slot_factors(self, x: Tensor, q: Params) -> Tensor:
        slot_source, _, _ = self._slots(x.device)
        xs = x.index_select(1, slot_source).clamp_min(0.0)  # x < 0 only from round-off; (x/T)^n needs x >= 0
        s = torch.reciprocal(1.0 + torch.pow(xs * q["_inv_threshold"], q["_hill"]))
        return torch.addcmul(q["_c0"], q["_c1"], s)

    def production(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``g_i * prod_e H_e``, shape ``(B, G)``."""
        _, _, K = self._slots(x.device)
        if K == 0:
            return p["production"].expand_as(x)
        H = self._slot_factors(x, self.prepare(p))
        return p["production"] * H.view(x.shape[0], K, x.shape[1]).prod(dim=1)

    def production_jacobian(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        r"""Analytic ``d production_i / d x_j``, shape ``(B, G, G)``.

        ``dP_i/dx_j = g_i prod_{e' != e} H_e'  * c1_e * ds/dx`` for the edge ``e = (j -> i)``,
        with ``ds/dx = -s^2 n (x/T)^(n-1) / T``; the partial product is ``prod / H_e``
        (H >= 1/λ > 0).
        """
        slot_source, _, K = self._slots(x.device)
        B, G = x.shape
        J = x.new_zeros(B, G * G)
        if K == 0:
            return J.view(B, G, G)
        q = self.prepare(p)
        xs = x.index_select(1, slot_source).clamp_min(0.0)
        z = xs * q["_inv_threshold"]
        s = torch.reciprocal(1.0 + torch.pow(z, q["_hill"]))
        H = torch.addcmul(q["_c0"], q["_c1"], s)
        dr = q["_hill"] * q["_inv_threshold"] * torch.pow(z, q["_hill"] - 1.0)
        dH = q["_c1"] * (-s * s * dr)
        prod = H.view(B, K, G).prod(dim=1, keepdim=True)  # (B, 1, G)
        value = (p["production"][:, None, :] * prod / H.view(B, K, G) * dH.view(B, K, G)).reshape(B, K * G)
        target = torch.arange(G, device=x.device).repeat(K)
        flat = target * G + slot_source  # row i, column source
        J.index_add_(1, flat, value)
        return J.view(B, G, G)

    def production_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params
                       ) -> tuple[Tensor, Tensor]:
        r"""Production (B, G) and its closed-form directional derivatives (B, q, G).

        With ``z = x_src / T``, ``s = 1 / (1 + z^n)``, ``H = c0 + c1 s`` per slot and
        ``a = 1/λ - 1`` (``c0 = 1 + a r``, ``c1 = a σ``)::

            ż = ẋ_src / T - x_src Ṫ / T²
            d(z^n) = n z^(n-1) ż + z^n log(z) ṅ
            Ḣ = -c1 s² d(z^n) - (λ̇ / λ²) (r + σ s)
            Ṗ_i = ġ_i Π H + P_i Σ_slots Ḣ / H          (H >= 1/λ > 0)

        Tangents ``x_dot`` (B, q, G), ``p_dot`` {production: (B, q, G), threshold / hill / fold:
        (B, q, E)}; absent names are held fixed. At ``x_src <= 0`` (where the clamp of ``x`` at
        0 sits) the right derivative is used: ``z^(n-1)`` -> its limit, 1 for ``n = 1``, else 0.
        """
        slot_source, slot_edge, K = self._slots(x.device)
        B, G = x.shape
        q = x_dot.shape[1]
        g, g_dot = p["production"], p_dot.get("production")
        if K == 0:
            P = g.expand_as(x)
            return P, (g_dot.expand(B, q, G) if g_dot is not None else x_dot.new_zeros(B, q, G))
        pp = self.prepare(p)
        x_src = x.index_select(1, slot_source)
        xs = x_src.clamp_min(0.0)
        inv_T, n = pp["_inv_threshold"], pp["_hill"]
        z = xs * inv_T
        zn = torch.pow(z, n)
        s = torch.reciprocal(1.0 + zn)
        H = torch.addcmul(pp["_c0"], pp["_c1"], s)
        prod_H = H.view(B, K, G).prod(dim=1)
        P = g * prod_H
        # w = (dH/dx_src) / H = -c1 s^2 n z^n / (x H) for x > 0; at x <= 0 its right limit
        # (nonzero only for n = 1), precomputed in prepare
        s2 = s * s
        w = torch.where(x_src > 0, pp["_neg_c1_n"] * s2 * zn / (xs * H), pp["_w_at_zero"])
        rel = x_dot.index_select(2, slot_source) * w[:, None, :]  # (B, q, K*G): Ḣ / H per slot
        if p_dot.keys() & {"threshold", "hill", "fold"}:
            pad = x_dot.new_zeros(B, q, 1)

            def slots(per_edge: Tensor) -> Tensor:  # (B, q, E) -> (B, q, K*G), dummy slots 0
                return torch.cat([per_edge.expand(B, q, -1), pad], dim=2).index_select(2, slot_edge)

            dH_dzn = -pp["_c1"] * s2 / H  # (dH / d z^n) / H
            if "threshold" in p_dot:  # d(z^n)/dT = -n z^n / T
                T = p["threshold"]
                rel = rel - (dH_dzn * n * zn)[:, None, :] * slots(p_dot["threshold"] / T[:, None, :])
            if "hill" in p_dot:  # d(z^n)/dn = z^n log z (0 at z = 0)
                log_z = torch.log(torch.where(z > 0, z, torch.ones_like(z)))
                rel = rel + (dH_dzn * zn * log_z)[:, None, :] * slots(p_dot["hill"])
            if "fold" in p_dot:  # a = 1/λ - 1: dH = da (r + σ s)
                sign = self._slot_sign(x.device, x.dtype)
                lam = p["fold"]
                rel = rel + (((sign < 0).to(x.dtype) + sign * s) / H)[:, None, :] * slots(
                    -p_dot["fold"] / (lam * lam)[:, None, :])
        P_dot = P[:, None, :] * rel.view(B, q, K, G).sum(dim=2)
        if g_dot is not None:
            P_dot = P_dot + g_dot * prod_H[:, None, :]
        return P, P_dot

    def max_levels(self, p: Params, mult: Tensor | None = None, add: Tensor | None = None) -> Tensor:
        """Upper end of each gene's range, ``(mult g + add) / k`` (every Hill factor is <= 1), (B, G);
        ``mult``/``add`` are a condition's production multiplier and extra input."""
        top = p["production"] if mult is None else p["production"] * mult
        return (top if add is None else top + add) / p["degradation"]

    def labels(self, name: str) -> list[str]:
        if self._spec(name).scope == "edge":
            return [str(e) for e in self.net.edges]
        return super().labels(name)

    # ------------------------------------------------------------- RACIPE
    def with_degradation(self, degradation: Any, keep_levels: bool = True) -> Hill:
        """A copy with new degradation rates ``k'`` (scalar, (G,) or (P, G)); with ``keep_levels``
        the production rates become ``g k'/k``, so every steady state (and the thresholds' meaning)
        is unchanged and only the time scales move -- e.g. rates spread over decades for a stiff
        variant of a network: ``model.with_degradation(10 ** rng.uniform(-2, 3, G))``."""
        k_new = self._canonical(self.specs["degradation"], degradation)
        values = {name: v.detach() for name, v in self.params.items()}
        if keep_levels:
            values["production"] = values["production"] * k_new / values["degradation"]
        values["degradation"] = k_new
        return Hill(self.net, **values)

    @classmethod
    def random_stiff(cls, net: Network, seed: int = 0, *, decades: tuple[float, float] = (-2.0, 3.0),
                     hill: float = 2.0, fold: float = 5.0, rng: np.random.Generator | None = None) -> Hill:
        r"""A stiff variant of ``Hill.random(net, n=1, seed=seed)``: degradation rates log-uniform over
        ``10**decades`` (five decades by default) with the steady levels ``g/k`` kept
        (:meth:`with_degradation`), and moderate regulation (``hill``, ``fold``) so that the step size
        is set by stiffness rather than by oscillations. ``rng`` draws the rates (default
        ``np.random.default_rng(seed)``), so a caller can go on drawing from the same stream."""
        rng = np.random.default_rng(seed) if rng is None else rng
        base = cls.random(net, n=1, seed=seed)
        model = base.with_degradation(10.0 ** rng.uniform(*decades, net.n_genes))
        model.set_params(hill=hill, fold=fold)
        return model

    @classmethod
    def random(cls, net: Network, n: int = 100, seed: int | None = 0, *,
               production: tuple[float, float] = (1.0, 100.0),
               degradation: tuple[float, float] = (0.1, 1.0),
               fold: tuple[float, float] = (1.0, 100.0),
               hill: tuple[int, int] = (1, 6),
               threshold_samples: int = 10_000) -> Hill:
        """A RACIPE ensemble of ``n`` random parameter sets (Huang et al. 2017).

        Sampling, independently per set, gene and edge:

        - production ``g ~ U[1, 100]``, degradation ``k ~ U[0.1, 1]``;
        - fold change ``λ ~ U[1, 100]`` (activation and repression alike);
        - hill coefficient ``n`` uniform over the integers ``1..6``;
        - threshold by RACIPE's *half-functional rule*: ``T ~ U[0.02 M, 1.98 M]``
          where ``M`` is the median level of the edge's **source** gene over random
          parameters. For a source without regulators ``M`` is the median of
          ``g/k``; for a source with ``a`` activators and ``r`` repressors, ``M`` is
          the median of ``g/k * prod H`` with inputs drawn as unregulated genes
          (level ``g'/k'``) and each input's T, n, λ drawn as above, so that each
          regulation is "on" in about half the sets. ``M`` is estimated by Monte
          Carlo with ``threshold_samples`` draws from a fixed internal seed.

        Returns a :class:`Hill` whose parameters have shape ``(n, G)`` / ``(n, E)``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer number of parameter sets, got {n!r}")
        for name, (lo, hi) in (("production", production), ("degradation", degradation), ("fold", fold)):
            if not (0 < lo <= hi) or (name == "fold" and lo < 1):
                raise ValueError(f"{name} range {(lo, hi)} is invalid; need 0 < lo <= hi (fold: lo >= 1)")
        if not (1 <= hill[0] <= hill[1]):
            raise ValueError(f"hill range {hill} is invalid; need integers 1 <= lo <= hi")
        rng = np.random.default_rng(seed)
        G, E = net.n_genes, net.n_edges
        g = rng.uniform(*production, size=(n, G))
        k = rng.uniform(*degradation, size=(n, G))
        lam = rng.uniform(*fold, size=(n, E))
        nh = rng.integers(hill[0], hill[1] + 1, size=(n, E)).astype(np.float64)
        medians = _racipe_medians(net, production, degradation, fold, hill, threshold_samples)
        M = medians[net.sources] if E else np.zeros(0)
        T = rng.uniform(0.02, 1.98, size=(n, E)) * M
        return cls(net, production=g, degradation=k, threshold=T, hill=nh, fold=lam)


def _racipe_medians(net: Network, production: tuple[float, float], degradation: tuple[float, float],
                    fold: tuple[float, float], hill: tuple[int, int], samples: int) -> np.ndarray:
    """Median expression of each gene under RACIPE's random parameters, ``(G,)``."""
    rng = np.random.default_rng(12345)  # internal: thresholds depend only on the user's seed

    def free_levels(size: Any) -> np.ndarray:
        return rng.uniform(*production, size=size) / rng.uniform(*degradation, size=size)

    m0 = float(np.median(free_levels(samples)))
    n_act = np.zeros(net.n_genes, dtype=int)
    n_rep = np.zeros(net.n_genes, dtype=int)
    for e in net.edges:
        (n_act if e.sign > 0 else n_rep)[net.index(e.target)] += 1
    medians = np.empty(net.n_genes)
    cache: dict[tuple[int, int], float] = {}
    for i in range(net.n_genes):
        key = (int(n_act[i]), int(n_rep[i]))
        if key not in cache:
            level = free_levels(samples)
            for count, sign in ((key[0], 1), (key[1], -1)):
                for _ in range(count):
                    x = free_levels(samples)
                    T = rng.uniform(0.02, 1.98, samples) * m0
                    nh = rng.integers(hill[0], hill[1] + 1, samples)
                    inv = 1.0 / rng.uniform(*fold, samples)
                    s = 1.0 / (1.0 + (x / T) ** nh)
                    level = level * (1.0 + (inv - 1.0) * ((sign < 0) + sign * s))
            cache[key] = float(np.median(level))
        medians[i] = cache[key]
    return medians

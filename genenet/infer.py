"""Structure learning: which edges a network has, from expression time courses.

:func:`infer_network` fits the additive-sigmoid model (:class:`~genenet.Sigmoid`) on a
fully connected (or candidate) network with an L1 penalty on the signed edge weights,
and ranks candidate edges by strength. The fit is *gradient matching* (collocation):
slopes are taken from each time course (central finite differences, or a penalised
spline, scipy's ``make_smoothing_spline``, with ``smoothing="gcv"``), and the model's
right-hand side is fitted to them,

    min  Σ_{c,t,i} ( dx̂_i/dt - g_i σ(Σ_j w_ij x̂_j + b_i + δ_ci(t)) + k_i x̂_i )² / s_i²
         + l1 Σ_ij |w_ij| ŝd_j + l1_input Σ_ci |δ_ci|

where ``s_i`` is the spread of gene i's slopes (every target counts alike), ``ŝd_j`` the
spread of regulator j's levels (so the penalty does not depend on units), and the
optional ``δ_ci`` are unknown constant inputs of condition c active inside ``input_window``
(DREAM4's time courses apply an unobserved perturbation for t < 500 and then remove it).
The loss separates over target genes, so all of them are fitted at once as a batch with
L-BFGS from several starts. Edge score: ``|w_ij| ŝd_j`` (the change of the input of gene
i when regulator j moves by its typical spread).

:func:`score_edges` computes AUROC and AUPR against a gold standard;
:func:`baseline_scores` gives the two reference rankings every method should beat:
absolute correlation of levels, and least-squares linear ODE regression
``dx/dt ≈ A x + b`` with slopes from finite differences.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import ExpressionData
from .models.sigmoid import Sigmoid
from .network import Network

__all__ = ["InferredNetwork", "infer_network", "score_edges", "baseline_scores"]


# ----------------------------------------------------------------- data prep
def _courses(data: ExpressionData, genes: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per condition: label, sorted times (T,), levels (T, G) averaged over replicates."""
    out = []
    for cond in data.conditions:
        wide = data.wide(cond).sort_index()[list(genes)]  # times x genes, replicates averaged
        if wide.isna().any().any():
            missing = wide.columns[wide.isna().any()].tolist()
            raise ValueError(f"condition {cond!r} has missing values for {missing}; infer_network needs complete "
                             "time courses (drop the genes or fill them)")
        out.append((cond, wide.index.to_numpy(float), wide.to_numpy(float)))
    return out


def _smooth(t: np.ndarray, y: np.ndarray, smoothing: str | float | None) -> tuple[np.ndarray, np.ndarray]:
    """Levels and slopes at ``t`` per gene: penalised cubic spline (GCV or given λ), or
    ``smoothing=None``: the data with central finite differences."""
    if smoothing is None:
        return y, np.gradient(y, t, axis=0)
    from scipy.interpolate import make_smoothing_spline

    lam = None if smoothing == "gcv" else float(smoothing)
    xs, ds = np.empty_like(y), np.empty_like(y)
    for i in range(y.shape[1]):
        spl = make_smoothing_spline(t, y[:, i], lam=lam)
        xs[:, i], ds[:, i] = spl(t), spl.derivative()(t)
    return xs, ds


def _sample_set(data: ExpressionData, genes: Sequence[str], smoothing: str | float | None,
                window: tuple[float, float] | None, split: float | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Stacked levels X (N, G), slopes D (N, G), input indicator (N, C) and condition labels.

    With ``window``, each course is smoothed separately on both sides of the switch times
    (the input jumps there, so the slope does too)."""
    X, D, ind = [], [], []
    courses = _courses(data, genes)
    for c, (_, t, y) in enumerate(courses):
        if len(t) < 4:
            raise ValueError(f"condition {courses[c][0]!r} has {len(t)} time points; at least 4 are needed")
        pieces = [np.ones(len(t), bool)]
        if split is not None:
            pieces = [t < split, t >= split]
        for m in pieces:
            if m.sum() < 4:
                continue
            xs, ds = _smooth(t[m], y[m], smoothing)
            X.append(xs)
            D.append(ds)
            on = np.zeros((m.sum(), len(courses)))
            if window is not None:
                on[(t[m] >= window[0]) & (t[m] < window[1]), c] = 1.0
            ind.append(on)
    return np.concatenate(X), np.concatenate(D), np.concatenate(ind), [c[0] for c in courses]


# --------------------------------------------------------------------- result
@dataclass
class InferredNetwork:
    """Ranked candidate edges and the fitted model.

    Attributes
    ----------
    edges : DataFrame ``source, target, weight, score`` sorted by decreasing score
        (``weight``: the fitted signed weight; ``score = |weight| · sd(source)``).
    model : the fitted :class:`~genenet.Sigmoid` on the candidate network (simulate it,
        or fit it further with :func:`genenet.fit`).
    inputs : DataFrame (conditions x genes) of the fitted unknown inputs ``δ``, or None.
    loss : final objective per target gene (G,).
    """

    edges: pd.DataFrame
    model: Sigmoid
    inputs: pd.DataFrame | None
    loss: np.ndarray

    def network(self, top: int | None = None, threshold: float | None = None) -> Network:
        """The ``top`` edges, or those with ``score >= threshold``, signed by their weight."""
        if (top is None) == (threshold is None):
            raise ValueError("give exactly one of top= or threshold=")
        chosen = self.edges.head(int(top)) if top is not None else self.edges[self.edges.score >= threshold]
        return Network.from_edges([(r.source, r.target, 1 if r.weight >= 0 else -1) for r in chosen.itertuples()],
                                  genes=self.model.genes, name="inferred")

    def score(self, gold: Any) -> dict[str, float]:
        """AUROC and AUPR against a gold standard (see :func:`score_edges`)."""
        return score_edges(self.edges, gold, genes=self.model.genes)


# ------------------------------------------------------------------ inference
def infer_network(
    data: ExpressionData,
    genes: Sequence[str] | None = None,
    *,
    candidates: Network | None = None,
    l1: float = 0.02,
    input_window: tuple[float, float] | None = None,
    l1_input: float = 0.01,
    smoothing: str | float | None = None,
    n_starts: int = 4,
    max_iter: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> InferredNetwork:
    r"""Rank the edges of a gene network from expression time courses (see the module doc).

    Parameters
    ----------
    data : ExpressionData with one or more time courses (conditions), >= 4 times each.
    genes : genes to use (default: all genes in the data).
    candidates : candidate network (default: :meth:`Network.complete` on ``genes``, no self-loops);
        only its edges can be found.
    l1 : weight of the L1 penalty on the scaled edge weights (0 = plain least squares). The
        default 0.02 suits noisy data such as DREAM4; clean data want less (e.g. 0.005): too
        strong a penalty zeroes weak but true edges.
    input_window : ``(start, end)``: estimate an unknown constant input per condition and gene,
        active for ``start <= t < end`` (e.g. DREAM4: ``(0, 500)``); courses are smoothed
        separately on both sides of ``end``.
    l1_input : L1 weight on those inputs (most genes are not perturbed).
    smoothing : None (default: the data with central finite-difference slopes), ``"gcv"``
        (penalised cubic spline, smoothness by generalised cross-validation) or a fixed spline λ.
    n_starts : random starts per target gene (the best is kept); the first starts at w = 0.
    max_iter : L-BFGS iterations per start.

    Returns
    -------
    :class:`InferredNetwork` (``.edges`` ranked, ``.model``, ``.network(top=...)``, ``.score(gold)``).
    """
    if not isinstance(data, ExpressionData):
        raise TypeError("data must be a gn.ExpressionData")
    genes = list(data.genes if genes is None else genes)
    unknown = [g for g in genes if g not in data.genes]
    if unknown:
        raise KeyError(f"genes {unknown} are not in the data; data genes: {data.genes}")
    if not (np.isfinite(l1) and l1 >= 0 and np.isfinite(l1_input) and l1_input >= 0):
        raise ValueError(f"l1 and l1_input must be finite and >= 0, got {l1!r}, {l1_input!r}")
    net = Network.complete(genes) if candidates is None else candidates
    missing = [g for g in net.genes if g not in genes]
    if missing:
        raise KeyError(f"candidate network genes {missing} are not among the genes used")
    net = Network.from_edges(net.edges, genes=genes, name=net.name)
    split = input_window[1] if input_window is not None else None
    X, D, ind, conds = _sample_set(data, genes, smoothing, input_window, split)
    G, C = len(genes), len(conds)
    dt = torch.float64
    Xt, Dt, It = (torch.as_tensor(a, dtype=dt) for a in (X, D, ind))
    sd_x = Xt.std(dim=0).clamp_min(1e-12)  # regulator spread (G,)
    sd_d = Dt.std(dim=0).clamp_min(1e-12)  # slope spread per target (G,)
    # dense candidate mask, target-major: mask[i, j] = edge j -> i
    mask = torch.zeros(G, G, dtype=dt)
    mask[torch.as_tensor(net.targets_idx), torch.as_tensor(net.sources)] = 1.0
    level = Xt.amax(dim=0).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    S = max(1, int(n_starts))

    # parameters per start and target: log g, log k, b, w (G), δ (C); scaled weights v = w * sd_x
    def init() -> torch.Tensor:
        k0 = (Dt.abs().mean(dim=0) / Xt.mean(dim=0).clamp_min(1e-9)).clamp(1e-4, 1e4)
        g0 = 2.0 * k0 * level
        th = torch.zeros(S, G, 3 + G + C, dtype=dt)
        th[:, :, 0], th[:, :, 1] = torch.log(g0), torch.log(k0)
        if S > 1:
            th[1:, :, 3:3 + G] = 0.5 * torch.randn(S - 1, G, G, generator=gen, dtype=dt)
            th[1:, :, 0] += 0.5 * torch.randn(S - 1, G, generator=gen, dtype=dt)
            th[1:, :, 1] += 0.5 * torch.randn(S - 1, G, generator=gen, dtype=dt)
        return th

    Z = (Xt - Xt.mean(dim=0)) / sd_x  # regulators standardised (N, G)

    def objective(th: torch.Tensor) -> torch.Tensor:
        g, k, b = torch.exp(th[..., 0]), torch.exp(th[..., 1]), th[..., 2]
        v = th[..., 3:3 + G] * mask  # (S, G targets, G regulators), standardised units
        u = torch.einsum("sij,nj->sni", v, Z) + b[:, None, :]
        if input_window is not None:
            u = u + torch.einsum("sic,nc->sni", th[..., 3 + G:], It)
        pred = g[:, None, :] * torch.sigmoid(u) - k[:, None, :] * Xt[None]
        fit = (((pred - Dt[None]) / sd_d) ** 2).mean(dim=1)  # (S, G)
        eps = 1e-8
        pen = l1 * torch.sqrt(v * v + eps).sum(dim=2)
        if input_window is not None:
            pen = pen + l1_input * torch.sqrt(th[..., 3 + G:] ** 2 + eps).sum(dim=2)
        return fit + pen

    th = init().requires_grad_(True)
    opt = torch.optim.LBFGS([th], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        L = objective(th).sum()
        L.backward()
        return L

    from tqdm.auto import tqdm

    with tqdm(total=1, desc="infer_network", disable=not progress, leave=False) as bar:
        opt.step(closure)  # the starts and targets are independent problems in one batch
        bar.update(1)
    with torch.no_grad():
        L = objective(th)  # (S, G)
        best = L.argmin(dim=0)  # per target
        pick = th[best, torch.arange(G)]  # (G, P)
    v = (pick[:, 3:3 + G] * mask).numpy()  # scaled weights, target-major
    w = v / sd_x.numpy()[None, :]  # weights in data units: u = Σ w x + b'
    b = (pick[:, 2] - torch.as_tensor(v) @ (Xt.mean(dim=0) / sd_x)).numpy()
    src, tgt = net.sources, net.targets_idx
    table = pd.DataFrame({"source": [genes[j] for j in src], "target": [genes[i] for i in tgt],
                          "weight": w[tgt, src], "score": np.abs(v[tgt, src])})
    table = table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    model = Sigmoid(net, production=torch.exp(pick[:, 0]).numpy(), degradation=torch.exp(pick[:, 1]).numpy(),
                    weight=w[tgt, src], bias=b)
    inputs = None
    if input_window is not None:
        inputs = pd.DataFrame(pick[:, 3 + G:].numpy().T, index=conds, columns=genes)
    return InferredNetwork(edges=table, model=model, inputs=inputs, loss=L[best, torch.arange(G)].numpy())


# -------------------------------------------------------------------- scoring
def _edge_scores(scores: Any, genes: Sequence[str] | None) -> tuple[pd.Series, list[str]]:
    """Scores as a Series indexed by (source, target), and the gene list."""
    if isinstance(scores, InferredNetwork):
        scores = scores.edges
    if isinstance(scores, pd.DataFrame) and {"source", "target", "score"} <= set(scores.columns):
        s = scores.set_index(["source", "target"])["score"].astype(float)
    elif isinstance(scores, pd.DataFrame):  # square: rows = regulators, columns = targets
        if list(scores.index) != list(scores.columns):
            raise ValueError("a square score table needs the same genes as rows (regulators) and columns (targets)")
        s = scores.stack().astype(float)
        s.index = s.index.set_names(["source", "target"])
    elif isinstance(scores, pd.Series):
        s = scores.astype(float)
    else:
        raise TypeError("scores must be an InferredNetwork, a DataFrame with source/target/score columns, a square "
                        "regulator x target DataFrame, or a Series indexed by (source, target)")
    if genes is None:
        genes = sorted(set(s.index.get_level_values(0)) | set(s.index.get_level_values(1)))
    if s.isna().any():
        raise ValueError(f"scores contain NaN for {list(s[s.isna()].index[:5])}")
    return s, list(genes)


def _gold_pairs(gold: Any) -> set[tuple[str, str]]:
    if isinstance(gold, Network):
        return {(e.source, e.target) for e in gold.edges}
    if isinstance(gold, pd.DataFrame):
        cols = list(gold.columns)
        if {"source", "target"} <= set(cols):
            g = gold if "label" not in cols else gold[gold["label"].astype(float) > 0]
            return set(zip(g["source"].astype(str), g["target"].astype(str)))
        if len(cols) >= 2:  # unnamed: regulator, target[, 0/1]
            g = gold if len(cols) == 2 else gold[gold.iloc[:, 2].astype(float) > 0]
            return set(zip(g.iloc[:, 0].astype(str), g.iloc[:, 1].astype(str)))
    if isinstance(gold, Iterable):
        return {(str(a), str(b)) for a, b, *_ in gold}
    raise TypeError("gold must be a Network, a DataFrame (source, target[, label]) or (source, target) pairs")


def score_edges(scores: Any, gold: Any, *, genes: Sequence[str] | None = None) -> dict[str, float]:
    r"""AUROC and AUPR of a ranking of directed edges against a gold standard.

    The candidates are all ordered pairs ``j -> i`` of ``genes`` with ``i != j`` (the DREAM
    convention); a pair without a score ranks last. Ties share their rank.

    - AUROC: the Mann-Whitney probability that a true edge outranks a false one (ties 1/2).
    - AUPR: average precision, ``Σ_k (R_k - R_{k-1}) P_k`` over the distinct score
      thresholds (the step-wise area; a random ranking scores the fraction of true edges).

    Parameters
    ----------
    scores : InferredNetwork, DataFrame ``source, target, score``, square DataFrame
        (regulators x targets) or Series indexed by ``(source, target)``; higher = more likely.
    gold : Network, DataFrame ``source, target[, label]`` (label 1 = edge; DREAM's headerless
        ``regulator target 0/1`` as read by pandas works too) or (source, target) pairs.
    genes : the gene universe (default: every gene in ``scores``).

    Returns
    -------
    ``{"auroc", "aupr", "n_true", "n_candidates"}``
    """
    s, genes = _edge_scores(scores, genes)
    true = _gold_pairs(gold)
    unknown = {g for pair in true for g in pair} - set(genes)
    if unknown:
        raise KeyError(f"gold-standard genes {sorted(unknown)} are not among the scored genes")
    pairs = [(a, b) for b in genes for a in genes if a != b]
    lookup = s.to_dict()
    vals = np.array([lookup.get(p, -np.inf) for p in pairs], dtype=float)
    y = np.array([p in true for p in pairs])
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the gold standard must contain both edges and non-edges among the candidates")
    from scipy.stats import rankdata

    finite = np.where(np.isfinite(vals), vals, np.nanmin(vals[np.isfinite(vals)], initial=0.0) - 1.0)
    ranks = rankdata(finite)  # ascending, ties averaged
    auroc = (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    order = np.argsort(-finite, kind="stable")
    v_sorted, y_sorted = finite[order], y[order]
    last = np.r_[np.nonzero(np.diff(v_sorted))[0], len(v_sorted) - 1]  # end of each tie group
    tp = np.cumsum(y_sorted)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    aupr = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return {"auroc": float(auroc), "aupr": aupr, "n_true": n_pos, "n_candidates": len(pairs)}


def baseline_scores(data: ExpressionData, method: str = "linear-ode", genes: Sequence[str] | None = None
                    ) -> pd.DataFrame:
    """Reference edge rankings, as a square regulators x targets DataFrame of scores.

    ``"correlation"``: ``|corr(x_j, x_i)|`` over all samples (symmetric: no direction).
    ``"linear-ode"``: least squares ``dx/dt ≈ A x + b`` with slopes from finite differences
    between consecutive samples of each course (levels at the interval midpoints);
    score ``|A_ij| sd(x_j)``.
    """
    genes = list(data.genes if genes is None else genes)
    courses = _courses(data, genes)
    if method == "correlation":
        X = np.concatenate([y for _, _, y in courses])
        C = np.abs(np.corrcoef(X.T))
        np.fill_diagonal(C, 0.0)
        return pd.DataFrame(np.nan_to_num(C), index=genes, columns=genes)
    if method == "linear-ode":
        Xs, Ds = [], []
        for _, t, y in courses:
            Ds.append(np.diff(y, axis=0) / np.diff(t)[:, None])
            Xs.append(0.5 * (y[1:] + y[:-1]))
        X, D = np.concatenate(Xs), np.concatenate(Ds)
        design = np.hstack([X, np.ones((len(X), 1))])
        coef, *_ = np.linalg.lstsq(design, D, rcond=None)  # (G + 1, G): column i = target i
        A = coef[:-1]  # A[j, i] = effect of regulator j on target i
        score = np.abs(A) * X.std(axis=0)[:, None]
        np.fill_diagonal(score, 0.0)
        return pd.DataFrame(score, index=genes, columns=genes)
    raise ValueError(f"unknown baseline {method!r}; allowed: 'correlation', 'linear-ode'")

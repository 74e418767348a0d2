"""The Model protocol: production minus degradation, with named, constrained parameters.

Every model writes its right-hand side as

    dx/dt = production(t, x, p) - degradation(t, x, p)        x: (B, G)

so perturbations (a production multiplier, an additive input, clamps) act on the
split without knowing the kinetics. Parameters are named; each has a *scope*
(``"gene"`` -> length G, ``"edge"`` -> length E, ``"global"`` -> length 1, or any
fixed length) and *bounds*. They are stored unconstrained in ``model.raw`` so an
optimizer can step freely:

    lower bound only:  value = lo + exp(u)
    upper bound only:  value = hi - exp(u)
    both bounds:       value = lo + (hi - lo) * sigmoid(u)
    unbounded:         value = u

A model holds ``P`` parameter sets at once (an ensemble): every parameter tensor
has shape ``(P_i, n)`` with ``P_i`` either 1 (shared) or ``P``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

__all__ = ["ParameterSpec", "Model", "FunctionModel", "LinearDegradation"]

Params = dict[str, Tensor]


@dataclass(frozen=True)
class ParameterSpec:
    """Definition of one named parameter.

    Attributes
    ----------
    name : str
    size : int
        Entries per parameter set (G for per-gene, E for per-edge, 1 for global).
    scope : str
        ``"gene"``, ``"edge"``, ``"global"`` or ``"vector"``: which labels index it.
    bounds : (float, float)
        Closed domain of the value; ``(0, inf)`` is a positive parameter.
    doc : str
        One-line meaning, with symbol.
    """

    name: str
    size: int
    scope: str = "gene"
    bounds: tuple[float, float] = (0.0, math.inf)
    doc: str = ""

    def to_unconstrained(self, value: Tensor) -> Tensor:
        lo, hi = self.bounds
        tiny = torch.finfo(value.dtype).tiny
        if math.isfinite(lo) and math.isfinite(hi):
            z = ((value - lo) / (hi - lo)).clamp(tiny, 1 - torch.finfo(value.dtype).eps)
            return torch.log(z) - torch.log1p(-z)
        if math.isfinite(lo):
            return torch.log((value - lo).clamp_min(tiny))
        if math.isfinite(hi):
            return torch.log((hi - value).clamp_min(tiny))
        return value

    def to_constrained(self, u: Tensor) -> Tensor:
        lo, hi = self.bounds
        if math.isfinite(lo) and math.isfinite(hi):
            return lo + (hi - lo) * torch.sigmoid(u)
        if math.isfinite(lo):
            return lo + torch.exp(u)
        if math.isfinite(hi):
            return hi - torch.exp(u)
        return u

    def derivative(self, u: Tensor) -> Tensor:
        """``d value / d u`` of :meth:`to_constrained`, elementwise (for forward sensitivities)."""
        lo, hi = self.bounds
        if math.isfinite(lo) and math.isfinite(hi):
            sig = torch.sigmoid(u)
            return (hi - lo) * sig * (1 - sig)
        if math.isfinite(lo):
            return torch.exp(u)
        if math.isfinite(hi):
            return -torch.exp(u)
        return torch.ones_like(u)

    def check(self, value: Tensor) -> None:
        lo, hi = self.bounds
        v = value.detach()
        if not torch.isfinite(v).all():
            raise ValueError(f"parameter {self.name!r} has non-finite values {self._offenders(~torch.isfinite(v), v)}")
        bad = (v < lo) | (v > hi)
        if bad.any():
            raise ValueError(f"parameter {self.name!r} must lie in [{lo}, {hi}]; "
                             f"got {self._offenders(bad, v)}")

    def _offenders(self, mask: Tensor, v: Tensor) -> str:
        idx = torch.nonzero(mask)[:3].tolist()
        return ", ".join(f"set {i[0]}, entry {i[1]}: {float(v[i[0], i[1]])}" for i in idx)


class Model(nn.Module):
    """Base of every kinetic model: ``dx/dt = production - degradation``.

    Subclasses set ``self.genes`` and call :meth:`_init_params` with their
    :class:`ParameterSpec` list and values, then implement :meth:`production`
    and :meth:`degradation` for batched states ``x`` of shape ``(B, G)`` and
    per-row parameters ``p[name]`` of shape ``(B, size)``.

    Attributes
    ----------
    genes : list[str]
        State variable names (G).
    specs : dict[str, ParameterSpec]
    raw : nn.ParameterDict
        Unconstrained storage, ``(P_i, size)`` per parameter.
    autonomous : bool
        True when the kinetics do not depend on ``t`` explicitly (the implicit solvers
        then skip ``∂f/∂t``); False by default, which is always correct.
    """

    genes: list[str]
    autonomous: bool = False

    def _init_params(self, specs: Sequence[ParameterSpec], values: Mapping[str, Any]) -> None:
        self.specs: dict[str, ParameterSpec] = {s.name: s for s in specs}
        self.raw = nn.ParameterDict()
        for spec in specs:
            self.raw[spec.name] = nn.Parameter(spec.to_unconstrained(self._canonical(spec, values[spec.name])))
        self._check_sets()

    def _canonical(self, spec: ParameterSpec, value: Any) -> Tensor:
        """Scalar, ``(size,)`` or ``(P, size)`` -> float64 ``(P, size)``, validated."""
        if isinstance(value, Tensor):
            t = value.detach().to(torch.float64).cpu()
        else:
            try:
                t = torch.as_tensor(np.asarray(value, dtype=np.float64))
            except (TypeError, ValueError):
                raise TypeError(f"parameter {spec.name!r} must be numeric, got {type(value).__name__}") from None
        if t.ndim == 0:
            t = t.expand(1, spec.size)
        elif t.ndim == 1 and t.shape[0] == spec.size:
            t = t[None]
        elif t.ndim == 2 and t.shape[1] == spec.size:
            pass
        elif t.ndim == 1 and spec.size == 1:
            t = t[:, None]
        else:
            per = {"gene": "per gene", "edge": "per edge"}.get(spec.scope, "entries")
            raise ValueError(f"parameter {spec.name!r} has shape {tuple(t.shape)}; allowed: a scalar, "
                             f"({spec.size},) ({per}) or (P, {spec.size}) for an ensemble of P sets")
        t = t.clone()
        spec.check(t)
        return t

    def _check_sets(self) -> None:
        sizes = {k: v.shape[0] for k, v in self.raw.items()}
        many = {s for s in sizes.values() if s > 1}
        if len(many) > 1:
            raise ValueError(f"parameter ensembles disagree on the number of sets P: {sizes}; each must be 1 or P")

    # ------------------------------------------------------------ parameters
    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_sets(self) -> int:
        """Number of parameter sets P (1 unless an ensemble)."""
        return max((v.shape[0] for v in self.raw.values()), default=1)

    @property
    def params(self) -> Params:
        """Constrained parameter values, ``name -> (P_i, size)`` tensors (differentiable)."""
        return {k: self.specs[k].to_constrained(u) for k, u in self.raw.items()}

    def set_params(self, **values: Any) -> Model:
        """Replace parameter values in place (scalar, ``(size,)`` or ``(P, size)``); returns self."""
        for name, value in values.items():
            spec = self._spec(name)
            u = spec.to_unconstrained(self._canonical(spec, value)).to(self.raw[name].device)
            self.raw[name] = nn.Parameter(u)
        self._check_sets()
        return self

    def _spec(self, name: str) -> ParameterSpec:
        if name not in self.specs:
            raise KeyError(f"unknown parameter {name!r}; {type(self).__name__} has {list(self.specs)}")
        return self.specs[name]

    def labels(self, name: str) -> list[str]:
        """Entry labels of parameter ``name``: gene names, edge strings, or indices."""
        spec = self._spec(name)
        if spec.scope == "gene":
            return list(self.genes)
        return [str(i) for i in range(spec.size)] if spec.size > 1 else [""]

    def param_table(self) -> pd.DataFrame:
        """Long table ``parameter_set, name, entry, value`` of every parameter."""
        frames = []
        for name, value in self.params.items():
            v = value.detach().cpu().numpy()
            labels = self.labels(name)
            sets = np.repeat(np.arange(v.shape[0]), v.shape[1])
            frames.append(pd.DataFrame({"parameter_set": sets, "name": name,
                                        "entry": np.tile(labels, v.shape[0]), "value": v.reshape(-1)}))
        return pd.concat(frames, ignore_index=True)

    def row_params(self, index: Tensor | None, n_rows: int, *, device: torch.device,
                   dtype: torch.dtype, overrides: Mapping[str, Any] | None = None) -> Params:
        """Per-row parameters ``name -> (n_rows, size)``.

        ``index`` (n_rows,) picks each row's parameter set (``None``: row i uses set
        i, or set 0 when shared). Gradients flow back to ``self.raw``.
        """
        values = self.params
        for name, value in (overrides or {}).items():
            spec = self._spec(name)
            if isinstance(value, Tensor):  # keeps its autograd graph (or forward-mode tangent)
                v = value.expand(1, spec.size) if value.ndim == 0 else (value[None] if value.ndim == 1 else value)
                if v.ndim != 2 or v.shape[1] != spec.size:
                    raise ValueError(f"parameter {name!r} override has shape {tuple(value.shape)}; allowed: a "
                                     f"scalar, ({spec.size},) or (P, {spec.size})")
                spec.check(v.detach())
            else:
                v = self._canonical(spec, value)
            values[name] = v
        out: Params = {}
        for name, v in values.items():
            v = v.to(device=device, dtype=dtype)
            if v.shape[0] == 1:
                out[name] = v.expand(n_rows, v.shape[1])
            elif index is not None:
                out[name] = v.index_select(0, index.to(device))
            elif v.shape[0] == n_rows:
                out[name] = v
            else:
                raise ValueError(f"parameter {name!r} has {v.shape[0]} sets but the batch has {n_rows} rows")
        return out

    # --------------------------------------------------------------- kinetics
    def production(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """Production rates ``(B, G)``."""
        raise NotImplementedError

    def degradation(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """Degradation rates ``(B, G)``."""
        raise NotImplementedError

    def production_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params
                       ) -> tuple[Tensor, Tensor]:
        """Production (B, G) and its directional derivatives (B, q, G) along q tangents.

        ``x_dot`` (B, q, G) are state tangents and ``p_dot`` ``{name: (B, q, size)}`` tangents of
        (constrained) parameters; names not in ``p_dot`` are held fixed. This is the forward
        sensitivity right-hand side ``∂P/∂x ẋ + ∂P/∂θ θ̇``. The default uses ``torch.func.jvp``
        (exact, any model); models override it with closed forms for speed (see :class:`Hill`).
        """
        return _jvp_by_autodiff(self.production, self, t, x, p, x_dot, p_dot)

    def degradation_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params
                        ) -> tuple[Tensor, Tensor]:
        """Degradation (B, G) and its directional derivatives (B, q, G); see :meth:`production_jvp`."""
        return _jvp_by_autodiff(self.degradation, self, t, x, p, x_dot, p_dot)

    def prepare(self, p: Params) -> Params:
        """Per-solve precomputation from per-row parameters (differentiable); identity by default.

        ``simulate`` calls it once and passes the result to every RHS evaluation, so
        quantities that depend only on parameters are not recomputed each stage.
        """
        return p

    def rhs(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``dx/dt = production - degradation``, ``(B, G)``."""
        return self.production(t, x, p) - self.degradation(t, x, p)

    def perturbation_targets(self, name: str) -> tuple[list[int], list[int], list[int]] | None:
        """State indices a perturbation of gene ``name`` acts on: ``(production, knockout, level)``
        -- whose production a knockout/knockdown/overexpression scales, which states a knockout
        starts at 0, and which state a clamp holds. ``None`` if the name is unknown. One state
        per gene here; multi-species models (:class:`genenet.TwoStage`) map a gene to several."""
        try:
            i = list(self.genes).index(name)
        except ValueError:
            return None
        return [i], [i], [i]

    def observe(self, t: Tensor, x: Tensor, p: Params) -> dict[str, Tensor]:
        """Quantities the model declares beside its states (``observables``: SBML assignment rules,
        compartment sizes, user-named expressions such as a total ``A + AB``) at states ``x`` (N, G),
        times ``t`` (N,) and row parameters ``p``: name -> (N,). None here (the default).
        :func:`genenet.simulate` stores them on the trajectory (``traj["name"]``, (B, T))"""
        return {}

    def conservation_laws(self) -> tuple[np.ndarray, list[int]] | None:
        """Linear conservation laws ``L dx/dt = 0`` for every state and parameter value: ``L`` (m, G)
        in reduced row echelon form and its pivot states (m), one per law, or ``None`` (the default:
        no law). Steady states then solve the reduced system (the laws' totals fixed by the start,
        the pivot states' equations replaced by them) and judge stability on the other directions."""
        return None

    def default_x0(self, n_rows: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Initial state when none is given: all zeros, ``(n_rows, G)``."""
        return torch.zeros(n_rows, self.n_genes, device=device, dtype=dtype)

    def forward(self, t: Tensor, x: Tensor, p: Params) -> Tensor:  # nn.Module protocol
        return self.rhs(t, x, p)

    def extra_repr(self) -> str:
        return f"{self.n_genes} genes, {self.n_sets} parameter set(s), parameters {list(self.specs)}"

    # ------------------------------------------------------------ user models
    @staticmethod
    def from_functions(
        genes: Sequence[str],
        production: Callable[[Tensor, Tensor, Params], Tensor],
        degradation: Callable[[Tensor, Tensor, Params], Tensor],
        params: Mapping[str, Any],
        *,
        bounds: Mapping[str, tuple[float, float]] | None = None,
    ) -> FunctionModel:
        """A model from two plain functions and a dict of parameter values.

        Parameters
        ----------
        genes : sequence of str
            State variable names (G).
        production, degradation : callable ``(t (B,), x (B, G), p) -> (B, G)``
            ``p[name]`` has shape ``(B, n)``: ``(B, 1)`` for a scalar parameter (so it
            broadcasts against ``x``), ``(B, n)`` for a length-n vector.
        params : dict name -> value
            Scalar, 1-D ``(n,)`` or 2-D ``(P, n)`` (an ensemble of P sets).
        bounds : dict name -> (lo, hi), optional
            Domain per parameter; default ``(0, inf)`` (positive, stored as log).

        Example
        -------
        >>> m = gn.Model.from_functions(["x"], lambda t, x, p: p["g"] + 0 * x,
        ...                             lambda t, x, p: p["k"] * x, {"g": 2.0, "k": 0.5})
        """
        return FunctionModel(genes, production, degradation, params, bounds=bounds)

    @staticmethod
    def from_equations(equations: Mapping[str, Any], params: Mapping[str, Any] | None = None, *,
                       bounds: Mapping[str, tuple[float, float]] | None = None,
                       initial: Mapping[str, float] | None = None,
                       observables: Mapping[str, Any] | None = None) -> Model:
        """A model from one right-hand side per species as text or sympy, e.g.
        ``{"U": "a * hill_rep(V, K, n) - U", "V": "a * hill_rep(U, K, n) - V"}``; terms with a minus
        sign are degradation, the rest synthesis. See :func:`genenet.kinetics.from_equations`."""
        from ..kinetics import from_equations

        return from_equations(equations, params, bounds=bounds, initial=initial, observables=observables)


class CompiledForm:
    """Mixin for network models whose native kernel is their compiled symbolic form
    (:func:`genenet.kinetics.symbolic.symbolic_form`: one scalar parameter per gene or edge entry,
    ``production_A``, ``weight_A_B``): :meth:`native_spec` gathers those scalars from ``p``.
    A subclass that overrides the kinetics gets no native spec (its own equations are not the
    form's): it runs on the torch loop."""

    _form_kinetics = ("production", "degradation", "prepare")

    def native_spec(self, p: Params) -> dict | None:
        """The native kernels' spec (:mod:`genenet.native.compiled`): the same equations as a compiled
        symbolic model (built once per network), its parameter matrix gathered from ``p``
        (differentiable: gradients and tangents flow back to these parameters). None for a
        subclass with other kinetics or where no kernel builds."""
        owner = next(c for c in type(self).__mro__ if CompiledForm in c.__bases__)
        if any(getattr(type(self), m) is not getattr(owner, m) for m in self._form_kinetics):
            return None
        form = self.__dict__.get("_native_form")
        if form is None:
            from ..kinetics.symbolic import _sid, symbolic_form

            sym = symbolic_form(self, nonnegative=True)
            # each scalar parameter of the form is (name, entry) of ours: "threshold_A_B" is edge A -> B
            edges = [f"{_sid(a)}_{_sid(b)}" for a, b, _ in self.net.edges]
            genes = [_sid(g) for g in self.net.genes]
            where, k = {}, 0
            for name in self.specs:
                labels = genes if self._spec(name).scope == "gene" else edges
                where.update({f"{name}_{lab}": k + j for j, lab in enumerate(labels)})
                k += self._spec(name).size
            perm = torch.as_tensor([where[n] for n in sym.param_names])
            form = self.__dict__["_native_form"] = (sym, perm)
        sym, perm = form
        B = max(p[name].shape[0] for name in self.specs)
        flat = torch.cat([p[name].expand(B, -1) for name in self.specs], dim=1)
        return sym.native_spec_from(flat.index_select(1, perm.to(flat.device)), flat.dtype)


class LinearDegradation:
    """Mixin for models whose degradation is first order, ``k_i x_i``: the rate, its tangents
    and its Jacobian in closed form. The rates come from :meth:`_degradation_rates` (the
    per-gene parameter ``degradation`` by default; multi-species models concatenate theirs)."""

    _rate_names: tuple[str, ...] = ("degradation",)

    def _degradation_rates(self, p: Params) -> Tensor:
        return torch.cat([p[name] for name in self._rate_names], dim=1)

    def degradation(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``k_i * x_i``, shape ``(B, G)``."""
        return self._degradation_rates(p) * x

    def degradation_jvp(self, t: Tensor, x: Tensor, p: Params, x_dot: Tensor, p_dot: Params
                        ) -> tuple[Tensor, Tensor]:
        """``k x`` and its tangents ``k ẋ + k̇ x``, (B, G) and (B, q, G)."""
        k = self._degradation_rates(p)
        D_dot = k[:, None, :] * x_dot
        if any(name in p_dot for name in self._rate_names):
            k_dot = torch.cat([p_dot[name] if name in p_dot else x_dot.new_zeros(*x_dot.shape[:2], p[name].shape[1])
                               for name in self._rate_names], dim=2)
            D_dot = D_dot + k_dot * x[:, None, :]
        return k * x, D_dot

    def degradation_diagonal(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``∂D_i/∂x_i = k_i``, shape ``(B, G)``: the whole Jacobian of an elementwise degradation,
        which lets a solver add it to a Jacobian's diagonal in place instead of forming ``diag(k)``."""
        return self._degradation_rates(p).expand_as(x)

    def degradation_jacobian(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        """``diag(k)``, shape ``(B, G, G)``."""
        return torch.diag_embed(self.degradation_diagonal(t, x, p))


def _jvp_by_autodiff(fn: Callable, model: Model, t: Tensor, x: Tensor, p: Params, x_dot: Tensor,
                     p_dot: Params) -> tuple[Tensor, Tensor]:
    """``fn(t, x, p)`` and its q directional derivatives ``J ẋ`` (B, q, G), by reverse mode twice.

    The q tangents are folded into the batch (``B * q`` rows, one evaluation). With ``u`` a dummy
    cotangent, ``g(u) = Jᵀ u`` is linear in ``u``, so the vector-Jacobian product of ``g`` with the
    tangent, ``∂(g · ẋ)/∂u = J ẋ``, is the JVP: one forward and two backward passes. (Forward-mode
    dual numbers would need one pass, but in torch 2.13 a dual ``mul`` runs a Python decomposition,
    ~0.4 ms per operation against ~5 µs: the LM fit of a one-parameter user model took 13 s.)
    Derived (``_``-prefixed) entries of a prepared ``p`` are rebuilt from the differentiated
    parameters by ``model.prepare``, so their tangents follow; inputs that require grad outside
    keep their graph, so the result is differentiable as the dual-number one was."""
    B, q, G = x_dot.shape
    base = {k: v for k, v in p.items() if not k.startswith("_")}
    outer = torch.is_grad_enabled() and (x.requires_grad or any(v.requires_grad for v in base.values()))

    def rep(v: Tensor) -> Tensor:
        return v.expand(B, *v.shape[1:]).repeat_interleave(q, dim=0) if v.ndim else v

    def leaf(v: Tensor) -> Tensor:
        return v if v.requires_grad else v.detach().requires_grad_()

    with torch.enable_grad():
        xx = leaf(rep(x))
        pp = {k: (leaf(rep(v)) if k in p_dot else rep(v)) for k, v in base.items()}
        out = fn(rep(t) if t is not None else t, xx, model.prepare(pp))
        inputs = [xx, *(pp[k] for k in p_dot)]
        dots = [x_dot.reshape(B * q, G), *(p_dot[k].reshape(B * q, -1) for k in p_dot)]
        tangent = None
        if isinstance(out, Tensor) and out.requires_grad:
            u = torch.zeros_like(out, requires_grad=True)
            grads = torch.autograd.grad(out, inputs, u, create_graph=True, allow_unused=True)
            pairs = [(g, d) for g, d in zip(grads, dots) if g is not None and g.requires_grad]
            if pairs:
                tangent = torch.autograd.grad([g for g, _ in pairs], u, [d for _, d in pairs], create_graph=outer,
                                              allow_unused=True)[0]
    tangent = torch.zeros_like(x_dot) if tangent is None else tangent.reshape(B, q, G)
    return fn(t, x, p), tangent


class FunctionModel(Model):
    """A :class:`Model` whose production and degradation are user functions."""

    def __init__(self, genes: Sequence[str], production: Callable, degradation: Callable,
                 params: Mapping[str, Any], *, bounds: Mapping[str, tuple[float, float]] | None = None) -> None:
        super().__init__()
        genes = [str(g) for g in genes]
        if not genes:
            raise ValueError("a model needs at least one gene")
        if len(set(genes)) != len(genes):
            raise ValueError(f"duplicate gene names in {list(genes)}")
        for name, fn in (("production", production), ("degradation", degradation)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable (t, x, p) -> (B, G), got {type(fn).__name__}")
        bounds = dict(bounds or {})
        unknown = set(bounds) - set(params)
        if unknown:
            raise KeyError(f"bounds name unknown parameters {sorted(unknown)}; parameters are {list(params)}")
        self.genes = genes
        self._production, self._degradation = production, degradation
        specs = []
        for name, value in params.items():
            arr = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
            size = 1 if arr.ndim == 0 else arr.shape[-1]
            scope = "global" if arr.ndim == 0 else ("gene" if size == len(genes) else "vector")
            specs.append(ParameterSpec(name, size, scope, tuple(bounds.get(name, (0.0, math.inf)))))
        self._init_params(specs, params)

    def production(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        return self._production(t, x, p)

    def degradation(self, t: Tensor, x: Tensor, p: Params) -> Tensor:
        return self._degradation(t, x, p)

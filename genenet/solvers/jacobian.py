"""Derivatives of a batched right-hand side by forward-mode autodiff, for the implicit methods
when a model has no closed form: per-row Jacobian ``∂f/∂x`` and time derivative ``∂f/∂t``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["autodiff_jacobian", "autodiff_time_derivative"]


def autodiff_jacobian(f: Any, t: Tensor, x: Tensor, args: dict) -> Tensor:
    """Per-row Jacobian ``d f(t, x, args)_b / d x_b`` by ``vmap(jacfwd)``, (B, G, G); a fresh tensor
    (not a view), which the implicit methods overwrite with their iteration matrix."""
    from torch.func import jacfwd, vmap

    def single(tr: Tensor, xr: Tensor, ar: dict) -> Tensor:
        return f(tr[None], xr[None], _unsqueeze_tree(ar))[0]

    return vmap(jacfwd(single, argnums=1))(t, x, args).clone()


def autodiff_time_derivative(f: Any, t: Tensor, x: Tensor, args: dict) -> Tensor:
    """``∂f/∂t`` (B, G) by one forward-mode product along ``dt = 1`` for every row."""
    from torch.func import jvp

    return jvp(lambda tt: f(tt, x, args), (t,), (torch.ones_like(t),))[1]


def _unsqueeze_tree(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree[None]
    if isinstance(tree, dict):
        return {k: _unsqueeze_tree(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_unsqueeze_tree(v) for v in tree)
    return tree

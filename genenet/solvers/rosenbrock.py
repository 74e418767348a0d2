r"""Batched adaptive Rosenbrock (linearly implicit) methods for stiff systems: Rodas4 and Rodas5P.

One step of an s-stage Rosenbrock method in Hairer & Wanner's transformed form
(Solving ODEs II, IV.7), every row with its own step ``h``:

    W = I / (h γ) - J,                                  J = ∂f/∂x (t, y), one LU per step
    U_i = y + Σ_{j<i} a_ij k_j
    W k_i = f(t + c_i h, U_i) + Σ_{j<i} (C_ij / h) k_j + h d_i ∂f/∂t (t, y)
    y1 = y + Σ b_j k_j,       err = Σ e_j k_j

The methods here are stiffly accurate and L-stable: ``y1`` is the last stage value plus
its increment (``b`` is the last row of ``a`` plus one), and the error estimate is the
last increment. Every stage reuses the row's one factorisation of ``W``
(``torch.linalg.lu_factor_ex`` / ``lu_solve``, batched over rows); a row whose ``W`` is
singular rejects the step and retries smaller. Dense output (order 3 for Rodas4, 4 for
Rodas5P):

    y(t + θh) = (1-θ) y + θ (y1 + (1-θ) (D_1 + θ (D_2 + θ D_3 ...))),   D_r = Σ_j H_rj k_j

Coefficients: Rodas4 (Hairer & Wanner 1996) and Rodas5P (Steinebach 2023), as tabulated
in OrdinaryDiffEq.jl. Every operation is a torch op, so backpropagation through the
steps (LU included) gives the exact derivative of the computed solution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["RosenbrockTableau", "Rosenbrock", "RODAS4", "RODAS5"]


@dataclass(frozen=True)
class RosenbrockTableau:
    """Coefficients of a stiffly accurate Rosenbrock method in transformed form (see module doc).

    ``a``, ``C`` (s, s) strictly lower triangular; ``c``, ``d`` (s,); ``H`` (m, s) dense output.
    Built from the last explicit stage by :meth:`stiffly_accurate`.
    """

    gamma: float
    a: np.ndarray
    C: np.ndarray
    c: np.ndarray
    d: np.ndarray
    b: np.ndarray
    e: np.ndarray
    H: np.ndarray
    order: int
    error_order: int
    fsal: bool = True  # step() returns f(t + h, y1), reused as the next step's first stage

    @property
    def stages(self) -> int:
        return len(self.c)

    @staticmethod
    def stiffly_accurate(gamma: float, a_explicit: list[list[float]], C: list[list[float]], c: list[float],
                         d: list[float], H: list[list[float]], order: int) -> RosenbrockTableau:
        """Tableau whose stages after the given ``a`` rows each add the previous increment
        (``U_{i+1} = U_i + k_i``, at ``t + h``), ``y1 = U_s + k_s`` and ``err = k_s``."""
        s = len(C)
        a = np.zeros((s, s))
        for i, row in enumerate(a_explicit):
            a[i, : len(row)] = row
        for i in range(len(a_explicit), s):
            a[i] = a[i - 1]
            a[i, i - 1] += 1.0
        b = a[-1].copy()
        b[-1] += 1.0
        e = np.zeros(s)
        e[-1] = 1.0
        Cm = np.zeros((s, s))
        for i, row in enumerate(C):
            Cm[i, : len(row)] = row
        cc = np.ones(s)
        cc[: len(c)] = c
        dd = np.zeros(s)
        dd[: len(d)] = d
        return RosenbrockTableau(gamma, a, Cm, cc, dd, b, e, np.asarray(H, dtype=np.float64), order, order - 1)


class Rosenbrock:
    """A batched adaptive Rosenbrock method (see module doc); used through ``integrate``.

    ``step(f, t, y, f0, h, args, jac=, tgrad=)`` returns ``(y1, err, dense, f1, singular)``:
    new state (B, G), error estimate (B, G), what :meth:`interpolate` needs, ``f(t + h, y1)``
    and the rows whose ``W`` was singular (B,).
    """

    implicit = True
    adaptive = True

    def __init__(self, name: str, tableau: RosenbrockTableau) -> None:
        self.name = name
        self.tableau = tableau

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def rhs_per_step(self) -> int:
        return self.tableau.stages  # stages 2..s, plus f(t + h, y1)

    def step(self, f: Callable, t: Tensor, y: Tensor, f0: Tensor, h: Tensor, args: dict, *,
             jac: Callable[[Tensor, Tensor, dict], Tensor],
             tgrad: Callable[[Tensor, Tensor, dict], Tensor | None] | None = None
             ) -> tuple[Tensor, Tensor, tuple[Tensor, ...], Tensor, Tensor]:
        tab = self.tableau
        B, G = y.shape
        # rows with h = 0 (finished, not yet dropped) get a harmless h: their step is discarded
        h = torch.where(h > 0, h, torch.ones_like(h))
        hc = h[:, None]
        # W = I / (h γ) - J formed in place in the fresh tensor ``jac`` returns: (B, G, G) passes and
        # allocations are what a step costs beside the LU on a large network (contiguous(): a
        # broadcast Jacobian cannot be written in place)
        W = jac(t, y, args).contiguous().neg_()
        W.diagonal(dim1=1, dim2=2).add_((1.0 / (tab.gamma * h))[:, None])
        eye = torch.eye(G, dtype=y.dtype, device=y.device)
        LU, pivots, info = torch.linalg.lu_factor_ex(W)
        singular = (info != 0) | ~torch.isfinite(W.sum(dim=(1, 2)))  # one NaN/inf entry makes the sum non-finite
        if bool(singular.any()):  # keep the solve finite; these rows are rejected
            LU = torch.where(singular[:, None, None], eye.expand(B, G, G), LU)
            pivots = torch.where(singular[:, None], torch.arange(1, G + 1, device=y.device, dtype=pivots.dtype),
                                 pivots)
        ft = tgrad(t, y, args) if tgrad is not None else None
        ks: list[Tensor] = []
        for i in range(tab.stages):
            if i == 0:
                fi = f0
            else:
                U = y
                for j in range(i):
                    if tab.a[i, j] != 0.0:
                        U = U + float(tab.a[i, j]) * ks[j]
                fi = f(t + float(tab.c[i]) * h, U, args)
            rhs = fi
            for j in range(i):
                if tab.C[i, j] != 0.0:
                    rhs = rhs + (float(tab.C[i, j]) / hc) * ks[j]
            if ft is not None and tab.d[i] != 0.0:
                rhs = rhs + (float(tab.d[i]) * hc) * ft
            ks.append(torch.linalg.lu_solve(LU, pivots, rhs[..., None])[..., 0])
        y1 = y
        for j in range(tab.stages):
            if tab.b[j] != 0.0:
                y1 = y1 + float(tab.b[j]) * ks[j]
        err = sum(float(tab.e[j]) * ks[j] for j in range(tab.stages) if tab.e[j] != 0.0)
        err = torch.where(singular[:, None], torch.full_like(err, float("inf")), err)
        dense = tuple(sum(float(tab.H[r, j]) * ks[j] for j in range(tab.stages) if tab.H[r, j] != 0.0)
                      for r in range(tab.H.shape[0]))
        f1 = f(t + h, y1, args)
        return y1, err, (y1, *dense), f1, singular

    def interpolate(self, y0: Tensor, h: Tensor, ks: tuple[Tensor, ...], theta: Tensor) -> Tensor:
        """Dense output at theta (B, K) -> (B, K, G) (see module doc)."""
        y1, *D = ks
        th = theta[..., None]
        acc = D[-1][:, None, :]
        for Dr in reversed(D[:-1]):
            acc = Dr[:, None, :] + th * acc
        return (1 - th) * y0[:, None, :] + th * (y1[:, None, :] + (1 - th) * acc)


RODAS4 = Rosenbrock("rodas4", RosenbrockTableau.stiffly_accurate(
    gamma=0.25,
    a_explicit=[[], [1.544], [0.9466785280815826, 0.2557011698983284],
                [3.314825187068521, 2.896124015972201, 0.9986419139977817],
                [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950]],
    C=[[], [-5.6688],
       [-2.430093356833875, -0.2063599157091915],
       [-0.1073529058151375, -9.594562251023355, -20.47028614809616],
       [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160],
       [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054]],
    c=[0.0, 0.386, 0.21, 0.63],
    d=[0.25, -0.1043, 0.1035, -0.03620000000000023],
    H=[[10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823, 1.025137723295662, 0.0],
       [-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386, -6.594389125716872, 0.0]],
    order=4))

RODAS5 = Rosenbrock("rodas5", RosenbrockTableau.stiffly_accurate(
    gamma=0.21193756319429014,
    a_explicit=[[], [3.0], [2.849394379747939, 0.45842242204463923],
                [-6.954028509809101, 2.489845061869568, -10.358996098473584],
                [2.8029986275628964, 0.5072464736228206, -0.3988312541770524, -0.04721187230404641],
                [-7.502846399306121, 2.561846144803919, -11.627539656261098, -0.18268767659942256,
                 0.030198172008377946]],
    C=[[], [-14.155112264123755],
       [-17.97296035885952, -2.859693295451294],
       [147.12150275711716, -1.41221402718213, 71.68940251302358],
       [165.43517024871676, -0.4592823456491126, 42.90938336958603, -5.961986721573306],
       [24.854864614690072, -3.0009227002832186, 47.4931110020768, 5.5814197821558125, -0.6610691825249471],
       [30.91273214028599, -3.1208243349937974, 77.79954646070892, 34.28646028294783, -19.097331116725623,
        -28.087943162872662],
       [37.80277123390563, -3.2571969029072276, 112.26918849496327, 66.9347231244047, -40.06618937091002,
        -54.66780262877968, -9.48861652309627]],
    c=[0.0, 0.6358126895828704, 0.4095798393397535, 0.9769306725060716, 0.4288403609558664],
    d=[0.21193756319429014, -0.42387512638858027, -0.3384627126235924, 1.8046452872882734, 2.325825639765069],
    H=[[25.948786856663858, -2.5579724845846235, 10.433815404888879, -2.3679251022685204, 0.524948541321073,
        1.1241088310450404, 0.4272876194431874, -0.17202221070155493],
       [-9.91568850695171, -0.9689944594115154, 3.0438037242978453, -24.495224566215796, 20.176138334709044,
        15.98066361424651, -6.789040303419874, -6.710236069923372],
       [11.419903575922262, 2.8879645146136994, 72.92137995996029, 80.12511834622643, -52.072871366152654,
        -59.78993625266729, -0.15582684282751913, 4.883087185713722]],
    order=5))

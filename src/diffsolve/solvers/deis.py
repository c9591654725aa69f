r"""DEIS: Adams-Bashforth exponential integrators on the noise prediction (Zhang & Chen 2023).

The probability-flow ODE in eps form has the exact solution (the exponential-integrator
form of DEIS with its DDIM reparametrisation rho = sigma/alpha = sigma~ = e^{-lambda}; paper
equation numbers not verified here, see docs/multistep_family.md)

    x_t/alpha_t = x_s/alpha_s + int_{rho_s}^{rho_t} eps(x_tau, tau) d rho.

AB-DEIS (the paper's polynomial-extrapolation integrator) replaces eps on [t_i, t_{i+1}]
by the polynomial through the last p evaluations, in an interpolation variable v:

    x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j C_ij eps_{i-j},
    C_ij = int_{t_i}^{t_{i+1}} (d rho/d tau) l_j(v(tau)) d tau
         = int_{lambda_i}^{lambda_{i+1}} -e^{-lambda} l_j(v(lambda)) d lambda,

l_j the Lagrange basis in v on v_i, ..., v_{i-p+1}. ``basis`` picks v:

* "t" (default; the paper's tAB-DEIS): the schedule's own time t (t = sigma for EDM,
  so there tAB = rhoAB);
* "rho": v = rho = sigma~ (rhoAB-DEIS) -- identical to k-diffusion's LMS (:mod:`.lms_ipndm`);
* "log_rho": v = log rho = -lambda -- what diffusers' ``DEISMultistepScheduler`` implements
  ("logrho"); equal to the noise-form exponential Adams method.

The weights are computed on the host at plan time in float64 by Gauss-Legendre quadrature
in lambda (``QUAD_NODES`` nodes per step, one vectorised t(lambda) call per step), with the
Lagrange basis evaluated on normalised nodes (v - v_i)/(v_{i+1} - v_i). Order 1 is DDIM
for every basis. Warm-up from the multistep engine (lower-order start: globally O(h^2)
for order 3; ``warmup="singlestep"`` restores order 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..core.schedules import EvalPoint, NoiseSchedule
from .base import check_choice, register
from .engines.history import WARMUPS, HistorySolver, LinearStep

Basis = Literal["t", "rho", "log_rho"]
QUAD_NODES = 16
_GL_X, _GL_W = np.polynomial.legendre.leggauss(QUAD_NODES)


def _variable(schedule: NoiseSchedule, basis: Basis, lams: np.ndarray) -> np.ndarray:
    if basis == "t":
        t = schedule.t_of_lam(torch.as_tensor(lams, dtype=torch.float64))
        return t.numpy()
    if basis == "rho":
        return np.exp(-lams)
    return -lams


def deis_weights(schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int, order: int,
                 basis: Basis) -> tuple[float, ...]:
    """C_ij (module docstring) for j = 0..order-1, by Gauss-Legendre quadrature in lambda."""
    lam_s, lam_t = points[i].lam, points[i + 1].lam
    h = lam_t - lam_s
    lam_q = lam_s + 0.5 * h * (_GL_X + 1.0)
    # d rho = -e^{-lambda} d lambda, written relative to rho_i = e^{-lam_s}
    dens = -points[i].sigma_edm * np.exp(-(lam_q - lam_s)) * (0.5 * h * _GL_W)
    past = np.array([points[i - k].lam for k in range(order)] + [lam_t])
    v = _variable(schedule, basis, np.concatenate([past, lam_q]))
    v_nodes, v_t, v_q = v[:order], v[order], v[order + 1:]
    scale = v_t - v_nodes[0]
    u_nodes = (v_nodes - v_nodes[0]) / scale
    u_q = (v_q - v_nodes[0]) / scale
    weights = []
    for j in range(order):
        basis_j = np.ones_like(u_q)
        for k in range(order):
            if k != j:
                basis_j = basis_j * (u_q - u_nodes[k]) / (u_nodes[j] - u_nodes[k])
        weights.append(float(np.sum(dens * basis_j)))
    return tuple(weights)


@register
@dataclass(frozen=True)
class DEIS(HistorySolver):
    """AB-DEIS (Zhang & Chen 2023, tAB/rhoAB-DEIS): exponential Adams-Bashforth on eps.

    1 NFE per step (+1-2 per warm-up step with ``warmup="singlestep"``).

    Args:
        solver_order: 1..3 (default 3).
        basis: interpolation variable of eps: "t" (tAB-DEIS, default), "rho" (= LMS) or
            "log_rho" (diffusers' DEIS).
        warmup: "lower_order" (the paper; globally O(h^2) for order 3) or "singlestep".
        lower_order_final: lower the order of the last steps on grids of fewer than 15 steps.
    """

    name = "deis"
    title = "DEIS tAB-1..3 (also ρAB, log-ρ)"
    reference = "Zhang & Chen 2023 (arXiv 2204.13902), AB-DEIS (tAB / rhoAB)"
    history_form = "noise"
    solver_order: int = 3
    basis: Basis = "t"

    def __post_init__(self) -> None:
        check_choice(self.name, "solver_order", self.solver_order, (1, 2, 3))
        check_choice(self.name, "warmup", self.warmup, WARMUPS)
        check_choice(self.name, "basis", self.basis, ("t", "rho", "log_rho"))

    @property
    def history_order(self) -> int:
        return int(self.solver_order)

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        p_s, p_t = points[i], points[i + 1]
        c = deis_weights(schedule, points, i, order, self.basis)
        return LinearStep(lin=p_t.alpha / p_s.alpha, weights=tuple(p_t.alpha * w for w in c))

r"""Linear multistep methods on the noise-prediction ODE in EDM coordinates: LMS and iPNDM.

With x~ = x/alpha, sigma~ = sigma/alpha = e^{-lambda} and eps = (x - alpha D)/sigma, the
probability-flow ODE of every schedule is

    dx~/dsigma~ = eps = (x~ - D)/sigma~          (Karras et al. 2022, eq. 4; DDIM eq. 14)

and an explicit multistep method on it reads

    x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j C_ij eps_{i-j}.

* LMS (k-diffusion ``sample_lms``, Crowson 2022): C_ij = int_{sigma~_i}^{sigma~_{i+1}} l_j
  d sigma~, l_j the Lagrange basis in sigma~ on nodes sigma~_i, ..., sigma~_{i-p+1}: the
  variable-step Adams-Bashforth method in sigma~. Computed exactly at plan time in float64
  as Delta sigma~ int_0^1 l_j(theta) d theta on normalised nodes (expint.exp_lagrange_weights
  at c = 0). This is also DEIS's rhoAB variant (Zhang & Chen 2023) and the
  "iPNDM with variable step size".
* iPNDM (Zhang & Chen 2023, appendix, "improved PNDM"): the DDIM transfer
  x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) eps' with eps' the fixed-coefficient
  Adams-Bashforth combination (55 eps_i - 59 eps_{i-1} + 37 eps_{i-2} - 9 eps_{i-3})/24
  and the lower-order AB formulas during warm-up (Bashforth & Adams 1883 coefficients, as in
  PNDM, Liu et al. 2022 eq. 12). The fixed coefficients assume steps uniform in sigma~;
  on other grids (e.g. uniform in lambda, Karras rho = 7) the step ratio is 1 + O(h) and
  the method is globally second order (measured, docs/multistep_family.md).

Warm-up (the engine's, :mod:`diffsolve.solvers.engines.history`): ``warmup="lower_order"``
(the papers) starts with orders 1, 2, ...; its first-order first step has local error O(h^2),
so the global error is O(h^2) asymptotically. ``warmup="singlestep"`` runs the first
``order - 1`` steps with DPM-Solver++(2S)/(3S), which restores the nominal global order up to 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.expint import exp_lagrange_weights
from ..core.schedules import EvalPoint, NoiseSchedule
from .base import check_choice, register
from .engines.history import ADAMS_BASHFORTH, WARMUPS, HistorySolver, LinearStep


def lms_weights(points: tuple[EvalPoint, ...], i: int, order: int) -> tuple[float, ...]:
    """C_ij = int_{s_i}^{s_{i+1}} l_j(s) ds, Lagrange basis in s = sigma~ on s_i .. s_{i-p+1}.

    Exact: Delta s int_0^1 l_j(theta) d theta on the normalised nodes
    theta_k = (s_{i-k} - s_i)/Delta s.
    """
    s_i = points[i].sigma_edm
    ds = points[i + 1].sigma_edm - s_i
    nodes = [(points[i - k].sigma_edm - s_i) / ds for k in range(order)]
    return tuple(ds * w for w in exp_lagrange_weights(nodes, 0.0))


def eps_step(points: tuple[EvalPoint, ...], i: int, weights: tuple[float, ...]) -> LinearStep:
    """x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j C_ij eps_{i-j} (module docstring)."""
    p_s, p_t = points[i], points[i + 1]
    return LinearStep(lin=p_t.alpha / p_s.alpha, weights=tuple(p_t.alpha * w for w in weights))


@dataclass(frozen=True)
class _EpsMultistep(HistorySolver):
    """Options of the eps-history solvers (not registered)."""

    solver_order: int = 4
    history_form = "noise"
    max_order: ClassVar[int] = 4

    def __post_init__(self) -> None:
        check_choice(self.name, "solver_order", self.solver_order,
                     tuple(range(1, self.max_order + 1)))
        check_choice(self.name, "warmup", self.warmup, WARMUPS)

    @property
    def history_order(self) -> int:
        return int(self.solver_order)


@register
@dataclass(frozen=True)
class LMS(_EpsMultistep):
    """Linear multistep (variable-step Adams-Bashforth) in sigma~ on dx~/dsigma~ = (x~ - D)/sigma~.

    k-diffusion's ``sample_lms``; coefficients are exact integrals of the Lagrange basis in
    sigma~ (module docstring). 1 NFE per step (plus 1-2 per warm-up step with
    ``warmup="singlestep"``).

    Args:
        solver_order: 1..4 (default 4, k-diffusion's ``order``); 1 is Euler in sigma~ (= DDIM).
        warmup: "lower_order" (k-diffusion; globally O(h^2) for order > 2) or "singlestep".
        lower_order_final: lower the order of the last steps on grids of fewer than 15 steps.
    """

    name = "lms"
    title = "linear multistep in σ, orders 1–4 (k-diffusion `sample_lms`)"
    reference = "Crowson, k-diffusion sample_lms (2022); Karras et al. 2022 eq. 4"

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        return eps_step(points, i, lms_weights(points, i, order))


@register
@dataclass(frozen=True)
class IPNDM(_EpsMultistep):
    """iPNDM: DDIM transfer with fixed Adams-Bashforth eps combinations (Zhang & Chen 2023).

    x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) sum_j b_j eps_{i-j}, b = (55, -59, 37, -9)/24
    after the lower-order warm-up (1), (3, -1)/2, (23, -16, 5)/12. Globally second order on
    grids that are not uniform in sigma~ (fixed coefficients); fourth order on uniform-sigma~
    grids with ``warmup="singlestep"``. 1 NFE per step (+1-2 per single-step warm-up step).

    Args:
        solver_order: 1..4 (default 4).
        warmup: "lower_order" (the paper) or "singlestep".
        lower_order_final: lower the order of the last steps on grids of fewer than 15 steps.
    """

    name = "ipndm"
    title = "iPNDM (fixed Adams weights)"
    reference = "Zhang & Chen 2023 (arXiv 2204.13902) App. iPNDM; Liu et al. 2022 PNDM eq. 12"
    @property
    def nominal_order(self) -> int:  # fixed weights: at most 2 on grids not uniform in sigma~
        return min(self.history_order, 2)

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        ds = points[i + 1].sigma_edm - points[i].sigma_edm
        return eps_step(points, i, tuple(ds * b for b in ADAMS_BASHFORTH[order]))

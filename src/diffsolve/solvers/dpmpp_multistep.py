r"""Multistep exponential integrators in data prediction: DPM-Solver++(2M) and (3M).

Every multistep step is one linear combination with weights precomputed on the grid:

    x_{i+1} = lin_i x_i + sum_j c_ij D_{i-j} [+ noise_std_i xi_i],   D_{i-j} from the history,

with lin_i = (sigma_{i+1}/sigma_i) e^{-eta h_i} exact (DPM-Solver++ eq. 9 / SEEDS eq. 9).

* DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): with r = h_{i-1}/h_i and
  w0 = alpha_{i+1}(1 - e^{-k h_i}),
  "midpoint":  c_0 = w0 (1 + 1/(2r)), c_1 = -w0/(2r)          (Alg. 2, the paper's rule)
  "heun":      c_0 = w0 + w1/r,       c_1 = -w1/r,  w1 = alpha k h phi_2(-k h)
* Exponential Adams-Bashforth of order s (used for DPM-Solver++(3M)): c_ij = alpha_{i+1} k h_i
  w_j with w_j = int_0^1 e^{-k h (1-theta)} l_j(theta) d theta, the Lagrange basis on the
  normalised past nodes theta_j = (lambda_{i-j} - lambda_i)/h_i. This is exact for D
  polynomial of degree < s in lambda, hence order s. It equals the Taylor form
  h phi_1 D + h^2 phi_2 D' + h^3 phi_3 D'' with divided-difference derivatives. NB: the
  widely copied "3M" update (dpm-solver, k-diffusion, diffusers) weights the D'' term by
  h phi_3 (D1_0 - D1_1)/(r0 + r1) ~ h^3 phi_3 D''/2, half the Taylor coefficient; see
  docs/solvers.md for our measurement of both.

Warm-up, lower order at the end and per-step order caps come from the multistep engine
(:mod:`diffsolve.solvers.engines.history`), shared with every other multistep family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..core.expint import exp_lagrange_weights, stage_coefficients
from ..core.schedules import EvalPoint, NoiseSchedule
from .base import check_choice, check_sde_options, register
from .engines.history import HistorySolver, LinearStep, check_order_caps


def adams_step(points: tuple[EvalPoint, ...], i: int, order: int, eta: float) -> LinearStep:
    """Exponential Adams-Bashforth weights on nodes i, i-1, ..., i-order+1 (module docstring)."""
    p_s, p_t = points[i], points[i + 1]
    h = p_t.lam - p_s.lam
    k = 1.0 + eta
    nodes = [(points[i - j].lam - p_s.lam) / h for j in range(order)]
    base = stage_coefficients(p_s, p_t, eta=eta)
    w = exp_lagrange_weights(nodes, -k * h)
    return LinearStep(lin=base.lin, weights=tuple(p_t.alpha * k * h * v for v in w),
                      noise_std=base.noise_std)


def two_step(points: tuple[EvalPoint, ...], i: int, eta: float,
             rule: Literal["midpoint", "heun"]) -> LinearStep:
    """DPM-Solver++(2M) weights (Lu et al. 2022b Alg. 2; "heun" as k-diffusion's 2M SDE)."""
    p_s, p_t = points[i], points[i + 1]
    c = stage_coefficients(p_s, p_t, eta=eta)
    r = (p_s.lam - points[i - 1].lam) / (p_t.lam - p_s.lam)
    slope_w = 0.5 * c.w0 if rule == "midpoint" else c.w1
    return LinearStep(lin=c.lin, weights=(c.w0 + slope_w / r, -slope_w / r),
                      noise_std=c.noise_std)


def kdiffusion_3m_step(points: tuple[EvalPoint, ...], i: int, eta: float) -> LinearStep:
    """k-diffusion's 3M SDE update (``sample_dpmpp_3m_sde``) as weights on D_i, D_{i-1}, D_{i-2}.

    With k h = (1 + eta) h, phi2 = 1 - (1 - e^{-kh})/(kh), phi3 = phi2/(kh) - 1/2, r0 =
    h_{i-1}/h, r1 = h_{i-2}/h, the scaled differences d0 = (D_i - D_{i-1})/r0,
    d1 = (D_{i-1} - D_{i-2})/r1 give D' ~ d0 + (d0 - d1) r0/(r0 + r1) and
    D'' ~ (d0 - d1)/(r0 + r1), and x' = lin x + w0 D_i + alpha (phi2 D' - phi3 D''). The
    D'' term is half the Taylor coefficient of exact Adams (module docstring).
    """
    p_s, p_t = points[i], points[i + 1]
    c = stage_coefficients(p_s, p_t, eta=eta)
    h = p_t.lam - p_s.lam
    kh = (1.0 + eta) * h
    phi2 = 1.0 + math.expm1(-kh) / kh
    phi3 = phi2 / kh - 0.5
    r0 = (p_s.lam - points[i - 1].lam) / h
    r1 = (points[i - 1].lam - points[i - 2].lam) / h
    diff = (1.0 / r0, -1.0 / r0 - 1.0 / r1, 1.0 / r1)  # d0 - d1 on (D_i, D_{i-1}, D_{i-2})
    slope = [a + b * r0 / (r0 + r1) for a, b in zip((1.0 / r0, -1.0 / r0, 0.0), diff,
                                                     strict=True)]
    weights = [p_t.alpha * (phi2 * a - phi3 * b / (r0 + r1)) for a, b in zip(slope, diff,
                                                                            strict=True)]
    weights[0] += c.w0
    return LinearStep(lin=c.lin, weights=tuple(weights), noise_std=c.noise_std)


def first_order_step(points: tuple[EvalPoint, ...], i: int, eta: float) -> LinearStep:
    """DDIM / SDE-DPM-Solver++(1) (Lu et al. 2022b eq. 9 with eta; SEEDS-1)."""
    c = stage_coefficients(points[i], points[i + 1], eta=eta)
    return LinearStep(lin=c.lin, weights=(c.w0,), noise_std=c.noise_std)


@dataclass(frozen=True)
class _DPMSolverPPMultistep(HistorySolver):
    """Options shared by DPM-Solver++(2M)/(3M) and their SDE variants (not registered).

    ``step_order_caps`` (one entry per finite step) caps the order of each step, e.g. as
    searched by :func:`diffsolve.tools.grid_search.search_grid` with ``search_orders=True``
    (S^3's per-step solver choice).
    """

    step_order_caps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_choice(self.name, "warmup", self.warmup, ("lower_order", "singlestep"))
        object.__setattr__(self, "step_order_caps",
                           check_order_caps(self.name, self.step_order_caps, self.history_order))

    @property
    def order_caps(self) -> tuple[int, ...] | None:
        return self.step_order_caps


@register
@dataclass(frozen=True)
class DPMSolverPP2M(_DPMSolverPPMultistep):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2). Order 2; 1 NFE per step.

    Args:
        solver_type: "midpoint" (the paper) or "heun" (phi_2 weight on the difference).
        lower_order_final: first-order final update for grids of fewer than 15 steps.
    """

    name = "dpmpp_2m"
    title = "DPM-Solver++(2M)"
    history_order = 2
    reference = "Lu et al. 2022b (arXiv 2211.01095) Alg. 2"
    solver_type: Literal["midpoint", "heun"] = "midpoint"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "solver_type", self.solver_type, ("midpoint", "heun"))

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        if order == 1:
            return first_order_step(points, i, self.eta)
        return two_step(points, i, self.eta, self.solver_type)


@register
@dataclass(frozen=True)
class DPMSolverPP3M(_DPMSolverPPMultistep):
    """DPM-Solver++(3M): third-order exponential Adams-Bashforth in data prediction.

    Warm-up: order 1, then DPM-Solver++(2M), then third order. Order 3; 1 NFE per step.
    """

    name = "dpmpp_3m"
    title = "DPM-Solver++(3M), exponential Adams"
    history_order = 3
    reference = "Lu et al. 2022b (arXiv 2211.01095) Sec. 4.2 / App. B; exponential Adams"

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        if order == 1:
            return first_order_step(points, i, self.eta)
        if order == 2:
            return two_step(points, i, self.eta, "midpoint")
        return adams_step(points, i, order, self.eta)


@dataclass(frozen=True)
class _EtaSDE(HistorySolver):
    """The eta-SDE options of the SDE variants (not registered; listed first in the bases):
    weak order min(order, 2) with noise (measured in tests/test_weak_order.py)."""

    eta: float = 1.0
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sde_options(self.name, self.eta, self.s_noise)

    @property
    def weak_order(self) -> float | None:
        return float(min(self.order, 2)) if self.eta > 0 else None


@register
@dataclass(frozen=True)
class DPMSolverPP2MSDE(_EtaSDE, DPMSolverPP2M):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, Sec. 5 / App. with eta; k-diffusion's
    ``sample_dpmpp_2m_sde``): the 2M update of the eta-SDE with exact linear part and noise.

    Weak order 1-2 (measured in docs/sde_solvers.md); 1 NFE per step.

    Args:
        eta: stochasticity (1: the reverse SDE; 0: DPM-Solver++(2M)).
        s_noise: multiplies the injected noise.
        solver_type: "midpoint" (default, as k-diffusion) or "heun".
    """

    name = "dpmpp_2m_sde"
    title = "DPM-Solver++(2M) SDE (midpoint / heun)"
    reference = "Lu et al. 2022b (arXiv 2211.01095) SDE-DPM-Solver++(2M); k-diffusion"


@register
@dataclass(frozen=True)
class DPMSolverPP3MSDE(_EtaSDE, DPMSolverPP3M):
    """DPM-Solver++(3M) SDE: the third-order exponential Adams update of the eta-SDE.

    1 NFE per step. By default this uses the exact Adams weights, not the halved
    second-difference term of k-diffusion's ``sample_dpmpp_3m_sde`` (docs/solvers.md).

    Args:
        eta: stochasticity (1: the reverse SDE; 0: DPM-Solver++(3M)).
        s_noise: multiplies the injected noise.
        variant: "adams" (default, exact weights) or "kdiffusion" (k-diffusion's update:
            second step with the phi_2 ("heun") 2M weight, then :func:`kdiffusion_3m_step`;
            ``diffsolve.kdiffusion`` uses it by default). Its third-order weight is half the
            Taylor coefficient, so it declares order 2 even with a single-step start.
    """

    name = "dpmpp_3m_sde"
    title = "DPM-Solver++(3M) SDE, exponential Adams"
    reference = "Lu et al. 2022b (arXiv 2211.01095) Sec. 4 with the eta-SDE of SEEDS eq. 8"
    variant: Literal["adams", "kdiffusion"] = "adams"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "variant", self.variant, ("adams", "kdiffusion"))

    @property
    def nominal_order(self) -> int:
        return 3 if self.variant == "adams" else 2

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        if self.variant == "adams" or order == 1:
            return super().multistep_step(schedule, points, i, order)
        if order == 2:
            return two_step(points, i, self.eta, "heun")
        return kdiffusion_3m_step(points, i, self.eta)

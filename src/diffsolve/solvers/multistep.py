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

Warm-up: by default (``warmup="lower_order"``, as in the papers) the first steps use the orders
the history allows. A single first-order step has local error O(h^2), so the global error of
an order-3 multistep method started this way is O(h^2) asymptotically (measured in
tests/test_convergence.py). ``warmup="singlestep"`` runs the first ``order - 1`` steps with the
single-step exponential RK of the same order (DPM-Solver++(2S)/(3S), (order - 1) extra NFE
each), which restores the nominal global order. ``lower_order_final`` (default
True, as DPM-Solver++ and diffusers for fewer than 15 steps) caps the order of the last steps
so that the final update (the denoising step when the grid ends at sigma = 0) is first order
and the one before at most second order. ``step_order_caps`` (one entry per finite step) caps
the order of each step individually, e.g. as searched by :mod:`diffsolve.grid_search`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import SolverOptionError
from ..expint import exp_lagrange_weights, stage_coefficients
from ..schedules import EvalPoint, NoiseSchedule
from .base import (
    GridPlan,
    Solver,
    StepOutput,
    check_choice,
    check_range,
    check_sde_options,
    register,
)
from .singlestep import Stage, build_stages, run_stages, stage_table

if TYPE_CHECKING:
    from ..models import Denoiser
    from ..noise import NoiseSource

LOWER_ORDER_FINAL_BELOW = 15


@dataclass(frozen=True)
class MultistepCoefficients:
    """Weights of one multistep update: x' = lin x + sum_j weights[j] D_{i-j} + noise_std xi."""

    lin: float
    weights: tuple[float, ...]
    noise_std: float


def step_orders(order: int, steps: int, denoise_final: bool, lower_order_final: bool, *,
                warmup_ramp: bool = True) -> list[int]:
    """Order used at each step: warm-up min(order, i + 1) (if ``warmup_ramp``), then the
    final-step caps min(order, total - i) of ``lower_order_final``."""
    total = steps + (1 if denoise_final else 0)
    orders = []
    for i in range(steps):
        o = min(order, i + 1) if warmup_ramp else order
        if lower_order_final and total < LOWER_ORDER_FINAL_BELOW:
            o = min(o, total - i)
        orders.append(max(o, 1))
    return orders


def adams_coefficients(points: tuple[EvalPoint, ...], i: int, order: int, eta: float,
                       ) -> MultistepCoefficients:
    """Exponential Adams-Bashforth weights on nodes i, i-1, ..., i-order+1 (module docstring)."""
    p_s, p_t = points[i], points[i + 1]
    h = p_t.lam - p_s.lam
    k = 1.0 + eta
    nodes = [(points[i - j].lam - p_s.lam) / h for j in range(order)]
    base = stage_coefficients(p_s, p_t, eta=eta)
    w = exp_lagrange_weights(nodes, -k * h)
    return MultistepCoefficients(lin=base.lin, weights=tuple(p_t.alpha * k * h * v for v in w),
                                 noise_std=base.noise_std)


def two_step_coefficients(points: tuple[EvalPoint, ...], i: int, eta: float,
                          rule: Literal["midpoint", "heun"]) -> MultistepCoefficients:
    """DPM-Solver++(2M) weights (Lu et al. 2022b Alg. 2; "heun" as k-diffusion's 2M SDE)."""
    p_s, p_t = points[i], points[i + 1]
    c = stage_coefficients(p_s, p_t, eta=eta)
    r = (p_s.lam - points[i - 1].lam) / (p_t.lam - p_s.lam)
    slope_w = 0.5 * c.w0 if rule == "midpoint" else c.w1
    return MultistepCoefficients(lin=c.lin, weights=(c.w0 + slope_w / r, -slope_w / r),
                                 noise_std=c.noise_std)


def kdiffusion_3m_coefficients(points: tuple[EvalPoint, ...], i: int, eta: float,
                               ) -> MultistepCoefficients:
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
    return MultistepCoefficients(lin=c.lin, weights=tuple(weights), noise_std=c.noise_std)


def first_order_coefficients(points: tuple[EvalPoint, ...], i: int, eta: float,
                             ) -> MultistepCoefficients:
    c = stage_coefficients(points[i], points[i + 1], eta=eta)
    return MultistepCoefficients(lin=c.lin, weights=(c.w0,), noise_std=c.noise_std)


@dataclass(frozen=True)
class MultistepSolver(Solver):
    """Shared engine of the data-prediction multistep family (not registered itself).

    Subclasses define :meth:`coefficients_for` (weights at a given order) and the options.
    The state is the tuple of past data predictions, newest first.
    """

    lower_order_final: bool = True
    warmup: Literal["lower_order", "singlestep"] = "lower_order"
    step_order_caps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_choice(self.name, "warmup", self.warmup, ("lower_order", "singlestep"))
        if self.step_order_caps is not None:
            raw = self.step_order_caps
            if isinstance(raw, str | bytes) or not hasattr(raw, "__iter__"):
                raise SolverOptionError(
                    f"{self.name}: step_order_caps must be a sequence of ints, got {raw!r}")
            caps = tuple(raw)
            for c in caps:
                if isinstance(c, bool) or not isinstance(c, int | np.integer):
                    raise SolverOptionError(
                        f"{self.name}: step_order_caps entries must be ints, got {c!r}")
                check_range(self.name, "step_order_caps entry", int(c), 1, self.order)
            caps = tuple(int(c) for c in caps)
            object.__setattr__(self, "step_order_caps", caps)

    def _capped(self, orders: list[int]) -> list[int]:
        """Per-step order caps (e.g. found by :func:`diffsolve.grid_search.search_grid` with
        ``search_orders=True``, S^3's per-step solver choice)."""
        caps = self.step_order_caps
        if caps is None:
            return orders
        if len(caps) != len(orders):
            raise SolverOptionError(
                f"{self.name}: step_order_caps has {len(caps)} entries for {len(orders)} steps")
        return [min(o, c) for o, c in zip(orders, caps, strict=True)]

    @property
    def eta(self) -> float:
        return 0.0

    @property
    def s_noise(self) -> float:
        return 1.0

    def coefficients_for(self, points: tuple[EvalPoint, ...], i: int, order: int,
                         ) -> MultistepCoefficients:
        raise NotImplementedError

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        orders = self._capped(step_orders(self.order, base.steps, denoise_final,
                                          self.lower_order_final))
        capped = self._capped(step_orders(self.order, base.steps, denoise_final,
                                          self.lower_order_final, warmup_ramp=False))
        extra: list[MultistepCoefficients | tuple[Stage, ...]] = []
        for i, o in enumerate(orders):
            if self.warmup == "singlestep" and i < self.order - 1 and capped[i] > 1:
                extra.append(build_stages(schedule, base.points[i], base.points[i + 1],
                                          stage_table(capped[i]), eta=self.eta, form="data"))
            else:
                extra.append(self.coefficients_for(base.points, i, o))
        return GridPlan(points=base.points, h=base.h, extra=tuple(extra))

    def init_state(self, x: Tensor, plan: GridPlan) -> tuple[Tensor, ...]:
        return ()

    def step(self, i: int, x: Tensor, state: tuple[Tensor, ...], plan: GridPlan,
             model: Denoiser, noise: NoiseSource) -> StepOutput:
        coeffs = plan.extra[i]
        if isinstance(coeffs, tuple):  # single-step warm-up
            out = run_stages(i, x, coeffs, plan.points[i], model, noise, eta=self.eta, form="data",
                             s_noise=self.s_noise)
            return StepOutput(x=out.x, state=(out.denoised, *state)[: self.order],
                              denoised=out.denoised)
        d = model.data(x, plan.points[i])
        history = (d, *state)[: self.order]
        # fused in place on the fresh product: one pass per term (benchmarks/overhead.py)
        x_next = torch.mul(x, coeffs.lin)
        for w, d_j in zip(coeffs.weights, history, strict=False):
            x_next.add_(d_j, alpha=w)
        if coeffs.noise_std > 0 and noise is not None:
            xi = noise.normal(x, step=i, draw=0, lam_from=plan.points[i].lam,
                              lam_to=plan.points[i + 1].lam)
            x_next.add_(xi, alpha=self.s_noise * coeffs.noise_std)
        return StepOutput(x=x_next, state=history, denoised=d)


@register
@dataclass(frozen=True)
class DPMSolverPP2M(MultistepSolver):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2). Order 2; 1 NFE per step.

    Args:
        solver_type: "midpoint" (the paper) or "heun" (phi_2 weight on the difference).
        lower_order_final: first-order final update for grids of fewer than 15 steps.
    """

    name = "dpmpp_2m"
    order = 2
    reference = "Lu et al. 2022b (arXiv 2211.01095) Alg. 2"
    solver_type: Literal["midpoint", "heun"] = "midpoint"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "solver_type", self.solver_type, ("midpoint", "heun"))

    def coefficients_for(self, points: tuple[EvalPoint, ...], i: int, order: int,
                         ) -> MultistepCoefficients:
        if order == 1:
            return first_order_coefficients(points, i, self.eta)
        return two_step_coefficients(points, i, self.eta, self.solver_type)


@register
@dataclass(frozen=True)
class DPMSolverPP3M(MultistepSolver):
    """DPM-Solver++(3M): third-order exponential Adams-Bashforth in data prediction.

    Warm-up: order 1, then DPM-Solver++(2M), then third order. Order 3; 1 NFE per step.
    """

    name = "dpmpp_3m"
    order = 3
    reference = "Lu et al. 2022b (arXiv 2211.01095) Sec. 4.2 / App. B; exponential Adams"

    def coefficients_for(self, points: tuple[EvalPoint, ...], i: int, order: int,
                         ) -> MultistepCoefficients:
        if order == 1:
            return first_order_coefficients(points, i, self.eta)
        if order == 2:
            return two_step_coefficients(points, i, self.eta, "midpoint")
        return adams_coefficients(points, i, order, self.eta)




@register
@dataclass(frozen=True)
class DPMSolverPP2MSDE(DPMSolverPP2M):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, Sec. 5 / App. with eta; k-diffusion's
    ``sample_dpmpp_2m_sde``): the 2M update of the eta-SDE with exact linear part and noise.

    Weak order 1-2 (measured in docs/sde_solvers.md); 1 NFE per step.

    Args:
        eta: stochasticity (1: the reverse SDE; 0: DPM-Solver++(2M)).
        s_noise: multiplies the injected noise.
        solver_type: "midpoint" (default, as k-diffusion) or "heun".
    """

    name = "dpmpp_2m_sde"
    stochastic = True
    reference = "Lu et al. 2022b (arXiv 2211.01095) SDE-DPM-Solver++(2M); k-diffusion"
    eta: float = 1.0
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sde_options(self.name, self.eta, self.s_noise)


@register
@dataclass(frozen=True)
class DPMSolverPP3MSDE(DPMSolverPP3M):
    """DPM-Solver++(3M) SDE: the third-order exponential Adams update of the eta-SDE.

    1 NFE per step. Note: this uses the exact Adams weights, not the halved second-difference
    term of k-diffusion's ``sample_dpmpp_3m_sde`` (docs/solvers.md).

    Args:
        eta: stochasticity (1: the reverse SDE; 0: DPM-Solver++(3M)).
        s_noise: multiplies the injected noise.
        variant: "adams" (default, exact weights) or "kdiffusion" (k-diffusion's update:
            second step with the phi_2 ("heun") 2M weight, then
            :func:`kdiffusion_3m_coefficients`; ``diffsolve.kdiffusion`` uses it by default).
    """

    name = "dpmpp_3m_sde"
    stochastic = True
    reference = "Lu et al. 2022b (arXiv 2211.01095) Sec. 4 with the eta-SDE of SEEDS eq. 8"
    eta: float = 1.0
    s_noise: float = 1.0
    variant: Literal["adams", "kdiffusion"] = "adams"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_sde_options(self.name, self.eta, self.s_noise)
        check_choice(self.name, "variant", self.variant, ("adams", "kdiffusion"))

    def coefficients_for(self, points: tuple[EvalPoint, ...], i: int, order: int,
                         ) -> MultistepCoefficients:
        if self.variant == "adams" or order == 1:
            return super().coefficients_for(points, i, order)
        if order == 2:
            return two_step_coefficients(points, i, self.eta, "heun")
        return kdiffusion_3m_coefficients(points, i, self.eta)

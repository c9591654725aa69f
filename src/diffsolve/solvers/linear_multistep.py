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

Warm-up: ``warmup="lower_order"`` (the papers) starts with orders 1, 2, ...; its first-order
first step has local error O(h^2), so the global error is O(h^2) asymptotically.
``warmup="singlestep"`` runs the first ``order - 1`` steps with the single-step exponential
RK DPM-Solver++(2S)/(3S) (order min(order, 3), local error O(h^4) for order >= 3), which
restores the nominal global order up to 4; those steps cost 1 or 2 extra NFE each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor

from ..expint import exp_lagrange_weights
from ..models import eps_from_data
from ..schedules import EvalPoint, NoiseSchedule
from .base import GridPlan, Solver, StepOutput, check_choice, register
from .multistep import step_orders
from .singlestep import Stage, build_stages, run_stages, stage_table

if TYPE_CHECKING:
    from ..models import Denoiser
    from ..noise import NoiseSource

Warmup = Literal["lower_order", "singlestep"]
MAX_WARMUP_ORDER = 3

# Adams-Bashforth coefficients for uniform steps (newest first): PNDM eq. 12 / DEIS App.
ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3.0 / 2.0, -1.0 / 2.0),
    3: (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    4: (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
}


@dataclass(frozen=True)
class EpsStep:
    """One multistep update x' = lin x + sum_j weights[j] eps_{i-j} (eps history newest first)."""

    lin: float
    weights: tuple[float, ...]


def warmup_plan(order: int, steps: int, denoise_final: bool, lower_order_final: bool,
                warmup: Warmup) -> list[tuple[str, int]]:
    """Per step: ("multistep", order used) or ("singlestep", order of the RK warm-up step)."""
    orders = step_orders(order, steps, denoise_final, lower_order_final)
    capped = step_orders(order, steps, denoise_final, lower_order_final, warmup_ramp=False)
    out = []
    for i, o in enumerate(orders):
        if warmup == "singlestep" and i < order - 1 and capped[i] > 1:
            out.append(("singlestep", min(capped[i], MAX_WARMUP_ORDER)))
        else:
            out.append(("multistep", o))
    return out


def warmup_nfe(order: int, steps: int, lower_order_final: bool, warmup: Warmup) -> int:
    """NFE of ``steps`` finite steps (assuming the loop's final denoise follows)."""
    plan = warmup_plan(order, steps, True, lower_order_final, warmup)
    return sum(len(stage_table(o)) if kind == "singlestep" else 1 for kind, o in plan)


def warmup_stages(schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int, order: int,
                  ) -> tuple[Stage, ...]:
    """DPM-Solver++(order S) stages (data form) for a single-step warm-up step i."""
    return build_stages(schedule, points[i], points[i + 1], stage_table(order), eta=0.0,
                        form="data")


def lms_weights(points: tuple[EvalPoint, ...], i: int, order: int) -> tuple[float, ...]:
    """C_ij = int_{s_i}^{s_{i+1}} l_j(s) ds, Lagrange basis in s = sigma~ on s_i .. s_{i-p+1}.

    Exact: Delta s int_0^1 l_j(theta) d theta on the normalised nodes
    theta_k = (s_{i-k} - s_i)/Delta s.
    """
    s_i = points[i].sigma_edm
    ds = points[i + 1].sigma_edm - s_i
    nodes = [(points[i - k].sigma_edm - s_i) / ds for k in range(order)]
    return tuple(ds * w for w in exp_lagrange_weights(nodes, 0.0))


@dataclass(frozen=True)
class EpsMultistepSolver(Solver):
    """Engine of the eps-history multistep family in EDM coordinates (not registered itself).

    Subclasses implement :meth:`eps_weights` (the C_ij of the module docstring, in sigma~
    units) and declare ``max_order``. The state is the tuple of past eps, newest first.
    """

    lower_order_final: bool = True
    warmup: Warmup = "lower_order"

    max_order: ClassVar[int] = 4

    def __post_init__(self) -> None:
        check_choice(self.name, "solver_order", self.solver_order,
                     tuple(range(1, self.max_order + 1)))
        check_choice(self.name, "warmup", self.warmup, ("lower_order", "singlestep"))

    @property
    def steps_order(self) -> int:
        """The multistep order option (``solver_order`` of the subclasses)."""
        return int(self.solver_order)

    def eps_weights(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                    order: int) -> tuple[float, ...]:
        raise NotImplementedError

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        kinds = warmup_plan(self.steps_order, base.steps, denoise_final, self.lower_order_final,
                            self.warmup)
        extra: list[EpsStep | tuple[Stage, ...]] = []
        for i, (kind, o) in enumerate(kinds):
            if kind == "singlestep":
                extra.append(warmup_stages(schedule, base.points, i, o))
                continue
            p_s, p_t = base.points[i], base.points[i + 1]
            c = self.eps_weights(schedule, base.points, i, o)
            extra.append(EpsStep(lin=p_t.alpha / p_s.alpha,
                                 weights=tuple(p_t.alpha * w for w in c)))
        return GridPlan(points=base.points, h=base.h, extra=tuple(extra))

    def init_state(self, x: Tensor, plan: GridPlan) -> tuple[Tensor, ...]:
        return ()

    def nfe(self, steps: int) -> int:
        return warmup_nfe(self.steps_order, steps, self.lower_order_final, self.warmup)

    def step(self, i: int, x: Tensor, state: tuple[Tensor, ...], plan: GridPlan,
             model: Denoiser, noise: NoiseSource) -> StepOutput:
        coeffs = plan.extra[i]
        p = plan.points[i]
        if isinstance(coeffs, tuple):  # single-step warm-up
            out = run_stages(i, x, coeffs, p, model, noise, eta=0.0, form="data")
            eps = eps_from_data(x, out.denoised, p)
            return StepOutput(x=out.x, state=(eps, *state)[: self.steps_order],
                              denoised=out.denoised)
        d = model.data(x, p)
        history = (eps_from_data(x, d, p), *state)[: self.steps_order]
        x_next = torch.mul(x, coeffs.lin)  # fresh tensor: accumulate in place
        for w, e in zip(coeffs.weights, history, strict=False):
            x_next.add_(e, alpha=w)
        return StepOutput(x=x_next, state=history, denoised=d)


@register
@dataclass(frozen=True)
class LMS(EpsMultistepSolver):
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
    order = 4
    reference = "Crowson, k-diffusion sample_lms (2022); Karras et al. 2022 eq. 4"
    solver_order: int = 4

    def eps_weights(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                    order: int) -> tuple[float, ...]:
        return lms_weights(points, i, order)


@register
@dataclass(frozen=True)
class IPNDM(EpsMultistepSolver):
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
    order = 2
    reference = "Zhang & Chen 2023 (arXiv 2204.13902) App. iPNDM; Liu et al. 2022 PNDM eq. 12"
    solver_order: int = 4

    def eps_weights(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                    order: int) -> tuple[float, ...]:
        ds = points[i + 1].sigma_edm - points[i].sigma_edm
        return tuple(ds * b for b in ADAMS_BASHFORTH[order])

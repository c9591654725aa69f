r"""Euler and Heun in the EDM noise level sigma~ = sigma/alpha (Karras et al. 2022, Alg. 1).

In EDM coordinates x~ = x/alpha the probability-flow ODE is dx~/dsigma~ = (x~ - D)/sigma~
(Karras et al. 2022, eq. 4 with s(t) = 1, sigma(t) = t). These solvers step in sigma~ and
convert back to the schedule's scaling with alpha at each node, so they work for every
schedule. Euler in sigma~ is algebraically DDIM (Karras et al. 2022, Sec. 3); Heun is the
second-order method of the EDM paper's Algorithm 1 (the final step into sigma = 0 is the
loop's denoising step, which equals Euler there).

Both updates are applied as affine combinations of x and the D's with coefficients folded in
float64 on the host (derivation in the class docstrings), never through x~ = x/alpha on the
device: for flow models near t = 1 alpha ~ 1e-5 and x/alpha in float32 lost ~4e-4 relative
accuracy (found by the diffusers FlowMatchEuler cross-check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.schedules import EvalPoint, NoiseSchedule
from .base import GridPlan, Solver, StepOutput, register, uniform_evaluations

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource


def euler_coefficients(p: EvalPoint, q: EvalPoint) -> tuple[float, float]:
    """x' = a x + b D for one Euler step p -> q in sigma~: with x~ = x/alpha,
    x~' = x~ + (s' - s)(x~ - D)/s gives a = sigma'/sigma, b = alpha'(1 - s'/s)."""
    return q.sigma / p.sigma, q.alpha * (1.0 - q.sigma_edm / p.sigma_edm)


@register
@dataclass(frozen=True)
class Euler(Solver):
    """Euler's method in sigma~ (Karras et al. 2022, Alg. 1 without the correction).

    x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) (x~_i - D_i)/sigma~_i. Order 1; 1 NFE per step.
    """

    name = "euler"
    title = "Euler in σ (EDM)"
    order = 1
    reference = "Karras et al. 2022 (arXiv 2206.00364) Alg. 1, line 5"

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                          denoise_final: bool) -> tuple[float, float]:
        return euler_coefficients(points[i], points[i + 1])

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        a, b = plan.extra[i]
        d = model.data(x, plan.points[i])
        return StepOutput(x=torch.mul(x, a).add_(d, alpha=b), state=None, denoised=d)


@register
@dataclass(frozen=True)
class Heun(Solver):
    """Heun's second-order method in sigma~ (Karras et al. 2022, Alg. 1, lines 5-8).

    With s = sigma~_i, s' = sigma~_{i+1}, ds = s' - s, the predictor x_p = a x + b D1 is the
    Euler step and the trapezoidal corrector x~ + ds/2 [(x~ - D1)/s + (x~_p - D2)/s'] folds to
    x' = (sigma'/sigma) x - alpha' ds (2s' - s)/(2 s s') D1 - alpha' ds/(2 s') D2.
    Order 2; 2 NFE per step.
    """

    name = "heun"
    title = "Heun in σ (EDM)"
    order = 2
    reference = "Karras et al. 2022 (arXiv 2206.00364) Alg. 1"

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(2, steps)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                          denoise_final: bool) -> tuple[float, ...]:
        p, q = points[i], points[i + 1]
        s, s1 = p.sigma_edm, q.sigma_edm
        ds = s1 - s
        a, b = euler_coefficients(p, q)
        c1 = -q.alpha * ds * (2.0 * s1 - s) / (2.0 * s * s1)  # Alg. 1 line 8, folded
        c2 = -q.alpha * ds / (2.0 * s1)
        return a, b, c1, c2

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        a, b, c1, c2 = plan.extra[i]
        p, q = plan.points[i], plan.points[i + 1]
        d = model.data(x, p)
        d_pred = model.data(torch.mul(x, a).add_(d, alpha=b), q)  # Euler predictor, line 5
        x_next = torch.mul(x, a).add_(d, alpha=c1).add_(d_pred, alpha=c2)
        return StepOutput(x=x_next, state=None, denoised=d)

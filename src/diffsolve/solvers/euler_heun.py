r"""Euler and Heun in the EDM noise level sigma~ = sigma/alpha (Karras et al. 2022, Alg. 1).

In EDM coordinates x~ = x/alpha the probability-flow ODE is dx~/dsigma~ = (x~ - D)/sigma~
(Karras et al. 2022, eq. 4 with s(t) = 1, sigma(t) = t). These solvers step in sigma~ and
convert back to the schedule's scaling with alpha at each node, so they work for every
schedule. Euler in sigma~ is algebraically DDIM (Karras et al. 2022, Sec. 3); Heun is the
second-order method of the EDM paper's Algorithm 1 (the final step into sigma = 0 is the
loop's denoising step, which equals Euler there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from .base import GridPlan, Solver, StepOutput, register

if TYPE_CHECKING:
    from ..models import Denoiser
    from ..noise import NoiseSource


@register
@dataclass(frozen=True)
class Euler(Solver):
    """Euler's method in sigma~ (Karras et al. 2022, Alg. 1 without the correction).

    x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) (x~_i - D_i)/sigma~_i. Order 1; 1 NFE per step.
    """

    name = "euler"
    order = 1
    reference = "Karras et al. 2022 (arXiv 2206.00364) Alg. 1, line 5"

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        p, q = plan.points[i], plan.points[i + 1]
        d = model.data(x, p)
        x_ve = x / p.alpha
        slope = (x_ve - d) / p.sigma_edm  # dx~/dsigma~, eq. 4
        return StepOutput(x=q.alpha * (x_ve + (q.sigma_edm - p.sigma_edm) * slope), state=None,
                          denoised=d)


@register
@dataclass(frozen=True)
class Heun(Solver):
    """Heun's second-order method in sigma~ (Karras et al. 2022, Alg. 1, lines 5-8).

    Order 2; 2 NFE per step.
    """

    name = "heun"
    order = 2
    nfe_per_step = 2
    reference = "Karras et al. 2022 (arXiv 2206.00364) Alg. 1"

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        p, q = plan.points[i], plan.points[i + 1]
        ds = q.sigma_edm - p.sigma_edm
        d = model.data(x, p)
        x_ve = x / p.alpha
        slope = (x_ve - d) / p.sigma_edm
        x_pred = x_ve + ds * slope  # Euler predictor, line 5
        d_pred = model.data(q.alpha * x_pred, q)
        slope_pred = (x_pred - d_pred) / q.sigma_edm  # line 7
        x_next = x_ve + ds * 0.5 * (slope + slope_pred)  # trapezoidal corrector, line 8
        return StepOutput(x=q.alpha * x_next, state=None, denoised=d)

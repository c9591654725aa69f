r"""Forward-value first-order sampler (Jiao, Li, Cai, Li 2025, arXiv 2512.24927, "F-DDIM").

DDIM evaluates the data prediction at the start of a step ("backward value"). The forward-
value update evaluates it at the end of the step, at a cheap one-step lookahead estimate of
the next state, and keeps DDIM's exact linear part:

    x^_{i+1} = (alpha_{i+1}/alpha_i) x_i - sigma_{i+1}(e^{h} - 1) eps_prev     (lookahead)
    D_{i+1}  = D(x^_{i+1}, lambda_{i+1})                                         (1 NFE)
    x_{i+1}  = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1}(1 - e^{-h}) D_{i+1}        (update)

where eps_prev = (x^_i - alpha_i D_i)/sigma_i is the noise prediction of the previous
evaluation (made at the lookahead of node i, so no extra evaluation is needed). The update is
the paper's forward-value rule x_t = (sigma_t/sigma_s) x_s - (sigma_t alpha_s/sigma_s - alpha_t)
mu(x^_t, t); the lookahead is the noise-form DDIM step with the previous evaluation, as in the
authors' F-DPMSolver code with order 1. First step: ``init="zero"`` (default, the authors'
choice, no extra NFE) takes eps ~ x/sigma at the first node (D ~ 0, accurate at large sigma),
i.e. x^_1 = (sigma_1/sigma_0) x_0; ``init="evaluate"`` spends one extra NFE on D(x_0) and uses
the DDIM step as the first lookahead.

``lookahead_order`` k > 1 (the authors' "F-DPMSolver" with order k) replaces the lookahead by
the noise-form exponential Adams step on the last k noise predictions (at nodes i, i-1, ...;
warm-up with lower orders): x^_{i+1} = (alpha_{i+1}/alpha_i) x_i - sigma_{i+1} h sum_j W_j
eps_{i-j}, W_j = int_0^1 e^{h(1-theta)} l_j(theta) d theta (Lagrange basis in normalised
lambda), i.e. the exact integral of the interpolated eps. The update itself stays the
first-order forward-value rule, so the method stays first order; only the lookahead improves.

The leading local error has the sign opposite to DDIM's (the paper's main claim): on smooth
problems the method is first order (measured in docs/momentum_inversion_adaptive.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor

from ..core.expint import StageCoefficients, exp_lagrange_weights, stage_coefficients
from ..core.schedules import NoiseSchedule
from .base import GridPlan, Solver, StepOutput, check_choice, register
from .engines.history import step_orders

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource


@dataclass(frozen=True)
class ForwardValueCoefficients:
    lookahead: StageCoefficients  # noise form, node i -> i + 1
    update: StageCoefficients     # data form, node i -> i + 1
    eps_weights: tuple[float, ...]  # lookahead weights of eps_i, eps_{i-1}, ... (newest first)


@register
@dataclass(frozen=True)
class ForwardValue(Solver):
    """Forward-value DDIM ("F-DDIM", Jiao et al. 2025): the data prediction is evaluated at a
    one-step lookahead of the next node; first order; 1 NFE per step (+1 with init="evaluate").

    Args:
        init: "zero" (first lookahead with eps = x/sigma, no extra NFE, the authors' choice) or
            "evaluate" (one extra evaluation D(x_0) for a DDIM first lookahead).
        lookahead_order: order of the multistep lookahead, 1 (F-DDIM, default) to 3
            ("F-DPMSolver"); the method itself stays first order.
    """

    name = "forward_value"
    title = "forward-value first-order sampler (lookahead)"
    order = 1
    reference = "Jiao, Li, Cai, Li 2025 (arXiv 2512.24927), forward-value update, order 1"
    init: Literal["zero", "evaluate"] = "zero"
    lookahead_order: int = 1

    def __post_init__(self) -> None:
        check_choice(self.name, "init", self.init, ("zero", "evaluate"))
        check_choice(self.name, "lookahead_order", self.lookahead_order, (1, 2, 3))

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        """1 per step; ``init="evaluate"`` adds D(x_0) to the first."""
        return tuple(2 if i == 0 and self.init == "evaluate" else 1 for i in range(steps))

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        orders = step_orders(self.lookahead_order, base.steps, False, False)
        extra = []
        for i, o in enumerate(orders):
            p_s, p_t = base.points[i], base.points[i + 1]
            h = p_t.lam - p_s.lam
            nodes = [(base.points[i - j].lam - p_s.lam) / h for j in range(o)]
            # x^ = (alpha_t/alpha_s) x - sigma_t h sum_j W_j eps_{i-j}: exact integral of the
            # interpolated eps in the noise-form variation of constants (DPM-Solver eq. 3.4)
            w = exp_lagrange_weights(nodes, h)
            extra.append(ForwardValueCoefficients(
                lookahead=stage_coefficients(p_s, p_t, form="noise"),
                update=stage_coefficients(p_s, p_t, form="data"),
                eps_weights=tuple(-p_t.sigma * h * v for v in w)))
        return base.with_extra(extra)

    def init_state(self, x: Tensor, plan: GridPlan) -> tuple[Tensor, ...]:
        return ()

    def step(self, i: int, x: Tensor, state: tuple[Tensor, ...], plan: GridPlan,
             model: Denoiser, noise: NoiseSource) -> StepOutput:
        c = plan.extra[i]
        p_s, p_t = plan.points[i], plan.points[i + 1]
        if not state:  # eps at the first node: evaluated, or eps ~ x/sigma (D ~ 0)
            if self.init == "evaluate":
                d0 = model.data(x, p_s)
                state = ((x - p_s.alpha * d0) / p_s.sigma,)
            else:
                state = (x / p_s.sigma,)
        x_hat = c.lookahead.lin * x
        for w, e in zip(c.eps_weights, state, strict=False):
            x_hat = x_hat + w * e
        d = model.data(x_hat, p_t)
        eps = (x_hat - p_t.alpha * d) / p_t.sigma
        # forward-value rule: x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) D(x^_t, t)
        x_next = c.update.lin * x + c.update.w0 * d
        return StepOutput(x=x_next, state=(eps, *state)[: self.lookahead_order], denoised=d)

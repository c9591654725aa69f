r"""k-diffusion's (and ComfyUI's) noise-level samplers that have no other diffsolve equivalent.

Notation (``docs/notation.md``): x = alpha x0 + sigma n, lambda = log(alpha/sigma),
sigma~ = sigma/alpha = e^{-lambda} (the EDM / k-diffusion noise level), x~ = x/alpha. In x~
the probability-flow ODE of every schedule is dx~/dsigma~ = (x~ - D)/sigma~ (Karras et al.
2022, eq. 4), and every step below is written in x~ and mapped back with alpha at the nodes,
so the samplers work for every schedule (on k-diffusion's VE denoisers alpha = 1 and they are
k-diffusion's own updates).

* :class:`EulerChurn` -- Euler in sigma~ with EDM's "churn" (Karras et al. 2022, Alg. 2 with
  an Euler instead of a Heun step): k-diffusion's ``sample_euler(s_churn=...)``.
* :class:`DPM2` -- DPM-Solver-2 written in sigma~ (k-diffusion's ``sample_dpm_2``): an Euler
  stage to the geometric mean sigma_mid = sqrt(sigma~_s sigma~_t) (the lambda midpoint),
  then the full step with the slope there; optional churn as in :class:`EulerChurn`.
* :class:`DPM2Ancestral` -- the ancestral variant: DPM-2 down to sigma_down, then fresh noise
  of std sigma_up (``sample_dpm_2_ancestral``).
* :class:`DPMSolverPP2SAncestral` -- DPM-Solver++(2S), r = 1/2, down to sigma_down plus fresh
  noise sigma_up (``sample_dpmpp_2s_ancestral``).
* :class:`DPMSolverPPSDE` -- k-diffusion's stochastic DPM-Solver++ (``sample_dpmpp_sde``):
  both the stage and the full step are ancestral DDIM-type steps.
* :class:`LCM` -- multistep consistency sampling (ComfyUI's ``sample_lcm``): x <- D, renoised.

The ancestral split of a step s -> n in sigma~ (k-diffusion's ``get_ancestral_step``):
sigma_up = min(n, eta n sqrt(1 - n^2/s^2)), sigma_down = sqrt(n^2 - sigma_up^2). At eta = 1
sigma_down = n^2/s: the deterministic part lands where adding N(0, sigma_up^2) restores the
marginal at n (the DDPM posterior variance, Ho et al. 2020 eq. 7, in sigma~).

Every coefficient is a host float64 computed once per grid by :meth:`Solver.plan`; the final
step into sigma = 0 is the sampling loop's denoising step x <- D(x), which is what all these
samplers do there. Measured orders: ``docs/kdiffusion.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.schedules import EvalPoint, NoiseSchedule
from .base import (
    MAX_S_NOISE,
    GridPlan,
    Solver,
    StepOutput,
    check_range,
    check_sde_options,
    register,
    uniform_evaluations,
)
from .engines.renoise import Churn, ChurnSolver, ancestral_split

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource

@register
@dataclass(frozen=True)
class EulerChurn(ChurnSolver):
    r"""Euler in sigma~ after EDM's churn (k-diffusion ``sample_euler`` with ``s_churn``).

    x~_hat as in :meth:`ChurnSolver.churned`, D = D(x~_hat, sigma_hat), then
    x~_{i+1} = x~_hat + (sigma~_{i+1} - sigma_hat)(x~_hat - D)/sigma_hat. Without churn
    (the default) this is ``euler``. Order 1; weak order 1 with S_churn/N -> 0. 1 NFE per step.
    """

    name = "euler_churn"
    title = "Euler + EDM churn (k-diffusion `s_churn`)"
    order = 1
    reference = "Karras et al. 2022 (arXiv 2206.00364) Alg. 2 with an Euler step; k-diffusion"

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                          denoise_final: bool) -> Churn:
        return self.churn(schedule, points, i, denoise_final)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        c: Churn = plan.extra[i]
        q = plan.points[i + 1]
        x_ve = self.churned(i, x, c, plan, noise)
        d = model.data(c.hat.alpha * x_ve, c.hat)
        ratio = q.sigma_edm / c.hat.sigma_edm
        return StepOutput(x=q.alpha * (ratio * x_ve + (1.0 - ratio) * d), state=None, denoised=d)


@dataclass(frozen=True)
class DPM2Step:
    """One DPM-2 step s -> n in sigma~ with its stage at m = sqrt(s n):
    stage x~_m = (m/s) x~ + (1 - m/s) D1; result x~_n = (n/s) x~ + c1 D1 + c2 D2."""

    mid: EvalPoint
    stage_x: float
    stage_d: float
    lin: float
    c1: float
    c2: float


def dpm2_step(schedule: NoiseSchedule, s_lam: float, n_lam: float) -> DPM2Step:
    """Coefficients of DPM-2 from lambda s_lam to n_lam (k-diffusion ``sample_dpm_2``).

    x~_m = x~ + (m - s)(x~ - D1)/s,  x~_n = x~ + (n - s)(x~_m - D2)/m, which expands to
    x~_n = (n/s) x~ + (n - s)(s - m)/(m s) D1 - (n - s)/m D2.
    """
    mid = schedule.point(0.5 * (s_lam + n_lam))
    s, n, m = math.exp(-s_lam), math.exp(-n_lam), mid.sigma_edm
    return DPM2Step(mid=mid, stage_x=m / s, stage_d=1.0 - m / s, lin=n / s,
                    c1=(n - s) * (s - m) / (m * s), c2=-(n - s) / m)


def run_dpm2(x_ve: Tensor, d1: Tensor, c: DPM2Step, model: Denoiser) -> Tensor:
    """x~ at the end of a DPM-2 step from x~ (with D1 = D there); one model evaluation."""
    stage = torch.mul(x_ve, c.stage_x).add_(d1, alpha=c.stage_d)
    d2 = model.data(c.mid.alpha * stage, c.mid)
    return torch.mul(x_ve, c.lin).add_(d1, alpha=c.c1).add_(d2, alpha=c.c2)


@register
@dataclass(frozen=True)
class DPM2(ChurnSolver):
    r"""DPM-Solver-2 in sigma~ with optional churn (k-diffusion ``sample_dpm_2``).

    From x~_hat at sigma_hat (:meth:`ChurnSolver.churned`; no churn by default) to
    n = sigma~_{i+1}: an Euler stage to m = sqrt(sigma_hat n) (the lambda midpoint), then the
    full step with the slope at m (:func:`dpm2_step`). As a Runge-Kutta method in sigma~ the
    stage sits at the fraction c = sqrt(s)/(sqrt(s) + sqrt(n)) = 1/2 + O(h) of the step with
    weight 1, so it is second order (Lu et al. 2022 derive the same stage in lambda).
    Order 2; 2 NFE per step.
    """

    name = "dpm_2"
    title = "DPM-Solver-2 in σ (k-diffusion)"
    order = 2
    reference = "Lu et al. 2022 (arXiv 2206.00927) DPM-Solver-2 in sigma~; k-diffusion"

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(2, steps)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                          denoise_final: bool) -> tuple[Churn, DPM2Step]:
        c = self.churn(schedule, points, i, denoise_final)
        return c, dpm2_step(schedule, c.hat.lam, points[i + 1].lam)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        churn, c = plan.extra[i]
        q = plan.points[i + 1]
        x_ve = self.churned(i, x, churn, plan, noise)
        d = model.data(churn.hat.alpha * x_ve, churn.hat)
        return StepOutput(x=q.alpha * run_dpm2(x_ve, d, c, model), state=None, denoised=d)


@dataclass(frozen=True)
class AncestralStep:
    """Ancestral step coefficients: the deterministic part (None: x~ <- D) and sigma_up."""

    det: DPM2Step | tuple[EvalPoint, float, float] | None
    up: float


@dataclass(frozen=True)
class _AncestralTwoStage(Solver):
    """Options, cost and noise of the ancestral two-evaluation samplers (not registered):
    a deterministic step to sigma_down, then x~ += sigma_up S_noise xi (k-diffusion's
    ``get_ancestral_step``). Weak order 2 on Gaussian data with eta > 0 (measured 2.04 and
    1.96, docs/kdiffusion.md; not derived); eta = 0 is the deterministic method."""

    eta: float = 1.0
    s_noise: float = 1.0

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(2, steps)

    @property
    def weak_order(self) -> float | None:
        """Measured 2.0 with eta > 0 on Gaussian data (docs/kdiffusion.md); None at eta = 0."""
        return 2.0 if self.eta > 0 else None

    def __post_init__(self) -> None:
        check_sde_options(self.name, self.eta, self.s_noise)

    def renoised(self, i: int, x: Tensor, out: Tensor, up: float, plan: GridPlan,
                 noise: NoiseSource) -> Tensor:
        """``out`` (x~ at sigma_down, a fresh tensor) + sigma_up S_noise xi, in place."""
        if up > 0.0 and self.s_noise != 0.0:
            p, q = plan.points[i], plan.points[i + 1]
            xi = noise.normal(x, step=i, draw=0, lam_from=p.lam, lam_to=q.lam)
            out.add_(xi, alpha=up * self.s_noise)
        return out


@register
@dataclass(frozen=True)
class DPM2Ancestral(_AncestralTwoStage):
    r"""Ancestral DPM-2 (k-diffusion ``sample_dpm_2_ancestral``).

    With (sigma_down, sigma_up) from :func:`ancestral_split`: DPM-2 from sigma~_i to
    sigma_down (:func:`dpm2_step`), then x~_{i+1} = x~_down + sigma_up S_noise xi. When
    sigma_down = 0 (eta large) the step is x~ <- D without noise, as in k-diffusion. eta = 0
    is ``dpm_2``: order 2; weak order 2 with eta > 0 on Gaussian data (measured,
    docs/kdiffusion.md). 2 NFE per step.

    Args:
        eta: ancestral noise fraction (default 1).
        s_noise: multiplies the injected noise (default 1).
    """

    name = "dpm_2_ancestral"
    title = "ancestral DPM-2 (k-diffusion)"
    order = 2
    reference = "k-diffusion sample_dpm_2_ancestral; Lu et al. 2022; Ho et al. 2020 eq. 7"
    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                          denoise_final: bool) -> AncestralStep:
        p, q = points[i], points[i + 1]
        down, up = ancestral_split(p.sigma_edm, q.sigma_edm, self.eta)
        if down == 0.0:
            return AncestralStep(det=None, up=0.0)
        return AncestralStep(det=dpm2_step(schedule, p.lam, -math.log(down)), up=up)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        c: AncestralStep = plan.extra[i]
        p, q = plan.points[i], plan.points[i + 1]
        x_ve = x / p.alpha
        d = model.data(x, p)
        if c.det is None:
            return StepOutput(x=q.alpha * d, state=None, denoised=d)
        out = run_dpm2(x_ve, d, c.det, model)
        return StepOutput(x=q.alpha * self.renoised(i, x, out, c.up, plan, noise), state=None,
                          denoised=d)


@register
@dataclass(frozen=True)
class DPMSolverPP2SAncestral(_AncestralTwoStage):
    r"""Ancestral DPM-Solver++(2S) (k-diffusion ``sample_dpmpp_2s_ancestral``).

    With (sigma_down, sigma_up) from :func:`ancestral_split` and h = log(sigma~_i/sigma_down):
    the stage x~_r = e^{-h/2} x~ + (1 - e^{-h/2}) D1 at lambda_i + h/2, then
    x~_down = e^{-h} x~ + (1 - e^{-h}) D(x~_r) (DPM-Solver++(2S) with r = 1/2, Lu et al.
    2022b Alg. 1, whose weight on D1 vanishes at r = 1/2) and x~_{i+1} = x~_down +
    sigma_up S_noise xi. When sigma_down = 0 the deterministic part is x~ <- D (noise still
    added, as in k-diffusion). eta = 0 is DPM-Solver++(2S): order 2; weak order 2 with
    eta > 0 on Gaussian data (measured). 2 NFE per step.

    Args:
        eta: ancestral noise fraction (default 1).
        s_noise: multiplies the injected noise (default 1).
    """

    name = "dpmpp_2s_ancestral"
    title = "ancestral DPM-Solver++(2S) (k-diffusion)"
    order = 2
    reference = "Lu et al. 2022b (arXiv 2211.01095) Alg. 1; k-diffusion sample_dpmpp_2s_ancestral"
    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                          denoise_final: bool) -> AncestralStep:
        p, q = points[i], points[i + 1]
        down, up = ancestral_split(p.sigma_edm, q.sigma_edm, self.eta)
        if down == 0.0:
            return AncestralStep(det=None, up=up)
        h = -math.log(down) - p.lam
        return AncestralStep(det=(schedule.point(p.lam + 0.5 * h), math.exp(-0.5 * h),
                                  math.exp(-h)), up=up)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        c: AncestralStep = plan.extra[i]
        p, q = plan.points[i], plan.points[i + 1]
        d = model.data(x, p)
        if c.det is None:
            out = d.clone()
        else:
            mid, e_half, e_full = c.det
            x_ve = x / p.alpha
            stage = torch.mul(x_ve, e_half).add_(d, alpha=1.0 - e_half)
            d2 = model.data(mid.alpha * stage, mid)
            out = torch.mul(x_ve, e_full).add_(d2, alpha=1.0 - e_full)
        return StepOutput(x=q.alpha * self.renoised(i, x, out, c.up, plan, noise), state=None,
                          denoised=d)


@dataclass(frozen=True)
class SDEStep:
    """k-diffusion's DPM-Solver++ SDE step: stage point, (ratio, up) of the stage and of the
    full step (ratio = sigma_down/sigma~_i)."""

    stage: EvalPoint
    stage_ratio: float
    stage_up: float
    ratio: float
    up: float


@register
@dataclass(frozen=True)
class DPMSolverPPSDE(Solver):
    r"""k-diffusion's stochastic DPM-Solver++ (``sample_dpmpp_sde``), for any schedule.

    Step sigma~_i = s -> n with the stage at lambda_i + r h (sigma~ = m): both parts are
    ancestral DDIM steps in x~ (DDIM to sigma_down is x~ <- (d/s) x~ + (1 - d/s) F):

        stage: (d1, u1) = split(s, m, eta),
               x~_m = (d1/s) x~ + (1 - d1/s) D1 + u1 S_noise xi_1,   D2 = D(x~_m at m),
        step:  (d2, u2) = split(s, n, eta),
               x~_n = (d2/s) x~ + (1 - d2/s)((1 - 1/(2r)) D1 + 1/(2r) D2) + u2 S_noise xi_2,

    with xi_1 the draw over [lambda_i, lambda_m] and xi_2 over [lambda_i, lambda_{i+1}] (the
    same intervals k-diffusion passes to its noise sampler, so a Brownian noise source
    correlates them as k-diffusion's Brownian tree does). eta = 0 is DPM-Solver++(2S) with
    stage fraction r: order 2; weak order 1 with eta > 0 (measured). 2 NFE per step.

    Args:
        eta: ancestral noise fraction (default 1).
        s_noise: multiplies the injected noise (default 1).
        r: stage fraction in (0, 1] (default 1/2).
    """

    name = "dpmpp_sde"
    title = "stochastic DPM-Solver++ (k-diffusion `sample_dpmpp_sde`)"
    order = 2
    reference = "Lu et al. 2022b (arXiv 2211.01095) Alg. 1 with ancestral steps; k-diffusion"
    eta: float = 1.0
    s_noise: float = 1.0
    r: float = 0.5

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(2, steps)

    @property
    def weak_order(self) -> float | None:
        """Measured 1.0 with eta > 0 on Gaussian data (docs/kdiffusion.md); None at eta = 0."""
        return 1.0 if self.eta > 0 else None

    def __post_init__(self) -> None:
        check_sde_options(self.name, self.eta, self.s_noise)
        check_range(self.name, "r", self.r, 1e-3, 1.0)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                          denoise_final: bool) -> SDEStep:
        p, q = points[i], points[i + 1]
        stage = schedule.point(p.lam + self.r * (q.lam - p.lam))
        s = p.sigma_edm
        d1, u1 = ancestral_split(s, stage.sigma_edm, self.eta)
        d2, u2 = ancestral_split(s, q.sigma_edm, self.eta)
        return SDEStep(stage=stage, stage_ratio=d1 / s, stage_up=u1, ratio=d2 / s, up=u2)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        c: SDEStep = plan.extra[i]
        p, q = plan.points[i], plan.points[i + 1]
        noisy = self.s_noise != 0.0
        d = model.data(x, p)
        x_ve = x / p.alpha
        stage = torch.mul(x_ve, c.stage_ratio).add_(d, alpha=1.0 - c.stage_ratio)
        if c.stage_up > 0.0 and noisy:
            xi = noise.normal(x, step=i, draw=0, lam_from=p.lam, lam_to=c.stage.lam)
            stage.add_(xi, alpha=c.stage_up * self.s_noise)
        d2 = model.data(c.stage.alpha * stage, c.stage)
        fac = 0.5 / self.r
        blend = torch.mul(d, 1.0 - fac).add_(d2, alpha=fac)
        out = torch.mul(x_ve, c.ratio).add_(blend, alpha=1.0 - c.ratio)
        if c.up > 0.0 and noisy:
            xi = noise.normal(x, step=i, draw=1, lam_from=p.lam, lam_to=q.lam)
            out.add_(xi, alpha=c.up * self.s_noise)
        return StepOutput(x=q.alpha * out, state=None, denoised=d)


@register
@dataclass(frozen=True)
class LCM(Solver):
    r"""Multistep consistency sampling (Song et al. 2023, Alg. 1; Luo et al. 2023, LCM; ComfyUI's
    ``sample_lcm``): x~_{i+1} = D(x~_i) + sigma~_{i+1} xi, i.e. x_{i+1} = alpha_{i+1} D +
    sigma_{i+1} xi.

    Meant for consistency / latent-consistency models, whose D maps any x_t to the end of its
    probability-flow trajectory: then every step renoises an exact sample and the output law is
    exact for any N (tested with the exact consistency function of Gaussian data). With an
    ordinary denoiser D = E[x0 | x_t] it does not converge as N grows (it only is exact for a
    point mass). 1 NFE per step; ``order`` is nominal.

    Args:
        s_noise: multiplies the injected noise (default 1).
    """

    name = "lcm"
    title = "multistep consistency sampling (LCM)"
    order = 0  # no convergence in N with an ordinary denoiser (docstring)
    reference = "Song et al. 2023 (arXiv 2303.01469) Alg. 1; Luo et al. 2023 (arXiv 2310.04378)"
    s_noise: float = 1.0

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    @property
    def weak_order(self) -> float | None:
        """0: with an ordinary denoiser its error does not shrink as N grows (the law is exact
        only for a consistency function, tested in tests/test_kdiffusion_samplers.py)."""
        return 0.0

    def __post_init__(self) -> None:
        check_range(self.name, "s_noise", self.s_noise, 0.0, MAX_S_NOISE)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        p, q = plan.points[i], plan.points[i + 1]
        d = model.data(x, p)
        out = torch.mul(d, q.alpha)
        if self.s_noise != 0.0:
            xi = noise.normal(x, step=i, draw=0, lam_from=p.lam, lam_to=q.lam)
            out.add_(xi, alpha=q.sigma * self.s_noise)
        return StepOutput(x=out, state=None, denoised=d)

r"""Classic one-evaluation stochastic samplers: Euler-Maruyama, DDPM, DDIM(eta), Euler ancestral.

Notation (``docs/notation.md``): x = alpha x0 + sigma n, lambda = log(alpha/sigma),
sigma~ = sigma/alpha = e^{-lambda} (EDM noise level), x~ = x/alpha (EDM state). A step goes
from node s (noisier) to node t (cleaner), h = lambda_t - lambda_s > 0. Every coefficient is a
Python float computed once per grid in float64 by :meth:`Solver.plan`; :meth:`Solver.step`
only combines tensors with them. Noise draws use ``step=i`` and the step's own lambda
interval ``[lambda_i, lambda_{i+1}]`` (so a Brownian path can serve them).

* :class:`EulerMaruyama` -- Euler-Maruyama on the reverse SDE in the schedule's own time t.
* :class:`DDPM` -- ancestral sampling with the DDPM posterior q(x_t | x_s, x0 = D).
* :class:`DDIMEta` -- DDIM with eta_DDIM (eta = 0: DDIM, eta = 1: DDPM).
* :class:`EulerAncestral` -- k-diffusion's Euler ancestral step in sigma~.

Each step is x_t = a x_s + b D(x_s) + c xi: a :class:`~diffsolve.solvers.engines.history.
LinearStep` with a one-element history, applied by the multistep engine's linear update.
EDM's stochastic sampler and ER-SDE-Solver live in ``edm_stochastic.py`` and ``er_sde.py``.

Derivations, measured orders and open questions: ``docs/stochastic_baselines.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from ..core.expint import stage_coefficients
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
from .engines.history import LinearStep, linear_update
from .engines.renoise import ancestral_split

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource


def affine_step(a: float, b: float, c: float) -> LinearStep:
    """x_t = a x_s + b D(x_s) + c xi as a one-term linear step."""
    return LinearStep(lin=a, weights=(b,), noise_std=c)


# ---------------------------------------------------------------------------------------------
# Euler-Maruyama
# ---------------------------------------------------------------------------------------------


def log_rates(schedule: NoiseSchedule, t: float) -> tuple[float, float]:
    """(d log alpha/dt, d log sigma/dt) at the schedule's time t, in float64.

    Uses the schedule's ``d_alpha_dt`` / ``d_sigma_dt`` (closed forms for VPLinear, VPCosine,
    DiscreteVP, EDM, VE's alpha and rectified flow; VE's sigma' is a central difference
    with ~1e-10 relative error; the VP sigma' follows from alpha' exactly).
    """
    alpha, sigma = float(schedule.alpha(t)), float(schedule.sigma(t))
    return schedule.d_alpha_dt(t) / alpha, schedule.d_sigma_dt(t) / sigma


@dataclass(frozen=True)
class _AffineSolver(Solver):
    """Solvers whose step is x' = a x + b D(x) + c s_noise xi with precomputed (a, b, c):
    order 1, weak order 1 when noise is injected, 1 NFE per step (not registered)."""

    order = 1


    @property
    def s_noise(self) -> float:
        return 1.0

    @property
    def eta(self) -> float:
        return 1.0

    @property
    def weak_order(self) -> float | None:
        return 1.0 if self.eta > 0 else None

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        d = model.data(x, plan.points[i])
        out = linear_update(i, x, plan.extra[i], (d,), plan.points, noise, self.s_noise)
        return StepOutput(x=out, state=None, denoised=d)


@dataclass(frozen=True)
class _AffineSDE(_AffineSolver):
    """The eta-family options (eta in [0, 100], s_noise in [0, 10]) (not registered)."""

    eta: float = 1.0
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        check_sde_options(self.name, self.eta, self.s_noise)


@register
@dataclass(frozen=True)
class EulerMaruyama(_AffineSDE):
    r"""Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6) in the schedule's time.

    With f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2 = -2 sigma^2 d lambda/dt
    (the forward SDE dx = f x dt + g dw whose marginals are alpha x0 + sigma n), the family

        dx = [f x - (1 + eta)/2 g^2 score(x)] dt + sqrt(eta) g dw_bar,
        score = -(x - alpha D)/sigma^2,

    has the data marginals for every eta >= 0 (eta = 1: Song et al.'s reverse SDE; eta = 0: the
    probability-flow ODE, and this solver is then Euler's method in t). One step from t_s to
    t_t (dt = t_t - t_s < 0) evaluates f, g at t_s:

        x_t = x_s + [f x_s - (1 + eta)/2 g^2 score] dt + sqrt(eta) g sqrt(|dt|) xi.

    f and lambda' are read from the schedule at plan time (:func:`log_rates`). Weak order 1
    (eta > 0; measured 1.04), strong order 1/2 in general (1 here: additive noise);
    order 1 at eta = 0. 1 NFE per step. Unlike the exponential integrators the linear part is
    not exact, so it needs small steps where the schedule is steep (e.g. near sigma_max).

    Args:
        eta: stochasticity (1: the reverse SDE; 0: Euler on the PF-ODE in t).
        s_noise: multiplies the injected noise (1 keeps the SDE; heuristic).
    """

    name = "euler_maruyama"
    title = "Euler–Maruyama on the reverse SDE in t"
    reference = "Song et al. 2021 (arXiv 2011.13456) eq. 6; Kloeden & Platen 1992 Sec. 9.1"
    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> LinearStep:
        p, q = points[i], points[i + 1]
        dt = q.t - p.t
        f, dlog_sigma = log_rates(schedule, p.t)
        dlam = f - dlog_sigma  # d lambda/dt (< 0): g^2/sigma^2 = -2 dlam
        k = 1.0 + self.eta
        return affine_step(
            a=1.0 + dt * f - dt * k * dlam,
            b=dt * k * dlam * p.alpha,
            c=p.sigma * math.sqrt(max(0.0, -2.0 * dlam * self.eta * abs(dt))),
        )


# ---------------------------------------------------------------------------------------------
# DDPM and DDIM(eta)
# ---------------------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class DDPM(_AffineSolver):
    r"""Ancestral sampling with the DDPM posterior (Ho et al. 2020, eq. 6-7), for any schedule.

    The forward transition from t (cleaner) to s (noisier) is x_s = alpha_{s|t} x_t +
    sigma_{s|t} n with alpha_{s|t} = alpha_s/alpha_t, sigma_{s|t}^2 = sigma_s^2 -
    alpha_{s|t}^2 sigma_t^2. The posterior q(x_t | x_s, x0 = D) has

        mean = (alpha_{s|t} sigma_t^2/sigma_s^2) x_s + (alpha_t sigma_{s|t}^2/sigma_s^2) D,
        var  = sigma_t^2 sigma_{s|t}^2/sigma_s^2,

    and since sigma_{s|t}^2/sigma_s^2 = 1 - e^{-2h}, alpha_{s|t} sigma_t/sigma_s = e^{-h}:
    x_t = (sigma_t/sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D + sigma_t sqrt(1 - e^{-2h}) xi
    (research note seeds_sa_solver.md Sec. 1.4; = SEEDS-1 at eta = 1). Exact for Dirac data;
    weak order 1 (measured 0.94 over N = 20-160). 1 NFE per step.

    Args:
        s_noise: multiplies the injected noise (1 is the posterior; heuristic).
    """

    name = "ddpm"
    title = "DDPM ancestral"
    reference = "Ho et al. 2020 (arXiv 2006.11239) eq. 6-7; research note Sec. 1.4"
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        check_range(self.name, "s_noise", self.s_noise, 0.0, MAX_S_NOISE)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> LinearStep:
        c = stage_coefficients(points[i], points[i + 1], eta=1.0, form="data")
        return affine_step(
            a=c.lin, b=c.w0, c=c.noise_std)


@register
@dataclass(frozen=True)
class DDIMEta(_AffineSolver):
    r"""DDIM with stochasticity eta_DDIM (Song et al. 2021, eq. 12 and 16).

    With eps_hat = (x_s - alpha_s D)/sigma_s and the per-step noise std

        c = eta sigma_t sqrt(1 - e^{-2h})
          (= eta sqrt((1 - abar_t)/(1 - abar_s)) sqrt(1 - abar_s/abar_t) for VP, eq. 16),

    x_t = alpha_t D + sqrt(sigma_t^2 - c^2) eps_hat + c xi. eta = 0 is DDIM (``ddim``),
    eta = 1 the DDPM posterior (``ddpm``); in between it differs from the eta-SDE family
    (``seeds_1``) except at 0 and 1 (research note Sec. 1.4). Exact for Dirac data; weak
    order 1. 1 NFE per step.

    Args:
        eta: eta_DDIM in [0, 1] (default 1, the stochastic end; 0 gives DDIM).
    """

    name = "ddim_eta"
    title = "DDIM with η_DDIM"
    reference = "Song et al. 2021 (arXiv 2010.02502) eq. 12, 16"
    eta: float = 1.0

    def __post_init__(self) -> None:
        check_range(self.name, "eta", self.eta, 0.0, 1.0)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> LinearStep:
        p, q = points[i], points[i + 1]
        h = q.lam - p.lam
        one_minus = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        c = self.eta * q.sigma * math.sqrt(one_minus)
        # sqrt(sigma_t^2 - c^2) = sigma_t sqrt(1 - eta^2 (1 - e^{-2h}))
        keep = q.sigma * math.sqrt(max(0.0, 1.0 - self.eta**2 * one_minus))
        return affine_step(
            a=keep / p.sigma, b=q.alpha - keep * p.alpha / p.sigma, c=c)


# ---------------------------------------------------------------------------------------------
# Euler ancestral
# ---------------------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class EulerAncestral(_AffineSDE):
    r"""Euler ancestral in sigma~ (k-diffusion ``sample_euler_ancestral`` convention).

    With s = sigma~_s, n = sigma~_t and (sigma_down, sigma_up) from :func:`ancestral_split`:

        x~_down = x~_s + (sigma_down - s)(x~_s - D)/s,   x~_t = x~_down + sigma_up s_noise xi,

    and x_t = alpha_t x~_t. At eta = 1, sigma_down = n^2/s and the step is exactly the DDPM
    posterior step (``ddpm``); eta = 0 is Euler (= DDIM). Exact for Dirac data (s_noise = 1);
    weak order 1 (measured 0.94). 1 NFE per step.

    Args:
        eta: ancestral noise fraction (default 1).
        s_noise: multiplies the injected noise (default 1).
    """

    name = "euler_ancestral"
    title = "Euler ancestral (k-diffusion)"
    reference = "Karras et al. 2022 (arXiv 2206.00364) Sec. 4; Ho et al. 2020 eq. 6-7"
    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> LinearStep:
        p, q = points[i], points[i + 1]
        s, n = p.sigma_edm, q.sigma_edm
        down, up = ancestral_split(s, n, self.eta)
        return affine_step(
            a=q.alpha * down / (s * p.alpha), b=q.alpha * (1.0 - down / s),
                          c=q.alpha * up)

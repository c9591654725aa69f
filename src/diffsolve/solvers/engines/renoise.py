"""Noise splits shared by the ancestral and churning samplers.

* :func:`ancestral_split` -- an ancestral step s -> n in sigma~ = sigma/alpha goes
  deterministically to sigma_down and adds noise of std sigma_up, with
  sigma_down^2 + sigma_up^2 = n^2 and sigma_up = min(n, eta sqrt(n^2 (s^2 - n^2)/s^2))
  (k-diffusion's ``get_ancestral_step``; at eta = 1 the DDPM posterior, Ho et al. 2020 eq. 7).
* :func:`churn_gamma`, :func:`churn_std` -- EDM's churn (Karras et al. 2022, Alg. 2 lines 3-6):
  raise sigma~ to sigma_hat = sigma~ (1 + gamma) by adding noise of std
  sqrt(sigma_hat^2 - sigma~^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from ...core.schedules import EvalPoint, NoiseSchedule
from ..base import MAX_S_NOISE, GridPlan, Solver, check_range

if TYPE_CHECKING:
    from ...core.noise import NoiseSource

MAX_GAMMA = math.sqrt(2.0) - 1.0


def ancestral_split(s: float, n: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step s -> n in sigma~ (module docstring)."""
    if eta == 0.0:
        return n, 0.0
    up = min(n, eta * n * math.sqrt(max(0.0, -math.expm1(2.0 * math.log(n / s)))))
    return math.sqrt(max(0.0, n * n - up * up)), up


def churn_gamma(s: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM's gamma_i = min(S_churn/N, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0
    (Karras et al. 2022, Alg. 2 line 3; N counts every interval, the one into 0 included)."""
    if s_churn <= 0.0 or not (s_tmin <= s <= s_tmax):
        return 0.0
    return min(s_churn / n_steps, MAX_GAMMA)


def churn_std(s: float, s_hat: float) -> float:
    """sqrt(s_hat^2 - s^2), the std that raises noise level s to s_hat (Alg. 2 line 5)."""
    return s_hat * math.sqrt(max(0.0, -math.expm1(2.0 * math.log(s / s_hat))))


@dataclass(frozen=True)
class Churn:
    """The churned start of one step: the point at sigma_hat and the noise std to get there."""

    hat: EvalPoint
    std: float


@dataclass(frozen=True)
class ChurnSolver(Solver):
    """Engine of the churning samplers: EDM's churn before a deterministic step (not
    registered). A solver supplies the step (``step`` using :meth:`churned`) and its cost.

    Args:
        s_churn: S_churn >= 0 (default 0: no churn, a deterministic solver).
        s_tmin, s_tmax: the sigma~ window where churn applies (default [0, inf)).
        s_noise: S_noise, multiplies the churn noise (default 1).
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        check_range(self.name, "s_churn", self.s_churn, 0.0, 1e6)
        check_range(self.name, "s_tmin", self.s_tmin, 0.0, math.inf)
        check_range(self.name, "s_tmax", self.s_tmax, self.s_tmin, math.inf)
        check_range(self.name, "s_noise", self.s_noise, 0.0, MAX_S_NOISE)

    @property
    def weak_order(self) -> float | None:
        """The deterministic order with churn (measured: Euler 0.92, DPM-2 1.96 with
        S_churn = 10, docs/kdiffusion.md); None without churn."""
        return float(self.order) if self.s_churn > 0 and self.s_noise > 0 else None

    def churn(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
              denoise_final: bool) -> Churn:
        """sigma_hat = sigma~_i (1 + gamma_i), capped at the schedule's sigma~_max so the model
        is never evaluated outside its range."""
        p = points[i]
        n_steps = len(points) - 1 + (1 if denoise_final else 0)
        s = p.sigma_edm
        gamma = churn_gamma(s, n_steps, self.s_churn, self.s_tmin, self.s_tmax)
        s_hat = min(s * (1.0 + gamma), max(s, schedule.sigma_edm_max))
        if s_hat <= s:
            return Churn(hat=p, std=0.0)
        return Churn(hat=schedule.point(-math.log(s_hat)), std=churn_std(s, s_hat))

    def churned(self, i: int, x: Tensor, c: Churn, plan: GridPlan, noise: NoiseSource,
                ) -> Tensor:
        """x~_hat = x~_i + sqrt(sigma_hat^2 - sigma~_i^2) S_noise xi (Alg. 2 lines 5-6)."""
        p, q = plan.points[i], plan.points[i + 1]
        x_ve = x / p.alpha
        if c.std > 0.0 and self.s_noise != 0.0:
            xi = noise.normal(x, step=i, draw=0, lam_from=p.lam, lam_to=q.lam)
            x_ve = x_ve + (c.std * self.s_noise) * xi
        return x_ve

"""Analytic models with known answers, shared by the tests."""

from __future__ import annotations

import math

import torch

from diffsolve.bench.exact_moments import linear_output_moments
from diffsolve.models import Denoiser
from diffsolve.schedules import NoiseSchedule


class GaussianData:
    """Data x0 ~ N(mu, diag(var)): exact denoiser and closed-form PF-ODE flow.

    D(x, alpha, sigma) = mu + alpha var/(alpha^2 var + sigma^2) (x - alpha mu), and in EDM
    coordinates x~(s') = mu + (x~(s) - mu) sqrt(var + s'^2)/sqrt(var + s^2).
    """

    def __init__(self, mu: list[float], var: list[float]) -> None:
        self.mu = torch.tensor(mu, dtype=torch.float64)
        self.var = torch.tensor(var, dtype=torch.float64)

    def denoiser(self, schedule: NoiseSchedule) -> Denoiser:
        points: dict[float, tuple[float, float]] = {}

        def time_input(p):  # remember alpha, sigma for this lambda (host floats)
            points[p.lam] = (p.alpha, p.sigma)
            return p.lam

        def net(x: torch.Tensor, lam_vec: torch.Tensor) -> torch.Tensor:
            a, s = points[float(lam_vec[0])]
            mu, var = self.mu.to(x), self.var.to(x)
            return mu + a * var / (a * a * var + s * s) * (x - a * mu)

        return Denoiser(net, schedule, prediction="x0", time_input=time_input)

    def flow_edm(self, x_edm: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
        return self.mu + (x_edm - self.mu) * torch.sqrt(self.var + s_to**2) / torch.sqrt(
            self.var + s_from**2)


def fitted_slope(hs: list[float], errors: list[float]) -> float:
    """Least-squares slope of log(error) against log(h)."""
    lx = [math.log(h) for h in hs]
    ly = [math.log(e) for e in errors]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx)


def gaussian_weak_errors(solver, options: dict, schedule: NoiseSchedule, grids: list,
                         s_max: float, s_min: float, mu: float = 0.5,
                         var: float = 0.25) -> list[float]:
    """Weak errors |E out - mu| + |Var out - (var + s_min^2)| (EDM scaling) of ``solver`` on
    1-D data N(mu, var), exactly (:func:`linear_output_moments`), one per grid from s_max."""
    model = GaussianData([mu], [var]).denoiser(schedule)
    errors = []
    for grid in grids:
        a0 = schedule.point(float(grid.lams[0])).alpha
        a1 = schedule.point(float(grid.lams[-1])).alpha
        mean, out_var = linear_output_moments(model, grid, solver, mu * a0,
                                              (var + s_max**2) * a0 * a0, **options)
        errors.append(abs(out_var / a1**2 - (var + s_min**2)) + abs(mean / a1 - mu))
    return errors

"""Analytic models with known answers, shared by the tests."""

from __future__ import annotations

import math

import torch

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


def linear_output_moments(model: Denoiser, grid, solver, x_mean: float, x_var: float,
                          **options) -> tuple[float, float]:
    """Exact mean and variance of a sampler's output on 1-D Gaussian data, without Monte Carlo.

    With Gaussian data the denoiser is affine, so every exponential-integrator update is
    linear in the start x_T and in each noise draw xi_k: out = a x_T + sum_k b_k xi_k + c
    (aesthetics research note Sec. 3.5, tier 5). One batched run recovers a, c and every b_k:
    element 0 starts at 0 with zero noise, element 1 at 1, element 2 + k at 0 with a unit
    impulse in draw k. Then E[out] = a E[x_T] + c and Var[out] = a^2 Var[x_T] + sum b_k^2.
    """
    from diffsolve import solve
    from diffsolve.noise import GivenNoise, RecordingNoise, ZeroNoise

    probe = RecordingNoise(ZeroNoise())
    solve(model, torch.zeros(1, 1, dtype=torch.float64), grid, solver, noise=probe,
          progress=False, **options)
    keys = sorted({(r.step, r.draw) for r in probe.requests})
    batch = 2 + len(keys)
    x = torch.zeros(batch, 1, dtype=torch.float64)
    x[1] = 1.0
    given = {}
    for k, key in enumerate(keys):
        t = torch.zeros(batch, 1, dtype=torch.float64)
        t[2 + k] = 1.0
        given[key] = t
    out = solve(model, x, grid, solver, noise=GivenNoise(given), progress=False, **options).x
    c = out[0, 0]
    a = out[1, 0] - c
    b = out[2:, 0] - c
    mean = float(a * x_mean + c)
    var = float(a * a * x_var + (b * b).sum())
    return mean, var


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

"""Measured convergence orders of every deterministic solver configuration against the order
it declares (``solver.order``), on analytic models with known answers. No exception table:
each option set's declared order is what is measured.

Global error at the last node against the exact flow (Gaussian data, closed form) or a DOP853
reference at rtol 1e-12 (Gaussian mixture, nonlinear D), on grids uniform in lambda from
sigma~ = 2 to 0.05 (the range where the data's denoiser changes, so that the asymptotic
regime, including the O(h^2) of a lower-order multistep start, shows at N = 64..512 steps);
the fitted log-log slope must be within 0.3 of the declared order.
"""

from __future__ import annotations

import math

import pytest
import torch

from analytic import fitted_slope
from diffsolve import Grid, solve
from diffsolve.noise import ZeroNoise
from diffsolve.schedules import EDM, DiscreteVP, RectifiedFlow, VPLinear
from diffsolve.solvers import get_solver, list_solvers
from diffsolve.zoo import GaussianMixture
from solver_variants import all_variants, variant_id

STEPS = [64, 128, 256, 512]
#: DPM-Solver-v3's plan integrates its statistics per step (~5 ms a step): half the steps
FEW_STEPS = [32, 64, 128, 256]
SIGMA_MAX, SIGMA_MIN = 2.0, 0.05
TOLERANCE = 0.3

ODE_VARIANTS = [(n, o) for n, o in all_variants() if not get_solver(n, **o).stochastic]
ODE_DEFAULTS = [n for n in list_solvers() if not get_solver(n).stochastic]


def _steps(name: str) -> list[int]:
    return FEW_STEPS if name == "dpm_solver_v3" else STEPS


def _grid(n: int, schedule) -> Grid:
    lams = torch.linspace(-math.log(SIGMA_MAX), -math.log(SIGMA_MIN), n + 1, dtype=torch.float64)
    return Grid.from_lambdas(lams, schedule)


def _run(solver, model, x_edm, n, schedule):
    grid = _grid(n, schedule)
    first = schedule.point(float(grid.lams[0]))
    last = schedule.point(float(grid.lams[-1]))
    out = solve(model, x_edm * first.alpha, grid, solver, noise=ZeroNoise(), progress=False)
    return out.x / last.alpha


def _gaussian_slope(solver, name, schedule, gaussian_data) -> tuple[float, list[float]]:
    model = gaussian_data.denoiser(schedule)
    x_edm = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_edm = gaussian_data.mu + x_edm * math.sqrt(SIGMA_MAX**2 + 1)
    exact = gaussian_data.flow_edm(x_edm, SIGMA_MAX, SIGMA_MIN)
    steps = _steps(name)
    errors = [float((_run(solver, model, x_edm, n, schedule) - exact).abs().max())
              for n in steps]
    return fitted_slope([1.0 / n for n in steps], errors), errors


@pytest.mark.parametrize(("name", "options"), ODE_VARIANTS,
                         ids=[variant_id(n, o) for n, o in ODE_VARIANTS])
def test_every_option_set_has_its_declared_order(name, options, gaussian_data):
    solver = get_solver(name, **options)
    slope, errors = _gaussian_slope(solver, name, EDM(0.01, 100.0), gaussian_data)
    assert abs(slope - solver.order) < TOLERANCE, (
        f"{variant_id(name, options)}: declared {solver.order}, fitted {slope:.2f}, "
        f"errors {errors}")


@pytest.mark.parametrize("name", ODE_DEFAULTS)
@pytest.mark.parametrize("schedule", [VPLinear(), DiscreteVP.linear(), RectifiedFlow()],
                         ids=lambda s: type(s).__name__)
def test_order_under_every_schedule(name, schedule, gaussian_data):
    solver = get_solver(name)
    slope, errors = _gaussian_slope(solver, name, schedule, gaussian_data)
    assert abs(slope - solver.order) < TOLERANCE, f"{name}: errors {errors}, {slope:.2f}"


@pytest.mark.parametrize("name", ODE_DEFAULTS)
def test_order_on_gaussian_mixture(name):
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.01, 100.0)
    model = gmm.denoiser(schedule)
    x_edm = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x_edm = x_edm * math.sqrt(SIGMA_MAX**2 + 1)
    reference = gmm.ode_reference(x_edm, SIGMA_MAX, SIGMA_MIN)
    solver = get_solver(name)
    steps = _steps(name)
    errors = [float((_run(solver, model, x_edm, n, schedule) - reference).abs().max())
              for n in steps]
    slope = fitted_slope([1.0 / n for n in steps], errors)
    assert abs(slope - solver.order) < TOLERANCE, f"{name}: errors {errors}, {slope:.2f}"


def test_lower_order_start_is_second_order_and_singlestep_restores_three(gaussian_data):
    """Why dpmpp_3m declares 2 by default: the first-order first step has local error O(h^2).
    The single-step warm-up is third order, and more accurate at every N."""
    default, single = get_solver("dpmpp_3m"), get_solver("dpmpp_3m", warmup="singlestep")
    assert (default.order, single.order) == (2, 3)
    s_default, e_default = _gaussian_slope(default, "dpmpp_3m", EDM(0.01, 100.0), gaussian_data)
    s_single, e_single = _gaussian_slope(single, "dpmpp_3m", EDM(0.01, 100.0), gaussian_data)
    assert abs(s_default - 2.0) < TOLERANCE and abs(s_single - 3.0) < TOLERANCE
    assert all(s < d for s, d in zip(e_single, e_default, strict=True))


def test_euler_equals_ddim_exactly(gaussian_data):
    """Euler in sigma~ is algebraically DDIM (Karras et al. 2022, Sec. 3)."""
    schedule = VPLinear()
    model = gaussian_data.denoiser(schedule)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = _grid(7, schedule)
    a = solve(model, x, grid, "euler", progress=False).x
    b = solve(model, x, grid, "ddim", progress=False).x
    c = solve(model, x, grid, "dpm_solver_1", prediction="data", progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-12)

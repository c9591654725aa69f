"""SEEDS-1/2/3 and the SDE multistep solvers: limits, exact steps, weak and strong orders."""

from __future__ import annotations

import math

import pytest
import torch

from analytic import GaussianData, fitted_slope, linear_output_moments
from diffsolve import Grid, solve
from diffsolve.models import Denoiser
from diffsolve.noise import BrownianPath, GivenNoise
from diffsolve.schedules import EDM, DiscreteVP, VPLinear
from diffsolve.zoo import GaussianMixture

SIGMA_MAX, SIGMA_MIN = 10.0, 0.1
WEAK_STEPS = [40, 80, 160, 320]


def _grid(n: int, smax: float = SIGMA_MAX, smin: float = SIGMA_MIN) -> Grid:
    return Grid.from_lambdas(torch.linspace(-math.log(smax), -math.log(smin), n + 1,
                                            dtype=torch.float64))


@pytest.mark.parametrize(("seeds", "seeds_opts", "ode", "ode_opts"), [
    ("seeds_1", {}, "ddim", {}),
    ("seeds_2", {}, "dpmpp_2s", {}),
    ("seeds_2", {"r": 0.7}, "dpmpp_2s", {"r": 0.7}),
    ("seeds_3", {}, "dpmpp_3s", {}),
    ("seeds_3", {"prediction": "noise"}, "dpm_solver_3", {}),
    ("dpmpp_2m_sde", {}, "dpmpp_2m", {}),
    ("dpmpp_3m_sde", {}, "dpmpp_3m", {}),
])
@pytest.mark.parametrize("schedule", [EDM(0.01, 50.0), VPLinear()], ids=["EDM", "VP"])
def test_eta_zero_equals_ode_counterpart(seeds, seeds_opts, ode, ode_opts, schedule):
    gmm = GaussianMixture.random(d=3, k=3, seed=11)
    model = gmm.denoiser(schedule)
    grid = Grid.from_sigmas([20.0, 8.0, 3.0, 1.0, 0.4, 0.1, 0.0], schedule)
    a0 = schedule.point(float(grid.lams[0])).alpha
    x = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x * 20.0 * a0
    a = solve(model, x, grid, seeds, eta=0.0, progress=False, **seeds_opts).x
    b = solve(model, x, grid, ode, progress=False, **ode_opts).x
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_seeds_1_at_eta_1_is_the_ddpm_posterior_step():
    """q(x_t | x_s, x0 = D) (Ho et al. 2020 eq. 6-7) on a DDPM table, written out here:
    mean = sqrt(ab_t) beta_st/(1-ab_s) D + sqrt(a_st)(1-ab_t)/(1-ab_s) x_s,
    var = (1-ab_t)/(1-ab_s) beta_st, with a_st = ab_s/ab_t, beta_st = 1 - a_st
    (s the noisier step, t the cleaner one)."""
    schedule = DiscreteVP.linear()
    ab = schedule.alphas_cumprod
    n_s, n_t = 700, 650
    lam_s, lam_t = float(schedule.lam(float(n_s))), float(schedule.lam(float(n_t)))
    gmm = GaussianMixture.random(d=4, k=2, seed=1)
    model = gmm.denoiser(schedule)
    x_s = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    xi = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grid = Grid.from_lambdas([lam_s, lam_t])
    ours = solve(model, x_s, grid, "seeds_1", eta=1.0, noise=GivenNoise([xi]),
                 progress=False).x
    d = gmm.denoise(x_s, math.sqrt(float(ab[n_s])), math.sqrt(1 - float(ab[n_s])))
    abs_, abt = float(ab[n_s]), float(ab[n_t])
    a_st = abs_ / abt
    beta_st = 1 - a_st
    mean = math.sqrt(abt) * beta_st / (1 - abs_) * d + math.sqrt(a_st) * (1 - abt) / (
        1 - abs_) * x_s
    var = (1 - abt) / (1 - abs_) * beta_st
    torch.testing.assert_close(ours, mean + math.sqrt(var) * xi, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "opts"), [
    ("seeds_1", {"eta": 0.5}), ("seeds_2", {"r": 0.8}), ("seeds_2", {"solver_type": "phi_2"}),
    ("seeds_3", {"r1": 0.2, "r2": 0.9}), ("dpmpp_2m_sde", {}), ("dpmpp_3m_sde", {"eta": 0.7}),
    ("seeds_2", {"r": 0.3, "eta": 2.0}),
])
def test_dirac_data_law_is_exact(name, opts):
    """Data x0 = mu (D = mu): every node's law is N(alpha mu, sigma^2) exactly, for any eta and
    stage fractions (research note T3). Catches wrong linear parts, weights or noise splits."""
    mu = 0.7
    schedule = EDM(0.01, 50.0)
    model = Denoiser(lambda x, t: torch.full_like(x, mu), schedule, prediction="x0")
    grid = _grid(7)
    mean, var = linear_output_moments(model, grid, name, mu, SIGMA_MAX**2, **opts)
    assert abs(mean - mu) < 1e-12
    assert abs(var - SIGMA_MIN**2) < 1e-12


def _weak_errors(name, opts, steps=WEAK_STEPS):
    data = GaussianData([0.5], [0.25])
    model = data.denoiser(EDM(0.01, 50.0))
    errors = []
    for n in steps:
        mean, var = linear_output_moments(model, _grid(n), name, 0.5, 0.25 + SIGMA_MAX**2,
                                          **opts)
        errors.append(abs(var - (0.25 + SIGMA_MIN**2)) + abs(mean - 0.5))
    return errors


@pytest.mark.parametrize(("name", "opts", "minimum"), [
    ("seeds_1", {}, 0.8),
    ("seeds_2", {}, 1.7),
    ("seeds_2", {"r": 0.8}, 1.7),
    ("seeds_2", {"solver_type": "phi_2", "r": 1.0}, 1.7),
    ("seeds_3", {}, 1.7),
    ("seeds_3", {"prediction": "noise"}, 1.7),
])
def test_weak_order(name, opts, minimum):
    """Weak error of the output mean and variance on Gaussian data (exact, no Monte Carlo),
    eta = 1, uniform lambda grids of 40-320 steps."""
    errors = _weak_errors(name, opts)
    slope = fitted_slope([1.0 / n for n in WEAK_STEPS], errors)
    assert slope >= minimum, f"{name} {opts}: errors {errors}, weak order {slope:.2f}"


def test_seeds_3_noise_form_is_not_exact_for_dirac_data():
    """The noise form is exact when eps is locally constant, the data form when D is (research
    note Sec. 1.3): on Dirac data the data form is exact (test above), the noise form is not,
    and its variance error shrinks with the step count (it is a consistent scheme)."""
    mu, schedule = 0.7, EDM(0.01, 50.0)
    model = Denoiser(lambda x, t: torch.full_like(x, mu), schedule, prediction="x0")
    errs = [abs(linear_output_moments(model, _grid(n), "seeds_3", mu, SIGMA_MAX**2,
                                      prediction="noise")[1] - SIGMA_MIN**2) for n in (7, 28)]
    assert errs[0] > 1e-4 and errs[1] < errs[0] / 4


def test_seeds_3_weak_order_is_two_not_three():
    """Research note Appendix B: with Brownian-increment noise SEEDS-3 saturates at weak
    order 2. Pins our measurement."""
    errors = _weak_errors("seeds_3", {})
    slope = fitted_slope([1.0 / n for n in WEAK_STEPS], errors)
    assert 1.7 <= slope <= 2.4


@pytest.mark.parametrize("name", ["seeds_1", "seeds_2", "seeds_3", "dpmpp_2m_sde"])
def test_strong_convergence_with_brownian_path(name):
    """Same Brownian path at every step count: the pathwise RMS error against a 1024-step run
    shrinks about linearly in h (additive noise; measured 0.8-1.1, docs/sde_solvers.md);
    with i.i.d. noise per step count there is no pathwise convergence. Gaussian data, so no
    sample can switch modes between runs (which dominates pathwise errors on mixtures)."""
    model = GaussianData([0.5, -1.0], [0.3, 1.5]).denoiser(EDM(0.01, 50.0))
    lam0, lam1 = -math.log(SIGMA_MAX), -math.log(SIGMA_MIN)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    x = x * SIGMA_MAX

    def run(n, noise):
        return solve(model, x, _grid(n), name, noise=noise, progress=False).x

    # leaves finer than the finest stage gap, so every queried point lies in its own leaf
    path = BrownianPath.from_seed(5, 64, lam0, lam1, depth=12)
    fine = run(1024, path)
    steps = [16, 32, 64, 128]
    errors = [float((run(n, path) - fine).pow(2).mean().sqrt()) for n in steps]
    slope = fitted_slope([1.0 / n for n in steps], errors)
    assert slope > 0.6, f"strong errors {errors}, order {slope:.2f}"
    iid = float((run(128, 5) - fine).pow(2).mean().sqrt())
    assert iid > 5 * errors[-1]

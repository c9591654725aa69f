"""dpm_multistep (DPMSolverMultistep's family as one solver): measured convergence orders on a
Gaussian mixture against a DOP853 reference, and its agreement with diffsolve's own
DPM-Solver++(2M) where both are the same method. diffusers conformance:
tests/test_diffusers_conformance.py."""

from __future__ import annotations

import math

import pytest
import torch

from analytic import fitted_slope
from diffsolve import Grid, SolverOptionError, solve
from diffsolve.noise import ZeroNoise
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver
from diffsolve.zoo import GaussianMixture

STEPS = [64, 128, 256, 512]
SIGMA_MAX, SIGMA_MIN = 10.0, 0.1


def _errors(**options):
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.01, 100.0)
    model = gmm.denoiser(schedule)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = x * SIGMA_MAX
    ref = gmm.ode_reference(x, SIGMA_MAX, SIGMA_MIN)
    out = []
    for n in STEPS:
        lams = torch.linspace(-math.log(SIGMA_MAX), -math.log(SIGMA_MIN), n + 1,
                              dtype=torch.float64)
        res = solve(model, x, Grid.from_lambdas(lams, schedule),
                    get_solver("dpm_multistep", **options), noise=ZeroNoise(), progress=False)
        out.append(float((res.x - ref).abs().max()))
    return out


@pytest.mark.parametrize("algo", ["dpmsolver++", "dpmsolver"])
@pytest.mark.parametrize(("order", "kind", "expected"),
                         [(1, "midpoint", 1.0), (2, "midpoint", 2.0), (2, "heun", 2.0),
                          (3, "midpoint", 2.0)])
def test_convergence_order(algo, order, kind, expected):
    """Orders 1 and 2 converge at their order; order 3 started with lower-order steps (as the
    scheduler does) is globally O(h^2), like dpmpp_3m (tests/test_convergence.py), and more
    accurate than order 2."""
    errors = _errors(algorithm_type=algo, solver_order=order, solver_type=kind,
                     lower_order_final=False)
    slope = fitted_slope([1.0 / n for n in STEPS], errors)
    assert abs(slope - expected) < 0.3, (errors, slope)
    if order == 3:
        second = _errors(algorithm_type=algo, solver_order=2, lower_order_final=False)
        assert errors[-1] < 0.5 * second[-1]


def test_second_order_equals_dpmpp_2m():
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.01, 100.0)
    model = gmm.denoiser(schedule)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 10
    grid = Grid.from_sigmas([10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.0], schedule)
    for kind in ("midpoint", "heun"):
        a = solve(model, x, grid, "dpm_multistep", progress=False, solver_type=kind).x
        b = solve(model, x, grid, "dpmpp_2m", progress=False, solver_type=kind).x
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bad_options():
    with pytest.raises(SolverOptionError, match="solver_order"):
        get_solver("dpm_multistep", algorithm_type="sde-dpmsolver", solver_order=3)
    with pytest.raises(SolverOptionError, match="algorithm_type"):
        get_solver("dpm_multistep", algorithm_type="dpm")

"""pndm (Liu et al. 2022): measured convergence order and NFE count. Conformance with
diffusers' PNDMScheduler: tests/test_diffusers_conformance.py::test_pndm_reproduced."""

from __future__ import annotations

import math

import pytest
import torch

from analytic import fitted_slope
from diffsolve import Grid, solve
from diffsolve.noise import ZeroNoise
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver
from diffsolve.zoo import GaussianMixture

STEPS = [64, 128, 256]


def _run(n, warmup, to_zero=False):
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.01, 100.0)
    model = gmm.denoiser(schedule)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10
    lams = torch.linspace(-math.log(10.0), -math.log(0.1), n + 1, dtype=torch.float64)
    if to_zero:
        lams = torch.cat([lams, torch.tensor([math.inf], dtype=torch.float64)])
    res = solve(model, x, Grid.from_lambdas(lams, schedule), get_solver("pndm", warmup=warmup),
                noise=ZeroNoise(), progress=False)
    return res, gmm.ode_reference(x, 10.0, 0.1), model


@pytest.mark.parametrize("warmup", ["prk", "plms"])
def test_convergence_order(warmup):
    errors = [float((r - ref).abs().max()) for r, ref in
              ((_run(n, warmup)[0].x, _run(n, warmup)[1]) for n in STEPS)]
    slope = fitted_slope([1.0 / n for n in STEPS], errors)
    assert abs(slope - get_solver("pndm").order) < 0.3, (errors, slope)


@pytest.mark.parametrize(("warmup", "expected"), [("prk", 4 * 3 + 7 + 1), ("plms", 2 + 9 + 1)])
def test_nfe(warmup, expected):
    _, _, model = _run(10, warmup, to_zero=True)
    assert get_solver("pndm", warmup=warmup).nfe(10, denoise_final=True) == expected == model.nfe


def test_last_step_into_zero_is_a_plms_step():
    """The final update uses the eps history (PNDM's last PLMS step), not only D(x_N); on a
    grid of one step it is D(x_N) (no history)."""
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.01, 100.0)
    model = gmm.denoiser(schedule)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10
    seen = []
    grid = Grid.from_sigmas([10.0, 5.0, 2.0, 1.0, 0.5, 0.0], schedule)
    res = solve(model, x, grid, "pndm", progress=False, warmup="plms",
                callback=lambda info: seen.append(info["x"]))
    last = schedule.point(float(grid.finite_lams()[-1]))
    plain = model.data(seen[-2], last)  # x_N is the state the callback saw before the end
    assert float((plain - res.x).abs().max()) > 1e-4
    one = solve(model, x, Grid.from_sigmas([10.0, 0.0], schedule), "pndm", progress=False)
    torch.testing.assert_close(one.x, model.data(x, schedule.point(-math.log(10.0))))

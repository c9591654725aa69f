"""Contracts of the sampling loop and of every registered solver."""

from __future__ import annotations

import math

import pytest
import torch

import diffsolve
from diffsolve import Grid, NonFiniteError, SolverOptionError, sample, solve
from diffsolve.models import Denoiser
from diffsolve.schedules import EDM, VPLinear
from diffsolve.solvers import get_solver, list_solvers, solver_class
from diffsolve.zoo import GaussianMixture

ALL = list_solvers()


@pytest.fixture(scope="module")
def gmm_model():
    return GaussianMixture.random(d=3, k=3, seed=0).denoiser(EDM())


@pytest.mark.parametrize("name", ALL)
def test_solver_contract(name, gmm_model):
    """Shape and dtype kept, NFE as declared, no hidden state, global RNG untouched,
    batch-split invariance, finite output."""
    solver = get_solver(name)
    rng_before = torch.random.get_rng_state()
    gmm_model.reset_nfe()
    full = sample(gmm_model, (8, 3), solver=solver, steps=6, seed=3, progress=False)
    assert full.x.shape == (8, 3) and full.x.dtype == torch.float32
    assert torch.isfinite(full.x).all()
    assert full.nfe == solver.nfe(5, denoise_final=True)  # 5 finite steps + the denoising step
    again = sample(gmm_model, (8, 3), solver=solver, steps=6, seed=3, progress=False)
    assert torch.equal(full.x, again.x)
    part_a = sample(gmm_model, (3, 3), solver=solver, steps=6, seed=3, progress=False)
    part_b = sample(gmm_model, (5, 3), solver=solver, steps=6, seed=3, offset=3, progress=False)
    torch.testing.assert_close(torch.cat([part_a.x, part_b.x]), full.x, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.random.get_rng_state(), rng_before)


@pytest.mark.parametrize("name", ALL)
def test_capabilities_declared(name):
    cls = solver_class(name)
    solver = get_solver(name)
    assert solver.order >= 0 and solver.steady_evaluations >= 1  # lcm: 0, no convergence
    assert cls.reference, f"{name} cites no paper"
    assert cls.__doc__ and "NFE" in cls.__doc__, f"{name} docstring must state NFE per step"


def test_unknown_solver_suggests_closest():
    with pytest.raises(SolverOptionError, match="Did you mean 'dpmpp_2m'"):
        get_solver("dpmpp2m")


def test_unknown_option_is_an_error():
    with pytest.raises(SolverOptionError, match="no option"):
        get_solver("dpmpp_2m", order=5)
    with pytest.raises(SolverOptionError, match="solver_type"):
        get_solver("dpmpp_2m", solver_type="rk4")
    with pytest.raises(SolverOptionError, match="r1"):
        get_solver("dpm_solver_2", r1=0.0)


def test_callback_trajectory_and_grid_ending_in_zero(gmm_model):
    seen = []
    res = sample(gmm_model, (4, 3), solver="heun", steps=5, callback=seen.append,
                 return_trajectory=True, progress=False)
    assert [c["i"] for c in seen] == [0, 1, 2, 3, 4]
    assert set(seen[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised", "lam", "sigma_next"}
    assert seen[-1]["sigma_next"] == 0.0
    assert len(res.trajectory) == 6
    assert torch.equal(res.trajectory[-1], res.x)
    # the last interval into sigma = 0 returns D(x) at the last finite node exactly
    last = gmm_model.schedule.point(float(res.grid.lams[-2]))
    torch.testing.assert_close(gmm_model.data(res.trajectory[-2], last), res.x)


def test_denoise_final_option(gmm_model):
    grid = diffsolve.grids.karras(4, gmm_model.schedule, to_zero=False)
    x = torch.randn(3, 3) * grid.sigmas[0]
    plain = solve(gmm_model, x, grid, "ddim", progress=False)
    denoised = solve(gmm_model, x, grid, "ddim", denoise_final=True, progress=False)
    assert denoised.nfe == plain.nfe + 1
    last = gmm_model.schedule.point(float(grid.lams[-1]))
    torch.testing.assert_close(denoised.x, gmm_model.data(plain.x, last))


def test_nan_guard_names_step_and_sigma():
    order: list[float] = []  # NaN at the 3rd noise level: deterministic, so replayable

    def net(x, t):
        s = float(t.flatten()[0])
        if s not in order:
            order.append(s)
        return x * (float("nan") if order.index(s) == 2 else 0.5)

    model = Denoiser(net, EDM(), prediction="x0", time_input="sigma")
    with pytest.raises(NonFiniteError, match=r"step 2 \(sigma=") as info:
        sample(model, (2, 2), solver="euler", steps=6, progress=False)
    assert info.value.step == 2 and info.value.sigma > 0
    with pytest.raises(NonFiniteError, match="step 2"):
        sample(model, (2, 2), solver="euler", steps=6, progress=False, check_finite="end")


def test_nfe_budget_and_errors(gmm_model):
    res = sample(gmm_model, (2, 3), solver="dpm_solver_3", nfe=10, progress=False)
    assert res.nfe == 10  # 3 finite steps x 3 + final denoise
    with pytest.raises(SolverOptionError, match="exactly one"):
        sample(gmm_model, (2, 3), solver="ddim", steps=4, nfe=4, progress=False)
    with pytest.raises(SolverOptionError, match="at least"):
        sample(gmm_model, (2, 3), solver="dpm_solver_3", nfe=3, progress=False)


def test_grid_errors_reach_the_user(gmm_model):
    with pytest.raises(diffsolve.GridError, match="strictly decreasing"):
        sample(gmm_model, (2, 3), solver="ddim", grid=[1.0, 2.0, 0.0], progress=False)
    with pytest.raises(diffsolve.GridError, match="schedule covers only"):
        sample(gmm_model, (2, 3), solver="ddim", grid=[500.0, 1.0, 0.0], progress=False)


def test_vp_state_scaling_matches_edm():
    """Parameterisation invariance (research note T10): the same grid in VP coordinates gives
    x_VP = alpha x_EDM (float64)."""
    gmm = GaussianMixture.random(d=2, k=3, seed=4)
    sig = [20.0, 5.0, 1.0, 0.3, 0.05]
    n = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name in ("dpmpp_2m", "dpm_solver_3", "heun", "dpmpp_3m"):
        vp, edm = VPLinear(), EDM(0.01, 50.0)
        g_vp, g_edm = Grid.from_sigmas(sig, vp), Grid.from_sigmas(sig, edm)
        a0 = vp.point(float(g_vp.lams[0])).alpha
        out_vp = solve(gmm.denoiser(vp), n * sig[0] * a0, g_vp, name, progress=False).x
        out_edm = solve(gmm.denoiser(edm), n * sig[0], g_edm, name, progress=False).x
        a1 = vp.point(float(g_vp.lams[-1])).alpha
        torch.testing.assert_close(out_vp, a1 * out_edm, rtol=1e-9, atol=1e-9)


def test_float32_state_close_to_float64():
    gmm = GaussianMixture.random(d=2, k=3, seed=5)
    model = gmm.denoiser(EDM())
    r64 = sample(model, (16, 2), solver="dpmpp_3m", steps=20, dtype=torch.float64,
                 progress=False).x
    r32 = sample(model, (16, 2), solver="dpmpp_3m", steps=20, dtype=torch.float32,
                 progress=False).x
    assert r32.dtype == torch.float32
    assert float((r32.double() - r64).abs().max()) < 1e-4
    assert math.isfinite(float(r32.sum()))

"""DPM-Solver-v3 and its empirical model statistics (EMS).

* degenerate EMS (l = 1, s = b = 0) reproduce DPM-Solver++ multistep to rounding;
* the exact piecewise-linear integrals reduce to phi-functions for constant statistics;
* measured orders of the predictor and of predictor + corrector;
* on Gaussian data the estimated EMS match their closed forms, and make a 3-step solve
  nearly exact (g is constant there);
* with estimated EMS, v3 beats DPM-Solver++(3M) at 5 and 10 NFE on the 2-D mixture (Karras);
* save / load round trip and option errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from analytic import fitted_slope
from diffsolve import Grid, SolverOptionError, make_grid, solve
from diffsolve.bench.models import gmm_model
from diffsolve.expint import phi
from diffsolve.schedules import EDM, VPLinear
from diffsolve.solvers.dpmpp_multistep import adams_step as adams_coefficients
from diffsolve.solvers.engines.history import step_orders
from diffsolve.v3_statistics import EMS, StepIntegrals, compute_statistics, gaussian_statistics
from diffsolve.zoo import GaussianMixture

SIGMA_MAX, SIGMA_MIN = 10.0, 0.1


def _grid(n: int, schedule) -> Grid:
    lams = torch.linspace(-math.log(SIGMA_MAX), -math.log(SIGMA_MIN), n + 1, dtype=torch.float64)
    return Grid.from_lambdas(lams, schedule)


def _start(gaussian_data, seed=1, batch=6):
    g = torch.Generator().manual_seed(seed)
    return gaussian_data.mu + torch.randn(batch, 4, dtype=torch.float64, generator=g) * math.sqrt(
        SIGMA_MAX**2 + 1)


def test_degenerate_order2_equals_dpmpp_2m_heun(gaussian_data):
    schedule = VPLinear()
    model = gaussian_data.denoiser(schedule)
    x = _start(gaussian_data) * schedule.point(-math.log(SIGMA_MAX)).alpha
    grid = _grid(9, schedule)
    a = solve(model, x, grid, "dpm_solver_v3", predictor_order=2, corrector="none",
              progress=False).x
    b = solve(model, x, grid, "dpmpp_2m", solver_type="heun", progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    c = solve(model, x, grid, "dpm_solver_v3", predictor_order=1, corrector="none",
              progress=False).x
    d = solve(model, x, grid, "ddim", progress=False).x
    torch.testing.assert_close(c, d, rtol=1e-12, atol=1e-12)


def test_degenerate_order3_equals_exponential_adams(gaussian_data):
    """Order 3 with l = 1, s = b = 0 is the exponential Adams-Bashforth method of dpmpp_3m
    (whose own warm-up step 2 uses the midpoint rule, hence the hand-rolled loop)."""
    schedule = EDM(0.01, 100.0)
    model = gaussian_data.denoiser(schedule)
    x0 = _start(gaussian_data)
    grid = _grid(7, schedule)
    pts = [schedule.point(float(v)) for v in grid.lams]
    x, hist = x0.clone(), []
    for i, o in enumerate(step_orders(3, 7, False, True)):
        hist.insert(0, model.data(x, pts[i]))
        c = adams_coefficients(tuple(pts), i, o, 0.0)
        x = c.lin * x + sum(w * d for w, d in zip(c.weights, hist, strict=False))
    v3 = solve(model, x0, grid, "dpm_solver_v3", corrector="none", progress=False).x
    torch.testing.assert_close(v3, x, rtol=1e-12, atol=1e-12)


def test_integrals_reduce_to_phi_functions():
    """Constant l = 1, s = 0: c_k = h^{k+1} phi_{k+1}(-h), decay = e^{-h} (exact quadrature)."""
    pw = EMS.constant(1.0, lams=(-3.0, -1.0, 0.5, 4.0)).piecewise()
    for lam_s, h in ((-2.0, 0.7), (0.3, 3.1), (-5.0, 9.0)):
        ints = StepIntegrals(pw, lam_s, lam_s + h, 3)
        assert ints.decay[0] == pytest.approx(math.exp(-h), rel=1e-13)
        for k in range(3):
            assert ints.c[k][0] == pytest.approx(h ** (k + 1) * phi(k + 1, -h), rel=1e-12)


def test_integrals_of_varying_statistics_match_fine_quadrature():
    lams = torch.linspace(-2, 2, 9, dtype=torch.float64)
    ems = EMS(lams, 0.5 + 0.3 * torch.sin(lams), 0.2 * torch.cos(lams), 0.1 * lams ** 2)
    pw = ems.piecewise()
    lam_s, lam_t = -1.3, 1.7
    ints = StepIntegrals(pw, lam_s, lam_t, 2)
    # brute force: trapezoid on 200001 points
    u = torch.linspace(lam_s, lam_t, 200001, dtype=torch.float64).numpy()
    big_l = pw.integral("l", u)[:, 0]
    big_s = pw.integral("s", u)[:, 0]
    kern = torch.exp(torch.from_numpy(-(big_l[-1] - big_l) + big_s - big_s[0]))
    integrand_b = torch.exp(torch.from_numpy(-(big_s - big_s[0]))) * torch.from_numpy(
        pw.value("b", u)[:, 0])
    ut = torch.from_numpy(u)
    bs = torch.cat([torch.zeros(1, dtype=torch.float64),
                    torch.cumulative_trapezoid(integrand_b, ut)])
    c1 = torch.trapezoid(kern * (ut - lam_s), ut)
    cb = torch.trapezoid(kern * bs, ut)
    assert ints.c[1][0] == pytest.approx(float(c1), rel=1e-8)
    assert ints.c_b[0] == pytest.approx(float(cb), rel=1e-7)


@pytest.mark.parametrize(("options", "nominal"), [
    ({"predictor_order": 1, "corrector": "none"}, 1),
    ({"predictor_order": 2, "corrector": "none"}, 2),
    ({"predictor_order": 1}, 2),
    ({"predictor_order": 2}, 3),
])
def test_measured_orders_on_mixture(options, nominal):
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.01, 100.0)
    model = gmm.denoiser(schedule)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10
    ref = gmm.ode_reference(x, SIGMA_MAX, SIGMA_MIN)
    steps = [48, 96, 192]
    errs = [float((solve(model, x, _grid(n, schedule), "dpm_solver_v3", progress=False,
                         **options).x - ref).abs().max()) for n in steps]
    slope = fitted_slope([1 / n for n in steps], errs)
    assert abs(slope - nominal) < 0.3, (errs, slope)


@pytest.fixture(scope="module")
def gaussian_ems():
    from analytic import GaussianData

    data = GaussianData([0.5, -1.0, 2.0, 0.0], [0.3, 1.5, 0.05, 1.0])
    model = data.denoiser(EDM(0.01, 100.0))
    noise = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return data, model, compute_statistics(model, noise, points=200)


def test_gaussian_ems_match_closed_form(gaussian_ems):
    data, _, ems = gaussian_ems
    exact = gaussian_statistics(data.mu, data.var, ems.lams)
    torch.testing.assert_close(ems.l, exact.l, rtol=0, atol=1e-8)
    torch.testing.assert_close(ems.s, exact.s, rtol=0, atol=1e-6)
    torch.testing.assert_close(ems.b, exact.b, rtol=0, atol=2e-3)  # f' by finite differences
    assert ems.info["nfe"] == 200 + 2 * 200  # trajectory + one Hutchinson probe (2 NFE)


def test_gaussian_ems_make_few_steps_nearly_exact(gaussian_ems):
    """On Gaussian data g is constant along trajectories, so with (estimated) EMS even
    3 steps are accurate up to the EMS interpolation error, unlike DPM-Solver++."""
    data, model, ems = gaussian_ems
    x = _start(data)
    exact = data.flow_edm(x, SIGMA_MAX, SIGMA_MIN)
    grid = _grid(3, model.schedule)
    err_v3 = float((solve(model, x, grid, "dpm_solver_v3", statistics=ems, progress=False).x
                    - exact).abs().max())
    err_pp = float((solve(model, x, grid, "dpmpp_3m", progress=False).x - exact).abs().max())
    assert err_v3 < 1e-3 < 0.5 < err_pp


def test_v3_beats_dpmpp_3m_on_mixture_at_5_and_10_nfe():
    gmm, model = gmm_model()
    schedule = model.schedule
    calib = torch.randn(128, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ems = compute_statistics(model, calib, points=250)
    held = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    smax = schedule.sigma_edm_max
    ref = gmm.ode_reference(held * smax, smax, schedule.sigma_edm_min)
    for nfe in (5, 10):
        grid = make_grid("karras", nfe, schedule)
        x = held * schedule.point(float(grid.lams[0])).sigma

        def rms(out, ref=ref):
            return float(((out - ref) ** 2).sum(1).mean().sqrt())

        e_v3 = rms(solve(model, x, grid, "dpm_solver_v3", statistics=ems, progress=False).x)
        e_3m = rms(solve(model, x, grid, "dpmpp_3m", progress=False).x)
        assert e_v3 < 0.9 * e_3m, (nfe, e_v3, e_3m)  # measured 0.84 (5 NFE), 0.48 (10)


def test_save_load_and_path_option(tmp_path, gaussian_ems):
    data, model, ems = gaussian_ems
    path = tmp_path / "ems.safetensors"
    ems.save(path)
    back = EMS.load(path)
    for k in ("lams", "l", "s", "b"):
        assert torch.equal(getattr(back, k), getattr(ems, k))
    assert back.info == ems.info
    x = _start(data)
    grid = _grid(4, model.schedule)
    a = solve(model, x, grid, "dpm_solver_v3", statistics=ems, progress=False).x
    b = solve(model, x, grid, "dpm_solver_v3", statistics=str(path), progress=False).x
    assert torch.equal(a, b)


def test_corrector_modes_and_errors(gaussian_data):
    model = gaussian_data.denoiser(EDM(0.01, 100.0))
    x = _start(gaussian_data)
    grid = _grid(6, model.schedule)
    outs = {m: solve(model, x, grid, "dpm_solver_v3", corrector=m, progress=False).x
            for m in ("all", "half", "none")}
    assert not torch.equal(outs["all"], outs["half"])
    assert not torch.equal(outs["half"], outs["none"])
    with pytest.raises(SolverOptionError):
        solve(model, x, grid, "dpm_solver_v3", predictor_order=5)
    with pytest.raises(SolverOptionError):
        solve(model, x, grid, "dpm_solver_v3", corrector="sometimes")
    with pytest.raises(SolverOptionError):
        solve(model, x, grid, "dpm_solver_v3", statistics=3.0)
    with pytest.raises(SolverOptionError, match="does not exist"):
        solve(model, x, grid, "dpm_solver_v3", statistics="/nonexistent/ems.safetensors")
    wrong = EMS.constant(1.0, feature_shape=(3,))
    with pytest.raises(SolverOptionError, match="feature shape"):
        solve(model, x, grid, "dpm_solver_v3", statistics=wrong)


def test_scalar_statistics_are_the_mean_of_per_dimension_ones(gaussian_ems):
    data, model, ems = gaussian_ems
    noise = torch.randn(32, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scalar = compute_statistics(model, noise, points=200, per_dimension=False)
    assert scalar.feature_shape == ()
    torch.testing.assert_close(scalar.l, ems.l.mean(1), rtol=0, atol=1e-12)
    x = _start(data)
    grid = _grid(5, model.schedule)
    exact = data.flow_edm(x, SIGMA_MAX, SIGMA_MIN)
    errs = {name: float((solve(model, x, grid, "dpm_solver_v3", statistics=st,
                               progress=False).x - exact).abs().max())
            for name, st in (("per_dim", ems), ("scalar", scalar), ("none", None),
                             ("zero", "zero"))}
    # per-dimension EMS capture the per-dimension variances; zero EMS are the worst
    assert errs["per_dim"] < errs["scalar"] < errs["zero"]
    assert errs["per_dim"] < errs["none"] < errs["zero"]

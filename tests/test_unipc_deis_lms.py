"""UniPC, DEIS, iPNDM and LMS: measured orders per option, exact identities with simpler
solvers, and cross-checks with diffusers' and k-diffusion's implementations.

Orders are fitted log-log slopes of the global error at sigma~ = 0.1 from sigma~ = 10 on
uniform-lambda grids of N = 64 ... 512 steps (EDM schedule), against the closed-form flow of
Gaussian data or a DOP853 reference (rtol 1e-12) for a Gaussian mixture. Measured values are
listed in docs/multistep_family.md.
"""

from __future__ import annotations

import math

import pytest
import torch

from analytic import GaussianData, fitted_slope
from diffsolve import Grid, SolverOptionError, solve
from diffsolve.expint import exp_lagrange_weights
from diffsolve.noise import ZeroNoise
from diffsolve.schedules import EDM, DiscreteVP, VPLinear
from diffsolve.solvers import get_solver
from diffsolve.solvers.deis import deis_weights
from diffsolve.zoo import GaussianMixture

STEPS = [64, 128, 256, 512]
SIGMA_MAX, SIGMA_MIN = 10.0, 0.1
GAUSS = GaussianData([0.5, -1.0, 2.0, 0.0], [0.3, 1.5, 0.05, 1.0])


def _lams(n: int, spacing: str = "lambda") -> torch.Tensor:
    if spacing == "lambda":
        return torch.linspace(-math.log(SIGMA_MAX), -math.log(SIGMA_MIN), n + 1,
                              dtype=torch.float64)
    # uniform in sigma~ (the grid on which iPNDM's fixed coefficients are consistent)
    return -torch.log(torch.linspace(SIGMA_MAX, SIGMA_MIN, n + 1, dtype=torch.float64))


def _solve_edm(name, model, schedule, x_edm, lams, **options):
    """Solve from x~ = x_edm at lams[0]; return x~ at lams[-1] (EDM coordinates)."""
    grid = Grid.from_lambdas(lams, schedule)
    a0 = schedule.point(float(lams[0])).alpha
    a1 = schedule.point(float(lams[-1])).alpha
    out = solve(model, x_edm * a0, grid, name, noise=ZeroNoise(), progress=False, **options)
    return out.x / a1


def _gauss_slope(name, schedule=None, spacing="lambda", steps=STEPS, **options):
    schedule = schedule or EDM(0.01, 100.0)
    model = GAUSS.denoiser(schedule)
    x_edm = GAUSS.mu + torch.randn(8, 4, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(1)) * 10.0
    exact = GAUSS.flow_edm(x_edm, SIGMA_MAX, SIGMA_MIN)
    errors = [float((_solve_edm(name, model, schedule, x_edm, _lams(n, spacing), **options)
                     - exact).abs().max()) for n in steps]
    return fitted_slope([1.0 / n for n in steps], errors), errors


SS = {"warmup": "singlestep"}

# (solver, options, expected order); the fitted slope must lie within 0.3 of it.
GAUSS_CASES = [
    *[("unipc", {"variant": v, "solver_order": 1, "use_corrector": False}, 1.0)
      for v in ("bh1", "bh2")],
    *[("unipc", {"variant": v, "solver_order": 1}, 2.0) for v in ("bh1", "bh2")],
    *[("unipc", {"variant": v, "solver_order": 2, "use_corrector": False}, 2.0)
      for v in ("bh1", "bh2")],
    *[("unipc", {"variant": v, "solver_order": 2}, 3.0) for v in ("bh1", "bh2")],
    *[("unipc", {"variant": v, "solver_order": 3, "use_corrector": False, **SS}, 3.0)
      for v in ("bh1", "bh2")],
    *[("unipc", {"variant": v, "solver_order": 3, **SS}, 4.0) for v in ("bh1", "bh2")],
    ("unipc", {"solver_order": 3, "use_corrector": False}, 2.0),  # lower-order start floor
    *[("deis", {"solver_order": p, **SS}, float(p)) for p in (1, 2, 3)],
    ("deis", {"solver_order": 3, "basis": "log_rho", **SS}, 3.0),
    *[("lms", {"solver_order": p, **SS}, float(p)) for p in (1, 2, 3, 4)],
    ("ipndm", {}, 2.0),  # fixed AB coefficients on a grid not uniform in sigma~
    ("ipndm", SS, 2.0),
]


@pytest.mark.parametrize(("name", "options", "expected"), GAUSS_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for n, o, _ in GAUSS_CASES])
def test_order_per_option_gaussian(name, options, expected):
    slope, errors = _gauss_slope(name, **options)
    assert abs(slope - expected) < 0.3, f"{name} {options}: errors {errors}, slope {slope:.2f}"


@pytest.mark.parametrize("basis", ["t", "rho", "log_rho"])
def test_deis_bases_third_order_on_vp(basis):
    """On VP-linear the three interpolation variables differ (t != rho); all are order 3."""
    slope, errors = _gauss_slope("deis", schedule=VPLinear(), basis=basis, **SS)
    assert abs(slope - 3.0) < 0.3, f"{basis}: {errors}"


def test_lower_order_start_floors():
    """The papers' lower-order start: its first-order first step makes the multistep methods
    of order > 2 globally O(h^2) (O(h^3) for UniPC, whose corrector lifts the first step),
    and the single-step start is more accurate (N = 512 ... 2048; UniPC with bh1, whose
    approach to the O(h^3) floor is faster than bh2's on this problem)."""
    steps = [512, 1024, 2048]
    for name, options, floor in (("lms", {}, 2.0), ("deis", {}, 2.0),
                                 ("unipc", {"variant": "bh1"}, 3.0)):
        default, err_default = _gauss_slope(name, steps=steps, **options)
        assert floor - 0.3 < default < floor + 0.4, (name, err_default)
        _, err_single = _gauss_slope(name, steps=steps, **options, **SS)
        assert err_single[-1] < err_default[-1], name


def test_ipndm_is_fourth_order_only_on_uniform_sigma_grids():
    """Fixed AB coefficients assume equal steps in sigma~: order 4 on a uniform-sigma~ grid,
    order 2 on a uniform-lambda grid (whatever the warm-up)."""
    slope_rho, err_rho = _gauss_slope("ipndm", spacing="sigma", **SS)
    slope_lam, err_lam = _gauss_slope("ipndm", **SS)
    assert slope_rho > 3.7, err_rho
    assert abs(slope_lam - 2.0) < 0.2, err_lam


@pytest.fixture(scope="module")
def gmm_problem():
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.01, 100.0)
    x_edm = torch.randn(6, 3, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2)) * SIGMA_MAX
    return gmm.denoiser(schedule), schedule, x_edm, gmm.ode_reference(x_edm, SIGMA_MAX,
                                                                       SIGMA_MIN)


GMM_CASES = [
    ("unipc", {"variant": "bh1", **SS}, 4.0),
    ("unipc", {"solver_order": 2}, 3.0),
    ("unipc", {"solver_order": 2, "use_corrector": False}, 2.0),
    ("deis", {"basis": "log_rho", **SS}, 3.0),
    ("deis", {"basis": "rho", **SS}, 3.0),
    ("lms", {"solver_order": 3, **SS}, 3.0),
    ("ipndm", {}, 2.0),
]


@pytest.mark.parametrize(("name", "options", "expected"), GMM_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for n, o, _ in GMM_CASES])
def test_order_per_option_gaussian_mixture(gmm_problem, name, options, expected):
    model, schedule, x_edm, reference = gmm_problem
    errors = [float((_solve_edm(name, model, schedule, x_edm, _lams(n), **options)
                     - reference).abs().max()) for n in STEPS]
    slope = fitted_slope([1.0 / n for n in STEPS], errors)
    assert abs(slope - expected) < 0.3, f"{name} {options}: errors {errors}, slope {slope:.2f}"


# ---------------------------------------------------------------- exact identities
def _pair(a, b, grid_sigmas=(10.0, 6.0, 3.0, 1.5, 0.7, 0.3, 0.1, 0.0), schedule=None, tol=1e-10):
    schedule = schedule or VPLinear()
    model = GAUSS.denoiser(schedule)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = Grid.from_sigmas(list(grid_sigmas), schedule)
    xa = solve(model, x, grid, a[0], progress=False, **a[1]).x
    xb = solve(model, x, grid, b[0], progress=False, **b[1]).x
    torch.testing.assert_close(xa, xb, rtol=tol, atol=tol)
    return xa, xb


def test_first_order_members_are_ddim_or_euler():
    _pair(("unipc", {"solver_order": 1, "use_corrector": False}), ("ddim", {}))
    for basis in ("t", "rho", "log_rho"):
        _pair(("deis", {"solver_order": 1, "basis": basis}), ("ddim", {}))
    _pair(("lms", {"solver_order": 1}), ("euler", {}))
    _pair(("ipndm", {"solver_order": 1}), ("euler", {}))


@pytest.mark.parametrize("lower_order_final", [True, False])
def test_unip2_bh2_is_dpmpp_2m(lower_order_final):
    """UniP-2 with rho = 1/2 and B(h) = e^{-h} - 1 has DPM-Solver++(2M)'s weights."""
    _pair(("unipc", {"solver_order": 2, "use_corrector": False,
                     "lower_order_final": lower_order_final}),
          ("dpmpp_2m", {"lower_order_final": lower_order_final}))
    # bh1 differs: B(h) = -h instead of e^{-h} - 1
    with pytest.raises(AssertionError):
        _pair(("unipc", {"solver_order": 2, "use_corrector": False, "variant": "bh1"}),
              ("dpmpp_2m", {}))


def test_unipc_1_corrector_by_hand():
    """Two finite steps of UniPC-1 (bh2), written out: UniC-1 with rho = 1/2 is the
    exponential trapezoid x_1 = (s_1/s_0) x_0 + a_1 (1 - e^{-h}) (D_0 + D(x~_1))/2."""
    schedule = VPLinear()
    model = GAUSS.denoiser(schedule)
    x0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    lams = torch.tensor([-1.5, -0.2, 1.0], dtype=torch.float64)
    p = [schedule.point(float(v)) for v in lams]
    ours = solve(model, x0, Grid.from_lambdas(lams, schedule), "unipc", solver_order=1,
                 progress=False).x

    def ddim(x, d, a, b):
        return (b.sigma / a.sigma) * x + b.alpha * -math.expm1(a.lam - b.lam) * d

    d0 = model.data(x0, p[0])
    x1_pred = ddim(x0, d0, p[0], p[1])
    d1 = model.data(x1_pred, p[1])
    x1 = ddim(x0, 0.5 * (d0 + d1), p[0], p[1])  # UniC-1
    x2 = ddim(x1, d1, p[1], p[2])  # UniP-1 from the corrected point with D(x~_1)
    torch.testing.assert_close(ours, x2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_rho_basis_is_lms(order):
    """rhoAB-DEIS (quadrature in lambda) equals LMS (exact Lagrange integrals in sigma~)."""
    _pair(("deis", {"solver_order": order, "basis": "rho"}), ("lms", {"solver_order": order}),
          schedule=DiscreteVP.linear())


@pytest.mark.parametrize("h", [0.05, 1.0, 4.0])
def test_deis_quadrature_matches_closed_form(h):
    """log-rho weights by Gauss-Legendre quadrature == the closed form
    -h sigma~_{i+1} int_0^1 e^{h(1-theta)} l_j(theta) d theta (phi-function moments)."""
    schedule = VPLinear()
    lams = [-2.0 - 1.7 * h, -2.0 - 0.6 * h, -2.0, -2.0 + h]
    points = tuple(schedule.point(v) for v in lams)
    for order in (1, 2, 3):
        nodes = [(points[2 - k].lam - points[2].lam) / h for k in range(order)]
        closed = [-h * points[3].sigma_edm * w for w in exp_lagrange_weights(nodes, h)]
        quad = deis_weights(schedule, points, 2, order, "log_rho")
        assert quad == pytest.approx(closed, rel=1e-12, abs=1e-14)


def test_deis_t_basis_is_rho_basis_on_edm():
    """EDM has t = sigma~, so tAB-DEIS is rhoAB-DEIS there, and differs on VP."""
    _pair(("deis", {"basis": "t"}), ("deis", {"basis": "rho"}), schedule=EDM(0.01, 100.0))
    with pytest.raises(AssertionError):
        _pair(("deis", {"basis": "t"}), ("deis", {"basis": "rho"}), schedule=VPLinear())


def test_ipndm_equals_lms_on_uniform_sigma_grid():
    sigmas = [*torch.linspace(8.0, 0.2, 12, dtype=torch.float64).tolist(), 0.0]
    _pair(("ipndm", {}), ("lms", {}), grid_sigmas=sigmas, schedule=EDM(0.01, 100.0))
    with pytest.raises(AssertionError):  # not on a uniform-lambda grid
        _pair(("ipndm", {}), ("lms", {}))


@pytest.mark.parametrize("name", ["unipc", "deis", "lms", "ipndm"])
def test_singlestep_warmup_nfe(name):
    """With the single-step start, solve() counts exactly solver.nfe(steps) + 1."""
    schedule = EDM(0.01, 100.0)
    model = GAUSS.denoiser(schedule)
    x = torch.randn(2, 4, dtype=torch.float64)
    for sigmas in ([10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.0], [10.0, 1.0, 0.0]):
        res = solve(model, x, Grid.from_sigmas(sigmas, schedule), name, warmup="singlestep",
                    progress=False)
        assert res.nfe == get_solver(name, warmup="singlestep").nfe(len(sigmas) - 2,
                                                                 denoise_final=True)


def test_bad_options_are_errors():
    for name, options, match in [("unipc", {"solver_order": 4}, "solver_order"),
                                 ("unipc", {"variant": "bh3"}, "variant"),
                                 ("unipc", {"warmup": "rk4"}, "warmup"),
                                 ("deis", {"solver_order": 4}, "solver_order"),
                                 ("deis", {"basis": "lambda"}, "basis"),
                                 ("lms", {"solver_order": 5}, "solver_order"),
                                 ("lms", {"solver_order": 2.5}, "solver_order"),
                                 ("ipndm", {"solver_order": 0}, "solver_order")]:
        with pytest.raises(SolverOptionError, match=match):
            get_solver(name, **options)


# ---------------------------------------------------------------- peers
def _diffusers_run(scheduler, x, model_eps):
    for t in scheduler.timesteps:
        x = scheduler.step(model_eps(x, t), t, x).prev_sample
    return x


def _diffusers_case(cls_name, steps, ours_options, **config):
    """Run a diffusers multistep scheduler and diffsolve on the same discrete VP schedule
    and sigmas with the analytic eps model of Gaussian data; return both outputs."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = getattr(diffusers, cls_name)(**config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    sigmas = scheduler.sigmas.to(torch.float64)  # float32 values, used by both sides

    def eps(x, t):
        k = int((timesteps == t).nonzero()[0, 0])
        s = float(sigmas[k])
        a = 1.0 / math.sqrt(1.0 + s * s)
        d = GAUSS.mu + a * GAUSS.var / (a * a * GAUSS.var + (a * s) ** 2) * (x - a * GAUSS.mu)
        return (x - a * d) / (a * s)

    schedule = DiscreteVP(scheduler.alphas_cumprod.to(torch.float64))
    x_edm = GAUSS.mu + torch.randn(6, 4, dtype=torch.float64,
                                   generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    x = x_edm / math.sqrt(1.0 + float(sigmas[0]) ** 2)
    theirs = _diffusers_run(scheduler, x.clone(), eps)
    grid = Grid.from_sigmas(sigmas, schedule)
    ours = solve(GAUSS.denoiser(schedule), x.clone(), grid, ours_options.pop("name"),
                 progress=False, **ours_options).x
    return ours, theirs


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [5, 10])
def test_unipc_matches_diffusers(order, steps):
    ours, theirs = _diffusers_case("UniPCMultistepScheduler", steps,
                                   {"name": "unipc", "solver_order": order},
                                   solver_order=order)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)  # float32 sigmas in diffusers


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_bh1_matches_diffusers_without_zero_final_sigma(order):
    """bh1 with diffusers' default final sigma 0 gives NaN there (B(h) = h = -inf times a
    zero residual in the final first-order UniP step); with final_sigmas_type="sigma_min" the
    grid ends at a finite sigma and both agree."""
    ours, theirs = _diffusers_case("UniPCMultistepScheduler", 8,
                                   {"name": "unipc", "solver_order": order, "variant": "bh1"},
                                   solver_order=order, solver_type="bh1",
                                   final_sigmas_type="sigma_min")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
    _, nan = _diffusers_case("UniPCMultistepScheduler", 8, {"name": "unipc", "variant": "bh1"},
                             solver_order=order, solver_type="bh1")
    assert torch.isnan(nan).all()


def test_unipc_lower_order_final_differs_from_diffusers_beyond_15_steps():
    """diffusers lowers the last UniPC orders on every grid; diffsolve (like DPM-Solver++
    and diffusers' own DPM/DEIS schedulers) only below 15 steps. Pinned at 20 steps."""
    ours, theirs = _diffusers_case("UniPCMultistepScheduler", 20,
                                   {"name": "unipc", "solver_order": 3}, solver_order=3)
    assert float((ours - theirs).abs().max()) > 1e-3


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_deis_log_rho_matches_diffusers(order, steps):
    """diffusers' DEIS interpolates eps in log rho ("logrho") and ends at sigma(t=0) > 0
    without a denoising step; diffsolve's basis="log_rho" on the same sigmas agrees."""
    ours, theirs = _diffusers_case("DEISMultistepScheduler", steps,
                                   {"name": "deis", "solver_order": order, "basis": "log_rho"},
                                   solver_order=order)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_lms_matches_kdiffusion():
    """k-diffusion's sample_lms equals ``diffsolve.kdiffusion.sample_lms`` (its keyword
    ``order``), also with a final sigma = 0, which k-diffusion integrates with the LMS
    formula (the function does too; the registered ``lms`` solver ends with x <- D(x))."""
    import diffsolve.kdiffusion as dk
    from peers import load_kdiffusion_sampling

    kd = load_kdiffusion_sampling()
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    schedule = EDM(0.002, 80.0)
    den = gmm.denoiser(schedule)

    def kmodel(x, sigma):
        return den.data(x, schedule.point(-math.log(float(sigma[0]))))

    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = kd.get_sigmas_karras(10, 0.05, 20.0).to(torch.float64)
    for order in (1, 2, 3, 4):
        a = kd.sample_lms(kmodel, x * sigmas[0], sigmas[:-1], disable=True, order=order)
        b = dk.sample_lms(kmodel, x * sigmas[0], sigmas[:-1], disable=True, order=order)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a = kd.sample_lms(kmodel, x * sigmas[0], sigmas, disable=True)
    b = dk.sample_lms(kmodel, x * sigmas[0], sigmas, disable=True)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

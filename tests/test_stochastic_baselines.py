"""Classic stochastic baselines: Euler-Maruyama, DDPM, DDIM(eta), Euler ancestral, EDM's
stochastic sampler, ER-SDE-Solver. Exact steps against independent formulas, limits, Dirac
exactness and weak orders measured exactly (no Monte Carlo) on Gaussian data."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import integrate

from analytic import fitted_slope, gaussian_weak_errors, linear_output_moments
from diffsolve import Grid, SolverOptionError, kdiffusion, sample, solve
from diffsolve.models import Denoiser
from diffsolve.noise import GivenNoise, ZeroNoise
from diffsolve.schedules import EDM, VE, DiscreteVP, RectifiedFlow, VPCosine, VPLinear
from diffsolve.solvers import get_solver
from diffsolve.solvers.ancestral import log_rates
from diffsolve.solvers.er_sde import er_log_phi, er_taylor_weights
from diffsolve.zoo import GaussianMixture

SIGMA_MAX, SIGMA_MIN = 10.0, 0.1
WEAK_STEPS = [20, 40, 80, 160]
NEW = ["euler_maruyama", "ddpm", "ddim_eta", "euler_ancestral", "edm_stochastic", "er_sde"]


def _grid(n: int, schedule=None) -> Grid:
    lams = torch.linspace(-math.log(SIGMA_MAX), -math.log(SIGMA_MIN), n + 1, dtype=torch.float64)
    return Grid.from_lambdas(lams, schedule)


def _x0(schedule, grid, d=3, batch=6, seed=0):
    a0 = schedule.point(float(grid.lams[0])).alpha
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, d, dtype=torch.float64, generator=g) * grid.sigmas[0] * a0


def _noise(steps, batch=6, d=3, seed=7):
    g = torch.Generator().manual_seed(seed)
    return GivenNoise([torch.randn(batch, d, dtype=torch.float64, generator=g)
                       for _ in range(steps)])


# ------------------------------------------------------------------ exact steps, limits


def test_ddpm_step_is_the_posterior_from_alphas_cumprod():
    """q(x_t | x_s, x0 = D) written out from a DDPM table (Ho et al. 2020 eq. 6-7), s the
    noisier index: mean = sqrt(ab_t) b/(1-ab_s) D + sqrt(a)(1-ab_t)/(1-ab_s) x_s,
    var = (1-ab_t)/(1-ab_s) b with a = ab_s/ab_t, b = 1 - a."""
    schedule = DiscreteVP.linear()
    ab = schedule.alphas_cumprod
    gmm = GaussianMixture.random(d=4, k=2, seed=1)
    model = gmm.denoiser(schedule)
    for n_s, n_t in [(700, 650), (300, 299), (999, 500)]:
        grid = Grid.from_lambdas([float(schedule.lam(float(n_s))), float(schedule.lam(float(n_t)))])
        x_s = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        xi = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        ours = solve(model, x_s, grid, "ddpm", noise=GivenNoise([xi]), progress=False).x
        abs_, abt = float(ab[n_s]), float(ab[n_t])
        d = gmm.denoise(x_s, math.sqrt(abs_), math.sqrt(1 - abs_))
        a = abs_ / abt
        b = 1 - a
        mean = math.sqrt(abt) * b / (1 - abs_) * d + math.sqrt(a) * (1 - abt) / (1 - abs_) * x_s
        var = (1 - abt) / (1 - abs_) * b
        torch.testing.assert_close(ours, mean + math.sqrt(var) * xi, rtol=1e-12, atol=1e-12)


def test_ddim_eta_noise_matches_the_alphabar_form():
    """c = eta sigma_t sqrt(1 - e^{-2h}) equals DDIM eq. 16,
    eta sqrt((1 - ab_t)/(1 - ab_s)) sqrt(1 - ab_s/ab_t), on a DDPM table."""
    schedule = DiscreteVP.linear()
    ab = schedule.alphas_cumprod
    idx = [999, 800, 600, 401, 200, 50, 3]
    grid = Grid.from_lambdas([float(schedule.lam(float(n))) for n in idx])
    for eta in (0.3, 1.0):
        plan = get_solver("ddim_eta", eta=eta).plan(schedule, grid.finite_lams())
        for k, (n_s, n_t) in enumerate(itertools.pairwise(idx)):
            abs_, abt = float(ab[n_s]), float(ab[n_t])
            c = eta * math.sqrt((1 - abt) / (1 - abs_)) * math.sqrt(1 - abs_ / abt)
            assert abs(plan.extra[k].noise_std - c) < 1e-12 * max(c, 1e-3)


@pytest.mark.parametrize("schedule", [EDM(0.01, 50.0), VPLinear(), DiscreteVP.linear()],
                         ids=["EDM", "VP", "DiscreteVP"])
@pytest.mark.parametrize(("name", "opts", "ref", "ref_opts"), [
    ("ddim_eta", {"eta": 0.0}, "ddim", {}),
    ("ddim_eta", {"eta": 1.0}, "ddpm", {}),
    ("euler_ancestral", {"eta": 1.0}, "ddpm", {}),
    ("euler_ancestral", {"eta": 0.0}, "euler", {}),
    ("edm_stochastic", {"s_churn": 0.0}, "heun", {}),
    ("er_sde", {"order": 1, "noise_scale": "power", "eta": 0.0}, "ddim", {}),
    ("er_sde", {"order": 1, "noise_scale": "power", "eta": 1.0}, "ddpm", {}),
    ("er_sde", {"order": 1, "noise_scale": "power", "eta": 0.4}, "seeds_1", {"eta": 0.4}),
])
def test_limits_and_identities(name, opts, ref, ref_opts, schedule):
    gmm = GaussianMixture.random(d=3, k=3, seed=11)
    model = gmm.denoiser(schedule)
    grid = Grid.from_sigmas([20.0, 8.0, 3.0, 1.0, 0.4, 0.1, 0.0], schedule)
    x = _x0(schedule, grid)
    a = solve(model, x, grid, name, noise=_noise(5), progress=False, **opts).x
    b = solve(model, x, grid, ref, noise=_noise(5), progress=False, **ref_opts).x
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_euler_maruyama_at_eta_zero_is_euler_on_edm():
    """EDM: t = sigma, f = 0, g^2 = 2 sigma, so EM with eta = 0 is Euler in sigma."""
    schedule = EDM(0.01, 50.0)
    model = GaussianMixture.random(d=3, k=3, seed=2).denoiser(schedule)
    grid = _grid(9, schedule)
    x = _x0(schedule, grid)
    a = solve(model, x, grid, "euler_maruyama", eta=0.0, progress=False).x
    b = solve(model, x, grid, "euler", progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), DiscreteVP.linear(), VE(),
                                      EDM(), RectifiedFlow()], ids=lambda s: type(s).__name__)
def test_euler_maruyama_rates_match_the_schedule(schedule):
    """f = d log alpha/dt and d lambda/dt used by EM agree with finite differences of the
    schedule itself (Richardson-extrapolated central differences)."""
    for frac in (0.13, 0.5, 0.87):
        t = schedule.t_min + frac * (schedule.t_max - schedule.t_min)
        f, dls = log_rates(schedule, t)

        def cd(fun, e, t=t):
            return (fun(t + e) - fun(t - e)) / (2 * e)

        eps = 1e-4 * min(1.0, schedule.t_max - schedule.t_min)  # inside one DiscreteVP cell
        la = lambda u: float(schedule.log_alpha(u))  # noqa: E731
        lam = lambda u: float(schedule.lam(u))  # noqa: E731
        f_ref = (4 * cd(la, eps / 2) - cd(la, eps)) / 3
        dlam_ref = (4 * cd(lam, eps / 2) - cd(lam, eps)) / 3
        assert abs(f - f_ref) <= 1e-6 * max(1.0, abs(f_ref))
        assert abs((f - dls) - dlam_ref) <= 1e-6 * abs(dlam_ref)


def test_euler_ancestral_step_written_out():
    """One k-diffusion Euler-ancestral step in EDM coordinates, eta = 0.5, s_noise = 1.2."""
    schedule = EDM(0.01, 50.0)
    gmm = GaussianMixture.random(d=3, k=2, seed=4)
    model = gmm.denoiser(schedule)
    s, n, eta, s_noise = 5.0, 3.0, 0.5, 1.2
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * s
    xi = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = solve(model, x, Grid.from_sigmas([s, n], schedule), "euler_ancestral", eta=eta,
                s_noise=s_noise, noise=GivenNoise([xi]), progress=False).x
    up = min(n, eta * (n**2 * (s**2 - n**2) / s**2) ** 0.5)
    down = (n**2 - up**2) ** 0.5
    d = gmm.denoise(x, 1.0, s)
    ref = x + (down - s) * (x - d) / s + up * s_noise * xi
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_edm_stochastic_churn_schedule():
    """gamma_i = min(S_churn/N, sqrt 2 - 1) inside [S_tmin, S_tmax], N counting the final
    denoising interval; the churned point keeps lambda = -log sigma_hat on VP schedules."""
    schedule = VPLinear()
    sig = [60.0, 20.0, 5.0, 1.0, 0.2, 0.04, 0.02]
    grid = Grid.from_sigmas([*sig, 0.0], schedule)
    n_total = len(sig)  # 6 finite intervals + the final denoise
    for churn in (3.0, 40.0):
        solver = get_solver("edm_stochastic", s_churn=churn, s_tmin=0.05, s_tmax=50.0)
        plan = solver.plan(schedule, grid.finite_lams(), denoise_final=True)
        for i, s in enumerate(sig[:-1]):
            gamma = min(churn / n_total, math.sqrt(2) - 1) if 0.05 <= s <= 50 else 0.0
            hat = plan.extra[i].hat
            assert abs(hat.sigma_edm - s * (1 + gamma)) < 1e-9 * s
            assert abs(math.log(hat.alpha / hat.sigma) - hat.lam) < 1e-12
            assert abs(plan.extra[i].std - s * math.sqrt((1 + gamma) ** 2 - 1)) < 1e-9 * s


def test_er_sde_weights_match_the_papers_integrated_form():
    """W1 = (s_t - s_s) + phi_t int_{s_t}^{s_s} du/phi and W2 = (s_t - s_s)^2/2 +
    phi_t int (u - s_s)/phi du (Cui et al. 2023, Taylor terms), computed here by adaptive
    quadrature, against our Gauss-Legendre evaluation of the defining integrals."""
    for kind, eta in (("er_sde", 0.0), ("power", 0.7), ("power", 0.0)):
        for s_s, s_t in ((80.0, 26.0), (10.0, 9.0), (0.5, 0.1), (2.0, 1.999)):

            def phi(u, kind=kind, eta=eta):
                return math.exp(float(er_log_phi(u, kind, eta)))

            r, w1, w2, var = er_taylor_weights(s_s, s_t, kind, eta)
            phi_t = phi(s_t)
            i0 = integrate.quad(lambda u, phi=phi: 1 / phi(u), s_t, s_s, epsabs=0,
                                epsrel=1e-13)[0]
            i1 = integrate.quad(lambda u, phi=phi, s_s=s_s: (u - s_s) / phi(u), s_t, s_s,
                                epsabs=0, epsrel=1e-13)[0]
            w1_ref = (s_t - s_s) + phi_t * i0
            w2_ref = (s_t - s_s) ** 2 / 2 + phi_t * i1
            assert abs(r - phi_t / phi(s_s)) < 1e-13
            # the paper's form cancels: compare at the scale of its terms
            assert abs(w1 - w1_ref) < 1e-10 * (s_s - s_t)
            assert abs(w2 - w2_ref) < 1e-10 * (s_s - s_t) ** 2
            assert abs(var - (1 - (s_s * r / s_t) ** 2)) < 1e-12


# ------------------------------------------------------------------ exactness, weak orders


@pytest.mark.parametrize(("name", "opts"), [
    ("ddpm", {}), ("ddim_eta", {"eta": 0.3}), ("euler_ancestral", {}),
    ("euler_ancestral", {"eta": 0.6}), ("edm_stochastic", {}), ("edm_stochastic", {"s_churn": 3}),
    ("er_sde", {"order": 1}), ("er_sde", {"order": 2}), ("er_sde", {}),
    ("er_sde", {"noise_scale": "power", "eta": 2.5, "derivatives": "interpolation"}),
])
@pytest.mark.parametrize("schedule", [EDM(0.01, 50.0), VPLinear()], ids=["EDM", "VP"])
def test_dirac_data_law_is_exact(name, opts, schedule):
    """Data x0 = mu (D = mu): the output law is N(alpha mu, sigma^2) exactly (mean and
    variance to rounding) for these samplers: exact posterior/ancestral steps, EDM churn +
    Heun (exact for D constant), ER-SDE (exact solution, differences of D vanish)."""
    mu = 0.7
    model = Denoiser(lambda x, t: torch.full_like(x, mu), schedule, prediction="x0")
    grid = _grid(7, schedule)
    a0 = schedule.point(float(grid.lams[0])).alpha
    last = schedule.point(float(grid.lams[-1]))
    mean, var = linear_output_moments(model, grid, name, mu * a0, (SIGMA_MAX * a0) ** 2,
                                      **opts)
    assert abs(mean - last.alpha * mu) < 1e-12
    assert abs(var - last.sigma**2) < 1e-12


def test_euler_maruyama_is_not_exact_on_dirac_data():
    """EM's linear part is not exact: a visible, first-order error even for D = const."""
    schedule = EDM(0.01, 50.0)
    model = Denoiser(lambda x, t: torch.full_like(x, 0.7), schedule, prediction="x0")
    errs = []
    for n in (20, 40):
        _, var = linear_output_moments(model, _grid(n), "euler_maruyama", 0.7, SIGMA_MAX**2)
        errs.append(abs(var - SIGMA_MIN**2))
    assert errs[0] > 1e-4 and 1.6 < errs[0] / errs[1] < 2.4


def _weak_errors(name, opts, schedule=None, steps=WEAK_STEPS):
    schedule = schedule or EDM(0.01, 50.0)
    return gaussian_weak_errors(name, opts, schedule, [_grid(n, schedule) for n in steps],
                                SIGMA_MAX, SIGMA_MIN)


@pytest.mark.parametrize(("name", "opts", "expected"), [
    ("euler_maruyama", {}, 1.0),
    ("euler_maruyama", {"eta": 0.5, "_schedule": "VP"}, 1.0),
    ("ddpm", {}, 1.0),
    ("ddim_eta", {"eta": 0.5}, 1.0),
    ("euler_ancestral", {}, 1.0),
    ("euler_ancestral", {"eta": 0.5}, 1.0),
    # gamma = S_churn/N must tend to 0: with S_churn = 10, N >= 24 is uncapped
    ("edm_stochastic", {"s_churn": 10.0}, 2.0),
    ("edm_stochastic", {"s_churn": 10.0, "_schedule": "VP"}, 2.0),
    ("er_sde", {"order": 1}, 1.0),
    ("er_sde", {"order": 2}, 2.0),
    ("er_sde", {"order": 3}, 2.0),  # the paper's ER-SDE-Solver-3: second order (see doc)
    ("er_sde", {"order": 3, "noise_scale": "power", "eta": 1.0}, 2.0),
    ("er_sde", {"order": 3, "derivatives": "interpolation"}, 3.0),  # pre-asymptotic, N<=160
])
def test_weak_order(name, opts, expected):
    """Weak error |mean err| + |var err| of the output on 1-D Gaussian data, exact via impulse
    responses; uniform-lambda grids sigma~ 10 -> 0.1 with N = 20..160 steps."""
    opts = dict(opts)
    schedule = VPLinear() if opts.pop("_schedule", None) == "VP" else None
    errors = _weak_errors(name, opts, schedule)
    slope = fitted_slope([1.0 / n for n in WEAK_STEPS], errors)
    assert abs(slope - expected) < 0.3, f"{name} {opts}: errors {errors}, weak order {slope:.2f}"
    assert all(b < a for a, b in itertools.pairwise(errors))


def test_edm_stochastic_with_capped_churn_converges_slowly():
    """While S_churn/N is capped at sqrt 2 - 1 (N < 97 for S_churn = 40) each step re-noises by
    a fixed factor: no second-order convergence (measured slope ~1.2 for N = 20..160)."""
    errors = _weak_errors("edm_stochastic", {})
    slope = fitted_slope([1.0 / n for n in WEAK_STEPS], errors)
    assert slope < 1.6
    assert errors[-1] > 2 * _weak_errors("edm_stochastic", {"s_churn": 10.0})[-1]


def test_er_sde_interpolation_beats_paper_derivatives():
    paper = _weak_errors("er_sde", {}, steps=[40, 80])
    interp = _weak_errors("er_sde", {"derivatives": "interpolation"}, steps=[40, 80])
    assert all(i < p / 4 for i, p in zip(interp, paper, strict=True))


# ------------------------------------------------------------------ API, RNG, options


@pytest.mark.parametrize("name", NEW)
def test_seeded_determinism_and_global_rng(name):
    model = GaussianMixture.random(d=3, k=3, seed=0).denoiser(EDM())
    state = torch.random.get_rng_state()
    a = sample(model, (4, 3), solver=name, steps=8, seed=5, progress=False).x
    b = sample(model, (4, 3), solver=name, steps=8, seed=5, progress=False).x
    c = sample(model, (4, 3), solver=name, steps=8, seed=6, progress=False).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert callable(getattr(kdiffusion, f"sample_{name}"))


@pytest.mark.parametrize(("name", "opts", "match"), [
    ("euler_maruyama", {"eta": -0.1}, "eta"),
    ("euler_maruyama", {"s_noise": 11.0}, "s_noise"),
    ("ddpm", {"s_noise": -1.0}, "s_noise"),
    ("ddim_eta", {"eta": 1.5}, "eta"),
    ("euler_ancestral", {"eta": -1.0}, "eta"),
    ("edm_stochastic", {"s_churn": -1.0}, "s_churn"),
    ("edm_stochastic", {"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax"),
    ("edm_stochastic", {"s_noise": 20.0}, "s_noise"),
    ("er_sde", {"order": 4}, "order"),
    ("er_sde", {"noise_scale": "cubic"}, "noise_scale"),
    ("er_sde", {"derivatives": "newton"}, "derivatives"),
    ("er_sde", {"eta": -2.0}, "eta"),
    ("er_sde", {"bogus": 1}, "no option"),
])
def test_option_validation(name, opts, match):
    with pytest.raises(SolverOptionError, match=match):
        get_solver(name, **opts)


def test_zero_noise_runs_are_finite_on_steep_grids():
    """Karras grid 80 -> 0.002 in 5 steps on VP and EDM: every sampler stays finite."""
    for schedule in (EDM(), VPLinear()):
        model = GaussianMixture.random(d=3, k=3, seed=1).denoiser(schedule)
        for name in NEW:
            out = sample(model, (3, 3), solver=name, steps=6, noise=ZeroNoise(),
                         progress=False).x
            assert torch.isfinite(out).all(), (name, type(schedule).__name__)

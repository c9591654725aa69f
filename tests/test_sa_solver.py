"""SA-Solver (Xue et al. 2023): reductions, coefficients, ODE and weak orders, noise reuse, NFE.

Test ids follow research note seeds_sa_solver.md Sec. 5 (T1 reductions, T2 deterministic
orders, T3 Dirac exactness, T4 weak order, T6 predictor-corrector noise reuse, T7 coefficient
identities, T9 NFE).
"""

from __future__ import annotations

import math
import random

import mpmath
import numpy as np
import pytest
import torch

from analytic import GaussianData, fitted_slope, linear_output_moments
from diffsolve import Grid, SolverOptionError, kdiffusion, sample, solve
from diffsolve.noise import GivenNoise, RecordingNoise, ZeroNoise
from diffsolve.schedules import EDM, EvalPoint, VPLinear
from diffsolve.solvers import get_solver
from diffsolve.solvers.sa_solver import DEFAULT_TAU_WINDOW, SASolver, sa_weights
from diffsolve.zoo import GaussianMixture

SIGMA_MAX, SIGMA_MIN = 10.0, 0.1


def _grid(n: int, schedule, *, refined: bool = False, sigma_max: float = SIGMA_MAX,
          sigma_min: float = SIGMA_MIN) -> Grid:
    """Uniform-lambda grid of n steps; ``refined`` makes the first two steps h^2 long so that
    the lower-order warm-up steps have local error O(h^4) and the nominal order shows."""
    a, b = -math.log(sigma_max), -math.log(sigma_min)
    if not refined:
        return Grid.from_lambdas(torch.linspace(a, b, n + 1, dtype=torch.float64), schedule)
    d = ((b - a) / n) ** 2
    lams = torch.cat([torch.tensor([a, a + d], dtype=torch.float64),
                      torch.linspace(a + 2 * d, b, n - 1, dtype=torch.float64)])
    return Grid.from_lambdas(lams, schedule)


# ---------------------------------------------------------------------------------------------
# T1: reductions
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [VPLinear(), EDM(0.01, 100.0)], ids=["VPLinear", "EDM"])
def test_tau_zero_order_1_is_ddim(gaussian_data, schedule):
    model = gaussian_data.denoiser(schedule)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grid = _grid(7, schedule)
    ddim = solve(model, x, grid, "ddim", progress=False).x
    sa = solve(model, x, grid, "sa_solver", tau=0.0, predictor_order=1, corrector_order=0,
               progress=False).x
    torch.testing.assert_close(sa, ddim, rtol=1e-10, atol=1e-10)


def test_order_1_predictor_is_seeds_1(gaussian_data):
    """Predictor order 1 with tau is SEEDS-1 with eta = tau^2 (note Sec. 3.3), same noise."""
    schedule = EDM(0.01, 100.0)
    model = gaussian_data.denoiser(schedule)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 10
    grid = _grid(9, schedule)
    sa = solve(model, x, grid, "sa_solver", tau=0.7, predictor_order=1, corrector_order=0,
               noise=5, progress=False).x
    seeds = solve(model, x, grid, "seeds_1", eta=0.49, noise=5, progress=False).x
    torch.testing.assert_close(sa, seeds, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# T2: deterministic orders (tau = 0)
# ---------------------------------------------------------------------------------------------

# (predictor, corrector, refined start, steps, nominal order)
ODE_CASES = [
    (1, 0, False, [32, 64, 128, 256], 1.0),
    (2, 0, False, [32, 64, 128, 256], 2.0),
    (3, 0, True, [64, 128, 256, 512], 3.0),
    (1, 2, False, [32, 64, 128, 256], 2.0),
    (2, 3, False, [32, 64, 128, 256], 3.0),
]


def _ode_errors(model, x0, target, schedule, steps, refined, **options):
    return [float((solve(model, x0, _grid(n, schedule, refined=refined), "sa_solver", tau=0.0,
                         noise=ZeroNoise(), progress=False, **options).x - target).abs().max())
            for n in steps]


@pytest.fixture(scope="module")
def ode_problems():
    schedule = EDM(0.01, 100.0)
    gd = GaussianData([0.5, -1.0, 2.0, 0.0], [0.3, 1.5, 0.05, 1.0])
    xg = gd.mu + torch.randn(8, 4, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(1)) * math.sqrt(101.0)
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    xm = torch.randn(6, 3, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(2)) * SIGMA_MAX
    return {
        "gauss": (gd.denoiser(schedule), xg, gd.flow_edm(xg, SIGMA_MAX, SIGMA_MIN)),
        "gmm": (gmm.denoiser(schedule), xm, gmm.ode_reference(xm, SIGMA_MAX, SIGMA_MIN)),
        "schedule": schedule,
    }


@pytest.mark.parametrize("problem", ["gauss", "gmm"])
@pytest.mark.parametrize(("p", "c", "refined", "steps", "nominal"), ODE_CASES,
                         ids=[f"({p},{c})" for p, c, *_ in ODE_CASES])
def test_ode_order(ode_problems, problem, p, c, refined, steps, nominal):
    """Predictor-only order s -> s; PEC (s, s+1) -> s+1 (tau = 0, closed form / DOP853)."""
    model, x0, target = ode_problems[problem]
    errors = _ode_errors(model, x0, target, ode_problems["schedule"], steps, refined,
                         predictor_order=p, corrector_order=c)
    slope = fitted_slope([1.0 / n for n in steps], errors)
    assert abs(slope - nominal) < 0.3, f"({p},{c}) {problem}: {errors}, order {slope:.2f}"


def test_order_3_warmup_floor(ode_problems):
    """On uniform grids the lower-order warm-up (first step first order, local error O(h^2))
    makes predictor order 3 globally second order asymptotically, as DPM-Solver++(3M)."""
    model, x0, target = ode_problems["gauss"]
    steps = [64, 128, 256]
    errors = _ode_errors(model, x0, target, ode_problems["schedule"], steps, False,
                         predictor_order=3, corrector_order=0)
    assert abs(fitted_slope([1.0 / n for n in steps], errors) - 2.0) < 0.2


def test_pec_3_4_order(ode_problems):
    """PEC (3, 4) with a refined start: ~4 on Gaussian data; on the mixture the local slopes
    wander between 3.6 and 5.3 (note Appendix C: 3.6-5), so only > 3.5 is asserted."""
    steps = [32, 64, 128, 256]
    hs = [1.0 / n for n in steps]
    for problem, check in (("gauss", lambda s: abs(s - 4.0) < 0.3), ("gmm", lambda s: s > 3.5)):
        model, x0, target = ode_problems[problem]
        errors = _ode_errors(model, x0, target, ode_problems["schedule"], steps, True,
                             predictor_order=3, corrector_order=4)
        slope = fitted_slope(hs, errors)
        assert check(slope), f"(3,4) {problem}: {errors}, order {slope:.2f}"


def test_pece_is_more_accurate_and_same_order(ode_problems):
    model, x0, target = ode_problems["gauss"]
    steps = [32, 64, 128]
    pec = _ode_errors(model, x0, target, ode_problems["schedule"], steps, False,
                      predictor_order=2, corrector_order=3)
    pece = _ode_errors(model, x0, target, ode_problems["schedule"], steps, False,
                       predictor_order=2, corrector_order=3, pece=True)
    assert abs(fitted_slope([1.0 / n for n in steps], pece) - 3.0) < 0.3
    assert all(b < a for a, b in zip(pec, pece, strict=True))


# ---------------------------------------------------------------------------------------------
# T7: coefficient identities
# ---------------------------------------------------------------------------------------------

def _points(lams: list[float]) -> list[EvalPoint]:
    """Nodes with alpha = 1 (so b_j are the normalised weights of the note)."""
    return [EvalPoint(lam=v, t=0.0, alpha=1.0, sigma=math.exp(-v)) for v in lams]


def _random_nodes(rng: random.Random, order: int) -> tuple[list[float], int]:
    """Grid lambdas (past nodes, lambda_i, lambda_{i+1}) with random spacings; returns the
    list and i."""
    lam_i = rng.uniform(-10.0, 10.0)
    h = 10 ** rng.uniform(-4.0, math.log10(3.0))
    past = [lam_i]
    for _ in range(order):
        past.append(past[-1] - h * rng.uniform(0.2, 5.0))
    lams = [*reversed(past), lam_i + h]
    return lams, order


def test_weights_sum_and_polynomial_exactness():
    """Sum b_j = 1 - e^{-kh}; sum b_j q(lambda_j) = k int e^{-k(lambda_t - lambda)} q dlambda
    for deg q < s (20-node Gauss-Legendre in absolute lambda), predictor and corrector nodes,
    lambda in [-10, 10], h in [1e-4, 3], float64."""
    rng = random.Random(0)
    gl_x, gl_w = np.polynomial.legendre.leggauss(20)
    worst_sum = worst_poly = 0.0
    for _ in range(300):
        order = rng.randint(1, 4)
        eta = rng.choice([0.0, 1.0, rng.uniform(0.0, 4.0)])
        k = 1.0 + eta
        lams, i = _random_nodes(rng, order)
        pts = _points(lams)
        lam_s, lam_t = lams[i], lams[i + 1]
        h = lam_t - lam_s
        for nodes in ([i - j for j in range(order)], [i + 1 - j for j in range(order)]):
            b = sa_weights(pts, i, nodes, eta)
            worst_sum = max(worst_sum, abs(sum(b) + math.expm1(-k * h)) / -math.expm1(-k * h))
            quad_l = lam_s + 0.5 * h * (gl_x + 1.0)
            kernel = 0.5 * h * gl_w * k * np.exp(-k * (lam_t - quad_l))
            centre = rng.uniform(-10.0, 10.0)
            for deg in range(order):
                q_nodes = [(lams[j] - centre) ** deg for j in nodes]
                got = sum(bj * qj for bj, qj in zip(b, q_nodes, strict=True))
                want = float(np.sum(kernel * (quad_l - centre) ** deg))
                scale = float(np.sum(kernel * np.abs(quad_l - centre) ** deg))
                worst_poly = max(worst_poly, abs(got - want) / scale)
    assert worst_sum < 1e-13, worst_sum
    assert worst_poly < 1e-10, worst_poly


def test_weights_match_scipy_quad():
    from scipy.integrate import quad

    lams = [-0.9, -0.4, 0.0, 0.35, 1.1]  # i = 3: nodes 3, 2, 1, 0 (predictor, order 4)
    pts = _points(lams)
    i, nodes, eta = 3, [3, 2, 1, 0], 1.0
    b = sa_weights(pts, i, nodes, eta)
    for j, node in enumerate(nodes):
        others = [lams[m] for m in nodes if m != node]

        def integrand(lam, node=node, others=others):
            ell = math.prod((lam - o) / (lams[node] - o) for o in others)
            return 2.0 * math.exp(-2.0 * (lams[i + 1] - lam)) * ell

        ref, _ = quad(integrand, lams[i], lams[i + 1], epsabs=0.0, epsrel=1e-13)
        assert abs(b[j] - ref) < 1e-12 * max(1.0, abs(ref))


def _mp_weights(lams: list[float], i: int, nodes: list[int], k: float) -> list[mpmath.mpf]:
    """Reference b_j in absolute lambda at 60 digits (mpmath Gauss-Legendre quadrature)."""
    with mpmath.workdps(60):
        L = [mpmath.mpf(v) for v in lams]
        out = []
        for node in nodes:
            others = [L[m] for m in nodes if m != node]

            def f(lam, node=node, others=others):
                ell = mpmath.fprod((lam - o) / (L[node] - o) for o in others)
                return k * mpmath.exp(-k * (L[i + 1] - lam)) * ell

            out.append(mpmath.quad(f, [L[i], L[i + 1]]))
        return out


def _absolute_lambda_weights(lams: list[float], i: int, nodes: list[int], k: float,
                             ) -> np.ndarray:
    """The closed-form route of the reference codes, in float64: moments
    M_p = k int e^{-k(lt - l)} l^p dl by parts in absolute lambda, then V^T b = M."""
    ls, lt = lams[i], lams[i + 1]
    decay = math.exp(-k * (lt - ls))
    moments = [1.0 - decay]
    for p in range(1, len(nodes)):
        moments.append(lt**p - decay * ls**p - p / k * moments[-1])
    vander = np.array([[lams[j] ** p for p in range(len(nodes))] for j in nodes])
    return np.linalg.solve(vander.T, np.array(moments))


@pytest.mark.parametrize("h", [1e-2, 1e-4, 1e-6])
def test_small_h_weights_match_mpmath(h):
    """Normalised-theta phi weights keep ~1e-12 relative accuracy at lambda ~ 6 and tiny h;
    the absolute-lambda closed forms (official code / diffusers) lose most digits there
    (note Sec. 3.4, pitfall P3)."""
    lam_i = 6.2
    lams = [lam_i - 3.1 * h, lam_i - 2.0 * h, lam_i - 0.9 * h, lam_i, lam_i + h]
    i, k = 3, 2.0
    for nodes in ([3, 2, 1, 0], [4, 3, 2, 1]):
        ours = sa_weights(_points(lams), i, nodes, k - 1.0)
        ref = [float(v) for v in _mp_weights(lams, i, nodes, k)]
        scale = max(abs(v) for v in ref)
        err = max(abs(a - b) for a, b in zip(ours, ref, strict=True)) / scale
        assert err < 1e-12, (nodes, err)
        naive = _absolute_lambda_weights(lams, i, nodes, k)
        naive_err = float(np.max(np.abs(naive - np.array(ref)))) / scale
        assert naive_err > 1e-6, naive_err  # documents the failure we avoid


# ---------------------------------------------------------------------------------------------
# T3 / T6: Dirac exactness and predictor-corrector noise reuse
# ---------------------------------------------------------------------------------------------

DIRAC_OPTIONS = [
    dict(tau=0.0),
    dict(tau=1.0),
    dict(tau=2.5, predictor_order=2, corrector_order=2, simple_order_2=True),
    dict(),  # default window
    dict(tau=lambda s: 0.5 + 0.1 * math.log(s) ** 2, pece=True),
    dict(tau=1.0, predictor_order=4, corrector_order=3, final_corrector=True),
    dict(tau=0.8, predictor_order=1, corrector_order=0),
]


@pytest.mark.parametrize("schedule", [EDM(0.002, 80.0), VPLinear()], ids=["EDM", "VPLinear"])
@pytest.mark.parametrize("options", DIRAC_OPTIONS, ids=range(len(DIRAC_OPTIONS)))
def test_dirac_output_law_exact(schedule, options):
    """Dirac data (D == mu): the output law is exactly N(alpha mu, sigma^2) for any tau,
    orders and mode (catches wrong linear parts, D weights and noise amplitudes)."""
    mu = 0.7
    model = GaussianData([mu], [0.0]).denoiser(schedule)
    grid = Grid.from_sigmas([40.0, 12.0, 5.0, 2.0, 0.9, 0.4, 0.1, 0.03], schedule)
    first = schedule.point(float(grid.lams[0]))
    last = schedule.point(float(grid.lams[-1]))
    mean, var = linear_output_moments(model, grid, "sa_solver", first.alpha * mu,
                                      first.sigma**2, **options)
    assert abs(mean - last.alpha * mu) < 1e-12
    assert abs(var - last.sigma**2) < 1e-12 * first.sigma**2


def test_one_noise_draw_per_stochastic_step():
    """The corrector reuses the predictor's xi: one draw (step=i, draw=0) per step on
    [lambda_i, lambda_{i+1}], none where tau = 0."""
    schedule = EDM(0.002, 80.0)
    model = GaussianMixture.random(d=2, k=3, seed=0).denoiser(schedule)
    grid = _grid(12, schedule, sigma_max=80.0, sigma_min=0.01)
    x = torch.randn(2, 2, dtype=torch.float64) * 80.0
    for options, expected in ((dict(tau=1.0, pece=True), set(range(12))),
                              (dict(tau=0.0), set()),
                              (dict(), {i for i in range(12)
                                        if DEFAULT_TAU_WINDOW[0] <= float(grid.sigmas[i + 1])
                                        <= DEFAULT_TAU_WINDOW[1]})):
        rec = RecordingNoise(ZeroNoise())
        solve(model, x, grid, "sa_solver", noise=rec, progress=False, **options)
        assert [r.draw for r in rec.requests] == [0] * len(expected)
        assert {r.step for r in rec.requests} == expected and len(rec.requests) == len(expected)
        for r in rec.requests:
            assert r.lam_from == float(grid.lams[r.step])
            assert r.lam_to == float(grid.lams[r.step + 1])
    assert 0 < len(expected) < 12


def _reference_pec_1_2(model, points, x, xis, fresh, tau):
    """PEC SA-Solver (1, 2) written out as in the paper (note Sec. 3.2): predictor and
    corrector are both full updates from the stored corrected state x_i, each with its own
    noise term. ``fresh`` (None: reuse ``xis``) feeds the corrector independent noise."""
    eta = tau * tau
    k = 1.0 + eta
    x_c, x_p, d_prev, prev = x, x, None, None
    for i in range(len(points) - 1):
        ps, pt = points[i], points[i + 1]
        d = model.data(x_p, ps)
        if prev is not None:  # correct [i-1, i]: nodes lambda_i (D~_i), lambda_{i-1}
            lin, z, alpha, std, x_base, xi = prev
            b_new = alpha * (z - 1.0 + math.exp(-z)) / z  # alpha k h phi_2(-kh)
            b_old = alpha * -math.expm1(-z) - b_new
            x_c = lin * x_base + b_new * d + b_old * d_prev + std * xi
        h = pt.lam - ps.lam
        z = k * h
        lin = pt.sigma / ps.sigma * math.exp(-eta * h)
        std = pt.sigma * math.sqrt(-math.expm1(-2.0 * eta * h))
        x_p = lin * x_c + pt.alpha * -math.expm1(-z) * d + std * xis[i]
        prev = (lin, z, pt.alpha, std, x_c, xis[i] if fresh is None else fresh[i])
        d_prev = d
    return x_p


def _impulse_moments(run, n_draws, x_mean, x_var):
    """Exact mean/variance of an output linear in (x_T, draws) (as linear_output_moments)."""
    batch = 2 + n_draws
    x = torch.zeros(batch, 1, dtype=torch.float64)
    x[1] = 1.0
    draws = torch.zeros(n_draws, batch, 1, dtype=torch.float64)
    for j in range(n_draws):
        draws[j, 2 + j] = 1.0
    out = run(x, draws)[:, 0]
    c, a, b = out[0], out[1] - out[0], out[2:] - out[0]
    return float(a * x_mean + c), float(a * a * x_var + (b * b).sum())


def test_corrector_noise_reuse_matters():
    """T6: the explicit paper form with the SAME xi matches the solver to rounding and has weak
    order 2; feeding the corrector an independent xi (the bug) drops the weak order to 1."""
    mu, c2, smax, smin = 0.3, 0.25, 80.0, 0.002
    schedule = EDM(smin, smax)
    model = GaussianData([mu], [c2]).denoiser(schedule)
    tau, ns = 1.0, [20, 40, 80, 160]
    errs_shared, errs_fresh = [], []
    for n in ns:
        grid = _grid(n, schedule, sigma_max=smax, sigma_min=smin)
        pts = [schedule.point(float(v)) for v in grid.lams]
        if n == ns[0]:  # bitwise-level agreement with the solver, same noise
            x = torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            xis = torch.randn(n, 4, 1, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(1))
            ours = solve(model, x, grid, "sa_solver", tau=tau, predictor_order=1,
                         corrector_order=2, noise=GivenNoise(list(xis)), progress=False).x
            ref = _reference_pec_1_2(model, pts, x, xis, None, tau)
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        for fresh, errs in ((False, errs_shared), (True, errs_fresh)):
            n_draws = 2 * n if fresh else n

            def run(x, draws, fresh=fresh, pts=pts, n=n):
                return _reference_pec_1_2(model, pts, x, draws[:n], draws[n:] if fresh else None,
                                          tau)

            m, v = _impulse_moments(run, n_draws, mu, c2 + smax**2)
            errs.append(abs(m - mu) + abs(v - (c2 + smin**2)))
    hs = [1.0 / n for n in ns]
    assert fitted_slope(hs, errs_shared) > 1.7, errs_shared
    assert fitted_slope(hs, errs_fresh) < 1.3, errs_fresh
    assert errs_fresh[-1] > 10 * errs_shared[-1]


# ---------------------------------------------------------------------------------------------
# T4: weak order, tau = 1 everywhere
# ---------------------------------------------------------------------------------------------

WEAK_CASES = [
    (dict(predictor_order=2, corrector_order=0), [20, 40, 80, 160]),
    (dict(predictor_order=3, corrector_order=0), [20, 40, 80, 160]),
    # the order-4 errors change sign between N = 20 and 40, so fit from N = 40
    (dict(predictor_order=4, corrector_order=0), [40, 80, 160, 320]),
    (dict(predictor_order=1, corrector_order=2), [20, 40, 80, 160]),
    (dict(predictor_order=2, corrector_order=2), [20, 40, 80, 160]),
    (dict(predictor_order=2, corrector_order=3), [20, 40, 80, 160]),
    (dict(), [20, 40, 80, 160]),  # (3, 4) PEC
    (dict(pece=True), [20, 40, 80, 160]),
    (dict(predictor_order=4, corrector_order=4, final_corrector=True), [40, 80, 160, 320]),
    (dict(predictor_order=2, corrector_order=2, simple_order_2=True), [20, 40, 80, 160]),
]


def _weak_errors(options, ns):
    mu, c2, smax, smin = 0.3, 0.25, 80.0, 0.002
    schedule = EDM(smin, smax)
    model = GaussianData([mu], [c2]).denoiser(schedule)
    errs = []
    for n in ns:
        grid = _grid(n, schedule, sigma_max=smax, sigma_min=smin)
        m, v = linear_output_moments(model, grid, "sa_solver", mu, c2 + smax**2, tau=1.0,
                                     **options)
        errs.append(abs(m - mu) + abs(v - (c2 + smin**2)))
    return errs


@pytest.mark.parametrize(("options", "ns"), WEAK_CASES, ids=range(len(WEAK_CASES)))
def test_weak_order_at_least_1_7(options, ns):
    """|mean error| + |Var error| at sigma_min decays at least like N^-1.7 for predictor order
    >= 2 or a corrector (issue requirement; note Appendix C measures ~2)."""
    errs = _weak_errors(options, ns)
    slope = fitted_slope([1.0 / n for n in ns], errs)
    assert slope >= 1.7, f"{options}: {errs}, weak order {slope:.2f}"


def test_weak_order_one_for_order_1():
    ns = [20, 40, 80, 160]
    errs = _weak_errors(dict(predictor_order=1, corrector_order=0), ns)
    slope = fitted_slope([1.0 / n for n in ns], errs)
    assert 0.75 < slope < 1.2, (errs, slope)


# ---------------------------------------------------------------------------------------------
# T9: NFE and the last step
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "per_finite"), [
    (dict(), lambda n: n),
    (dict(corrector_order=0), lambda n: n),
    (dict(pece=True), lambda n: 2 * n - 1),
    (dict(final_corrector=True), lambda n: n + 1),
    (dict(pece=True, final_corrector=True), lambda n: 2 * n),
])
def test_nfe_counts(options, per_finite):
    schedule = EDM(0.002, 80.0)
    model = GaussianMixture.random(d=2, k=3, seed=1).denoiser(schedule)
    solver = get_solver("sa_solver", **options)
    x = torch.randn(2, 2, dtype=torch.float64) * 20.0
    for sigmas, finite, denoise in (([20.0, 5.0, 2.0, 1.0, 0.5, 0.0], 4, 1),
                                    ([20.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1], 6, 0),
                                    ([20.0, 0.0], 0, 1), ([20.0, 1.0, 0.0], 1, 1)):
        model.reset_nfe()
        res = solve(model, x, Grid.from_sigmas(sigmas, schedule), solver, progress=False)
        assert res.nfe == model.nfe == solver.nfe(finite, denoise_final=bool(denoise))
        assert solver.nfe(finite, denoise_final=False) == (per_finite(finite) if finite else 0)
        assert torch.isfinite(res.x).all()


def test_grid_to_zero_returns_denoised_last_prediction():
    """With the default rule the last finite step is predictor-only and the loop's final
    denoise returns D at the last predicted point."""
    schedule = EDM(0.002, 80.0)
    model = GaussianMixture.random(d=2, k=3, seed=2).denoiser(schedule)
    seen = []
    res = sample(model, (4, 2), solver="sa_solver", steps=8, dtype=torch.float64,
                 return_trajectory=True, callback=seen.append, progress=False)
    last = schedule.point(float(res.grid.lams[-2]))
    torch.testing.assert_close(res.x, model.data(res.trajectory[-2], last))
    assert res.nfe == 8 and len(seen) == 8


def test_nfe_budget_with_pece():
    schedule = EDM(0.002, 80.0)
    model = GaussianMixture.random(d=2, k=3, seed=2).denoiser(schedule)
    for budget in (6, 9, 10, 21):
        res = sample(model, (2, 2), solver=get_solver("sa_solver", pece=True), nfe=budget,
                     progress=False)
        assert budget - 2 <= res.nfe <= budget


# ---------------------------------------------------------------------------------------------
# Options, tau rule, invariance, dtype, k-diffusion adapter
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "match"), [
    (dict(predictor_order=0), "predictor_order=0"),
    (dict(predictor_order=5), "predictor_order=5"),
    (dict(predictor_order=2.5), "predictor_order"),
    (dict(corrector_order=-1), "corrector_order"),
    (dict(corrector_order=5), "corrector_order"),
    (dict(tau=-0.1), r"tau=-0.1 is out of range"),
    (dict(tau=11.0), "tau"),
    (dict(tau="1"), "function sigma -> tau"),
    (dict(tau_window=(5.0, 1.0)), r"tau_window\[1\]"),
    (dict(tau_window=(-1.0, 1.0)), r"tau_window\[0\]"),
    (dict(tau_window=(1.0,)), "pair"),
    (dict(tau_value=-1.0), "tau_value"),
    (dict(s_noise=-1.0), "s_noise"),
    (dict(pece="yes"), "pece"),
    (dict(pece=True, corrector_order=0), "corrector_order >= 1"),
    (dict(final_corrector=True, corrector_order=0), "corrector_order >= 1"),
    (dict(eta=1.0), "no option"),
])
def test_option_validation(options, match):
    with pytest.raises(SolverOptionError, match=match):
        get_solver("sa_solver", **options)


def test_callable_tau_is_validated_at_plan_time():
    schedule = EDM(0.002, 80.0)
    model = GaussianMixture.random(d=2, k=3, seed=1).denoiser(schedule)
    with pytest.raises(SolverOptionError, match=r"tau\(.*\) = -1.0 is out of range"):
        sample(model, (2, 2), solver="sa_solver", steps=4, tau=lambda s: -1.0, progress=False)


def test_tau_rule_end_node_window():
    """tau_i is evaluated at the END node sigma~_{i+1}; the window is inclusive."""
    schedule = EDM(0.002, 80.0)
    solver = SASolver(tau_window=(1.0, 10.0), tau_value=0.5)
    sig = [40.0, 10.0, 3.0, 1.0, 0.5]
    plan = solver.plan(schedule, Grid.from_sigmas(sig, schedule).finite_lams())
    assert [c.tau for c in plan.extra] == [0.5, 0.5, 0.5, 0.0]
    assert [c.eta for c in plan.extra] == [0.25, 0.25, 0.25, 0.0]
    fn = SASolver(tau=lambda s: s / 100.0).plan(schedule, Grid.from_sigmas(sig, schedule)
                                                 .finite_lams())
    assert [c.tau for c in fn.extra] == pytest.approx([s / 100.0 for s in sig[1:]])


def test_vp_state_scaling_matches_edm():
    """T10: the same grid and noise in VP and EDM coordinates gives x_VP = alpha x_EDM."""
    gmm = GaussianMixture.random(d=2, k=3, seed=4)
    sig = [20.0, 8.0, 3.0, 1.0, 0.3, 0.05]
    n = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vp, edm = VPLinear(), EDM(0.01, 50.0)
    g_vp, g_edm = Grid.from_sigmas(sig, vp), Grid.from_sigmas(sig, edm)
    a0 = vp.point(float(g_vp.lams[0])).alpha
    a1 = vp.point(float(g_vp.lams[-1])).alpha
    for options in (dict(), dict(tau=1.0, pece=True, predictor_order=2, corrector_order=3)):
        out_vp = solve(gmm.denoiser(vp), n * sig[0] * a0, g_vp, "sa_solver", noise=7,
                       progress=False, **options).x
        out_edm = solve(gmm.denoiser(edm), n * sig[0], g_edm, "sa_solver", noise=7,
                        progress=False, **options).x
        torch.testing.assert_close(out_vp, a1 * out_edm, rtol=1e-9, atol=1e-9)


def test_float32_close_to_float64():
    """T13: coefficients are float64 host scalars, so a float32 state stays close."""
    model = GaussianMixture.random(d=2, k=3, seed=5).denoiser(EDM())
    for options in (dict(), dict(predictor_order=4, corrector_order=4, tau=1.0)):
        r64 = sample(model, (16, 2), solver="sa_solver", steps=50, dtype=torch.float64,
                     progress=False, **options).x
        r32 = sample(model, (16, 2), solver="sa_solver", steps=50, dtype=torch.float32,
                     progress=False, **options).x
        assert r32.dtype == torch.float32
        assert float((r32.double() - r64).abs().max()) < 1e-4


def test_kdiffusion_adapter():
    gmm = GaussianMixture.random(d=2, k=3, seed=1)
    sigmas = torch.tensor([20.0, 6.0, 2.0, 0.7, 0.2, 0.0], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    out = kdiffusion.sample_sa_solver(gmm.kdiffusion_denoiser(), x, sigmas, disable=True,
                                      seed=3)
    ref = solve(gmm.denoiser(EDM(0.2, 20.0)), x, Grid.from_sigmas(sigmas), "sa_solver",
                noise=3, lower_order_final=False, progress=False).x
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_diffusers_options_noise_every_step_and_orders_lowered_on_every_grid():
    """``noise_every_step`` draws the step's noise also where tau = 0 (a sequential generator
    is consumed once per step, as diffusers' SASolverScheduler does); with
    ``lower_order_final_always`` the last orders are lowered on 20 steps too; ``tau_point``
    moves tau to the interval's start."""
    schedule = EDM(0.002, 80.0)
    model = GaussianMixture.random(d=2, k=3, seed=0).denoiser(schedule)
    grid = _grid(12, schedule, sigma_max=80.0, sigma_min=0.01)
    x = torch.randn(2, 2, dtype=torch.float64) * 80.0
    rec = RecordingNoise(ZeroNoise())
    solve(model, x, grid, "sa_solver", noise=rec, progress=False, noise_every_step=True)
    assert [r.step for r in rec.requests] == list(range(12))
    default = get_solver("sa_solver", predictor_order=3, corrector_order=4)
    always = get_solver("sa_solver", predictor_order=3, corrector_order=4,
                        lower_order_final_always=True)
    assert default.predictor_orders(20, False)[-3:] == [3, 3, 3]
    assert always.predictor_orders(20, False)[-3:] == [3, 2, 1]
    assert always.corrector_orders(20, False)[-3:] == [4, 3, 2]
    start = get_solver("sa_solver", tau=lambda s: 1.0 if s > 1.0 else 0.0, tau_point="start")
    end = get_solver("sa_solver", tau=lambda s: 1.0 if s > 1.0 else 0.0)
    p_start = start.plan(schedule, grid.finite_lams())
    p_end = end.plan(schedule, grid.finite_lams())
    sig = [p.sigma_edm for p in p_start.points]
    assert [c.tau for c in p_start.extra] == [1.0 if s > 1.0 else 0.0 for s in sig[:-1]]
    assert [c.tau for c in p_end.extra] == [1.0 if s > 1.0 else 0.0 for s in sig[1:]]

"""Tests of the analytic oracle: exact Gaussian-mixture denoiser and PF-ODE references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsolve.errors import DiffsolveError
from diffsolve.schedules import EDM, VPLinear
from diffsolve.zoo import GaussianMixture, default_2d, gaussian_pf_ode_exact, pf_ode_reference

F64 = torch.float64
ALPHA_SIGMA = [(1.0, 0.05), (0.8, 0.6), (0.3, 0.95), (1.0, 3.0), (2.0, 0.01)]


def _randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def _tweedie_autograd(gmm: GaussianMixture, x: torch.Tensor, alpha: float,
                      sigma: float) -> torch.Tensor:
    """(x + sigma^2 grad log p_t(x)) / alpha with the score from autograd of the marginal's
    Cholesky-based log_prob: an independent path to E[x0 | x_t = x]."""
    xr = x.clone().requires_grad_(True)
    lp = gmm.marginal(alpha, sigma).log_prob(xr).sum()
    (score,) = torch.autograd.grad(lp, xr)
    return (x + sigma**2 * score) / alpha


def test_single_gaussian_denoise_closed_form() -> None:
    rng = np.random.default_rng(3)
    d = 5
    a = rng.standard_normal((d, d))
    cov = torch.as_tensor(a @ a.T / d + 0.1 * np.eye(d))
    mean = torch.as_tensor(rng.standard_normal(d))
    gmm = GaussianMixture.gaussian(mean, cov)
    x = _randn(7, d, seed=1, scale=2.0)
    eye = torch.eye(d, dtype=F64)
    for alpha, sigma in ALPHA_SIGMA:
        # mu + alpha C (alpha^2 C + sigma^2 I)^{-1} (x - alpha mu), via a dense solve
        rhs = (x - alpha * mean).T
        want = mean + (alpha * cov @ torch.linalg.solve(alpha**2 * cov + sigma**2 * eye, rhs)).T
        got = gmm.denoise(x, alpha, sigma)
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("gmm", [GaussianMixture.random(3, 4, seed=0), default_2d(),
                                 GaussianMixture.random(16, 3, seed=5)],
                         ids=["random3d", "default2d", "random16d"])
def test_denoise_matches_tweedie_autograd(gmm: GaussianMixture) -> None:
    x = _randn(9, gmm.dim, seed=2, scale=1.5)
    for alpha, sigma in ALPHA_SIGMA:
        want = _tweedie_autograd(gmm, x, alpha, sigma)
        torch.testing.assert_close(gmm.denoise(x, alpha, sigma), want, rtol=1e-9, atol=1e-9)


def test_score_matches_autograd_and_tweedie() -> None:
    gmm = GaussianMixture.random(4, 5, seed=7)
    x = _randn(6, 4, seed=4)
    for alpha, sigma in ALPHA_SIGMA:
        xr = x.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(gmm.marginal(alpha, sigma).log_prob(xr).sum(), xr)
        score = gmm.score(x, alpha, sigma)
        torch.testing.assert_close(score, auto, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(gmm.denoise(x, alpha, sigma),
                                   (x + sigma**2 * score) / alpha, rtol=1e-9, atol=1e-9)


def test_denoise_responsibilities_pick_the_right_component() -> None:
    # two far-apart components: near each mean, D must lie near that mean (not in between)
    gmm = GaussianMixture.isotropic([0.9, 0.1], [[-5.0, 0.0], [5.0, 0.0]], [0.01, 0.04])
    x = torch.tensor([[-5.0, 0.1], [5.0, -0.1]], dtype=F64)
    out = gmm.denoise(x, 1.0, 0.1)
    # per-component posterior means: mu + v/(v+s^2)(x - mu)
    want = torch.tensor([[-5.0, 0.1 * 0.01 / 0.02], [5.0, -0.1 * 0.04 / 0.05]], dtype=F64)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)


def test_denoise_small_sigma_is_identity_over_alpha() -> None:
    gmm = default_2d()
    x = _randn(8, 2, seed=3, scale=3.0)  # includes points far from every component
    for alpha in (1.0, 0.5):
        out = gmm.denoise(x, alpha, 1e-6)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, x / alpha, rtol=0, atol=1e-7)
    torch.testing.assert_close(gmm.denoise(x, 0.7, 0.0), x / 0.7, rtol=1e-13, atol=1e-13)
    # far away and tiny sigma: log-sum-exp must not produce NaN
    far = torch.full((2, 2), 1e3, dtype=F64)
    assert torch.isfinite(gmm.denoise(far, 1.0, 1e-8)).all()


def test_denoise_large_sigma_and_zero_alpha_give_mean() -> None:
    gmm = GaussianMixture.random(3, 4, seed=1)
    x = _randn(5, 3, seed=6)
    torch.testing.assert_close(gmm.denoise(x, 0.0, 1.0), gmm.mean.expand(5, 3), rtol=0,
                               atol=1e-13)
    torch.testing.assert_close(gmm.denoise(x, 1.0, 1e6), gmm.mean.expand(5, 3), rtol=0,
                               atol=1e-6)


def test_dtype_shape_and_per_sample_sigma() -> None:
    gmm = GaussianMixture.random(4, 3, seed=2)
    x64 = _randn(6, 4, seed=8)
    x32 = x64.float().reshape(6, 1, 2, 2)
    out = gmm.denoise(x32, 0.9, 0.4)
    assert out.dtype == torch.float32 and out.shape == (6, 1, 2, 2)
    torch.testing.assert_close(out.reshape(6, 4).double(),
                               gmm.denoise(x32.double().reshape(6, 4), 0.9, 0.4), rtol=0,
                               atol=1e-6)
    assert gmm.score(x32, 0.9, 0.4).dtype == torch.float32
    sig = torch.linspace(0.1, 2.0, 6, dtype=torch.float32)
    alp = torch.linspace(1.0, 0.5, 6, dtype=F64)
    got = gmm.denoise(x64, alp, sig)
    for i in range(6):
        torch.testing.assert_close(got[i], gmm.denoise(x64[i:i + 1], float(alp[i]),
                                                       float(sig[i]))[0], rtol=1e-13, atol=1e-13)
    with pytest.raises(DiffsolveError):
        gmm.denoise(_randn(2, 5), 1.0, 0.5)


def test_log_prob_normalised_and_matches_scipy() -> None:
    from scipy.stats import multivariate_normal

    gmm = default_2d()
    h = 0.02
    g = torch.arange(-3.0, 3.0 + h / 2, h, dtype=F64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    mass = float(torch.exp(gmm.log_prob(pts)).sum()) * h * h
    assert abs(mass - 1.0) < 1e-4
    x = _randn(5, 2, seed=9)
    want = np.log(sum(float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
                      for w, m, c in zip(gmm.weights, gmm.means, gmm.covs, strict=True)))
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), want, rtol=1e-12)


def test_marginal_moments() -> None:
    gmm = GaussianMixture.random(3, 4, seed=11)
    alpha, sigma = 0.6, 0.8
    marg = gmm.marginal(alpha, sigma)
    torch.testing.assert_close(marg.mean, alpha * gmm.mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(marg.cov, alpha**2 * gmm.cov + sigma**2 * torch.eye(3, dtype=F64),
                               rtol=1e-12, atol=1e-12)


def test_sample_moments() -> None:
    gmm = GaussianMixture.random(3, 4, seed=12)
    n = 200_000
    xs = gmm.sample(n, torch.Generator().manual_seed(0))
    assert xs.dtype == F64 and xs.shape == (n, 3)
    mean, cov = gmm.mean, gmm.cov
    # standard errors: mean_i ~ sqrt(C_ii / n); cov_ij ~ std((x_i - m_i)(x_j - m_j)) / sqrt(n)
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert (torch.abs(xs.mean(0) - mean) < 5 * se_mean).all()
    c = xs - mean
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert (torch.abs(prods.mean(0) - cov) < 5 * se_cov).all()
    # the tolerance is meaningful: relative SE of the covariance is well below 1 %
    assert (se_cov / torch.sqrt(torch.outer(torch.diagonal(cov), torch.diagonal(cov))) < 0.01).all()
    # a single full-covariance Gaussian: E[x x^T] = C, Var(x_i x_j) = C_ii C_jj + C_ij^2
    # (catches a wrong Cholesky factor orientation, L^T z instead of L z)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 3))
    full = torch.as_tensor(a @ a.T + 0.2 * np.eye(3))
    one = GaussianMixture.gaussian(torch.zeros(3, dtype=F64), full)
    ys = one.sample(n, torch.Generator().manual_seed(1))
    emp = ys.T @ ys / n
    se = torch.sqrt((torch.diagonal(full)[:, None] * torch.diagonal(full)[None, :]
                     + full**2) / n)
    assert (torch.abs(emp - full) < 5 * se).all()


def test_reference_ode_matches_gaussian_closed_form() -> None:
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    var = torch.tensor([0.04, 1.0, 0.3], dtype=F64)
    gmm = GaussianMixture.gaussian(mean, var)
    s_from, s_to = 80.0, [5.0, 0.5, 0.002]
    x0 = _randn(4, 3, seed=13, scale=80.0)
    got = gmm.ode_reference(x0, s_from, s_to)
    want = gaussian_pf_ode_exact(x0, mean, var, s_from, s_to)
    assert got.shape == (3, 4, 3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # single target, and integrating backwards (towards more noise)
    back = pf_ode_reference(gmm.denoise_edm_numpy, want[-1], -math.log(0.002), -math.log(80.0))
    torch.testing.assert_close(back, x0, rtol=1e-9, atol=1e-9)


def test_reference_ode_mixture_targets_in_any_order() -> None:
    gmm = default_2d()
    x = _randn(3, 2, seed=14, scale=10.0)
    lams = [1.0, -2.0, 3.0]
    res = pf_ode_reference(gmm.denoise_edm_numpy, x, -2.0, lams)
    assert res.shape == (3, 3, 2)
    torch.testing.assert_close(res[1], x, rtol=0, atol=0)
    torch.testing.assert_close(res[0], pf_ode_reference(gmm.denoise_edm_numpy, x, -2.0, 1.0),
                               rtol=1e-9, atol=1e-9)
    # reversibility of the flow
    torch.testing.assert_close(pf_ode_reference(gmm.denoise_edm_numpy, res[2], 3.0, -2.0), x,
                               rtol=1e-8, atol=1e-8)


def test_reference_schedule_scaling_and_denoiser_wrappers() -> None:
    gmm = GaussianMixture.gaussian([0.3, -0.2], [0.5, 0.1])
    sched = VPLinear()
    lam0, lam1 = sched.lam_min, sched.lam_max
    x = _randn(3, 2, seed=15)
    got = gmm.ode_reference_schedule(sched, x, lam0, lam1)
    s0, s1 = math.exp(-lam0), math.exp(-lam1)
    a0, a1 = sched.alpha_at_lam(lam0), sched.alpha_at_lam(lam1)
    want = a1 * gaussian_pf_ode_exact(x / a0, torch.tensor([0.3, -0.2], dtype=F64),
                                      torch.tensor([0.5, 0.1], dtype=F64), s0, s1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)

    mix = GaussianMixture.random(3, 3, seed=16)
    den = mix.denoiser(sched)
    xm = _randn(5, 3, seed=17)
    for lam in (-3.0, 0.5, 4.0):
        p = sched.point(lam)
        torch.testing.assert_close(den.data(xm, p), mix.denoise(xm, p.alpha, p.sigma),
                                   rtol=0, atol=0)
        # direct network call (no point handed over) falls back to the lambda vector
        direct = den.net(xm, torch.full((5,), lam, dtype=F64))
        torch.testing.assert_close(direct, mix.denoise(xm, p.alpha, p.sigma), rtol=1e-12,
                                   atol=1e-12)
    assert den.nfe == 3
    kd = mix.kdiffusion_denoiser()
    sig = torch.full((5,), 0.7, dtype=F64)
    torch.testing.assert_close(kd(xm, sig), mix.denoise(xm, 1.0, 0.7), rtol=0, atol=0)
    edm = EDM()
    pe = edm.point(-math.log(0.7))
    torch.testing.assert_close(mix.denoiser(edm).data(xm, pe), mix.denoise(xm, 1.0, 0.7),
                               rtol=1e-13, atol=1e-13)


def test_invalid_parameters_raise() -> None:
    with pytest.raises(DiffsolveError):
        GaussianMixture([1.0, -0.1], [[0.0], [1.0]], [[[1.0]], [[1.0]]])
    with pytest.raises(DiffsolveError):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])  # indefinite
    with pytest.raises(DiffsolveError):
        GaussianMixture([1.0, 1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]])
    with pytest.raises(DiffsolveError):
        default_2d().denoise(torch.zeros(1, 2), 0.0, 0.0)

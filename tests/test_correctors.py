"""Predictor-corrector sampling (Langevin, LML) and Denoising MCMC: known answers on Gaussian
data and the mixture, honest cost, per-sample noise (diffsolve.drivers.corrector / .dmcmc)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from diffsolve.core.errors import SolverOptionError
from diffsolve.core.noise import PerSampleStreams, ZeroNoise
from diffsolve.drivers.corrector import (
    LangevinCorrector,
    LMLCorrector,
    corrected_nfe,
    corrected_sample,
    corrected_steps_for_nfe,
    corrector_noise,
    langevin_chain,
    make_corrector,
)
from diffsolve.drivers.dmcmc import dmcmc_sample, level_grid
from diffsolve.schedules import EDM, VPLinear
from diffsolve.solvers import get_solver, list_solvers
from diffsolve.zoo import GaussianMixture

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _gauss_kl(x: torch.Tensor, cov: torch.Tensor) -> float:
    """KL(N(sample mean, sample cov) || N(0, cov))."""
    m = x.mean(0)
    c = torch.cov(x.T)
    inv = torch.linalg.inv(cov)
    d = x.shape[1]
    return 0.5 * float(torch.trace(inv @ c) + m @ inv @ m - d
                       + torch.logdet(cov) - torch.logdet(c))


def _fixed_sigma(cov: torch.Tensor, sigma: float, schedule=None):
    gmm = GaussianMixture.gaussian(torch.zeros(cov.shape[0]), cov)
    sched = schedule or EDM()
    return gmm.denoiser(sched), sched.point(-math.log(sigma)), cov + sigma ** 2 * torch.eye(
        cov.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("schedule", [EDM(), VPLinear()])
def test_langevin_stationary_variance_matches_ula_formula(schedule):
    # ULA on N(0, v I): stationary variance v / (1 - eps/(2v)) (module docstring), eps = tau s^2;
    # the error against the exact marginal shrinks with the step
    d, s2, sig = 16, 0.03, 0.1
    model, point, _ = _fixed_sigma(s2 * torch.eye(d, dtype=torch.float64), sig, schedule)
    v = s2 + sig ** 2
    x_exact = torch.randn(800, d, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0)) * math.sqrt(v)
    errs = []
    for tau in (1.0, 0.25):
        eps = tau * sig ** 2
        x = langevin_chain(model, point.alpha * x_exact, point,
                           LangevinCorrector(step_size=tau, n_steps=50))
        ratio = float((x / point.alpha).var(0).mean()) / v
        predicted = 1.0 / (1.0 - eps / (2 * v))
        assert abs(ratio - predicted) < 0.04, (tau, ratio, predicted)
        errs.append(abs(ratio - 1.0))
    assert errs[0] > 0.08  # the bias is there at tau = 1 (predicted 0.143) ...
    assert errs[1] < errs[0] / 2  # ... and shrinks with the step (predicted 0.032)


def test_lml_converges_faster_than_langevin_at_equal_nfe():
    # ill-conditioned Gaussian at sigma = 0.1 (marginal variances 4.01 and 0.02), started
    # collapsed near 0: Langevin must stretch the wide direction with steps limited by the
    # stiff one; LML's secant preconditioner does not
    cov = torch.diag(torch.tensor([4.0, 0.01], dtype=torch.float64))
    model, point, marg = _fixed_sigma(cov, 0.1)
    x0 = 0.1 * torch.randn(400, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kl = {}
    for name, corr in (("langevin", LangevinCorrector(step_size=0.5, n_steps=64)),
                       ("lml", LMLCorrector(step_size=0.5, n_steps=64, damping=0.01)),
                       ("langevin_long", LangevinCorrector(step_size=0.5, n_steps=192))):
        model.nfe = 0
        kl[name] = _gauss_kl(langevin_chain(model, x0, point, corr), marg)
        assert model.nfe == corr.evaluations
    # measured (seed 1, 400 samples): langevin 0.50, langevin_long 0.17, lml 0.014
    assert kl["lml"] < 0.05
    assert kl["lml"] < kl["langevin"] / 10
    assert kl["langevin_long"] < kl["langevin"] / 2  # Langevin does converge, slowly


def test_lml_without_secant_curvature_is_langevin():
    # isotropic point mass: D is constant, so every secant has dD = 0 and P = I
    gmm = GaussianMixture.gaussian([0.0, 0.0], 1e-12 * torch.eye(2, dtype=torch.float64))
    model, point = gmm.denoiser(EDM()), EDM().point(0.0)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = langevin_chain(model, x, point, LangevinCorrector(step_size=0.3, n_steps=3))
    b = langevin_chain(model, x, point, LMLCorrector(step_size=0.3, n_steps=3))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("corrector", ["langevin", "lml"])
def test_every_solver_takes_a_corrector_with_its_cost_counted(corrector):
    # the corrector wraps every registered solver; evaluations counted == declared <= budget,
    # with the largest grid that fits
    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM(0.002, 80.0))
    corr = make_corrector(corrector, step_size=0.5, n_steps=2)
    for name in list_solvers():
        solver = get_solver(name)
        res = corrected_sample(model, (4, 2), solver=name, corrector=corr, nfe=30,
                               dtype=torch.float64)
        steps = corrected_steps_for_nfe(solver, corr, 30)
        declared = corrected_nfe(solver, corr, steps - 1, denoise_final=True)
        assert res.nfe == declared <= 30, name
        assert corrected_nfe(solver, corr, steps, denoise_final=True) > 30, name
        assert torch.isfinite(res.x).all(), name


def test_corrected_sample_is_batch_split_invariant():
    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM(0.002, 80.0))
    kw = dict(solver="dpmpp_2m_sde", corrector="lml", nfe=20, seed=5, dtype=torch.float64)
    full = corrected_sample(model, (6, 2), **kw).x
    halves = torch.cat([corrected_sample(model, (3, 2), offset=o, **kw).x for o in (0, 3)])
    torch.testing.assert_close(full, halves, rtol=1e-12, atol=1e-12)
    other = corrected_sample(model, (6, 2), **{**kw, "seed": 6}).x
    assert not torch.allclose(full, other)


def test_corrector_noise_is_separate_from_the_solver_streams():
    like = torch.zeros(3, 4)
    a = corrector_noise(7, 3).normal(like, step=1, draw=0, lam_from=0.0, lam_to=0.0)
    b = PerSampleStreams.from_seed(7, 3).normal(like, step=1, draw=0)
    assert not torch.allclose(a, b)


def test_zero_noise_langevin_is_gradient_ascent():
    cov = torch.eye(2, dtype=torch.float64)
    model, point, _ = _fixed_sigma(cov, 1.0)
    x = torch.full((2, 2), 3.0, dtype=torch.float64)
    y = langevin_chain(model, x, point, LangevinCorrector(step_size=0.5, n_steps=1),
                       noise=ZeroNoise())
    # eps = 0.5, score = -x/2: x <- x - 0.25 x (Alg. 4 line 6 without noise)
    torch.testing.assert_close(y, 0.75 * x)


def test_corrector_options_are_checked():
    with pytest.raises(SolverOptionError, match="n_steps"):
        LangevinCorrector(n_steps=0)
    with pytest.raises(SolverOptionError, match="n_steps must be >= 2"):
        LMLCorrector(n_steps=1)
    with pytest.raises(SolverOptionError, match="snr"):
        LangevinCorrector(snr=-1.0)
    with pytest.raises(SolverOptionError, match="damping"):
        LMLCorrector(damping=0.0)
    with pytest.raises(SolverOptionError, match="unknown corrector"):
        make_corrector("mala")
    with pytest.raises(SolverOptionError, match="at least"):
        corrected_sample(GaussianMixture.default_2d().denoiser(EDM()), (2, 2), solver="heun",
                         corrector="langevin", nfe=3)


def _lld(gmm):
    return lambda y, s: gmm.marginal(1.0, s).log_prob(y)


def test_dmcmc_gibbs_last_recovers_mode_weights():
    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM(0.002, 80.0))
    res = dmcmc_sample(model, (400, 2), level_log_density=_lld(gmm), solver="dpmpp_2m",
                       denoise_nfe=10, n_skip=4, rounds=2, step_size=0.3,
                       level_update="gibbs", select="last", burn_in=10, seed=3)
    assert res.x.shape == (800, 2)
    assert res.nfe_per_sample == (20 + 10) / 2 + 4 + 10
    from diffsolve.bench.density_metrics import mode_resolved

    mr = mode_resolved(res.x, gmm)
    # measured 0.03 / 1.04 (800 correlated samples)
    assert mr["weight_tv"] < 0.1 and mr["missing_modes"] == 0
    assert 0.8 < mr["var_ratio"] < 1.3


def test_dmcmc_argmax_levels_collapse_to_the_lowest_level():
    # the released rule (argmax of p(k | x)) is not a Gibbs step: it drifts to the lowest level
    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM(0.002, 80.0))
    levels = level_grid(0.02, 2.0, 20)
    res = dmcmc_sample(model, (200, 2), level_log_density=_lld(gmm), solver="euler",
                       denoise_nfe=4, n_skip=4, rounds=1, sigma_levels=levels, burn_in=8)
    assert float((res.start_sigmas == levels[0]).double().mean()) > 0.6


def test_dmcmc_is_batch_split_invariant():
    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM(0.002, 80.0))
    kw = dict(level_log_density=_lld(gmm), solver="dpmpp_2m_sde", denoise_nfe=6, n_skip=2,
              rounds=1, level_update="gibbs", select="last", burn_in=2, init_nfe=8, seed=9)
    full = dmcmc_sample(model, (6, 2), **kw).x
    halves = torch.cat([dmcmc_sample(model, (3, 2), offset=o, **kw).x for o in (0, 3)])
    torch.testing.assert_close(full, halves, rtol=1e-10, atol=1e-10)


def test_correctors_doc_example_runs(capsys):
    text = (DOCS / "correctors.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS / "correctors.md"), "exec"), {})
    assert "nfe" in capsys.readouterr().out


def test_lml_preconditioner_is_the_damped_sherman_morrison_inverse():
    corr = LMLCorrector(damping=0.1)
    gen = torch.Generator().manual_seed(4)
    g, z, dx = (torch.randn(1, 5, dtype=torch.float64, generator=gen) for _ in range(3))
    u = torch.randn(5, dtype=torch.float64, generator=gen)
    u = u / u.norm()
    dd = 0.5 * float(dx[0] @ u) * u[None]  # J = 0.5 u u^T: the secant gives mu = 0.5
    mu = float(dd[0] @ dd[0]) / float(dd[0] @ dx[0])
    assert abs(mu - 0.5) < 1e-12
    h = (1.1 * torch.eye(5, dtype=torch.float64) - mu * torch.outer(u, u)) / 1.1  # H_lambda
    p = torch.linalg.inv(h)
    pg, pg_half, pz = corr._preconditioned(g, z, dx, dd)
    torch.testing.assert_close(pg[0], p @ g[0])
    half = torch.linalg.cholesky(p)  # any square root has the same P^{1/2} g norm
    assert abs(float(pg_half.norm()) - float((half.T @ g[0]).norm())) < 1e-10
    torch.testing.assert_close(float(pz[0] @ torch.linalg.solve(p, pz[0])),
                               float(z[0] @ z[0]))  # P^{1/2} z has covariance P


def test_lml_falls_back_to_first_order_where_log_density_is_not_concave():
    # between modes Cov[x0|x] > sigma^2: the secant gives mu >= 1 and the step is (L)
    corr = LMLCorrector(damping=0.01)
    g, z, dx = torch.ones(1, 2), torch.ones(1, 2), torch.tensor([[0.1, 0.0]])
    pg, pg_half, pz = corr._preconditioned(g, z, dx, 3.0 * dx)  # mu = 3
    assert torch.equal(pg, g) and torch.equal(pg_half, g) and torch.equal(pz, z)


def test_predictor_plus_lml_stays_stable_on_the_mixture():
    # before the mu >= 1 fallback, euler + LML reached var_ratio ~ 100 here
    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM(0.002, 80.0))
    res = corrected_sample(model, (1000, 2), solver="euler", corrector="lml",
                           corrector_options={"step_size": 0.5, "damping": 0.01}, nfe=40,
                           dtype=torch.float64)
    from diffsolve.bench.density_metrics import mode_resolved

    mr = mode_resolved(res.x, gmm)
    assert mr["var_ratio"] < 1.8 and mr["weight_tv"] < 0.1  # measured 1.28 / 0.03


"""Agreement with independent formulas written out from the papers, in float64."""

from __future__ import annotations

import math

import torch

from diffsolve import kdiffusion
from diffsolve.zoo import GaussianMixture


def _karras(n: int, smin: float = 0.02, smax: float = 40.0, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


def _dpmpp_2m_algorithm_2(model, x, sigmas):
    """DPM-Solver++(2M), Lu et al. 2022b Algorithm 2, written out for alpha = 1 (VE/EDM).

    lambda_i = -log sigma_i; h_i = lambda_i - lambda_{i-1}; r_i = h_{i-1}/h_i;
    D_i = (1 + 1/(2 r_i)) M_i - 1/(2 r_i) M_{i-1};
    x_i = (sigma_i/sigma_{i-1}) x_{i-1} - (e^{-h_i} - 1) D_i; the first step uses M_0 alone;
    the step into sigma = 0 is x <- M (the h -> inf limit).
    """
    old = None
    h_old = None
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        m = model(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        if s_next == 0:
            return m
        h = math.log(s) - math.log(s_next)
        if old is None:
            d = m
        else:
            r = h_old / h
            d = (1 + 1 / (2 * r)) * m - 1 / (2 * r) * old
        x = (s_next / s) * x - math.expm1(-h) * d
        old, h_old = m, h
    return x


def test_dpmpp_2m_matches_algorithm_2():
    gmm = GaussianMixture.random(d=3, k=3, seed=7)
    model = gmm.kdiffusion_denoiser()
    sigmas = _karras(12)
    x = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = x * sigmas[0]
    ours = kdiffusion.sample_dpmpp_2m(model, x, sigmas, disable=True)
    ref = _dpmpp_2m_algorithm_2(model, x, sigmas)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def _dpm_solver_2_algorithm_1(model, x, sigmas, r1=0.5):
    """DPM-Solver-2, Lu et al. 2022 Algorithm 1, noise prediction, alpha = 1 (VE):
    s = t_{i-1} + r1 h: u = x - sigma_s (e^{r1 h} - 1) eps(x);
    x_i = x - sigma_i (e^h - 1) eps(x) - sigma_i/(2 r1) (e^h - 1)(eps(u) - eps(x))."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = model(x, torch.full((x.shape[0],), s, dtype=x.dtype))
        if s_next == 0:
            return d
        eps = (x - d) / s
        h = math.log(s) - math.log(s_next)
        s_mid = math.exp(-(-math.log(s) + r1 * h))
        u = x - s_mid * math.expm1(r1 * h) * eps
        eps_u = (u - model(u, torch.full((x.shape[0],), s_mid, dtype=x.dtype))) / s_mid
        x = x - s_next * math.expm1(h) * eps - s_next / (2 * r1) * math.expm1(h) * (eps_u - eps)
    return x


def test_dpm_solver_2_matches_algorithm_1():
    gmm = GaussianMixture.random(d=2, k=3, seed=8)
    model = gmm.kdiffusion_denoiser()
    sigmas = _karras(8)
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x = x * sigmas[0]
    ours = kdiffusion.sample_dpm_solver_2(model, x, sigmas, disable=True)
    ref = _dpm_solver_2_algorithm_1(model, x, sigmas)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def _heun_edm_algorithm_1(model, x, sigmas):
    """EDM Algorithm 1 (Karras et al. 2022), deterministic."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - model(x, torch.full((x.shape[0],), s, dtype=x.dtype))) / s
        x_next = x + (s_next - s) * d
        if s_next != 0:
            d2 = (x_next - model(x_next, torch.full((x.shape[0],), s_next, dtype=x.dtype))) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x


def test_heun_matches_edm_algorithm_1():
    gmm = GaussianMixture.random(d=2, k=2, seed=9)
    model = gmm.kdiffusion_denoiser()
    sigmas = _karras(10)
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x = x * sigmas[0]
    ours = kdiffusion.sample_heun(model, x, sigmas, disable=True)
    ref = _heun_edm_algorithm_1(model, x, sigmas)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)

"""Momentum samplers (Wizadwongsa et al. 2023): HB on DPM-Solver++(2M) / PLMS, and GHVB."""

from __future__ import annotations

import math

import pytest
import torch

from analytic import fitted_slope
from diffsolve import Grid, solve
from diffsolve.errors import SolverOptionError
from diffsolve.schedules import EDM, VPLinear
from diffsolve.solvers import get_solver
from diffsolve.solvers.momentum import (
    exp_adams_backward_weights,
    ghvb_weights,
    smooth_start_weights,
)
from diffsolve.zoo import GaussianMixture


def _uniform(n, schedule, smax=10.0, smin=0.1):
    lams = torch.linspace(-math.log(smax), -math.log(smin), n + 1, dtype=torch.float64)
    return Grid.from_lambdas(lams, schedule)


def test_backward_weights_match_adams_series():
    """p_j(0) are the Adams-Bashforth backward-difference coefficients (paper eq. 15)."""
    got = exp_adams_backward_weights(4, 0.0)
    assert got == pytest.approx([1.0, 0.5, 5.0 / 12.0, 3.0 / 8.0], abs=1e-14)
    # p_0(h) = phi_1(-h) = (1 - e^{-h})/h, p_1(h) = phi_2(-h)
    h = 0.7
    p = exp_adams_backward_weights(2, h)
    assert p[0] == pytest.approx(-math.expm1(-h) / h, rel=1e-14)
    assert p[1] == pytest.approx((h - 1 + math.exp(-h)) / h**2, rel=1e-12)


@pytest.mark.parametrize("beta", [0.3, 0.8, 1.0])
def test_ghvb_weights_match_algorithm_2(beta):
    """At h -> 0 the weights are Alg. 2's (orders 2-4), written out from the paper."""
    b = beta
    alg2 = {
        1: [1.0],
        2: [(2 + b) / (2 * b), -(2 - b) / (2 * b)],
        3: [(18 + 5 * b) / (12 * b), -(24 - 8 * b) / (12 * b), (6 - b) / (12 * b)],
        4: [(46 + 9 * b) / (24 * b), -(78 - 19 * b) / (24 * b), (42 - 5 * b) / (24 * b),
            -(10 - b) / (24 * b)],
    }
    for k, ref in alg2.items():
        assert ghvb_weights(k, beta, 0.0) == pytest.approx(ref, abs=1e-13), k
        assert sum(ghvb_weights(k, beta, 0.0)) == pytest.approx(1.0, abs=1e-13)


def test_ghvb_beta_one_is_exponential_adams_2(gaussian_data):
    """GHVB order 2 with beta = 1 is DPM-Solver++(2M) with the phi_2 ("heun") weight on a
    uniform-lambda grid."""
    sch = EDM(0.01, 100.0)
    model = gaussian_data.denoiser(sch)
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    grid = _uniform(12, sch)
    a = solve(model, x, grid, "ghvb", beta=1.0, progress=False).x
    b = solve(model, x, grid, "dpmpp_2m", solver_type="heun", progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    c = solve(model, x, grid, "ghvb", beta=0.8, progress=False).x
    assert float((c - a).abs().max()) > 1e-4  # beta matters


def test_hb_beta_one_recovers_base_methods(gaussian_data):
    sch = VPLinear()
    model = gaussian_data.denoiser(sch)
    x = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grid = _uniform(9, sch)
    a = solve(model, x, grid, "dpmpp_2m_hb", beta=1.0, progress=False).x
    b = solve(model, x, grid, "dpmpp_2m", lower_order_final=False, progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    c = solve(model, x, grid, "plms_hb", beta=1.0, plms_order=1, progress=False).x
    d = solve(model, x, grid, "ddim", progress=False).x
    torch.testing.assert_close(c, d, rtol=1e-12, atol=1e-12)


def test_plms_hb_is_polyak_heavy_ball_eq_12(gaussian_data):
    """With equal steps delta in sigma~ and PLMS order 1, the method is eq. 12:
    xbar_{n+1} = xbar_n + (1 - beta)(xbar_n - xbar_{n-1}) + delta beta eps(xbar_n)."""
    sch = VPLinear()
    model = gaussian_data.denoiser(sch)
    sig = torch.linspace(8.0, 0.5, 11, dtype=torch.float64)  # uniform in sigma~
    grid = Grid.from_sigmas(sig, sch)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    beta = 0.6
    got = solve(model, x, grid, "plms_hb", beta=beta, plms_order=1, progress=False).x
    pts = [sch.point(-math.log(float(s))) for s in sig]
    xb, xb_prev = x / pts[0].alpha, None
    for i in range(len(pts) - 1):
        p = pts[i]
        xs = xb * p.alpha
        eps = (xs - p.alpha * model.data(xs, p)) / p.sigma
        delta = float(sig[i + 1] - sig[i])
        new = xb + delta * eps if xb_prev is None else (
            xb + (1 - beta) * (xb - xb_prev) + delta * beta * eps)
        xb_prev, xb = xb, new
    torch.testing.assert_close(got, xb * pts[-1].alpha, rtol=1e-11, atol=1e-11)


def test_ghvb_higher_orders_are_more_accurate():
    """GHVB 2.8 and 3.8 beat GHVB 1.8 on the GMM; with the lower-order warm-up the order-3/4
    variants are globally ~O(h^2)-O(h^2.6) here (first-order start, as for DPM-Solver++(3M))."""
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    sch = EDM(0.01, 100.0)
    model = gmm.denoiser(sch)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10
    ref = gmm.ode_reference(x, 10.0, 0.1)
    steps = [64, 128, 256]
    err = {}
    for k in (2, 3):
        err[k] = [float((solve(model, x, _uniform(n, sch), "ghvb", ghvb_order=k,
                               progress=False).x - ref).abs().max()) for n in steps]
    assert all(e3 < 0.5 * e2 for e2, e3 in zip(err[2], err[3], strict=True))
    slope3 = fitted_slope([1.0 / n for n in steps], err[3])
    assert 2.0 < slope3 < 3.3, err[3]


def test_hb_is_first_order_and_beta_interpolates():
    """HB 0.8 on DPM-Solver++(2M) is first order (Theorem 1) and lies between DDIM and 2M."""
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    sch = EDM(0.01, 100.0)
    model = gmm.denoiser(sch)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10
    ref = gmm.ode_reference(x, 10.0, 0.1)

    def err(name, n, **o):
        return float((solve(model, x, _uniform(n, sch), name, progress=False, **o).x - ref)
                     .abs().max())

    hb = [err("dpmpp_2m_hb", n) for n in (64, 128, 256)]
    assert abs(fitted_slope([1 / 64, 1 / 128, 1 / 256], hb) - 1.0) < 0.15
    assert err("dpmpp_2m", 64, lower_order_final=False) < hb[0] < err("ddim", 64)


def test_smooth_start_weights():
    """Rows sum to 1 (constants are fixed points); beta = 1 gives V_{n+1} = D_n; and the rows
    reproduce the moving average of a quadratic D sequence started in the far past."""
    for k in (2, 3):
        for row in smooth_start_weights(k, 0.7):
            assert sum(row) == pytest.approx(1.0, abs=1e-12)
        eye = smooth_start_weights(k, 1.0)
        for r, row in enumerate(eye):
            assert row == pytest.approx([1.0 if c == r else 0.0 for c in range(k)], abs=1e-12)
    beta = 0.6
    seq = {n: 0.3 * n * n - 2.0 * n + 1.0 for n in range(-400, 3)}  # D_n, quadratic
    v = seq[-400]
    ema = {}
    for n in range(-400, 3):  # v_{n+1} = (1 - beta) v_n + beta D_n
        v = (1 - beta) * v + beta * seq[n]
        ema[n + 1] = v
    rows = smooth_start_weights(3, beta)
    d_newest_first = [seq[2], seq[1], seq[0]]
    for r, row in enumerate(rows):
        got = sum(w * d for w, d in zip(row, d_newest_first, strict=True))
        assert got == pytest.approx(ema[3 - r], rel=1e-10)


def test_ghvb_singlestep_warmup_restores_order_3():
    """With the single-step start and the smooth moving-average start, GHVB 2.8 is globally
    third order (measured 3.05); beta = 1 is DPM-Solver++(3M) with the same warm-up."""
    gmm = GaussianMixture.random(d=3, k=4, seed=3)
    sch = EDM(0.01, 100.0)
    model = gmm.denoiser(sch)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10
    ref = gmm.ode_reference(x, 10.0, 0.1)
    steps = [64, 128, 256]
    errs = []
    for n in steps:
        out = solve(model, x, _uniform(n, sch), "ghvb", ghvb_order=3, warmup="singlestep",
                    progress=False)
        solver = get_solver("ghvb", ghvb_order=3, warmup="singlestep")
        assert out.nfe == n + 4 and solver.nfe(n, denoise_final=False) == n + 4
        errs.append(float((out.x - ref).abs().max()))
    assert fitted_slope([1.0 / n for n in steps], errs) > 2.85, errs
    a = solve(model, x, _uniform(20, sch), "ghvb", ghvb_order=3, warmup="singlestep", beta=1.0,
              progress=False).x
    b = solve(model, x, _uniform(20, sch), "dpmpp_3m", warmup="singlestep", progress=False).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bad_options_raise():
    with pytest.raises(SolverOptionError):
        get_solver("ghvb", beta=0.0)
    with pytest.raises(SolverOptionError):
        get_solver("ghvb", ghvb_order=5)
    with pytest.raises(SolverOptionError):
        get_solver("dpmpp_2m_hb", beta=1.5)
    with pytest.raises(SolverOptionError):
        get_solver("plms_hb", plms_order=0)
    with pytest.raises(SolverOptionError, match="ghvb"):
        get_solver("ghvb", ghvb_order=4, warmup="singlestep")


def test_momentum_enlarges_stability_region():
    """The paper's point (Sec. 3.2-4, Fig. 4/6): on the stiff test equation dx/dsigma = c x
    (an eps-model with constant Jacobian; exact |x(0.1)| ~ 1e-21) with delta c = -1.2 per step,
    AB2-type methods blow up while their momentum versions decay (measured: PLMS2 5.8e3 vs
    HB 0.8 4e-8; DPM-Solver++(2M) 2.6e4 vs HB 0.8 1e-6; GHVB 2.0 3.5e3 vs GHVB 1.8 0.21)."""
    from diffsolve.models import Denoiser

    sch = EDM(0.01, 100.0)
    sig = torch.linspace(10.0, 0.1, 41, dtype=torch.float64)
    c = 1.2 / float(sig[0] - sig[1])
    model = Denoiser(lambda x, s: c * x, sch, prediction="eps", time_input="sigma")
    x = torch.ones(1, 1, dtype=torch.float64)
    grid = Grid.from_sigmas(sig, sch)

    def final(name, **o):
        return float(solve(model, x, grid, name, progress=False, check_finite="off", **o).x
                     .abs())

    assert final("plms_hb", beta=1.0, plms_order=2) > 1.0
    assert final("plms_hb", beta=0.8, plms_order=2) < 1e-4
    assert final("dpmpp_2m_hb", beta=1.0) > 1.0
    assert final("dpmpp_2m_hb", beta=0.8) < 1e-3
    assert final("ghvb", beta=1.0) > 1.0
    assert final("ghvb", beta=0.8) < 1.0

"""Tests of diffsolve.schedules against closed forms written independently here."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from diffsolve.errors import DiffsolveError, ScheduleError
from diffsolve.schedules import (
    EDM,
    VE,
    DiscreteVP,
    EvalPoint,
    NoiseSchedule,
    RectifiedFlow,
    VPCosine,
    VPLinear,
)

mp.mp.dps = 40
HYP = settings(derandomize=True, max_examples=60, deadline=None)

# custom DDPM-like table: cosine-ish betas, not any of the built-in constructors
_CUSTOM_BETAS = np.clip(np.linspace(0.0005, 0.05, 50) ** 1.3, 1e-5, 0.5)


def _schedules() -> dict[str, NoiseSchedule]:
    return {
        "vp_linear": VPLinear(),
        "vp_linear_custom": VPLinear(beta_min=0.0, beta_max=12.0, t_min=1e-5, t_max=0.9),
        "vp_cosine": VPCosine(),
        "vp_cosine_small_tmin": VPCosine(s=0.02, t_min=1e-6, t_max=0.99),
        "discrete_linear": DiscreteVP.linear(),
        "discrete_scaled_linear": DiscreteVP.scaled_linear(),
        "discrete_from_betas": DiscreteVP.from_betas(_CUSTOM_BETAS.tolist()),
        "ve": VE(),
        "edm": EDM(),
        "rectified_flow": RectifiedFlow(),
    }


SCHEDULES = _schedules()
VP_NAMES = [k for k, v in SCHEDULES.items() if v.variance_preserving]
ALL = list(SCHEDULES)


def _t_grid(s: NoiseSchedule, n: int = 4001) -> torch.Tensor:
    lin = torch.linspace(s.t_min, s.t_max, n, dtype=torch.float64)
    if s.t_min > 0:  # dense near t_min too, where relative accuracy is hardest
        log = torch.logspace(math.log10(s.t_min), math.log10(s.t_max), n, dtype=torch.float64)
        lin = torch.cat([lin, log])
    return torch.cat([lin, torch.tensor([s.t_min, s.t_max], dtype=torch.float64)])


# ---------------------------------------------------------------- independent closed forms
def _ref_log_alpha_sigma(name: str, s: NoiseSchedule, t: float) -> tuple[mp.mpf, mp.mpf]:
    """(alpha, sigma) at t from formulas written independently of the library, in mpmath."""
    tt = mp.mpf(t)
    if name.startswith("vp_linear"):
        bmin, bmax = s.beta_min, s.beta_max
        integral, _ = quad(lambda u: bmin + u * (bmax - bmin), 0.0, t, epsabs=1e-16, epsrel=1e-13)
        # quad is exact for a linear integrand up to rounding; use mp for the rest
        alpha = mp.e ** (-mp.mpf(integral) / 2)
    elif name.startswith("vp_cosine"):
        ss = mp.mpf(s.s)

        def f(u):
            return mp.cos((u + ss) / (1 + ss) * mp.pi / 2) ** 2

        alpha = mp.sqrt(f(tt) / f(0))  # Nichol & Dhariwal eq. 17: abar(t) = f(t)/f(0)
    elif name == "ve":
        return mp.mpf(1), mp.mpf(s.sigma_min) * (mp.mpf(s.sigma_max) / s.sigma_min) ** tt
    elif name == "edm":
        return mp.mpf(1), tt
    elif name == "rectified_flow":
        return 1 - tt, tt
    else:
        raise AssertionError(name)
    return alpha, mp.sqrt(1 - alpha**2)


CLOSED_FORM = [n for n in ALL if not n.startswith("discrete")]


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_alpha_sigma_lambda_match_closed_forms(name: str) -> None:
    s = SCHEDULES[name]
    ts = np.unique(np.concatenate([np.linspace(s.t_min, s.t_max, 13),
                                   np.geomspace(s.t_min, s.t_max, 13)]))
    for t in ts:
        a_ref, s_ref = _ref_log_alpha_sigma(name, s, float(t))
        assert float(s.alpha(float(t))) == pytest.approx(float(a_ref), rel=1e-13, abs=0)
        assert float(s.sigma(float(t))) == pytest.approx(float(s_ref), rel=1e-12, abs=0)
        lam_ref = float(mp.log(a_ref / s_ref))
        assert float(s.lam(float(t))) == pytest.approx(lam_ref, rel=1e-12, abs=1e-12)
        assert float(s.log_alpha(float(t))) == pytest.approx(float(mp.log(a_ref)), rel=1e-12,
                                                              abs=1e-300)
        assert float(s.log_sigma(float(t))) == pytest.approx(float(mp.log(s_ref)), rel=1e-12,
                                                              abs=1e-14)


def test_vp_linear_alpha_is_exp_of_half_integral_of_beta() -> None:
    s = VPLinear(beta_min=0.3, beta_max=15.0)
    for t in (0.001, 0.1, 0.5, 1.0):
        integral, _ = quad(lambda u: 0.3 + u * (15.0 - 0.3), 0.0, t)
        assert s.alpha(t) == pytest.approx(math.exp(-0.5 * integral), rel=1e-13)


def _np_alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return np.array(out)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "from_betas"])
def test_discrete_vp_integer_t_equals_sqrt_alphas_cumprod(kind: str) -> None:
    if kind == "linear":
        betas = np.linspace(1e-4, 0.02, 1000)  # Ho et al. 2020
        s = DiscreteVP.linear()
    elif kind == "scaled_linear":
        betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # Stable Diffusion
        s = DiscreteVP.scaled_linear()
    else:
        betas = _CUSTOM_BETAS
        s = DiscreteVP.from_betas(betas.tolist())
    ac = _np_alphas_cumprod(betas)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), ac, rtol=1e-13, atol=0)
    assert s.t_min == 0.0 and s.t_max == len(betas) - 1
    n = torch.arange(len(betas), dtype=torch.float64)
    np.testing.assert_allclose(s.alpha(n).numpy(), np.sqrt(ac), rtol=1e-15, atol=0)  # within ~2 ulp
    np.testing.assert_allclose(s.sigma(n).numpy(), np.sqrt(1 - ac), rtol=1e-13, atol=0)
    # between integers log alpha is linear: alpha(n + 1/2) = (abar_n abar_{n+1})^(1/4)
    half = n[:-1] + 0.5
    np.testing.assert_allclose(s.alpha(half).numpy(), (ac[:-1] * ac[1:]) ** 0.25, rtol=1e-14)
    w = 0.3
    np.testing.assert_allclose(s.log_alpha(n[:-1] + w).numpy(),
                               0.5 * ((1 - w) * np.log(ac[:-1]) + w * np.log(ac[1:])),
                               rtol=1e-13)


def test_discrete_vp_inverse_exact_at_table_entries() -> None:
    s = DiscreteVP.linear(n=100)
    n = torch.arange(100, dtype=torch.float64)
    np.testing.assert_allclose(s.t_of_lam(s.lam(n)).numpy(), n.numpy(), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- round trips and monotonicity
@pytest.mark.parametrize("name", ALL)
def test_round_trip_t_lambda_t(name: str) -> None:
    s = SCHEDULES[name]
    t = _t_grid(s)
    t2 = s.t_of_lam(s.lam(t))
    if isinstance(s, DiscreteVP):  # t is a training index: absolute accuracy in index units
        err = (t2 - t).abs() / t.abs().clamp(min=1.0)
    else:  # t_min > 0: relative accuracy down to t_min
        err = (t2 - t).abs() / t.abs()
    assert float(err.max()) < 1e-10, float(err.max())


@pytest.mark.parametrize("name", ALL)
def test_round_trip_lambda_t_lambda_including_extremes(name: str) -> None:
    s = SCHEDULES[name]
    lam = torch.linspace(s.lam_min, s.lam_max, 4001, dtype=torch.float64)
    lam = torch.cat([lam, torch.tensor([s.lam_min, s.lam_max], dtype=torch.float64)])
    back = s.lam(s.t_of_lam(lam))
    err = (back - lam).abs() / lam.abs().clamp(min=1.0)
    assert float(err.max()) < 1e-10
    # the extremes map back to the endpoints of the time range
    assert s.t_of_lam(s.lam_min) == pytest.approx(s.t_max, rel=1e-10, abs=1e-12)
    assert s.t_of_lam(s.lam_max) == pytest.approx(s.t_min, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "ve", "edm", "rectified_flow"])
def test_round_trip_far_outside_the_range(name: str) -> None:
    """The inverse stays exact well beyond [lam_min, lam_max] on the clean side."""
    s = SCHEDULES[name]
    lam = torch.linspace(s.lam_min, 30.0, 2001, dtype=torch.float64)
    back = s.lam(s.t_of_lam(lam))
    assert float(((back - lam).abs() / lam.abs().clamp(min=1.0)).max()) < 1e-10


@pytest.mark.parametrize("name", ALL)
@HYP
@given(u=st.floats(0.0, 1.0))
def test_round_trip_random_lambda(name: str, u: float) -> None:
    s = SCHEDULES[name]
    lam = s.lam_min + u * (s.lam_max - s.lam_min)
    assert s.lam(s.t_of_lam(lam)) == pytest.approx(lam, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_lambda_strictly_decreasing_in_t(name: str) -> None:
    s = SCHEDULES[name]
    t = torch.linspace(s.t_min, s.t_max, 20001, dtype=torch.float64)
    lam = s.lam(t)
    assert torch.isfinite(lam).all()
    assert bool((lam[1:] < lam[:-1]).all())
    assert s.lam_min == pytest.approx(float(lam[-1]), rel=1e-15)
    assert s.lam_max == pytest.approx(float(lam[0]), rel=1e-15)
    assert s.lam_min < s.lam_max
    assert s.sigma_edm_min == pytest.approx(math.exp(-s.lam_max), rel=1e-15)
    assert s.sigma_edm_max == pytest.approx(math.exp(-s.lam_min), rel=1e-15)
    # the inverse is monotone too
    ls = torch.linspace(s.lam_min, s.lam_max, 5001, dtype=torch.float64)
    ts = s.t_of_lam(ls)
    assert bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("name", VP_NAMES)
def test_variance_preserving(name: str) -> None:
    s = SCHEDULES[name]
    t = _t_grid(s, 2001)
    a, sg = s.alpha(t), s.sigma(t)
    np.testing.assert_allclose((a * a + sg * sg).numpy(), 1.0, rtol=0, atol=4e-16)
    lam = torch.linspace(s.lam_min, s.lam_max, 501, dtype=torch.float64)
    a, sg = s.alpha_at_lam(lam), s.sigma_at_lam(lam)
    np.testing.assert_allclose((a * a + sg * sg).numpy(), 1.0, rtol=0, atol=4e-16)


@pytest.mark.parametrize("name", [n for n in ALL if n not in VP_NAMES])
def test_non_vp_flags(name: str) -> None:
    s = SCHEDULES[name]
    assert not s.variance_preserving
    t = _t_grid(s, 51)
    assert not np.allclose((s.alpha(t) ** 2 + s.sigma(t) ** 2).numpy(), 1.0)


def test_specific_closed_forms_for_simple_schedules() -> None:
    ve = VE(sigma_min=0.02, sigma_max=100.0)
    assert ve.sigma(1.0) == pytest.approx(100.0, rel=1e-14)
    assert ve.sigma(0.0) == pytest.approx(0.02, rel=1e-14)
    assert ve.t_of_lam(-math.log(1.0)) == pytest.approx(math.log(50) / math.log(5000), rel=1e-14)
    edm = EDM()
    assert edm.t_of_lam(-math.log(3.5)) == pytest.approx(3.5, rel=1e-15)
    assert (edm.t_min, edm.t_max) == (0.002, 80.0)
    rf = RectifiedFlow()
    for lam in (-6.0, -0.3, 0.0, 2.0, 9.0):
        assert rf.t_of_lam(lam) == pytest.approx(1.0 / (1.0 + math.exp(lam)), rel=1e-15)
    assert rf.lam(0.25) == pytest.approx(math.log(3.0), rel=1e-15)


# ---------------------------------------------------------------- point / *_at_lam / API
@pytest.mark.parametrize("name", ALL)
def test_point_consistency(name: str) -> None:
    s = SCHEDULES[name]
    for u in np.linspace(0.0, 1.0, 17):
        lam = float(s.lam_min + u * (s.lam_max - s.lam_min))
        p = s.point(lam)
        assert isinstance(p, EvalPoint)
        assert all(isinstance(v, float) for v in (p.lam, p.t, p.alpha, p.sigma))
        assert p.lam == lam
        assert p.t == pytest.approx(s.t_of_lam(lam), rel=1e-15, abs=1e-300)
        assert p.alpha == pytest.approx(s.alpha(p.t), rel=1e-15)
        assert p.sigma == pytest.approx(s.sigma(p.t), rel=1e-15)
        assert math.log(p.alpha / p.sigma) == pytest.approx(lam, rel=1e-10, abs=1e-10)
        assert p.sigma_edm == pytest.approx(math.exp(-lam), rel=1e-10)
        assert s.sigma_at_lam(lam) == pytest.approx(s.sigma(s.t_of_lam(lam)), rel=1e-14)
        assert s.alpha_at_lam(lam) == pytest.approx(s.alpha(s.t_of_lam(lam)), rel=1e-14)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", ["vp_linear", "discrete_linear", "edm"])
def test_point_rejects_non_finite_lambda(name: str, bad: float) -> None:
    with pytest.raises(ScheduleError, match="finite"):
        SCHEDULES[name].point(bad)


@pytest.mark.parametrize("name", ALL)
def test_float_in_float_out_tensor_in_tensor_out(name: str) -> None:
    s = SCHEDULES[name]
    t_mid = 0.5 * (s.t_min + s.t_max)
    for fn in (s.alpha, s.sigma, s.lam, s.log_alpha, s.log_sigma):
        assert type(fn(t_mid)) is float
        out = fn(torch.tensor([t_mid, s.t_max], dtype=torch.float32))
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
        assert out.shape == (2,)
    lam_mid = 0.5 * (s.lam_min + s.lam_max)
    assert type(s.t_of_lam(lam_mid)) is float
    out = s.t_of_lam(torch.full((3, 2), lam_mid))
    assert out.shape == (3, 2) and out.dtype == torch.float64
    assert float(out[1, 1]) == pytest.approx(s.t_of_lam(float(torch.tensor(lam_mid,
                                                                           dtype=torch.float32))))
    assert type(s.sigma_at_lam(lam_mid)) is float
    assert isinstance(s.sigma_at_lam(torch.tensor([lam_mid])), torch.Tensor)


# ---------------------------------------------------------------- derivatives
def _mp_alpha_sigma_fns(name: str, s: NoiseSchedule):
    if name.startswith("vp_linear"):
        def alpha(t):
            return mp.e ** (-(s.beta_max - s.beta_min) * t**2 / 4 - s.beta_min * t / 2)
    elif name.startswith("vp_cosine"):
        ss = mp.mpf(s.s)

        def alpha(t):
            return mp.cos((t + ss) / (1 + ss) * mp.pi / 2) / mp.cos(ss / (1 + ss) * mp.pi / 2)
    elif name == "ve":
        ratio = mp.mpf(s.sigma_max) / s.sigma_min
        return (lambda t: mp.mpf(1)), (lambda t: s.sigma_min * ratio**t)
    elif name == "edm":
        return (lambda t: mp.mpf(1)), (lambda t: t)
    elif name == "rectified_flow":
        return (lambda t: 1 - t), (lambda t: t)
    else:
        raise AssertionError(name)
    return alpha, (lambda t: mp.sqrt(1 - alpha(t) ** 2))


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_time_derivatives_match_high_precision_differences(name: str) -> None:
    s = SCHEDULES[name]
    alpha, sigma = _mp_alpha_sigma_fns(name, s)
    for t in np.unique(np.concatenate([np.linspace(s.t_min, s.t_max, 7), [s.t_min * 1.5]])):
        da = mp.diff(alpha, mp.mpf(t))
        ds = mp.diff(sigma, mp.mpf(t))
        got_a, got_s = s.d_alpha_dt(float(t)), s.d_sigma_dt(float(t))
        assert got_a == pytest.approx(float(da), rel=1e-8, abs=1e-300)
        assert got_s == pytest.approx(float(ds), rel=1e-8, abs=1e-300)


def test_vp_sigma_derivative_near_t_zero() -> None:
    """sigma ~ sqrt(beta_min t) near 0: the derivative must stay finite and accurate even for
    t below the central-difference step."""
    s = VPLinear(t_min=1e-8)
    def sigma(u):
        alpha = mp.e ** (-(s.beta_max - s.beta_min) * u**2 / 4 - s.beta_min * u / 2)
        return mp.sqrt(1 - alpha**2)

    for t in (1e-8, 3e-7, 2e-6):
        ref = mp.diff(sigma, mp.mpf(t))
        assert s.d_sigma_dt(t) == pytest.approx(float(ref), rel=1e-9)


def test_discrete_vp_derivatives_are_the_interval_slopes() -> None:
    s = DiscreteVP.linear(n=50)
    la = 0.5 * np.log(s.alphas_cumprod.numpy())
    for t in (0.0, 0.25, 7.5, 48.9, 49.0):
        i0 = min(math.floor(t), 48)
        slope = la[i0 + 1] - la[i0]
        a = math.exp(la[i0] + (t - i0) * slope)
        assert s.d_alpha_dt(t) == pytest.approx(a * slope, rel=1e-12)
        sig = math.sqrt(1 - a * a)
        assert s.d_sigma_dt(t) == pytest.approx(-a * a * slope / sig, rel=1e-10)
    # inside an interval it agrees with a finite difference of alpha itself
    h = 1e-6
    fd = (s.alpha(10.4 + h) - s.alpha(10.4 - h)) / (2 * h)
    assert s.d_alpha_dt(10.4) == pytest.approx(fd, rel=1e-7)


# ---------------------------------------------------------------- constructor validation
@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: VPLinear(beta_min=-0.1), "beta_min"),
        (lambda: VPLinear(beta_min=20.0, beta_max=0.1), "beta_min < beta_max"),
        (lambda: VPLinear(beta_min=1.0, beta_max=1.0), "beta_min < beta_max"),
        (lambda: VPLinear(t_min=0.0), "t_min"),
        (lambda: VPLinear(t_max=1.5), "t_max <= 1"),
        (lambda: VPLinear(t_min=0.5, t_max=0.4), "t_min < t_max"),
        (lambda: VPCosine(t_max=1.0), "t_max < 1"),
        (lambda: VPCosine(t_min=0.0), "0 < t_min"),
        (lambda: DiscreteVP([0.5]), "at least 2"),
        (lambda: DiscreteVP([]), "at least 2"),
        (lambda: DiscreteVP([1.0, 0.5]), r"strictly in \(0, 1\)"),
        (lambda: DiscreteVP([0.9, 0.0]), r"strictly in \(0, 1\)"),
        (lambda: DiscreteVP([0.9, math.nan]), r"strictly in \(0, 1\)"),
        (lambda: DiscreteVP([0.5, 0.6]), "strictly decreasing"),
        (lambda: DiscreteVP([0.5, 0.5]), "strictly decreasing"),
        (lambda: DiscreteVP.from_betas([0.1, 1.0]), r"strictly in \(0, 1\)"),
        (lambda: DiscreteVP.from_betas([0.1, 0.0]), "strictly decreasing"),
        (lambda: VE(sigma_min=0.0), "sigma_min"),
        (lambda: VE(sigma_min=10.0, sigma_max=1.0), "sigma_min < sigma_max"),
        (lambda: VE(t_min=1.0), "t_min"),
        (lambda: VE(t_min=-0.1), "t_min"),
        (lambda: EDM(sigma_min=0.0), "sigma_min"),
        (lambda: EDM(sigma_min=80.0, sigma_max=1.0), "sigma_min < sigma_max"),
        (lambda: EDM(sigma_max=math.inf), "finite"),
        (lambda: RectifiedFlow(t_max=1.0), "lambda = -inf"),
        (lambda: RectifiedFlow(t_min=0.0), "0 < t_min"),
    ],
)
def test_invalid_constructor_arguments(factory, match: str) -> None:
    with pytest.raises(ScheduleError, match=match) as info:
        factory()
    assert isinstance(info.value, DiffsolveError) and isinstance(info.value, ValueError)


def test_repr_names_parameters() -> None:
    r = repr(VPLinear(beta_min=0.2))
    assert r.startswith("VPLinear(") and "beta_min=0.2" in r and "_log" not in r

"""Tests of diffsolve.grids: named grids against their published formulas, and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffsolve.errors import GridError
from diffsolve.grids import (
    GRID_NAMES,
    Grid,
    karras,
    make_grid,
    polyexponential,
    quadratic_t,
    uniform_lambda,
    uniform_t,
)
from diffsolve.schedules import EDM, VE, DiscreteVP, RectifiedFlow, VPCosine, VPLinear

HYP = settings(derandomize=True, max_examples=40, deadline=None)

SCHEDULES = {
    "vp_linear": VPLinear(),
    "vp_cosine": VPCosine(),
    "discrete": DiscreteVP.linear(),
    "scaled_linear": DiscreteVP.scaled_linear(),
    "ve": VE(),
    "edm": EDM(),
    "rf": RectifiedFlow(),
}


def _karras_ref(n: int, smin: float, smax: float, rho: float) -> np.ndarray:
    """Karras et al. 2022 eq. 5, i = 0..n-1 (without the appended zero)."""
    i = np.arange(n, dtype=np.float64)
    out = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    out[0], out[-1] = smax, smin  # the formula's exact endpoint values (float64 misses them)
    return out


# ---------------------------------------------------------------- karras
@pytest.mark.parametrize("steps", [2, 3, 10, 50])
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_matches_eq5_to_zero(steps: int, rho: float) -> None:
    g = karras(steps, sigma_min=0.002, sigma_max=80.0, rho=rho)
    assert g.to_zero and g.steps == steps and len(g) == steps + 1
    ref = _karras_ref(steps, 0.002, 80.0, rho)
    np.testing.assert_allclose(g.sigmas[:-1].numpy(), ref, rtol=1e-13, atol=0)
    assert float(g.sigmas[-1]) == 0.0 and float(g.lams[-1]) == math.inf


@pytest.mark.parametrize("steps", [1, 4, 25])
def test_karras_without_zero(steps: int) -> None:
    g = karras(steps, sigma_min=0.03, sigma_max=14.6, to_zero=False)
    assert not g.to_zero and g.steps == steps and len(g) == steps + 1
    np.testing.assert_allclose(g.sigmas.numpy(), _karras_ref(steps + 1, 0.03, 14.6, 7.0),
                               rtol=1e-13, atol=0)
    assert torch.isfinite(g.lams).all()


def test_karras_endpoints_exact() -> None:
    g = karras(7, sigma_min=0.002, sigma_max=80.0)
    # the lambdas are exactly -log of the requested endpoints (no power round trip) ...
    assert float(g.lams[0]) == -math.log(80.0)
    assert float(g.lams[-2]) == -math.log(0.002)
    # ... so the sigma view is within one rounding of exp
    assert float(g.sigmas[0]) == pytest.approx(80.0, rel=4e-16)
    assert float(g.sigmas[-2]) == pytest.approx(0.002, rel=4e-16)
    g2 = karras(7, sigma_min=0.002, sigma_max=80.0, to_zero=False)
    assert float(g2.lams[0]) == -math.log(80.0) and float(g2.lams[-1]) == -math.log(0.002)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_karras_from_schedule_uses_its_range(name: str) -> None:
    s = SCHEDULES[name]
    g = karras(12, s)
    np.testing.assert_allclose(g.sigmas[:-1].numpy(),
                               _karras_ref(12, s.sigma_edm_min, s.sigma_edm_max, 7.0), rtol=1e-12)
    assert float(g.lams[0]) == pytest.approx(s.lam_min, rel=1e-14, abs=1e-14)
    assert float(g.lams[-2]) == pytest.approx(s.lam_max, rel=1e-14, abs=1e-14)


# ---------------------------------------------------------------- other named grids
def test_polyexponential_and_uniform_lambda_formulas() -> None:
    smin, smax, n = 0.01, 50.0, 9
    ramp = np.linspace(1.0, 0.0, n)
    for rho in (0.5, 1.0, 2.0):
        g = polyexponential(n - 1, sigma_min=smin, sigma_max=smax, rho=rho, to_zero=False)
        ref = np.exp(ramp**rho * (math.log(smax) - math.log(smin)) + math.log(smin))
        np.testing.assert_allclose(g.sigmas.numpy(), ref, rtol=1e-13)
    g = uniform_lambda(8, sigma_min=smin, sigma_max=smax, to_zero=False)
    d = torch.diff(g.lams).numpy()
    np.testing.assert_allclose(d, (math.log(smax) - math.log(smin)) / 8, rtol=1e-12)


@pytest.mark.parametrize("name", ["vp_linear", "discrete", "rf", "ve"])
def test_uniform_and_quadratic_t_formulas(name: str) -> None:
    s = SCHEDULES[name]
    n = 11
    g = uniform_t(n - 1, s, to_zero=False)
    t = torch.as_tensor(s.t_of_lam(g.lams))
    np.testing.assert_allclose(t.numpy(), np.linspace(s.t_max, s.t_min, n), rtol=1e-9,
                               atol=1e-9 * max(1.0, s.t_max))
    g = quadratic_t(n - 1, s, to_zero=False)
    t = torch.as_tensor(s.t_of_lam(g.lams))
    i = np.arange(n)
    ref = s.t_min + (s.t_max - s.t_min) * (1 - i / (n - 1)) ** 2
    np.testing.assert_allclose(t.numpy(), ref, rtol=1e-9, atol=1e-9 * max(1.0, s.t_max))
    # with to_zero the same ramp, one node fewer, then sigma = 0
    gz = uniform_t(n - 1, s)
    assert gz.to_zero and gz.steps == n - 1
    np.testing.assert_allclose(torch.as_tensor(s.t_of_lam(gz.finite_lams())).numpy(),
                               np.linspace(s.t_max, s.t_min, n - 1), rtol=1e-9,
                               atol=1e-9 * max(1.0, s.t_max))


def test_t_grid_custom_range() -> None:
    s = VPLinear()
    g = uniform_t(4, s, t_min=0.2, t_max=0.6, to_zero=False)
    np.testing.assert_allclose(s.t_of_lam(g.lams).numpy(), [0.6, 0.5, 0.4, 0.3, 0.2], rtol=1e-12)


@pytest.mark.parametrize("grid_name", GRID_NAMES)
@pytest.mark.parametrize("sched", list(SCHEDULES))
@pytest.mark.parametrize("to_zero", [True, False])
@pytest.mark.parametrize("steps", [2, 7])
def test_named_grids_monotone_length_and_in_range(grid_name, sched, to_zero, steps) -> None:
    s = SCHEDULES[sched]
    g = make_grid(grid_name, steps, s, to_zero=to_zero)
    assert isinstance(g, Grid)
    assert g.steps == steps and len(g) == steps + 1 and g.lams.numel() == steps + 1
    assert g.lams.dtype == torch.float64
    assert g.to_zero is to_zero
    assert bool((torch.diff(g.lams) > 0).all())
    sig = g.sigmas
    assert bool((sig[1:] < sig[:-1]).all())
    fin = g.finite_lams()
    assert fin.numel() == (steps if to_zero else steps + 1)
    assert torch.isfinite(fin).all()
    tol = 1e-9 * max(1.0, abs(s.lam_min), abs(s.lam_max))
    assert float(fin.min()) >= s.lam_min - tol and float(fin.max()) <= s.lam_max + tol
    # every named grid spans the schedule's full range
    assert float(fin[0]) == pytest.approx(s.lam_min, abs=tol)
    assert float(fin[-1]) == pytest.approx(s.lam_max, abs=tol)
    if to_zero:
        assert float(sig[-1]) == 0.0 and math.isinf(float(g.lams[-1]))
    g.check_range(s)  # does not raise


def test_make_grid_dispatches_and_passes_options() -> None:
    s = EDM()
    a = make_grid("karras", 6, s, rho=3.0, to_zero=False)
    b = karras(6, s, rho=3.0, to_zero=False)
    assert torch.equal(a.lams, b.lams)
    c = make_grid("karras", 6, s)
    assert not torch.equal(a.lams, c.lams[: a.lams.numel()])


def test_make_grid_unknown_name_lists_valid_names() -> None:
    with pytest.raises(GridError, match="unknown grid 'karas'") as info:
        make_grid("karas", 10, EDM())
    for name in GRID_NAMES:
        assert name in str(info.value)


# ---------------------------------------------------------------- user grids
def test_from_t_lambdas_sigmas_agree() -> None:
    s = VPLinear()
    ts = torch.tensor([1.0, 0.7, 0.31, 0.05, 0.001], dtype=torch.float64)
    lams = s.lam(ts)
    sigmas = torch.exp(-lams)
    g_t = Grid.from_t(ts, s)
    g_l = Grid.from_lambdas(lams.tolist(), s)
    g_s = Grid.from_sigmas(sigmas, s)
    assert torch.equal(g_t.lams, g_l.lams)
    np.testing.assert_allclose(g_s.lams.numpy(), g_l.lams.numpy(), rtol=1e-14)
    # sigma~ = sigma/alpha of the schedule
    np.testing.assert_allclose(g_t.sigmas.numpy(), (s.sigma(ts) / s.alpha(ts)).numpy(),
                               rtol=1e-13)
    # the input is not aliased
    lam_in = lams.clone()
    g = Grid.from_lambdas(lam_in)
    lam_in[0] = 123.0
    assert float(g.lams[0]) != 123.0


@HYP
@given(st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=12, unique=True),
       st.booleans())
def test_from_sigmas_round_trip(values: list[float], zero: bool) -> None:
    sig = sorted(values, reverse=True) + ([0.0] if zero else [])
    g = Grid.from_sigmas(sig)
    assert g.to_zero is zero and g.steps == len(sig) - 1
    np.testing.assert_allclose(g.sigmas.numpy(), sig, rtol=1e-14, atol=0)


def test_from_sigmas_edm_to_zero() -> None:
    g = Grid.from_sigmas([80.0, 10.0, 1.0, 0.0], EDM())
    assert g.to_zero and g.steps == 3
    np.testing.assert_allclose(g.finite_lams().numpy(), [-math.log(80), -math.log(10), 0.0])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([10.0, 5.0, 7.0, 1.0], r"strictly decreasing.*node 1"),
        ([10.0, 5.0, 5.0, 1.0], r"strictly decreasing.*[Rr]epeated"),
        ([1.0, 2.0], "strictly decreasing"),
        ([10.0, math.nan, 1.0], "finite"),
        ([math.inf, 5.0, 1.0], "finite"),
        ([10.0, 5.0, -1.0], "positive"),
        ([10.0, 0.0, 1.0], "positive"),
        ([10.0, 0.0, 0.0], "positive"),
        ([5.0], "at least 2"),
        ([], "at least 2"),
        ([[10.0, 1.0]], "one-dimensional"),
    ],
)
def test_from_sigmas_rejects_bad_grids(values, match: str) -> None:
    with pytest.raises(GridError, match=match):
        Grid.from_sigmas(values)


def test_from_sigmas_out_of_schedule_range() -> None:
    with pytest.raises(GridError, match="schedule covers only"):
        Grid.from_sigmas([200.0, 1.0, 0.0], EDM())
    with pytest.raises(GridError, match="schedule covers only"):
        Grid.from_sigmas([50.0, 1e-4], EDM())
    # a grid touching the range up to rounding is accepted
    s = EDM()
    Grid.from_sigmas([80.0 * (1 + 1e-9), 0.002 * (1 - 1e-9), 0.0], s)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([0.0, 1.0, 0.5], "strictly decreasing"),
        ([0.0, 0.0, 1.0], "strictly decreasing"),
        ([0.0, math.nan], "finite"),
        ([0.0, 1.0, math.inf, 2.0], "finite"),
        ([-math.inf, 0.0, 1.0], "finite"),
        ([0.3], "at least 2"),
    ],
)
def test_from_lambdas_rejects_bad_grids(values, match: str) -> None:
    with pytest.raises(GridError, match=match):
        Grid.from_lambdas(values)


def test_from_lambdas_accepts_final_inf_and_checks_range() -> None:
    g = Grid.from_lambdas([-2.0, 0.0, math.inf])
    assert g.to_zero and g.steps == 2
    with pytest.raises(GridError, match="schedule covers only"):
        Grid.from_lambdas([-10.0, 0.0], VPLinear())


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([1.0, 0.5, 0.7], "strictly decreasing"),
        ([1.0, 0.5, 0.5], "strictly decreasing"),
        ([1.0, math.nan], "finite"),
        ([math.inf, 0.5], "finite"),
        ([1.2, 0.5], "range"),
        ([1.0, 1e-5], "range"),
        ([0.5], "at least 2"),
    ],
)
def test_from_t_rejects_bad_grids(values, match: str) -> None:
    with pytest.raises(GridError, match=match):
        Grid.from_t(values, VPLinear())


def test_grid_direct_construction_validates() -> None:
    with pytest.raises(GridError, match="float64"):
        Grid(torch.tensor([0.0, 1.0], dtype=torch.float32))
    with pytest.raises(GridError, match="at least 2"):
        Grid(torch.tensor([0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: karras(1, sigma_min=0.1, sigma_max=10.0), r"steps must be an integer >= 2"),
        (lambda: karras(0, sigma_min=0.1, sigma_max=10.0, to_zero=False), ">= 1"),
        (lambda: karras(2.5, sigma_min=0.1, sigma_max=10.0), "integer"),
        (lambda: karras(5, sigma_min=0.1, sigma_max=10.0, rho=0.0), "rho must be positive"),
        (lambda: polyexponential(5, sigma_min=0.1, sigma_max=10.0, rho=-1.0), "rho"),
        (lambda: karras(5, sigma_min=10.0, sigma_max=0.1), "sigma_min < sigma_max"),
        (lambda: karras(5, sigma_min=0.0, sigma_max=1.0), "0 < sigma_min"),
        (lambda: karras(5, sigma_min=0.1, sigma_max=math.inf), "inf"),
        (lambda: karras(5, sigma_min=0.1, sigma_max=math.nan), "sigma_min < sigma_max"),
        (lambda: karras(5), "give sigma_min and sigma_max"),
        (lambda: karras(5, EDM(), sigma_max=500.0), "schedule covers only"),
        (lambda: uniform_lambda(5, sigma_max=3.0), "give sigma_min"),
        (lambda: uniform_t(5, VPLinear(), t_min=0.5, t_max=0.5), "t_min < t_max"),
        (lambda: uniform_t(5, VPLinear(), t_min=1e-5), "range"),
        (lambda: quadratic_t(5, VPLinear(), t_max=2.0), "range"),
        (lambda: make_grid("uniform_t", 1, VPLinear()), ">= 2"),
    ],
)
def test_named_grid_argument_errors(call, match: str) -> None:
    with pytest.raises(GridError, match=match):
        call()


def test_repr_and_len() -> None:
    g = Grid.from_sigmas([4.0, 1.0, 0.0])
    assert repr(g) == "Grid(steps=2, sigmas=[4.0, 1.0, 0.0])"
    assert len(g) == 3

"""Tests of diffsolve.expint against mpmath (40 digits) and independent quadrature."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffsolve.expint import exp_lagrange_weights, lagrange_monomials, ou_decay, ou_std, phi, phis

mp.mp.dps = 40
HYP = settings(derandomize=True, max_examples=80, deadline=None)


def phi_ref(m: int, z: float) -> mp.mpf:
    """phi_m(z) = sum_n z^n/(n+m)! (small |z|) or (e^z - sum_{k<m} z^k/k!)/z^m, at 80 digits."""
    with mp.workdps(80):
        zz = mp.mpf(z)
        if m == 0:
            return +mp.exp(zz)
        if abs(zz) < 1:
            return mp.fsum(zz**n / mp.factorial(n + m) for n in range(90))
        return (mp.exp(zz) - mp.fsum(zz**k / mp.factorial(k) for k in range(m))) / zz**m


def phi_integral(m: int, z: float) -> mp.mpf:
    """The definition phi_m(z) = int_0^1 e^{(1-th) z} th^{m-1}/(m-1)! d th (m >= 1)."""
    zz = mp.mpf(z)
    return mp.quad(lambda th: mp.exp((1 - th) * zz) * th ** (m - 1) / mp.factorial(m - 1), [0, 1])


def _rel(a: float, b: mp.mpf) -> float:
    return float(abs((mp.mpf(a) - b) / b))


Z_NEG = sorted({0.0, *(-np.logspace(-12, -8, 9)).tolist(),
                *(-np.logspace(-8, math.log10(700), 120)).tolist(),
                -700.0, -1.0, -2.0, -3.0, -1.99999999, -2.00000001})
Z_POS = sorted({*np.logspace(-12, math.log10(50), 80).tolist(), 1.0, 2.0, 1.99999999, 2.00000001,
                50.0})


def test_reference_agrees_with_integral_definition() -> None:
    # guards the reference itself
    for m in (1, 2, 3, 4):
        for z in (-30.0, -2.5, -0.7, 0.3, 3.0):
            assert abs(phi_ref(m, z) / phi_integral(m, z) - 1) < mp.mpf(10) ** -30


@pytest.mark.parametrize("m", range(5))
def test_phi_nonpositive_z_matches_mpmath(m: int) -> None:
    worst = max(_rel(phi(m, z), phi_ref(m, z)) for z in Z_NEG)
    assert worst < 1e-14  # brief asks 1e-12; the implementation reaches ~1e-15


@pytest.mark.parametrize("m", range(5))
def test_phi_positive_z_matches_mpmath(m: int) -> None:
    worst = max(_rel(phi(m, z), phi_ref(m, z)) for z in Z_POS)
    assert worst < 1e-14  # brief asks 1e-12; the implementation reaches ~1e-15


@pytest.mark.parametrize("m", range(5))
@HYP
@given(z=st.floats(-700.0, 50.0))
def test_phi_random_z_matches_mpmath(m: int, z: float) -> None:
    assert _rel(phi(m, z), phi_ref(m, z)) < 1e-14


@pytest.mark.parametrize("m", range(7))
def test_phi_at_zero_is_inverse_factorial(m: int) -> None:
    assert phi(m, 0.0) == pytest.approx(1.0 / math.factorial(m), rel=1e-16)
    assert phi(m, -0.0) == pytest.approx(1.0 / math.factorial(m), rel=1e-16)


def test_phi_closed_forms_spot_values() -> None:
    assert phi(0, -3.0) == math.exp(-3.0)
    assert phi(1, -5.0) == pytest.approx((math.exp(-5.0) - 1) / -5.0, rel=1e-15)
    assert phi(2, 4.0) == pytest.approx((math.exp(4.0) - 1 - 4.0) / 16.0, rel=1e-14)
    assert phi(1, -700.0) == pytest.approx(1 / 700, rel=1e-15)


@pytest.mark.parametrize("m", range(1, 5))
@pytest.mark.parametrize("edge", [2.0, -2.0])
def test_phi_continuous_across_series_switch(m: int, edge: float) -> None:
    below = phi(m, math.nextafter(edge, 0.0))  # series side
    at = phi(m, edge)  # recurrence side
    above = phi(m, math.nextafter(edge, math.copysign(math.inf, edge)))
    for v in (below, at, above):
        assert _rel(v, phi_ref(m, edge)) < 1e-14
    assert abs(below - above) <= 1e-14 * abs(at)
    # and a little further out on either side
    for d in (1e-9, 1e-6, 1e-3):
        for z in (edge * (1 - d), edge * (1 + d)):
            assert _rel(phi(m, z), phi_ref(m, z)) < 1e-13


@HYP
@given(z=st.floats(-700.0, 50.0).filter(lambda v: abs(v) > 1e-3), m=st.integers(0, 4))
def test_phi_recurrence_identity(z: float, m: int) -> None:
    # phi_m(z) = z phi_{m+1}(z) + 1/m!  (the defining recurrence, checked on every branch)
    lhs, rhs = phi(m, z), z * phi(m + 1, z) + 1.0 / math.factorial(m)
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-15)


def test_phis_and_bad_m() -> None:
    assert phis(4, -0.3) == [phi(m, -0.3) for m in range(5)]
    assert len(phis(0, 1.0)) == 1
    with pytest.raises(ValueError, match="m >= 0"):
        phi(-1, 0.5)


# ---------------------------------------------------------------- Lagrange machinery
def _poly_eval(coeffs: list[float], x: float) -> float:
    return sum(c * x**p for p, c in enumerate(coeffs))


node_lists = st.lists(st.floats(-1.0, 2.0), min_size=1, max_size=5).filter(
    lambda r: all(abs(a - b) > 0.05 for i, a in enumerate(r) for b in r[i + 1:]))


@HYP
@given(nodes=node_lists)
def test_lagrange_monomials_kronecker_delta(nodes: list[float]) -> None:
    coeffs = lagrange_monomials(nodes)
    assert len(coeffs) == len(nodes)
    for j, cj in enumerate(coeffs):
        assert len(cj) == len(nodes)
        for i, r in enumerate(nodes):
            assert _poly_eval(cj, r) == pytest.approx(1.0 if i == j else 0.0, abs=1e-9)


def test_lagrange_monomials_known_case() -> None:
    # nodes 0, 1: l_0 = 1 - theta, l_1 = theta
    assert lagrange_monomials([0.0, 1.0]) == [[1.0, -1.0], [0.0, 1.0]]
    # a single node: the constant 1
    assert lagrange_monomials([0.3]) == [[1.0]]
    # nodes -1, 0, 1: l_0 = theta(theta-1)/2
    np.testing.assert_allclose(lagrange_monomials([-1.0, 0.0, 1.0])[0], [0.0, -0.5, 0.5])


def test_lagrange_monomials_rejects_bad_nodes() -> None:
    with pytest.raises(ValueError, match="distinct"):
        lagrange_monomials([0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="at least one"):
        lagrange_monomials([])


_GL_X, _GL_W = np.polynomial.legendre.leggauss(80)


def _weighted_integral(c: float, q) -> float:
    """int_0^1 e^{c(1-theta)} q(theta) d theta by 80-point Gauss-Legendre (float64)."""
    th = 0.5 * (_GL_X + 1.0)
    return float(0.5 * np.sum(_GL_W * np.exp(c * (1.0 - th)) * q(th)))


@HYP
@given(nodes=node_lists, c=st.floats(-30.0, 10.0), seed=st.integers(0, 2**31 - 1))
def test_exp_lagrange_weights_exact_for_low_degree_polynomials(nodes, c, seed) -> None:
    n = len(nodes)
    w = exp_lagrange_weights(nodes, c)
    assert len(w) == n
    rng = np.random.default_rng(seed)
    for deg in range(n):
        a = rng.standard_normal(deg + 1)

        def q(th, a=a):
            return np.polynomial.polynomial.polyval(th, a)

        got = sum(wj * float(q(r)) for wj, r in zip(w, nodes, strict=True))
        want = _weighted_integral(c, q)
        scale = sum(abs(wj * float(q(r))) for wj, r in zip(w, nodes, strict=True)) + abs(want)
        assert abs(got - want) <= 1e-11 * max(scale, 1e-300)


@HYP
@given(nodes=node_lists, c=st.floats(-50.0, 20.0))
def test_exp_lagrange_weights_sum_to_phi1(nodes, c) -> None:
    w = exp_lagrange_weights(nodes, c)
    ref = float(phi_ref(1, c))
    cond = max(1.0, sum(abs(v) for v in w) / abs(ref))
    assert math.fsum(w) == pytest.approx(ref, rel=1e-10 * cond)


def test_exp_lagrange_weights_known_values() -> None:
    # one node: the exponential Euler weight phi_1(c)
    assert exp_lagrange_weights([0.0], -1.5) == [pytest.approx(float(phi_ref(1, -1.5)), rel=1e-15)]
    # c = 0: ordinary Newton-Cotes weights (trapezoid, Simpson)
    np.testing.assert_allclose(exp_lagrange_weights([0.0, 1.0], 0.0), [0.5, 0.5], rtol=1e-15)
    np.testing.assert_allclose(exp_lagrange_weights([0.0, 0.5, 1.0], 0.0), [1 / 6, 4 / 6, 1 / 6],
                               rtol=1e-14)
    # nodes 0, 1 with c: w_1 = int e^{c(1-th)} th = phi_2(c), w_0 = phi_1(c) - phi_2(c)
    c = -4.0
    w0, w1 = exp_lagrange_weights([0.0, 1.0], c)
    assert w1 == pytest.approx(float(phi_ref(2, c)), rel=1e-14)
    assert w0 == pytest.approx(float(phi_ref(1, c) - phi_ref(2, c)), rel=1e-14)
    # tiny c behaves like c = 0
    np.testing.assert_allclose(exp_lagrange_weights([0.0, 1.0], -1e-12), [0.5, 0.5], rtol=1e-11)


# ---------------------------------------------------------------- OU factors
@pytest.mark.parametrize("eta", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("h", [1e-14, 1e-10, 1e-6, 1e-3, 0.5, 2.0, 30.0])
def test_ou_factors_match_mpmath(eta: float, h: float) -> None:
    with mp.workdps(60):
        x = mp.mpf(eta) * mp.mpf(h)
        dec_ref = mp.exp(-x)
        std_ref = mp.sqrt(1 - mp.exp(-2 * x))
    assert _rel(ou_decay(eta, h), dec_ref) < 1e-15
    assert _rel(ou_std(eta, h), std_ref) < 1e-14
    assert ou_decay(eta, h) ** 2 + ou_std(eta, h) ** 2 == pytest.approx(1.0, abs=4e-16)


def test_ou_factors_at_zero() -> None:
    assert ou_decay(1.0, 0.0) == 1.0
    assert ou_std(1.0, 0.0) == 0.0
    assert ou_std(0.0, 5.0) == 0.0
    assert ou_decay(0.0, 5.0) == 1.0
    # small-h asymptotics sqrt(2 eta h)
    assert ou_std(0.5, 1e-20) == pytest.approx(math.sqrt(1e-20), rel=1e-12)

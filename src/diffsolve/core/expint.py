r"""Exponential-integrator helpers, shared by every solver. Float64, host-side, scalar.

Notation (see ``docs/notation.md``): a step goes from lambda_s to lambda_t = lambda_s + h
(h > 0, lambda = log(alpha/sigma) rises as noise falls); eta >= 0 is the stochasticity and
k = 1 + eta. The data-prediction SDE (Lu et al. 2022b DPM-Solver++ eq. 9 for eta = 0;
Gonzalez et al. 2023 SEEDS eq. 8; Xue et al. 2023 SA-Solver eq. 10)

    dx = [(d log sigma/d lambda - eta) x + k alpha D(x, lambda)] d lambda + sqrt(2 eta) sigma dW

has the exact one-step solution

    x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t int_0^h k e^{-k(h-u)} D(lambda_s+u) du
          + sigma_t sqrt(1 - e^{-2 eta h}) xi.

This module provides:

* :func:`phi` -- phi_m(z) = int_0^1 e^{(1-theta) z} theta^{m-1}/(m-1)! dtheta
  (Hochbruck & Ostermann 2010, eq. 2.10), accurate to ~1e-15 relative for every real z,
  via the Taylor series for |z| < 2 and the recurrence phi_{m+1}(z) = (phi_m(z) - 1/m!)/z
  (with phi_1 = expm1(z)/z) elsewhere.
* :func:`lagrange_monomials` -- the monomial coefficients of the Lagrange basis on nodes given
  in normalised coordinates theta = (lambda - lambda_s)/h (well conditioned: nodes are O(1)).
* :func:`exp_lagrange_weights` -- w_j = int_0^1 e^{c(1-theta)} l_j(theta) dtheta
  = sum_p c_jp p! phi_{p+1}(c); with c = -k h and a factor k h these are the SA-Solver / DEIS /
  UniPC weights b_j = k int e^{-k(lambda_t - lambda)} l_j(lambda) d lambda (SA-Solver eq. 14,
  computed in the stable normalised form of research note seeds_sa_solver.md Sec. 3.4).
* :func:`ou_decay` and :func:`ou_std` -- the exact noise factors e^{-eta h} and
  sqrt(1 - e^{-2 eta h}) of the Ornstein-Uhlenbeck chain that splits a Brownian increment
  between stages (SEEDS, research note Sec. 2.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .schedules import EvalPoint

_SERIES_RADIUS = 2.0
_SERIES_TERMS = 40


def phi(m: int, z: float) -> float:
    """phi_m(z) for m >= 0 and real z, in float64.

    phi_0(z) = e^z, phi_1(z) = (e^z - 1)/z, phi_m(0) = 1/m!.
    """
    if m < 0:
        raise ValueError(f"phi_m needs m >= 0, got {m}")
    z = float(z)
    if m == 0:
        return math.exp(z)
    if abs(z) < _SERIES_RADIUS:
        # phi_m(z) = sum_n z^n / (n+m)!   (Hochbruck & Ostermann 2010, eq. 2.11)
        term = 1.0 / math.factorial(m)
        total = term
        for n in range(1, _SERIES_TERMS):
            term *= z / (n + m)
            total += term
            if abs(term) < 1e-18 * abs(total):
                break
        return total
    value = math.expm1(z) / z
    for j in range(1, m):
        # phi_{j+1}(z) = (phi_j(z) - 1/j!) / z
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def phis(m_max: int, z: float) -> list[float]:
    """[phi_0(z), ..., phi_{m_max}(z)]."""
    return [phi(m, z) for m in range(m_max + 1)]


def lagrange_monomials(nodes: Sequence[float]) -> list[list[float]]:
    """Monomial coefficients c[j][p] of the Lagrange basis polynomials on ``nodes``.

    l_j(theta) = prod_{m != j} (theta - r_m)/(r_j - r_m) = sum_p c[j][p] theta^p.
    Nodes must be distinct; pass them normalised (theta = (lambda - lambda_s)/h).
    """
    r = [float(v) for v in nodes]
    n = len(r)
    if n == 0:
        raise ValueError("need at least one node")
    if len(set(r)) != n:
        raise ValueError(f"Lagrange nodes must be distinct, got {r}")
    coeffs: list[list[float]] = []
    for j in range(n):
        poly = [1.0]  # coefficients in increasing powers
        denom = 1.0
        for m in range(n):
            if m == j:
                continue
            # multiply by (theta - r_m)
            new = [0.0] * (len(poly) + 1)
            for p, c in enumerate(poly):
                new[p] -= r[m] * c
                new[p + 1] += c
            poly = new
            denom *= r[j] - r[m]
        coeffs.append([c / denom for c in poly])
    return coeffs


def lagrange_weights(nodes: Sequence[float], at: float) -> list[float]:
    """Point-evaluation weights l_j(at) = prod_{m != j} (at - r_m)/(r_j - r_m) of the Lagrange
    basis on distinct ``nodes``: sum_j l_j(at) f(r_j) is the interpolating polynomial at
    ``at`` (an extrapolation when ``at`` lies outside the nodes). Exact on polynomials of
    degree < len(nodes)."""
    r = [float(v) for v in nodes]
    if not r:
        raise ValueError("need at least one node")
    if len(set(r)) != len(r):
        raise ValueError(f"Lagrange nodes must be distinct, got {r}")
    out = []
    for j, rj in enumerate(r):
        w = 1.0
        for m, rm in enumerate(r):
            if m != j:
                w *= (at - rm) / (rj - rm)
        out.append(w)
    return out


def exp_lagrange_weights(nodes: Sequence[float], c: float) -> list[float]:
    """w_j = int_0^1 e^{c (1 - theta)} l_j(theta) d theta for the Lagrange basis on ``nodes``.

    Uses int_0^1 e^{c(1-theta)} theta^p d theta = p! phi_{p+1}(c). Exact for every real c,
    including c = 0 (plain Lagrange quadrature weights on [0, 1]).
    """
    mono = lagrange_monomials(nodes)
    n = len(mono)
    moments = [math.factorial(p) * phi(p + 1, c) for p in range(n)]
    return [sum(cj[p] * moments[p] for p in range(n)) for cj in mono]


def ou_decay(eta: float, h: float) -> float:
    """e^{-eta h}: how much of the earlier normalised noise survives a sub-interval of length h."""
    return math.exp(-eta * h)


def ou_std(eta: float, h: float) -> float:
    """sqrt(1 - e^{-2 eta h}) computed as sqrt(-expm1(-2 eta h)) (research note pitfall P1)."""
    return math.sqrt(-math.expm1(-2.0 * eta * h))


@dataclass(frozen=True)
class StageCoefficients:
    """Coefficients of one exponential-integrator update from node s to a point c.

    The update reads  x_c = lin * x_s + w0 * F_s + w1 * S + noise_std * xi,  where F is the
    data prediction D (form "data") or the noise prediction eps (form "noise"), and
    S = (F_r - F_s) / r is a normalised difference with another stage r, r being that stage's
    lambda offset in units of the step to c (so S ~ (lam_c - lam_s) dF/dlam).
    """

    lin: float
    w0: float
    w1: float
    noise_std: float


def stage_coefficients(p_s: EvalPoint, p_c: EvalPoint, *, eta: float = 0.0,
                       form: Literal["data", "noise"] = "data") -> StageCoefficients:
    """Exact linear part, frozen-F weight, slope weight and noise std from s to c.

    Data form (SEEDS eq. 8-9 / research note Sec. 1.3; DPM-Solver++ eq. 9 at eta = 0), with
    hc = lam_c - lam_s and k = 1 + eta:
        lin = (sigma_c/sigma_s) e^{-eta hc},
        w0 = alpha_c (1 - e^{-k hc}) = alpha_c k hc phi_1(-k hc),
        w1 = alpha_c k hc phi_2(-k hc)  (the psi(k hc) of the SEEDS notes),
        noise_std = sigma_c sqrt(1 - e^{-2 eta hc}).
    Noise form (DPM-Solver eq. 3.7 at eta = 0; research note Sec. 1.3 for eta > 0):
        lin = alpha_c/alpha_s, w0 = -k sigma_c hc phi_1(hc), w1 = -k sigma_c hc phi_2(hc),
        noise_std = sigma_c sqrt(eta (e^{2 hc} - 1)).
    """
    hc = p_c.lam - p_s.lam
    k = 1.0 + eta
    if form == "data":
        z = -k * hc
        return StageCoefficients(
            lin=(p_c.sigma / p_s.sigma) * math.exp(-eta * hc),
            w0=p_c.alpha * (-z) * phi(1, z),
            w1=p_c.alpha * (-z) * phi(2, z),
            noise_std=p_c.sigma * ou_std(eta, hc),
        )
    if form == "noise":
        return StageCoefficients(
            lin=p_c.alpha / p_s.alpha,
            w0=-k * p_c.sigma * hc * phi(1, hc),
            w1=-k * p_c.sigma * hc * phi(2, hc),
            noise_std=p_c.sigma * math.sqrt(eta * math.expm1(2.0 * hc)),
        )
    raise ValueError(f"form must be 'data' or 'noise', got {form!r}")

"""Noise splits shared by the ancestral and churning samplers.

* :func:`ancestral_split` -- an ancestral step s -> n in sigma~ = sigma/alpha goes
  deterministically to sigma_down and adds noise of std sigma_up, with
  sigma_down^2 + sigma_up^2 = n^2 and sigma_up = min(n, eta sqrt(n^2 (s^2 - n^2)/s^2))
  (k-diffusion's ``get_ancestral_step``; at eta = 1 the DDPM posterior, Ho et al. 2020 eq. 7).
* :func:`churn_gamma`, :func:`churn_std` -- EDM's churn (Karras et al. 2022, Alg. 2 lines 3-6):
  raise sigma~ to sigma_hat = sigma~ (1 + gamma) by adding noise of std
  sqrt(sigma_hat^2 - sigma~^2).
"""

from __future__ import annotations

import math

MAX_GAMMA = math.sqrt(2.0) - 1.0


def ancestral_split(s: float, n: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step s -> n in sigma~ (module docstring)."""
    if eta == 0.0:
        return n, 0.0
    up = min(n, eta * n * math.sqrt(max(0.0, -math.expm1(2.0 * math.log(n / s)))))
    return math.sqrt(max(0.0, n * n - up * up)), up


def churn_gamma(s: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM's gamma_i = min(S_churn/N, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0
    (Karras et al. 2022, Alg. 2 line 3; N counts every interval, the one into 0 included)."""
    if s_churn <= 0.0 or not (s_tmin <= s <= s_tmax):
        return 0.0
    return min(s_churn / n_steps, MAX_GAMMA)


def churn_std(s: float, s_hat: float) -> float:
    """sqrt(s_hat^2 - s^2), the std that raises noise level s to s_hat (Alg. 2 line 5)."""
    return s_hat * math.sqrt(max(0.0, -math.expm1(2.0 * math.log(s / s_hat))))

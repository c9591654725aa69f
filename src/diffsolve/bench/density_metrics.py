r"""Metrics against a *known* density (the analytic Gaussian mixtures), which see the error
inside each mode that moment-based distances miss.

For samples x_1..x_n of a sampler and the exact mixture p(x) = sum_k w_k N(x; mu_k, C_k):

* :func:`log_density_gap` -- the mean exact log-density of the samples minus the same
  expectation under p:
      gap = (1/n) sum_i log p(x_i) - E_p[log p(X)],
  with E_p[log p] (minus the differential entropy) estimated once from ``n_ref`` exact samples.
  Its standard error is sqrt(Var_q[log p]/n + Var_p[log p]/n_ref). Too-wide modes give a
  negative gap, too-narrow (over-sharpened) modes a positive one; it is blind to mass moved
  between modes of equal density (see the known-answer table, docs/bench/known_answer).
* :func:`mode_resolved` -- per-component weights, means and covariances of the samples,
  resolved by the exact responsibilities r_k(x) = w_k N(x; mu_k, C_k) / p(x):
      w^_k = (1/n) sum_i r_k(x_i),   m^_k = sum_i r_k(x_i) x_i / (n w^_k),
      C^_k = sum_i r_k(x_i) (x_i - m^_k)(x_i - m^_k)^T / (n w^_k).
  Under p, E[r_k(X) f(X)] = w_k E_{N(mu_k, C_k)}[f], so these are consistent for (w_k, mu_k,
  C_k) even for overlapping components. Summaries: ``weight_tv`` = (1/2) sum |w^_k - w_k|,
  ``mean_err`` = sum_k w_k |C_k^{-1/2}(m^_k - mu_k)|, ``var_ratio`` = sum_k w_k
  tr(C_k^{-1} C^_k)/d (1 = right spread inside the modes; both averaged over the modes that
  hold more than d + 1 samples' worth of responsibility, the others counted in
  ``missing_modes``), and ``mode_kl`` =
      KL(w^ || w) + sum_k w^_k KL(N(m^_k, C^_k) || N(mu_k, C_k)),
  the KL divergence between the fitted and the true joint law of (component, x) when each
  component is Gaussian (chain rule of KL; Gaussian KL from Cover & Thomas / Bishop 2006
  eq. 2.155 form: 1/2 [tr(C^-1 C^) + (m-mu)^T C^-1 (m-mu) - d + log det C - log det C^]).
* :func:`grid_divergences` -- 2-D only: the sample histogram on a ``bins`` x ``bins`` grid
  covering the mixture (plus one cell for everything outside) against the exact cell
  probabilities (midpoint rule on ``sub`` x ``sub`` points per cell, renormalised with the
  exact outside mass); total variation (1/2) sum |q_j - p_j| and KL(q || p) = sum q_j
  log(q_j / p_j).

Every metric has a Monte Carlo floor (its value on exact samples of the same size): see
:func:`floor` and the known-answer table written by ``benchmarks/known_answer.py``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..zoo import GaussianMixture

_LOG_2PI = math.log(2.0 * math.pi)


def _flat(x: Tensor, d: int) -> Tensor:
    return x.detach().to(device="cpu", dtype=torch.float64).reshape(x.shape[0], d)


def component_log_densities(x: Tensor, gmm: GaussianMixture) -> Tensor:
    """log w_k + log N(x; mu_k, C_k), shape (n, K), float64 (Cholesky of each C_k)."""
    xf = _flat(x, gmm.dim)
    chol = torch.linalg.cholesky(gmm.covs)
    diff = (xf[None, :, :] - gmm.means[:, None, :]).unsqueeze(-1)  # (K, n, d, 1)
    z = torch.linalg.solve_triangular(chol[:, None], diff, upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    comp = -0.5 * (z * z).sum(-1) - 0.5 * (logdet[:, None] + gmm.dim * _LOG_2PI)  # (K, n)
    return (torch.log(gmm.weights)[:, None] + comp).T


def _chunked_log_prob(x: Tensor, gmm: GaussianMixture, chunk: int = 100_000) -> Tensor:
    return torch.cat([torch.logsumexp(component_log_densities(x[i:i + chunk], gmm), dim=1)
                      for i in range(0, x.shape[0], chunk)])


def mixture_key(gmm: GaussianMixture) -> str:
    """A hash of the mixture's parameters (cache key: equal mixtures share cached values)."""
    h = hashlib.sha256()
    for t in (gmm.weights, gmm.means, gmm.covs):
        h.update(t.numpy().tobytes())
    return h.hexdigest()


_CACHE: dict[tuple[Any, ...], Any] = {}


def expected_log_density(gmm: GaussianMixture, *, n_ref: int = 1_000_000,
                         seed: int = 987_654) -> tuple[float, float]:
    """(E_p[log p], variance of that Monte Carlo estimate) from ``n_ref`` exact samples
    (cached per mixture parameters)."""
    key = ("elp", mixture_key(gmm), n_ref, seed)
    if key not in _CACHE:
        ref = gmm.sample(n_ref, torch.Generator().manual_seed(seed))
        lp = _chunked_log_prob(ref, gmm)
        _CACHE[key] = (float(lp.mean()), float(lp.var() / n_ref))
    return _CACHE[key]


def log_density_gap(x: Tensor, gmm: GaussianMixture, *,
                    n_ref: int = 1_000_000) -> dict[str, float]:
    """{"ll_gap": mean log p(x_i) - E_p[log p], "ll_gap_se": its standard error}."""
    lp = _chunked_log_prob(x, gmm)
    if not torch.isfinite(lp).all():
        return {"ll_gap": math.nan, "ll_gap_se": math.nan}
    ref_mean, ref_var = expected_log_density(gmm, n_ref=n_ref)
    return {"ll_gap": float(lp.mean()) - ref_mean,
            "ll_gap_se": math.sqrt(float(lp.var()) / x.shape[0] + ref_var)}


def _gauss_kl(m: Tensor, c: Tensor, mu: Tensor, cov: Tensor) -> float:
    """KL(N(m, c) || N(mu, cov)) in float64."""
    d = m.numel()
    chol = torch.linalg.cholesky(cov)
    inv = torch.cholesky_inverse(chol)
    diff = m - mu
    ld_cov = 2.0 * float(torch.log(torch.diagonal(chol)).sum())
    sign, ld_c = torch.linalg.slogdet(c)
    if float(sign) <= 0:
        return math.inf
    return 0.5 * (float(torch.trace(inv @ c)) + float(diff @ inv @ diff) - d + ld_cov
                  - float(ld_c))


def mode_resolved(x: Tensor, gmm: GaussianMixture) -> dict[str, Any]:
    """Per-component weights/means/covariances of the samples under the exact responsibilities
    and their summaries (see the module docstring)."""
    xf = _flat(x, gmm.dim)
    if not torch.isfinite(xf).all():
        return {"mode_kl": math.nan, "weight_tv": math.nan, "mean_err": math.nan,
                "var_ratio": math.nan, "missing_modes": -1, "per_component": []}
    resp = torch.softmax(component_log_densities(xf, gmm), dim=1)  # (n, K)
    n, d = xf.shape
    mass = resp.sum(0)  # n w^_k
    w_hat = mass / n
    w, mu, cov = gmm.weights, gmm.means, gmm.covs
    kl_w = float(torch.where(w_hat > 0, w_hat * torch.log(w_hat / w), torch.zeros(())).sum())
    mode_kl, mean_err, var_ratio, w_present = kl_w, 0.0, 0.0, 0.0
    per: list[dict[str, float]] = []
    missing = 0
    for k in range(gmm.n_components):
        if float(mass[k]) < d + 1:  # (almost) no samples in this mode: it is missing
            missing += 1
            per.append({"weight": float(w_hat[k]), "mean_err": math.nan, "var_ratio": math.nan})
            continue
        m = resp[:, k] @ xf / mass[k]
        xc = xf - m
        c = (resp[:, k, None] * xc).T @ xc / mass[k]
        inv = torch.cholesky_inverse(torch.linalg.cholesky(cov[k]))
        diff = m - mu[k]
        me = math.sqrt(max(float(diff @ inv @ diff), 0.0))
        vr = float(torch.trace(inv @ c)) / d
        mean_err += float(w[k]) * me
        var_ratio += float(w[k]) * vr
        w_present += float(w[k])
        mode_kl += float(w_hat[k]) * _gauss_kl(m, c, mu[k], cov[k])
        per.append({"weight": float(w_hat[k]), "mean_err": me, "var_ratio": vr})
    if w_present == 0.0:  # too few samples for any mode's covariance: nothing resolved
        mode_kl, mean_err, var_ratio, w_present = math.inf, math.nan, math.nan, 1.0
    return {"mode_kl": mode_kl, "weight_tv": 0.5 * float((w_hat - w).abs().sum()),
            "mean_err": mean_err / w_present, "var_ratio": var_ratio / w_present,
            "missing_modes": missing, "per_component": per}


def grid_box(gmm: GaussianMixture, width: float = 4.0) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1): the union of mu_k +- ``width`` standard deviations (2-D mixtures)."""
    sd = torch.diagonal(gmm.covs, dim1=-2, dim2=-1).sqrt()
    lo = (gmm.means - width * sd).min(0).values
    hi = (gmm.means + width * sd).max(0).values
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _cell_probs(gmm: GaussianMixture, bins: int, sub: int) -> Tensor:
    key = ("cells", mixture_key(gmm), bins, sub)
    if key not in _CACHE:
        _CACHE[key] = _compute_cell_probs(gmm, bins, sub)
    return _CACHE[key]


def _compute_cell_probs(gmm: GaussianMixture, bins: int, sub: int) -> Tensor:
    x0, x1, y0, y1 = grid_box(gmm)
    nx = bins * sub
    xs = x0 + (torch.arange(nx, dtype=torch.float64) + 0.5) * (x1 - x0) / nx
    ys = y0 + (torch.arange(nx, dtype=torch.float64) + 0.5) * (y1 - y0) / nx
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    dens = _chunked_log_prob(pts, gmm).exp().reshape(nx, nx)
    area = (x1 - x0) * (y1 - y0) / nx ** 2
    cells = dens.reshape(bins, sub, bins, sub).sum((1, 3)) * area
    inside = float(cells.sum())
    out = max(1.0 - inside, 1e-300)
    return torch.cat([cells.reshape(-1), torch.tensor([out], dtype=torch.float64)])


def grid_divergences(x: Tensor, gmm: GaussianMixture, *, bins: int = 48,
                     sub: int = 6) -> dict[str, float]:
    """{"grid_tv", "grid_kl"} of the samples' histogram against the exact cell
    probabilities (2-D mixtures only; see the module docstring)."""
    if gmm.dim != 2:
        raise ValueError("grid divergences are for 2-D mixtures")
    xf = _flat(x, 2)
    if not torch.isfinite(xf).all():
        return {"grid_tv": math.nan, "grid_kl": math.nan}
    p = _cell_probs(gmm, bins, sub)
    x0, x1, y0, y1 = grid_box(gmm)
    ix = torch.floor((xf[:, 0] - x0) / (x1 - x0) * bins).long()
    iy = torch.floor((xf[:, 1] - y0) / (y1 - y0) * bins).long()
    inside = (ix >= 0) & (ix < bins) & (iy >= 0) & (iy < bins)
    idx = torch.where(inside, ix * bins + iy, torch.full_like(ix, bins * bins))
    q = torch.bincount(idx, minlength=bins * bins + 1).double() / xf.shape[0]
    pos = q > 0
    return {"grid_tv": 0.5 * float((q - p).abs().sum()),
            "grid_kl": float((q[pos] * torch.log(q[pos] / p[pos])).sum())}


def mixture_metrics(gmm: GaussianMixture) -> Callable[[Tensor], dict[str, Any]]:
    """The exact-density metrics of a mixture as one ``samples -> dict`` function:
    ll_gap (+ se), mode_kl, weight_tv, mean_err, var_ratio and, in 2-D, grid_tv/grid_kl."""

    def evaluate(x: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {**log_density_gap(x, gmm)}
        mr = mode_resolved(x, gmm)
        mr.pop("per_component")
        out.update(mr)
        if gmm.dim == 2:
            out.update(grid_divergences(x, gmm))
        return out

    return evaluate

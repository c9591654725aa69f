r"""Distribution metrics with known answers.

* :func:`frechet_distance` -- the 2-Wasserstein distance squared between two Gaussians
  (Dowson & Landau 1982; the "FID" formula of Heusel et al. 2017, eq. 6):
  |mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2}), computed in float64 with
  symmetric eigendecompositions (no complex sqrtm).
* :func:`moment_frechet_distance` -- the Frechet distance between the sample mean/covariance
  of a set of samples and *exact* reference moments (e.g. of the analytic Gaussian mixture),
  so the only Monte Carlo error is on one side.
* :func:`sliced_wasserstein` -- the sliced 1-Wasserstein distance between two sample sets
  (Rabin et al. 2011), averaging exact 1-D W1 over seeded random projections.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _sqrt_psd(c: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(0.0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared 2-Wasserstein distance between N(mu1, cov1) and N(mu2, cov2), float64."""
    mu1, mu2 = mu1.double().flatten(), mu2.double().flatten()
    c1, c2 = cov1.double(), cov2.double()
    if c1.shape != c2.shape or c1.shape != (mu1.numel(), mu1.numel()) or mu1.shape != mu2.shape:
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)}/{tuple(mu2.shape)}, cov "
                         f"{tuple(c1.shape)}/{tuple(c2.shape)}")
    s1 = _sqrt_psd(0.5 * (c1 + c1.T))
    middle = s1 @ c2 @ s1
    cross = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0.0).sqrt().sum()
    value = float((mu1 - mu2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2.0 * cross)
    return max(value, 0.0)


def sample_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of samples x of shape (N, ...) flattened to (N, d)."""
    flat = x.detach().double().reshape(x.shape[0], -1)
    if flat.shape[0] < 2:
        raise ValueError("need at least 2 samples for a covariance")
    mu = flat.mean(0)
    centred = flat - mu
    return mu, centred.T @ centred / (flat.shape[0] - 1)


def moment_frechet_distance(samples: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Frechet distance between the samples' Gaussian fit and exact moments (mean, cov)."""
    mu, c = sample_moments(samples)
    return frechet_distance(mu, c, mean, cov)


def sliced_wasserstein(x: Tensor, y: Tensor, *, projections: int = 128, seed: int = 0) -> float:
    """Sliced W1 between equal-size sample sets x, y of shape (N, ...)."""
    a = x.detach().double().reshape(x.shape[0], -1)
    b = y.detach().double().reshape(y.shape[0], -1)
    if a.shape != b.shape:
        raise ValueError(f"need equal-size sample sets, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, dtype=torch.float64, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return float((pa - pb).abs().mean())

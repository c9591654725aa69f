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
* :func:`pixel_frechet_distance` -- the Frechet distance between the Gaussian fits of two
  sample sets in their own (e.g. pixel) coordinates.
* :func:`feature_frechet_distance` -- the same in the feature space of a network
  (``features_fn``, e.g. the digits classifier's penultimate layer: the FID recipe of
  Heusel et al. 2017 with a different feature extractor).
* :func:`kernel_distance` -- the kernel inception distance (KID, Binkowski et al. 2018): the
  unbiased estimator of the squared MMD with the cubic polynomial kernel
  k(a, b) = (a.b / d + 1)^3, d the feature dimension. Unlike the FD it is unbiased, so two
  sample sets of one distribution give values scattered around 0 (possibly negative).
* :func:`mmd_multiscale` -- the unbiased squared MMD (Gretton et al. 2012, eq. 3) with the
  sum of Gaussian kernels exp(-|a - b|^2 / (2 s^2)) over several bandwidths s (default:
  multiples 1/32, 1/16, ..., 1/2, 1 of the median pairwise distance of the reference set); the sum
  of characteristic kernels is characteristic, and the small bandwidths see the shape inside
  narrow modes that the median-heuristic kernel alone smooths over.
* :func:`precision_recall` -- improved precision and recall (Kynkaanniemi et al. 2019): the
  real (fake) manifold is the union of balls around each real (fake) feature vector with the
  radius of its k-th nearest neighbour in its own set; precision = share of fake samples
  inside the real manifold, recall = share of real samples inside the fake manifold. Low
  precision: samples off the data (e.g. too smooth / blurry); low recall: missing modes.
* :func:`ode_error` -- the RMS difference between final samples and a reference solution of
  the probability-flow ODE started from the same noise (pure discretisation error of an
  ODE solver).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def pixel_frechet_distance(x: Tensor, ref_x: Tensor) -> float:
    """Frechet distance between the Gaussian fits of sample sets x and ref_x (N, ...)."""
    return frechet_distance(*sample_moments(x), *sample_moments(ref_x))


@torch.no_grad()
def batched_features(x: Tensor, features_fn: Callable[[Tensor], Tensor], *,
                     batch_size: int = 500) -> Tensor:
    """``features_fn`` applied to x in batches, concatenated as float64 of shape (N, F)."""
    if x.shape[0] < 1:
        raise ValueError("need at least one sample")
    parts = [features_fn(x[i:i + batch_size]).detach().double().reshape(
        min(batch_size, x.shape[0] - i), -1).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(parts)


def feature_frechet_distance(x: Tensor, ref_x: Tensor,
                             features_fn: Callable[[Tensor], Tensor], *,
                             batch_size: int = 500) -> float:
    """Frechet distance between the Gaussian fits of ``features_fn(x)`` and
    ``features_fn(ref_x)`` (FID with ``features_fn`` as the feature extractor)."""
    fa = batched_features(x, features_fn, batch_size=batch_size)
    fb = batched_features(ref_x, features_fn, batch_size=batch_size)
    return frechet_distance(*sample_moments(fa), *sample_moments(fb))


def _polynomial_mmd2(a: Tensor, b: Tensor) -> float:
    d = a.shape[1]
    kaa = (a @ a.T / d + 1.0) ** 3
    kbb = (b @ b.T / d + 1.0) ** 3
    kab = (a @ b.T / d + 1.0) ** 3
    m, n = a.shape[0], b.shape[0]
    saa = (kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1))
    sbb = (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
    return float(saa + sbb - 2.0 * kab.mean())


def kernel_distance(feat_a: Tensor, feat_b: Tensor, *, subsets: int | None = None,
                    subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel (KID; Binkowski et al. 2018).

    k(a, b) = (a.b / d + 1)^3 with d the feature dimension; the estimator excludes the
    diagonal terms k(a_i, a_i), k(b_j, b_j), so it is unbiased and may be slightly negative.

    Args:
        feat_a, feat_b: feature sets (M, ...) and (N, ...), flattened to (M, d), (N, d);
            they may differ in size.
        subsets: if given, the mean over this many random pairs of subsets of
            ``min(subset_size, M, N)`` rows each (the usual KID protocol for large sets);
            by default one estimate on the full sets.
        seed: seed of the subset draws.
    """
    a = feat_a.detach().double().reshape(feat_a.shape[0], -1).cpu()
    b = feat_b.detach().double().reshape(feat_b.shape[0], -1).cpu()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("need at least 2 samples in each set")
    if subsets is None:
        return _polynomial_mmd2(a, b)
    size = min(subset_size, a.shape[0], b.shape[0])
    g = torch.Generator().manual_seed(seed)
    values = [_polynomial_mmd2(a[torch.randperm(a.shape[0], generator=g)[:size]],
                               b[torch.randperm(b.shape[0], generator=g)[:size]])
              for _ in range(subsets)]
    return float(sum(values) / len(values))


def _flat64(x: Tensor) -> Tensor:
    return x.detach().to(device="cpu", dtype=torch.float64).reshape(x.shape[0], -1)


def median_distance(x: Tensor, *, max_points: int = 2000) -> float:
    """Median pairwise Euclidean distance of the first ``max_points`` rows of x."""
    a = _flat64(x)[:max_points]
    d = torch.cdist(a, a)
    iu = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    return float(d[iu[0], iu[1]].median())


MMD_SCALES: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)


def mmd_multiscale(x: Tensor, y: Tensor, *, bandwidths: tuple[float, ...] | None = None,
                   max_points: int = 3000) -> float:
    """Unbiased MMD^2 between sample sets x and y (first ``max_points`` rows of each) with the
    kernel sum_s exp(-|a - b|^2 / (2 s^2)); ``bandwidths`` default to :data:`MMD_SCALES`
    times the median pairwise distance of y. May be slightly negative (unbiased)."""
    a, b = _flat64(x)[:max_points], _flat64(y)[:max_points]
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("need at least 2 samples in each set")
    if not torch.isfinite(a).all():
        return math.nan
    if bandwidths is None:
        med = median_distance(b)
        bandwidths = tuple(f * med for f in MMD_SCALES)
    daa, dbb, dab = torch.cdist(a, a).square_(), torch.cdist(b, b).square_(), \
        torch.cdist(a, b).square_()
    m, n = a.shape[0], b.shape[0]
    total = 0.0
    for s in bandwidths:
        g = -0.5 / (s * s)
        kaa, kbb, kab = (daa * g).exp_(), (dbb * g).exp_(), (dab * g).exp_()
        total += float((kaa.sum() - m) / (m * (m - 1)) + (kbb.sum() - n) / (n * (n - 1))
                       - 2.0 * kab.mean())
    return total


def _knn_radius(f: Tensor, k: int) -> Tensor:
    d = torch.cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # k+1: the point itself is at distance 0


def precision_recall(fake: Tensor, real: Tensor, *, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019) of feature sets fake (M, F) and
    real (N, F) with k-NN radii (default k = 3, the paper's)."""
    a, b = _flat64(fake), _flat64(real)
    if a.shape[0] <= k or b.shape[0] <= k:
        raise ValueError(f"need more than k = {k} samples in each set")
    ra, rb = _knn_radius(a, k), _knn_radius(b, k)
    dab = torch.cdist(a, b)  # (M, N)
    precision = float((dab <= rb[None, :]).any(dim=1).double().mean())
    recall = float((dab <= ra[:, None]).any(dim=0).double().mean())
    return {"precision": precision, "recall": recall}


def ode_error(x: Tensor, x_ref: Tensor) -> float:
    """RMS error sqrt(mean((x - x_ref)^2)) over all entries, in float64, between final
    samples and a reference solution from the same initial noise."""
    if x.shape != x_ref.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} and {tuple(x_ref.shape)}")
    diff = x.detach().double().cpu() - x_ref.detach().double().cpu()
    return float(diff.pow(2).mean().sqrt())

"""Metrics on cases with known answers."""

from __future__ import annotations

import math

import torch

from diffsolve.bench.metrics import (
    frechet_distance,
    moment_frechet_distance,
    sample_moments,
    sliced_wasserstein,
)


def _spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_identical_is_zero():
    c = _spd(5, 0)
    mu = torch.arange(5, dtype=torch.float64)
    assert abs(frechet_distance(mu, c, mu, c)) < 1e-10


def test_frechet_shift_and_scale_closed_forms():
    c = _spd(4, 1)
    mu = torch.zeros(4, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    assert math.isclose(frechet_distance(mu, c, mu + shift, c), float(shift @ shift), rel_tol=1e-9)
    # C2 = s^2 C1  =>  FD = Tr(C1) (1 - s)^2
    s = 1.7
    expected = float(torch.trace(c)) * (1 - s) ** 2
    assert math.isclose(frechet_distance(mu, c, mu, s * s * c), expected, rel_tol=1e-9)


def test_frechet_diagonal_closed_form():
    v1 = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    v2 = torch.tensor([2.0, 1.0, 0.25], dtype=torch.float64)
    expected = float(((v1.sqrt() - v2.sqrt()) ** 2).sum())
    z = torch.zeros(3, dtype=torch.float64)
    assert math.isclose(frechet_distance(z, torch.diag(v1), z, torch.diag(v2)), expected,
                        rel_tol=1e-10)


def test_moment_fd_of_exact_samples_shrinks_with_n():
    g = torch.Generator().manual_seed(0)
    mean, cov = torch.tensor([1.0, -1.0], dtype=torch.float64), _spd(2, 3)
    chol = torch.linalg.cholesky(cov)
    fds = []
    for n in (1000, 100000):
        x = mean + torch.randn(n, 2, dtype=torch.float64, generator=g) @ chol.T
        fds.append(moment_frechet_distance(x, mean, cov))
    assert fds[1] < fds[0] and fds[1] < 1e-3
    mu, c = sample_moments(torch.randn(10, 3))
    assert mu.shape == (3,) and c.shape == (3, 3)


def test_sliced_wasserstein_known_cases():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 3, dtype=torch.float64, generator=g)
    assert sliced_wasserstein(x, x) == 0.0
    # a shift by a along one axis: W1 of the projection is |a u_1|, averaged over directions
    shifted = x + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, shifted, projections=4096)
    # E|u_1| for u uniform on the 2-sphere is 1/2
    assert abs(sw - 2.0 * 0.5) < 0.05

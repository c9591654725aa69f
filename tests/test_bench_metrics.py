"""Metrics on cases with known answers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffsolve.bench.metrics import (
    batched_features,
    feature_frechet_distance,
    frechet_distance,
    kernel_distance,
    moment_frechet_distance,
    ode_error,
    pixel_frechet_distance,
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
    x = torch.randn(2000, 3, dtype=torch.float64, generator=g)
    assert sliced_wasserstein(x, x) == 0.0
    # a shift by a along one axis: W1 of the projection is |a u_1|, averaged over directions
    shifted = x + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, shifted, projections=1024)
    # E|u_1| for u uniform on the 2-sphere is 1/2
    assert abs(sw - 2.0 * 0.5) < 0.05


# --- feature-space, kernel and ODE-error metrics ------------------------------------------


def _kid_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased MMD^2 with sklearn's polynomial kernel (degree 3, gamma 1/d, coef0 1)."""
    from sklearn.metrics.pairwise import polynomial_kernel

    an, bn = a.numpy(), b.numpy()
    d = an.shape[1]
    kaa = polynomial_kernel(an, an, degree=3, gamma=1.0 / d, coef0=1.0)
    kbb = polynomial_kernel(bn, bn, degree=3, gamma=1.0 / d, coef0=1.0)
    kab = polynomial_kernel(an, bn, degree=3, gamma=1.0 / d, coef0=1.0)
    m, n = len(an), len(bn)
    return float((kaa.sum() - kaa.trace()) / (m * (m - 1))
                 + (kbb.sum() - kbb.trace()) / (n * (n - 1)) - 2 * kab.mean())


def test_kernel_distance_matches_direct_formula():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(300, 16, dtype=torch.float64, generator=g)
    b = 0.8 * torch.randn(250, 16, dtype=torch.float64, generator=g) + 0.3
    assert math.isclose(kernel_distance(a, b), _kid_reference(a, b), rel_tol=1e-9)
    assert math.isclose(kernel_distance(a, b), kernel_distance(b, a), rel_tol=1e-12)


def test_kernel_distance_identical_near_zero_and_grows_with_shift():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1000, 8, dtype=torch.float64, generator=g)
    b = torch.randn(1000, 8, dtype=torch.float64, generator=g)
    shifts = [0.25, 0.5, 1.0, 2.0]
    values = [kernel_distance(a, b + s) for s in shifts]
    # identical sets and independent draws of one distribution: |unbiased estimate| small
    assert abs(kernel_distance(a, a)) < 0.1 * values[0]
    assert abs(kernel_distance(a, b)) < 0.05 * values[0]
    assert all(v > 0 for v in values)
    assert all(v2 > v1 for v1, v2 in itertools.pairwise(values))
    # the subset protocol estimates the same quantity
    sub = kernel_distance(a, b + 1.0, subsets=10, subset_size=500)
    assert math.isclose(sub, values[2], rel_tol=0.2)


def test_pixel_fd_is_frechet_distance_of_moments():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(500, 1, 3, 3, generator=g)
    y = 1.5 * torch.randn(400, 1, 3, 3, generator=g) + 0.2
    expected = frechet_distance(*sample_moments(x), *sample_moments(y))
    assert math.isclose(pixel_frechet_distance(x, y), expected, rel_tol=1e-12)
    assert abs(pixel_frechet_distance(x, x)) < 1e-9


def test_feature_fd_with_linear_features_is_fd_of_mapped_moments():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, dtype=torch.float64, generator=g)
    x = torch.randn(700, 6, dtype=torch.float64, generator=g)
    y = torch.randn(900, 6, dtype=torch.float64, generator=g) + 0.5

    def feats(t: torch.Tensor) -> torch.Tensor:
        return t @ w

    mx, cx = sample_moments(x)
    my, cy = sample_moments(y)
    expected = frechet_distance(mx @ w, w.T @ cx @ w, my @ w, w.T @ cy @ w)
    assert math.isclose(feature_frechet_distance(x, y, feats, batch_size=128), expected,
                        rel_tol=1e-9)
    assert batched_features(x, feats, batch_size=64).shape == (700, 4)
    assert feature_frechet_distance(x, x, feats) < 1e-9


def test_digits_classifier_feature_metrics_separate_noise_from_digits():
    from diffsolve.zoo.classifier import load_classifier
    from diffsolve.zoo.data import load_digits_split

    clf = load_classifier()
    train, _ = load_digits_split("train")
    test, _ = load_digits_split("test")
    noise = torch.rand(297, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    fd_real = feature_frechet_distance(test, train, clf.features)
    fd_noise = feature_frechet_distance(noise, train, clf.features)
    assert 0 < fd_real < 0.2 * fd_noise
    f_train = batched_features(train, clf.features)
    kid_real = kernel_distance(batched_features(test, clf.features), f_train)
    kid_noise = kernel_distance(batched_features(noise, clf.features), f_train)
    assert abs(kid_real) < 0.05 * kid_noise


def test_ode_error_rms():
    x = torch.zeros(4, 2, 2)
    y = torch.full((4, 2, 2), 3.0)
    assert ode_error(x, y) == 3.0
    y[0] = 0.0  # a quarter of entries differ by 0, the rest by 3: RMS = 3 sqrt(3/4)
    assert math.isclose(ode_error(x, y), 3.0 * math.sqrt(0.75), rel_tol=1e-12)
    assert ode_error(y, y) == 0.0
    with pytest.raises(ValueError, match="shape mismatch"):
        ode_error(x, y[:2])


# --- error bars and solver specs ------------------------------------------------------------


def test_mean_ci_is_the_student_t_interval():
    from diffsolve.bench.stats import better, mean_ci, separated

    ci = mean_ci([1.0, 2.0, 3.0, None, float("nan")])
    # mean 2, sd 1, n 3: half-width t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051
    assert ci["n"] == 3 and ci["mean"] == 2.0 and ci["sd"] == 1.0
    assert math.isclose(ci["ci95"], 4.302652729911275 / math.sqrt(3), rel_tol=1e-9)
    assert mean_ci([None]) is None and math.isinf(mean_ci([1.0])["ci95"])
    lo, hi = mean_ci([1.0, 1.1, 0.9]), mean_ci([2.0, 2.1, 1.9])
    assert separated(lo, hi) and better(lo, hi, True) and not better(lo, hi, False)
    assert not separated(lo, mean_ci([1.0, 3.0, 2.0]))


def test_solver_spec_parsing():
    from diffsolve.bench.solver_spec import build, parse
    from diffsolve.errors import SolverOptionError

    assert parse("seeds_3[prediction=noise]") == ("seeds_3", {"prediction": "noise"})
    assert parse("seeds_2[r=0.7;solver_type=phi_2]") == ("seeds_2", {"r": 0.7,
                                                                     "solver_type": "phi_2"})
    assert build("seeds_3[prediction=noise]").prediction == "noise"
    with pytest.raises(SolverOptionError, match="malformed"):
        parse("seeds_3[prediction]")
    with pytest.raises(SolverOptionError, match="malformed"):
        parse("seeds 3")

"""Known answers for the mode-sensitive metrics: exact samples sit at the Monte Carlo floor,
and modes 10 % wider, a dropped mode and a shifted mode are each detected far above it by the
metrics meant to see them (and the moment Frechet distance is shown blind to wider modes, the
reason these metrics exist). The full table (more draws, every metric x perturbation) is
benchmarks/known_answer.py -> docs/bench/known_answer/known_answer.md.

Rule: a perturbation is detected when its value lies more than DETECT = 4 floor standard
deviations from the floor's mean (floor: FLOOR_DRAWS exact draws of the same size); exact
samples must lie within AT_FLOOR = 3 standard deviations. The measured z-scores at n = 3000
with these seeds are written next to each case (smallest detected: 6.6, i.e. >= 1.65x the
bound; largest exact: 1.1, i.e. <= 0.4x the bound).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from diffsolve.bench.density_metrics import (
    grid_divergences,
    log_density_gap,
    mixture_metrics,
    mode_resolved,
)
from diffsolve.bench.metrics import mmd_multiscale, moment_frechet_distance, precision_recall
from diffsolve.zoo import GaussianMixture

N = 3000
FLOOR_DRAWS = 4
DETECT = 4.0
AT_FLOOR = 3.0

_GMM = GaussianMixture.default_2d()
_REF = _GMM.sample(N, torch.Generator().manual_seed(999))


def _perturbed(kind: str) -> GaussianMixture:
    """exact / wider (std x 1.1) / dropped (lightest mode) / shifted (heaviest mode by half a
    standard deviation along its principal axis): benchmarks/known_answer.perturbations."""
    w, mu, c = _GMM.weights, _GMM.means, _GMM.covs
    if kind == "wider":
        return GaussianMixture(w, mu, 1.21 * c)
    if kind == "dropped":
        keep = [k for k in range(len(w)) if k != int(torch.argmin(w))]
        return GaussianMixture(w[keep], mu[keep], c[keep])
    if kind == "shifted":
        heavy = int(torch.argmax(w))
        vals, vecs = torch.linalg.eigh(c[heavy])
        mu = mu.clone()
        mu[heavy] += 0.5 * vals[-1].sqrt() * vecs[:, -1]
        return GaussianMixture(w, mu, c)
    return _GMM


def _metrics(x: torch.Tensor) -> dict[str, float]:
    m = {k: v for k, v in mixture_metrics(_GMM)(x).items() if isinstance(v, float)}
    m["mmd"] = mmd_multiscale(x, _REF)
    m["fd"] = moment_frechet_distance(x, _GMM.mean, _GMM.cov)
    return m


_CACHE: dict[str, dict[str, float]] = {}


def _values(kind: str, seed: int) -> dict[str, float]:
    key = f"{kind}/{seed}"
    if key not in _CACHE:
        x = _perturbed(kind).sample(N, torch.Generator().manual_seed(seed))
        _CACHE[key] = _metrics(x)
    return _CACHE[key]


def _z(metric: str, kind: str, seed: int = 77) -> float:
    floor = [_values("exact", 1000 + r)[metric] for r in range(FLOOR_DRAWS)]
    return (_values(kind, seed)[metric] - statistics.mean(floor)) / statistics.stdev(floor)


# (metric, perturbation) pairs each metric detects, with the measured z at n = 3000
DETECTS = [("mode_kl", "wider"),  # z 30
           ("mode_kl", "dropped"),  # z 101
           ("mode_kl", "shifted"),  # z 28
           ("grid_kl", "wider"),  # z 6.6
           ("grid_kl", "dropped"),  # z 9.2
           ("ll_gap", "wider"),  # z -8.6
           ("var_ratio", "wider"),  # z 7.8
           ("weight_tv", "dropped"),  # z 25
           ("mean_err", "shifted"),  # z 7.0
           ("mmd", "dropped"),  # z 33
           ("mmd", "shifted")]  # z 6.6
# blind spots (kept visible; see docs/bench/known_answer): the log-density gap does not see
# a dropped or shifted mode, the grid KL a half-sigma shift (z 4.1), and the MMD and the
# moment FD 10 % wider modes (z -0.3 and -0.6)


@pytest.mark.parametrize(("metric", "kind"), DETECTS)
def test_perturbation_detected_far_above_floor(metric, kind):
    z = _z(metric, kind)
    assert abs(z) > DETECT, f"{metric} on {kind}: z = {z:.1f}"


@pytest.mark.parametrize("metric", ["mode_kl", "grid_kl", "ll_gap", "var_ratio", "weight_tv",
                                    "mean_err", "mmd", "fd"])
def test_exact_samples_sit_at_the_floor(metric):
    z = _z(metric, "exact", seed=4242)
    assert abs(z) < AT_FLOOR, f"{metric}: exact samples at z = {z:.1f}"


def test_moment_frechet_distance_and_mmd_are_blind_to_wider_modes():
    """The motivating failure: 10 % wider modes move the exact-moment FD and the multi-scale
    MMD by less than their own floor scatter (z -0.6 and -0.3), while the log-density gap
    moves by many standard deviations (z -8.6)."""
    assert abs(_z("fd", "wider")) < 2.0 and abs(_z("mmd", "wider")) < 2.0
    assert abs(_z("ll_gap", "wider")) > DETECT


def test_log_density_gap_signs_and_standard_error():
    """Wider modes lower the mean log-density (negative gap), narrower ones raise it; the
    stated standard error matches the scatter of the gap over exact draws within 2x."""
    wide = log_density_gap(_perturbed("wider").sample(N, torch.Generator().manual_seed(5)),
                           _GMM)
    narrow_mix = GaussianMixture(_GMM.weights, _GMM.means, _GMM.covs / 1.21)
    narrow = log_density_gap(narrow_mix.sample(N, torch.Generator().manual_seed(5)), _GMM)
    assert wide["ll_gap"] < -5 * wide["ll_gap_se"] and narrow["ll_gap"] > 5 * narrow["ll_gap_se"]
    gaps = [_values("exact", 1000 + r)["ll_gap"] for r in range(FLOOR_DRAWS)]
    se = log_density_gap(_GMM.sample(N, torch.Generator().manual_seed(1000)), _GMM)["ll_gap_se"]
    assert 0.5 < statistics.stdev(gaps) / se < 2.0


def test_mode_resolved_recovers_parameters_and_flags_a_missing_mode():
    x = _GMM.sample(200_000, torch.Generator().manual_seed(3))
    m = mode_resolved(x, _GMM)
    w_hat = torch.tensor([p["weight"] for p in m["per_component"]], dtype=torch.float64)
    torch.testing.assert_close(w_hat, _GMM.weights, atol=4e-3, rtol=0)
    assert abs(m["var_ratio"] - 1) < 0.01 and m["missing_modes"] == 0
    dropped = mode_resolved(_perturbed("dropped").sample(N, torch.Generator().manual_seed(3)),
                            _GMM)
    assert dropped["missing_modes"] == 1
    # 10 % wider standard deviations: variance ratio 1.21 recovered per mode
    wide = mode_resolved(_perturbed("wider").sample(200_000, torch.Generator().manual_seed(4)),
                         _GMM)
    assert abs(wide["var_ratio"] - 1.21) < 0.02
    # fewer samples than any mode's covariance needs: every mode missing, no division by 0
    few = mode_resolved(_GMM.sample(2, torch.Generator().manual_seed(5)), _GMM)
    assert few["missing_modes"] == _GMM.n_components and few["mode_kl"] == math.inf
    assert math.isnan(few["var_ratio"]) and math.isnan(few["mean_err"])


def test_grid_divergences_of_exact_cell_probabilities_are_zero():
    """A sample set whose histogram equals the exact cell probabilities has TV = KL = 0 up to
    the histogram's 1/n quantisation: checked with a huge exact sample."""
    x = _GMM.sample(2_000_000, torch.Generator().manual_seed(8))
    g = grid_divergences(x, _GMM)
    assert g["grid_tv"] < 0.01 and g["grid_kl"] < 1e-3
    with pytest.raises(ValueError, match="2-D"):
        grid_divergences(torch.zeros(5, 3), GaussianMixture.random(3, 2))


def test_metrics_return_nan_for_non_finite_samples():
    x = _GMM.sample(50, torch.Generator().manual_seed(1))
    x[3, 0] = math.nan
    assert math.isnan(log_density_gap(x, _GMM)["ll_gap"])
    assert math.isnan(mode_resolved(x, _GMM)["mode_kl"])
    assert math.isnan(mmd_multiscale(x, _REF))


def test_mmd_identical_sets_and_known_shift():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1500, 2, dtype=torch.float64, generator=g)
    b = torch.randn(1500, 2, dtype=torch.float64, generator=g)
    small = mmd_multiscale(a, b)
    big = mmd_multiscale(a + torch.tensor([1.0, 0.0], dtype=torch.float64), b)
    assert abs(small) < 0.02 * big and big > 0
    # with one bandwidth the population MMD^2 of N(0, I) vs N(d, I) in 2-D is closed form:
    # 2 (s^2/(s^2+2))^{d/2... } -> 2 s^2/(s^2 + 2) (1 - exp(-|d|^2 / (2 (s^2 + 2))))
    s = 1.0
    expected = 2 * s * s / (s * s + 2) * (1 - math.exp(-1.0 / (2 * (s * s + 2))))
    x = torch.randn(4000, 2, dtype=torch.float64, generator=g)
    y = torch.randn(4000, 2, dtype=torch.float64, generator=g)
    got = mmd_multiscale(x + torch.tensor([1.0, 0.0], dtype=torch.float64), y,
                         bandwidths=(s,), max_points=4000)
    assert got == pytest.approx(expected, rel=0.15)


def test_precision_recall_tell_off_manifold_from_missing_modes():
    """Two clusters: samples of only one cluster keep precision ~1 and halve recall (missing
    mode); samples spread off the clusters keep recall but lose precision (off manifold)."""
    g = torch.Generator().manual_seed(6)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)

    def clusters(n, which=(0, 1), scale=1.0):
        idx = torch.tensor(which)[torch.randint(0, len(which), (n,), generator=g)]
        return centres[idx] + scale * torch.randn(n, 2, dtype=torch.float64, generator=g)

    real = clusters(600)
    same = precision_recall(clusters(600), real)
    one_mode = precision_recall(clusters(600, which=(0,)), real)
    spread = precision_recall(clusters(600, scale=3.0), real)
    assert same["precision"] > 0.9 and same["recall"] > 0.9
    assert one_mode["precision"] > 0.9 and one_mode["recall"] < 0.6
    assert spread["precision"] < 0.6 and spread["recall"] > 0.9


def test_digits_precision_recall_known_answers():
    """Held-out real digits sit near the top; blurred digits (too smooth) lose precision;
    digits without the classes 0-2 (missing modes) lose recall."""
    from diffsolve.bench.digits_metrics import DigitsScorer

    sc = DigitsScorer()
    exact = sc.evaluate(sc.real_perturbed("exact", 600, seed=0))
    blurred = sc.evaluate(sc.real_perturbed("blurred", 600, seed=0))
    dropped = sc.evaluate(sc.real_perturbed("dropped", 600, seed=0))
    assert exact["precision"] > 0.7 and exact["recall"] > 0.7
    assert blurred["precision"] < exact["precision"] - 0.2
    assert dropped["recall"] < exact["recall"] - 0.15
    assert dropped["precision"] > exact["precision"] - 0.1


def test_digits_floor_is_held_out_and_not_zero_beyond_the_data_size():
    """The old floor compared the reference digits with themselves (0 at n >= 1797). The
    floor now draws from the held-out half, by bootstrap beyond its size, and stays > 0."""
    from diffsolve.bench.digits_metrics import DigitsScorer

    sc = DigitsScorer()
    ref = {tuple(r.flatten().tolist()) for r in sc.ref_x}
    held = {tuple(r.flatten().tolist()) for r in sc.held_x}
    assert sc.ref_x.shape[0] + sc.held_x.shape[0] == 1797
    assert len(held - ref) > 0.95 * len(held)  # (a few digits are pixel-identical duplicates)
    x, how = sc.held_out(2000, seed=0)
    assert x.shape[0] == 2000 and "bootstrap" in how
    floor = sc.evaluate(x)
    assert floor["feature_fd"] > 0.05 and floor["pixel_fd"] > 0.05

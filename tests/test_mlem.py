"""Multilevel Euler-Maruyama (diffsolve.mlem): exponents, unbiasedness, counts, costs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffsolve import solve
from diffsolve.bench.mlem_experiments import gaussian_exact_cost_accuracy, synthetic_gmm_levels
from diffsolve.drivers.mlem import (
    Level,
    expected_cost_per_sample,
    fit_exponent,
    fit_gamma,
    level_errors,
    level_probabilities,
    mlem_solve,
    multilevel_data,
)
from diffsolve.errors import SolverOptionError
from diffsolve.grids import make_grid


@pytest.fixture(scope="module")
def synth():
    gmm, levels, eps = synthetic_gmm_levels(4, 3.0, eps_top=0.05)
    return gmm, levels, eps


# --- cost-to-accuracy exponents on the analytic Gaussian (exact moments, no Monte Carlo) ----

@pytest.mark.parametrize("gamma", [2.5, 3.0])
def test_exponents_exact_moment_fd(gamma):
    """sqrt(exact-moment FD) against cost: EM ~ gamma + 1, ML-EM ~ gamma (within 0.3)."""
    r = gaussian_exact_cost_accuracy(gamma, n_levels=8, base_steps=4, top_evals=2.0)
    assert abs(r["beta_em_fd"] - (gamma + 1.0)) < 0.3, r["beta_em_fd"]
    assert abs(r["beta_mlem_fd"] - gamma) < 0.3, r["beta_mlem_fd"]
    # the pathwise (strong) error: EM exact, ML-EM clearly below EM (pre-asymptotic, see docs)
    assert abs(r["beta_em"] - (gamma + 1.0)) < 0.3, r["beta_em"]
    assert r["beta_mlem"] < r["beta_em"] - 0.5
    # and the cost advantage at the finest target is large
    last = r["rows"][-1]
    assert last["em"]["cost"] / last["mlem"]["cost"] > 50


def test_exact_moments_all_levels_one_is_em():
    """With every p_l = 1 the ML-EM moments equal EM with the top level (telescoping)."""
    r = gaussian_exact_cost_accuracy(3.0, n_levels=3, base_steps=4, top_evals=1e9,
                                     targets=[3])
    row = r["rows"][0]
    assert row["probs"] == [1.0, 1.0, 1.0]
    assert row["mlem"]["strong"] == pytest.approx(row["em"]["strong"], rel=1e-9)
    assert row["mlem"]["fd"] == pytest.approx(row["em"]["fd"], rel=1e-9)


def test_fit_exponent_and_gamma_recover_known_laws():
    costs = [1.0, 8.0, 64.0, 512.0]
    errs = [c ** (-1 / 2.7) * 0.3 for c in costs]
    g, a = fit_gamma(costs, errs)
    assert g == pytest.approx(2.7, rel=1e-9) and a == pytest.approx(0.3, rel=1e-9)
    assert fit_exponent(costs, errs) == pytest.approx(2.7, rel=1e-9)


# --- the estimator -----------------------------------------------------------------------

def _point(model, sigma=1.3):
    return model.schedule.point(-math.log(sigma))


def test_estimator_exactly_unbiased_nested(synth):
    """E over the nested uniform of Dhat equals D^k exactly: integrate piecewise in u."""
    _, levels, _ = synth
    probs = (1.0, 0.6, 0.25, 0.05)
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = _point(levels[-1].model)
    cuts = sorted({0.0, *probs})
    mean = torch.zeros_like(x)
    for lo, hi in itertools.pairwise(cuts):
        u = torch.full((4, 7), 0.5 * (lo + hi), dtype=torch.float64)
        mean += (hi - lo) * multilevel_data(levels, probs, x, p, u, [0] * 4)
    top = levels[-1].model.data(x, p)
    torch.testing.assert_close(mean, top, rtol=1e-10, atol=1e-12)
    # a single draw is not D^k (the test can fail: the randomisation is real)
    one = multilevel_data(levels, probs, x, p, torch.full((4, 7), 0.55, dtype=torch.float64),
                          [0] * 4)
    assert (one - top).abs().max() > 1e-3


def test_estimator_exactly_unbiased_independent(synth):
    """Independent Bernoulli per level: sum over all 2^k patterns with their probabilities."""
    _, levels, _ = synth
    probs = (0.9, 0.5, 0.3, 0.2)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = _point(levels[-1].model, 4.0)
    mean = torch.zeros_like(x)
    for pattern in itertools.product((0, 1), repeat=4):
        w = math.prod(pr if b else 1 - pr for b, pr in zip(pattern, probs, strict=True))
        u = torch.tensor([[0.0 if b else 0.999] for b in pattern],
                         dtype=torch.float64).expand(4, 5)
        mean += w * multilevel_data(levels, probs, x, p, u, [0] * 4)
    torch.testing.assert_close(mean, levels[-1].model.data(x, p), rtol=1e-10, atol=1e-12)


def test_estimator_monte_carlo_mean(synth):
    """The sampled per-sample draws average to D^k within 5 standard errors."""
    _, levels, _ = synth
    probs = level_probabilities([lv.cost for lv in levels], 10, top_evals=1.0, gamma=3.0)
    x = torch.full((20000, 2), 0.7, dtype=torch.float64)
    p = _point(levels[-1].model, 2.0)
    g = torch.Generator().manual_seed(5)
    u = torch.rand(1, 20000, generator=g, dtype=torch.float64).expand(4, 20000)
    d = multilevel_data(levels, probs, x, p, u, [0] * 4)
    top = levels[-1].model.data(x[:1], p)[0]
    se = d.std(0) / math.sqrt(d.shape[0])
    assert ((d.mean(0) - top).abs() < 5 * se + 1e-12).all()


# --- the sampler: counts, costs, equivalence with EM --------------------------------------

def test_all_probabilities_one_equals_euler_maruyama(synth):
    _, levels, _ = synth
    top = levels[-1].model
    grid = make_grid("karras", 12, top.schedule)
    x = 80.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = mlem_solve(levels, x, grid, probs=(1, 1, 1, 1), seed=4)
    e = solve(top, x, grid, "euler_maruyama", seed=4, progress=False)
    torch.testing.assert_close(r.x, e.x, rtol=1e-9, atol=1e-9)
    assert r.cost.evals == [11 * 64, 11 * 64, 11 * 64, 12 * 64]
    assert r.cost.total == pytest.approx(64 * (11 * sum(lv.cost for lv in levels)
                                               + levels[-1].cost))


@pytest.mark.parametrize("coupling", ["nested", "independent"])
def test_evaluation_counts_match_schedule(synth, coupling):
    _, levels, _ = synth
    top = levels[-1].model
    steps, b = 41, 400
    grid = make_grid("karras", steps, top.schedule)
    n_em = steps - 1
    probs = (1.0, 0.5, 0.2, 0.05)
    x = 80.0 * torch.randn(b, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = mlem_solve(levels, x, grid, probs=probs, coupling=coupling, seed=0)
    for j in range(4):
        if coupling == "nested" or j == 3:
            q = probs[j]
        else:
            q = 1 - (1 - probs[j]) * (1 - probs[j + 1])
        n = n_em * b
        got = r.cost.evals[j] - (b if j == 3 else 0)
        assert abs(got - n * q) <= 5 * math.sqrt(n * q * (1 - q)) + 1e-9, (j, got, n * q)
    assert r.cost.evals[0] == n_em * b  # p_1 = 1: level 1 at every step, exactly
    assert r.cost.final_evals == b
    assert r.cost.total == pytest.approx(sum(e * lv.cost for e, lv in
                                             zip(r.cost.evals, levels, strict=True)))
    exp = expected_cost_per_sample([lv.cost for lv in levels], probs, n_em, coupling)
    assert r.cost.per_sample == pytest.approx(exp, rel=0.1)


def test_batch_shared_draws(synth):
    _, levels, _ = synth
    grid = make_grid("karras", 21, levels[-1].model.schedule)
    x = 80.0 * torch.randn(32, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = mlem_solve(levels, x, grid, probs=(1.0, 0.5, 0.3, 0.1), per_sample=False, seed=1)
    assert all(e % 32 == 0 for e in r.cost.evals)
    assert torch.isfinite(r.x).all()


def test_deterministic_given_seeds(synth):
    _, levels, _ = synth
    grid = make_grid("karras", 16, levels[-1].model.schedule)
    x = 80.0 * torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    probs = (1.0, 0.5, 0.3, 0.1)
    a = mlem_solve(levels, x, grid, probs=probs, seed=1, draw_seed=7)
    b = mlem_solve(levels, x, grid, probs=probs, seed=1, draw_seed=7)
    c = mlem_solve(levels, x, grid, probs=probs, seed=1, draw_seed=8)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert not torch.equal(a.x, c.x)


def test_level_probabilities_rule():
    costs = [1.0, 8.0, 64.0, 512.0]
    p = level_probabilities(costs, 100, top_evals=2.0, gamma=3.0)
    assert p[0] == 1.0 and p[-1] == pytest.approx(0.02)
    assert all(a >= b for a, b in itertools.pairwise(p))
    # p_l proportional to delta_l / sqrt(c_l) where unclipped (delta_l = c_{l-1}^(-1/3))
    w = [c0 ** (-1 / 3) / math.sqrt(c1) for c0, c1 in itertools.pairwise(costs)]
    assert p[2] / p[3] == pytest.approx(w[1] / w[2])
    q = level_probabilities(costs, 100, top_evals=2.0, diff_norms=[1.0, 0.5, 0.25, 0.125])
    assert q[2] / q[3] == pytest.approx((0.25 / 8) / (0.125 / math.sqrt(512)))
    with pytest.raises(SolverOptionError):
        level_probabilities(costs, 100)  # neither gamma nor diff_norms
    with pytest.raises(SolverOptionError):
        level_probabilities([1.0, -2.0], 10, gamma=3.0)


def test_bad_options(synth):
    _, levels, _ = synth
    grid = make_grid("karras", 5, levels[-1].model.schedule)
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(SolverOptionError):
        mlem_solve(levels, x, grid, probs=(1.0, 0.5))
    with pytest.raises(SolverOptionError):
        mlem_solve(levels, x, grid, probs=(1.0, 0.0, 0.5, 0.1))
    with pytest.raises(SolverOptionError):
        mlem_solve(levels, x, grid, probs=(1.0, 0.2, 0.5, 0.1))  # nested needs decreasing
    with pytest.raises(SolverOptionError):
        mlem_solve(levels, x, grid, probs=(1, 1, 1, 1), coupling="bogus")


# --- gamma measurement ------------------------------------------------------------------------

def test_level_errors_recover_synthetic_gamma():
    """level_errors + fit_gamma on synthetic levels with eps ~ cost^(-1/gamma) give gamma."""
    gmm, levels, _ = synthetic_gmm_levels(4, 2.5, eps_top=0.02)
    exact = gmm.denoiser(levels[-1].model.schedule)
    x0 = gmm.sample(300, generator=torch.Generator().manual_seed(0))
    res = level_errors([lv.model for lv in levels], exact, x0, n_sigmas=6)
    g, _ = fit_gamma([lv.cost for lv in levels], res["errors"])
    assert g == pytest.approx(2.5, abs=0.05)
    # level differences scale with eps_{l-1} - eps_l = eps_l here
    ratios = [res["diff_norms"][j] / res["errors"][j] for j in range(1, 4)]
    assert all(r == pytest.approx(1.0, rel=0.05) for r in ratios)


def test_shipped_hierarchy_cards():
    from diffsolve.zoo.hierarchy import flops_per_call, load_hierarchy, member_names
    from diffsolve.zoo.pretrained import load_net

    for fam in ("digits", "moons"):
        names = member_names(fam)
        models = load_hierarchy(fam)
        flops = [m.card["flops_per_call"] for m in models]
        assert all(a < b for a, b in itertools.pairwise(flops)), flops
        net, card = load_net(names[-1])
        assert flops_per_call(net, card["shape"]) == flops[-1]
        assert [m.card["hierarchy"]["width"] for m in models] == [
            int(n.rsplit("w", 1)[1]) for n in names]


def test_level_type():
    with pytest.raises(TypeError):
        Level()  # type: ignore[call-arg]

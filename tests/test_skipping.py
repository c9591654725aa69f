"""Model-call skipping (diffsolve.drivers.skipping): honest NFE count, guard rails, quality."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

import diffsolve
from diffsolve.core.errors import SolverOptionError
from diffsolve.core.expint import lagrange_weights
from diffsolve.drivers.skipping import SkipPolicy, sample_skipping
from diffsolve.schedules import EDM
from diffsolve.zoo import GaussianMixture

SHAPE = (256, 2)


@pytest.fixture(scope="module")
def model():
    return GaussianMixture.default_2d().denoiser(EDM(0.002, 80.0))


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def test_lagrange_weights_extrapolate_a_quadratic_exactly():
    nodes = [0.3, 1.1, 2.0]
    w = lagrange_weights(nodes, 3.7)
    f = [1.5 - 2 * t + 0.25 * t * t for t in nodes]
    assert sum(wi * fi for wi, fi in zip(w, f, strict=True)) == pytest.approx(
        1.5 - 2 * 3.7 + 0.25 * 3.7 ** 2, rel=1e-12)
    assert lagrange_weights([0.0, 1.0], 0.0) == [1.0, 0.0]
    with pytest.raises(ValueError):
        lagrange_weights([1.0, 1.0], 2.0)


def test_zero_tolerance_is_the_plain_run(model):
    base = diffsolve.sample(model, SHAPE, solver="unipc", nfe=12, dtype=torch.float64,
                            progress=False)
    out = sample_skipping(model, SHAPE, solver="unipc", nfe=12, dtype=torch.float64,
                          skip=SkipPolicy(tol=0.0), progress=False)
    assert out.nfe == base.nfe == out.nominal_nfe and out.saved == 0
    assert torch.equal(out.x, base.x)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc", "heun", "dpm_solver_3"])
def test_fixed_cadence_counts_honestly_and_keeps_the_guards(model, solver):
    policy = SkipPolicy(mode="fixed", order=2, calls=2, protect_first=2, protect_last=2)
    model.reset_nfe()
    out = sample_skipping(model, SHAPE, solver=solver, nfe=20, dtype=torch.float64,
                          skip=policy, progress=False)
    skipped = [c for c in out.calls if c.skipped]
    assert len(out.calls) == out.nominal_nfe  # every request the solver makes is recorded
    assert out.nfe == model.nfe == out.nominal_nfe - len(skipped) and out.saved >= 2
    for c in skipped:
        assert 2 <= c.index < out.nominal_nfe - 2
    runs = [b.index - a.index for a, b in itertools.pairwise(skipped)]
    assert all(r >= 3 for r in runs)  # two real calls between skips
    assert not out.calls[-1].skipped  # the final denoise into sigma = 0
    assert torch.isfinite(out.x).all()


def test_adaptive_skipping_saves_calls_at_little_cost(model):
    ref = diffsolve.sample(model, SHAPE, solver="dpm_solver_3", nfe=150, dtype=torch.float64,
                           progress=False).x
    base = diffsolve.sample(model, SHAPE, solver="unipc", nfe=20, dtype=torch.float64,
                            progress=False)
    out = sample_skipping(model, SHAPE, solver="unipc", nfe=20, dtype=torch.float64,
                          progress=False)
    assert out.nfe <= 18  # measured 15
    assert all(c.rel is not None and c.rel <= 0.05 for c in out.calls if c.skipped)
    # measured error ratio 0.9; a broken extrapolation gives > 3
    assert _rms(out.x, ref) < 1.5 * _rms(base.x, ref)


def test_policy_checks():
    for bad in ({"mode": "always"}, {"order": 1}, {"order": 5}, {"tol": -1.0},
                {"max_consecutive": 0}, {"target": "eps"}, {"node": "t"},
                {"protect_first": -1}):
        with pytest.raises(SolverOptionError):
            SkipPolicy(**bad)
    with pytest.raises(SolverOptionError):
        sample_skipping(GaussianMixture.default_2d().denoiser(EDM()), SHAPE)


def test_docs_example_runs(capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / "skipping.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    exec(compile(block, "docs/skipping.md", "exec"), {})
    assert capsys.readouterr().out.startswith("20 15 5\n")

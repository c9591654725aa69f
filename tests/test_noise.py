"""Tests of diffsolve.noise: counter-based streams, the virtual Brownian path, test sources."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from diffsolve.noise import (
    BrownianPath,
    GivenNoise,
    KDiffusionNoiseSampler,
    MissingNoiseError,
    NoiseSource,
    PerSampleStreams,
    RecordingNoise,
    ZeroNoise,
    as_kdiffusion_sampler,
    derive_seed,
    make_noise,
)
from diffsolve.noise import streams as S

KS_P = 1e-4  # KS tests fail below this p-value (false-alarm rate 1e-4 per test)


def _z(
    src: NoiseSource,
    like: torch.Tensor,
    step: int = 0,
    draw: int = 0,
    a: float = 0.0,
    b: float = 1.0,
) -> torch.Tensor:
    return src.normal(like, step=step, draw=draw, lam_from=a, lam_to=b)


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(np.corrcoef(x.flatten().double().numpy(), y.flatten().double().numpy())[0, 1])


# --------------------------------------------------------------------------------------------
# keyed streams: exact generator semantics


def _mt19937_outputs(state: list[int], count: int) -> list[int]:
    """Reference MT19937 (Matsumoto & Nishimura 1998): twist, then tempering."""
    mt, out, idx = list(state), [], 624
    for _ in range(count):
        if idx >= 624:
            for i in range(624):
                y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7FFFFFFF)
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            idx = 0
        y = mt[idx]
        idx += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        out.append(y & 0xFFFFFFFF)
    return out


def test_keyed_normals_match_pure_python_reference() -> None:
    """The state is splitmix64's output from the key, and torch turns it into the normals of
    MT19937 + Box-Muller on 24-bit uniforms (pairs j, j + 8 of each block of 16)."""
    for key in (0, 0xDEADBEEF12345678, (1 << 64) - 1):
        words = []
        for j in range(1, 313):
            out = S.mix64((key + j * S._GAMMA) & ((1 << 64) - 1))
            words += [out & 0xFFFFFFFF, out >> 32]
        words[0] |= 0x80000000
        assert S.mt_states([key])[0].tolist() == words
        u = [(x & ((1 << 24) - 1)) * 2.0**-24 for x in _mt19937_outputs(words, 32)]
        ref = [0.0] * 32
        for blk in (0, 16):
            for j in range(8):
                r = math.sqrt(-2 * math.log(1 - u[blk + j]))
                th = 2 * math.pi * u[blk + j + 8]
                ref[blk + j], ref[blk + j + 8] = r * math.cos(th), r * math.sin(th)
        got = S.keyed_normals([key], 32)[0].double().numpy()
        assert np.abs(got - np.asarray(ref)).max() < 1e-5
    # a different key gives a different stream (control: the check above can fail)
    assert not torch.equal(S.keyed_normals([1], 32), S.keyed_normals([2], 32))


def test_mix64_is_splitmix64() -> None:
    # splitmix64 reference output for state 0 advanced once (x = gamma) is 0xE220A8397B1DCDAF
    assert S.mix64(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


# --------------------------------------------------------------------------------------------
# PerSampleStreams


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streams_are_standard_normal(dtype: torch.dtype) -> None:
    src = PerSampleStreams.from_seed(11, 4)
    z = _z(src, torch.empty(4, 25_000, dtype=dtype), step=3, draw=2)
    assert z.dtype == dtype and z.shape == (4, 25_000)
    x = z.double().flatten().numpy()
    assert stats.kstest(x, "norm").pvalue > KS_P
    assert abs(x.mean()) < 5 / math.sqrt(x.size)
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / x.size)
    # tails: P(|Z| > 3.8) = 1.45e-4, so about 14.5 of 1e5 draws; bounded by the 24-bit
    # uniforms (|z| <= 5.77)
    assert 3 <= int((np.abs(x) > 3.8).sum()) <= 35
    assert np.abs(x).max() <= 5.78


def test_streams_independent_across_draws_steps_samples_and_elements() -> None:
    src = PerSampleStreams.from_seed(5, 2)
    like = torch.empty(2, 50_000, dtype=torch.float64)
    base = _z(src, like, 0, 0)
    bound = 5 / math.sqrt(50_000)
    assert abs(_corr(base, _z(src, like, 0, 1))) < bound  # another draw
    assert abs(_corr(base, _z(src, like, 1, 0))) < bound  # another step
    assert abs(_corr(base[0], base[1])) < bound  # another sample
    row = base[0]
    assert abs(_corr(row[:-1], row[1:])) < bound  # neighbouring elements
    # the Box-Muller partners (p, p + 8) of each block of 16 are uncorrelated too
    blocks = row[: 16 * 3000].view(3000, 2, 8)
    assert abs(_corr(blocks[:, 0], blocks[:, 1])) < 5 / math.sqrt(3000 * 8)
    # and their squares are uncorrelated (a shared radius would show up here)
    assert abs(_corr(blocks[:, 0] ** 2, blocks[:, 1] ** 2)) < 5 / math.sqrt(3000 * 8)


def test_streams_of_neighbouring_seeds_uncorrelated() -> None:
    src = PerSampleStreams([0, 1, 2, 3])
    z = _z(src, torch.empty(4, 20_000, dtype=torch.float64))
    c = np.corrcoef(z.numpy())
    assert np.abs(c - np.eye(4)).max() < 5 / math.sqrt(20_000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streams_batch_split_invariance_bitwise(dtype: torch.dtype) -> None:
    shape = (3, 5, 7)  # odd size: exercises the padded last block
    full = _z(PerSampleStreams.from_seed(42, 8), torch.empty(8, *shape, dtype=dtype), 4, 1)
    a = _z(PerSampleStreams.from_seed(42, 4, 0), torch.empty(4, *shape, dtype=dtype), 4, 1)
    b = _z(PerSampleStreams.from_seed(42, 4, 4), torch.empty(4, *shape, dtype=dtype), 4, 1)
    assert torch.equal(full, torch.cat([a, b]))
    # batch composition: a permuted sub-batch gets the same per-sample tensors
    src = PerSampleStreams.from_seed(42, 8).select([6, 1, 3])
    sub = _z(src, torch.empty(3, *shape, dtype=dtype), 4, 1)
    assert torch.equal(sub, full[[6, 1, 3]])


def test_streams_deterministic_and_seed_dependent() -> None:
    like = torch.empty(2, 300)
    z1 = _z(PerSampleStreams([1, 2]), like, 7, 0)
    z2 = _z(PerSampleStreams([1, 2]), like, 7, 0)
    assert torch.equal(z1, z2)
    z3 = _z(PerSampleStreams([1, 3]), like, 7, 0)
    assert torch.equal(z1[0], z3[0]) and not torch.equal(z1[1], z3[1])
    # the interval arguments do not matter to streams
    assert torch.equal(z1, _z(PerSampleStreams([1, 2]), like, 7, 0, a=-3.0, b=8.0))


def test_streams_values_do_not_depend_on_request_order_or_history() -> None:
    """Small batches precompute the states of the next steps; the values must not show it."""
    like = torch.empty(1, 40)
    fresh = {(s, d): _z(PerSampleStreams([3]), like, s, d) for s in range(12) for d in (0, 1)}
    src = PerSampleStreams([3])
    order = [(s, d) for s in range(12) for d in (0, 1)]  # solver order, draws interleaved
    for key in order + order[::-1] + [(7, 1), (0, 0), (11, 0)]:
        assert torch.equal(_z(src, like, *key), fresh[key]), key
    assert not torch.equal(fresh[(0, 0)], fresh[(1, 0)])


def test_streams_depend_only_on_element_index_not_shape() -> None:
    """A smaller request is a prefix of a bigger one, for any sizes (rows are padded to
    whole blocks of 16), and float32/float64 states see the same numbers."""
    src = PerSampleStreams([9])
    small = _z(src, torch.empty(1, 600))
    big = _z(src, torch.empty(1, 2000))
    assert torch.equal(small[0], big[0, :600])
    tiny = _z(src, torch.empty(1, 2))
    assert torch.equal(tiny[0], big[0, :2])
    assert torch.equal(_z(src, torch.empty(1, 2000, dtype=torch.float64)).float(), big)
    img = _z(src, torch.empty(1, 4, 10, 50))
    assert torch.equal(img.flatten(), big.flatten())


def test_from_seed_matches_derive_seed_and_validates() -> None:
    src = PerSampleStreams.from_seed(3, 3, offset=10)
    assert src.seeds == tuple(derive_seed(3, 10 + i) for i in range(3))
    assert len(set(PerSampleStreams.from_seed(0, 1000).seeds)) == 1000
    with pytest.raises(ValueError, match="batch"):
        PerSampleStreams.from_seed(0, 0)
    with pytest.raises(ValueError, match="offset"):
        PerSampleStreams.from_seed(0, 2, offset=-1)
    with pytest.raises(TypeError):
        PerSampleStreams([1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        PerSampleStreams([])


def test_streams_errors_are_clear() -> None:
    src = PerSampleStreams([1, 2, 3])
    with pytest.raises(ValueError, match=r"3 per-sample seeds.*batch axis has 2"):
        _z(src, torch.empty(2, 4))
    with pytest.raises(ValueError, match="floating"):
        _z(src, torch.empty(3, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="step"):
        src.normal(torch.empty(3, 4), step=True, draw=0, lam_from=0, lam_to=1)


# --------------------------------------------------------------------------------------------
# BrownianPath

LO, HI = -4.38, 6.21  # EDM's sigma in [0.002, 80]


def test_brownian_default_depth_and_leaf_width() -> None:
    bp = BrownianPath([0], LO, HI)
    assert bp.depth == 8 and bp.leaf_width <= 1 / 16 < 2 * bp.leaf_width


def test_brownian_increments_add_up() -> None:
    bp = BrownianPath([1, 2], LO, HI)
    like = torch.empty(2, 3, 50, dtype=torch.float64)
    a, b, c = -3.1234, 0.5678, 5.4321
    whole = bp.increment(like, a, c)
    parts = bp.increment(like, a, b) + bp.increment(like, b, c)
    assert torch.allclose(whole, parts, rtol=0, atol=1e-12)
    assert torch.count_nonzero(whole) == whole.numel()
    # W starts at zero and W(lam) differences are increments
    assert torch.equal(bp.value(like, LO), torch.zeros_like(whole))
    assert torch.equal(bp.value(like, c) - bp.value(like, a), whole)


def test_brownian_query_order_independent_bitwise() -> None:
    rng = random.Random(0)
    lams = [LO, HI] + [rng.uniform(LO, HI) for _ in range(30)]
    like = torch.empty(3, 200, dtype=torch.float64)
    ref = BrownianPath([5, 6, 7], LO, HI)
    values = {lam: ref.value(like, lam).clone() for lam in sorted(lams)}
    other = BrownianPath([5, 6, 7], LO, HI, cache_points=2)
    shuffled = lams[:]
    rng.shuffle(shuffled)
    for lam in shuffled:
        other.value(like, rng.uniform(LO, HI))  # unrelated queries in between
        assert torch.equal(other.value(like, lam), values[lam]), lam


def test_brownian_normalised_increments_are_standard_normal() -> None:
    # non-dyadic intervals of different lengths, each much longer than a leaf
    bp = BrownianPath.from_seed(3, 4, LO, HI)
    like = torch.empty(4, 25_000, dtype=torch.float64)
    for a, b in [(-4.0, -3.7), (0.1234, 0.2345), (1.0, 6.0)]:
        z = bp.normal(like, step=0, draw=0, lam_from=a, lam_to=b).numpy().ravel()
        assert stats.kstest(z, "norm").pvalue > KS_P, (a, b)
        # variance proportional to length: normalised variance is 1 for every length
        assert abs(z.var() - 1) < 5 * math.sqrt(2 / z.size), (a, b)
    w_end = bp.value(like, HI).numpy().ravel() / math.sqrt(HI - LO)
    assert stats.kstest(w_end, "norm").pvalue > KS_P


def test_brownian_non_overlapping_increments_uncorrelated() -> None:
    bp = BrownianPath.from_seed(8, 2, LO, HI)
    like = torch.empty(2, 50_000, dtype=torch.float64)
    pts = [-2.0, -1.61, -1.37, 0.9, 0.95]
    z = [bp.normal(like, step=0, draw=0, lam_from=a, lam_to=b) for a, b in itertools.pairwise(pts)]
    bound = 5 / math.sqrt(like.numel())
    for i in range(len(z)):
        for j in range(i):
            assert abs(_corr(z[i], z[j])) < bound, (i, j)
    # overlapping intervals are correlated as Brownian motion says: sqrt(overlap share)
    zz = bp.normal(like, step=0, draw=0, lam_from=-2.0, lam_to=-1.37)
    expected = math.sqrt(0.39 / 0.63)
    assert abs(_corr(zz, z[0]) - expected) < bound


def test_brownian_20_vs_40_steps_follow_same_path() -> None:
    lams = np.linspace(LO, HI, 41)  # 40 fine steps; the coarse grid is every other node
    like = torch.empty(2, 4, 8, 8)
    fine = BrownianPath.from_seed(1, 2, LO, HI)
    coarse = BrownianPath.from_seed(1, 2, LO, HI)
    for i in range(20):
        a, m, b = lams[2 * i], lams[2 * i + 1], lams[2 * i + 2]
        z1 = fine.normal(like.double(), lam_from=a, lam_to=m)
        z2 = fine.normal(like.double(), lam_from=m, lam_to=b)
        zc = coarse.normal(like.double(), lam_from=a, lam_to=b)
        combined = (z1 * math.sqrt(m - a) + z2 * math.sqrt(b - m)) / math.sqrt(b - a)
        assert torch.allclose(zc, combined, rtol=0, atol=1e-12)
    # i.i.d. streams do not have this property (sanity check that the test can fail)
    s = PerSampleStreams.from_seed(1, 2)
    z1, z2 = _z(s, like, 0, 0), _z(s, like, 1, 0)
    assert not torch.allclose(_z(s, like, 0, 1), (z1 + z2) / math.sqrt(2), atol=1e-3)


def test_brownian_batch_split_invariance_and_seed_dependence() -> None:
    like8, like4 = torch.empty(8, 2, 9), torch.empty(4, 2, 9)
    full = BrownianPath.from_seed(4, 8, LO, HI).normal(like8, lam_from=0.3, lam_to=0.7)
    a = BrownianPath.from_seed(4, 4, LO, HI).normal(like4, lam_from=0.3, lam_to=0.7)
    b = BrownianPath.from_seed(4, 4, LO, HI, offset=4).normal(like4, lam_from=0.3, lam_to=0.7)
    assert torch.equal(full, torch.cat([a, b]))
    # independent of the streams built from the same seed
    s = PerSampleStreams.from_seed(4, 8)
    assert abs(_corr(full, _z(s, like8))) < 0.3


def test_brownian_monotone_queries_reuse_the_cached_path() -> None:
    depth = 12
    bp = BrownianPath([0], LO, HI, depth=depth)
    like = torch.empty(1, 8)
    lams = np.linspace(LO, HI, 21)
    for a, b in itertools.pairwise(lams):
        bp.normal(like, lam_from=a, lam_to=b)
    no_cache = 21 * (depth + 1) + 1  # every point from the root
    assert bp.normals_drawn < 0.8 * no_cache  # measured 0.73
    before = bp.normals_drawn
    bp.normal(like, lam_from=lams[3], lam_to=lams[4])  # revisiting old points recomputes
    assert bp.normals_drawn > before


def test_brownian_same_leaf_increments_stay_bounded() -> None:
    # two points inside one leaf: approximate law, but variance never blows up (<= 2)
    bp = BrownianPath.from_seed(2, 2, 0.0, 1.0, depth=2)  # leaf width 0.25
    like = torch.empty(2, 50_000, dtype=torch.float64)
    for a, b in [(0.26, 0.2600001), (0.3, 0.45), (0.251, 0.499)]:
        v = float(bp.normal(like, lam_from=a, lam_to=b).var())
        assert 0.0 < v < 2.1, (a, b, v)


def test_brownian_range_clamping_and_errors() -> None:
    bp = BrownianPath([0, 1], LO, HI)
    like = torch.empty(2, 16, dtype=torch.float64)
    assert torch.equal(bp.value(like, HI + 1e-12), bp.value(like, HI))
    assert torch.equal(bp.value(like, LO - 1e-12), bp.value(like, LO))
    with pytest.raises(ValueError, match="outside"):
        bp.value(like, HI + 1e-6)
    with pytest.raises(ValueError, match="outside"):
        bp.normal(like, lam_from=1.0, lam_to=math.inf)
    with pytest.raises(ValueError, match="outside"):
        bp.normal(like, lam_from=math.nan, lam_to=1.0)
    with pytest.raises(ValueError, match="zero-length"):
        bp.normal(like, lam_from=1.0, lam_to=1.0)
    with pytest.raises(ValueError, match="batch axis"):
        bp.normal(torch.empty(3, 16), lam_from=0.0, lam_to=1.0)
    with pytest.raises(ValueError, match="lam_min < lam_max"):
        BrownianPath([0], 1.0, 1.0)
    with pytest.raises(ValueError, match="depth"):
        BrownianPath([0], 0.0, 1.0, depth=-1)
    # reversed intervals are allowed and flip the sign
    fwd = bp.normal(like, lam_from=0.0, lam_to=1.0)
    assert torch.equal(bp.normal(like, lam_from=1.0, lam_to=0.0), -fwd)


# --------------------------------------------------------------------------------------------
# small sources and adapters


def test_zero_noise() -> None:
    like = torch.ones(2, 3, dtype=torch.float64)
    z = ZeroNoise().normal(like, step=0, draw=0, lam_from=0.0, lam_to=1.0)
    assert z.dtype == torch.float64 and z.shape == like.shape and not z.any()
    assert isinstance(ZeroNoise(), NoiseSource)


def test_given_noise() -> None:
    t0, t1 = torch.randn(2, 3), torch.randn(2, 3)
    g = GivenNoise({(0, 0): t0, (0, 1): t1})
    like = torch.empty(2, 3, dtype=torch.float64)
    out = g.normal(like, step=0, draw=1, lam_from=0.0, lam_to=1.0)
    assert out.dtype == torch.float64 and torch.equal(out, t1.double())
    out.zero_()  # a copy: the stored tensor is untouched
    assert torch.equal(g.normal(like, step=0, draw=1, lam_from=0, lam_to=1), t1.double())
    with pytest.raises(MissingNoiseError, match=r"step=1, draw=0.*2 entries") as err:
        g.normal(like, step=1, draw=0, lam_from=0.0, lam_to=1.0)
    assert isinstance(err.value, KeyError)
    with pytest.raises(ValueError, match="shape"):
        g.normal(torch.empty(3, 3), step=0, draw=0, lam_from=0.0, lam_to=1.0)
    seq = GivenNoise([t0, t1])
    assert torch.equal(seq.normal(t0, step=1, draw=0, lam_from=0, lam_to=1), t1)
    assert seq.keys == [(0, 0), (1, 0)]
    with pytest.raises(TypeError):
        GivenNoise(t0)


def test_recording_noise_records_and_replays() -> None:
    rec = RecordingNoise(PerSampleStreams([1, 2]))
    like = torch.empty(2, 5)
    outs = [
        rec.normal(like, step=i, draw=d, lam_from=i, lam_to=i + 0.5)
        for i in range(3)
        for d in range(2)
    ]
    assert len(rec) == 6
    assert [(r.step, r.draw) for r in rec.requests] == [(i, d) for i in range(3) for d in range(2)]
    assert rec.requests[3].lam_from == 1.0 and rec.requests[3].lam_to == 1.5
    assert rec.requests[0].shape == (2, 5)
    for o, t in zip(outs, rec.tensors, strict=True):
        assert torch.equal(o, t)
    replay = rec.replay()
    assert torch.equal(replay.normal(like, step=2, draw=1, lam_from=0, lam_to=1), outs[5])
    rec.clear()
    assert len(rec) == 0


def test_kdiffusion_adapter_passes_sigmas() -> None:
    seen = []

    def sampler(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        seen.append((float(sigma), float(sigma_next)))
        return torch.full((2, 3), 0.5)

    src = KDiffusionNoiseSampler(sampler)
    like = torch.empty(2, 3, dtype=torch.float64)
    out = src.normal(like, step=0, draw=0, lam_from=math.log(1 / 2.0), lam_to=math.inf)
    assert out.dtype == torch.float64 and torch.all(out == 0.5)
    assert seen[0][0] == pytest.approx(2.0) and seen[0][1] == 0.0
    with pytest.raises(ValueError, match="shape"):
        src.normal(torch.empty(4, 3), step=0, draw=0, lam_from=0.0, lam_to=1.0)


def test_as_kdiffusion_sampler_counts_steps_and_round_trips() -> None:
    like = torch.empty(2, 7)
    streams = PerSampleStreams([3, 4])
    f = as_kdiffusion_sampler(streams, like)
    for k, (s, sn) in enumerate([(10.0, 5.0), (5.0, 1.0), (1.0, 0.0)]):
        got = f(torch.tensor(s), torch.tensor(sn))
        assert torch.equal(got, _z(streams, like, step=k))
    assert f.calls == 3
    bp = BrownianPath([3, 4], -math.log(10.0), -math.log(0.5))
    back = KDiffusionNoiseSampler(as_kdiffusion_sampler(bp, like))
    direct = BrownianPath([3, 4], -math.log(10.0), -math.log(0.5))
    a, b = -math.log(8.0), -math.log(2.0)
    assert torch.allclose(
        back.normal(like, step=0, draw=0, lam_from=a, lam_to=b),
        direct.normal(like, lam_from=a, lam_to=b),
        atol=1e-5,
    )


def test_make_noise_resolution() -> None:
    like = torch.empty(3, 4)
    ref = _z(PerSampleStreams.from_seed(0, 3), like)
    assert torch.equal(_z(make_noise(None, like), like), ref)
    assert torch.equal(_z(make_noise("streams", like), like), ref)
    assert torch.equal(_z(make_noise(5, like), like), _z(PerSampleStreams.from_seed(5, 3), like))
    s2 = make_noise(None, like, 7, offset=2)
    assert s2.seeds == PerSampleStreams.from_seed(7, 3, offset=2).seeds  # type: ignore[attr-defined]
    assert isinstance(make_noise("zero", like), ZeroNoise)
    bp = make_noise("brownian", like, 1, lam_range=(LO, HI))
    assert isinstance(bp, BrownianPath) and bp.seeds == PerSampleStreams.from_seed(1, 3).seeds
    src = ZeroNoise()
    assert make_noise(src, like) is src
    assert isinstance(make_noise(lambda s, sn: torch.zeros(3, 4), like), KDiffusionNoiseSampler)
    with pytest.raises(ValueError, match="lam_range"):
        make_noise("brownian", like)
    with pytest.raises(ValueError, match="unknown noise name"):
        make_noise("pink", like)
    with pytest.raises(ValueError, match="already a seed"):
        make_noise(3, like, 4)
    with pytest.raises(TypeError):
        make_noise(True, like)
    with pytest.raises(TypeError):
        make_noise(1.5, like)  # type: ignore[arg-type]


# --- BatchStream (noise="batch") ---------------------------------------------------------------


def test_batch_stream_is_keyed_by_step_and_draw_not_by_call_order():
    from diffsolve.noise import BatchStream

    like = torch.empty(6, 3)
    a, b = BatchStream(7), BatchStream(7)
    first = [a.normal(like, step=s, draw=d) for s, d in ((0, 0), (1, 0), (0, 1))]
    second = [b.normal(like, step=s, draw=d) for s, d in ((0, 1), (1, 0), (0, 0))][::-1]
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])
    assert not torch.equal(first[0], BatchStream(8).normal(like, step=0, draw=0))
    assert not torch.equal(first[0], BatchStream(7, offset=6).normal(like, step=0, draw=0))


def test_batch_stream_same_numbers_in_every_dtype_and_standard_normal():
    from diffsolve.noise import BatchStream

    z32 = BatchStream(3).normal(torch.empty(200, 500), step=2, draw=0)
    z64 = BatchStream(3).normal(torch.empty(200, 500, dtype=torch.float64), step=2, draw=0)
    assert z64.dtype == torch.float64 and torch.equal(z64.float(), z32)
    assert abs(float(z32.mean())) < 0.01 and abs(float(z32.std()) - 1.0) < 0.01


def test_make_noise_batch_and_a_sampler_run_with_it():
    from diffsolve import sample
    from diffsolve.bench.models import gmm_model
    from diffsolve.noise import BatchStream, make_noise

    src = make_noise("batch", torch.empty(4, 2), seed=5, offset=8)
    assert isinstance(src, BatchStream) and (src.seed, src.offset) == (5, 8)
    _, model = gmm_model(0.0)
    run = [sample(model, (64, 2), solver="euler_ancestral", nfe=8, seed=1, noise="batch",
                  progress=False).x for _ in range(2)]
    assert torch.equal(run[0], run[1])
    streams = sample(model, (64, 2), solver="euler_ancestral", nfe=8, seed=1,
                     progress=False).x
    assert not torch.equal(run[0], streams)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        BatchStream(0, offset=-1)

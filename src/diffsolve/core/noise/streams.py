r"""Counter-based per-sample Gaussian streams.

A counter-based generator computes random number i of a stream as a fixed hash of
(key, i) instead of advancing a hidden state (Salmon, Moraes, Dror & Shaw 2011, "Parallel
random numbers: as easy as 1, 2, 3", SC'11). Draws are then addressable: the value of element
i of sample b at (step, draw) is a pure function of (seed_b, step, draw, i), whatever the
batch size, the batch composition, the order of the requests or the device. This is the rule
EDM's ``StackedRandomGenerator`` follows with one ``torch.Generator`` per seed, made exact
and device-independent.

Construction (all integer arithmetic is modulo 2^32 or 2^64, spelled out so that torch's
signed wrap-around and arithmetic shifts give well-defined results):

1. *Keys* (Python integers, exact). ``mix64`` is the splitmix64 finaliser (Steele, Lea &
   Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA; constants of
   Stafford's "Mix13"), a bijection of 64-bit words with full avalanche. Words are folded in
   with ``fold(h, w) = mix64(h xor mix64(w + gamma))``, gamma = 0x9E3779B97F4A7C15. Each sample
   seed gives a base key ``mix64(fold(seed, DOMAIN))``; a request (domain, a, b), e.g.
   (STREAM, step, draw) or (TREE, level, node), gives a word ``P``; the 128-bit stream key is
   ``k = mix64(base xor P)`` followed by ``mix64(k + gamma)``, read as four 32-bit words
   k0..k3.
2. *Counter hash* (torch int32, vectorised over a (rows, 1) key tensor against a (1, n)
   counter). For flat element index i: ``h = H(H(H(i xor k0) xor k1) xor k2)`` with ``H`` the
   32-bit "lowbias32" integer hash (C. Wellons, hash-prospector: x ^= x>>16; x *= 0x7feb352d;
   x ^= x>>15; x *= 0x846ca68b; x ^= x>>16, logical shifts). Each H is a bijection of 32-bit
   words, so for one key the n outputs are distinct, and two streams can only be related by a
   permutation of indices if their 64-bit (k1, k2) agree. The int32 path is about ten times
   faster than int64 in torch's CPU kernels, which is why the wide key is injected in rounds
   rather than hashed as one 64-bit word per element.
3. *Normals* (float64). Box–Muller (Box & Muller 1958): with u = (h + 2^31 + 1/2) / 2^32 in
   (0, 1), elements are paired within fixed blocks of 512, element p = 512 q + i and
   element p + 256 (i < 256): r = sqrt(-2 ln u_p), theta = 2 pi u_{p+256}; element p gets
   r cos theta and element p + 256 gets r sin theta. (Blocks keep both halves contiguous,
   which is about 25% faster in torch than interleaving.) The result is cast to the requested
   dtype. Because pairs are fixed by index, element i is also independent of the tensor's
   total size (a longer request extends a shorter one).

Consequences worth knowing: a uniform carries 32 bits, so |z| <= sqrt(2 ln 2^33) = 6.76 (the
N(0,1) mass beyond is 1.4e-11); values are bitwise reproducible on one device, and across
devices up to the last-bit differences of float64 log/cos (which the cast to float32 almost
always hides). On CPU the same caveat applies when torch splits one call over a thread count
that leaves a scalar tail inside the tensor (vectorised and scalar log/cos may differ in the
last float64 bit); with one thread, or any thread count dividing the size into multiples of
the vector width, results are bitwise identical.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import check_request

__all__ = ["PerSampleStreams", "counter_normals", "derive_seed", "request_keys"]

_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1
_GAMMA = 0x9E3779B97F4A7C15

# Domain-separation constants: different uses of the same seed never share a stream.
DOMAIN_SAMPLE_SEED = 0x5EED_0001
DOMAIN_BASE = 0x5EED_0002
DOMAIN_STREAM = 0x5EED_0003
DOMAIN_TREE = 0x5EED_0004
DOMAIN_TREE_END = 0x5EED_0005

_LOWBIAS_M1 = 0x7FEB352D
_LOWBIAS_M2 = 0x846CA68B - (1 << 32)  # as a signed int32
_MAX_N = (1 << 31) - 2


def mix64(z: int) -> int:
    """splitmix64 finaliser (Stafford Mix13) on a 64-bit word, in exact Python integers."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _fold(h: int, w: int) -> int:
    return mix64(h ^ mix64((w + _GAMMA) & _M64))


def _as_int(v: object, what: str) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{what} must be an int, got {v!r}")
    try:
        return operator.index(v)  # accepts numpy / torch integer scalars
    except TypeError:
        raise TypeError(f"{what} must be an int, got {v!r}") from None


def derive_seed(seed: int, index: int) -> int:
    """Per-sample seed for global sample ``index`` of a run with base ``seed`` (63-bit int).

    ``derive_seed(s, i)`` is a hash of (s, i), so sample i's noise does not depend on how the
    run is split into batches or processes (the seeding rule of ecosystem notes §5).
    """
    s = _as_int(seed, "seed")
    i = _as_int(index, "index")
    return _fold(_fold(mix64(s & _M64), DOMAIN_SAMPLE_SEED), i & _M64) >> 1


def base_key(seed: int) -> int:
    """The 64-bit key every stream of one sample seed is derived from."""
    return mix64(_fold(_as_int(seed, "seed") & _M64, DOMAIN_BASE))


def request_word(domain: int, a: int, b: int) -> int:
    """The 64-bit word naming one request, e.g. (DOMAIN_STREAM, step, draw)."""
    return _fold(_fold(_fold(0, domain), a & _M64), b & _M64)


def _mix64_np(z: np.ndarray) -> np.ndarray:
    """:func:`mix64` on a uint64 array (numpy's uint64 arithmetic wraps mod 2^64)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def request_keys(bases: Sequence[int], words: Sequence[int]) -> list[int]:
    """128-bit stream keys for every (sample base key, request word), sample-major order.

    Returned as a flat list of 2 * len(bases) * len(words) unsigned 64-bit ints
    ``[k01, k23, k01, k23, ...]`` (row r = b * len(words) + w), with k01 = mix64(base ^ w) and
    k23 = mix64(k01 + gamma). Vectorised over the batch in numpy uint64 (bit-identical to
    :func:`mix64` on Python ints), so large batches cost no Python loop per sample.
    """
    b = np.asarray([int(v) & _M64 for v in bases], dtype=np.uint64)
    w = np.asarray([int(v) & _M64 for v in words], dtype=np.uint64)
    with np.errstate(over="ignore"):
        k01 = _mix64_np(b[:, None] ^ w[None, :]).reshape(-1)
        k23 = _mix64_np(k01 + np.uint64(_GAMMA))
    return np.stack([k01, k23], axis=1).reshape(-1).tolist()


_counter_cache: OrderedDict[tuple[int, str], Tensor] = OrderedDict()


def _counter(n: int, device: torch.device) -> Tensor:
    key = (n, str(device))
    c = _counter_cache.get(key)
    if c is None:
        c = torch.arange(n, dtype=torch.int32, device=device).view(1, n)
        _counter_cache[key] = c
        if len(_counter_cache) > 16:
            _counter_cache.popitem(last=False)
    else:
        _counter_cache.move_to_end(key)
    return c


def _lowbias32_(h: Tensor, tmp: Tensor) -> None:
    """In-place 32-bit lowbias32 hash on an int32 tensor (logical shifts via masking)."""
    torch.bitwise_right_shift(h, 16, out=tmp)
    tmp &= 0xFFFF
    h ^= tmp
    h *= _LOWBIAS_M1
    torch.bitwise_right_shift(h, 15, out=tmp)
    tmp &= 0x1FFFF
    h ^= tmp
    h *= _LOWBIAS_M2
    torch.bitwise_right_shift(h, 16, out=tmp)
    tmp &= 0xFFFF
    h ^= tmp


def _key_words(keys: Sequence[int], rows: int, device: torch.device) -> Tensor:
    """(rows, 4) int32 tensor k0..k3 from the flat [k01, k23, ...] list of unsigned ints."""
    signed = [k - (1 << 64) if k >> 63 else k for k in keys]
    t = torch.tensor(signed, dtype=torch.int64).view(rows, 2)
    # little-endian view: each int64 becomes (low 32 bits, high 32 bits)
    w = t.view(torch.int32).view(rows, 4)
    if not _LITTLE:
        w = w.view(rows, 2, 2).flip(-1).reshape(rows, 4)
    return w.to(device)


_LITTLE = torch.tensor([1], dtype=torch.int64).view(torch.int32)[0].item() == 1


def counter_hash(keys: Sequence[int], rows: int, n: int, device: torch.device) -> Tensor:
    """(rows, n) int32 tensor of 32-bit hashes of (key_r, i) for i < n (see module doc)."""
    if n > _MAX_N:
        raise ValueError(f"at most {_MAX_N} elements per sample are supported, got {n}")
    kw = _key_words(keys, rows, device)
    h = _counter(n, device).expand(rows, n).clone()
    tmp = torch.empty_like(h)
    h ^= kw[:, 0:1]
    _lowbias32_(h, tmp)
    h ^= kw[:, 1:2]
    _lowbias32_(h, tmp)
    h ^= kw[:, 2:3]
    _lowbias32_(h, tmp)
    return h


_BLOCK = 256  # Box–Muller pairs element (2K q + i) with element (2K q + K + i), i < K
_SHIFTS = torch.tensor([0.0, math.pi / 2], dtype=torch.float64).view(1, 1, 2, 1)


def counter_normals(
    keys: Sequence[int],
    rows: int,
    n: int,
    device: torch.device,
    scales: Sequence[float] | None = None,
) -> Tensor:
    """(rows, n) float64 standard normals: Box–Muller on counter hashes (see module doc).

    With ``scales`` (one per group of ``rows / len(scales)`` consecutive rows) the normals are
    multiplied by the group's scale, folded into the Box–Muller radius (cheaper than a
    separate pass; the result is a fixed function of key, index and scale).
    """
    # Box–Muller block: the smallest power of two covering half the sample (at most _BLOCK),
    # so a 2-D sample does not pay for 512 normals
    k = min(_BLOCK, 1 << max(0, math.ceil(math.log2(max(1, -(-n // 2))))))
    nb = -(-n // (2 * k))
    h = counter_hash(keys, rows, nb * 2 * k, device).view(rows, nb, 2, k)
    r = h[:, :, 0].to(torch.float64)
    r += 2.0**31 + 0.5
    r *= 2.0**-32
    r.log_()
    r *= -2.0
    r.sqrt_()
    if scales is not None:
        g = len(scales)
        sc = torch.tensor(list(scales), dtype=torch.float64).to(device).view(1, g, 1, 1)
        r.view(rows // g, g, nb, k).mul_(sc)
    theta = h[:, :, 1:2].to(torch.float64)
    theta += 2.0**31 + 0.5
    theta *= 2.0 * math.pi * 2.0**-32
    z = theta - _SHIFTS.to(device)  # (theta, theta - pi/2): cos gives (cos, sin)
    z.cos_()
    z *= r.unsqueeze(2)
    z = z.view(rows, nb * 2 * k)
    return z[:, :n] if nb * 2 * k != n else z


class PerSampleStreams:
    """One counter-based Gaussian stream per sample (see the module docstring for the maths).

    ``normal(like, step=s, draw=d, ...)[b]`` depends only on ``(seeds[b], s, d)`` and the flat
    element index: never on batch size, batch composition, call order or device. ``lam_from``
    and ``lam_to`` are ignored (two draws over different intervals must use different
    ``(step, draw)``).

    Args:
        seeds: one integer seed per batch element (any Python/numpy int; reduced mod 2^64).
    """

    def __init__(self, seeds: Iterable[int]) -> None:
        self.seeds: tuple[int, ...] = tuple(_as_int(s, "seed") for s in seeds)
        if not self.seeds:
            raise ValueError("PerSampleStreams needs at least one seed")
        self._bases = [base_key(s) for s in self.seeds]

    @classmethod
    def from_seed(cls, seed: int, batch: int, offset: int = 0) -> PerSampleStreams:
        """Streams for global samples ``offset .. offset+batch-1`` of a run seeded by ``seed``.

        Sample i gets ``derive_seed(seed, i)``, so ``from_seed(s, 8)`` equals
        ``from_seed(s, 4, 0)`` and ``from_seed(s, 4, 4)`` stacked.
        """
        batch = _as_int(batch, "batch")
        offset = _as_int(offset, "offset")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        return cls(derive_seed(seed, offset + i) for i in range(batch))

    def __len__(self) -> int:
        return len(self.seeds)

    def select(self, indices: Sequence[int]) -> PerSampleStreams:
        """Streams of a sub-batch (e.g. the samples still running), in the given order."""
        return PerSampleStreams([self.seeds[i] for i in indices])

    def normal(
        self,
        like: Tensor,
        *,
        step: int,
        draw: int,
        lam_from: float = 0.0,
        lam_to: float = 1.0,
    ) -> Tensor:
        check_request(like, step, draw)
        _check_batch(like, len(self.seeds), type(self).__name__)
        rows = like.shape[0]
        n = like[0].numel()
        keys = request_keys(self._bases, [request_word(DOMAIN_STREAM, step, draw)])
        z = counter_normals(keys, rows, n, like.device)
        return z.view(like.shape).to(like.dtype)

    def __repr__(self) -> str:
        head = ", ".join(map(str, self.seeds[:4])) + (", ..." if len(self.seeds) > 4 else "")
        return f"PerSampleStreams([{head}])"


def _check_batch(like: Tensor, n_seeds: int, who: str) -> None:
    if like.shape[0] != n_seeds:
        raise ValueError(
            f"{who} holds {n_seeds} per-sample seeds but the state's batch axis has "
            f"{like.shape[0]} samples (shape {tuple(like.shape)}); build it with one seed "
            "per sample, or use .select(indices) for a sub-batch"
        )

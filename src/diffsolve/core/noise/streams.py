r"""Keyed per-sample Gaussian streams (noise-stream version 2).

Every draw is addressable: the value of element i of sample b at (step, draw) is a pure
function of (seed_b, step, draw, i), whatever the batch size, the batch composition, the
order of the requests or the device. This is the rule EDM's ``StackedRandomGenerator``
follows with one ``torch.Generator`` per sample seed (Karras, Aittala, Aila & Laine 2022),
extended so that each (sample, step, draw) has its own independent stream and a 64-bit key.

Construction:

1. *Keys* (exact 64-bit integer arithmetic). ``mix64`` is the splitmix64 finaliser (Steele,
   Lea & Flood 2014, "Fast splittable pseudorandom number generators", OOPSLA; constants of
   Stafford's "Mix13"), a bijection of 64-bit words with full avalanche. Words are folded in
   with ``fold(h, w) = mix64(h xor mix64(w + gamma))``, gamma = 0x9E3779B97F4A7C15. Each sample
   seed gives a base key ``mix64(fold(seed, DOMAIN))``; a request (domain, a, b), e.g.
   (STREAM, step, draw) or (TREE, level, node), gives a word ``P``; the stream key is
   ``k = mix64(base xor P)``.
2. *Generator state*. The 624 32-bit words of an MT19937 state (Matsumoto & Nishimura 1998,
   "Mersenne Twister", ACM TOMACS) are the low and high halves of splitmix64's first 312
   outputs from k, ``mix64(k + j gamma)`` for j = 1..312 (the top bit of word 0 is set,
   which makes the state non-zero). The state is installed into a CPU ``torch.Generator``
   (:func:`keyed_normals`; the generator's byte layout is verified at import).
3. *Normals*. One ``torch.randn`` of the sample's element count, rounded up to a multiple
   of 16 (torch's CPU transform: 24-bit float32 uniforms u, Box–Muller within blocks of 16,
   z = sqrt(-2 ln(1 - u_a)) cos/sin(2 pi u_b)). Element i therefore does not depend on the
   request's total size. Values are drawn in float32 on the CPU, then cast and moved, so
   float16/32/64 states and every device see the same numbers (up to the cast).

Why this design: a pure counter-based hash evaluated with torch tensor ops (version 1 of
these streams) needs some 40 elementwise passes plus a float64 Box–Muller, 3-7x the cost of
``randn``. Here the per-element work is torch's own ``randn`` kernel, and the per-stream
cost is one 624-word hash and a ``set_state`` (a few microseconds), so a draw costs about
one batch-sized ``randn_like`` (``benchmarks/noise_cost.py``).

Consequences worth knowing: float32 uniforms carry 24 bits, so |z| <= sqrt(2 ln 2^24) = 5.77
(the N(0,1) mass beyond is 8e-9). Values are bitwise reproducible for a given torch build and
CPU capability (torch's AVX2 and scalar normal kernels differ in the last float32 bits); the
noise-stream version :data:`NOISE_STREAM_VERSION` names the construction and should be
recorded with any output that must be regenerated bit for bit. Distinct (sample, step, draw)
requests collide only if their 64-bit keys do (probability 2^-64 per pair).
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import check_request

__all__ = [
    "NOISE_STREAM_VERSION",
    "PerSampleStreams",
    "derive_seed",
    "keyed_normals",
    "request_keys",
]

NOISE_STREAM_VERSION = 2
"""Version of the numbers :class:`PerSampleStreams` and :class:`~diffsolve.noise.BrownianPath`
produce for a given seed. 1: counter hash + float64 Box–Muller (until December 2026);
2: splitmix64-seeded MT19937 per stream + torch's float32 normal transform. Record it next to
any output that must be regenerable bit for bit."""

_M64 = (1 << 64) - 1
_M32 = (1 << 32) - 1
_GAMMA = 0x9E3779B97F4A7C15

# Domain-separation constants: different uses of the same seed never share a stream.
DOMAIN_SAMPLE_SEED = 0x5EED_0001
DOMAIN_BASE = 0x5EED_0002
DOMAIN_STREAM = 0x5EED_0003
DOMAIN_TREE = 0x5EED_0004
DOMAIN_TREE_END = 0x5EED_0005
DOMAIN_BATCH = 0x5EED_0006

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


@functools.lru_cache(maxsize=4096)
def request_word(domain: int, a: int, b: int) -> int:
    """The 64-bit word naming one request, e.g. (DOMAIN_STREAM, step, draw)."""
    return _fold(_fold(_fold(0, domain), a & _M64), b & _M64)


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64_np(z: np.ndarray) -> np.ndarray:
    """:func:`mix64` on a uint64 array (numpy's uint64 arithmetic wraps mod 2^64)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def request_keys(bases: Sequence[int], words: Sequence[int]) -> list[int]:
    """64-bit stream keys ``mix64(base xor word)`` for every (sample base key, request word).

    Returned as a flat list of len(bases) * len(words) unsigned ints, sample-major (row
    r = b * len(words) + w). Vectorised over the batch in numpy uint64 (bit-identical to
    :func:`mix64` on Python ints), so large batches cost no Python loop per sample.
    """
    if len(bases) * len(words) <= 8:  # small requests: Python ints are faster than numpy
        return [mix64(int(b) ^ int(w)) for b in bases for w in words]
    b = np.asarray([int(v) & _M64 for v in bases], dtype=np.uint64)
    w = np.asarray([int(v) & _M64 for v in words], dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix64_np(b[:, None] ^ w[None, :]).reshape(-1).tolist()


# -- per-stream Mersenne Twister states --------------------------------------------------------

_MT_N = 624  # MT19937 state words
_SM64_STEPS = np.arange(1, _MT_N // 2 + 1, dtype=np.uint64) * np.uint64(_GAMMA)  # j gamma mod 2^64
_LO32 = np.uint64(_M32)
_SH32 = np.uint64(32)
_AHEAD_ROWS = 8  # PerSampleStreams computes states for ceil(8 / batch) steps at a time
_ALIGN = 16  # torch's vectorised CPU normal transform works on blocks of 16 floats


def _state_template() -> tuple[np.ndarray, int] | None:
    """The byte image of a freshly seeded CPU ``torch.Generator`` and the offset of its 624
    MT19937 state words (stored as native uint64), or None if the layout is not the known one.

    The layout is checked, not assumed: after ``manual_seed(s)`` the state words must equal
    MT19937's ``init_genrand(s)`` sequence (Matsumoto & Nishimura 1998), computed here.
    """
    g = torch.Generator()
    seed = 0x1234_5678
    g.manual_seed(seed)
    raw = g.get_state().numpy().copy()
    ref = [seed]
    for j in range(1, _MT_N):
        ref.append((1812433253 * (ref[-1] ^ (ref[-1] >> 30)) + j) & _M32)
    want = np.asarray(ref, dtype=np.uint64).view(np.uint8)
    for off in range(0, raw.size - want.size + 1, 8):
        if np.array_equal(raw[off : off + want.size], want):
            return raw, off
    return None  # pragma: no cover - only on a torch with a different generator layout


_TEMPLATE = _state_template()


def _state_images(keys: Sequence[int]) -> np.ndarray:
    """(rows, state bytes) uint8 images of CPU generators holding the :func:`mt_states`."""
    assert _TEMPLATE is not None
    raw, off = _TEMPLATE
    rows = len(keys)
    img = np.empty((rows, raw.size), dtype=np.uint8)
    img[:] = raw
    k = np.fromiter((int(v) & _M64 for v in keys), dtype=np.uint64, count=rows)
    # splitmix64 outputs j = 1..312, mixed in place (numpy's uint64 arithmetic wraps mod 2^64)
    z = np.add(k[:, None], _SM64_STEPS[None, :])
    tmp = np.empty_like(z)
    for shift, mult in ((30, _MIX1), (27, _MIX2)):
        np.right_shift(z, shift, out=tmp)
        z ^= tmp
        z *= mult
    np.right_shift(z, 31, out=tmp)
    z ^= tmp
    # the 624 state words sit 8-byte aligned as native uint64: output j gives words 2j-2
    # (low half) and 2j-1 (high half)
    w = img.view(np.uint64)[:, off // 8 : off // 8 + _MT_N]
    np.bitwise_and(z, _LO32, out=w[:, 0::2])
    np.right_shift(z, _SH32, out=w[:, 1::2])
    w[:, 0] |= np.uint64(0x8000_0000)
    return img


def mt_states(keys: Sequence[int]) -> np.ndarray:
    """(rows, 624) uint32 MT19937 states: words 2j-2 and 2j-1 of row r are the low and high
    halves of splitmix64's j-th output from seed ``keys[r]`` (mix64(k + j gamma),
    j = 1..312), with the top bit of word 0 set (the only bit of word 0 MT19937 uses; it
    makes the state non-zero, as in MT's ``init_by_array``)."""
    off = _TEMPLATE[1] // 8 if _TEMPLATE is not None else 0
    words = _state_images(keys).view(np.uint64)[:, off : off + _MT_N]
    return words.astype(np.uint32)


_local = threading.local()


def _thread_generator() -> torch.Generator:
    """One scratch CPU generator per thread (its state is overwritten before every use)."""
    g = getattr(_local, "gen", None)
    if g is None:
        g = _local.gen = torch.Generator()
    return g


def keyed_normals(
    keys: Sequence[int], n: int, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(len(keys), n) standard normals; row r is a fixed function of the 64-bit ``keys[r]``.

    Each row is drawn by torch's CPU generator (MT19937, Matsumoto & Nishimura 1998) whose
    whole 624-word state is set from the key by :func:`mt_states`, followed by torch's own
    float32 normal transform (Box–Muller on 24-bit uniforms). That is one ``torch.randn`` per
    row plus a few microseconds to install the state, so a batch costs about one batch-sized
    ``randn``. Rows are padded to a multiple of 16 elements (at least 16): torch's transform
    works on blocks of 16, so element i does not depend on n (a longer request extends a
    shorter one). Values are computed in float32 on the CPU, then cast to ``dtype`` and moved
    to ``device``, so every device gets the same numbers.
    """
    if _TEMPLATE is None:  # pragma: no cover - unknown generator layout (see _state_template)
        return _normals_seeded32(keys, n, device, dtype)
    return _normals_from_states(_state_images(keys), n, device, dtype)


def _width(n: int) -> int:
    if n < 1 or n > _MAX_N:
        raise ValueError(f"between 1 and {_MAX_N} elements per sample are supported, got {n}")
    return max(_ALIGN, -(-n // _ALIGN) * _ALIGN)


def _normals_from_states(
    img: np.ndarray, n: int, device: torch.device | str, dtype: torch.dtype
) -> Tensor:
    """One ``torch.randn`` row per generator state image (rows of ``img``), cut to n."""
    rows, width = img.shape[0], _width(n)
    g = _thread_generator()
    if rows == 1:
        g.set_state(torch.from_numpy(img[0]))
        out = torch.randn(1, width, generator=g)
    else:
        out = torch.empty(rows, width, dtype=torch.float32)
        for r in range(rows):
            # from_numpy of a numpy row starts its own storage at the row (set_state reads the
            # storage, so a torch view with a storage offset would not do)
            g.set_state(torch.from_numpy(img[r]))
            torch.randn(width, generator=g, out=out[r])
    z = out[:, :n] if width != n else out
    return z.to(device=device, dtype=dtype)


def _normals_seeded32(  # pragma: no cover - only on a torch with another generator layout
    keys: Sequence[int], n: int, device: torch.device | str, dtype: torch.dtype
) -> Tensor:
    """Fallback when the generator layout is unknown: ``manual_seed`` with 32 key bits."""
    width = _width(n)
    g = _thread_generator()
    out = torch.empty(len(keys), width, dtype=torch.float32)
    for r, k in enumerate(keys):
        g.manual_seed(int(k) & _M32)
        torch.randn(width, generator=g, out=out[r])
    z = out[:, :n] if width != n else out
    return z.to(device=device, dtype=dtype)


class PerSampleStreams:
    """One keyed Gaussian stream per sample and (step, draw) (maths: the module docstring).

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
        self._ahead: dict[int, tuple[int, np.ndarray]] = {}  # draw -> (first step, states)

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
        n = math.prod(like.shape[1:])
        if _TEMPLATE is None:  # pragma: no cover - unknown generator layout
            keys = request_keys(self._bases, [request_word(DOMAIN_STREAM, step, draw)])
            return _normals_seeded32(keys, n, like.device, like.dtype).reshape(like.shape)
        z = _normals_from_states(self._states(step, draw), n, like.device, like.dtype)
        return z.reshape(like.shape)

    def _states(self, step: int, draw: int) -> np.ndarray:
        """Generator states of (every sample, step, draw). Small batches compute those of the
        next few steps too, in one vectorised pass (solvers ask for steps in order); the values
        are the same either way, only the cost per step changes."""
        hit = self._ahead.get(draw)
        if hit is not None and 0 <= step - hit[0] < hit[1].shape[1]:
            return hit[1][:, step - hit[0]]
        rows = len(self._bases)
        ahead = max(1, _AHEAD_ROWS // rows)
        words = [request_word(DOMAIN_STREAM, step + j, draw) for j in range(ahead)]
        img = _state_images(request_keys(self._bases, words)).reshape(rows, ahead, -1)
        self._ahead[draw] = (step, img)
        return img[:, 0]

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

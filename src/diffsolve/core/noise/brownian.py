r"""A virtual Brownian path in lambda, keyed only by (seed, lambda).

:class:`BrownianPath` gives every sample a Brownian motion W(lambda) on
[lam_min, lam_max] that is a *fixed function* of the sample seed and lambda. It is never
stored: any value is recomputed on demand from keyed normals
(:func:`diffsolve.noise.streams.keyed_normals`, keyed by (seed, level, node)), so

* the increment over [a, c] is exactly the sum of the increments over [a, b] and [b, c]
  (up to float64 rounding);
* the answer does not depend on the order of the queries or on which other queries were made;
* a 20-step and a 40-step run with the same seed follow the same path (the property that
  makes SDE samples converge as the step count grows, and that lets adaptive solvers reject
  and retry a step);
* per-sample seeds make it independent of batch size and composition.

The idea is the virtual Brownian tree of Li, Wong, Chen & Duvenaud (2020, "Scalable gradients
for stochastic differential equations", AISTATS) and Kidger, Foster, Li & Lyons (2021,
"Efficient and accurate gradients for neural SDEs", NeurIPS; diffrax's
``VirtualBrownianTree``), built here on Lévy's midpoint (Brownian-bridge) construction and on
keyed per-node normal streams instead of a splittable PRNG.

**Construction.** Write L = lam_max - lam_min and number the dyadic nodes of level l as
[lam_min + k L/2^l, lam_min + (k+1) L/2^l], k < 2^l. Let W(lam_min) = 0 and
W(lam_max) = sqrt(L) Z_end. Given the values W(a), W(b) at the ends of a node of width
w = b - a, the value at its midpoint is (Lévy 1939; the Brownian-bridge property)

    W((a+b)/2) = (W(a) + W(b))/2 + (sqrt(w)/2) Z_{l,k},

with Z_{l,k} a standard normal tensor keyed by (seed, level, node). This is exact: at every
dyadic point of level <= depth the values have the joint law of Brownian motion.

**Inside a leaf** (level ``depth``, width w, theta = (t - a)/w) the path is

    W(t) = W(a) + theta (W(b) - W(a)) + sqrt(theta (1 - theta) w) Z_leaf,

a Brownian bridge whose single normal Z_leaf is the leaf's own midpoint normal. Consequences:

* every W(t) has exactly the law N(0, t - lam_min);
* given the dyadic values, bridges in different leaves are independent (Markov property), so
  **the joint law of any set of points lying in distinct leaves is exactly that of Brownian
  motion**: increments between them are exactly N(0, length), however the interval is cut;
* two points in the *same* leaf share Z_leaf, so their joint law is approximate: the
  normalised increment between them has variance in [d/w, 2] for a gap d inside a leaf of
  width w (bounded, never the blow-up a bridge keyed by t itself would give), instead of 1;
* the path is continuous in t, and at the leaf midpoint it agrees (up to rounding) with the
  path of depth ``depth + 1``, so deepening a tree refines it rather than replacing it.

So choose ``depth`` so that the leaf width L / 2^depth is below the smallest gap between the
lambda values a solver queries. The default gives leaves no wider than 1/16 in lambda
(``depth = ceil(log2(16 L))``; depth 8, leaf 0.041, for EDM's sigma in [0.002, 80],
L = 10.6): exact for uniform-lambda grids up to about 250 steps on that range, or about 80
steps of a three-stage method. Pass a larger ``depth`` for finer grids (each extra level
costs one more normal tensor per step), a smaller one for speed with coarse grids; keep it
fixed between runs that must share a path. Linear interpolation in a fine leaf (the other
common choice, torchsde's tolerance) would instead shrink the variance of every non-dyadic
increment.

**Cost.** A query recomputes only the levels below the one where its root-to-leaf path
leaves the previous query's path (cached), one normal tensor per new node; monotone solver
queries therefore cost about ``depth - log2(L/h) + 1`` normal tensors per step of size h.
Recent point values are cached too, so the left end of a step is usually free. Each normal
tensor costs about one ``torch.randn`` of the same shape (:func:`keyed_normals`) plus a float64
cast, and the tree arithmetic is float64, so a step of a 20-step Karras grid costs about 11x
(depth 6) to 18x (default depth 8) ``randn_like`` at 64x3x64x64 and 30-45x at 1x4x64x64,
where per-call overheads dominate (``benchmarks/noise_cost.py``, docs/bench/noise; k-diffusion's
torchsde tree costs about 100x). Memory: about ``depth + 2`` float64 tensors of the state's
size are held.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import check_request
from .streams import (
    DOMAIN_TREE,
    DOMAIN_TREE_END,
    _as_int,
    _check_batch,
    base_key,
    derive_seed,
    keyed_normals,
    request_keys,
    request_word,
)

__all__ = ["DEFAULT_LEAF_WIDTH", "BrownianPath"]

DEFAULT_LEAF_WIDTH = 1.0 / 16.0
_MAX_DEPTH = 48
_REL_TOL = 1e-9


@dataclass
class _Node:
    k: int
    wa: Tensor  # W at the node's left end, (rows, n) float64
    wb: Tensor  # W at the node's right end
    mid: Tensor | None = None  # W at the midpoint, once computed
    z: Tensor | None = None  # the node's normal Z_{l,k} (kept for the leaf only)


class BrownianPath:
    """Per-sample virtual Brownian motion W(lambda) on [lam_min, lam_max].

    Args:
        seeds: one integer seed per batch element.
        lam_min, lam_max: the lambda range (finite, lam_min < lam_max). Queries may fall
            outside by at most 1e-9 * max(1, |lam_min|, |lam_max|) (clamped); further out
            raises ValueError.
        depth: dyadic depth of the tree (leaf width (lam_max - lam_min) / 2^depth). Default:
            the smallest depth with leaf width <= :data:`DEFAULT_LEAF_WIDTH` (1/16).
        cache_points: how many recent W(lambda) values to keep (>= 2).

    ``normal(like, lam_from=a, lam_to=b, ...)`` returns (W(b) - W(a)) / sqrt(|b - a|), exactly
    N(0, 1) per element (see the module docstring for when the joint law is exact); ``step``
    and ``draw`` are ignored. Values are computed in float64 and cast to ``like.dtype``.
    """

    def __init__(
        self,
        seeds: Iterable[int],
        lam_min: float,
        lam_max: float,
        *,
        depth: int | None = None,
        cache_points: int = 8,
    ) -> None:
        self.seeds: tuple[int, ...] = tuple(_as_int(s, "seed") for s in seeds)
        if not self.seeds:
            raise ValueError("BrownianPath needs at least one seed")
        lo, hi = float(lam_min), float(lam_max)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(
                f"BrownianPath needs finite lam_min < lam_max, got [{lam_min}, {lam_max}] "
                "(for a grid ending at sigma = 0, use its last finite lambda)"
            )
        self.lam_min, self.lam_max = lo, hi
        self.length = hi - lo
        if depth is None:
            depth = max(1, math.ceil(math.log2(self.length / DEFAULT_LEAF_WIDTH)))
        depth = _as_int(depth, "depth")
        if not 0 <= depth <= _MAX_DEPTH:
            raise ValueError(f"depth must be in [0, {_MAX_DEPTH}], got {depth}")
        self.depth = depth
        cache_points = _as_int(cache_points, "cache_points")
        if cache_points < 2:
            raise ValueError(f"cache_points must be >= 2, got {cache_points}")
        self._cache_points = cache_points
        self._tol = _REL_TOL * max(1.0, abs(lo), abs(hi))
        self._bases = [base_key(s) for s in self.seeds]
        self.normals_drawn = 0  # number of (rows, n) normal tensors generated so far
        self._reset(None)

    @classmethod
    def from_seed(
        cls,
        seed: int,
        batch: int,
        lam_min: float,
        lam_max: float,
        *,
        offset: int = 0,
        depth: int | None = None,
    ) -> BrownianPath:
        """Paths for global samples ``offset .. offset+batch-1`` of a run seeded by ``seed``
        (the same per-sample seeds as :meth:`PerSampleStreams.from_seed`; the keys are
        domain-separated, so the path is independent of those streams)."""
        batch = _as_int(batch, "batch")
        offset = _as_int(offset, "offset")
        if batch < 1 or offset < 0:
            raise ValueError(f"need batch >= 1 and offset >= 0, got {batch}, {offset}")
        return cls(
            [derive_seed(seed, offset + i) for i in range(batch)], lam_min, lam_max, depth=depth
        )

    @property
    def leaf_width(self) -> float:
        """Width in lambda of the tree's leaves, (lam_max - lam_min) / 2^depth."""
        return self.length / 2.0**self.depth

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        return (
            f"BrownianPath({len(self.seeds)} seeds, [{self.lam_min:g}, {self.lam_max:g}], "
            f"depth={self.depth})"
        )

    # -- internals -------------------------------------------------------------------------

    def _reset(self, sig: tuple[int, int, torch.device] | None) -> None:
        self._sig = sig
        self._path: list[_Node] = []
        self._points: OrderedDict[float, Tensor] = OrderedDict()

    def _prepare(self, like: Tensor) -> tuple[int, int, torch.device]:
        _check_batch(like, len(self.seeds), type(self).__name__)
        sig = (like.shape[0], like[0].numel(), like.device)
        if sig != self._sig:
            self._reset(sig)
        return sig

    def _clamp(self, lam: float, what: str) -> float:
        t = float(lam)
        if t != t or not (self.lam_min - self._tol <= t <= self.lam_max + self._tol):
            raise ValueError(
                f"{what} = {lam!r} is outside the Brownian path's range "
                f"[{self.lam_min!r}, {self.lam_max!r}]; build the path over the whole grid "
                "(a final sigma = 0 step needs no noise)"
            )
        return min(max(t, self.lam_min), self.lam_max)

    def _normals(
        self, words: list[int], scales: list[float], rows: int, n: int, device: torch.device
    ) -> Tensor:
        keys = request_keys(self._bases, words)
        self.normals_drawn += len(words)
        z = keyed_normals(keys, n, device, torch.float64).view(rows, len(words), n)
        z *= torch.tensor(scales, dtype=torch.float64, device=device).view(1, -1, 1)
        return z

    def _scale(self, lev: int) -> float:
        if lev < 0:
            return math.sqrt(self.length)
        if lev == self.depth:
            return 1.0
        return 0.5 * math.sqrt(self.length / 2.0**lev)

    def _w(self, t: float, rows: int, n: int, device: torch.device) -> Tensor:
        """W(t) for a clamped t, (rows, n) float64 (cached)."""
        hit = self._points.get(t)
        if hit is not None:
            self._points.move_to_end(t)
            return hit
        d = self.depth
        x = (t - self.lam_min) / self.length * 2.0**d
        k_leaf = min(math.floor(x), 2**d - 1)
        theta = x - k_leaf
        ks = [k_leaf >> (d - lev) for lev in range(d + 1)]
        path = self._path
        l0 = 0
        while l0 < len(path) and path[l0].k == ks[l0]:
            l0 += 1
        del path[l0:]
        # one batched draw for every normal this query needs
        need: list[tuple[int, int]] = []  # (level, node); level -1 is the right end
        if l0 == 0:
            need.append((-1, 0))
        for lev in range(max(l0 - 1, 0), d):
            if lev < l0 and path[lev].mid is not None:
                continue
            need.append((lev, ks[lev]))
        if l0 <= d:
            need.append((d, ks[d]))
        elif path[d].z is None:  # pragma: no cover - leaf nodes always keep their z
            need.append((d, ks[d]))
        zs: dict[tuple[int, int], Tensor] = {}
        if need:
            words = [
                request_word(DOMAIN_TREE_END, 0, 0)
                if lev < 0
                else request_word(DOMAIN_TREE, lev, k)
                for lev, k in need
            ]
            # scale folded in: sqrt(L) for the right end, sqrt(width)/2 for a midpoint,
            # 1 for the leaf (its normal is reused by every point in the leaf)
            scales = [self._scale(lev) for lev, _ in need]
            z = self._normals(words, scales, rows, n, device)
            zs = {key: z[:, i] for i, key in enumerate(need)}
        for lev in range(l0, d + 1):
            if lev == 0:
                wa = torch.zeros(rows, n, dtype=torch.float64, device=device)
                wb = zs[(-1, 0)]
            else:
                parent = path[lev - 1]
                if parent.mid is None:
                    mid = torch.add(parent.wa, parent.wb)
                    mid *= 0.5
                    mid += zs[(lev - 1, parent.k)]
                    parent.mid = mid
                if ks[lev] == 2 * parent.k:
                    wa, wb = parent.wa, parent.mid
                else:
                    wa, wb = parent.mid, parent.wb
            path.append(_Node(ks[lev], wa, wb))
        leaf = path[d]
        if leaf.z is None:
            leaf.z = zs[(d, ks[d])]
        amp = math.sqrt(max(theta * (1.0 - theta), 0.0) * self.leaf_width)
        # explicit, separately rounded operations: the same bits whatever the query history
        w = torch.sub(leaf.wb, leaf.wa)
        w *= theta
        w += leaf.wa
        w += leaf.z * amp
        self._points[t] = w
        if len(self._points) > self._cache_points:
            self._points.popitem(last=False)
        return w

    # -- public ----------------------------------------------------------------------------

    def value(self, like: Tensor, lam: float) -> Tensor:
        """W(lam) for every sample, float64, shaped like ``like`` (W(lam_min) = 0)."""
        check_request(like, 0, 0)
        rows, n, device = self._prepare(like)
        return self._w(self._clamp(lam, "lam"), rows, n, device).view(like.shape)

    def increment(self, like: Tensor, lam_from: float, lam_to: float) -> Tensor:
        """W(lam_to) - W(lam_from), float64, shaped like ``like`` (not normalised)."""
        check_request(like, 0, 0)
        rows, n, device = self._prepare(like)
        a = self._clamp(lam_from, "lam_from")
        b = self._clamp(lam_to, "lam_to")
        return (self._w(b, rows, n, device) - self._w(a, rows, n, device)).view(like.shape)

    def normal(
        self, like: Tensor, *, step: int = 0, draw: int = 0, lam_from: float, lam_to: float
    ) -> Tensor:
        """(W(lam_to) - W(lam_from)) / sqrt(|lam_to - lam_from|), cast to ``like.dtype``.

        ``lam_from > lam_to`` is allowed (the result is still N(0, 1)); equal ends raise.
        """
        check_request(like, step, draw)
        rows, n, device = self._prepare(like)
        a = self._clamp(lam_from, "lam_from")
        b = self._clamp(lam_to, "lam_to")
        if a == b:
            raise ValueError(
                f"zero-length lambda interval [{lam_from!r}, {lam_to!r}]: a Brownian increment "
                "needs lam_from != lam_to"
            )
        inc = self._w(b, rows, n, device) - self._w(a, rows, n, device)
        return (inc / math.sqrt(abs(b - a))).view(like.shape).to(like.dtype)

r"""Noise for stochastic samplers: the :class:`NoiseSource` interface and its implementations.

* :class:`PerSampleStreams` — keyed per-sample Gaussian streams keyed by
  (seed, step, draw, element): batch-, order- and device-independent (the default).
* :class:`BatchStream` — keyed by (seed, offset, step, draw) but one ``randn`` for the whole
  batch: randn speed for low-dimensional samples, not batch-split invariant.
* :class:`BrownianPath` — a virtual Brownian tree in lambda keyed by (seed, lambda): the same
  path at every step count.
* :class:`ZeroNoise`, :class:`GivenNoise`, :class:`RecordingNoise` — for tests and inversion.
* :class:`KDiffusionNoiseSampler`, :func:`as_kdiffusion_sampler` — adapters to and from
  k-diffusion's ``noise_sampler(sigma, sigma_next)``.
* :func:`make_noise` — resolves the user-facing ``noise=`` argument.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .base import (
    GivenNoise,
    KDiffusionNoiseSampler,
    MissingNoiseError,
    NoiseRequest,
    NoiseSource,
    RecordingNoise,
    ZeroNoise,
    as_kdiffusion_sampler,
    lam_of_sigma,
)
from .batch import BatchStream
from .brownian import DEFAULT_LEAF_WIDTH, BrownianPath
from .streams import NOISE_STREAM_VERSION, PerSampleStreams, derive_seed

__all__ = [
    "DEFAULT_LEAF_WIDTH",
    "NOISE_STREAM_VERSION",
    "BatchStream",
    "BrownianPath",
    "GivenNoise",
    "KDiffusionNoiseSampler",
    "MissingNoiseError",
    "NoiseRequest",
    "NoiseSource",
    "PerSampleStreams",
    "RecordingNoise",
    "ZeroNoise",
    "as_kdiffusion_sampler",
    "derive_seed",
    "lam_of_sigma",
    "make_noise",
]

NoiseSpec = NoiseSource | int | str | Callable[[Tensor, Tensor], Tensor] | None


def make_noise(
    noise: NoiseSpec,
    like: Tensor,
    seed: int | None = None,
    *,
    lam_range: tuple[float, float] | None = None,
    offset: int = 0,
) -> NoiseSource:
    """Resolve a user's ``noise=`` argument into a :class:`NoiseSource` for a batch like ``like``.

    * ``None``: ``PerSampleStreams.from_seed(seed, B, offset)`` with ``seed`` defaulting to 0.
    * an ``int`` n (not bool): ``PerSampleStreams.from_seed(n, B, offset)``; passing ``seed``
      as well is an error (two seeds).
    * ``"streams"``: as ``None``. ``"zero"``: :class:`ZeroNoise`.
    * ``"batch"``: ``BatchStream(seed or 0, offset)``: one keyed ``randn`` per draw for the
      whole batch (fast for low-dimensional samples; not batch-split invariant).
    * ``"brownian"``: ``BrownianPath.from_seed(seed or 0, B, *lam_range, offset=offset)``;
      ``lam_range`` = (lam_min, lam_max) must be given (the finite lambda range of the grid).
    * an object with a callable ``normal`` method (a NoiseSource): returned unchanged.
    * any other callable: taken as a k-diffusion ``noise_sampler(sigma, sigma_next)`` and
      wrapped in :class:`KDiffusionNoiseSampler`.

    B is ``like.shape[0]``. Per-sample seeds are ``derive_seed(seed, offset + b)``, so sample
    b's noise is the same in any batch split.
    """
    if like.ndim < 1:
        raise ValueError("`like` must be batch-first (B, ...)")
    batch = like.shape[0]
    if noise is None:
        return PerSampleStreams.from_seed(0 if seed is None else seed, batch, offset)
    if isinstance(noise, bool):
        raise TypeError("noise=True/False is ambiguous: pass a seed, a NoiseSource or a name")
    if isinstance(noise, int):
        if seed is not None:
            raise ValueError(f"noise={noise} is already a seed; do not also pass seed={seed}")
        return PerSampleStreams.from_seed(noise, batch, offset)
    if isinstance(noise, str):
        name = noise.lower()
        if name == "streams":
            return PerSampleStreams.from_seed(0 if seed is None else seed, batch, offset)
        if name == "zero":
            return ZeroNoise()
        if name == "batch":
            return BatchStream(0 if seed is None else seed, offset)
        if name == "brownian":
            if lam_range is None:
                raise ValueError(
                    'noise="brownian" needs lam_range=(lam_min, lam_max), the finite lambda '
                    "range of the grid, to build the path over"
                )
            lo, hi = lam_range
            return BrownianPath.from_seed(0 if seed is None else seed, batch, lo, hi, offset=offset)
        raise ValueError(
            f"unknown noise name {noise!r}; use 'streams', 'batch', 'brownian' or 'zero', an int "
            "seed, a NoiseSource or a k-diffusion noise_sampler"
        )
    if callable(getattr(noise, "normal", None)):
        return noise  # type: ignore[return-value]
    if callable(noise):
        return KDiffusionNoiseSampler(noise)
    raise TypeError(
        f"cannot make a noise source from {type(noise).__name__}; use None, an int seed, "
        "'streams', 'batch', 'brownian', 'zero', a NoiseSource or a k-diffusion noise_sampler"
    )

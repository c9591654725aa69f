r"""The noise interface every stochastic solver uses, and the small sources used by tests.

A stochastic solver never calls ``torch.randn``. It asks a :class:`NoiseSource` for a
standard-normal tensor shaped like its state::

    z = noise.normal(x, step=i, draw=j, lam_from=lam_s, lam_to=lam_t)

* ``step`` is the solver step index and ``draw`` numbers the independent draws a step needs
  (SEEDS-3 uses several per step, SA-Solver one). Counter-based streams
  (:class:`~diffsolve.noise.streams.PerSampleStreams`) key their numbers by these two integers,
  so a draw does not depend on how many draws were made before it.
* ``(lam_from, lam_to)`` is the half-log-SNR sub-interval lambda = log(alpha/sigma) the Gaussian
  increment belongs to. Brownian paths (:class:`~diffsolve.noise.brownian.BrownianPath`)
  return the normalised increment (W(lam_to) - W(lam_from)) / sqrt(lam_to - lam_from) and
  ignore ``step``/``draw``.

Every source returns a tensor with ``like``'s shape, dtype and device. The first axis is the
batch axis. Sources in this module:

* :class:`ZeroNoise`: zeros. Solvers then follow the deterministic limit of their SDE's
  discretisation (used in tests that compare against the ODE solver).
* :class:`GivenNoise`: returns tensors handed in beforehand, keyed by ``(step, draw)``.
* :class:`RecordingNoise`: wraps another source and records every request and answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "GivenNoise",
    "KDiffusionNoiseSampler",
    "MissingNoiseError",
    "NoiseRequest",
    "NoiseSource",
    "RecordingNoise",
    "ZeroNoise",
    "as_kdiffusion_sampler",
    "check_request",
    "lam_of_sigma",
]


@runtime_checkable
class NoiseSource(Protocol):
    """Anything that hands solvers standard-normal tensors.

    Implementations must return a tensor with exactly ``like``'s shape, dtype and device and
    must not modify ``like``. Drawing is keyed, not sequential: the same arguments give the
    same tensor for the deterministic sources in this package.
    """

    def normal(
        self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float
    ) -> Tensor:
        """A standard-normal tensor shaped/typed like ``like`` (batch-first, shape (B, ...)).

        ``step``, ``draw`` identify the draw within the run (streams use them);
        ``lam_from < lam_to`` is the lambda sub-interval the increment belongs to (Brownian
        paths use it).
        """
        ...


class MissingNoiseError(KeyError):
    """:class:`GivenNoise` was asked for a ``(step, draw)`` it was not given."""

    def __str__(self) -> str:  # KeyError's str() would add quotes around the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class NoiseRequest:
    """One call of :meth:`NoiseSource.normal`, as recorded by :class:`RecordingNoise`."""

    step: int
    draw: int
    lam_from: float
    lam_to: float
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def check_request(like: Tensor, step: int, draw: int) -> None:
    """Validate the arguments common to every source; raise ValueError/TypeError otherwise."""
    if not isinstance(like, Tensor):
        raise TypeError(f"`like` must be a torch.Tensor, got {type(like).__name__}")
    if like.ndim < 1:
        raise ValueError(
            "`like` must be batch-first with at least one dimension (B, ...), "
            f"got a {like.ndim}-d tensor"
        )
    if not like.is_floating_point():
        raise ValueError(f"`like` must have a real floating dtype, got {like.dtype}")
    for name, v in (("step", step), ("draw", draw)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"`{name}` must be an int, got {v!r}")


class ZeroNoise:
    """Returns zeros: the deterministic limit, for tests. Satisfies :class:`NoiseSource`."""

    def normal(
        self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float
    ) -> Tensor:
        check_request(like, step, draw)
        return torch.zeros_like(like)

    def __repr__(self) -> str:
        return "ZeroNoise()"


class GivenNoise:
    """Injects pre-chosen noise: returns the tensor given for ``(step, draw)``.

    Args:
        tensors: either a sequence, where ``tensors[i]`` is the noise for ``(step=i, draw=0)``,
            or a mapping ``{(step, draw): tensor}``. Each tensor must have the full shape of the
            state it will replace (batch axis included); it is returned converted to ``like``'s
            dtype and device (a copy, so callers may modify it).

    Raises (from :meth:`normal`):
        MissingNoiseError (a ``KeyError``): no tensor for that ``(step, draw)``.
        ValueError: the stored tensor's shape differs from ``like.shape``.
    """

    def __init__(self, tensors: Sequence[Tensor] | Mapping[tuple[int, int], Tensor]) -> None:
        if isinstance(tensors, Mapping):
            items = dict(tensors.items())
        elif isinstance(tensors, Tensor):
            raise TypeError(
                "GivenNoise takes a sequence or a {(step, draw): tensor} mapping, not one "
                "tensor; wrap it as [tensor] for step 0"
            )
        else:
            items = {(i, 0): t for i, t in enumerate(tensors)}
        for key, t in items.items():
            if (
                not isinstance(key, tuple)
                or len(key) != 2
                or not all(isinstance(k, int) and not isinstance(k, bool) for k in key)
            ):
                raise TypeError(f"GivenNoise keys must be (step, draw) int pairs, got {key!r}")
            if not isinstance(t, Tensor):
                raise TypeError(f"GivenNoise value for {key} is not a tensor: {type(t).__name__}")
        self._tensors: dict[tuple[int, int], Tensor] = items

    @property
    def keys(self) -> list[tuple[int, int]]:
        """The ``(step, draw)`` pairs this source can answer, sorted."""
        return sorted(self._tensors)

    def normal(
        self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float
    ) -> Tensor:
        check_request(like, step, draw)
        try:
            t = self._tensors[(step, draw)]
        except KeyError:
            avail = self.keys
            shown = ", ".join(map(str, avail[:8])) + (" ..." if len(avail) > 8 else "")
            raise MissingNoiseError(
                f"GivenNoise has no tensor for (step={step}, draw={draw}); "
                f"it holds {len(avail)} entries: {shown or 'none'}"
            ) from None
        if tuple(t.shape) != tuple(like.shape):
            raise ValueError(
                f"GivenNoise tensor for (step={step}, draw={draw}) has shape {tuple(t.shape)}, "
                f"but the state has shape {tuple(like.shape)}"
            )
        return t.to(device=like.device, dtype=like.dtype, copy=True)

    def __repr__(self) -> str:
        return f"GivenNoise({len(self._tensors)} tensors)"


class RecordingNoise:
    """Wraps a source and records every request and the tensor it returned.

    ``requests[i]`` is a :class:`NoiseRequest`; ``tensors[i]`` a detached clone of the answer.
    :meth:`replay` turns the record into a :class:`GivenNoise` that reproduces the run.
    """

    def __init__(self, inner: NoiseSource) -> None:
        if not callable(getattr(inner, "normal", None)):
            raise TypeError(f"RecordingNoise wraps a NoiseSource, got {type(inner).__name__}")
        self.inner = inner
        self.requests: list[NoiseRequest] = []
        self.tensors: list[Tensor] = []

    def normal(
        self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float
    ) -> Tensor:
        out = self.inner.normal(like, step=step, draw=draw, lam_from=lam_from, lam_to=lam_to)
        self.requests.append(
            NoiseRequest(
                step=step,
                draw=draw,
                lam_from=float(lam_from),
                lam_to=float(lam_to),
                shape=tuple(like.shape),
                dtype=like.dtype,
                device=like.device,
            )
        )
        self.tensors.append(out.detach().clone())
        return out

    def __len__(self) -> int:
        return len(self.requests)

    def clear(self) -> None:
        self.requests.clear()
        self.tensors.clear()

    def replay(self) -> GivenNoise:
        """A :class:`GivenNoise` returning the recorded tensors (the last one for repeated keys)."""
        return GivenNoise(
            {(r.step, r.draw): t for r, t in zip(self.requests, self.tensors, strict=True)}
        )

    def __repr__(self) -> str:
        return f"RecordingNoise({self.inner!r}, {len(self.requests)} requests)"


def lam_of_sigma(sigma: float) -> float:
    """lambda = -log(sigma~) for the EDM/k-diffusion noise level sigma~ = sigma/alpha >= 0.

    ``sigma = 0`` gives ``+inf``; negative or non-finite sigma raises ValueError.
    """
    s = float(sigma)
    if not (s >= 0.0) or math.isinf(s):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma!r}")
    return math.inf if s == 0.0 else -math.log(s)


class KDiffusionNoiseSampler:
    """Adapter: a k-diffusion ``noise_sampler(sigma, sigma_next) -> Tensor`` as a NoiseSource.

    k-diffusion's samplers call ``noise_sampler(sigma, sigma_next)`` for an N(0, I) tensor over
    the EDM noise-level interval [sigma_next, sigma] (``default_noise_sampler`` ignores the
    arguments, ``BrownianTreeNoiseSampler`` returns the normalised Brownian increment). Here
    sigma = exp(-lam_from) and sigma_next = exp(-lam_to) (0 when ``lam_to = +inf``); they are
    passed as 0-d tensors of ``like``'s dtype and device. ``step``/``draw`` are ignored: the
    wrapped sampler sees only the interval, as in k-diffusion.
    """

    def __init__(self, noise_sampler: Callable[[Tensor, Tensor], Tensor]) -> None:
        if not callable(noise_sampler):
            raise TypeError(f"noise_sampler must be callable, got {type(noise_sampler).__name__}")
        self.noise_sampler = noise_sampler

    def normal(
        self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float
    ) -> Tensor:
        check_request(like, step, draw)
        sig = torch.tensor(_sigma_of_lam(lam_from), dtype=like.dtype, device=like.device)
        sig_next = torch.tensor(_sigma_of_lam(lam_to), dtype=like.dtype, device=like.device)
        out = self.noise_sampler(sig, sig_next)
        if not isinstance(out, Tensor) or tuple(out.shape) != tuple(like.shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the k-diffusion noise_sampler returned {got}; expected a tensor of shape "
                f"{tuple(like.shape)}"
            )
        return out.to(device=like.device, dtype=like.dtype)

    def __repr__(self) -> str:
        return f"KDiffusionNoiseSampler({self.noise_sampler!r})"


def _sigma_of_lam(lam: float) -> float:
    lam = float(lam)
    if math.isnan(lam) or lam == -math.inf:
        raise ValueError(f"lambda must be > -inf and not NaN, got {lam!r} (sigma = exp(-lambda))")
    return 0.0 if lam == math.inf else math.exp(-lam)


def as_kdiffusion_sampler(
    source: NoiseSource, like: Tensor, *, start_step: int = 0, draw: int = 0
) -> Callable[[Tensor | float, Tensor | float], Tensor]:
    """The reverse adapter: a k-diffusion ``noise_sampler(sigma, sigma_next)`` from a source.

    The returned function keeps its own step counter: its k-th call (from 0) asks ``source``
    for ``step = start_step + k``, the given ``draw``, and the interval
    lam_from = -log(sigma), lam_to = -log(sigma_next) (``+inf`` when sigma_next = 0). The
    result has ``like``'s shape, dtype and device. The counter is exposed as ``f.calls``.
    """
    if not callable(getattr(source, "normal", None)):
        raise TypeError(f"source must be a NoiseSource, got {type(source).__name__}")
    check_request(like, start_step, draw)
    template = torch.empty_like(like)

    class _Sampler:
        calls = 0

        def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
            lam_from = lam_of_sigma(float(sigma))
            lam_to = lam_of_sigma(float(sigma_next))
            out = source.normal(
                template,
                step=start_step + self.calls,
                draw=draw,
                lam_from=lam_from,
                lam_to=lam_to,
            )
            self.calls += 1
            return out

    return _Sampler()

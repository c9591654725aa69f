r"""Keyed whole-batch noise: one ``torch.randn`` per (step, draw), for low-dimensional models.

:class:`PerSampleStreams` installs one generator state per sample and draw (a few
microseconds each), which is negligible for images (thousands of elements per sample) but
dominates for low-dimensional samples: 4000 two-dimensional samples cost ~40 ms per draw
against ~0.05 ms for ``torch.randn`` (``benchmarks/noise_cost.py``, shape 4000x2).
:class:`BatchStream` keeps the *keying* (the draw at (step, draw) is a pure function of
(seed, offset, step, draw) and the batch's shape, whatever the order of requests, dtype or
device) but draws the whole batch from one generator:

    z(step, draw) = randn(B, ...; generator seeded with mix64(base xor P)),
    base = base_key(derive_seed(seed, offset)),  P = request_word(BATCH, step, draw),

with the key functions of :mod:`.streams`. What it gives up is batch-split invariance:
sample b's noise depends on the whole batch (its size and where it starts), so a batch of 8
is *not* two batches of 4. Use it where that does not matter and speed does (benchmarks on
analytic 2-D / 16-D models, Monte Carlo studies); keep the default streams for generation
that may be resumed or split across processes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import check_request
from .streams import DOMAIN_BATCH, _as_int, base_key, derive_seed, mix64, request_word


class BatchStream:
    """Whole-batch keyed noise (maths in the module docstring). Satisfies ``NoiseSource``.

    Args:
        seed: the run's seed.
        offset: the global index of the batch's first sample (part of the key, so two
            batches of one run draw different noise).
    """

    def __init__(self, seed: int = 0, offset: int = 0) -> None:
        self.seed = _as_int(seed, "seed")
        self.offset = _as_int(offset, "offset")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, got {self.offset}")
        self._base = base_key(derive_seed(self.seed, self.offset))
        self._gen = torch.Generator()

    def normal(
        self, like: Tensor, *, step: int, draw: int, lam_from: float = 0.0, lam_to: float = 1.0
    ) -> Tensor:
        check_request(like, step, draw)
        self._gen.manual_seed(mix64(self._base ^ request_word(DOMAIN_BATCH, step, draw)))
        # drawn in float32 on the CPU, then cast and moved: every dtype and device gets the
        # same numbers (as the per-sample streams do)
        z = torch.randn(like.shape, generator=self._gen, dtype=torch.float32)
        return z.to(device=like.device, dtype=like.dtype)

    def __repr__(self) -> str:
        return f"BatchStream(seed={self.seed}, offset={self.offset})"

"""Benchmark models: the analytic Gaussian mixture, exact or with a deliberate smooth error.

The erroneous denoiser mimics a learned model:

    D_err(x, s) = D(x, s) + eps * s / sqrt(1 + s^2) * tanh(x A + b)

with s the EDM noise level and fixed A, b (seeded, 2-D mixtures only); the error vanishes
as s -> 0 and saturates at eps for large s.
"""

from __future__ import annotations

import math

import torch

from ..core.models import Denoiser
from ..core.schedules import EDM
from ..zoo import GaussianMixture

GMM_SCHEDULE = (0.002, 80.0)
"""(sigma_min, sigma_max) of the EDM schedule used by the GMM benchmarks."""


def erroneous_model(gmm: GaussianMixture, schedule: EDM, eps: float) -> Denoiser:
    """The mixture's exact denoiser plus the smooth error of the module docstring."""
    g = torch.Generator().manual_seed(1234)
    a = torch.randn(gmm.dim, gmm.dim, dtype=torch.float64, generator=g)
    b = torch.randn(gmm.dim, dtype=torch.float64, generator=g)

    def net(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = float(sigma[0])
        bias = eps * s / math.sqrt(1 + s * s) * torch.tanh(x.double() @ a.to(x.device)
                                                          + b.to(x.device))
        return (gmm.denoise(x, 1.0, s) + bias).to(x.dtype)

    return Denoiser(net, schedule, prediction="x0", time_input="sigma")


def gmm_model(eps: float = 0.0) -> tuple[GaussianMixture, Denoiser]:
    """The 2-D demo mixture and its denoiser on EDM(0.002, 80): exact for ``eps == 0``,
    else :func:`erroneous_model` with that error size."""
    gmm = GaussianMixture.default_2d()
    schedule = EDM(*GMM_SCHEDULE)
    model = gmm.denoiser(schedule) if eps == 0 else erroneous_model(gmm, schedule, eps)
    return gmm, model

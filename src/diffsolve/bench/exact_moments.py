r"""Exact output moments of a sampler on Gaussian data, without Monte Carlo.

With Gaussian data the denoiser is affine, so every exponential-integrator update is linear
in the start x_T and in each noise draw xi_k:

    out = a x_T + sum_k b_k xi_k + c

(aesthetics research note Sec. 3.5, tier 5). One batched run recovers a, c and every b_k:
element 0 starts at 0 with zero noise, element 1 at 1, element 2 + k at 0 with a unit impulse
in draw k. Then E[out] = a E[x_T] + c and Var[out] = a^2 Var[x_T] + sum_k b_k^2. Used by the
weak-order tests and the benchmarks that need an exact answer (e.g. benchmarks/mean_reverting.py).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.noise import GivenNoise, RecordingNoise, ZeroNoise
from ..drivers.loop import solve


def linear_output_moments(model: Any, grid: Any, solver: Any, x_mean: float, x_var: float,
                          **options: Any) -> tuple[float, float]:
    """Exact (mean, variance) of ``solver``'s output on 1-D Gaussian data (affine ``model``)
    from x_T with mean ``x_mean`` and variance ``x_var``; ``options`` go to ``solve``."""
    probe = RecordingNoise(ZeroNoise())
    solve(model, torch.zeros(1, 1, dtype=torch.float64), grid, solver, noise=probe,
          progress=False, **options)
    keys = sorted({(r.step, r.draw) for r in probe.requests})
    batch = 2 + len(keys)
    x = torch.zeros(batch, 1, dtype=torch.float64)
    x[1] = 1.0
    given = {}
    for k, key in enumerate(keys):
        impulse = torch.zeros(batch, 1, dtype=torch.float64)
        impulse[2 + k] = 1.0
        given[key] = impulse
    out = solve(model, x, grid, solver, noise=GivenNoise(given), progress=False, **options).x
    c = out[0, 0]
    a = out[1, 0] - c
    b = out[2:, 0] - c
    mean = float(a * x_mean + c)
    var = float(a * a * x_var + (b * b).sum())
    return mean, var

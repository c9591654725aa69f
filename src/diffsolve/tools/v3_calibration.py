r"""Calibration of DPM-Solver-v3's empirical model statistics (Zheng et al. 2023, Sec. 3.2).

:func:`compute_statistics` runs the sampler on calibration noise (it sits above the sampling
loop, hence in ``tools``) and estimates l, s, b of eq. (3)-(4); the statistics container and
its exact integrals are :mod:`diffsolve.solvers.engines.model_statistics` (re-exported here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.errors import DiffsolveError
from ..core.grids import Grid
from ..drivers.loop import solve
from ..solvers.engines.model_statistics import EMS, StepIntegrals, gaussian_statistics

__all__ = ["EMS", "StepIntegrals", "compute_statistics", "gaussian_statistics"]


def compute_statistics(model: Any, noise: Tensor, *, lam_min: float | None = None,
                       lam_max: float | None = None, points: int = 250,
                       solver: str = "dpmpp_3m", probes: int = 1, fd_scale: float | None = None,
                       per_dimension: bool = True, ridge: float = 1e-10, seed: int = 0,
                       ) -> EMS:
    """Estimate l, s, b (eq. 3-4) from calibration trajectories of ``model``.

    Args:
        model: a :class:`~diffsolve.models.Denoiser` (its NFE counter advances).
        noise: standard-normal calibration noise (N, *feature_shape); the trajectories start
            at sigma~ = e^{-lam_min} from x = sigma * noise.
        lam_min, lam_max: lambda range (default: the schedule's).
        points: number K of lambda points (uniform in lambda).
        solver: solver of the calibration trajectories (run on the EMS grid itself).
        probes: Hutchinson probes per point for eq. (3) (2 NFE each).
        fd_scale: finite-difference step of J v relative to sigma~ (default 1e-4 for float64
            states, 1e-2 otherwise).
        per_dimension: per-dimension statistics (the paper's); False averages them to scalars.
        ridge: regulariser of the s fit (see the module docstring).
        seed: Rademacher probe seed.

    Returns:
        EMS whose ``info`` records the calibration cost ("nfe": batched model calls,
        "sample_evaluations": nfe x N).
    """
    schedule = model.schedule
    lo = schedule.lam_min if lam_min is None else float(lam_min)
    hi = schedule.lam_max if lam_max is None else float(lam_max)
    if points < 8 or not lo < hi:
        raise DiffsolveError(f"need points >= 8 and lam_min < lam_max, got {points}, {lo}, {hi}")
    lams = torch.linspace(lo, hi, points, dtype=torch.float64)
    grid = Grid.from_lambdas(lams, schedule)
    nfe0 = model.nfe
    first = schedule.point(lo)
    ds: list[Tensor] = []
    with torch.no_grad():
        res = solve(model, first.sigma * noise, grid, solver, progress=False,
                    return_trajectory=True, denoise_final=True,
                    callback=lambda info: ds.append(info["denoised"]))
    traj = res.trajectory
    assert traj is not None
    ds[-1] = res.x  # the final callback's "denoised" is D at the last node
    pts = [schedule.point(float(v)) for v in lams]
    xt = torch.stack([x / p.alpha for x, p in zip(traj, pts, strict=True)]).to(torch.float64)
    d = torch.stack(ds).to(torch.float64)  # (K, N, ...)
    # eq. (3): diag of grad D by Hutchinson probes
    scale = fd_scale if fd_scale is not None else (1e-4 if noise.dtype == torch.float64 else 1e-2)
    gen = torch.Generator().manual_seed(seed)
    diag = torch.zeros_like(xt)
    with torch.no_grad():
        for i, p in enumerate(pts):
            x_i = traj[i]
            for _ in range(probes):
                v = (torch.randint(0, 2, x_i.shape, generator=gen) * 2 - 1).to(x_i)
                delta = scale * p.sigma_edm * p.alpha  # step in x; = scale * sigma~ in x~
                jv = (model.data(x_i + delta * v, p) - model.data(x_i - delta * v, p)) / (
                    2 * delta / p.alpha)
                diag[i] += (v * jv).to(torch.float64) / probes
    l_val = 1.0 - diag.mean(1)  # (K, ...)
    if not per_dimension:
        l_val = l_val.reshape(points, -1).mean(1)
    lb = l_val.reshape(points, 1, *l_val.shape[1:]) if per_dimension else l_val.reshape(
        points, *([1] * (xt.dim() - 1)))
    f = (1.0 - lb) * xt - d  # eq. (1)
    fprime = torch.from_numpy(np.gradient(f.numpy(), lams.numpy(), axis=0, edge_order=2))
    if per_dimension:
        fm, gm = f.mean(1), fprime.mean(1)
        cov = ((f - fm[:, None]) * (fprime - gm[:, None])).mean(1)
        var = ((f - fm[:, None]) ** 2).mean(1)
    else:
        ff, gg = f.reshape(points, -1), fprime.reshape(points, -1)
        fm, gm = ff.mean(1), gg.mean(1)
        cov = ((ff - fm[:, None]) * (gg - gm[:, None])).mean(1)
        var = ((ff - fm[:, None]) ** 2).mean(1)
    s_val = cov / (var + ridge)  # eq. (4)
    b_val = gm - s_val * fm
    nfe = model.nfe - nfe0
    info = {"kind": "estimated", "samples": int(noise.shape[0]), "points": points,
            "lam_range": [lo, hi], "solver": solver, "probes": probes, "nfe": int(nfe),
            "sample_evaluations": int(nfe * noise.shape[0]), "per_dimension": per_dimension,
            "fd_scale": scale, "ridge": ridge}
    return EMS(lams, l_val.contiguous(), s_val.contiguous(), b_val.contiguous(), info)



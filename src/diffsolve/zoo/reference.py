r"""High-accuracy reference solutions of the probability-flow ODE.

The probability-flow (PF) ODE of a diffusion model, written in EDM / variance-exploding
coordinates x~ = x/alpha with noise level sigma~ = sigma/alpha = exp(-lambda), is

    d x~ / d sigma~ = (x~ - D(x~, sigma~)) / sigma~          (Karras et al. 2022, eq. 4, s = 1)

where D(x~, sigma~) = E[x0 | x0 + sigma~ n = x~] is the ideal denoiser. With
lambda = -log sigma~ (so d sigma~ / d lambda = -sigma~) this becomes the smooth, well-scaled

    d x~ / d lambda = D(x~, exp(-lambda)) - x~ ,

which :func:`pf_ode_reference` integrates with scipy's 8th-order Dormand-Prince method
(``solve_ivp(method="DOP853")``, Hairer, Norsett & Wanner 1993) at tight tolerances, in float64,
with every batch element in one flattened system. Results are returned in EDM coordinates:
a caller working with a schedule (alpha, sigma) multiplies by alpha(lambda_to) to get back to
its own scaling (x = alpha x~); the starting state must likewise be divided by alpha(lambda_from).

:func:`gaussian_pf_ode_exact` gives the closed-form solution for Gaussian data, against which
the numerical reference is validated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..core.errors import DiffsolveError

DenoiseEDM = Callable[[np.ndarray, float], np.ndarray]


def _targets(lam_to: float | Sequence[float]) -> tuple[list[float], bool]:
    if isinstance(lam_to, (int, float)):
        return [float(lam_to)], True
    if isinstance(lam_to, Tensor):
        vals = [float(v) for v in lam_to.detach().reshape(-1).cpu().tolist()]
        return vals, lam_to.dim() == 0
    vals = [float(v) for v in lam_to]
    if not vals:
        raise DiffsolveError("lam_to is an empty sequence; give at least one target lambda")
    return vals, False


def pf_ode_reference(
    denoise_edm: DenoiseEDM,
    x_start: Tensor,
    lam_from: float,
    lam_to: float | Sequence[float],
    rtol: float = 1e-12,
    atol: float = 1e-12,
) -> Tensor:
    r"""Solve the PF-ODE  d x~/d lambda = D(x~, exp(-lambda)) - x~  from ``lam_from`` to ``lam_to``.

    The ODE is Karras et al. 2022 eq. 4 (with s = 1) in the variable lambda = -log sigma~, in
    EDM coordinates x~ = x/alpha, sigma~ = sigma/alpha. It is integrated with
    ``scipy.integrate.solve_ivp(method="DOP853")`` in float64, all batch elements together as
    one flattened system. For several targets the integration proceeds segment by segment
    through the sorted targets, so every returned state is an integration end point (no dense
    output interpolation).

    Args:
        denoise_edm: ``denoise_edm(x, sigma) -> x0`` on float64 arrays of shape (B, d), with
            ``sigma`` a Python float (EDM noise level; alpha = 1).
        x_start: EDM-scaled state at ``lam_from``, shape (B, d) or (B, *shape).
            A caller using a schedule passes x / alpha(lam_from).
        lam_from: half log-SNR of the start, lambda = -log sigma~.
        lam_to: one target lambda, or a sequence of them (any order, either side of lam_from).
        rtol, atol: DOP853 tolerances.

    Returns:
        float64 tensor on ``x_start``'s device: the EDM-scaled state x~ at ``lam_to``, shape
        (B, *shape), or (len(lam_to), B, *shape) for a sequence. Multiply by alpha(lam_to) to
        return to the schedule's scaling.

    Raises:
        DiffsolveError: when a lambda is not finite or the integrator fails.
    """
    targets, scalar = _targets(lam_to)
    lam_from = float(lam_from)
    if not all(math.isfinite(v) for v in [lam_from, *targets]):
        raise DiffsolveError(
            f"lambdas must be finite, got lam_from={lam_from}, lam_to={targets}")
    shape = tuple(x_start.shape)
    if len(shape) < 1:
        raise DiffsolveError("x_start needs a batch dimension: shape (B, d) or (B, *shape)")
    batch = shape[0]
    y0 = x_start.detach().to(device="cpu", dtype=torch.float64).reshape(batch, -1).numpy()
    d = y0.shape[1]

    def rhs(lam: float, y: np.ndarray) -> np.ndarray:
        x = y.reshape(batch, d)
        den = np.asarray(denoise_edm(x, math.exp(-lam)), dtype=np.float64).reshape(batch, d)
        return (den - x).reshape(-1)

    results: dict[float, np.ndarray] = {lam_from: y0.reshape(-1).copy()}
    # integrate outward from lam_from on each side, through the sorted targets
    above = sorted({v for v in targets if v > lam_from})
    below = sorted({v for v in targets if v < lam_from}, reverse=True)
    for side in (above, below):
        cur_lam, cur_y = lam_from, results[lam_from]
        for tgt in side:
            sol = solve_ivp(rhs, (cur_lam, tgt), cur_y, method="DOP853", rtol=rtol, atol=atol)
            if not sol.success:
                raise DiffsolveError(
                    f"DOP853 failed integrating the PF-ODE from lambda={cur_lam} to {tgt}: "
                    f"{sol.message}")
            cur_lam, cur_y = tgt, sol.y[:, -1].copy()
            results[tgt] = cur_y
    out = np.stack([results[v] for v in targets]).reshape(len(targets), *shape)
    res = torch.from_numpy(out).to(x_start.device)
    return res[0] if scalar else res


def gaussian_pf_ode_exact(
    x_start: Tensor,
    mean: Tensor | float,
    var: Tensor | float,
    sigma_from: float,
    sigma_to: float | Sequence[float],
) -> Tensor:
    r"""Closed-form PF-ODE flow for Gaussian data N(mean, diag(var)), EDM coordinates.

    For such data the ideal denoiser is D(x, s) = mean + var/(var + s^2) (x - mean), so the
    ODE dx/ds = (x - D)/s = s (x - mean)/(var + s^2) separates coordinate-wise and

        x(s') = mean + (x(s) - mean) * sqrt(var + s'^2) / sqrt(var + s^2).

    Args:
        x_start: state at noise level ``sigma_from``, shape (B, d) (or anything that
            broadcasts against ``mean`` and ``var``).
        mean, var: data mean and per-coordinate variance, scalars or shape (d,).
        sigma_from: EDM noise level of ``x_start``.
        sigma_to: target noise level, or a sequence of them.

    Returns:
        float64 tensor: x at ``sigma_to`` (shape of x_start), or stacked along a new leading
        dimension for a sequence of targets.
    """
    x = x_start.to(torch.float64)
    m = torch.as_tensor(mean, dtype=torch.float64, device=x.device)
    v = torch.as_tensor(var, dtype=torch.float64, device=x.device)
    s0 = float(sigma_from)

    def one(s1: float) -> Tensor:
        return m + (x - m) * torch.sqrt(v + s1 * s1) / torch.sqrt(v + s0 * s0)

    if isinstance(sigma_to, (int, float)):
        return one(float(sigma_to))
    return torch.stack([one(float(s)) for s in sigma_to])


__all__ = ["DenoiseEDM", "gaussian_pf_ode_exact", "pf_ode_reference"]

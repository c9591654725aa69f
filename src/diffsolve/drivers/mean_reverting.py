r"""Sampling mean-reverting diffusions: MRS (MR Sampler) and any registered solver on y = x - mu.

MRS (Li et al. 2025, arXiv 2502.07856; the paper body was not reachable, so the updates are
those of the authors' ``MRSampler`` as restated in research note
methods_lml_langevin_dmcmc_mrs_skipping.md Sec. D.2) integrates the MR probability-flow ODE or
reverse SDE semi-analytically. Step s -> t, h = lambda_t - lambda_s, q_0 / q_1 the newest /
previous model outputs, D_1 = (q_0 - q_1)/r with r = h_prev/h:

* ODE, data:  x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) q_0
  + alpha_t ((e^{-h} - 1)/h + 1) D_1
  + mu [1 - sigma_t/sigma_s + (sigma_t/sigma_s) alpha_s - alpha_t]
* ODE, noise: x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) q_0
  - sigma_t ((e^h - 1)/h - 1) D_1 + mu (1 - alpha_t/alpha_s)
* SDE, data:  x_t = (sigma_t/sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) q_0
  + alpha_t (1 - (1 - e^{-2h})/(2h)) D_1 + sigma_t sqrt(1 - e^{-2h}) z
  + mu [1 - (alpha_t/alpha_s) e^{-2h} - alpha_t (1 - e^{-2h})]
* SDE, noise: x_t = (alpha_t/alpha_s) x_s - 2 sigma_t (e^h - 1) q_0
  - 2 sigma_t ((e^h - 1)/h - 1) D_1 + sigma_t sqrt(e^{2h} - 1) z + mu (1 - alpha_t/alpha_s)

(order 1 drops D_1). Every mu term is what the shift y = x - mu produces from the same update
without mu, and those are DPM-Solver(++) multistep in its four algorithm types with the "heun"
(Taylor) weight of D_1 (Lu et al. 2022a eq. 3.7; Lu et al. 2022b eq. 9, App. C). So MRS is
``dpm_multistep`` on the shifted state of :class:`~diffsolve.core.mean_reverting.
MeanRevertingDenoiser` (identity checked against the formulas above, written out with their mu
terms, in tests/test_mean_reverting.py), with the note's step orders: warm-up order
min(order, i + 1) and, on grids of fewer than 10 steps, a first-order last step
(min(order, M - i)). The authors' code takes its final step at full order and lowers the one
before instead (docs/mean_reverting.md); that single-step difference is not reproduced.

Why a driver and not a solver file: the solver is an existing one; what is new is the change of
variable around the loop (data coordinates in and out), which every solver can use: e.g. the
Euler-Maruyama baseline of IR-SDE is ``solver="euler_maruyama"`` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import Grid
from ..core.mean_reverting import MeanRevertingDenoiser
from .loop import SampleResult, resolve_grid, solve

Kind = Literal["ode", "sde"]
MRSPrediction = Literal["data", "noise"]
_ALGORITHM = {("ode", "data"): "dpmsolver++", ("ode", "noise"): "dpmsolver",
              ("sde", "data"): "sde-dpmsolver++", ("sde", "noise"): "sde-dpmsolver"}
_MRS_FEW_STEPS = 10  # MRS lowers the last step's order on grids shorter than this


def mrs_options(kind: Kind = "ode", prediction: MRSPrediction = "data", order: int = 2, *,
                steps: int) -> dict[str, Any]:
    """The ``dpm_multistep`` options that are MRS ``(kind, prediction, order)`` on a grid of
    ``steps`` intervals (module docstring)."""
    if (kind, prediction) not in _ALGORITHM:
        raise SolverOptionError(
            f"MRS kind must be 'ode' or 'sde' and prediction 'data' or 'noise', got {kind!r}, "
            f"{prediction!r}")
    if order not in (1, 2):
        raise SolverOptionError(f"MRS order must be 1 or 2 here, got {order!r}")
    return {"algorithm_type": _ALGORITHM[kind, prediction], "solver_order": order,
            "solver_type": "heun", "lower_order_final": steps < _MRS_FEW_STEPS,
            "euler_at_final": False}


def sample_mean_reverting(model: MeanRevertingDenoiser, x: Tensor,
                          grid: Grid | str | Sequence[float] = "uniform_t", *,
                          steps: int | None = None, solver: str = "mrs", kind: Kind = "ode",
                          prediction: MRSPrediction = "data", order: int = 2,
                          to_zero: bool = False, **options: Any) -> SampleResult:
    """Integrate a mean-reverting diffusion from ``x`` (data coordinates, at the grid's first
    node) to the grid's last node; returns the result in data coordinates.

    Args:
        model: the :class:`MeanRevertingDenoiser` (it holds mu).
        x: the start, e.g. mu + sigma_T n (the MR prior; exact marginal alpha_T x_0 +
            (1 - alpha_T) mu + sigma_T n).
        grid: a Grid, EDM sigmas, or a grid name with ``steps`` (default "uniform_t", MRS's
            "linspace"; ``to_zero`` appends sigma = 0, MRS's ``denoise_last``).
        solver: "mrs" (with ``kind``, ``prediction``, ``order``) or any registered solver name,
            whose ``options`` are passed on.
        options: further options of :func:`diffsolve.solve` (noise, seed, ...) and of the solver.
    """
    if isinstance(grid, str):
        grid = resolve_grid(grid, model, steps, to_zero=to_zero)
    elif not isinstance(grid, Grid):
        grid = resolve_grid(grid, model, None)
    if solver == "mrs":
        options = {**mrs_options(kind, prediction, order, steps=grid.steps), **options}
        solver = "dpm_multistep"
    out = solve(model, model.state(x), grid, solver, progress=False, **options)
    traj = None if out.trajectory is None else [model.data_space(y) for y in out.trajectory]
    return dataclasses.replace(out, x=model.data_space(out.x), trajectory=traj)

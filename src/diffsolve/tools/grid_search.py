r"""Optimised time-step grids for a given solver, model and NFE budget (in the spirit of S^3,
Liu et al. 2023, "Towards a Unified Sampling Framework for Solver Searching of Diffusion
Probabilistic Models", which searches time steps (and solver choices) against reference
samples on a small calibration budget).

Parameterisation. The grid starts at lambda_0 (the schedule's sigma_max by default), takes
K finite steps with positive increments Delta_k = e^{u_k} and ends with the denoising step to
sigma = 0 (K = finite steps that ``nfe`` buys the solver):

    lambda_k = lambda_0 + c sum_{j<=k} e^{u_j},  c = min(1, (lam_max - lambda_0)/sum_j e^{u_j})  (1)

so every u in R^K gives a valid, strictly increasing grid whose last finite node is free
inside the schedule's range (moving it is often what helps most at 5 NFE).

Objective. For calibration noises n_1..n_M and reference endpoints x*_m (a high-NFE solve
from the same noises, DPM-Solver-3 at ``reference_nfe`` on a Karras grid by default):

    J(u) = sqrt( mean_{m, d} (Phi_u(n_m) - x*_m)^2 )                                          (2)

with Phi_u the solver's output on grid (1). Search: deterministic compass (pattern) search
on u from the Karras grid's increments: try u_k +- delta for each k, keep the first
improvement, halve delta after a sweep without one, stop at ``delta_min`` or after
``max_evals`` evaluations of (2). Each evaluation costs ``nfe`` batched model calls; the
total calibration cost (search + reference) is reported in NFE.

The result (:class:`SearchedGrid`) is saved as JSON (sigmas, decreasing, ending in 0) and is
used with ``solve(model, x, searched.grid, solver)`` or ``Grid.from_lambdas(searched.lams)``,
or from the CLI: ``diffsolve sample --grid path.json``.

Per-step solver choice (S^3's second search dimension), ``search_orders=True``: for the
data-prediction multistep family (``dpmpp_2m``, ``dpmpp_3m`` and their SDE forms, option
``step_order_caps``) a coordinate search over the order of each step o_k in {1..p} follows
the grid search: each sweep tries every order at every step, keeps improvements, and stops
after a sweep without one (at most ``order_sweeps``). The result stores the caps in
``solver_options`` so ``get_solver(sg.solver, **sg.solver_options)`` rebuilds the solver.
Predictor-corrector family choice is left out: :func:`search_solvers` picks the best of
several solvers, each with its own searched grid.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.errors import DiffsolveError
from ..core.grids import Grid, make_grid
from ..core.models import Denoiser
from ..drivers.loop import solve, steps_for_nfe
from ..solvers import get_solver

FORMAT = "diffsolve-grid-v1"


@dataclass
class SearchedGrid:
    """A searched grid and how it was found.

    Attributes:
        solver: solver name the grid was searched for; solver_options: its options
            (non-JSON values stored as strings).
        nfe: evaluation budget (finite steps x cost per step + the final denoise).
        sigmas: EDM noise levels sigma~ = e^{-lambda}, decreasing, last 0.
        objective: {"initial": J of the initial grid, "final": J of the result} (eq. 2).
        calibration: samples, evaluations, search NFE, reference NFE, seeds.
    """

    solver: str
    nfe: int
    sigmas: list[float]
    solver_options: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        return Grid.from_sigmas(self.sigmas)

    @property
    def lams(self) -> Tensor:
        return self.grid.lams

    def save(self, path: str | os.PathLike[str]) -> None:
        data = {"format": FORMAT, **asdict(self)}
        with open(path, "w") as f:
            json.dump(data, f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SearchedGrid:
        with open(path) as f:
            data = json.load(f)
        if data.pop("format", None) != FORMAT:
            raise DiffsolveError(f"{path} is not a diffsolve searched-grid file ({FORMAT})")
        out = cls(**data)
        out.grid  # validate  # noqa: B018
        return out


def load_grid(path: str | os.PathLike[str]) -> Grid:
    """The :class:`Grid` stored in a searched-grid JSON file."""
    return SearchedGrid.load(path).grid


def _lams_from_u(u: Tensor, lam0: float, lam_max: float) -> Tensor:
    inc = torch.exp(u)
    total = float(inc.sum())
    scale = min(1.0, (lam_max - lam0) / total)  # eq. (1)
    lams = lam0 + scale * torch.cumsum(inc, 0)
    lams[-1] = min(float(lams[-1]), lam_max)
    return torch.cat([torch.tensor([lam0], dtype=torch.float64), lams])


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = f"<{type(v).__name__}>"
    return out


def reference_endpoints(model: Denoiser, noise: Tensor, *, solver: str = "dpm_solver_3",
                        nfe: int = 301, grid: str = "karras") -> tuple[Tensor, int]:
    """High-NFE reference samples (sigma = 0) from ``noise``; returns (x, NFE spent)."""
    s = get_solver(solver)
    g = make_grid(grid, steps_for_nfe(s, nfe), model.schedule)
    n0 = model.nfe
    with torch.no_grad():
        x = solve(model, noise * model.schedule.point(float(g.lams[0])).sigma, g, s,
                  progress=False).x
    return x, model.nfe - n0


def search_grid(model: Denoiser, solver: str, nfe: int, noise: Tensor, *,
                reference: Tensor | None = None, reference_nfe: int = 301,
                init: str = "karras", solver_options: dict[str, Any] | None = None,
                max_evals: int = 200, delta0: float = 0.5, delta_min: float = 0.03,
                search_orders: bool = False, order_sweeps: int = 2,
                ) -> SearchedGrid:
    """Search the grid of ``solver`` at ``nfe`` evaluations that minimises eq. (2).

    Args:
        model: the denoiser.
        solver: registered solver name.
        nfe: evaluation budget of the grid (as ``sample(..., nfe=...)``).
        noise: calibration noise (M, *shape), standard normal.
        reference: reference endpoints for ``noise`` (default: :func:`reference_endpoints`).
        reference_nfe: budget of the default reference.
        init: named grid to start from.
        solver_options: options of the solver.
        max_evals, delta0, delta_min: compass-search budget and step sizes (in u = log step).
        search_orders: then search the order of every step (solvers with ``step_order_caps``).
        order_sweeps: at most this many coordinate sweeps over the step orders.
    """
    options = dict(solver_options or {})
    s = get_solver(solver, **options)
    if search_orders and "step_order_caps" not in s.options():
        raise DiffsolveError(
            f"{solver} has no per-step order option (step_order_caps); search_orders needs a "
            "data-prediction multistep solver such as dpmpp_2m or dpmpp_3m")
    steps = steps_for_nfe(s, nfe)  # includes the final denoise interval
    if steps < 2:
        raise DiffsolveError(f"{solver} at {nfe} NFE leaves no finite step to search")
    schedule = model.schedule
    start = make_grid(init, steps, schedule)
    finite = start.finite_lams()
    lam0, lam_max = float(finite[0]), schedule.lam_max
    u = torch.log(finite[1:] - finite[:-1])
    ref_nfe = 0
    if reference is None:
        reference, ref_nfe = reference_endpoints(model, noise, nfe=reference_nfe)
    x_t = noise * schedule.point(lam0).sigma
    n0 = model.nfe
    cache: dict[tuple[float, ...], float] = {}

    def objective(v: Tensor, caps: tuple[int, ...] | None = None) -> float:
        key = (*tuple(round(float(a), 12) for a in v), caps)
        if key not in cache:
            lams = _lams_from_u(v, lam0, lam_max)
            grid = Grid(torch.cat([lams, lams.new_full((1,), math.inf)]))
            solver_k = s if caps is None else get_solver(solver, **options,
                                                         step_order_caps=caps)
            with torch.no_grad():
                try:
                    out = solve(model, x_t, grid, solver_k, progress=False,
                                check_finite="off").x
                    err = float(((out - reference) ** 2).mean().sqrt())
                except DiffsolveError:
                    err = math.inf
            cache[key] = err if math.isfinite(err) else math.inf
        return cache[key]

    best = objective(u)
    initial = best
    delta = delta0
    while delta >= delta_min and len(cache) < max_evals:
        improved = False
        for k in range(len(u)):
            for sign in (1.0, -1.0):
                if len(cache) >= max_evals:
                    break
                trial = u.clone()
                trial[k] += sign * delta
                val = objective(trial)
                if val < best:
                    best, u, improved = val, trial, True
                    break
        if not improved:
            delta /= 2
    grid_only = best
    if search_orders:
        top = s.history_order  # the multistep order option (caps range over 1..top)
        caps = [top] * len(u)
        for _ in range(order_sweeps):
            improved = False
            for k in range(len(caps)):
                for o in range(1, top + 1):
                    if o == caps[k]:
                        continue
                    trial_caps = (*caps[:k], o, *caps[k + 1:])
                    val = objective(u, trial_caps)
                    if val < best:
                        best, caps, improved = val, list(trial_caps), True
            if not improved:
                break
        options["step_order_caps"] = list(caps)
    lams = _lams_from_u(u, lam0, lam_max)
    sigmas = [math.exp(-float(v)) for v in lams] + [0.0]
    search_nfe = model.nfe - n0
    return SearchedGrid(
        solver=solver, nfe=nfe, sigmas=sigmas, solver_options=_jsonable(options),
        objective={"initial": initial, "grid_only": grid_only, "final": best,  # type: ignore[dict-item]
                   "init_grid": init},
        calibration={"samples": int(noise.shape[0]), "evaluations": len(cache),
                     "search_nfe": int(search_nfe), "reference_nfe": int(ref_nfe),
                     "total_nfe": int(search_nfe + ref_nfe),
                     "sample_evaluations": int((search_nfe + ref_nfe) * noise.shape[0]),
                     "max_evals": max_evals, "delta0": delta0, "delta_min": delta_min})


def search_solvers(model: Denoiser, solvers: Sequence[str], nfe: int, noise: Tensor, *,
                   reference: Tensor | None = None, **kwargs: Any) -> SearchedGrid:
    """Search a grid for each solver and return the best (the S^3 solver choice, coarse)."""
    if reference is None:
        reference, _ = reference_endpoints(model, noise)
    results = [search_grid(model, name, nfe, noise, reference=reference, **kwargs)
               for name in solvers]
    return min(results, key=lambda r: r.objective["final"])

r"""DC-Solver's calibration: compensation ratios searched against a reference trajectory, and
the cascade polynomial regression (CPR) that predicts them for an unseen NFE / guidance scale.

DC-Solver (Zhao et al. 2024, arXiv 2409.03755; the paper body was not reachable, the rules
follow the authors' released code as summarised in ``shared/research``, section C) is UniPC
with the newest model output moved along its Lagrange polynomial in t to
tau_i = rho_i t_i + (1 - rho_i) t_{i-1} (:class:`diffsolve.solvers.unipc.DCSolver`).

**Search** (:func:`search_ratios`, Sec. 4.2): on N ~ 10 initial noises, the ratios are chosen
greedily, step by step: with rho_0..rho_{i-1} frozen at their chosen values, rho_i minimises

    L_i(rho) = mean || x^c_{i+1}(rho) - x^*_{i+1} ||^2,

x^c_{i+1} the corrected state at node i + 1 (the predictor of step i with the compensated
output, then the corrector with D at the predictor's output; the predictor alone after the
last finite step) and x^* the reference trajectory from the same noise at the same node.
The reference is a high-NFE solve through the solver's own grid (every interval cut into
``substeps`` uniform-lambda pieces, DPM-Solver++(3M)), so it is exact at the nodes rather than
the nearest state of a separate 200-step DDIM run (research note pitfall 3). The paper
minimises L_i with AdamW (lr 0.1, 40 iterations, gradients through one network call); L_i is a
function of one scalar, so we minimise it with a bounded scalar search (Brent) instead: the
same objective, no gradients, one model call per evaluation. Steps 0..K-1 keep rho = 1.

**CPR** (:func:`fit_cpr`, :func:`predict_ratios`; Sec. 4.3): with g = w/12, u = NFE/50 and
x = n/NFE for the 1-based step n,

    rho(n) = sum_{j=0}^{P} a_j x^j,   a_j = sum_{q=0}^{2} (sum_{r=0}^{2} c_{jqr} u^{2-r}) g^{2-q},

(P = 3: 36 coefficients, the layout of the authors' shipped coefficient file). rho is linear
in the c_{jqr}, so they are fitted by (slightly ridge-regularised) linear least squares over the
searched (w, NFE, step) triples; the paper's fitting script is not released.

Both are stored in a ``diffsolve-tuned-v1`` artefact (:mod:`.tuned`): one entry per searched
(NFE, guidance) with solver ``dc_solver`` and its ``dc_ratios``, its sigmas, the calibration
losses and the cost (model evaluations and seconds), and the CPR coefficients under
``calibration["cpr"]``; ``diffsolve.sample(model, shape, nfe=10, grid=artefact)`` uses an entry.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import Grid, make_grid
from ..core.models import Denoiser
from ..solvers import get_solver
from ..solvers.unipc import DCSolver, UniPCStep
from .loop import initial_noise, solve
from .tuned import TunedArtefact, TunedEntry, weights_hash

CALIB_SEED = 75_000
CPR_DEGREE = 3
G_SCALE, U_SCALE = 12.0, 50.0  # the normalisations of the authors' code (research note C.2)


@dataclass
class RatioSearch:
    """What :func:`search_ratios` found: the ratios, L_i before (rho = 1) and after, the cost."""

    ratios: list[float]
    loss_plain: list[float]
    loss_dc: list[float]
    nfe: int
    seconds: float
    reference_nfe: int


def refined_grid(grid: Grid, substeps: int) -> Grid:
    """``grid``'s finite nodes with every interval cut into ``substeps`` uniform-lambda pieces
    (a final sigma = 0 node is kept)."""
    lams = grid.finite_lams()
    parts = [lams[:1]]
    for a, b in itertools.pairwise(lams.tolist()):
        parts.append(torch.linspace(a, b, substeps + 1, dtype=torch.float64)[1:])
    fine = torch.cat(parts)
    if grid.to_zero:
        fine = torch.cat([fine, torch.tensor([math.inf], dtype=torch.float64)])
    return Grid(fine)


def reference_states(model: Denoiser, x: Tensor, grid: Grid, *, substeps: int = 25,
                     solver: str = "dpmpp_3m") -> tuple[list[Tensor], int]:
    """The reference states at ``grid``'s finite nodes from state ``x`` at its first node
    (module docstring), and the evaluations used."""
    fine = refined_grid(grid, substeps)
    out = solve(model, x, Grid(fine.finite_lams()), solver, progress=False,
                return_trajectory=True, check_finite="off")
    assert out.trajectory is not None
    return out.trajectory[::substeps], out.nfe


def search_ratios(model: Denoiser, noise: Tensor, grid: Grid, *,
                  solver: DCSolver | None = None, bounds: tuple[float, float] = (0.0, 2.0),
                  substeps: int = 25, xatol: float = 1e-3, maxiter: int = 25) -> RatioSearch:
    """Greedy per-step search of the compensation ratios (module docstring).

    Args:
        model: the denoiser (with its guidance, if any).
        noise: standard-normal initial noises, (N, ...) (the paper uses N = 10).
        grid: the sampling grid (e.g. ``make_grid("karras", steps, schedule)``).
        solver: the DC-Solver configuration (default ``DCSolver()``: UniPC-3 bh2, K = 2);
            its ``dc_ratios`` are ignored.
        bounds: the interval searched for each ratio.
        substeps: reference sub-steps per grid interval.
        xatol, maxiter: the scalar search's tolerance and its evaluation cap per step.
    """
    solver = replace(solver or DCSolver(), dc_ratios=None)
    if solver.warmup != "lower_order":
        raise SolverOptionError("the DC-Solver search supports warmup='lower_order' only")
    t0 = time.perf_counter()
    nfe0 = model.nfe
    finite = grid.finite_lams()
    steps = finite.numel() - 1
    first = model.schedule.point(float(finite[0]))
    x = first.sigma * noise
    ref, ref_nfe = reference_states(model, x, grid, substeps=substeps)
    plain = solver.plan(model.schedule, finite, denoise_final=grid.to_zero)
    k = int(solver.dc_order)
    ratios = [1.0] * steps
    loss_plain: list[float] = []
    loss_dc: list[float] = []
    state: tuple[tuple[Tensor, ...], Tensor | None] = solver.init_state(x, plain)
    for i in range(steps):
        d = model.data(x, plain.points[i])

        def advance(coeffs: UniPCStep, i: int = i, x: Tensor = x, d: Tensor = d,
                    state: Any = state) -> tuple[Tensor, Any]:
            x_c, hist = solver.correct(coeffs, x, state, d)
            return solver.predict(coeffs, x_c, hist), (hist, x_c)

        def loss(rho: float, i: int = i) -> float:
            coeffs = _with_ratio(solver, plain, i, rho)
            x_next, st = advance(coeffs)
            if i + 1 < steps:  # the corrector at node i + 1 (the next step's evaluation)
                d_next = model.data(x_next, plain.points[i + 1])
                x_next, _ = solver.correct(plain.extra[i + 1], x_next, st, d_next)
            return float((x_next - ref[i + 1]).double().square().mean())

        if i >= k:
            loss_plain.append(loss(1.0))
            res = minimize_scalar(loss, bounds=bounds, method="bounded",
                                  options={"xatol": xatol, "maxiter": maxiter})
            best = float(res.x) if res.fun < loss_plain[-1] else 1.0
            ratios[i] = best
            loss_dc.append(min(float(res.fun), loss_plain[-1]))
        x, state = advance(_with_ratio(solver, plain, i, ratios[i]))
    return RatioSearch(ratios=ratios, loss_plain=loss_plain, loss_dc=loss_dc,
                       nfe=model.nfe - nfe0, seconds=time.perf_counter() - t0,
                       reference_nfe=ref_nfe)


def _with_ratio(solver: DCSolver, plain: Any, i: int, rho: float) -> UniPCStep:
    from ..solvers.unipc import dc_weights

    return replace(plain.extra[i], compensation=dc_weights(plain.points, i, rho,
                                                            int(solver.dc_order)))


# -- cascade polynomial regression ------------------------------------------------------------

def cpr_features(guidance: float, nfe: int, step: int, degree: int = CPR_DEGREE) -> np.ndarray:
    """The monomials x^j g^{2-q} u^{2-r} (j = 0..degree, q, r = 0..2; module docstring) of
    the 1-based ``step`` at (``guidance``, ``nfe``)."""
    g, u, x = guidance / G_SCALE, nfe / U_SCALE, step / nfe
    return np.array([x ** j * g ** (2 - q) * u ** (2 - r)
                     for j in range(degree + 1) for q in range(3) for r in range(3)])


def fit_cpr(samples: Sequence[tuple[float, int, Sequence[float]]], *, dc_order: int = 2,
            ridge: float = 1e-6, degree: int = CPR_DEGREE) -> list[float]:
    """CPR coefficients from searched ratios: ``samples`` = (guidance, nfe, ratios per finite
    step); steps below ``dc_order`` (ratio 1 by construction) are left out of the fit."""
    rows, ys = [], []
    for g, nfe, ratios in samples:
        for i, rho in enumerate(ratios):
            if i >= dc_order:
                rows.append(cpr_features(g, nfe, i + 1, degree))
                ys.append(rho)
    a, y = np.array(rows), np.array(ys)
    lhs = a.T @ a + ridge * np.eye(a.shape[1])
    return [float(v) for v in np.linalg.solve(lhs, a.T @ y)]


def predict_ratios(coeffs: Sequence[float], guidance: float, nfe: int, steps: int, *,
                   dc_order: int = 2) -> list[float]:
    """Ratios for ``steps`` finite steps at (``guidance``, ``nfe``) from CPR coefficients;
    the first ``dc_order`` are 1."""
    degree = len(coeffs) // 9 - 1
    c = np.array(coeffs)
    return [1.0 if i < dc_order else float(cpr_features(guidance, nfe, i + 1, degree) @ c)
            for i in range(steps)]


# -- the artefact ---------------------------------------------------------------------------

def calibrate(models: dict[float, Denoiser], shape: Sequence[int], nfes: Sequence[int], *,
              samples: int = 10, seed: int = CALIB_SEED, grid: str = "karras",
              solver: DCSolver | None = None, name: str = "model", log: Any = None,
              **search: Any) -> TunedArtefact:
    """Search the ratios for every (guidance scale, NFE) and fit the CPR; one artefact.

    ``models`` maps a guidance scale to the guided denoiser (one entry, e.g. ``{1.0: model}``,
    for an unguided model). Entries carry ``solver_options`` with the guidance scale under
    ``scores["guidance"]``; the CPR is fitted when there are enough distinct configurations
    (at least 3 guidance scales and 3 budgets), else ``calibration["cpr"]`` is None.
    """
    solver = solver or DCSolver()
    say = log or (lambda *a: None)
    noise = initial_noise((samples, *shape), seed=seed)
    entries, best, fits = [], {}, []
    total_nfe, total_s = 0, 0.0
    for w, model in models.items():
        for nfe in nfes:
            steps = solver.steps_for_nfe(nfe)
            g = make_grid(grid, steps, model.schedule)
            r = search_ratios(model, noise, g, solver=solver, **search)
            total_nfe += r.nfe
            total_s += r.seconds
            fits.append((w, nfe, r.ratios))
            opts = {**_options(solver), "dc_ratios": r.ratios}
            entries.append(TunedEntry(
                nfe=nfe, solver=solver.name, sigmas=[float(v) for v in g.sigmas],
                solver_options=opts,
                scores={"guidance": w, "calibration_plain": float(sum(r.loss_plain)),
                        "calibration": float(sum(r.loss_dc))},
                search={"nfe": r.nfe, "seconds": r.seconds, "reference_nfe": r.reference_nfe,
                        "samples": samples, "loss_plain": r.loss_plain,
                        "loss_dc": r.loss_dc}))
            best.setdefault(str(nfe), len(entries) - 1)
            say(f"w={w} nfe={nfe}: ratios {[round(v, 3) for v in r.ratios]} "
                f"({r.nfe} NFE, {r.seconds:.1f} s)")
    enough = len(models) >= 3 and len(set(nfes)) >= 3
    cpr = ({"coefficients": fit_cpr(fits, dc_order=int(solver.dc_order)),
            "degree": CPR_DEGREE, "g_scale": G_SCALE, "u_scale": U_SCALE,
            "fitted_on": [[w, n] for w, n, _ in fits]} if enough else None)
    from ..core.noise import NOISE_STREAM_VERSION

    first = next(iter(models.values()))
    return TunedArtefact(
        model={"name": name, "weights_sha256": weights_hash(first)}, entries=entries,
        best=best,
        calibration={"method": "DC-Solver ratio search (greedy, Brent) + CPR",
                     "seed": seed, "samples": samples, "nfe": total_nfe, "seconds": total_s,
                     "grid": grid, "noise_stream_version": NOISE_STREAM_VERSION, "cpr": cpr})


def _options(solver: DCSolver) -> dict[str, Any]:
    default = get_solver(solver.name)
    return {f: getattr(solver, f) for f in ("solver_order", "variant", "use_corrector",
                                             "lower_order_final", "dc_order")
            if getattr(solver, f) != getattr(default, f)}


def cpr_ratios(art: TunedArtefact, guidance: float, nfe: int) -> list[float]:
    """Ratios for the (``guidance``, ``nfe``) of an artefact made by :func:`calibrate`, from
    its CPR: ``diffsolve.sample(model, shape, solver="dc_solver", nfe=nfe,
    dc_ratios=cpr_ratios(art, w, nfe))`` on the artefact's grid type."""
    cpr = art.calibration.get("cpr")
    if not cpr:
        raise SolverOptionError("the artefact has no cascade regression (calibrate over at "
                                "least 3 guidance scales and 3 budgets)")
    opts = art.entries[0].solver_options
    solver = get_solver("dc_solver", **{k: v for k, v in opts.items() if k != "dc_ratios"})
    steps = solver.steps_for_nfe(nfe) - 1
    return predict_ratios(cpr["coefficients"], guidance, nfe, steps,
                          dc_order=int(solver.dc_order))

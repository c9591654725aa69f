r"""Multilevel Euler-Maruyama (ML-EM) sampling with a hierarchy of denoisers.

Source: A. Jacot, "Polynomial Speedup in Diffusion Models with the Multilevel Euler-Maruyama
Method", arXiv 2603.24594 (2026). Only the abstract was available to us (the full text was
not in the stored corpora), so the construction below is the standard multilevel
(randomised telescoping) drift estimator that the abstract describes; ``docs/mlem.md`` says
exactly what was assumed.

**Setting.** Euler-Maruyama on the reverse SDE (``euler_maruyama``,
:class:`diffsolve.solvers.ancestral.EulerMaruyama`, Song et al. 2021 eq. 6) takes steps

    x_{n+1} = a_n x_n + b_n D(x_n, t_n) + c_n xi_n,                                  (EM)

i.e. the drift is affine in the data prediction D. Given approximations D^1, ..., D^k of
rising accuracy and cost c_1 < ... < c_k (FLOPs per call and sample), put D^0 = 0 and write
the most accurate one as the telescoping sum D^k = sum_{l=1}^k (D^l - D^{l-1}).

**ML-EM step.** Each step draws Bernoulli variables B_{n,l} ~ Bernoulli(p_l) and replaces
D in (EM) by the randomised multilevel estimate

    Dhat_n = sum_{l=1}^k (B_{n,l} / p_l) (D^l(x_n) - D^{l-1}(x_n)),                  (ML)

which is unbiased, E[Dhat_n | x_n] = D^k(x_n), and needs level l only when B_{n,l} = 1 (or
B_{n,l+1} = 1). Cheap levels get p_l ~ 1, the top level p_k ~ m/N, so over N steps the top
model is called about m times. The randomisation error is a martingale: over the run it adds
a pathwise error of size sqrt(dt sum_l Var_l/p_l) with Var_l ~ ||D^l - D^{l-1}||^2, while the
expected cost is N sum_l p_l c_l (nested coupling below).

**Frequencies.** Minimising sum_l p_l c_l subject to sum_l delta_l^2/p_l = const gives
p_l proportional to delta_l / sqrt(c_l) (delta_l = ||D^l - D^{l-1}||, Lagrange multipliers;
Giles 2008's MLMC allocation, here in time instead of over samples);
:func:`level_probabilities` uses that rule, clipped to 1, with p_1 = 1 and p_k = m/N.
If delta_l ~ c_l^{-1/gamma} with gamma > 2 (harder than Monte Carlo), then with
N ~ 1/eps steps, top error eps_k ~ eps and m = O(1) the cost is dominated by the top level,
N p_k c_k = m c_k ~ eps^{-gamma}, against N c_k ~ eps^{-gamma-1} for Euler-Maruyama with
the top model alone.

**Coupling of the Bernoulli draws** (not specified in the abstract): ``"nested"`` (default)
draws one uniform U_n per sample and step and sets B_{n,l} = [U_n < p_l]; with decreasing
p_l a needed level is exactly an active one, so a step costs sum_l p_l c_l in expectation.
``"independent"`` draws one uniform per level; level l is then also evaluated when level
l + 1 is active. Both give the unbiased estimate (ML). Draws are per sample (only the active
samples of a batch are passed to a level) unless ``per_sample=False`` (one draw per step for
the whole batch).

**Last step.** The loop's final denoising step x <- D(x) at sigma = 0 uses the top model
(a single randomised estimate there would not be averaged over steps), costing one top call.

Why not the sampling loop (:func:`diffsolve.drivers.loop.integrate`): each step draws which
levels to evaluate (the randomised telescoping estimate) and accounts the evaluations of each
level; the EM update itself is the registry's ``euler_maruyama`` plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import Grid, make_grid
from ..core.models import Denoiser
from ..core.noise import NoiseSource, make_noise
from ..core.schedules import EvalPoint
from ..solvers import get_solver

Coupling = Literal["nested", "independent"]


@dataclass(frozen=True)
class Level:
    """One level of the hierarchy: a denoiser and its cost per call and sample (e.g. FLOPs)."""

    model: Denoiser
    cost: float
    name: str = ""


@dataclass
class MLEMCost:
    """Cost accounting of a run.

    Attributes:
        evals: per level, the number of sample-evaluations (a call on a sub-batch of size m
            counts m).
        costs: per level, the declared cost of one sample-evaluation.
        steps: EM steps taken.
        final_evals: sample-evaluations of the top level in the final denoising step.
        wall_s: wall-clock time of the run (seconds).
        batch: batch size.
    """

    evals: list[int]
    costs: list[float]
    steps: int = 0
    final_evals: int = 0
    wall_s: float = 0.0
    batch: int = 0

    @property
    def total(self) -> float:
        """Total cost: sum_l evals_l c_l (final denoising step included)."""
        return float(sum(e * c for e, c in zip(self.evals, self.costs, strict=True)))

    @property
    def per_sample(self) -> float:
        return self.total / max(1, self.batch)


@dataclass(frozen=True)
class MLEMResult:
    x: Tensor
    cost: MLEMCost
    grid: Grid
    probs: tuple[float, ...] = field(default=())


def level_probabilities(costs: Sequence[float], steps: int, *, top_evals: float = 1.0,
                        gamma: float | None = None,
                        diff_norms: Sequence[float] | None = None) -> tuple[float, ...]:
    """Evaluation probabilities p_1 = 1 >= p_2 >= ... >= p_k = min(1, top_evals/steps).

    p_l = min(1, p_k w_l / w_k) with w_l = delta_l / sqrt(c_l) (the variance-per-cost
    optimal allocation, module docstring). delta_l = ||D^l - D^{l-1}|| is taken from
    ``diff_norms`` when given, else modelled as c_{l-1}^{-1/gamma} (the HTMC error law
    eps ~ cost^{-1/gamma}; ``gamma`` is then required). Monotonicity is enforced.
    """
    k = len(costs)
    if k < 1:
        raise SolverOptionError("need at least one level")
    if any(not (c > 0 and math.isfinite(c)) for c in costs):
        raise SolverOptionError(f"level costs must be positive and finite, got {list(costs)}")
    if steps < 1 or not (top_evals > 0):
        raise SolverOptionError(f"need steps >= 1 and top_evals > 0, got {steps}, {top_evals}")
    p_top = min(1.0, float(top_evals) / steps)
    if k == 1:
        return (1.0,)
    if diff_norms is not None:
        if len(diff_norms) != k:
            raise SolverOptionError(f"diff_norms needs {k} entries, got {len(diff_norms)}")
        delta = [float(d) for d in diff_norms]
    else:
        if gamma is None or not gamma > 0:
            raise SolverOptionError("give gamma > 0 or diff_norms to set the probabilities")
        delta = [1.0] + [float(costs[j - 1]) ** (-1.0 / gamma) for j in range(1, k)]
    w = [d / math.sqrt(float(c)) for d, c in zip(delta, costs, strict=True)]
    probs = [1.0] + [min(1.0, p_top * w[j] / w[-1]) for j in range(1, k - 1)] + [p_top]
    for j in range(1, k):  # keep p decreasing (nested coupling evaluates what it uses)
        probs[j] = min(probs[j], probs[j - 1])
    return tuple(probs)


def _check_probs(probs: Sequence[float], k: int) -> tuple[float, ...]:
    if len(probs) != k:
        raise SolverOptionError(f"need one probability per level ({k}), got {len(probs)}")
    out = tuple(float(p) for p in probs)
    if any(not (0.0 < p <= 1.0) for p in out):
        raise SolverOptionError(f"probabilities must lie in (0, 1], got {out}")
    return out


def multilevel_data(levels: Sequence[Level], probs: Sequence[float], x: Tensor,
                    point: EvalPoint, u: Tensor, evals: list[int]) -> Tensor:
    """The estimate (ML): sum_l (B_l/p_l)(D^l - D^{l-1}) with B_l = [u_l < p_l].

    Args:
        u: uniforms of shape (k, B) (one row per level; identical rows give the nested
            coupling) or (k, 1) to share one draw across the batch.
        evals: per-level sample-evaluation counters, advanced in place.
    """
    b = x.shape[0]
    k = len(levels)
    active = [(u[j] < probs[j]).expand(b) for j in range(k)]
    out = torch.zeros_like(x)
    prev: Tensor | None = None  # D^{l-1} on the samples where it was evaluated (full size)
    prev_mask: Tensor | None = None
    for j in range(k):
        need = active[j] | active[j + 1] if j + 1 < k else active[j]
        n = int(need.sum())
        if n == 0:
            prev, prev_mask = None, need
            continue
        if n == b:
            d = levels[j].model.data(x, point)
        else:
            idx = need.nonzero().squeeze(1)
            d = torch.zeros_like(x).index_copy_(0, idx, levels[j].model.data(x[idx], point))
        evals[j] += n
        if bool(active[j].any()):
            diff = d if prev is None else d - prev
            if j > 0 and prev_mask is not None and not bool((prev_mask | ~active[j]).all()):
                raise RuntimeError("internal: level difference without the coarser level")
            w = active[j].to(x.dtype) / probs[j]
            out = out + w.reshape(-1, *([1] * (x.ndim - 1))) * diff
        prev, prev_mask = d, need
    return out


def _uniforms(gen: torch.Generator, k: int, b: int, coupling: Coupling, per_sample: bool,
              device: torch.device) -> Tensor:
    cols = b if per_sample else 1
    rows = 1 if coupling == "nested" else k
    u = torch.rand(rows, cols, generator=gen, dtype=torch.float64)
    return u.expand(k, cols).to(device) if rows == 1 else u.to(device)


def mlem_solve(levels: Sequence[Level], x: Tensor, grid: Grid, *,
               probs: Sequence[float], eta: float = 1.0, coupling: Coupling = "nested",
               per_sample: bool = True, noise: NoiseSource | int | str | None = None,
               seed: int = 0, offset: int = 0, draw_seed: int | None = None) -> MLEMResult:
    """Integrate the reverse SDE from ``x`` at ``grid``'s first node with ML-EM.

    Args:
        levels: the hierarchy, cheapest first; all models share one noise schedule (the
            top level's is used for the coefficients).
        x: the state at the first node (x = alpha x0 + sigma n scaling).
        grid: the time grid; a final sigma = 0 ends with x <- D^k(x).
        probs: evaluation probability of each level (see :func:`level_probabilities`).
        eta: stochasticity of the EM step (1: reverse SDE; see EulerMaruyama).
        coupling: "nested" or "independent" Bernoulli draws (module docstring).
        per_sample: one draw per sample (True) or one per step for the batch.
        noise, seed, offset: the Brownian noise, as for :func:`diffsolve.solve`; with the
            same arguments and all p_l = 1 the run equals Euler-Maruyama with D^k.
        draw_seed: seed of the Bernoulli draws (default: ``seed``).
    """
    if coupling not in ("nested", "independent"):
        raise SolverOptionError(f"coupling must be 'nested' or 'independent', got {coupling!r}")
    k = len(levels)
    if k < 1:
        raise SolverOptionError("need at least one level")
    pr = _check_probs(probs, k)
    if coupling == "nested" and any(pr[j + 1] > pr[j] for j in range(k - 1)):
        raise SolverOptionError(f"nested coupling needs decreasing probabilities, got {pr}")
    top = levels[-1].model
    schedule = top.schedule
    grid.check_range(schedule)
    finite = grid.finite_lams()
    solver = get_solver("euler_maruyama", eta=eta)
    final = grid.to_zero
    plan = solver.plan(schedule, finite, denoise_final=final)
    noise_src = make_noise(noise, x, seed=seed, offset=offset,
                           lam_range=(float(finite[0]), float(finite[-1])))
    gen = torch.Generator().manual_seed(int(seed if draw_seed is None else draw_seed))
    cost = MLEMCost(evals=[0] * k, costs=[float(lv.cost) for lv in levels], batch=x.shape[0])
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(plan.steps):
            p, q = plan.points[i], plan.points[i + 1]
            coef = plan.extra[i]  # EM step x' = a x + b D + c xi (a LinearStep)
            u = _uniforms(gen, k, x.shape[0], coupling, per_sample, x.device)
            d = multilevel_data(levels, pr, x, p, u, cost.evals)
            out = coef.lin * x + coef.weights[0] * d
            if coef.noise_std != 0.0:
                out = out + coef.noise_std * noise_src.normal(x, step=i, draw=0, lam_from=p.lam,
                                                              lam_to=q.lam)
            x = out
        if final:
            x = top.data(x, plan.points[-1])
            cost.evals[-1] += x.shape[0]
            cost.final_evals = x.shape[0]
    cost.steps = plan.steps
    cost.wall_s = time.perf_counter() - t0
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError("ML-EM produced non-finite values")
    return MLEMResult(x=x, cost=cost, grid=grid, probs=pr)


def mlem_sample(levels: Sequence[Level], shape_or_noise: Sequence[int] | Tensor, *,
                steps: int, grid: str | Grid = "karras", top_evals: float = 1.0,
                gamma: float | None = None, diff_norms: Sequence[float] | None = None,
                probs: Sequence[float] | None = None, seed: int = 0,
                grid_options: dict[str, Any] | None = None, **kwargs: Any) -> MLEMResult:
    """Draw samples with ML-EM: a named grid with ``steps`` intervals (the last into sigma=0)
    and probabilities from :func:`level_probabilities` unless ``probs`` is given."""
    from .loop import initial_noise

    top = levels[-1].model
    the_grid = grid if isinstance(grid, Grid) else make_grid(grid, steps, top.schedule,
                                                             **(grid_options or {}))
    n_em = the_grid.finite_lams().numel() - 1
    if probs is None:
        probs = level_probabilities([lv.cost for lv in levels], n_em, top_evals=top_evals,
                                    gamma=gamma, diff_norms=diff_norms)
    n = shape_or_noise if isinstance(shape_or_noise, Tensor) else initial_noise(
        shape_or_noise, seed=seed)
    x = top.schedule.point(float(the_grid.lams[0])).sigma * n
    return mlem_solve(levels, x, the_grid, probs=probs, seed=seed, **kwargs)


def expected_cost_per_sample(costs: Sequence[float], probs: Sequence[float], steps: int,
                             coupling: Coupling = "nested", final: bool = True) -> float:
    """Expected cost of one sample: sum over EM steps of the levels' evaluation probabilities
    times their costs (nested: P(level l needed) = p_l for decreasing p; independent:
    1 - (1 - p_l)(1 - p_{l+1})), plus the final top-level call."""
    k = len(costs)
    tot = 0.0
    for j in range(k):
        if coupling == "nested" or j + 1 == k:
            need = probs[j]
        else:
            need = 1.0 - (1.0 - probs[j]) * (1.0 - probs[j + 1])
        tot += need * costs[j]
    return steps * tot + (costs[-1] if final else 0.0)


# ---------------------------------------------------------------------------------------------
# measurements: cost-to-accuracy exponents (synthetic levels) and gamma of a trained hierarchy
# ---------------------------------------------------------------------------------------------


def fit_exponent(costs: Sequence[float], errors: Sequence[float]) -> float:
    """beta of cost ~ error^(-beta): least-squares slope of log cost against -log error."""
    import numpy as np

    if len(costs) < 2:
        return float("nan")
    lc, le = np.log(np.asarray(costs, float)), np.log(np.asarray(errors, float))
    return float(-np.polyfit(le, lc, 1)[0])


def fit_gamma(costs: Sequence[float], errors: Sequence[float]) -> tuple[float, float]:
    """(gamma, a) of the HTMC law eps = a cost^(-1/gamma), by least squares in log-log."""
    import numpy as np

    slope, icpt = np.polyfit(np.log(np.asarray(costs, float)),
                             np.log(np.asarray(errors, float)), 1)
    return float(-1.0 / slope), float(math.exp(icpt))


def level_errors(models: Sequence[Denoiser], reference: Denoiser, x0: Tensor, *,
                 n_sigmas: int = 16, sigma_range: tuple[float, float] = (0.02, 80.0),
                 seed: int = 0, batch: int = 500) -> dict[str, list[float]]:
    """Per-level drift errors of a hierarchy against a reference denoiser.

    For noise levels sigma_i log-uniform in ``sigma_range`` (the EM drift weights D by
    ~ dsigma/sigma, i.e. uniformly in log sigma) and x = x0 + sigma_i n (EDM scaling, alpha=1),
    returns per level l the RMS per-element errors

        err_l   = sqrt(mean_{i, samples, elements} (D^l - D^ref)^2),
        delta_l = sqrt(mean (D^l - D^{l-1})^2)   (D^0 = 0),

    as lists ``errors`` and ``diff_norms``.
    """
    g = torch.Generator().manual_seed(seed)
    sig = torch.logspace(math.log10(sigma_range[0]), math.log10(sigma_range[1]), n_sigmas,
                         dtype=torch.float64)
    k = len(models)
    se = [0.0] * k
    sd = [0.0] * k
    count = 0
    sched = reference.schedule
    with torch.no_grad():
        for s in sig.tolist():
            lam = -math.log(s)
            point = sched.point(lam)
            for i in range(0, x0.shape[0], batch):
                xb = x0[i:i + batch]
                x = point.alpha * xb + point.sigma * torch.randn(xb.shape, generator=g,
                                                                 dtype=xb.dtype)
                ref = reference.data(x, point).double()
                prev = torch.zeros_like(ref)
                for j, m in enumerate(models):
                    d = m.data(x, point).double()
                    se[j] += float((d - ref).pow(2).sum())
                    sd[j] += float((d - prev).pow(2).sum())
                    prev = d
                count += xb.numel()
    return {"errors": [math.sqrt(v / count) for v in se],
            "diff_norms": [math.sqrt(v / count) for v in sd],
            "sigmas": sig.tolist()}

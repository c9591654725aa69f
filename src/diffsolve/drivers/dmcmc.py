r"""Denoising MCMC (DMCMC): an MCMC chain on the product space of data and noise level, then
any registered solver from the chain's state down to sigma = 0.

Source: B. Kim and J. C. Ye, "Denoising MCMC for Accelerating Diffusion-Based Generative
Models", ICML 2023, arXiv 2209.14593. The paper's method section was not reachable; the rules
below are those of the authors' released demo (Denoising Langevin Gibbs, "DLG"), written from
the maths in our notation, with the deviations listed in ``docs/correctors.md``.

**Chain.** The state is (x~, k): x~ in EDM scaling and k an index into a grid of noise levels
sigma_1 < ... < sigma_K. The target is the joint law p(x~, k) = pi_k p_{sigma_k}(x~) with a
uniform prior pi_k. One chain step (one model evaluation per chain) is a Gibbs sweep:

1. x~ | k: one Langevin step at sigma_k (Song et al. 2021, Alg. 4's update with a fixed step
   eps = tau sigma_k^2, :class:`~diffsolve.drivers.corrector.LangevinCorrector`):
   x~ <- x~ + eps (D(x~, sigma_k) - x~)/sigma_k^2 + sqrt(2 eps) z;
2. k | x~: k <- argmax_k log p_{sigma_k}(x~) (``level_update="argmax"``, what the released
   code does with its noise-level classifier), or a draw from p(k | x~), proportional to
   p_{sigma_k}(x~) (``"gibbs"``, the exact Gibbs step).

p(k | x~) needs the log-density of each noise level up to one constant; the released code
trains a classifier for it. Here it is a callable ``level_log_density(x~, sigma) -> (B,)``:
for the analytic mixture the exact ``gmm.marginal(1, sigma).log_prob``, so on that model the
chain has no learned part besides the denoiser.

**Output.** Each round runs ``n_skip`` chain steps, keeps the state with the smallest noise
level seen (x~*, sigma*) (``select="min"``, the released code; ``"last"``: the round's last
state), and integrates from there to sigma = 0 with ``solver`` on a Karras
grid from sigma* with ``denoise_nfe`` evaluations; the chain itself continues from its last
state (persistent chains, as in the released demo). Chains start from a solver sample
(``init_nfe`` evaluations) renoised to ``init_sigma`` and run ``burn_in`` steps.

**Cost.** Counted per sample (a chain step evaluates each chain once, but chains at different
levels need separate model calls, so the model's own call counter is not the per-sample
cost): evaluations per output = (init_nfe + burn_in) / rounds + n_skip + denoise_nfe.

**Noise.** Chain b draws from per-sample streams keyed by (seed, offset + b) in a domain of
its own (:data:`DMCMC_DOMAIN`), step = chain step, so outputs depend on (seed, offset + b)
only. Samples from one chain are correlated across rounds; error bars must come from
independent seeds.

Why a driver of its own: the state carries a per-sample noise level, and the outputs start
their reverse integration at per-sample levels (grouped by level, one solver run per group).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import karras
from ..core.models import Denoiser
from ..core.noise import PerSampleStreams, derive_seed
from ..solvers import Solver, get_solver
from .loop import initial_noise, sample, solve, steps_for_nfe

DMCMC_DOMAIN = 0xD3C3C0
"""Domain constant of the chains' noise streams."""

LevelLogDensity = Callable[[Tensor, float], Tensor]


@dataclass(frozen=True)
class DMCMCResult:
    """Outputs of :func:`dmcmc_sample`.

    Attributes:
        x: the outputs, (rounds * chains, ...), round-major.
        nfe_per_sample: evaluations per output, amortised (module docstring).
        start_sigmas: the noise level each output's reverse integration started from.
        model_calls: the model's own call counter over the run.
    """

    x: Tensor
    nfe_per_sample: float
    start_sigmas: Tensor
    model_calls: int


def level_grid(sigma_min: float, sigma_max: float, levels: int) -> list[float]:
    """K noise levels, geometric from ``sigma_min`` to ``sigma_max`` (increasing)."""
    if not (0 < sigma_min < sigma_max) or levels < 2:
        raise SolverOptionError("need 0 < sigma_min < sigma_max and levels >= 2")
    r = math.log(sigma_max / sigma_min)
    return [sigma_min * math.exp(r * i / (levels - 1)) for i in range(levels)]


class _Chains:
    """B persistent chains (x~, k) with their noise streams."""

    def __init__(self, model: Denoiser, sigmas: Sequence[float], seeds: Sequence[int],
                 log_density: LevelLogDensity, tau: float,
                 update: Literal["argmax", "gibbs"]) -> None:
        self.model, self.sigmas, self.tau, self.update = model, list(sigmas), tau, update
        self.log_density = log_density
        self.noise = PerSampleStreams(derive_seed(s, DMCMC_DOMAIN) for s in seeds)
        self.t = 0  # chain step counter (the noise key)
        self.evals = 0  # per-sample evaluations

    def levels(self, y: Tensor) -> Tensor:
        """k | x~: argmax, or a draw from p(k | x~) with a keyed uniform (Gumbel-max)."""
        logp = torch.stack([self.log_density(y, s).double() for s in self.sigmas], dim=1)
        if self.update == "gibbs":
            z = self.noise.normal(y.new_empty(y.shape[0], len(self.sigmas)), step=self.t,
                                  draw=1)
            u = (0.5 * torch.erfc(-z.double() / math.sqrt(2.0))).clamp(1e-300, 1 - 1e-16)
            logp = logp - torch.log(-torch.log(u))  # + Gumbel noise
        return logp.argmax(dim=1)

    def step(self, y: Tensor, k: Tensor) -> Tensor:
        """x~ | k: one Langevin step at each chain's level (Alg. 4 update, eps = tau sigma^2)."""
        z = self.noise.normal(y, step=self.t, draw=0)
        out = y.clone()
        for level in torch.unique(k).tolist():
            idx = (k == level).nonzero().flatten()
            s = self.sigmas[level]
            point = self.model.schedule.point(-math.log(s))
            d = self.model.data(point.alpha * y[idx], point)
            eps = self.tau * s * s
            out[idx] = y[idx] + eps * (d - y[idx]) / (s * s) + math.sqrt(2.0 * eps) * z[idx]
        self.evals += 1
        self.t += 1
        return out


def dmcmc_sample(model: Denoiser, shape: Sequence[int], *,
                 level_log_density: LevelLogDensity, solver: str | Solver = "heun",
                 denoise_nfe: int = 10, n_skip: int = 4, rounds: int = 4,
                 sigma_levels: Sequence[float] | None = None, step_size: float = 0.3,
                 level_update: Literal["argmax", "gibbs"] = "argmax",
                 select: Literal["min", "last"] = "min",
                 init_solver: str | Solver = "dpmpp_2m", init_nfe: int = 20,
                 init_sigma: float = 0.5, burn_in: int = 4, seed: int = 0, offset: int = 0,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                 ) -> DMCMCResult:
    """Draw ``rounds`` x ``shape[0]`` samples with DMCMC (module docstring).

    Args:
        model: the denoiser.
        shape: (chains, ...): one persistent chain per batch row.
        level_log_density: log p_sigma(x~) up to a constant, per sample, for EDM level sigma.
        solver, denoise_nfe: the reverse solver and its budget from each output's start level.
        n_skip: chain steps per output.
        rounds: outputs per chain.
        sigma_levels: the chain's noise levels (increasing); default 40 geometric levels over
            [0.02, 2] intersected with the schedule's range.
        step_size: tau of the Langevin step eps = tau sigma^2.
        level_update: "argmax" (released code) or "gibbs" (exact conditional draw).
        select: "min" (the lowest-level state of the round, released code) or "last" (the
            round's final state: at stationarity of the "gibbs" chain, x~ | k is exactly
            p_{sigma_k}, so the output is exact up to the Langevin and solver errors).
        init_solver, init_nfe, init_sigma, burn_in: chain initialisation.
        seed, offset: sample b's chain and noise are keyed by (seed, offset + b).
    """
    if select not in ("min", "last"):
        raise SolverOptionError(f"select must be 'min' or 'last', got {select!r}")
    if level_update not in ("argmax", "gibbs"):
        raise SolverOptionError(f"level_update must be 'argmax' or 'gibbs', got {level_update!r}")
    for name, v in (("n_skip", n_skip), ("rounds", rounds)):
        if v < 1:
            raise SolverOptionError(f"{name} must be >= 1, got {v}")
    solver_obj = get_solver(solver)
    sched = model.schedule
    sigmas = list(sigma_levels) if sigma_levels is not None else level_grid(
        max(0.02, sched.sigma_edm_min), min(2.0, sched.sigma_edm_max), 40)
    chains = shape[0]
    seeds = [derive_seed(seed, offset + b) for b in range(chains)]
    calls0 = model.nfe
    # initialisation: a solver sample, renoised to init_sigma, levels from the chain's rule
    x0 = sample(model, shape, solver=init_solver, nfe=init_nfe, seed=seed, offset=offset,
                dtype=dtype, device=device, progress=False).x
    chain = _Chains(model, sigmas, seeds, level_log_density, step_size, level_update)
    y = x0 + init_sigma * initial_noise(shape, seed=derive_seed(seed, DMCMC_DOMAIN),
                                       offset=offset, dtype=dtype, device=device)
    k = chain.levels(y)
    for _ in range(burn_in):
        y = chain.step(y, k)
        k = chain.levels(y)
    outs, starts = [], []
    for r in range(rounds):
        best_y, best_k = y.clone(), k.clone()
        for _ in range(n_skip):
            y = chain.step(y, k)
            k = chain.levels(y)
            lower = k < best_k if select == "min" else torch.ones_like(k, dtype=torch.bool)
            best_y[lower], best_k[lower] = y[lower], k[lower]
        outs.append(_denoise(model, best_y, best_k, sigmas, solver_obj, denoise_nfe, seeds, r))
        starts.append(torch.tensor([sigmas[i] for i in best_k.tolist()], dtype=torch.float64))
    per_sample = (init_nfe + burn_in) / rounds + n_skip + denoise_nfe
    return DMCMCResult(x=torch.cat(outs), nfe_per_sample=per_sample,
                       start_sigmas=torch.cat(starts), model_calls=model.nfe - calls0)


def _denoise(model: Denoiser, y: Tensor, k: Tensor, sigmas: Sequence[float], solver: Solver,
             nfe: int, seeds: Sequence[int], rnd: int) -> Tensor:
    """Each chain's state from its level to sigma = 0 with ``solver`` (grouped by level)."""
    out = torch.empty_like(y)
    steps = steps_for_nfe(solver, nfe)
    for level in torch.unique(k).tolist():
        idx = (k == level).nonzero().flatten()
        s = sigmas[level]
        grid = karras(steps, model.schedule, sigma_max=s)
        point = model.schedule.point(-math.log(s))
        noise = PerSampleStreams(derive_seed(seeds[i], DMCMC_DOMAIN + 1 + rnd)
                                 for i in idx.tolist())
        res = solve(model, point.alpha * y[idx], grid, solver, noise=noise, progress=False,
                    check_finite="off")
        out[idx] = res.x
    return out


__all__ = ["DMCMC_DOMAIN", "DMCMCResult", "dmcmc_sample", "level_grid"]

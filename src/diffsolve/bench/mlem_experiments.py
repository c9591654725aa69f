"""ML-EM experiments (measurement harnesses, not the algorithm): synthetic hierarchies of
known error/cost law on the analytic mixture, and cost-to-accuracy exponents measured with them
(the algorithm is :mod:`diffsolve.drivers.mlem`; ``docs/mlem.md``)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.grids import make_grid
from ..core.schedules import EDM
from ..drivers.loop import solve
from ..drivers.mlem import (
    Coupling,
    Level,
    expected_cost_per_sample,
    fit_exponent,
    level_probabilities,
    mlem_solve,
)
from ..solvers import get_solver
from ..solvers.ancestral import EulerMaruyama
from ..zoo import GaussianMixture
from .metrics import frechet_distance, moment_frechet_distance
from .models import GMM_SCHEDULE, erroneous_model


def synthetic_gmm_levels(k: int, gamma: float, *, eps_top: float = 0.02, ratio: float = 2.0,
                         base_cost: float = 1.0) -> tuple[Any, list[Level], list[float]]:
    """Synthetic hierarchy on the analytic 2-D mixture with a known error/cost law.

    Level l = 1..k is the exact mixture denoiser plus the smooth error of
    :func:`diffsolve.bench.models.erroneous_model` with size eps_l = eps_top ratio^(k-l)
    (the same error direction at every level, so ||D^l - D^{l-1}|| ~ eps_{l-1}), and declared
    cost c_l = base_cost (eps_1/eps_l)^gamma, i.e. eps ~ cost^(-1/gamma).

    Returns (gmm, levels, eps).
    """

    gmm = GaussianMixture.default_2d()
    schedule = EDM(*GMM_SCHEDULE)
    eps = [eps_top * ratio ** (k - 1 - j) for j in range(k)]
    levels = [Level(erroneous_model(gmm, schedule, e), base_cost * (eps[0] / e) ** gamma,
                    f"synthetic eps={e:.4g}") for e in eps]
    return gmm, levels, eps


def synthetic_cost_accuracy(gamma: float, *, n_levels: int = 6, base_steps: int = 8,
                            top_evals: float = 16.0, eps_top: float = 0.03,
                            ratio: float = 2.0, batch: int = 2000, ref_steps: int = 2048,
                            seed: int = 0,
                            fit_last: int = 4, seeds_solver: str | None = None,
                            ) -> dict[str, Any]:
    """Error against cost for EM and ML-EM on :func:`synthetic_gmm_levels`.

    Target j = 1..n_levels uses levels 1..j (top error eps_j ~ r^-j, r = ``ratio``) and
    N_j = base_steps r^j steps of a Karras grid (so the time-step error also scales like
    r^-j): Euler-Maruyama
    with level j alone costs N_j c_j; ML-EM with levels 1..j and p from
    :func:`level_probabilities` (``top_evals`` expected top-level calls) costs
    N_j sum_l p_l c_l. Errors:

    * ``strong``: E||X - X_ref|| over ``batch`` paths, X_ref = EM with the exact mixture
      denoiser on ``ref_steps`` steps driven by the same Brownian path (virtual Brownian
      tree) and the same initial noise -- the pathwise accuracy the ML-EM analysis is about;
    * ``fd``: exact-moment Frechet distance of the samples to the mixture's mean/covariance
      (includes the sampling error of ``batch`` samples).

    The exponents beta (cost ~ error^-beta) are fitted on the last ``fit_last`` targets
    (the asymptotic regime). Theory: beta_EM = gamma + 1, beta_MLEM = gamma (gamma > 2).
    """

    gmm, levels, eps = synthetic_gmm_levels(n_levels, gamma, eps_top=eps_top, ratio=ratio)
    exact = gmm.denoiser(levels[-1].model.schedule)
    sched = exact.schedule
    x0 = sched.point(float(make_grid("karras", 2, sched).lams[0])).sigma * torch.randn(
        batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    noise_seed = seed + 1
    ref = solve(exact, x0, make_grid("karras", ref_steps, sched), "euler_maruyama",
                noise="brownian", seed=noise_seed, progress=False).x

    def strong(x: Tensor) -> float:
        return float((x - ref).pow(2).sum(1).sqrt().mean())

    def fd(x: Tensor) -> float:
        return moment_frechet_distance(x, gmm.mean, gmm.cov)

    rows = []
    for j in range(1, n_levels + 1):
        steps = round(base_steps * ratio**j)
        grid = make_grid("karras", steps, sched)
        lv = levels[:j]
        n_em = steps - 1  # EM steps; the last interval is the final denoising call
        t0 = time.perf_counter()
        em = solve(lv[-1].model, x0, grid, "euler_maruyama", noise="brownian", seed=noise_seed,
                   progress=False).x
        em_wall = time.perf_counter() - t0
        ex = solve(exact, x0, grid, "euler_maruyama", noise="brownian", seed=noise_seed,
                   progress=False).x

        def drift(x: Tensor, ex: Tensor = ex) -> float:
            return float((x - ex).pow(2).sum(1).sqrt().mean())
        probs = level_probabilities([v.cost for v in lv], n_em, top_evals=top_evals,
                                    gamma=gamma)
        ml = mlem_solve(lv, x0, grid, probs=probs, noise="brownian", seed=noise_seed,
                        draw_seed=seed + 2)
        row = {"target": j, "steps": steps, "eps_top": eps[j - 1], "probs": list(probs),
               "exact_em": {"strong": strong(ex), "fd": fd(ex)},
               "em": {"strong": strong(em), "drift": drift(em), "fd": fd(em),
                      "cost": steps * lv[-1].cost, "wall_s": em_wall},
               "mlem": {"strong": strong(ml.x), "drift": drift(ml.x), "fd": fd(ml.x),
                        "cost": ml.cost.per_sample,
                        "expected_cost": expected_cost_per_sample([v.cost for v in lv], probs,
                                                                  n_em),
                        "evals_per_sample": [e / batch for e in ml.cost.evals],
                        "wall_s": ml.cost.wall_s}}
        if seeds_solver is not None:
            sv = get_solver(seeds_solver)
            s_steps = sv.steps_for_nfe(steps)  # the EM budget, the final denoise included
            sg = make_grid("karras", s_steps, sched)
            t0 = time.perf_counter()
            res = solve(lv[-1].model, x0, sg, sv, noise="brownian", seed=noise_seed,
                        progress=False)
            row["seeds"] = {"solver": seeds_solver, "fd": fd(res.x), "cost": res.nfe * lv[-1].cost,
                            "wall_s": time.perf_counter() - t0, "nfe": res.nfe}
        rows.append(row)
    tail = rows[-fit_last:]
    out: dict[str, Any] = {
        "gamma": gamma, "n_levels": n_levels, "base_steps": base_steps, "top_evals": top_evals,
        "ratio": ratio,
        "eps": eps, "costs": [v.cost for v in levels], "batch": batch, "ref_steps": ref_steps,
        "seed": seed, "rows": rows, "fit_last": fit_last,
        "beta_em": fit_exponent([r["em"]["cost"] for r in tail],
                                [r["em"]["strong"] for r in tail]),
        "beta_mlem": fit_exponent([r["mlem"]["cost"] for r in tail],
                                  [r["mlem"]["strong"] for r in tail]),
        "beta_em_drift": fit_exponent([r["em"]["cost"] for r in tail],
                                      [r["em"]["drift"] for r in tail]),
        "beta_mlem_drift": fit_exponent([r["mlem"]["cost"] for r in tail],
                                        [r["mlem"]["drift"] for r in tail]),
    }
    return out


def gaussian_exact_cost_accuracy(gamma: float, *, n_levels: int = 10, ratio: float = 2.0,
                                 base_steps: int = 4, top_evals: float = 2.0,
                                 eps_top: float | None = None, coupling: Coupling = "nested",
                                 fit_last: int = 4, targets: Sequence[int] | None = None,
                                 ) -> dict[str, Any]:
    r"""Exact (Monte-Carlo-free) cost-to-accuracy exponents of EM and ML-EM.

    Data: the one-component analytic mixture (a 2-D Gaussian N(mu, Sigma)), whose denoiser
    is affine, D(x, s) = mu + Sigma (Sigma + s^2 I)^{-1} (x - mu) (EDM, alpha = 1). Synthetic
    level l adds the affine error eps_l w(s) (A x + c), w(s) = s/sqrt(1 + s^2), with
    eps_l = eps_top ratio^(n_levels - l) and declared cost c_l = (eps_1/eps_l)^gamma.

    Every EM/ML-EM step is then z' = T(B) z + t(B) + noise with z = (x, y): x the run with
    the levels, y Euler-Maruyama with the exact denoiser on the same grid and the same
    Brownian increments. T and t are affine in the Bernoulli variables B_l, so the first and
    second moments of z propagate exactly with E[B_l B_m] = min(p_l, p_m) (nested) or
    p_l p_m + [l = m] p_l (1 - p_l) (independent). Reported per target j (levels 1..j,
    N_j = base_steps ratio^j steps of a Karras grid, the last one the final denoising call):

    * ``strong``: sqrt(E||x - y||^2), the pathwise error caused by the drift approximation
      (bias of level j plus the randomisation of ML-EM) -- the time-step error is common to
      both methods and O(1/N_j) (EM's strong order 1 for additive noise);
    * ``fd``: the exact Frechet distance between N(E x, Cov x) and the data N(mu, Sigma).

    Exponents beta (cost ~ error^-beta) are fitted over the last ``fit_last`` targets.
    """

    k = n_levels
    if eps_top is None:
        eps_top = 0.5 * ratio ** (-(k - 1))
    eps = [eps_top * ratio ** (k - 1 - j) for j in range(k)]
    costs = [(eps[0] / e) ** gamma for e in eps]
    mu = np.array([0.5, -0.3])
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    rng = np.random.default_rng(1234)
    a_err = rng.standard_normal((2, 2))
    c_err = rng.standard_normal(2)
    eye = np.eye(2)
    sched = EDM(0.002, 80.0)
    solver = EulerMaruyama(eta=1.0)

    def affine(s: float, e: float) -> tuple[np.ndarray, np.ndarray]:
        g = cov @ np.linalg.inv(cov + s * s * eye)
        w = s / math.sqrt(1.0 + s * s)
        return g + e * w * a_err, mu - g @ mu + e * w * c_err

    def run(j: int, steps: int, probs: Sequence[float]) -> dict[str, float]:
        grid = make_grid("karras", steps, sched)
        plan = solver.plan(sched, grid.finite_lams(), denoise_final=True)
        lv = list(range(j))
        pr = list(probs)
        if coupling == "nested":
            ebb = np.array([[min(pr[u], pr[v]) for v in lv] for u in lv])
        else:
            ebb = np.array([[pr[u] * pr[v] + (pr[u] * (1 - pr[u]) if u == v else 0.0)
                             for v in lv] for u in lv])
        sig0 = plan.points[0].sigma
        m = np.zeros(4)
        s2 = sig0 * sig0 * np.block([[eye, eye], [eye, eye]])  # E[z z^T], x = y = sig0 n
        n_em = plan.steps
        for i in range(n_em + 1):
            p = plan.points[i] if i < n_em else plan.points[-1]
            s = p.sigma
            g_ex, h_ex = affine(s, 0.0)
            mats = [affine(s, eps[u]) for u in lv]
            diffs = [(mats[u][0] - (mats[u - 1][0] if u else 0 * eye),
                      mats[u][1] - (mats[u - 1][1] if u else 0 * mu)) for u in lv]
            if i < n_em:
                co = plan.extra[i]
                a, (b,), c = co.lin, co.weights, co.noise_std
            else:  # final denoising step with the top level (deterministic)
                a, b, c = 0.0, 1.0, 0.0
                ebb = np.ones((j, j))
                pr = [1.0] * j
            # T(B) = T0 + sum_u (B_u/p_u) T_u, t(B) = t0 + sum_u (B_u/p_u) t_u
            t0m = np.zeros((4, 4))
            t0m[:2, :2] = a * eye
            t0m[2:, 2:] = a * eye + b * g_ex
            t0v = np.concatenate([np.zeros(2), b * h_ex])
            tm, tv = [], []
            for u in lv:
                mm = np.zeros((4, 4))
                mm[:2, :2] = b * diffs[u][0]
                tm.append(mm)
                tv.append(np.concatenate([b * diffs[u][1], np.zeros(2)]))
            # affine map on the augmented vector (z, 1): second moments of (z, 1)
            aug0 = np.zeros((5, 5))
            aug0[:4, :4], aug0[:4, 4], aug0[4, 4] = t0m, t0v, 1.0
            augs = []
            for u in lv:
                au = np.zeros((5, 5))
                au[:4, :4], au[:4, 4] = tm[u], tv[u]
                augs.append(au / pr[u])
            mom = np.zeros((5, 5))
            mom[:4, :4], mom[:4, 4], mom[4, :4], mom[4, 4] = s2, m, m, 1.0
            new = aug0 @ mom @ aug0.T
            for u in lv:
                cross = pr[u] * (augs[u] @ mom @ aug0.T)
                new += cross + cross.T
                for v in lv:
                    new += ebb[u, v] * (augs[u] @ mom @ augs[v].T)
            m = new[:4, 4].copy()
            s2 = new[:4, :4].copy()
            if c != 0.0:
                s2 += c * c * np.block([[eye, eye], [eye, eye]])
        dxy = s2[:2, :2] - s2[:2, 2:] - s2[2:, :2] + s2[2:, 2:]
        mx = m[:2]
        cx = s2[:2, :2] - np.outer(mx, mx)
        fd = frechet_distance(torch.as_tensor(mx), torch.as_tensor(cx), torch.as_tensor(mu),
                              torch.as_tensor(cov))
        return {"strong": float(math.sqrt(max(np.trace(dxy), 0.0))), "fd": fd}

    rows = []
    for j in (targets or range(1, k + 1)):
        steps = round(base_steps * ratio**j)
        n_em = steps - 1
        em = run(j, steps, [1.0] * (j - 1) + [1.0])
        em_single = dict(em)  # with all p = 1 the telescoping sum is exactly level j
        probs = level_probabilities(costs[:j], n_em, top_evals=top_evals, gamma=gamma)
        ml = run(j, steps, probs)
        rows.append({"target": j, "steps": steps, "eps_top": eps[j - 1], "probs": list(probs),
                     "em": {**em_single, "cost": steps * costs[j - 1]},
                     "mlem": {**ml, "cost": expected_cost_per_sample(costs[:j], probs, n_em,
                                                                     coupling)}})
    tail = rows[-fit_last:]
    return {"gamma": gamma, "n_levels": k, "ratio": ratio, "base_steps": base_steps,
            "top_evals": top_evals, "coupling": coupling, "eps": eps, "costs": costs,
            "rows": rows, "fit_last": fit_last,
            "beta_em": fit_exponent([r["em"]["cost"] for r in tail],
                                    [r["em"]["strong"] for r in tail]),
            "beta_mlem": fit_exponent([r["mlem"]["cost"] for r in tail],
                                      [r["mlem"]["strong"] for r in tail]),
            "beta_em_fd": fit_exponent([r["em"]["cost"] for r in tail],
                                       [math.sqrt(r["em"]["fd"]) for r in tail]),
            "beta_mlem_fd": fit_exponent([r["mlem"]["cost"] for r in tail],
                                         [math.sqrt(r["mlem"]["fd"]) for r in tail])}

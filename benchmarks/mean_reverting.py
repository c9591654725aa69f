"""MRS on the analytic mean-reverting Gaussian model: measured orders and Euler(-Maruyama).

Model (:class:`diffsolve.zoo.MeanRevertingGaussian`): x_0 ~ N(m, diag(s2)) with mu fixed, IR-SDE
schedule with constant theta = 4.6 (alpha_T = 0.01) and lambda_inf = 0.5, t from 1 to 1e-3.

* ODE variants (MRS ode-data-1/2, ode-noise-1/2) and Euler in t on the probability-flow ODE
  (``euler_maruyama`` with eta = 0): max abs error at t_min over 64 paths from exact x_T samples
  against the closed-form flow.
* SDE variants (MRS sde-data-1/2, sde-noise-1/2) and Euler-Maruyama in t on the reverse SDE:
  weak error |mean error| + |variance error| of the output at t_min on 1-D data, computed
  exactly (no Monte Carlo) by linearity (``diffsolve.bench.exact_moments.linear_output_moments``).

Both on uniform-lambda and uniform-t (MRS's default "linspace") grids; one NFE per step for
every method. The order is the least-squares slope of log error against log(1/steps).
Writes OUT/results.json. A few seconds on one CPU core.

Usage:
    python benchmarks/mean_reverting.py --out docs/bench/mean_reverting
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from diffsolve.bench.exact_moments import linear_output_moments
from diffsolve.core.mean_reverting import MeanReverting
from diffsolve.drivers.mean_reverting import mrs_options, sample_mean_reverting
from diffsolve.grids import make_grid
from diffsolve.zoo import MeanRevertingGaussian

ODE_STEPS = (10, 20, 40, 80, 160)
SDE_STEPS = (20, 40, 80, 160, 320)
GRIDS = ("uniform_lambda", "uniform_t")


def slope(steps: tuple[int, ...], errors: list[float]) -> float:
    lx = [-math.log(n) for n in steps]
    ly = [math.log(e) for e in errors]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx)


def ode_rows(sch: MeanReverting) -> list[dict]:
    mg = MeanRevertingGaussian(sch, [0.5, -1.0], [0.04, 0.25], [0.2, 0.3])
    x = mg.sample(64, sch.t_max, torch.Generator().manual_seed(0))
    exact = mg.flow(x, sch.t_max, sch.t_min)
    methods = {f"mrs ode-{p}-{o}": {"prediction": p, "order": o}
               for p in ("data", "noise") for o in (1, 2)}
    methods["euler (PF-ODE in t)"] = {"solver": "euler_maruyama", "eta": 0.0}
    rows = []
    for grid in GRIDS:
        for name, opts in methods.items():
            errs = [float((sample_mean_reverting(mg.denoiser("eps"), x, grid, steps=n,
                                                 **opts).x - exact).abs().max())
                    for n in ODE_STEPS]
            rows.append({"kind": "ode", "method": name, "grid": grid, "steps": ODE_STEPS,
                         "errors": errs, "order": slope(ODE_STEPS, errs), "paths": 64})
    return rows


def sde_rows(sch: MeanReverting) -> list[dict]:
    mg = MeanRevertingGaussian(sch, [0.5], [0.04], [0.2])
    mu = float(mg.mu[0])
    a_start, v_start = (float(w[0]) for w in mg.marginal(sch.t_max))
    a_end, v_end = (float(w[0]) for w in mg.marginal(sch.t_min))
    methods = {f"mrs sde-{p}-{o}": (p, o) for p in ("data", "noise") for o in (1, 2)}
    methods["euler-maruyama (reverse SDE in t)"] = None
    rows = []
    for grid_name in GRIDS:
        for name, spec in methods.items():
            errs = []
            for n in SDE_STEPS:
                grid = make_grid(grid_name, n, sch, to_zero=False)
                if spec is None:
                    solver, opts = "euler_maruyama", {}
                else:
                    solver, opts = "dpm_multistep", mrs_options("sde", *spec, steps=n)
                m, v = linear_output_moments(mg.denoiser("eps"), grid, solver, a_start - mu,
                                             v_start, **opts)
                errs.append(abs(m - (a_end - mu)) + abs(v - v_end))
            rows.append({"kind": "sde", "method": name, "grid": grid_name, "steps": SDE_STEPS,
                         "errors": errs, "order": slope(SDE_STEPS, errs), "exact_moments": True})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/mean_reverting"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    sch = MeanReverting(theta_min=4.6, theta_max=4.6, lambda_inf=0.5)
    rows = ode_rows(sch) + sde_rows(sch)
    for r in rows:
        errs = " ".join(f"{e:.2e}" for e in r["errors"])
        print(f"{r['method']:34s} {r['grid']:15s} {errs}  order {r['order']:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"schedule": repr(sch), "ode_data": "m (0.5, -1), s2 (0.04, 0.25), mu (0.2, 0.3)",
            "sde_data": "m 0.5, s2 0.04, mu 0.2 (1-D, exact moments)"}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

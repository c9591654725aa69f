"""Exact-moment Frechet distance versus NFE on the analytic Gaussian mixture, for every solver.

Two models: the exact mixture denoiser, and the same denoiser with a deliberate smooth error
(to mimic a learned model):  D_err(x, s) = D(x, s) + eps * s / sqrt(1 + s^2) * tanh(x A + b),
with s the EDM noise level and fixed A, b. The distance is between the Gaussian fit of N
samples and the mixture's exact mean and covariance (diffsolve.bench.metrics), so the only
Monte Carlo error is on the samples' side; every solver starts from the same per-sample noise.

Writes OUT/sde_vs_ode.json and OUT/sde_vs_ode.png. Usage:
    python benchmarks/sde_vs_ode.py --out results/sde_vs_ode [--n 10000] [--solvers a,b]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

import diffsolve
from diffsolve.bench.metrics import moment_frechet_distance
from diffsolve.bench.models import erroneous_model
from diffsolve.schedules import EDM
from diffsolve.solvers import get_solver
from diffsolve.zoo import GaussianMixture

NFE_DEFAULT = [5, 8, 12, 20, 35, 50, 100, 200, 500]


def nfe_within(nfes: list[int], fds: list[float], rel: float = 0.10) -> int | None:
    """Smallest NFE from which every larger budget stays within `rel` of the converged FD
    (the FD at the largest budget)."""
    target = fds[-1] * (1 + rel)
    best = None
    for n, fd in zip(reversed(nfes), reversed(fds), strict=True):
        if fd <= target:
            best = n
        else:
            break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="results/sde_vs_ode")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--nfe", default=",".join(map(str, NFE_DEFAULT)))
    parser.add_argument("--solvers", default="all")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    nfes = [int(v) for v in args.nfe.split(",")]
    names = diffsolve.list_solvers() if args.solvers == "all" else args.solvers.split(",")
    gmm = GaussianMixture.default_2d()
    schedule = EDM(0.002, 80.0)
    models = {"exact": gmm.denoiser(schedule), "with_error": erroneous_model(gmm, schedule,
                                                                              args.eps)}
    mean, cov = gmm.mean, gmm.cov
    results: dict = {"config": {**vars(args), "nfe": nfes, "schedule": repr(schedule),
                                "grid": "karras rho=7", "torch": torch.__version__,
                                "python": platform.python_version(),
                                "machine": platform.machine()}, "solvers": {}}
    cells = [(m, s) for m in models for s in names]
    for model_name, name in tqdm(cells, desc="solver x model"):
        row = {"nfe": [], "fd": [], "seconds": [], "stochastic": get_solver(name).stochastic}
        for nfe in nfes:
            try:
                steps = diffsolve.steps_for_nfe(diffsolve.get_solver(name), nfe)
            except diffsolve.SolverOptionError:
                continue
            start = time.perf_counter()
            res = diffsolve.sample(models[model_name], (args.n, 2), solver=name, steps=steps,
                                   seed=args.seed, dtype=torch.float64, progress=False)
            row["seconds"].append(time.perf_counter() - start)
            row["nfe"].append(res.nfe)
            row["fd"].append(moment_frechet_distance(res.x, mean, cov))
        row["converged_fd"] = row["fd"][-1]
        row["nfe_within_10pct"] = nfe_within(row["nfe"], row["fd"])
        results["solvers"].setdefault(name, {})[model_name] = row
    summary = {}
    for model_name in models:
        em = results["solvers"].get("euler_maruyama", {}).get(model_name, {})
        em_n = em.get("nfe_within_10pct")
        for name in names:
            row = results["solvers"][name][model_name]
            n10 = row["nfe_within_10pct"]
            summary.setdefault(model_name, {})[name] = {
                "nfe_within_10pct": n10, "converged_fd": row["converged_fd"],
                "speedup_vs_euler_maruyama": (em_n / n10) if (em_n and n10) else None}
    results["summary"] = summary
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sde_vs_ode.json").write_text(json.dumps(results, indent=1))
    plot(results, models, out / "sde_vs_ode.png")
    print(json.dumps(summary, indent=1))


def plot(results: dict, models: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 6), dpi=110)
    for ax, model_name in zip(axes, models, strict=True):
        for name, per_model in sorted(results["solvers"].items()):
            row = per_model[model_name]
            style = "-" if row["stochastic"] else "--"
            ax.loglog(row["nfe"], row["fd"], style, marker="o", ms=3, label=name)
        ax.set_title(f"GMM, {model_name.replace('_', ' ')} denoiser")
        ax.set_xlabel("NFE")
        ax.set_ylabel("exact-moment Frechet distance")
        ax.grid(True, which="both", alpha=0.3)
    axes[-1].legend(fontsize=7, ncol=2, title="solid: SDE, dashed: ODE")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()

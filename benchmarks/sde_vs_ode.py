"""SDE vs ODE solvers on the analytic Gaussian mixture, exact denoiser and with an error,
scored with the exact-density metrics, every cell over >= 3 seeds with 95 % intervals.

Runs the benchmark harness (:func:`diffsolve.bench.runner.run_benchmark`) on ``gmm`` (exact
denoiser) and ``gmm-err`` (the exact denoiser plus a smooth error, eps = 0.1,
:func:`diffsolve.bench.models.erroneous_model`), both scored against the exact mixture, and
draws OUT/sde_vs_ode.png: |ll_gap| (exact log-density gap) and |var_ratio - 1| (within-mode
variance ratio) against NFE, mean over seeds with the 95 % interval as a band (its lower
edge clipped at a tenth of the mean on the log axis), the exact-sample floor as a grey band.
Cells already computed in OUT/<model>/results.json are reused; the
exact-denoiser panel is read from ``--exact-dir`` when benchmarks/seeds_speedup.py has written
it there (then with that run's solvers and budgets).

Usage:
    python benchmarks/sde_vs_ode.py --out docs/bench/sde_vs_ode --samples 4000 --seeds 3 \
        --nfe 10,20,40,80,160 --exact-dir gmm/main
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from diffsolve.bench.runner import run_benchmark
from diffsolve.bench.summary import aggregate
from diffsolve.bench.tasks import TARGET

SOLVERS = ["euler_maruyama", "seeds_2", "seeds_3", "sa_solver", "er_sde", "dpmpp_2m_sde",
           "dpmpp_2m"]
METRICS = ("ll_gap", "var_ratio")


def plot(panels: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), len(METRICS), figsize=(12, 4.8 * len(panels)),
                             dpi=90, squeeze=False)
    cmap = plt.get_cmap("tab10")
    names = list(dict.fromkeys(s for d in panels.values() for s in d["config"]["solvers"]))
    for i, (title, data) in enumerate(panels.items()):
        cfg, runs, floor = data["config"], data["cells"], data["floor"]
        for s in cfg["solvers"]:
            j = names.index(s)
            rows = []
            for n in cfg["nfe"]:
                agg = aggregate([runs[f"{cfg['model']}|{s}|nfe={n}|n={cfg['samples']}|seed={sd}"]
                                 for sd in cfg["seeds"]])
                if agg["status"] == "ok":
                    rows.append((agg["nfe_used"], agg))
            stochastic = bool(rows and rows[0][1]["stochastic"])
            for ax, m in zip(axes[i], METRICS, strict=True):
                pts = []
                for nfe, agg in rows:
                    v, t = agg["metrics"][m], TARGET[m]
                    mid = abs(v["mean"] - t)
                    lo, hi = sorted((abs(v["lo"] - t), abs(v["hi"] - t)))
                    if v["lo"] <= t <= v["hi"]:
                        lo = mid * 0.1
                    if mid > 0 and math.isfinite(hi):
                        pts.append((nfe, mid, max(lo, mid * 0.1), hi))
                if not pts:
                    continue
                xs, ys, los, his = zip(*pts, strict=True)
                ax.plot(xs, ys, "-" if stochastic else "--", color=cmap(j % 10), marker="o",
                        ms=3, label=f"{s} ({'SDE' if stochastic else 'ODE'})")
                ax.fill_between(xs, los, his, color=cmap(j % 10), alpha=0.15, lw=0)
        for ax, m in zip(axes[i], METRICS, strict=True):
            f = floor[m]
            t = TARGET[m]
            ax.axhspan(0, max(abs(f["hi"] - t), abs(f["lo"] - t)), color="grey", alpha=0.25,
                       label="exact-sample floor (95 % CI)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE (model evaluations used)")
            ax.set_ylabel(f"|{m} - {t:g}|")
            ax.set_title(f"{title}: {cfg['samples']} samples x {len(cfg['seeds'])} seeds",
                         fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
    for row in axes:
        row[-1].legend(fontsize=7, loc="upper right", title="solid: SDE, dashed: ODE",
                       title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="results/sde_vs_ode")
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--nfe", default="10,20,40,80,160")
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--exact-dir", default="gmm/main",
                    help="folder (under --out) of the exact-denoiser results")
    ap.add_argument("--models", default="gmm,gmm-err")
    a = ap.parse_args()
    out = Path(a.out)
    nfes = [int(v) for v in a.nfe.split(",")]
    panels = {}
    for model in a.models.split(","):
        sub = out / (a.exact_dir if model == "gmm" else model.replace("-", "_"))
        if model == "gmm" and (sub / "results.json").exists():
            print(model, "read from", sub)  # written by benchmarks/seeds_speedup.py
        else:
            res = run_benchmark(model, a.solvers, nfes, a.samples, 0, sub, progress=False,
                                reference_nfe=None, n_seeds=a.seeds, mmd_points=None)
            print(model, res["paths"]["report"], res["failures"])
        data = json.loads((sub / "results.json").read_text())
        panels[{"gmm": "exact denoiser", "gmm-err": "denoiser with error (eps 0.1)"}.get(
            model, model)] = data
    plot(panels, out / "sde_vs_ode.png")


if __name__ == "__main__":
    main()

"""NFE to reach converged quality, relative to Euler-Maruyama, with 95 % CIs over seeds.

Runs the benchmark harness (:func:`diffsolve.bench.runner.run_benchmark`: every solver x NFE
budget x seed, seeded noise, metrics of :mod:`diffsolve.bench.tasks`) on one model, then, for
every solver and seed, finds the NFE at which a criterion is first met *and stays met* at every
larger budget, interpolating log-linearly between the two budgets around the crossing. A
solver that never meets the ll_gap criterion by the largest budget is re-run at the
extension budgets (``--extend``; Euler-Maruyama always); if it still fails, its NFE is
reported as "> largest budget" and ratios against it as bounds.

Criteria (exact-density, analytic models):
* ``ll_gap``: |mean log p(samples) - E_p log p| <= 0.05 (the issue's criterion; SE ~0.015
  per seed at n = 5000);
* ``var_ratio``: |within-mode variance ratio - 1| <= 0.05;
* ``mode_kl``: mode-resolved KL <= 2 x its exact-sample floor (mean over seeds);
* ``fd``: Frechet distance to the exact moments <= 2 x its exact-sample floor.

Speed-up of solver S = NFE*(Euler-Maruyama) / NFE*(S), computed per seed (same seed for both:
the same initial noise) and summarised as mean +- 95 % CI (Student t over seeds); the same
against DPM-Solver++(2M) SDE, the strongest earlier SDE solver of the set.

Writes OUT/speedup.json, OUT/speedup.md (and the harness's results.json/report.md/plot in
OUT/main and OUT/extension). Usage:
    python benchmarks/seeds_speedup.py --model gmm --out docs/bench/sde_vs_ode/gmm \
        --samples 5000 --seeds 3 --nfe 5,10,20,40,80,160,320 --extend 640
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from diffsolve.bench.runner import run_benchmark
from diffsolve.bench.stats import mean_ci
from diffsolve.bench.store import cell_key

SDE = ["euler_maruyama", "seeds_1", "seeds_2", "seeds_3", "seeds_3[prediction=noise]",
       "sa_solver", "er_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"]
ODE = ["dpmpp_2m"]
BASE = "euler_maruyama"
SECOND = "dpmpp_2m_sde"


def criteria(floor: dict[str, Any]) -> dict[str, tuple[str, float, float]]:
    """name -> (metric, target, tolerance): met when |value - target| <= tolerance."""
    return {"ll_gap": ("ll_gap", 0.0, 0.05), "var_ratio": ("var_ratio", 1.0, 0.05),
            "mode_kl": ("mode_kl", 0.0, 2.0 * floor["mode_kl"]["mean"]),
            "fd": ("fd", 0.0, 2.0 * floor["fd"]["mean"])}


def crossing(points: list[tuple[int, float]], tol: float) -> float | None:
    """Smallest NFE from which |value| <= tol at every larger budget (log-linear interpolation
    of |value| between the last failing and the first passing budget); None if never."""
    pts = sorted(points)
    if not pts or abs(pts[-1][1]) > tol:
        return None
    j = len(pts) - 1
    while j > 0 and abs(pts[j - 1][1]) <= tol:
        j -= 1
    if j == 0:
        return float(pts[0][0])
    (n0, v0), (n1, v1) = pts[j - 1], pts[j]
    a0, a1 = abs(v0), max(abs(v1), 1e-300)
    if a1 >= a0 or tol <= 0:
        return float(n1)
    frac = (math.log(a0) - math.log(tol)) / (math.log(a0) - math.log(a1))
    return math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))


def analyse(model: str, solvers: list[str], runs: dict[str, Any], samples: int,
            seeds: list[int], budgets: list[int], floor: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cname, (metric, target, tol) in criteria(floor).items():
        per: dict[str, Any] = {}
        for s in solvers:
            nstar = []
            for sd in seeds:
                pts = []
                for n in budgets:
                    c = runs.get(cell_key(model, s, n, samples, sd))
                    if c and c.get("status") == "ok" and c["metrics"].get(metric) is not None:
                        pts.append((int(c["nfe_used"]), c["metrics"][metric] - target))
                nstar.append(crossing(pts, tol))
            per[s] = {"nfe_star": nstar}
        for s in solvers:
            mine = per[s]["nfe_star"]
            if SECOND in per:  # against the strongest earlier SDE solver as well
                sec = per[SECOND]["nfe_star"]
                r2 = [b / m for b, m in zip(sec, mine, strict=True) if b and m]
                per[s]["speedup_vs_2m_sde"] = mean_ci(r2) if len(r2) == len(seeds) else None
            base = per[BASE]["nfe_star"]
            ratios = [b / m for b, m in zip(base, mine, strict=True) if b and m]
            per[s]["nfe_star_ci"] = mean_ci([m for m in mine if m])
            per[s]["reached_in_seeds"] = sum(1 for m in mine if m)
            per[s]["speedup_vs_em"] = mean_ci(ratios) if len(ratios) == len(seeds) else None
            per[s]["speedup_lower_bound"] = None
            if any(b is None for b in base) and all(m for m in mine):
                per[s]["speedup_lower_bound"] = max(budgets) / max(mine)
        out[cname] = {"metric": metric, "target": target, "tolerance": tol, "solvers": per}
    return out


def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = [f"# NFE to converged quality relative to Euler-Maruyama: {cfg['model']}", "",
             f"`{cfg['command']}` ({cfg['seconds']:.0f} s wall clock on {cfg['hardware']}). "
             f"{cfg['samples']} samples x seeds {cfg['seeds']}; budgets {cfg['budgets']}. "
             "NFE* = the NFE (model evaluations, from the model's counter) from which the "
             "criterion holds at every larger budget, interpolated log-linearly; speed-up = "
             "NFE*(Euler-Maruyama) / NFE*(solver) per seed, mean ± 95 % CI over seeds "
             "(Student t). `—`: not reached by the largest budget in every seed.", ""]
    for cname, c in res["criteria"].items():
        lines += [f"## {cname}: |{c['metric']} - {c['target']:g}| <= {c['tolerance']:.3g}", "",
                  "| solver | NFE* (mean ± CI) | seeds reached | speed-up vs EM | "
                  "speed-up vs dpmpp_2m_sde |", "|---|---:|---:|---:|---:|"]
        for s, v in c["solvers"].items():
            ns = v["nfe_star_ci"]
            sp = v["speedup_vs_em"]
            nst = "—" if ns is None or v["reached_in_seeds"] < len(cfg["seeds"]) else \
                f"{ns['mean']:.0f} ± {ns['ci95']:.0f}"
            spt = "—" if sp is None else f"{sp['mean']:.2f} ± {sp['ci95']:.2f}"
            if sp is None and v["speedup_lower_bound"]:
                spt = f"> {v['speedup_lower_bound']:.1f}"
            sp2 = v.get("speedup_vs_2m_sde")
            sp2t = "—" if sp2 is None else f"{sp2['mean']:.2f} ± {sp2['ci95']:.2f}"
            lines.append(f"| {s} | {nst} | {v['reached_in_seeds']}/{len(cfg['seeds'])} | "
                         f"{spt} | {sp2t} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="gmm")
    ap.add_argument("--out", default="results/seeds_speedup")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--nfe", default="5,10,20,40,80,160,320")
    ap.add_argument("--extend", default="640")
    ap.add_argument("--solvers", default=",".join(SDE + ODE))
    ap.add_argument("--mmd-points", type=int, default=0,
                    help="rows per set for the MMD (0: no MMD; it is not a criterion here)")
    a = ap.parse_args()
    start = time.perf_counter()
    solvers = a.solvers.split(",")
    budgets = [int(v) for v in a.nfe.split(",")]
    out = Path(a.out)
    mmd = a.mmd_points or None
    main_res = run_benchmark(a.model, solvers, budgets, a.samples, 0, out / "main",
                             progress=False, reference_nfe=None, n_seeds=a.seeds,
                             mmd_points=mmd)
    data = json.loads((out / "main" / "results.json").read_text())
    runs, floor, seeds = data["cells"], data["floor"], data["config"]["seeds"]
    res = analyse(a.model, solvers, runs, a.samples, seeds, budgets, floor)
    ext = [int(v) for v in a.extend.split(",") if v]
    if ext:
        need = sorted({s for s, v in res["ll_gap"]["solvers"].items()
                       if v["reached_in_seeds"] < len(seeds)} | {BASE})
        run_benchmark(a.model, need, ext, a.samples, 0, out / "extension", progress=False,
                      reference_nfe=None, n_seeds=a.seeds, mmd_points=mmd)
        runs = {**runs, **json.loads((out / "extension" / "results.json").read_text())["cells"]}
        budgets = budgets + ext
        res = analyse(a.model, solvers, runs, a.samples, seeds, budgets, floor)
    hw = data["hardware"]
    report = {"config": {"model": a.model, "samples": a.samples, "seeds": seeds,
                         "budgets": budgets, "solvers": solvers,
                         "command": "python benchmarks/seeds_speedup.py " + " ".join(
                             f"--{k.replace('_', '-')} '{v}'" for k, v in vars(a).items()),
                         "seconds": time.perf_counter() - start,
                         "hardware": f"{hw['cpu_count']} CPUs, {hw['torch_threads']} threads"},
              "floor": floor, "criteria": res, "failures": main_res["failures"]}
    (out / "speedup.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "speedup.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

"""Correctors (Langevin, LML) and Denoising MCMC on known answers and on the 2-D mixture.

Three experiments, every number over ``--seeds`` seeds with Student-t 95 % intervals
(:func:`diffsolve.bench.stats.mean_ci`):

A. *Fixed noise level, Gaussian data* (exact answer): data N(0, diag(4, 0.01)) at sigma = 0.1,
   so p_sigma = N(0, diag(4.01, 0.02)). (A1) the stationary variance of fixed-step Langevin
   started from the exact marginal against the ULA formula v / (1 - eps/(2v)); (A2) chains
   started collapsed near 0 (N(0, 0.01 I)): exact Gaussian KL of the samples' moments to
   p_sigma against NFE for Langevin and LML (fixed step tau = 0.5 and the snr rule r = 0.16).
B. *DMCMC on the mixture* (``gmm``: exact denoiser, exact level densities): mode weights
   (weight_tv), mode-resolved KL, exact log-density gap, within-mode variance ratio, MMD,
   against plain solvers at the same per-sample NFE.
C. *Predictor + corrector on the mixture*: quality against NFE for predictor + Langevin and
   predictor + LML against the plain solvers at the same NFE.

Writes OUT/correctors.json, OUT/README.md (tables) and OUT/correctors.png.

Usage:
    python benchmarks/correctors.py --out docs/bench/correctors --samples 4000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import diffsolve
from diffsolve.bench.stats import mean_ci
from diffsolve.bench.tasks import make_task
from diffsolve.drivers.corrector import (
    LangevinCorrector,
    LMLCorrector,
    corrected_sample,
    langevin_chain,
)
from diffsolve.drivers.dmcmc import dmcmc_sample
from diffsolve.schedules import EDM
from diffsolve.zoo import GaussianMixture

METRICS = ("mode_kl", "weight_tv", "ll_gap", "var_ratio", "mmd")
PLAIN = ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "dpm_solver_3", "dpmpp_2m_sde",
         "euler_ancestral"]
PREDICTORS = ["euler", "heun", "dpmpp_2m"]
CORRECTORS: dict[str, dict[str, Any]] = {
    "langevin[tau=0.5]": {"corrector": "langevin", "corrector_options": {"step_size": 0.5}},
    "langevin[tau=0.5;n=2]": {"corrector": "langevin",
                              "corrector_options": {"step_size": 0.5, "n_steps": 2}},
    "langevin[snr=0.16]": {"corrector": "langevin", "corrector_options": {"snr": 0.16}},
    "lml[tau=0.5;n=2;damping=0.1]": {"corrector": "lml", "corrector_options": {
        "step_size": 0.5, "n_steps": 2, "damping": 0.1}},
    "lml[tau=0.5;n=2;damping=0.01]": {"corrector": "lml", "corrector_options": {
        "step_size": 0.5, "n_steps": 2, "damping": 0.01}},
}


def kl_gauss(x: torch.Tensor, cov: torch.Tensor) -> float:
    """KL(N(sample mean, sample covariance) || N(0, cov))."""
    m, c = x.mean(0), torch.cov(x.T)
    inv = torch.linalg.inv(cov)
    return 0.5 * float(torch.trace(inv @ c) + m @ inv @ m - x.shape[1]
                       + torch.logdet(cov) - torch.logdet(c))


def experiment_a(seeds: list[int], samples: int) -> dict[str, Any]:
    cov = torch.diag(torch.tensor([4.0, 0.01], dtype=torch.float64))
    gmm = GaussianMixture.gaussian([0.0, 0.0], cov)
    sched = EDM()
    model, sig = gmm.denoiser(sched), 0.1
    point = sched.point(-math.log(sig))
    marg = cov + sig ** 2 * torch.eye(2, dtype=torch.float64)
    v = torch.diag(marg)
    out: dict[str, Any] = {"setup": {"data_cov": [4.0, 0.01], "sigma": sig,
                                     "marginal_var": v.tolist(), "samples": samples}}
    stat = {}
    for tau in (1.0, 0.5, 0.25, 0.125):
        eps = tau * sig ** 2
        pred = (v / (1 - eps / (2 * v))).tolist()
        per = []
        for s in seeds:
            x0 = torch.randn(samples, 2, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(s)) * v.sqrt()
            x = langevin_chain(model, x0, point, LangevinCorrector(step_size=tau, n_steps=400),
                               seed=s)
            per.append(float(x[:, 1].var()) / float(v[1]))  # the stiff direction (converged)
        stat[str(tau)] = {"var_ratio_stiff": mean_ci(per), "predicted": pred[1] / float(v[1])}
    out["stationary"] = stat
    chains: dict[str, Any] = {}
    methods: dict[str, Callable[[int], Any]] = {
        "langevin[tau=0.5]": lambda k: LangevinCorrector(step_size=0.5, n_steps=k),
        "lml[tau=0.5;damping=0.01]": lambda k: LMLCorrector(step_size=0.5, n_steps=k,
                                                            damping=0.01),
        "lml[tau=0.5;damping=0.1]": lambda k: LMLCorrector(step_size=0.5, n_steps=k,
                                                           damping=0.1),
        "langevin[snr=0.16]": lambda k: LangevinCorrector(snr=0.16, n_steps=k),
        "lml[snr=0.16;damping=0.01]": lambda k: LMLCorrector(snr=0.16, n_steps=k,
                                                             damping=0.01),
    }
    for name, make in methods.items():
        rows = {}
        for k in (8, 32, 128, 512):
            per = []
            for s in seeds:
                x0 = 0.1 * torch.randn(samples, 2, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(100 + s))
                x = langevin_chain(model, x0, point, make(k), seed=s)
                per.append(kl_gauss(x, marg))
            rows[str(k)] = mean_ci(per)
        chains[name] = rows
    out["from_collapsed_start"] = chains
    return out


def _score(task: Any, x: torch.Tensor, seed: int) -> dict[str, float]:
    m = task.evaluate(x, seed)
    return {k: float(m[k]) for k in METRICS}


def _agg(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    return {k: mean_ci([r[k] for r in per_seed]) for k in METRICS}


def experiment_b(task: Any, gmm: GaussianMixture, seeds: list[int], samples: int,
                 ) -> dict[str, Any]:
    model = task.model
    lld = lambda y, s: gmm.marginal(1.0, s).log_prob(y)  # noqa: E731  (exact level density)
    rounds = 4
    configs = {
        "dmcmc[gibbs;last;dpmpp_2m@10]": dict(level_update="gibbs", select="last",
                                              solver="dpmpp_2m", denoise_nfe=10),
        "dmcmc[gibbs;last;dpmpp_2m@5]": dict(level_update="gibbs", select="last",
                                             solver="dpmpp_2m", denoise_nfe=5),
        "dmcmc[gibbs;min;dpmpp_2m@10]": dict(level_update="gibbs", select="min",
                                             solver="dpmpp_2m", denoise_nfe=10),
        "dmcmc[argmax;min;dpmpp_2m@10] (released rule)": dict(
            level_update="argmax", select="min", solver="dpmpp_2m", denoise_nfe=10),
    }
    out: dict[str, Any] = {"setup": {"chains": samples // rounds, "rounds": rounds,
                                     "n_skip": 4, "burn_in": 20, "init": "dpmpp_2m @ 20 NFE",
                                     "step_size": 0.3, "levels": "40 geometric in [0.02, 2]"}}
    rows: dict[str, Any] = {}
    for name, cfg in configs.items():
        per, t0 = [], time.perf_counter()
        nfe = None
        for s in seeds:
            res = dmcmc_sample(model, (samples // rounds, 2), level_log_density=lld, n_skip=4,
                               rounds=rounds, step_size=0.3, burn_in=20, seed=s, **cfg)
            nfe = res.nfe_per_sample
            per.append(_score(task, res.x, s))
        rows[name] = {"nfe": nfe, **_agg(per), "seconds": time.perf_counter() - t0}
        print(name, nfe, rows[name]["mode_kl"]["mean"], flush=True)
    for solver in PLAIN:
        for nfe in (19, 24, 40):
            per = []
            for s in seeds:
                r = diffsolve.sample(model, (samples, 2), solver=solver, nfe=nfe, seed=s,
                                     dtype=torch.float64, progress=False)
                per.append(_score(task, r.x, s))
            rows[f"{solver}@{nfe}"] = {"nfe": r.nfe, **_agg(per)}
    floor = [task.floor(s) for s in seeds]
    rows["exact samples (floor)"] = {"nfe": 0, **_agg([{k: float(f[k]) for k in METRICS}
                                                        for f in floor])}
    out["rows"] = rows
    return out


def experiment_c(task: Any, seeds: list[int], samples: int, nfes: list[int]) -> dict[str, Any]:
    model = task.model
    rows: dict[str, Any] = {}
    for nfe in nfes:
        for solver in PLAIN:
            per = []
            for s in seeds:
                r = diffsolve.sample(model, (samples, *task.shape), solver=solver, nfe=nfe,
                                     seed=s, dtype=task.dtype, progress=False)
                per.append(_score(task, r.x, s))
            rows[f"{solver}|{nfe}"] = {"method": solver, "budget": nfe, "nfe": r.nfe,
                                       **_agg(per)}
        for pred in PREDICTORS:
            for cname, ckw in CORRECTORS.items():
                per = []
                for s in seeds:
                    r = corrected_sample(model, (samples, *task.shape), solver=pred, nfe=nfe,
                                         seed=s, dtype=task.dtype, **ckw)
                    per.append(_score(task, r.x, s))
                rows[f"{pred}+{cname}|{nfe}"] = {"method": f"{pred}+{cname}", "budget": nfe,
                                                 "nfe": r.nfe, **_agg(per)}
        print("C", nfe, flush=True)
    return {"rows": rows}


def _fmt(ci: dict[str, Any] | None, digits: int = 4) -> str:
    if ci is None:
        return "n/a"
    return f"{ci['mean']:.{digits}f} ± {ci['ci95']:.{digits}f}"


def write_readme(path: Path, res: dict[str, Any]) -> None:
    a, b = res["A"], res["B"]
    lines = ["# Correctors and Denoising MCMC: measured", "",
             f"Written by `benchmarks/correctors.py` ({res['samples']} samples, seeds "
             f"{res['seeds']}, mean ± 95 % CI over seeds). Maths: `docs/correctors.md`.", "",
             "## A1. Langevin at a fixed noise level: stationary variance vs the ULA formula",
             "", "Stiff direction of p_sigma = N(0, diag(4.01, 0.02)) (sigma = 0.1), 400 "
             "fixed steps eps = tau sigma^2 from the exact marginal; ratio to the exact "
             "variance.", "", "| tau | measured var / exact | ULA prediction 1/(1-eps/2v) |",
             "|---|---|---|"]
    for tau, row in a["stationary"].items():
        lines.append(f"| {tau} | {_fmt(row['var_ratio_stiff'])} | {row['predicted']:.4f} |")
    lines += ["", "## A2. From a collapsed start: exact Gaussian KL to p_sigma against NFE", "",
              "| method | " + " | ".join(f"{k} NFE" for k in a["from_collapsed_start"][
                  "langevin[tau=0.5]"]) + " |",
              "|---|" + "---|" * len(a["from_collapsed_start"]["langevin[tau=0.5]"])]
    for name, rows in a["from_collapsed_start"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v, 3) for v in rows.values()) + " |")
    lines += ["", "## B. DMCMC on the 2-D mixture (exact level densities) vs plain solvers", "",
              f"Setup: {json.dumps(b['setup'])}. NFE = evaluations per output sample, "
              "amortised over the rounds (outputs of one chain are correlated).", "",
              "| method | NFE/sample | " + " | ".join(METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for name, row in sorted(b["rows"].items(), key=lambda kv: kv[1]["nfe"]):
        lines.append(f"| {name} | {row['nfe']:g} | "
                     + " | ".join(_fmt(row[m]) for m in METRICS) + " |")
    for key in [k for k in res if k == "C" or k.startswith("C:")]:
        model = key[2:] or "gmm"
        lines += ["", f"## C. Predictor + corrector vs plain solvers on `{model}`", "",
                  "mode_kl (mode-resolved KL against the exact mixture, lower is better); "
                  "NFE = evaluations used.", ""]
        lines += _c_table(res[key]["rows"])
    path.write_text("\n".join(lines) + "\n")


def _c_table(rows: dict[str, Any]) -> list[str]:
    budgets = sorted({r["budget"] for r in rows.values()})
    methods = list(dict.fromkeys(r["method"] for r in rows.values()))
    lines = ["| method | " + " | ".join(f"{n} (NFE used)" for n in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for m in methods:
        cells = []
        for n in budgets:
            r = rows.get(f"{m}|{n}")
            cells.append("n/a" if r is None else f"{_fmt(r['mode_kl'])} ({r['nfe']})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def plot(path: Path, res: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=90)
    ax = axes[0]
    for name, rows in res["A"]["from_collapsed_start"].items():
        ks = [int(k) for k in rows]
        mean = [rows[k]["mean"] for k in rows]
        half = [rows[k]["ci95"] for k in rows]
        ax.errorbar(ks, mean, yerr=half, marker="o", capsize=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="NFE (corrector steps)",
           ylabel="KL(samples || p_sigma), Gaussian moments",
           title="A2: fixed sigma = 0.1, ill-conditioned Gaussian")
    ax.legend(fontsize=8)
    ax = axes[1]
    rows = res["C"]["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows.values()))
    keep = [m for m in methods if m in (
        "euler", "heun", "dpmpp_2m", "unipc", "euler+langevin[tau=0.5]",
        "euler+langevin[tau=0.5;n=2]", "euler+lml[tau=0.5;n=2;damping=0.1]",
        "heun+lml[tau=0.5;n=2;damping=0.1]")]
    for m in keep:
        pts = sorted((r["nfe"], r["mode_kl"]) for r in rows.values() if r["method"] == m)
        ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts],
                    yerr=[p[1]["ci95"] for p in pts], marker="o" if "+" in m else "s",
                    capsize=3, label=m, ls="-" if "+" in m else "--")
    for name, row in res["B"]["rows"].items():
        if name.startswith("dmcmc[gibbs;last"):
            ax.errorbar([row["nfe"]], [row["mode_kl"]["mean"]], yerr=[row["mode_kl"]["ci95"]],
                        marker="*", ms=12, capsize=3, ls="none", label=name)
    ax.set(xscale="log", yscale="log", xlabel="NFE per sample", ylabel="mode-resolved KL",
           title="C/B: 2-D mixture (exact denoiser)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/bench/correctors")
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--nfe", default="10,20,40")
    p.add_argument("--only", default="ABC", help="experiments to (re)run; others are read back")
    p.add_argument("--c-model", default="gmm", help="model of experiment C (gmm, gmm-learned-2d)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "correctors.json"
    res: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    seeds = list(range(args.seeds))
    res.update({"samples": args.samples, "seeds": seeds})
    task = make_task("gmm", args.samples)
    gmm = GaussianMixture.default_2d()
    t0 = time.perf_counter()
    if "A" in args.only:
        res["A"] = experiment_a(seeds, min(args.samples, 2000))
        path.write_text(json.dumps(res, indent=1))
    if "B" in args.only:
        res["B"] = experiment_b(task, gmm, seeds, args.samples)
        path.write_text(json.dumps(res, indent=1))
    if "C" in args.only:
        c_task = task if args.c_model == "gmm" else make_task(args.c_model, args.samples)
        key = "C" if args.c_model == "gmm" else f"C:{args.c_model}"
        res[key] = experiment_c(c_task, seeds, args.samples,
                                [int(n) for n in args.nfe.split(",")])
    res["seconds"] = time.perf_counter() - t0
    path.write_text(json.dumps(res, indent=1))
    write_readme(out / "README.md", res)
    plot(out / "correctors.png", res)


if __name__ == "__main__":
    main()

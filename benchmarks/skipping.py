"""Model-call skipping (:mod:`diffsolve.drivers.skipping`): NFE saved vs quality lost.

For every model x base solver x nominal NFE and every seed (the initial noise of seed s is
``sample(..., seed=s)``; the metric's reference data follow the task's per-seed rule):

* ``base``: the solver at the nominal budget;
* ``skip``: the same grid with skipping (policy below); its real calls ``n'`` are counted by
  the model's own NFE counter;
* ``equal``: the solver without skipping at the budget n' actually used (rounded to the
  nearest integer mean over seeds, then the solver's largest grid that fits) -- the honest
  comparison: skipping is only worth having if ``skip`` beats ``equal``.

Quality: the task's primary metric (:mod:`diffsolve.bench.tasks`) and ``ode_error``, the RMS
distance of the samples to a high-NFE reference solve from the same noise (DPM-Solver-3 at
``--ref-nfe``). Each is mean +- 95 % CI over seeds (:func:`diffsolve.bench.stats.mean_ci`),
and "backed" marks a cell where ``skip`` is better than ``equal`` with separated intervals.

Writes OUT/results.json, OUT/table.md and OUT/skipping.png. Usage (about 10 min on 1 core):
    python benchmarks/skipping.py --out docs/bench/skipping
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import diffsolve
from diffsolve.bench.stats import better, mean_ci
from diffsolve.bench.tasks import badness, make_task
from diffsolve.drivers.skipping import SkipPolicy, sample_skipping

MODELS = ("gmm", "gmm-err", "gmm-learned-2d", "moons", "digits")
SAMPLES = {"gmm": 2000, "gmm-err": 2000, "gmm-learned-2d": 2000, "moons": 2000, "digits": 200}


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def run_cell(task: Any, solver: str, nfe: int, seeds: list[int], policy: SkipPolicy,
             ref: dict[int, torch.Tensor], samples: int) -> dict[str, Any]:
    shape = (samples, *task.shape)
    metric = task.primary
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "skip": [], "equal": []}

    def score(x: torch.Tensor, s: int, used: int) -> dict[str, Any]:
        xc = x.clamp(-1, 1) if task.image else x
        return {"nfe": used, metric: float(task.evaluate(xc, s)[metric]),
                "ode_error": rms(x, ref[s])}

    for s in seeds:
        b = diffsolve.sample(task.model, shape, solver=solver, nfe=nfe, seed=s,
                             dtype=task.dtype, progress=False)
        runs["base"].append(score(b.x, s, b.nfe))
        k = sample_skipping(task.model, shape, skip=policy, solver=solver, nfe=nfe, seed=s,
                            dtype=task.dtype, progress=False)
        runs["skip"].append({**score(k.x, s, k.nfe), "nominal": k.nominal_nfe,
                             "skipped_at": [c.index for c in k.calls if c.skipped]})
    used = round(sum(r["nfe"] for r in runs["skip"]) / len(seeds))
    for s in seeds:
        e = diffsolve.sample(task.model, shape, solver=solver, nfe=used, seed=s,
                             dtype=task.dtype, progress=False)
        runs["equal"].append(score(e.x, s, e.nfe))
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        summary[name] = {"nfe": mean_ci([r["nfe"] for r in rs]),
                         metric: mean_ci([r[metric] for r in rs]),
                         "ode_error": mean_ci([r["ode_error"] for r in rs])}
    lower = badness(metric, 1.0) < badness(metric, 2.0)
    verdict = {}
    for m, low in ((metric, lower), ("ode_error", True)):
        verdict[m] = {
            "skip_beats_equal": better(summary["skip"][m], summary["equal"][m], low),
            "equal_beats_skip": better(summary["equal"][m], summary["skip"][m], low),
            "base_beats_skip": better(summary["base"][m], summary["skip"][m], low)}
    return {"solver": solver, "nominal_nfe": nfe, "metric": metric, "runs": runs,
            "summary": summary, "verdict": verdict}


def fmt(c: dict[str, Any] | None) -> str:
    if c is None:
        return "n/a"
    return f"{c['mean']:.4g} ± {c['ci95']:.2g}"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| model | solver | nominal NFE | NFE used (skip) | metric | base @ nominal | "
             "skip | base @ used NFE | ODE err base | ODE err skip | ODE err @ used | "
             "backed? |", "|" + "---|" * 12]
    for r in results:
        s, m = r["summary"], r["metric"]
        v = r["verdict"]
        backed = ("yes" if v["ode_error"]["skip_beats_equal"] and not
                  v[m]["equal_beats_skip"] else "no")
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['nominal_nfe']} | "
            f"{s['skip']['nfe']['mean']:.3g} (eq. run {s['equal']['nfe']['mean']:.3g}) | {m} | "
            f"{fmt(s['base'][m])} | {fmt(s['skip'][m])} | {fmt(s['equal'][m])} | "
            f"{fmt(s['base']['ode_error'])} | {fmt(s['skip']['ode_error'])} | "
            f"{fmt(s['equal']['ode_error'])} | {backed} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results}, key=MODELS.index)
    solvers = list(dict.fromkeys(r["solver"] for r in results))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.4))
    for ax, model in zip(axes if len(models) > 1 else [axes], models, strict=True):
        for r in (r for r in results if r["model"] == model):
            s = r["summary"]
            for name, mk in (("base", "o"), ("skip", "*"), ("equal", "s")):
                c = s[name]["ode_error"]
                first = r["nominal_nfe"] == results[0]["nominal_nfe"] and model == models[0]
                ax.errorbar(s[name]["nfe"]["mean"], c["mean"], yerr=c["ci95"], fmt=mk,
                            color=f"C{solvers.index(r['solver'])}",
                            label=f"{r['solver']} {name}" if first else None, capsize=2)
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("NFE actually used")
    axes[0].set_ylabel("RMS to the reference solve (95 % CI)")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/skipping"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--solvers", default="dpmpp_2m,unipc,heun")
    ap.add_argument("--nfe", default="10,20")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ref-nfe", type=int, default=200)
    ap.add_argument("--samples-scale", type=float, default=1.0)
    ap.add_argument("--replot", action="store_true", help="only redraw OUT/skipping.png")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads((args.out / "results.json").read_text())["results"]
        plot(saved, args.out / "skipping.png")
        return
    policy = SkipPolicy()
    seeds = list(range(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for model in args.models.split(","):
        n = max(16, int(SAMPLES[model] * args.samples_scale))
        task = make_task(model, n, mmd_points=None)
        ref = {s: diffsolve.sample(task.model, (n, *task.shape), solver="dpm_solver_3",
                                   nfe=args.ref_nfe, seed=s, dtype=task.dtype,
                                   progress=False).x for s in seeds}
        for solver in args.solvers.split(","):
            for nfe in (int(v) for v in args.nfe.split(",")):
                r = run_cell(task, solver, nfe, seeds, policy, ref, n)
                r.update(model=model, samples=n)
                results.append(r)
                print(table([r]).splitlines()[-1], flush=True)
    out = {"policy": policy.__dict__, "seeds": seeds, "reference": f"dpm_solver_3 at "
           f"{args.ref_nfe} NFE, same noise", "wall_s": time.perf_counter() - t0,
           "torch": torch.__version__, "results": results}
    (args.out / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / "table.md").write_text(table(results) + "\n")
    plot(results, args.out / "skipping.png")
    print(table(results))


if __name__ == "__main__":
    main()

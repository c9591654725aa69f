"""DC-Solver vs UniPC on the guided digits model (large guidance), with its calibration cost
and the cascade regression's error on a held-out NFE.

Model: the shipped digits U-Net under autoguidance (:mod:`diffsolve.zoo.guided`; no shipped
digits model is class-conditional), w = guidance scale.

1. Calibration (:func:`diffsolve.drivers.dc_solver.calibrate`): ratios searched on 10
   calibration noises (seed 75000) for every w in ``--fit-w`` x NFE in ``--fit-nfe``, CPR fitted
   on them; saved as a ``diffsolve-tuned-v1`` artefact (OUT/dc_digits.json) with its cost.
2. Held-out configurations: the NFE ``--heldout-nfe`` at every fitted w, and the guidance
   scale ``--heldout-w`` at every evaluated NFE (neither in the fit): the ratios searched
   there vs the CPR prediction (RMS over the compensated steps).
3. Quality at ``--eval-w``: UniPC, DC-Solver (searched ratios), DC-Solver (CPR ratios) and
   DPM-Solver++(2M) at every NFE in ``--eval-nfe`` plus the held-out NFE, on ``--samples``
   noises per seed (seeds 0..; disjoint from the calibration noise). Metrics: classifier
   feature FD to the real digits (``feature_fd``), feature FD to the reference samples
   (``fd_ref``: the same noises solved with DPM-Solver++(3M) at ``--ref-nfe``) and the RMS
   distance to those reference samples (``rms_ref``, the paper's MSE is its square); each mean
   +- 95 % CI over seeds.

Writes OUT/results.json, OUT/table.md, OUT/dc_solver.png. Usage (about 15 min on one core):
    python benchmarks/dc_solver.py --out docs/bench/dc_solver
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

import diffsolve
from diffsolve.bench.digits_metrics import DigitsScorer
from diffsolve.bench.metrics import feature_frechet_distance
from diffsolve.bench.stats import better, mean_ci
from diffsolve.core.grids import make_grid
from diffsolve.drivers.dc_solver import calibrate, predict_ratios, search_ratios
from diffsolve.drivers.loop import initial_noise
from diffsolve.zoo.guided import autoguided_digits

SHAPE = (1, 8, 8)


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",")]


def floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",")]


def fmt(c: dict[str, Any] | None) -> str:
    return "n/a" if c is None else f"{c['mean']:.4g} ± {c['ci95']:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/dc_solver"))
    ap.add_argument("--fit-w", type=floats, default=[2.0, 3.0, 4.0])
    ap.add_argument("--fit-nfe", type=ints, default=[5, 6, 10, 12])
    ap.add_argument("--heldout-nfe", type=int, default=8)
    ap.add_argument("--heldout-w", type=float, default=3.5,
                    help="a guidance scale not in the fit: CPR error at it (every NFE)")
    ap.add_argument("--eval-w", type=float, default=3.0)
    ap.add_argument("--eval-nfe", type=ints, default=[5, 10])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ref-nfe", type=int, default=100)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    models = {w: autoguided_digits(w)
              for w in sorted({*args.fit_w, args.eval_w, args.heldout_w})}
    fit_models = {w: models[w] for w in args.fit_w}

    # 1. calibration ------------------------------------------------------------------------
    art = calibrate(fit_models, SHAPE, args.fit_nfe, name="digits+autoguidance", log=print)
    art.save(args.out / "dc_digits.json")
    cal = art.calibration
    cost = {"nfe": cal["nfe"], "seconds": cal["seconds"], "configurations": len(art.entries),
            "per_configuration": [{"w": e.scores["guidance"], "nfe": e.nfe,
                                   "search_nfe": e.search["nfe"],
                                   "seconds": e.search["seconds"]} for e in art.entries]}
    coeffs = cal["cpr"]["coefficients"]
    dc = diffsolve.get_solver("dc_solver")

    def searched(w: float, nfe: int) -> list[float]:
        for e in art.entries:
            if e.nfe == nfe and e.scores["guidance"] == w:
                return list(e.solver_options["dc_ratios"])
        steps = dc.steps_for_nfe(nfe)
        g = make_grid("karras", steps, models[w].schedule)
        noise = initial_noise((10, *SHAPE), seed=cal["seed"])
        return search_ratios(models[w], noise, g).ratios

    # 2. CPR on the held-out NFE ---------------------------------------------------------------
    cpr_eval = []
    held = [(w, args.heldout_nfe) for w in args.fit_w]
    held += [(args.heldout_w, n) for n in sorted({*args.eval_nfe, args.heldout_nfe})]
    for w, n in held:
        steps = dc.steps_for_nfe(n) - 1
        got = searched(w, n)
        pred = predict_ratios(coeffs, w, n, steps)
        err = [p - g for p, g in zip(pred, got, strict=True)][2:]
        cpr_eval.append({"w": w, "nfe": n, "searched": got, "predicted": pred,
                         "rms_error": math.sqrt(sum(e * e for e in err) / len(err)),
                         "max_error": max(abs(e) for e in err)})
        print(f"CPR held-out (w={w}, NFE {n}): rms ratio error "
              f"{cpr_eval[-1]['rms_error']:.3f}")

    # 3. quality at eval-w ----------------------------------------------------------------------
    scorer = DigitsScorer()
    model = models[args.eval_w]
    nfes = sorted({*args.eval_nfe, args.heldout_nfe})
    ratios = {n: searched(args.eval_w, n) for n in nfes}
    runs: dict[str, list[dict[str, float]]] = {}
    for seed in range(args.seeds):
        noise = initial_noise((args.samples, *SHAPE), seed=seed)
        ref = diffsolve.sample(model, noise, solver="dpmpp_3m", nfe=args.ref_nfe,
                               progress=False).x
        runs.setdefault(f"reference@{args.ref_nfe}", []).append(
            {"feature_fd": scorer.evaluate(ref)["feature_fd"]})
        for n in nfes:
            steps = dc.steps_for_nfe(n) - 1
            cells = {"unipc": ("unipc", {}), "dc_solver": ("dc_solver", {"dc_ratios": ratios[n]}),
                     "dc_solver_cpr": ("dc_solver", {"dc_ratios": predict_ratios(
                         coeffs, args.eval_w, n, steps)}),
                     "dpmpp_2m": ("dpmpp_2m", {})}
            for label, (solver, opts) in cells.items():
                out = diffsolve.sample(model, noise, solver=solver, nfe=n, progress=False,
                                       **opts)
                x = out.x.clamp(-1, 1)
                runs.setdefault(f"{label}@{n}", []).append({
                    "nfe": out.nfe, "feature_fd": scorer.evaluate(x)["feature_fd"],
                    "fd_ref": feature_frechet_distance(x, ref.clamp(-1, 1),
                                                       scorer.clf.features),
                    "rms_ref": float((out.x - ref).square().mean().sqrt())})
        print(f"seed {seed} done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    summary = {k: {m: mean_ci([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    wins = {}
    for n in nfes:
        a, b = summary[f"dc_solver@{n}"], summary[f"unipc@{n}"]
        wins[str(n)] = {m: {"dc_beats_unipc": better(a[m], b[m], True),
                            "unipc_beats_dc": better(b[m], a[m], True)}
                        for m in ("feature_fd", "fd_ref", "rms_ref")}
    result = {"model": f"digits, autoguidance w={args.eval_w} (main digits over "
                       "hier_digits_w8)", "samples": args.samples, "seeds": args.seeds,
              "reference": f"dpmpp_3m at {args.ref_nfe} NFE, same noise",
              "calibration_cost": cost, "cpr_heldout": cpr_eval, "ratios": ratios,
              "summary": summary, "wins": wins, "wall_s": time.perf_counter() - t_start,
              "torch": torch.__version__}
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"Guided digits (autoguidance w = {args.eval_w}), {args.samples} samples x "
             f"{args.seeds} seeds, mean ± 95 % CI.", "",
             "| solver | NFE | feature FD (data) | feature FD (reference) | RMS to reference |",
             "|---|---|---|---|---|"]
    for k, v in summary.items():
        label, n = k.split("@")
        if label.startswith("reference"):
            lines.append(f"| {label} | {n} | {fmt(v['feature_fd'])} | 0 | 0 |")
            continue
        lines.append(f"| {label} | {n} | {fmt(v['feature_fd'])} | {fmt(v['fd_ref'])} | "
                     f"{fmt(v['rms_ref'])} |")
    lines += ["", f"Calibration: {cost['nfe']} NFE, {cost['seconds']:.1f} s in total for "
              f"{cost['configurations']} (w, NFE) configurations on 10 noises.", "",
              "CPR on configurations not in its fit (ratios over the compensated steps):", "",
              "| w | NFE | CPR ratio RMS error | max error |", "|---|---|---|---|"]
    lines += [f"| {c['w']} | {c['nfe']} | {c['rms_error']:.3f} | {c['max_error']:.3f} |"
              for c in cpr_eval]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    plot(summary, nfes, args.out / "dc_solver.png")
    print("\n".join(lines))


def plot(summary: dict[str, Any], nfes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, metric in zip(axes, ("rms_ref", "feature_fd"), strict=True):
        for i, label in enumerate(("unipc", "dc_solver", "dc_solver_cpr", "dpmpp_2m")):
            pts = [summary[f"{label}@{n}"][metric] for n in nfes]
            ax.errorbar([n + 0.1 * (i - 1.5) for n in nfes], [p["mean"] for p in pts],
                        yerr=[p["ci95"] for p in pts], fmt="o-", capsize=2, label=label)
        ax.set_xlabel("NFE")
        ax.set_title(metric)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

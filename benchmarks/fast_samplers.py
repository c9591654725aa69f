"""Fast samplers at 5, 10 and 20 NFE: every registered ODE solver (Karras grid), DPM-Solver-v3
with empirical model statistics computed on each model, and searched time grids, against the
baseline DPM-Solver++(3M) on the Karras grid.

Models (from diffsolve.bench.runner.make_task): "gmm-err" (the 2-D mixture with a smooth
denoiser error; exact-moment Frechet distance "fd") and "digits" (the shipped 8x8 U-Net;
classifier-feature Frechet distance "feature_fd"). Every cell also gets "ode_error": the RMS
distance to a DPM-Solver-3 reference solution from the same initial noise.

Resumable: results.json is rewritten after every cell; cells already present with the same
setup are reused, so re-running later fills in solvers registered since (``--fresh`` redoes
the cells but keeps the cached EMS, searched grids and references). Calibration (EMS and grid
search) uses noise seeds disjoint from the evaluation noise; its cost is recorded.

Every cell is run for each evaluation seed (``--seeds``, default 0,1,2: initial and
evaluation noise); tables show mean +- the 95 % Student-t half-width over the seeds, a row
"beats" the baseline only where the two intervals separate, and the ratio to the baseline is
also given paired (per seed, same noise). Calibration (EMS, searched grids) is done once per
model on its own noise and shared by the seeds, so the intervals are evaluation noise only.

Usage (1 core):
    OMP_NUM_THREADS=1 python benchmarks/fast_samplers.py --out docs/bench/fast_samplers \
        [--models gmm-err,digits] [--nfe 5,10,20] [--seeds 0,1,2] [--digits-samples 500]
        [--fresh]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffsolve import initial_noise, sample
from diffsolve.bench.cells import ode_reference
from diffsolve.bench.metrics import ode_error
from diffsolve.bench.stats import better, mean_ci
from diffsolve.bench.store import environment, write_json_atomic
from diffsolve.bench.store import now as _now
from diffsolve.bench.tasks import make_task
from diffsolve.grid_search import SearchedGrid, reference_endpoints, search_grid
from diffsolve.noise import NOISE_STREAM_VERSION
from diffsolve.solvers import get_solver, list_solvers, solver_class
from diffsolve.tools.v3_calibration import EMS, compute_statistics

FORMAT = "diffsolve-bench-v1"


def load_results(path: Path) -> dict[str, Any]:
    """This benchmark's results.json (its own format), or {} if absent."""
    import json

    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise SystemExit(f"{path} is not a {FORMAT} results file")
    return data
BASELINE = "dpmpp_3m"
CALIB_SEED = 50_000
SETTINGS = {
    # samples, reference NFE, EMS (points, calibration samples), search (samples, max evals)
    "gmm-err": {"samples": 10000, "reference_nfe": 301, "ems_points": 250, "ems_samples": 256,
                "search_samples": 64, "search_evals": 150, "searched": [BASELINE, "unipc",
                                                                        "dpm_solver_v3"]},
    "digits": {"samples": 500, "reference_nfe": 151, "ems_points": 120, "ems_samples": 128,
               "search_samples": 32, "search_evals": 50, "searched": [BASELINE,
                                                                       "dpm_solver_v3"]},
}


@dataclass
class Variant:
    """A benchmark row: a solver with options on a grid (a name or "searched")."""

    label: str
    solver: str
    grid: str = "karras"
    ems: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def variants(model_name: str) -> list[Variant]:
    rows = [Variant(n, n) for n in list_solvers() if not get_solver(n).stochastic]
    rows.append(Variant("dpm_solver_v3+ems", "dpm_solver_v3", ems=True))
    rows.append(Variant("dpm_solver_v3+ems(pseudo)", "dpm_solver_v3", ems=True,
                        options={"pseudo": True}))
    rows.append(Variant("dpm_solver_v3+ems@uniform_lambda", "dpm_solver_v3", "uniform_lambda",
                        ems=True))
    for name in SETTINGS[model_name]["searched"]:
        if name in list_solvers():
            ems = name == "dpm_solver_v3"
            rows.append(Variant(f"{name}{'+ems' if ems else ''}@searched", name, "searched",
                                ems=ems))
    return rows


def code_hash(variant: Variant) -> str:
    """Hash of the source files a variant's results depend on (a changed solver is re-run)."""
    import diffsolve.solvers.engines.model_statistics as v3_statistics
    import diffsolve.tools.grid_search as grid_search

    mods = [inspect.getmodule(solver_class(variant.solver))]
    if variant.ems:
        mods.append(v3_statistics)
    if variant.grid == "searched":
        mods.append(grid_search)
    h = hashlib.sha1()
    for m in mods:
        h.update(inspect.getsource(m).encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# calibration artefacts (cached in OUT)


def ems_for(task, out: Path, cfg: dict[str, Any]) -> Path:
    path = out / f"ems_{task.name}.safetensors"
    if not path.exists():
        noise = initial_noise((cfg["ems_samples"], *task.shape), seed=CALIB_SEED,
                              dtype=task.dtype)
        t0 = time.perf_counter()
        ems = compute_statistics(task.model, noise, points=cfg["ems_points"])
        ems.info["seconds"] = time.perf_counter() - t0
        ems.save(path)
    return path


def searched_for(task, variant: Variant, nfe: int, out: Path, cfg: dict[str, Any],
                 ems_path: Path | None, cache: dict[str, Any]) -> SearchedGrid:
    gdir = out / "grids"
    gdir.mkdir(exist_ok=True)
    path = gdir / f"{task.name}_{variant.label.replace('@', '_')}_nfe{nfe}.json"
    if path.exists():
        return SearchedGrid.load(path)
    noise = initial_noise((cfg["search_samples"], *task.shape), seed=CALIB_SEED + 1,
                          dtype=task.dtype)
    if "ref" not in cache:
        cache["ref"] = reference_endpoints(task.model, noise, nfe=cfg["reference_nfe"])
    ref, ref_nfe = cache["ref"]
    options = dict(variant.options)
    if ems_path is not None:
        options["statistics"] = str(ems_path)
    t0 = time.perf_counter()
    sg = search_grid(task.model, variant.solver, nfe, noise, reference=ref,
                     solver_options=options, max_evals=cfg["search_evals"])
    sg.calibration["reference_nfe"] = ref_nfe  # shared by every search of this model
    sg.calibration["total_nfe"] = sg.calibration["search_nfe"] + ref_nfe
    sg.calibration["seconds"] = time.perf_counter() - t0
    sg.save(path)
    return sg


# ---------------------------------------------------------------------------------------------
# cells


def run_cell(task, variant: Variant, nfe: int, samples: int, seed: int, out: Path,
             cfg: dict[str, Any], reference, cache: dict[str, Any]) -> dict[str, Any]:
    cell: dict[str, Any] = {"model": task.name, "variant": variant.label,
                            "solver": variant.solver, "grid": variant.grid, "nfe": nfe,
                            "samples": samples, "seed": seed, "options": variant.options}
    options = dict(variant.options)
    calibration: dict[str, Any] = {}
    ems_path = None
    if variant.ems:
        ems_path = ems_for(task, out, cfg)
        options["statistics"] = str(ems_path)
        info = EMS.load(ems_path).info
        calibration["ems_nfe"] = info["nfe"]
        calibration["ems_samples"] = info["samples"]
    kwargs: dict[str, Any]
    if variant.grid == "searched":
        sg = searched_for(task, variant, nfe, out, cfg, ems_path, cache)
        kwargs = {"grid": sg.grid}
        calibration["search"] = sg.calibration
        cell["sigmas"] = sg.sigmas
    else:
        kwargs = {"grid": variant.grid, "nfe": nfe}
    cell["calibration"] = calibration
    try:
        get_solver(variant.solver, **options)
        t0 = time.perf_counter()
        with torch.no_grad():
            res = sample(task.model, (samples, *task.shape), solver=variant.solver, seed=seed,
                         dtype=task.dtype, progress=False, **kwargs, **options)
        seconds = time.perf_counter() - t0
    except Exception as e:  # recorded; a broken solver must not stop the run
        return {**cell, "status": "error", "reason": f"{type(e).__name__}: {e}",
                "computed_at": _now()}
    metrics = task.evaluate(res.x, seed)
    metrics["ode_error"] = ode_error(res.x, reference())
    return {**cell, "status": "ok", "nfe_used": int(res.nfe), "steps": int(res.grid.steps),
            "seconds": seconds, "metrics": metrics, "computed_at": _now()}


def run_model(model_name: str, nfes: list[int], out: Path, results: dict[str, Any],
              path: Path, seeds: list[int], fresh: bool, samples: int | None) -> None:
    cfg = dict(SETTINGS[model_name])
    if samples is not None:
        cfg["samples"] = samples
    n = cfg["samples"]
    task = make_task(model_name, n)
    setup = {"reference_nfe": cfg["reference_nfe"], "dtype": str(task.dtype), **task.setup}
    old_info = results.setdefault("models", {}).get(model_name, {})
    info = {"primary_metric": task.primary, "metrics": list(task.metrics), "samples": n,
            "settings": cfg, "setup": setup,
            "baseline_data": {str(s): task.floor(s) for s in seeds},
            "references": {k: v for k, v in old_info.get("references", {}).items()
                           if int(k) in seeds}}
    if "reference" in old_info:  # results written before the seed loop: seed 0's reference
        info["references"].setdefault(str(old_info["reference"].get("seed", 0)),
                                      old_info["reference"])
    results["models"][model_name] = info
    cells = results.setdefault("cells", {})
    cache: dict[str, Any] = {}
    for seed in seeds:
        run_seed(task, model_name, nfes, out, results, path, seed, fresh, cfg, cells, cache)


def run_seed(task, model_name: str, nfes: list[int], out: Path, results: dict[str, Any],
             path: Path, seed: int, fresh: bool, cfg: dict[str, Any], cells: dict[str, Any],
             cache: dict[str, Any]) -> None:
    """Every variant x budget of one model for one evaluation seed (cached cells skipped)."""
    n = cfg["samples"]
    setup = results["models"][model_name]["setup"]
    ref_cache: dict[str, Any] = {}

    def reference():
        if "x" not in ref_cache:
            ref_cache["x"], info = ode_reference(task, n, seed, "karras", "cpu",
                                                 cfg["reference_nfe"], out)
            results["models"][model_name]["references"][str(seed)] = info
        return ref_cache["x"]

    for nfe in nfes:
        for v in variants(model_name):
            key = f"{model_name}|{v.label}|nfe={nfe}|n={n}|seed={seed}"
            old = cells.get(key)
            code = code_hash(v)
            if (not fresh and old is not None and old.get("status") == "ok"
                    and old.get("setup") == setup and old.get("code") == code):
                continue
            t0 = time.perf_counter()
            cell = run_cell(task, v, nfe, n, seed, out, cfg, reference, cache)
            cell["setup"] = setup
            cell["code"] = code
            cells[key] = cell
            write_json_atomic(path, results)
            m = cell.get("metrics", {})
            print(f"{model_name:8s} {v.label:34s} {nfe:3d} NFE seed {seed} {cell['status']:5s} "
                  f"{task.primary}={m.get(task.primary, float('nan')):.4g} "
                  f"ode_err={m.get('ode_error', float('nan')):.4g} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)


# ---------------------------------------------------------------------------------------------
# report


def report_seeds(results: dict[str, Any]) -> list[int]:
    """The seeds a report covers: those requested (``results["seeds"]``) that have cells."""
    present = {c["seed"] for c in results.get("cells", {}).values()}
    return [s for s in results.get("seeds", [0]) if s in present]


def seed_values(results: dict[str, Any], model: str, metric: str,
                nfes: list[int]) -> dict[str, dict[int, dict[int, float | None]]]:
    """{variant: {nfe: {seed: value}}} of one model's cells (None where a cell failed), over
    the seeds this report covers (``results["seeds"]``)."""
    info = results["models"][model]
    seeds = set(report_seeds(results))
    rows: dict[str, dict[int, dict[int, float | None]]] = {}
    for c in results["cells"].values():
        if (c["model"] != model or c["samples"] != info["samples"] or c["nfe"] not in nfes
                or c["seed"] not in seeds):
            continue
        val = c["metrics"].get(metric) if c.get("status") == "ok" else None
        rows.setdefault(c["variant"], {}).setdefault(c["nfe"], {})[c["seed"]] = val
    return rows


def table(results: dict[str, Any], model: str, metric: str,
          nfes: list[int]) -> list[list[Any]]:
    """Rows [variant, mean_ci at each budget] (None where no seed has a finite value)."""
    rows = seed_values(results, model, metric, nfes)
    return [[label, *[mean_ci(list(by_nfe.get(n, {}).values())) for n in nfes]]
            for label, by_nfe in rows.items()]


def paired_ratio(rows: dict[str, dict[int, dict[int, float | None]]], label: str,
                 nfe: int) -> dict[str, Any] | None:
    """Per-seed ratio of a variant to the baseline on the same noise, mean +- 95 % CI."""
    mine, base = rows.get(label, {}).get(nfe, {}), rows.get(BASELINE, {}).get(nfe, {})
    return mean_ci([mine[k] / base[k] for k in mine
                    if mine[k] is not None and base.get(k)])


def _geomean(row: list[Any]) -> tuple[bool, float]:
    """Sort key: rows with every budget first, by the geometric mean of the means."""
    vals = [v["mean"] for v in row[1:] if v is not None and v["mean"] > 0]
    if not vals:
        return (True, 0.0)
    return (len(vals) < len(row) - 1, sum(math.log(v) for v in vals) / len(vals))


def _num(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "-"


def _fmt(v: dict[str, Any] | None, base: dict[str, Any] | None = None) -> str:
    """mean ± half-width; a trailing "✓" / "✗" where the interval separates from the
    baseline's on the better / worse side."""
    if v is None:
        return "-"
    text = _num(v["mean"]) if v["n"] < 2 else f"{_num(v['mean'])} ± {_num(v['ci95'])}"
    if base is not None and v is not base:
        if better(v, base, lower_is_better=True):
            text += " ✓"
        elif better(base, v, lower_is_better=True):
            text += " ✗"
    return text


def floors_by_seed(info: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The real-data floor per seed (files written before the seed loop hold seed 0's)."""
    data = info.get("baseline_data", {})
    if all(k.isdigit() for k in data):
        return {int(k): v for k, v in data.items()}
    return {0: data}


def _fmt_ratio(r: dict[str, Any] | None) -> str:
    """A paired ratio, marked "✓" / "✗" where its interval lies wholly below / above 1."""
    text = _fmt(r)
    if r is not None and r["n"] >= 2:
        text += " ✓" if r["hi"] < 1 else " ✗" if r["lo"] > 1 else ""
    return text


def write_report(results: dict[str, Any], out: Path, nfes: list[int]) -> None:
    seeds = report_seeds(results)
    lines = ["# Fast samplers at 5 / 10 / 20 NFE", "",
             "Generated by `benchmarks/fast_samplers.py` (resumable; re-run to add solvers "
             "registered later). Rows: every registered ODE solver on the Karras grid "
             "(rho = 7), DPM-Solver-v3 with empirical model statistics (EMS) estimated on "
             "the model itself (`+ems`; docs/dpm_solver_v3.md), and grids searched for a "
             "solver on calibration noise (`@searched`; docs/grid_search.md). Baseline: "
             "`dpmpp_3m` (DPM-Solver++(3M), Karras grid). Lower is better everywhere. "
             "Evaluation noise is disjoint from the calibration noise. NFE counts the "
             "sampling run only; the one-off calibration cost (EMS, grid search) is listed "
             "under each model.", "",
             f"**{len(seeds)} evaluation seeds** ({', '.join(map(str, seeds))}; noise streams "
             f"v{results.get('noise_stream_version', '?')}): each cell is mean ± the 95 % "
             "Student-t half-width over the seeds (initial noise and metric draws seeded). "
             "`✓` / `✗`: the interval separates from the baseline's on the better / worse "
             "side (a win / loss); a cell without a mark is not told apart from the "
             "baseline. Calibration (EMS, searched grids) is done once per model and shared "
             "by the seeds, so the intervals are evaluation noise, not calibration noise. "
             "The paired table divides each variant by the baseline on the same seed (✓ / ✗: "
             "the ratio's interval lies wholly below / above 1).", ""]
    if len(seeds) < 2:
        lines += ["**Fewer than 2 seeds: no intervals, so no cell is marked a win or a "
                  "loss.**", ""]
    for model, info in results.get("models", {}).items():
        primary = info["primary_metric"]
        lines += [f"## {model} ({info['samples']} samples per seed)", ""]
        by_seed = info.get("references") or (
            {str(info["reference"].get("seed", 0)): info["reference"]} if "reference" in info
            else {})
        refs = [r for k, r in by_seed.items() if int(k) in seeds]
        checks = [r.get("check_rms", math.nan) for r in refs]
        if refs:
            worst = max((c for c in checks if math.isfinite(c)), default=math.nan)
            lines.append(f"ode_error reference: {refs[0].get('solver')} at "
                         f"{refs[0].get('nfe')} NFE from each seed's noise (its own RMS error "
                         f"estimate ≤ {worst:.2g}).")
        floor = mean_ci([d.get(primary) for k, d in floors_by_seed(info).items()
                         if k in seeds and isinstance(d.get(primary), (int, float))])
        if floor is not None:
            lines.append(f"{primary} of a second draw of real data (the floor): "
                         f"{_fmt(floor)}.")
        lines.append("")
        for metric in (primary, "ode_error"):
            rows = table(results, model, metric, nfes)
            rows.sort(key=_geomean)
            base = next((r for r in rows if r[0] == BASELINE), None)
            head = "| variant | " + " | ".join(f"{n} NFE" for n in nfes) + " |"
            lines += [f"### {metric} (sorted by the geometric mean over the budgets)", "",
                      head, "|---|" + "---:|" * len(nfes)]
            for r in rows:
                label = f"**{r[0]}**" if r[0] == BASELINE else r[0]
                cells = [_fmt(v, None if base is None else base[i + 1])
                         for i, v in enumerate(r[1:])]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += ["### Against the baseline, paired (per-seed ratio to dpmpp_3m on the Karras "
                  "grid; < 1 is better)", "",
                  "| variant | metric | " + " | ".join(f"{n} NFE" for n in nfes) + " |",
                  "|---|---|" + "---:|" * len(nfes)]
        for metric in (primary, "ode_error"):
            rows_s = seed_values(results, model, metric, nfes)
            for label in rows_s:
                if "+ems" in label or "@searched" in label:
                    lines.append(f"| {label} | {metric} | " + " | ".join(
                        _fmt_ratio(paired_ratio(rows_s, label, n)) for n in nfes) + " |")
        lines.append("")
        lines += [*verdict(results, model, nfes), ""]
        costs = calibration_costs(results, model)
        if costs:
            lines += ["Calibration cost (batched model calls; x samples = per-sample "
                      "evaluations):", ""] + [f"* {c}" for c in costs] + [""]
    lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in
                                         results.get("versions", {}).items()), ""]
    (out / "README.md").write_text("\n".join(lines))


def verdict(results: dict[str, Any], model: str, nfes: list[int]) -> list[str]:
    """Which variants beat / lose to the baseline with separated intervals, per budget."""
    primary = results["models"][model]["primary_metric"]
    out = ["Verdict (variants whose interval separates from dpmpp_3m's on the Karras grid):",
           ""]
    for metric in (primary, "ode_error"):
        rows = table(results, model, metric, nfes)
        base = next((r for r in rows if r[0] == BASELINE), None)
        if base is None:
            continue
        for i, n in enumerate(nfes):
            wins = sorted((r[1 + i]["mean"], r[0]) for r in rows
                          if r[0] != BASELINE and better(r[1 + i], base[1 + i], True))
            if base[1 + i] is None or base[1 + i]["n"] < 2:
                out.append(f"* {metric}, {n} NFE: the baseline has fewer than 2 seeds here; "
                           "no comparison.")
                continue
            losses = sum(better(base[1 + i], r[1 + i], True) for r in rows
                         if r[1 + i] is not None)
            missing = sum(r[1 + i] is None for r in rows)
            ties = len(rows) - 1 - len(wins) - losses - missing
            named = ", ".join(f"`{label}`" for _, label in wins) or "none"
            out.append(f"* {metric}, {n} NFE: better than the baseline: {named}; "
                       f"{ties} not told apart; {losses} worse"
                       + (f"; {missing} failed or missing." if missing else "."))
    return out


def calibration_costs(results: dict[str, Any], model: str) -> list[str]:
    seen: dict[str, str] = {}
    for c in results["cells"].values():
        if c["model"] != model or c.get("status") != "ok":
            continue
        cal = c.get("calibration", {})
        if "ems_nfe" in cal and "ems" not in seen:
            seen["ems"] = (f"EMS: {cal['ems_nfe']} NFE on {cal['ems_samples']} calibration "
                           f"samples")
        if "search" in cal:
            s = cal["search"]
            seen[f"{c['variant']}{c['nfe']}"] = (
                f"{c['variant']} at {c['nfe']} NFE: {s['evaluations']} grid evaluations = "
                f"{s['search_nfe']} NFE on {s['samples']} samples (+ {s['reference_nfe']} NFE "
                "shared reference)")
    return list(seen.values())


def plot(results: dict[str, Any], out: Path, nfes: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = list(results.get("models", {}))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for col, metric in enumerate((results["models"][model]["primary_metric"], "ode_error")):
            ax = axes[row][col]
            for r in table(results, model, metric, nfes):
                pts = [(n, v) for n, v in zip(nfes, r[1:], strict=True)
                       if v is not None and v["mean"] > 0]
                if not pts:
                    continue
                label = r[0]
                if label == BASELINE:
                    style = {"color": "k", "lw": 2.5, "zorder": 5}
                elif "@searched" in label:
                    style = {"lw": 2, "ls": "--", "zorder": 4}
                elif "+ems" in label:
                    style = {"lw": 2, "zorder": 4}
                else:
                    style = {"color": "0.7", "lw": 0.8}
                xs = [n for n, _ in pts]
                ys = [v["mean"] for _, v in pts]
                highlighted = style.get("lw", 1) > 1
                # error bars (95 % CI, clipped at the axis floor) on the highlighted rows only
                err = None
                if highlighted:
                    up = [v["ci95"] if v["n"] >= 2 and math.isfinite(v["ci95"]) else 0.0
                          for _, v in pts]
                    err = [[min(u, 0.95 * v["mean"]) for u, (_, v) in zip(up, pts, strict=True)],
                           up]
                ax.errorbar(xs, ys, yerr=err, marker="o", ms=3, capsize=2,
                            label=label if highlighted else None, **style)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(nfes)
            ax.set_xticklabels([str(n) for n in nfes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("NFE")
            ax.set_title(f"{model}: {metric}, mean ± 95 % CI over "
                         f"{len(results.get('seeds', [0]))} seeds (grey: other ODE solvers)",
                         fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fast_samplers.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/bench/fast_samplers")
    parser.add_argument("--models", default="gmm-err,digits")
    parser.add_argument("--nfe", default="5,10,20")
    parser.add_argument("--seeds", default="0,1,2",
                        help="evaluation seeds (comma-separated); each cell runs once per seed")
    parser.add_argument("--digits-samples", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="recompute every cell")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    nfes = [int(v) for v in args.nfe.split(",")]
    results = load_results(path)
    versions, hardware = environment()
    results.update({"format": FORMAT, "kind": "fast_samplers", "versions": versions,
                    "hardware": hardware, "baseline": BASELINE, "nfe": nfes,
                    "noise_stream_version": NOISE_STREAM_VERSION, "updated_at": _now(),
                    "seeds": [int(v) for v in args.seeds.split(",")]})
    if not args.report_only:
        for m in args.models.split(","):
            samples = args.digits_samples if m == "digits" else None
            run_model(m, nfes, out, results, path, results["seeds"], args.fresh, samples)
    write_json_atomic(path, results)
    write_report(results, out, nfes)
    plot(results, out, nfes)


if __name__ == "__main__":
    main()


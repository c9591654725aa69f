r"""Benchmark harness: every solver x NFE budget x seed on one model, resumable, with a report.

:func:`run_benchmark` samples a model (:mod:`.tasks`) with every solver at every NFE budget
(a *cell*) for ``n_seeds`` seeds (>= 3 by default: seeded initial and SDE noise), scores the
samples (:mod:`.cells`), and writes ``OUT/results.json`` after every cell run (atomically,
:mod:`.store`). Runs already in ``results.json`` with the same key (model, solver, NFE,
samples, seed) and setup are reused, so an interrupted run resumes where it stopped. At the
end it aggregates every cell over its seeds (mean ± 95 % CI, :mod:`.summary`), writes
``report.md`` (:mod:`.report`), ``metric_vs_nfe.png`` and, for image models,
``samples_<solver>.png`` (:mod:`.plots`).

Every model also gets ``ode_error`` for deterministic solvers: the RMS difference to a
reference solution from the same initial noise (DPM-Solver-3 at ``reference_nfe``
evaluations, per seed, cached in OUT). Its solve time, the floor's and the scoring time are
counted in the report's total. The floor (``results["floor"]``) scores exact / held-out real
data of the same size per seed with the same metrics.

Cells that fail (the solver raised, or non-finite samples) are returned in ``failures`` and
:func:`failure_message` turns them into the reason line that ``diffsolve bench`` prints before
exiting non-zero.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from ..core.errors import DiffsolveError
from ..drivers.tuned import load_tuned
from ..solvers import list_solvers
from .cells import DEFAULT_REFERENCE_NFE, TUNED_ROW, ode_reference, run_cell
from .plots import plot_metric_vs_nfe, write_sample_grids
from .report import write_report
from .solver_spec import build
from .stats import mean_ci
from .store import FORMAT, cell_key, environment, load_results, now, write_json_atomic
from .summary import aggregate, summarize
from .tasks import (
    BASELINE_SEED_OFFSET,
    DEFAULT_SAMPLES,
    MMD_POINTS,
    MODELS,
    REF_DATA_SEED_OFFSET,
    make_task,
)

DEFAULT_SEEDS = 3
DEFAULT_NFES: tuple[int, ...] = (5, 10, 20, 50, 100)

__all__ = ["DEFAULT_NFES", "DEFAULT_SAMPLES", "DEFAULT_SEEDS", "MODELS", "cell_key",
           "failure_message", "run_benchmark", "summarize"]


def _resolve_solvers(solvers: str | Sequence[str]) -> list[str]:
    if isinstance(solvers, str):
        solvers = list_solvers() if solvers == "all" else [s for s in solvers.split(",") if s]
    names = list(dict.fromkeys(solvers))
    if not names:
        raise DiffsolveError("no solvers given")
    for name in names:
        if name != TUNED_ROW:
            build(name)  # raises with suggestions for an unknown name or option
    return names


def failure_message(res: dict[str, Any]) -> str | None:
    """One line per failed cell run (``error``: the solver raised; ``failed``: non-finite
    samples) for ``diffsolve bench`` to print before exiting non-zero; None if none failed."""
    fails = res.get("failures") or []
    if not fails:
        return None
    head = f"diffsolve bench: {len(fails)} of {res['runs']} cell runs failed:"
    return "\n".join([head, *(f"  {f['key']}: {f['status']}: {f['reason']}" for f in fails)])


def run_benchmark(model_name: str, solvers: str | Sequence[str], nfes: Sequence[int],
                  samples: int, seed: int, out_dir: str | os.PathLike[str],
                  progress: bool = True, *, grid: str = "karras", device: str = "cpu",
                  reference_nfe: int | None = DEFAULT_REFERENCE_NFE,
                  grid_nfe: int | None = None, n_seeds: int = DEFAULT_SEEDS,
                  mmd_points: int | None = MMD_POINTS, tuned: str | None = None,
                  on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Benchmark ``solvers`` x ``nfes`` x seeds on ``model_name``; write results, report, plots.

    Args:
        model_name: one of :data:`MODELS`.
        solvers: solver specs (names, or ``name[key=value;...]``, :mod:`.solver_spec`), a
            comma-separated string of them, or "all" (every registered solver).
        nfes: NFE budgets; a solver runs with ``diffsolve.sample(..., nfe=budget)``; the
            evaluations it really used (the model's counter) are stored as ``nfe_used``.
            Budgets below a solver's minimum are recorded as skipped with the reason.
        samples: samples per cell and seed.
        seed: first sampling seed; the cells run with seeds seed, ..., seed + n_seeds - 1.
        out_dir: folder of results.json, report.md and the PNGs; created if needed. Runs
            already in its results.json are reused.
        progress: show a tqdm bar over the cell runs.
        grid: time-step grid name.
        device: where to sample (metrics run on the CPU).
        reference_nfe: budget of the DPM-Solver-3 reference for ``ode_error``; None skips it.
        grid_nfe: budget of the sample grids of image models (default 20 if run, else the
            middle budget).
        n_seeds: seeds per cell (>= 1; 3 or more for meaningful intervals).
        mmd_points: rows per set of the mixture models' MMD (None: skip the MMD, the
            costliest metric, e.g. for long NFE sweeps).
        tuned: a tuned artefact (``diffsolve tune``; a path or a shipped model name): adds the
            row ``tuned`` (the artefact's solver, options and grid at each of its budgets;
            budgets it lacks are skipped) next to the solvers on ``grid``.
        on_cell: called with every newly computed cell run after results.json is written.

    Returns:
        dict with the paths written, the numbers of computed and reused runs, ``runs`` (their
        total), ``failures`` (key, status, reason of every failed run) and the summary (also
        stored in results.json).

    Raises:
        DiffsolveError: bad arguments, an unknown model, or an unreadable results file.
    """
    if model_name not in MODELS:
        raise DiffsolveError(f"unknown benchmark model {model_name!r}; choose from "
                             f"{list(MODELS)}")
    names = _resolve_solvers(solvers)
    tuned_id: dict[str, Any] | None = None
    if tuned is not None:
        art = load_tuned(tuned)  # a bad file fails here, before anything is computed
        tuned_id = {"budgets": art.budgets,
                    "weights_sha256": art.model.get("weights_sha256"),
                    "entries": [[e.nfe, e.solver, list(e.sigmas)]
                                for e in (art.entry(n) for n in art.budgets)]}
        names = [*[n for n in names if n != TUNED_ROW], TUNED_ROW]
    elif TUNED_ROW in names:
        raise DiffsolveError("the solver row 'tuned' needs a tuned artefact (tuned=FILE, "
                             "--tuned FILE)")
    budgets = sorted({int(n) for n in nfes})
    if not budgets or budgets[0] < 1:
        raise DiffsolveError(f"NFE budgets must be positive integers, got {list(nfes)}")
    if samples < 2:
        raise DiffsolveError(f"need at least 2 samples, got {samples}")
    if n_seeds < 1:
        raise DiffsolveError(f"need at least one seed, got n_seeds={n_seeds}")
    seeds = [seed + i for i in range(n_seeds)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = load_results(path)
    task = make_task(model_name, samples, mmd_points=mmd_points)
    setup = {"grid": grid, "dtype": str(task.dtype).replace("torch.", ""),
             "reference_nfe": reference_nfe, **task.setup}
    tuned_setup = {**setup, "tuned": tuned_id}  # a changed artefact recomputes its cells
    versions, hardware = environment()
    results.update({
        "format": FORMAT, "versions": versions, "hardware": hardware,
        "seeds": {"sampling": seeds,
                  "reference_data": [s + REF_DATA_SEED_OFFSET for s in seeds],
                  "floor_data": [s + BASELINE_SEED_OFFSET for s in seeds]},
        "config": {"model": model_name, "solvers": names, "nfe": budgets, "samples": samples,
                   "seed": seed, "seeds": seeds, "grid": grid, "device": device,
                   "tuned": None if tuned is None else str(tuned),
                   "setup": setup, "primary_metric": task.primary,
                   "metrics": list(task.metrics), "updated_at": now()}})
    runs: dict[str, Any] = results.setdefault("cells", {})

    # the floor: exact / held-out real data, per seed (reused when the setup matches)
    floor_runs = results.setdefault("floor_runs", {})
    for s in seeds:
        old = floor_runs.get(str(s))
        if old is None or old.get("setup") != setup:
            t0 = time.perf_counter()
            vals = task.floor(s)
            floor_runs[str(s)] = {"setup": setup, "metrics": vals,
                                  "seconds": time.perf_counter() - t0}
    scalar = [k for k, v in floor_runs[str(seeds[0])]["metrics"].items()
              if isinstance(v, (int, float))]
    results["floor"] = {k: mean_ci([floor_runs[str(s)]["metrics"].get(k) for s in seeds])
                        for k in scalar}
    results["floor"]["note"] = floor_runs[str(seeds[0])]["metrics"].get("note", "")

    refs: dict[str, Any] = results.setdefault("reference_runs", {})
    ref_cache: dict[int, Tensor] = {}

    def reference_for(s: int) -> Callable[[], Tensor]:
        def reference() -> Tensor:
            if s not in ref_cache:
                assert reference_nfe is not None
                ref_cache[s], info = ode_reference(task, samples, s, grid, device,
                                                   reference_nfe, out)
                if not info["cached"] or str(s) not in refs:
                    refs[str(s)] = info
            return ref_cache[s]
        return reference

    todo = [(sv, n, s) for n in budgets for sv in names for s in seeds]  # cheap columns first
    computed = reused = 0
    bar = tqdm(todo, desc=f"bench {model_name}", disable=not progress, unit="run")
    for solver, nfe, s in bar:
        bar.set_postfix_str(f"{solver} @ {nfe} NFE, seed {s}")
        key = cell_key(model_name, solver, nfe, samples, s)
        old = runs.get(key)
        cell_setup = tuned_setup if solver == TUNED_ROW else setup
        if old is not None and old.get("setup") == cell_setup and old.get("status") != "error":
            reused += 1
            continue
        cell = run_cell(task, solver, nfe, samples, s, grid, device, cell_setup,
                        reference_for(s) if reference_nfe else None, tuned=tuned)
        runs[key] = cell
        write_json_atomic(path, results)
        computed += 1
        if on_cell is not None:
            on_cell(cell)
    bar.close()

    cells = {(sv, n): aggregate([runs[cell_key(model_name, sv, n, samples, s)] for s in seeds])
             for sv in names for n in budgets}
    results["aggregated"] = {f"{sv}|nfe={n}": c for (sv, n), c in cells.items()}
    summary = summarize(list(cells.values()), task.primary, names, budgets)
    results["summary"] = summary
    used = [runs[cell_key(model_name, sv, n, samples, s)] for sv, n, s in todo]
    ref_s = sum(refs[str(s)]["seconds"] for s in seeds if str(s) in refs)
    floor_s = sum(floor_runs[str(s)]["seconds"] for s in seeds)
    sampling_s = sum(c.get("seconds", 0.0) for c in used)
    metric_s = sum(c.get("metric_seconds", 0.0) for c in used)
    results["references"] = [refs[str(s)] for s in seeds if str(s) in refs]
    results["timing"] = {"sampling_s": sampling_s, "metric_s": metric_s, "reference_s": ref_s,
                         "floor_s": floor_s, "total_s": sampling_s + metric_s + ref_s + floor_s}
    failures = [{"key": cell_key(model_name, c["solver"], c["nfe"], samples, c["seed"]),
                 "status": c["status"], "reason": c.get("reason", "")}
                for c in used if c.get("status") in ("error", "failed")]
    results["failures"] = failures
    write_json_atomic(path, results)

    written: dict[str, Any] = {"results": str(path)}
    written["report"] = str(write_report(out / "report.md", results, cells))
    written["plot"] = str(plot_metric_vs_nfe(out / "metric_vs_nfe.png", results, cells))
    if task.image:
        nfe_g = grid_nfe if grid_nfe is not None else (
            20 if 20 in budgets else budgets[len(budgets) // 2])
        written["sample_grids"] = [str(p) for p in write_sample_grids(
            out, task, names, nfe_g, seed, grid, device, tuned=tuned)]
    return {"paths": written, "computed": computed, "reused": reused, "runs": len(used),
            "failures": failures, "summary": summary}

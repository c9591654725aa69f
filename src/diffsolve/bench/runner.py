r"""Benchmark harness: every solver x NFE budget on one model, resumable, with a report.

:func:`run_benchmark` samples ``model`` with every solver at every NFE budget (a *cell*),
times the sampling, scores the samples and writes ``OUT/results.json`` after every cell
(atomically: a temporary file, then :func:`os.replace`). Cells already in ``results.json``
with the same key (model, solver, NFE, samples, seed) and the same setup (grid, dtype, model
options) are reused, so an interrupted run resumes where it stopped. At the end it writes
``report.md`` (metric-vs-NFE tables, the best solver per budget, best SDE against best ODE),
``metric_vs_nfe.png`` (log-log, solid: SDE solvers, dashed: ODE solvers) and, for image
models, ``samples_<solver>.png`` (the first 32 samples at one NFE budget).

Models and metrics (the first one listed is the primary metric of tables and plots):

* ``gmm``: the 2-D analytic Gaussian mixture with its exact denoiser on EDM(0.002, 80),
  float64. ``fd``: Frechet distance to the mixture's exact mean and covariance; ``sw``:
  sliced W1 against as many exact mixture samples.
* ``gmm-err``: the same mixture with a smooth denoiser error (eps = 0.1,
  :func:`diffsolve.bench.models.erroneous_model`), scored against the exact mixture.
* ``digits``: the shipped 8x8 digits U-Net; samples clamped to [-1, 1]. ``feature_fd``:
  Frechet distance in the shipped classifier's 128-d feature space against all 1797 digits;
  ``kid``: unbiased KID (cubic polynomial kernel) in the same space; ``pixel_fd``: Frechet
  distance of the 64 pixels; ``confident_fraction``: share of samples the classifier labels
  with probability >= 0.9; ``class_histogram``: counts of the predicted labels.
* ``moons``: the shipped 2-D moons MLP. ``sw``: sliced W1 against as many samples of the
  data distribution (:func:`diffsolve.zoo.data.toy2d`); ``fd``: Frechet distance of the
  Gaussian fits.

Every model also gets ``ode_error`` for deterministic solvers: the RMS difference to a
reference solution from the same initial noise (DPM-Solver-3 at ``reference_nfe``
evaluations, same grid; its own error is estimated on the first 100 samples against half
that budget and stored as ``reference.check_rms``). The ``baseline`` entry scores a second
draw of real data (for digits: ``samples`` images drawn from the 1797, which overlap the
reference set) with the same metrics: the floor that sampling error alone leaves.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..core.errors import DiffsolveError, NonFiniteError, SolverOptionError
from ..core.models import Denoiser
from ..drivers.loop import sample, steps_for_nfe
from ..solvers import get_solver, list_solvers, solver_class
from .metrics import (
    batched_features,
    frechet_distance,
    kernel_distance,
    moment_frechet_distance,
    ode_error,
    pixel_frechet_distance,
    sample_moments,
    sliced_wasserstein,
)

MODELS: tuple[str, ...] = ("gmm", "gmm-err", "digits", "moons")
DEFAULT_SAMPLES: dict[str, int] = {"gmm": 10000, "gmm-err": 10000, "digits": 1000,
                                   "moons": 5000}
DEFAULT_NFES: tuple[int, ...] = (5, 10, 20, 50, 100)
GMM_ERROR_EPS = 0.1
CONFIDENCE = 0.9
REFERENCE_SOLVER = "dpm_solver_3"
DEFAULT_REFERENCE_NFE = 301
REFERENCE_CHECK_SAMPLES = 100
GRID_SAMPLES = 32
REF_DATA_SEED_OFFSET = 10_000
BASELINE_SEED_OFFSET = 20_000
FORMAT = "diffsolve-bench-v1"

METRIC_LABELS: dict[str, str] = {
    "fd": "Frechet distance",
    "sw": "sliced W1",
    "feature_fd": "classifier-feature Frechet distance",
    "kid": "KID (unbiased MMD^2, cubic kernel)",
    "pixel_fd": "pixel Frechet distance",
    "confident_fraction": f"fraction classified with confidence >= {CONFIDENCE}",
    "ode_error": "RMS error vs reference ODE solution",
}
LOWER_IS_BETTER = {"fd": True, "sw": True, "feature_fd": True, "kid": True, "pixel_fd": True,
                   "confident_fraction": False, "ode_error": True}


@dataclass
class BenchTask:
    """A model to benchmark and how to score its samples.

    Attributes:
        name: model name (one of :data:`MODELS`).
        model: the denoiser.
        shape: one sample's shape.
        dtype: sampling dtype.
        evaluate: samples (N, ...) -> metric dict (floats, or lists for histograms).
        metrics: scalar metric names, primary first.
        setup: JSON-able description of everything besides the cell key that changes results.
        baseline: metrics of a second draw of real data (the sampling-error floor).
        image: whether samples are images (sample grids are drawn).
    """

    name: str
    model: Denoiser
    shape: tuple[int, ...]
    dtype: torch.dtype
    evaluate: Callable[[Tensor], dict[str, Any]]
    metrics: tuple[str, ...]
    setup: dict[str, Any]
    baseline: dict[str, Any] = field(default_factory=dict)
    image: bool = False

    @property
    def primary(self) -> str:
        return self.metrics[0]


def make_task(model_name: str, samples: int, seed: int) -> BenchTask:
    """Build the :class:`BenchTask` of a model name from :data:`MODELS`."""
    ref_seed = seed + REF_DATA_SEED_OFFSET
    base_seed = seed + BASELINE_SEED_OFFSET
    if model_name in ("gmm", "gmm-err"):
        from .models import GMM_SCHEDULE, gmm_model

        eps = GMM_ERROR_EPS if model_name == "gmm-err" else 0.0
        gmm, model = gmm_model(eps)
        ref = gmm.sample(samples, torch.Generator().manual_seed(ref_seed))
        mean, cov = gmm.mean, gmm.cov

        def evaluate(x: Tensor) -> dict[str, Any]:
            return {"fd": moment_frechet_distance(x, mean, cov),
                    "sw": sliced_wasserstein(x, ref, seed=seed)}

        task = BenchTask(model_name, model, (2,), torch.float64, evaluate, ("fd", "sw"),
                         {"schedule": f"EDM{GMM_SCHEDULE}", "eps": eps,
                          "reference": f"exact moments; {samples} exact samples"})
        task.baseline = evaluate(gmm.sample(samples, torch.Generator().manual_seed(base_seed)))
        return task
    if model_name == "moons":
        from ..zoo.data import toy2d
        from ..zoo.pretrained import load_model

        model = load_model("moons")
        ref = toy2d("moons", samples, seed=ref_seed).double()

        def evaluate(x: Tensor) -> dict[str, Any]:
            return {"sw": sliced_wasserstein(x, ref, seed=seed),
                    "fd": pixel_frechet_distance(x, ref)}

        task = BenchTask("moons", model, tuple(model.shape), torch.float32, evaluate,
                         ("sw", "fd"), {"reference": f"toy2d moons, {samples} samples"})
        task.baseline = evaluate(toy2d("moons", samples, seed=base_seed))
        return task
    if model_name == "digits":
        from ..zoo.classifier import load_classifier
        from ..zoo.data import load_digits_split
        from ..zoo.pretrained import load_model

        model = load_model("digits")
        clf = load_classifier()
        ref_x, _ = load_digits_split("all")
        ref_feat = batched_features(ref_x, clf.features)
        ref_fmom = sample_moments(ref_feat)

        def evaluate(x: Tensor) -> dict[str, Any]:
            x = x.detach().float().cpu().clamp(-1.0, 1.0)
            feat = batched_features(x, clf.features)
            probs = batched_features(x, clf.predict_proba)
            conf, pred = probs.max(dim=1)
            return {"feature_fd": frechet_distance(*sample_moments(feat), *ref_fmom),
                    "kid": kernel_distance(feat, ref_feat),
                    "pixel_fd": pixel_frechet_distance(x, ref_x),
                    "confident_fraction": float((conf >= CONFIDENCE).double().mean()),
                    "class_histogram": torch.bincount(pred, minlength=10).tolist()}

        task = BenchTask("digits", model, tuple(model.shape), torch.float32, evaluate,
                         ("feature_fd", "kid", "pixel_fd", "confident_fraction"),
                         {"reference": f"all {ref_x.shape[0]} digits", "clamp": [-1.0, 1.0],
                          "classifier_heldout_accuracy": clf.card.get("heldout_accuracy")},
                         image=True)
        g = torch.Generator().manual_seed(base_seed)
        idx = torch.randperm(ref_x.shape[0], generator=g)[:min(samples, ref_x.shape[0])]
        task.baseline = evaluate(ref_x[idx])
        task.baseline["note"] = (f"{idx.numel()} real digits drawn from the reference set "
                                 "(overlapping it: a lower bound on what sampling error allows)")
        return task
    raise DiffsolveError(f"unknown benchmark model {model_name!r}; choose from {list(MODELS)}")


# ---------------------------------------------------------------------------------------------
# results file


def cell_key(model: str, solver: str, nfe: int, samples: int, seed: int) -> str:
    """The results.json key of a cell."""
    return f"{model}|{solver}|nfe={nfe}|n={samples}|seed={seed}"


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite_or_none(x) for x in v]
    return v


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(_finite_or_none(data), f, indent=1, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_results(path: Path) -> dict[str, Any]:
    """The results in ``path``, or an empty dict if it does not exist."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise DiffsolveError(f"{str(path)!r} is not valid JSON ({e}); move it away to start "
                             "afresh") from e
    if data.get("format") != FORMAT:
        raise DiffsolveError(f"{str(path)!r} is not a {FORMAT} results file")
    return data


def environment() -> tuple[dict[str, Any], dict[str, Any]]:
    """(versions, hardware) of this process."""
    import numpy as np

    from ..core import VERSION as __version__

    versions = {"diffsolve": __version__, "torch": torch.__version__,
                "numpy": np.__version__, "python": platform.python_version()}
    cuda: dict[str, Any] = {"available": torch.cuda.is_available()}
    if cuda["available"]:
        cuda.update(device=torch.cuda.get_device_name(0), version=torch.version.cuda)
    hardware = {"platform": platform.platform(), "machine": platform.machine(),
                "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "cuda": cuda}
    return versions, hardware


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# sampling


def _draw(task: BenchTask, solver: str, n: int, seed: int, grid: str, device: str,
          *, nfe: int) -> Tensor:
    with torch.no_grad():
        res = sample(task.model, (n, *task.shape), solver=solver, nfe=nfe, grid=grid,
                     seed=seed, dtype=task.dtype, device=device, progress=False)
    return res.x


def _ode_reference(task: BenchTask, samples: int, seed: int, grid: str, device: str,
                   nfe: int, out: Path) -> tuple[Tensor, dict[str, Any]]:
    """Reference final samples of the PF-ODE from the run's initial noise (cached in out)."""
    path = out / f"ode_reference_{task.name}_n{samples}_seed{seed}_{grid}_{REFERENCE_SOLVER}" \
                 f"{nfe}.safetensors"
    if path.exists():
        data = load_file(str(path))
        x_ref, check = data["x"], data["check"]
    else:
        x_ref = _draw(task, REFERENCE_SOLVER, samples, seed, grid, device, nfe=nfe).cpu()
        m = min(samples, REFERENCE_CHECK_SAMPLES)
        half = _draw(task, REFERENCE_SOLVER, m, seed, grid, device, nfe=(nfe - 1) // 2 + 1)
        check = torch.tensor(ode_error(half, x_ref[:m]), dtype=torch.float64)
        save_file({"x": x_ref.contiguous(), "check": check}, str(path))
    info = {"solver": REFERENCE_SOLVER, "nfe": nfe, "grid": grid, "file": path.name,
            "check_rms": float(check),
            "check": f"RMS difference to half the budget on the first "
                     f"{min(samples, REFERENCE_CHECK_SAMPLES)} samples"}
    return x_ref, info


def _run_cell(task: BenchTask, solver: str, nfe: int, samples: int, seed: int, grid: str,
              device: str, setup: dict[str, Any],
              reference: Callable[[], Tensor] | None) -> dict[str, Any]:
    cls = get_solver(solver)  # declared order / cost of the configured (default) solver
    cell: dict[str, Any] = {
        "model": task.name, "solver": solver, "nfe": nfe, "samples": samples, "seed": seed,
        "stochastic": bool(cls.stochastic), "order": int(cls.order),
        "nfe_per_step": int(cls.steady_evaluations), "setup": setup}
    try:
        steps = steps_for_nfe(get_solver(solver), nfe)
    except SolverOptionError as e:
        return {**cell, "status": "skipped", "reason": str(e), "computed_at": _now()}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            res = sample(task.model, (samples, *task.shape), solver=solver, nfe=nfe, grid=grid,
                         seed=seed, dtype=task.dtype, device=device, progress=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except NonFiniteError as e:
        return {**cell, "status": "failed", "reason": str(e), "steps": steps,
                "seconds": time.perf_counter() - start, "computed_at": _now()}
    except Exception as e:  # a broken solver must not stop the run; recomputed on resume
        return {**cell, "status": "error", "reason": f"{type(e).__name__}: {e}",
                "steps": steps, "computed_at": _now()}
    seconds = time.perf_counter() - start
    t1 = time.perf_counter()
    metrics = task.evaluate(res.x)
    if reference is not None and not cls.stochastic:
        metrics["ode_error"] = ode_error(res.x, reference())
    else:
        metrics["ode_error"] = None
    return {**cell, "status": "ok", "nfe_used": int(res.nfe), "steps": int(res.grid.steps),
            "seconds": seconds, "metric_seconds": time.perf_counter() - t1,
            "metrics": metrics, "computed_at": _now()}


# ---------------------------------------------------------------------------------------------
# the harness


def _resolve_solvers(solvers: str | Sequence[str]) -> list[str]:
    if isinstance(solvers, str):
        solvers = list_solvers() if solvers == "all" else [s for s in solvers.split(",") if s]
    names = list(dict.fromkeys(solvers))
    if not names:
        raise DiffsolveError("no solvers given")
    for name in names:
        solver_class(name)  # raises with suggestions for an unknown name
    return names


def run_benchmark(model_name: str, solvers: str | Sequence[str], nfes: Sequence[int],
                  samples: int, seed: int, out_dir: str | os.PathLike[str],
                  progress: bool = True, *, grid: str = "karras", device: str = "cpu",
                  reference_nfe: int | None = DEFAULT_REFERENCE_NFE,
                  grid_nfe: int | None = None,
                  on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Benchmark ``solvers`` x ``nfes`` on ``model_name``; write results, report and plots.

    Args:
        model_name: one of :data:`MODELS`.
        solvers: solver names, a comma-separated string, or "all" (every registered solver).
        nfes: NFE budgets; a solver runs with ``diffsolve.sample(..., nfe=budget)`` (it may
            use fewer evaluations when the budget is not a multiple of its step cost: the
            used count is stored as ``nfe_used``). Budgets below a solver's minimum are
            recorded as skipped with the reason.
        samples: samples per cell.
        seed: sampling seed (initial noise and SDE noise of sample b keyed by (seed, b)).
        out_dir: folder of results.json, report.md and the PNGs; created if needed. Cells
            already in its results.json are reused.
        progress: show a tqdm bar over the cells.
        grid: time-step grid name.
        device: where to sample (metrics run on the CPU).
        reference_nfe: budget of the DPM-Solver-3 reference for ``ode_error``; None skips it.
        grid_nfe: budget of the sample grids of image models (default 20 if run, else the
            middle budget).
        on_cell: called with every newly computed cell after results.json is written.

    Returns:
        dict with the paths written, the numbers of computed and reused cells, and the
        summary (also stored in results.json).
    """
    if model_name not in MODELS:
        raise DiffsolveError(f"unknown benchmark model {model_name!r}; choose from "
                             f"{list(MODELS)}")
    names = _resolve_solvers(solvers)
    budgets = sorted({int(n) for n in nfes})
    if not budgets or budgets[0] < 1:
        raise DiffsolveError(f"NFE budgets must be positive integers, got {list(nfes)}")
    if samples < 2:
        raise DiffsolveError(f"need at least 2 samples, got {samples}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = load_results(path)
    task = make_task(model_name, samples, seed)
    setup = {"grid": grid, "dtype": str(task.dtype).replace("torch.", ""),
             "reference_nfe": reference_nfe, **task.setup}
    versions, hardware = environment()
    results.update({
        "format": FORMAT, "versions": versions, "hardware": hardware,
        "seeds": {"sampling": seed, "reference_data": seed + REF_DATA_SEED_OFFSET,
                  "baseline_data": seed + BASELINE_SEED_OFFSET, "projections": seed},
        "config": {"model": model_name, "solvers": names, "nfe": budgets, "samples": samples,
                   "seed": seed, "grid": grid, "device": device, "setup": setup,
                   "primary_metric": task.primary, "metrics": list(task.metrics),
                   "updated_at": _now()},
        "baseline": task.baseline})
    cells: dict[str, Any] = results.setdefault("cells", {})

    ref_cache: dict[str, Tensor] = {}

    def reference() -> Tensor:
        if "x" not in ref_cache:
            assert reference_nfe is not None
            ref_cache["x"], results["reference"] = _ode_reference(
                task, samples, seed, grid, device, reference_nfe, out)
        return ref_cache["x"]

    todo = [(s, n) for n in budgets for s in names]  # budget-major: cheap columns first
    computed = reused = 0
    bar = tqdm(todo, desc=f"bench {model_name}", disable=not progress, unit="cell")
    for solver, nfe in bar:
        bar.set_postfix_str(f"{solver} @ {nfe} NFE")
        key = cell_key(model_name, solver, nfe, samples, seed)
        old = cells.get(key)
        if old is not None and old.get("setup") == setup and old.get("status") != "error":
            reused += 1
            continue
        cell = _run_cell(task, solver, nfe, samples, seed, grid, device, setup,
                         reference if reference_nfe else None)
        cells[key] = cell
        write_json_atomic(path, results)
        computed += 1
        if on_cell is not None:
            on_cell(cell)
    bar.close()
    keys = [cell_key(model_name, s, n, samples, seed) for s, n in todo]
    summary = summarize([cells[k] for k in keys], task.primary, names, budgets)
    results["summary"] = summary
    write_json_atomic(path, results)

    written = {"results": str(path)}
    written["report"] = str(write_report(out / "report.md", results, keys))
    written["plot"] = str(plot_metric_vs_nfe(out / "metric_vs_nfe.png", results, keys))
    if task.image:
        nfe_g = grid_nfe if grid_nfe is not None else (
            20 if 20 in budgets else budgets[len(budgets) // 2])
        written["sample_grids"] = [str(p) for p in write_sample_grids(
            out, task, names, nfe_g, seed, grid, device)]
    return {"paths": written, "computed": computed, "reused": reused, "summary": summary}


# ---------------------------------------------------------------------------------------------
# summary and report


def _value(cell: dict[str, Any], metric: str) -> float | None:
    if cell.get("status") != "ok":
        return None
    v = cell["metrics"].get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _best(cells: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    scored = [(v, c["solver"]) for c in cells if (v := _value(c, metric)) is not None]
    if not scored:
        return None
    lower = LOWER_IS_BETTER.get(metric, True)
    v, s = min(scored) if lower else max(scored)
    return {"solver": s, "value": v}


def summarize(cells: list[dict[str, Any]], metric: str, solvers: Sequence[str],
              budgets: Sequence[int]) -> dict[str, Any]:
    """Primary-metric table, the best solver (overall, ODE, SDE) per budget, and the
    budgets at which the best SDE solver beats the best ODE solver."""
    by = {(c["solver"], c["nfe"]): c for c in cells}
    table = {s: {str(n): _value(by[(s, n)], metric) for n in budgets} for s in solvers}
    best: dict[str, Any] = {}
    sde_wins = []
    for n in budgets:
        col = [by[(s, n)] for s in solvers]
        b_ode = _best([c for c in col if not c["stochastic"]], metric)
        b_sde = _best([c for c in col if c["stochastic"]], metric)
        best[str(n)] = {"best": _best(col, metric), "best_ode": b_ode, "best_sde": b_sde}
        if b_ode and b_sde and (b_sde["value"] < b_ode["value"]) == LOWER_IS_BETTER[metric] \
                and b_sde["value"] != b_ode["value"]:
            sde_wins.append(n)
    return {"metric": metric, "table": table, "best_per_nfe": best,
            "sde_beats_ode_at_nfe": sde_wins,
            "sde_beats_ode_from_nfe": sde_wins[0] if sde_wins else None}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"
    return str(v)


def _metric_table(cells: dict[tuple[str, int], dict[str, Any]], metric: str,
                  solvers: Sequence[str], budgets: Sequence[int], bold: bool) -> list[str]:
    lines = ["| solver | type | " + " | ".join(f"{n} NFE" for n in budgets) + " |",
             "|---|---|" + "---:|" * len(budgets)]
    best = {n: _best([cells[(s, n)] for s in solvers], metric) for n in budgets}
    for s in solvers:
        row = []
        for n in budgets:
            c = cells[(s, n)]
            v = _value(c, metric)
            txt = _fmt(v) if c.get("status") == "ok" else {
                "skipped": "skip", "failed": "fail"}.get(c.get("status", ""), "error")
            if c.get("status") == "ok" and v is None:
                txt = "—"
            if bold and v is not None and best[n] and best[n]["solver"] == s:
                txt = f"**{txt}**"
            if c.get("status") == "ok" and c.get("nfe_used", n) != n:
                txt += f" ({c['nfe_used']})"
            row.append(txt)
        kind = "SDE" if cells[(s, budgets[0])]["stochastic"] else "ODE"
        lines.append(f"| {s} | {kind} | " + " | ".join(row) + " |")
    return lines


def write_report(path: Path, results: dict[str, Any], keys: Sequence[str]) -> Path:
    """Write the markdown report of the cells ``keys`` of ``results``."""
    cfg = results["config"]
    cell_list = [results["cells"][k] for k in keys]
    cells = {(c["solver"], c["nfe"]): c for c in cell_list}
    solvers, budgets = cfg["solvers"], cfg["nfe"]
    metric = cfg["primary_metric"]
    summ = results["summary"]
    v, hw = results["versions"], results["hardware"]
    cuda = hw["cuda"].get("device") if hw["cuda"].get("available") else "none"
    total = sum(c.get("seconds", 0.0) for c in cell_list)
    lines = [
        f"# diffsolve benchmark: {cfg['model']}", "",
        f"{cfg['samples']} samples per cell, seed {cfg['seed']}, {cfg['grid']} grid, "
        f"{len(solvers)} solvers x NFE budgets {', '.join(map(str, budgets))}. "
        f"Generated by `diffsolve bench --model {cfg['model']} --solvers "
        f"{','.join(solvers)} --nfe {','.join(map(str, budgets))} --samples "
        f"{cfg['samples']} --seed {cfg['seed']}`.", "",
        f"diffsolve {v['diffsolve']}, torch {v['torch']}, Python {v['python']}; "
        f"{hw['platform']}, {hw['cpu_count']} CPUs ({hw['torch_threads']} torch threads), "
        f"CUDA: {cuda}. Total sampling time {total:.0f} s (wall clock).", "",
        "![metric vs NFE](metric_vs_nfe.png)", "",
        f"## {METRIC_LABELS.get(metric, metric)} (lower is better)", "",
        "Bold: best solver at that budget. A number in parentheses is the NFE actually used "
        "when the budget is not a multiple of the solver's cost per step (plus the final "
        "denoising step); `skip`: budget below the solver's minimum; `fail`: non-finite "
        "samples; `error`: the solver raised (see results.json).", "",
        *_metric_table(cells, metric, solvers, budgets, bold=True), ""]
    base = results.get("baseline", {})
    if isinstance(base.get(metric), (int, float)):
        note = f" ({base['note']})" if "note" in base else ""
        lines += [f"Real-data floor: {_fmt(float(base[metric]))}{note}.", ""]
    lines += ["## Best solver per NFE budget", "",
              "| NFE | best | value | best ODE | value | best SDE | value |",
              "|---:|---|---:|---|---:|---|---:|"]
    for n in budgets:
        row = summ["best_per_nfe"][str(n)]
        parts = []
        for k in ("best", "best_ode", "best_sde"):
            b = row[k]
            parts += [b["solver"], _fmt(b["value"])] if b else ["—", "—"]
        lines.append(f"| {n} | " + " | ".join(parts) + " |")
    wins = summ["sde_beats_ode_at_nfe"]
    lines += ["", ("The best SDE solver beats the best ODE solver at NFE " +
                   ", ".join(map(str, wins)) + f" (first at {wins[0]})." if wins else
                   "The best ODE solver is at least as good as the best SDE solver at every "
                   "budget."), ""]
    for m in [*cfg["metrics"][1:], "ode_error"]:
        if all(_value(c, m) is None for c in cell_list):
            continue
        better = "lower" if LOWER_IS_BETTER.get(m, True) else "higher"
        lines += [f"## {METRIC_LABELS.get(m, m)} ({better} is better)", ""]
        if m == "ode_error":
            ref = results.get("reference", {})
            lines += [f"Deterministic solvers only; reference {ref.get('solver')} at "
                      f"{ref.get('nfe')} NFE from the same noise (its estimated error: "
                      f"{_fmt(ref.get('check_rms'))}).", ""]
        rows = [s for s in solvers if not cells[(s, budgets[0])]["stochastic"]] \
            if m == "ode_error" else solvers
        lines += [*_metric_table(cells, m, rows, budgets, bold=True), ""]
        if isinstance(base.get(m), (int, float)):
            lines += [f"Real data: {_fmt(float(base[m]))}.", ""]
    if any("class_histogram" in c.get("metrics", {}) for c in cell_list):
        lines += ["## Class histograms of the best solver per budget", "",
                  "| NFE | solver | confident | counts of predicted labels 0-9 |",
                  "|---:|---|---:|---|"]
        for n in budgets:
            b = summ["best_per_nfe"][str(n)]["best"]
            if b:
                mt = cells[(b["solver"], n)]["metrics"]
                lines.append(f"| {n} | {b['solver']} | {_fmt(mt.get('confident_fraction'))} "
                             f"| {mt['class_histogram']} |")
        if "class_histogram" in base:
            lines += ["", f"Real data: {base['class_histogram']}, confident "
                          f"{_fmt(base.get('confident_fraction'))}."]
        lines.append("")
    lines += ["## Sampling time (s, wall clock)", "",
              *_time_table(cells, solvers, budgets), ""]
    path.write_text("\n".join(lines))
    return path


def _time_table(cells: dict[tuple[str, int], dict[str, Any]], solvers: Sequence[str],
                budgets: Sequence[int]) -> list[str]:
    lines = ["| solver | " + " | ".join(f"{n} NFE" for n in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for s in solvers:
        vals = [cells[(s, n)].get("seconds") for n in budgets]
        lines.append(f"| {s} | " + " | ".join("—" if v is None else f"{v:.2f}"
                                               for v in vals) + " |")
    return lines


# ---------------------------------------------------------------------------------------------
# plots


def plot_metric_vs_nfe(path: Path, results: dict[str, Any], keys: Sequence[str]) -> Path:
    """Log-log primary metric (and ODE error, if any) versus NFE used, one line per solver:
    solid for SDE solvers, dashed for ODE solvers."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    cell_list = [results["cells"][k] for k in keys]
    metrics = [cfg["primary_metric"]]
    if any(_value(c, "ode_error") for c in cell_list):
        metrics.append("ode_error")
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.0 * len(metrics), 5.0), dpi=90,
                             squeeze=False)
    cmap = plt.get_cmap("tab20")
    markers = "os^vDP*Xph<>"
    for j, s in enumerate(cfg["solvers"]):
        row = sorted((c for c in cell_list if c["solver"] == s), key=lambda c: c["nfe"])
        stochastic = bool(row and row[0]["stochastic"])
        color = cmap((2 * j) % 20 + (j // 10) % 2)  # dark shades first, then light ones
        for ax, m in zip(axes[0], metrics, strict=True):
            pts = [(c["nfe_used"], v) for c in row if (v := _value(c, m)) is not None and v > 0]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "-" if stochastic else "--", color=color,
                    marker=markers[j % len(markers)], ms=4, lw=1.3,
                    label=f"{s} ({'SDE' if stochastic else 'ODE'})")
    for ax, m in zip(axes[0], metrics, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(cfg["nfe"])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("NFE (model evaluations used)")
        ax.set_ylabel(METRIC_LABELS.get(m, m))
        ax.grid(True, which="both", alpha=0.3)
        base = results.get("baseline", {}).get(m)
        if isinstance(base, (int, float)) and base > 0:
            ax.axhline(base, color="grey", lw=1, ls=":", label="real-data floor")
    axes[0][0].set_title(f"{cfg['model']}: {cfg['samples']} samples, seed {cfg['seed']}",
                         fontsize=10)
    if len(metrics) > 1:
        axes[0][1].set_title("ODE solvers: error vs reference solution", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                       fontsize=7, title="solid: SDE, dashed: ODE", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def write_sample_grids(out: Path, task: BenchTask, solvers: Sequence[str], nfe: int, seed: int,
                       grid: str, device: str) -> list[Path]:
    """``samples_<solver>.png``: the first 32 samples (same seeds as the run) at ``nfe``.
    Existing files are kept; solvers that cannot run at ``nfe`` are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for s in solvers:
        p = out / f"samples_{s}.png"
        if not p.exists():
            try:
                x = _draw(task, s, GRID_SAMPLES, seed, grid, device, nfe=nfe)
            except (SolverOptionError, NonFiniteError):
                continue
            imgs = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)[:, 0]  # (N, H, W)
            cols = 8
            rows = (imgs.shape[0] + cols - 1) // cols
            h, w = imgs.shape[1:]
            mosaic = torch.ones(rows * (h + 1) + 1, cols * (w + 1) + 1)
            for k in range(imgs.shape[0]):
                r, c = divmod(k, cols)
                mosaic[1 + r * (h + 1):1 + r * (h + 1) + h,
                       1 + c * (w + 1):1 + c * (w + 1) + w] = 1 - imgs[k]
            fig, ax = plt.subplots(figsize=(cols * 0.45, rows * 0.45 + 0.35), dpi=80)
            ax.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
            ax.set_title(f"{s}, {nfe} NFE, seed {seed}", fontsize=8)
            fig.tight_layout(pad=0.2)
            fig.savefig(p)
            plt.close(fig)
        paths.append(p)
    return paths

"""Running one benchmark cell (a solver at an NFE budget, one seed) and the ODE reference."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.errors import NonFiniteError, SolverOptionError
from ..drivers.loop import sample, steps_for_nfe
from ..drivers.tuned import load_tuned
from ..solvers import Solver, get_solver
from .metrics import ode_error
from .solver_spec import build
from .store import now
from .tasks import BenchTask

REFERENCE_SOLVER = "dpm_solver_3"
DEFAULT_REFERENCE_NFE = 301
REFERENCE_CHECK_SAMPLES = 100
#: the row label of a tuned artefact (``diffsolve bench --tuned FILE``): at each budget the
#: artefact's own solver, options and grid (:mod:`diffsolve.drivers.tuned`)
TUNED_ROW = "tuned"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def row_setup(spec: str, nfe: int, grid: str, tuned: str | None
              ) -> tuple[Solver, Any, Any, int]:
    """(configured solver, ``solver=`` and ``grid=`` arguments of :func:`diffsolve.sample`,
    steps) of a bench row at ``nfe``. The :data:`TUNED_ROW` takes the artefact's entry at
    ``nfe`` (its solver on its grid); raises SolverOptionError when a budget cannot be met
    (below the solver's minimum, or no tuned entry)."""
    if spec == TUNED_ROW:
        if tuned is None:
            raise SolverOptionError("the 'tuned' row needs a tuned artefact (--tuned FILE)")
        art = load_tuned(tuned)
        entry = art.entry(nfe)
        return get_solver(entry.solver, **art.solver_kwargs(entry)), entry.solver, art, \
            int(entry.grid.steps)
    inst = build(spec)
    return inst, inst, grid, steps_for_nfe(inst, nfe)


def draw(task: BenchTask, solver: str, n: int, seed: int, grid: str, device: str,
         *, nfe: int, tuned: str | None = None) -> Tensor:
    """n samples of ``task`` with the row ``solver`` at ``nfe``."""
    _, solver_arg, grid_arg, _ = row_setup(solver, nfe, grid, tuned)
    with torch.no_grad():
        res = sample(task.model, (n, *task.shape), solver=solver_arg, nfe=nfe, grid=grid_arg,
                     seed=seed, dtype=task.dtype, device=device, progress=False)
    return res.x


def ode_reference(task: BenchTask, samples: int, seed: int, grid: str, device: str, nfe: int,
                  out: Path) -> tuple[Tensor, dict[str, Any]]:
    """Reference final samples of the PF-ODE from the run's initial noise (cached in out);
    the info dict records the seconds the solve took (0 when read from the cache)."""
    path = out / f"ode_reference_{task.name}_n{samples}_seed{seed}_{grid}_{REFERENCE_SOLVER}" \
                 f"{nfe}.safetensors"
    start = time.perf_counter()
    cached = path.exists()
    if cached:
        data = load_file(str(path))
        x_ref, check = data["x"], data["check"]
    else:
        x_ref = draw(task, REFERENCE_SOLVER, samples, seed, grid, device, nfe=nfe).cpu()
        m = min(samples, REFERENCE_CHECK_SAMPLES)
        half = draw(task, REFERENCE_SOLVER, m, seed, grid, device, nfe=(nfe - 1) // 2 + 1)
        check = torch.tensor(ode_error(half, x_ref[:m]), dtype=torch.float64)
        save_file({"x": x_ref.contiguous(), "check": check}, str(path))
    info = {"solver": REFERENCE_SOLVER, "nfe": nfe, "grid": grid, "file": path.name,
            "seed": seed, "check_rms": float(check), "cached": cached,
            "seconds": 0.0 if cached else time.perf_counter() - start,
            "check": f"RMS difference to half the budget on the first "
                     f"{min(samples, REFERENCE_CHECK_SAMPLES)} samples"}
    return x_ref, info


def _declared(inst: Solver) -> dict[str, Any]:
    return {"stochastic": bool(inst.stochastic), "order": int(inst.order),
            "nfe_per_step": int(inst.steady_evaluations)}


def run_cell(task: BenchTask, solver: str, nfe: int, samples: int, seed: int, grid: str,
             device: str, setup: dict[str, Any],
             reference: Callable[[], Tensor] | None, *, tuned: str | None = None
             ) -> dict[str, Any]:
    """Sample, time and score one cell. ``nfe_used`` is the model's own evaluation counter
    (``SampleResult.nfe``), never a declared cost; ``over_budget`` flags a run that used more
    evaluations than the budget. Status: ok / skipped (budget below the solver's minimum) /
    failed (non-finite samples) / error (the solver raised; recomputed on resume).
    ``tuned``: the artefact of the :data:`TUNED_ROW` (see :func:`row_setup`)."""
    cell: dict[str, Any] = {
        "model": task.name, "solver": solver, "nfe": nfe, "samples": samples, "seed": seed,
        "setup": setup}
    try:  # the configured solver declares its order and cost
        inst, solver_arg, grid_arg, steps = row_setup(solver, nfe, grid, tuned)
    except SolverOptionError as e:
        if solver == TUNED_ROW and tuned is not None:  # no entry at nfe: describe its first
            inst = row_setup(solver, load_tuned(tuned).budgets[0], grid, tuned)[0]
        elif solver == TUNED_ROW:
            raise
        else:
            inst = build(solver)
        cell.update(_declared(inst))
        return {**cell, "status": "skipped", "reason": str(e), "computed_at": now()}
    cell.update(_declared(inst))
    if solver == TUNED_ROW:
        cell["tuned_solver"] = inst.name
    _sync(device)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            res = sample(task.model, (samples, *task.shape), solver=solver_arg, nfe=nfe,
                         grid=grid_arg, seed=seed, dtype=task.dtype, device=device,
                         progress=False)
        _sync(device)
    except NonFiniteError as e:
        return {**cell, "status": "failed", "reason": str(e), "steps": steps,
                "seconds": time.perf_counter() - start, "computed_at": now()}
    except Exception as e:  # a broken solver must not stop the run; recomputed on resume
        return {**cell, "status": "error", "reason": f"{type(e).__name__}: {e}",
                "steps": steps, "computed_at": now()}
    seconds = time.perf_counter() - start
    t1 = time.perf_counter()
    if not torch.isfinite(res.x).all():
        return {**cell, "status": "failed", "reason": "non-finite samples", "steps": steps,
                "nfe_used": int(res.nfe), "seconds": seconds, "computed_at": now()}
    metrics = task.evaluate(res.x, seed)
    metrics["ode_error"] = (ode_error(res.x, reference()) if reference is not None
                            and not inst.stochastic else None)
    return {**cell, "status": "ok", "nfe_used": int(res.nfe), "over_budget": int(res.nfe) > nfe,
            "steps": int(res.grid.steps), "seconds": seconds,
            "metric_seconds": time.perf_counter() - t1, "metrics": metrics,
            "computed_at": now()}

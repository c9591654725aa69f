r"""Tuning as a product: searched grids (and solver settings) for one model, in one JSON file.

``diffsolve tune`` / :func:`tune` runs, for every NFE budget and candidate solver, the grid
search of :mod:`diffsolve.tools.grid_search` (eq. 2 there: RMS distance of the solver's output to a
high-NFE reference from the same noise, S^3-style, Liu et al. 2023), with

* per-step orders (``step_order_caps``) for solvers that have them (the multistep family),
* DPM-Solver-v3's empirical model statistics (Zheng et al. 2023,
  :mod:`diffsolve.tools.v3_calibration`)
  computed once on the model and embedded in the file, when ``dpm_solver_v3`` is a candidate,

and keeps, per budget, the candidate with the lowest *calibration* objective. Every candidate
is then scored on a second, disjoint noise set (**held-out score**, the same eq. 2 on other
seeds, against its own reference), next to the same solver on the Karras grid, so that a grid
that only fits its calibration noise shows up as a held-out score no better than Karras.

The artefact (:class:`TunedArtefact`, format ``diffsolve-tuned-v1``) records the model's
weights hash, the calibration and held-out seeds and sizes, the calibration cost in NFE, the
noise-stream version, and per budget the solver, its options, the sigmas and the scores.
Use it with ``diffsolve.sample(model, shape, nfe=10, grid="file.json")`` (or a loaded
artefact), ``diffsolve sample --tuned file.json``, :func:`kdiffusion_sigmas` for k-diffusion
samplers, :func:`scheduler_settings` for the diffusers adapter. Artefacts shipped for the
built-in models (``diffsolve/zoo/tuned/<model>.json``, :func:`shipped`) are what the CLI uses by
default.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import Grid, make_grid
from ..core.models import Denoiser
from ..drivers.tuned import (  # noqa: F401 - re-exported: the artefact API
    FORMAT,
    TUNED_DIR,
    TunedArtefact,
    TunedEntry,
    is_tuned_file,
    kdiffusion_sigmas,
    load_tuned,
    resolve_tuned,
    scheduler_settings,
    shipped,
    weights_hash,
)
from ..solvers import get_solver

CALIB_SEED = 70_000
HELDOUT_SEED = 80_000
EMS_SEED = 90_000



# -- tuning ------------------------------------------------------------------------------------

def _rms(a: Tensor, b: Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def tune(model: Denoiser, shape: Sequence[int], *, nfes: Sequence[int] = (5, 10, 20),
         solvers: Sequence[str] = ("dpm_solver_v3", "dpmpp_3m", "unipc"),
         calib_samples: int = 32, heldout_samples: int = 64, reference_nfe: int = 151,
         max_evals: int = 50, search_orders: bool = True, ems_points: int = 120,
         ems_samples: int = 128, calib_seed: int = CALIB_SEED,
         heldout_seed: int = HELDOUT_SEED, dtype: torch.dtype = torch.float32,
         name: str | None = None, weights_file: str | os.PathLike[str] | None = None,
         log: Any = None) -> TunedArtefact:
    """Search grids for every (budget, solver) and keep the best per budget (module docstring).

    Args:
        model: the denoiser; shape: one sample's shape.
        nfes: NFE budgets. solvers: candidate deterministic solvers.
        calib_samples, heldout_samples: sizes of the two disjoint noise sets (seeds
            ``calib_seed``, ``heldout_seed``; sample i of a set is keyed by (seed, i)).
        reference_nfe: budget of the DPM-Solver-3 reference (Karras grid) for eq. 2.
        max_evals: grid-search evaluations of eq. 2 per (budget, solver).
        search_orders: also search per-step orders where the solver has ``step_order_caps``.
        ems_points, ems_samples: DPM-Solver-v3 statistics (lambda points, calibration samples).
        name, weights_file: recorded in the artefact (the weights hash is computed from the
            network's state dict; ``weights_file``'s sha256 is recorded too).
        log: optional ``print``-like callable for progress lines.
    """
    from ..core.noise import NOISE_STREAM_VERSION
    from ..drivers.loop import initial_noise, solve, steps_for_nfe
    from .grid_search import reference_endpoints, search_grid

    say = log or (lambda *a: None)
    if calib_seed == heldout_seed:
        raise SolverOptionError("calibration and held-out noise need different seeds")
    shape = tuple(int(s) for s in shape)
    t_start = time.perf_counter()
    nfe0 = model.nfe
    calib = initial_noise((calib_samples, *shape), seed=calib_seed, dtype=dtype)
    held = initial_noise((heldout_samples, *shape), seed=heldout_seed, dtype=dtype)
    ref_c, ref_c_nfe = reference_endpoints(model, calib, nfe=reference_nfe)
    ref_h, _ = reference_endpoints(model, held, nfe=reference_nfe)
    say(f"references: {ref_c_nfe} NFE each on {calib_samples} + {heldout_samples} samples")
    ems = None
    ems_b64 = None
    ems_info = None
    if "dpm_solver_v3" in solvers:
        from safetensors.torch import save

        from .v3_calibration import compute_statistics

        noise = initial_noise((ems_samples, *shape), seed=EMS_SEED, dtype=dtype)
        ems = compute_statistics(model, noise, points=ems_points)
        ems_b64 = base64.b64encode(save({k: getattr(ems, k).float().contiguous()
                                         for k in ("lams", "l", "s", "b")})).decode()
        ems = _roundtrip_ems(ems_b64, ems.info)
        ems_info = json.dumps(ems.info)
        say(f"DPM-Solver-v3 statistics: {ems.info.get('nfe')} NFE")

    def held_score(solver: str, options: dict[str, Any], grid: Grid) -> float:
        with torch.no_grad():
            first = model.schedule.point(float(grid.lams[0])).sigma
            out = solve(model, held * first, grid, get_solver(solver, **options),
                        progress=False, check_finite="off").x
        return _rms(out, ref_h)

    entries: list[TunedEntry] = []
    best: dict[str, int] = {}
    for nfe in nfes:
        for solver in solvers:
            s0 = get_solver(solver)
            if s0.stochastic:
                raise SolverOptionError(f"tune searches deterministic solvers; {solver} is "
                                        "stochastic")
            try:
                steps_for_nfe(s0, nfe)
            except SolverOptionError:
                continue
            options: dict[str, Any] = {}
            if solver == "dpm_solver_v3":
                options["statistics"] = ems
            orders = search_orders and "step_order_caps" in s0.options()
            t0 = time.perf_counter()
            sg = search_grid(model, solver, nfe, calib, reference=ref_c, solver_options=options,
                             max_evals=max_evals, search_orders=orders)
            sg.calibration["seconds"] = round(time.perf_counter() - t0, 2)
            opts = {k: v for k, v in sg.solver_options.items() if k != "statistics"}
            full = {**opts, **({"statistics": ems} if solver == "dpm_solver_v3" else {})}
            karras = make_grid("karras", steps_for_nfe(s0, nfe), model.schedule)
            scores = {"calibration": float(sg.objective["final"]),
                      "calibration_karras": float(sg.objective["initial"]),
                      "heldout": held_score(solver, full, sg.grid),
                      "heldout_karras": held_score(solver, {k: v for k, v in full.items()
                                                            if k != "step_order_caps"}, karras)}
            entry = TunedEntry(nfe=nfe, solver=solver, sigmas=sg.sigmas, solver_options=opts,
                               statistics=solver == "dpm_solver_v3", scores=scores,
                               search=sg.calibration)
            entries.append(entry)
            say(f"{nfe:3d} NFE {solver:14s} calib {scores['calibration']:.4f} "
                f"(karras {scores['calibration_karras']:.4f})  held-out "
                f"{scores['heldout']:.4f} (karras {scores['heldout_karras']:.4f})")
            k = str(nfe)
            if k not in best or scores["calibration"] < entries[best[k]].scores["calibration"]:
                best[k] = len(entries) - 1
    if not best:
        raise SolverOptionError("no (solver, budget) pair could be tuned")
    total = model.nfe - nfe0
    model_info = {"name": name, "weights_sha256": weights_hash(model),
                  "schedule": repr(model.schedule), "shape": list(shape)}
    if weights_file is not None:
        model_info["weights_file_sha256"] = weights_hash(weights_file)
    calibration = {
        "calib_seed": calib_seed, "calib_samples": calib_samples,
        "heldout_seed": heldout_seed, "heldout_samples": heldout_samples,
        "objective": "RMS distance to a DPM-Solver-3 reference from the same noise "
                     "(grid_search eq. 2)",
        "reference": {"solver": "dpm_solver_3", "grid": "karras", "nfe": reference_nfe},
        "selection": "lowest calibration objective per budget; held-out scores reported",
        "max_evals": max_evals, "search_orders": search_orders,
        "ems": ({"points": ems_points, "samples": ems_samples, "seed": EMS_SEED}
                if ems is not None else None),
        "statistics_info": ems_info,
        "calibration_nfe": int(total), "seconds": round(time.perf_counter() - t_start, 1),
        "noise_stream_version": NOISE_STREAM_VERSION, "dtype": str(dtype),
        "torch": torch.__version__,
    }
    return TunedArtefact(model=model_info, entries=entries, best=best, calibration=calibration,
                         statistics_b64=ems_b64)


def _roundtrip_ems(b64: str, info: dict[str, Any]) -> Any:
    """The EMS exactly as the artefact will store it (float32 in the file), so that the
    searched grid is tuned for the statistics users will load."""
    from safetensors.torch import load

    from ..solvers.engines.model_statistics import EMS

    t = load(base64.b64decode(b64))
    return EMS(*(t[k].to(torch.float64) for k in ("lams", "l", "s", "b")), info)


# -- CLI ---------------------------------------------------------------------------------------

def add_tune_parser(sub: Any) -> None:
    """Register ``diffsolve tune`` on an argparse sub-parser collection."""
    t = sub.add_parser("tune", help="search grids (and solver settings) for a model at "
                       "several NFE budgets; writes one JSON artefact")
    t.add_argument("--model", default="digits", help="a shipped zoo model (digits, moons) or a "
                   "zoo .safetensors path / training directory")
    t.add_argument("--solvers", default="dpm_solver_v3,dpmpp_3m,unipc",
                   help="comma-separated candidate solvers (deterministic)")
    t.add_argument("--nfe", default="5,10,20", help="comma-separated NFE budgets")
    t.add_argument("--calib-samples", type=int, default=32)
    t.add_argument("--heldout-samples", type=int, default=64)
    t.add_argument("--reference-nfe", type=int, default=151)
    t.add_argument("--max-evals", type=int, default=50, help="grid-search evaluations per "
                   "(budget, solver)")
    t.add_argument("--no-orders", action="store_true", help="do not search per-step orders")
    t.add_argument("--out", required=True, help="output JSON path")
    t.set_defaults(func=cmd_tune)


def cmd_tune(args: Any) -> int:
    from ..zoo.pretrained import load_model, resolve

    model = load_model(args.model)
    try:
        weights_file = resolve(args.model)[0]
    except Exception:  # pragma: no cover - load_model already resolved it
        weights_file = None
    art = tune(model, tuple(model.shape), nfes=[int(v) for v in args.nfe.split(",")],
               solvers=[s.strip() for s in args.solvers.split(",") if s.strip()],
               calib_samples=args.calib_samples, heldout_samples=args.heldout_samples,
               reference_nfe=args.reference_nfe, max_evals=args.max_evals,
               search_orders=not args.no_orders, name=args.model, weights_file=weights_file,
               log=lambda *a: print(*a, flush=True))
    art.save(args.out)
    summary = {str(n): {"solver": art.entry(n).solver, **art.entry(n).scores}
               for n in art.budgets}
    print(json.dumps({"out": args.out, "calibration_nfe": art.calibration["calibration_nfe"],
                      "seconds": art.calibration["seconds"], "best": summary}))
    return 0


def cli_grid(args: Any, model_name: str, nfe: int) -> tuple[Any, str | None]:
    """For ``diffsolve sample``/``generate``: the grid argument to pass on (a name or a JSON
    path, so it can be recorded in a config), and a line saying which tuned grid is used.
    ``--tuned FILE`` wins; ``--no-tuned`` or a ``--grid`` other than the default keeps the
    named grid; otherwise the artefact shipped for the model, if it has the ``nfe`` budget."""
    tuned = getattr(args, "tuned", None)
    if tuned:
        art = load_tuned(tuned)
        return str(tuned), "using " + art.describe(art.entry(nfe)) + f" (from {tuned})"
    if getattr(args, "grid", "karras") not in ("karras", "auto") or \
            getattr(args, "no_tuned", False):
        return args.grid, None
    art = shipped(model_name)
    if art is None or str(nfe) not in art.best:
        return args.grid, None
    return str(TUNED_DIR / f"{model_name}.json"), (
        "using the shipped " + art.describe(art.entry(nfe)) +
        " (pass --no-tuned for the plain Karras grid)")


__all__ = [
    "FORMAT",
    "TunedArtefact",
    "TunedEntry",
    "kdiffusion_sigmas",
    "load_tuned",
    "resolve_tuned",
    "scheduler_settings",
    "shipped",
    "tune",
    "weights_hash",
]

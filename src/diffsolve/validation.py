"""Argument checks at the public API's boundary (:func:`diffsolve.sample`, :func:`solve`,
:func:`diffsolve.generate.generate`, the zoo loaders and the command line).

Every check raises a :class:`~diffsolve.errors.DiffsolveError` subclass whose one-line message
names the argument, what was received and what is accepted, *before* anything is allocated:
a wrong type never reaches arithmetic deep inside a solver, and an absurd budget never reaches
the allocator.

Stated limits:

* ``nfe`` and ``steps`` are at most :data:`MAX_NFE` (100 000). The grid, the solver plan and the
  progress bookkeeping are O(steps); 10^5 model evaluations is beyond any published sampling
  budget by two orders of magnitude, and larger values are almost always typos (the issue
  that prompted this check asked for 10^8 and 10^9).
* The solver state of one sampling call must fit in memory: the estimate is
  ``STATE_COPIES x numel x itemsize`` (the state, the denoised output, a multistep history and
  an injected noise draw are live at once) and it must not exceed the device's total memory
  (physical RAM on CPU, :func:`torch.cuda.mem_get_info`'s total on CUDA).
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import DiffsolveError, GridError, IncompatibleModelError, SolverOptionError

MAX_NFE = 100_000
"""Largest ``nfe`` / ``steps`` accepted (see the module docstring)."""
MAX_SEED = 2**64
"""Seeds are 64-bit: 0 <= seed < 2**64 (larger or negative values would alias others)."""
STATE_COPIES = 4
"""Live copies of the solver state assumed by the memory estimate (a lower bound)."""


class ArgumentError(DiffsolveError):
    """An argument of a public function has the wrong type or a value outside its domain."""


def _type_name(value: object) -> str:
    return type(value).__name__


def as_int(name: str, value: object, *, minimum: int | None = None,
           maximum: int | None = None, error: type[DiffsolveError] = ArgumentError) -> int:
    """``value`` as an int (Python, numpy or torch integer; never bool, str or float), inside
    [minimum, maximum]; otherwise ``error`` naming the argument and the accepted range."""
    lo = "" if minimum is None else f" >= {minimum}"
    hi = "" if maximum is None else f" and <= {maximum}" if lo else f" <= {maximum}"
    want = f"an integer{lo}{hi}"
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise error(f"{name} must be {want}, got {value!r} ({_type_name(value)})")
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    try:
        v = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise error(f"{name} must be {want}, got {value!r} ({_type_name(value)})") from None
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise error(f"{name} must be {want}, got {v}")
    return v


def check_seed(seed: object, name: str = "seed") -> int:
    return as_int(name, seed, minimum=0, maximum=MAX_SEED - 1)


# --------------------------------------------------------------------------------------------
# devices and memory

def check_device(device: object, name: str = "device") -> torch.device | None:
    """A usable ``torch.device`` (None passes through); refuses CUDA/MPS when unavailable."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ArgumentError(f"{name}={device!r} is not a device; accepted: 'cpu', 'cuda', "
                                "'cuda:N', 'mps'") from None
    else:
        raise ArgumentError(f"{name} must be a str or torch.device, got {device!r} "
                            f"({_type_name(device)})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "built without CUDA" if torch.version.cuda is None else "no GPU visible"
            raise ArgumentError(
                f"{name}={str(dev)!r} requested but CUDA is not available (torch "
                f"{torch.__version__}, {why}); use device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ArgumentError(f"{name}={str(dev)!r} but only {count} CUDA device(s) exist "
                                f"(cuda:0 .. cuda:{count - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ArgumentError(f"{name}={str(dev)!r} requested but MPS is not available; "
                                "use device='cpu'")
    elif dev.type not in ("cpu", "meta"):
        raise ArgumentError(f"{name}={str(dev)!r} is not supported; accepted: 'cpu', 'cuda', "
                            "'cuda:N', 'mps'")
    return dev


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (None if unknown)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[1])
        except Exception:  # a broken driver: do not block on the estimate
            return None
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def _gb(b: float) -> str:
    return f"{b / 2**30:.3g} GiB"


def check_memory(shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 what: str = "shape") -> None:
    """Refuse a batch whose solver state cannot fit in the device's memory (estimate:
    :data:`STATE_COPIES` copies of the state)."""
    numel = math.prod(int(s) for s in shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = STATE_COPIES * numel * itemsize
    total = device_memory_bytes(device)
    if total is not None and need > total:
        raise ArgumentError(
            f"{what} {tuple(int(s) for s in shape)} needs about {_gb(need)} for the solver "
            f"state ({STATE_COPIES} copies of {_gb(numel * itemsize)} "
            f"{str(dtype).replace('torch.', '')}) but {device.type} has {_gb(total)}; use a "
            "smaller batch (diffsolve generate splits a large run into shards)")


# --------------------------------------------------------------------------------------------
# shapes

def check_shape(shape: object, name: str = "shape") -> tuple[int, ...]:
    """A batch shape (B, ...) of positive integers."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)):
        raise ArgumentError(f"{name} must be a sequence of positive integers such as "
                            f"(16, 1, 8, 8), or a noise tensor; got {shape!r}")
    if len(shape) < 1:
        raise ArgumentError(f"{name} must have at least one dimension (the batch), got ()")
    return tuple(as_int(f"{name}[{i}]", s, minimum=1) for i, s in enumerate(shape))


def check_model_shape(model: object, sample_shape: Sequence[int], what: str) -> None:
    """A model that declares one sample's shape (zoo models: ``model.shape``) refuses others,
    e.g. 3-channel input to the 1-channel digits model."""
    want = getattr(model, "shape", None)
    if want is None:
        return
    want = tuple(int(s) for s in want)
    got = tuple(int(s) for s in sample_shape)
    if got != want:
        card = getattr(model, "card", None)
        label = f"the model ({card.get('dataset', 'zoo')})" if isinstance(card, dict) else (
            "the model")
        channels = (f"; it has {want[0]} channel(s), got {got[0]}"
                    if len(got) == len(want) == 3 and got[0] != want[0] else "")
        raise IncompatibleModelError(
            f"{what}: {label} takes samples of shape {want} (batch first: (B, "
            f"{', '.join(map(str, want))})), got {got}{channels}")


# --------------------------------------------------------------------------------------------
# solver options

def check_solver_arg(solver: object) -> None:
    """``solver`` is a registered name (str) or a Solver instance."""
    from .solvers import Solver

    if not isinstance(solver, (str, Solver)):
        raise SolverOptionError(f"solver must be a solver name (str, see "
                                f"diffsolve.list_solvers()) or a Solver, got {solver!r} "
                                f"({_type_name(solver)})")


def check_solver_options(solver: object, options: Mapping[str, Any]) -> None:
    """Type-check options of a named solver against its fields' defaults (names are checked
    by :func:`diffsolve.get_solver`): a float option takes a real number, an int option an
    integer, a bool option a bool, a str option a str."""
    check_solver_arg(solver)
    if not isinstance(solver, str) or not options:
        return
    from .solvers import solver_class

    cls = solver_class(solver)  # unknown names raise with a suggestion
    for f in dataclasses.fields(cls):
        if f.name not in options:
            continue
        v, d = options[f.name], f.default
        if d is dataclasses.MISSING or d is None:
            continue
        ok = True
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, int):
            ok = not isinstance(v, bool) and isinstance(v, int)
        elif isinstance(d, float):
            ok = not isinstance(v, bool) and isinstance(v, (int, float))
            if ok and not math.isfinite(float(v)):
                raise SolverOptionError(f"{solver}: option {f.name} must be finite, got {v!r}")
        elif isinstance(d, str):
            ok = isinstance(v, str)
        if not ok:
            raise SolverOptionError(
                f"{solver}: option {f.name} must be a {type(d).__name__} (default {d!r}), "
                f"got {v!r} ({_type_name(v)})")


def parse_option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["eta=0.5", "order=3"]`` -> {"eta": 0.5, "order": 3}; values are JSON (numbers, true/
    false, null) or else plain strings."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, raw = p.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ArgumentError(f"solver option {p!r} must look like NAME=VALUE, e.g. eta=0.5")
        try:
            val = json.loads(raw)
        except ValueError:
            val = raw
        if isinstance(val, float) and not math.isfinite(val):
            raise ArgumentError(f"solver option {key}={raw!r} must be finite")
        out[key] = val
    return out


def parse_options_json(text: str, name: str = "--solver-options") -> dict[str, Any]:
    """A JSON object of options, e.g. '{"eta": 0.5}'."""
    try:
        val = json.loads(text)
    except ValueError as e:
        raise ArgumentError(f"{name} must be a JSON object such as '{{\"eta\": 0.5}}' "
                            f"({e.msg} at char {e.pos})") from None
    if not isinstance(val, dict):
        raise ArgumentError(f"{name} must be a JSON object such as '{{\"eta\": 0.5}}', got "
                            f"{_type_name(val)}")
    return val


# --------------------------------------------------------------------------------------------
# budgets and grids

def check_budget(nfe: object, steps: object) -> tuple[int | None, int | None]:
    """``nfe`` and ``steps`` as ints in [1, MAX_NFE] (or None)."""
    n = None if nfe is None else as_int("nfe", nfe, minimum=1, maximum=MAX_NFE,
                                        error=SolverOptionError)
    s = None if steps is None else as_int("steps", steps, minimum=1, maximum=MAX_NFE,
                                          error=SolverOptionError)
    return n, s


def _explicit_grid_steps(grid: object) -> tuple[int, bool] | None:
    """(steps, ends at sigma = 0) of an explicit grid (a Grid or a sigma sequence)."""
    from .grids import Grid

    if isinstance(grid, Grid):
        return grid.steps, grid.to_zero
    if isinstance(grid, str):
        return None
    try:
        t = torch.as_tensor(grid, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise GridError(f"grid must be a name, a Grid or a decreasing sequence of sigmas, got "
                        f"{grid!r}") from None
    if t.ndim != 1 or t.numel() < 2:
        return None  # Grid.from_sigmas raises its own, precise error
    return t.numel() - 1, bool(t[-1] == 0)


def check_grid_budget(solver_obj: Any, grid: object, nfe: int | None,
                      steps: int | None) -> None:
    """``nfe``/``steps`` given together with an explicit grid must agree with it: the grid
    fixes the steps, and a different request is refused instead of silently ignored."""
    found = _explicit_grid_steps(grid)
    if found is None:
        return
    grid_steps, grid_to_zero = found
    if steps is not None and steps != grid_steps:
        raise GridError(f"steps={steps} disagrees with the given grid, which has {grid_steps} "
                        "steps; drop `steps` (the grid sets it) or pass a grid of that length")
    if nfe is not None:
        from .sample import steps_for_nfe

        want = steps_for_nfe(solver_obj, nfe, to_zero=grid_to_zero)
        if want != grid_steps:
            raise GridError(
                f"nfe={nfe} disagrees with the given grid: {solver_obj.name} at nfe={nfe} runs "
                f"{want} steps, the grid has {grid_steps}; drop `nfe` (the grid sets the "
                "budget) or pass a grid of that length")


def check_sample_args(args: Mapping[str, Any]) -> None:
    """All checks of :func:`diffsolve.sample`, given its arguments by name (its ``locals()``,
    so that a new parameter of ``sample`` does not change this call)."""
    from .models import Denoiser
    from .sample import _SOLVE_KEYS
    from .solvers import get_solver

    model, shape_or_noise = args["model"], args["shape_or_noise"]
    kwargs = args.get("kwargs") or {}
    solver_options = {k: v for k, v in kwargs.items() if k not in _SOLVE_KEYS}
    if not isinstance(model, Denoiser):
        raise IncompatibleModelError(
            f"model must be a diffsolve Denoiser (wrap your network with Denoiser(net, "
            f"schedule, prediction=...)), got {_type_name(model)}")
    nfe, steps = check_budget(args.get("nfe"), args.get("steps"))
    check_seed(args.get("seed", 0))
    as_int("offset", args.get("offset", 0), minimum=0)
    dtype = args.get("dtype", torch.float32)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentError(f"dtype must be a floating torch.dtype (torch.float32, "
                            f"torch.float64, ...), got {dtype!r}")
    grid_options = args.get("grid_options")
    if grid_options is not None and not isinstance(grid_options, Mapping):
        raise ArgumentError(f"grid_options must be a dict, got {_type_name(grid_options)}")
    dev = check_device(args.get("device"))
    if isinstance(shape_or_noise, Tensor):
        if not shape_or_noise.is_floating_point() or shape_or_noise.ndim < 1 or (
                shape_or_noise.shape[0] < 1):
            raise ArgumentError("a noise tensor must be floating-point with a non-empty batch "
                                f"dimension, got {shape_or_noise.dtype} "
                                f"{tuple(shape_or_noise.shape)}")
        check_model_shape(model, shape_or_noise.shape[1:], "the noise tensor")
    else:
        shape = check_shape(shape_or_noise)
        check_model_shape(model, shape[1:], f"shape {shape}")
        check_memory(shape, dtype, dev or torch.device("cpu"))
    solver = args.get("solver")
    check_solver_options(solver, solver_options)
    grid = args.get("grid")
    if not isinstance(grid, str) and (nfe is not None or steps is not None):
        check_grid_budget(get_solver(solver, **solver_options), grid, nfe, steps)


def check_solve_args(model: object, x: object, solver: object,
                     solver_options: Mapping[str, Any]) -> None:
    """The checks of :func:`diffsolve.solve` done before the loop starts."""
    from .models import Denoiser

    if not isinstance(model, Denoiser):
        raise IncompatibleModelError(
            f"model must be a diffsolve Denoiser, got {_type_name(model)}")
    if isinstance(x, Tensor) and x.ndim >= 1:
        check_model_shape(model, x.shape[1:], "x")
    check_solver_options(solver, solver_options)


# --------------------------------------------------------------------------------------------
# conditioning

def check_cond_batch(model: Any, batch: int) -> None:
    """Tensor keyword arguments (``cond``/``uncond``/``extra_args``) are batch-first: their
    first dimension must equal the state's batch (or be 1 to broadcast, except for batched
    guidance, which concatenates cond and uncond along the batch)."""
    batched = model.guidance_scale is not None and model.batched_guidance
    for label, kwargs in (("cond", model.cond), ("uncond", model.uncond),
                          ("extra_args", model.extra_args)):
        for k, v in kwargs.items():
            if not isinstance(v, Tensor) or v.ndim < 1 or v.shape[0] == batch:
                continue
            if v.shape[0] == 1 and not batched:
                continue
            raise IncompatibleModelError(
                f"{label}[{k!r}] has batch {v.shape[0]} (shape {tuple(v.shape)}) but the state "
                f"x has {batch} samples; tensor keyword arguments are batch-first and must have "
                f"{batch} rows" + ("" if batched else " (or 1, to broadcast)"))

"""Argument checks of :func:`diffsolve.sample` and :func:`diffsolve.solve` that need the
solver registry (the generic ones are :mod:`diffsolve.core.validation`): one clear error,
naming the argument and what is accepted, before anything runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..core.errors import GridError, IncompatibleModelError, SolverOptionError
from ..core.models import Denoiser
from ..core.validation import (
    ArgumentError,
    _explicit_grid_steps,
    _type_name,
    as_int,
    check_budget,
    check_device,
    check_memory,
    check_model_shape,
    check_seed,
    check_shape,
)
from ..solvers import Solver, get_solver, solver_class

#: keyword arguments of :func:`diffsolve.sample` that belong to :func:`diffsolve.solve` (the
#: others are solver options)
SOLVE_KEYS = frozenset({"callback", "progress", "return_trajectory", "denoise_final",
                        "check_finite"})


def check_solver_arg(solver: object) -> None:
    """``solver`` is a registered name (str) or a Solver instance."""
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
            if ok and math.isnan(float(v)):  # inf is left to the solver's own range check
                raise SolverOptionError(f"{solver}: option {f.name} must be a number, got "
                                        f"{v!r}")
        elif isinstance(d, str):
            ok = isinstance(v, str)
        if not ok:
            raise SolverOptionError(
                f"{solver}: option {f.name} must be a {type(d).__name__} (default {d!r}), "
                f"got {v!r} ({_type_name(v)})")


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
        want = solver_obj.steps_for_nfe(nfe, to_zero=grid_to_zero)
        if want != grid_steps:
            raise GridError(
                f"nfe={nfe} disagrees with the given grid: {solver_obj.name} at nfe={nfe} runs "
                f"{want} steps, the grid has {grid_steps}; drop `nfe` (the grid sets the "
                "budget) or pass a grid of that length")


def check_sample_args(args: Mapping[str, Any]) -> None:
    """All checks of :func:`diffsolve.sample`, given its arguments by name (its ``locals()``,
    so that a new parameter of ``sample`` does not change this call)."""
    model, shape_or_noise = args["model"], args["shape_or_noise"]
    kwargs = args.get("kwargs") or {}
    solver_options = {k: v for k, v in kwargs.items() if k not in SOLVE_KEYS}
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
    if not isinstance(model, Denoiser):
        raise IncompatibleModelError(
            f"model must be a diffsolve Denoiser, got {_type_name(model)}")
    if isinstance(x, Tensor) and x.ndim >= 1:
        check_model_shape(model, x.shape[1:], "x")
    check_solver_options(solver, solver_options)

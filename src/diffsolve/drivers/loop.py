"""The sampling loop: grid -> solver steps -> final denoise, with callbacks and guards.

:func:`integrate` is THE loop (plan, steps, final denoise); every fixed-grid driver runs it:
:func:`solve` adds validation, finite checks, callbacks, progress and trajectories through
its per-step hook, and :mod:`.compiled` compiles it bare. :func:`sample` draws the initial
noise itself (per-sample seeded, so results do not depend on batch composition), builds a
named grid sized by the solver's declared cost and calls :func:`solve`. Both return a
:class:`SampleResult`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..core.errors import GridError, SolverOptionError
from ..core.grids import Grid, make_grid
from ..core.models import Denoiser
from ..core.noise import NoiseSource, make_noise
from ..solvers import GridPlan, Solver, get_solver
from .arguments import SOLVE_KEYS, check_sample_args, check_solve_args
from .finite import CheckFinite, FiniteGuard, replayable
from .tuned import resolve_tuned

Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SampleResult:
    """What a sampling run returns.

    Attributes:
        x: the final state (the denoised sample when the grid ends at sigma = 0).
        nfe: model evaluations this run used.
        grid: the grid that was integrated.
        trajectory: states at every grid node (first to last) if requested, else None.
    """

    x: Tensor
    nfe: int
    grid: Grid
    trajectory: list[Tensor] | None = None


def resolve_grid(grid: str | Grid | Sequence[float] | Tensor, model: Denoiser,
                 steps: int | None, **grid_options: Any) -> Grid:
    """A :class:`Grid` from a name (with ``steps``), a Grid, or EDM sigmas (decreasing)."""
    if isinstance(grid, Grid):
        grid.check_range(model.schedule)
        return grid
    if isinstance(grid, str):
        if steps is None:
            raise GridError(f"grid {grid!r} needs `steps` (or `nfe`)")
        return make_grid(grid, steps, model.schedule, **grid_options)
    return Grid.from_sigmas(grid, model.schedule)


def steps_for_nfe(solver: Solver, nfe: int, *, to_zero: bool = True) -> int:
    """The largest grid (intervals) whose run costs at most ``nfe`` evaluations with
    ``solver``, from its declared cost (:meth:`Solver.steps_for_nfe`; warm-up included).

    With ``to_zero`` the last interval is the 1-NFE denoising step.
    """
    return solver.steps_for_nfe(nfe, to_zero=to_zero)


StepHook = Callable[[int, Tensor, Tensor], None]
StateHook = Callable[[int, Tensor], Tensor]


def integrate(solver: Solver, plan: GridPlan, model: Denoiser, noise: NoiseSource | None,
              x: Tensor, *, final_denoise: bool, after_step: StepHook | None = None,
              between_steps: StateHook | None = None) -> Tensor:
    """THE sampling loop: ``solver`` over ``plan`` from state ``x``, then x <- D(x) if
    ``final_denoise``. ``between_steps(i, x) -> x`` may replace the state after step i (a
    corrector, :mod:`diffsolve.drivers.corrector`); ``after_step(i, x, denoised)`` then
    observes it (i = plan.steps for the final denoise). No checks and no host
    synchronisation of its own, so it can be compiled or captured
    (:mod:`diffsolve.drivers.compiled`)."""
    state = solver.init_state(x, plan)
    for i in range(plan.steps):
        out = solver.step(i, x, state, plan, model, noise)  # type: ignore[arg-type]
        x, state = out.x, out.state
        if between_steps is not None:
            x = between_steps(i, x)
        if after_step is not None:
            after_step(i, x, out.denoised)
    if final_denoise:
        denoised = model.data(x, plan.points[-1])
        x = solver.final_data(x, state, plan, denoised)
        if after_step is not None:
            after_step(plan.steps, x, denoised)
    return x


def solve(
    model: Denoiser,
    x: Tensor,
    grid: Grid,
    solver: str | Solver = "dpmpp_2m",
    *,
    noise: NoiseSource | int | str | None = None,
    seed: int | None = None,
    offset: int = 0,
    callback: Callback | None = None,
    progress: bool | None = None,
    return_trajectory: bool = False,
    denoise_final: bool | None = None,
    check_finite: CheckFinite = "auto",
    **solver_options: Any,
) -> SampleResult:
    """Integrate from state ``x`` at ``grid``'s first node to its last.

    Args:
        model: the :class:`Denoiser` (its NFE counter is advanced).
        x: state at the first node, in the schedule's scaling (x = alpha x0 + sigma n).
        grid: the grid; a final sigma = 0 makes the last interval the step x <- D(x).
        solver: a registered name (see :func:`diffsolve.list_solvers`) or a Solver instance.
        noise: noise for stochastic solvers: a NoiseSource, an int seed (per-sample streams),
            "brownian" (a virtual Brownian path over the grid's lambda range, consistent
            across step counts), "zero", a k-diffusion ``noise_sampler(sigma, sigma_next)``,
            or None (per-sample streams).
        seed, offset: per-sample seeds (seed, offset + b) for None / "brownian" noise.
        callback: called after every step with a dict: i, step, sigma, sigma_next, lam, x,
            denoised (k-diffusion's keys plus lam and sigma_next).
        progress: show a tqdm bar; None shows it only when the run lasts over a second.
        return_trajectory: also return the states at every node.
        denoise_final: apply x <- D(x) after the last node when it is not sigma = 0
            (costs one NFE). Grids ending at sigma = 0 always end with it.
        check_finite: "final" tests the result once and, if it is not finite, replays the
            run with per-step checks to name the first failing step and sigma (nothing inside
            the loop); "step" raises at the first non-finite step (one host sync per step);
            "end" tracks the first bad step on the device and raises at the end; "off" skips
            the check; "auto" is "final" when the run can be replayed (deterministic solver or
            keyed noise) and "end" otherwise (see :mod:`diffsolve.drivers.finite`).
        **solver_options: options of the named solver (unknown options raise).
    """
    check_solve_args(model, x, solver, solver_options)
    solver_obj = get_solver(solver, **solver_options)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise SolverOptionError("x must be a floating-point tensor (batch first)")
    if x.ndim < 1 or x.shape[0] < 1:
        raise SolverOptionError(f"x must have a non-empty batch dimension, got {tuple(x.shape)}")
    grid.check_range(model.schedule)
    finite = grid.finite_lams()
    if finite.numel() < 2 and not grid.to_zero:
        raise GridError("the grid has no finite step")
    final_denoise = grid.to_zero or bool(denoise_final)
    plan = solver_obj.plan(model.schedule, finite, denoise_final=final_denoise)
    noise_src = make_noise(noise, x, seed=seed, offset=offset,
                           lam_range=(float(finite[0]), float(finite[-1])))
    guard = FiniteGuard(check_finite, grid, x, can_replay=replayable(solver_obj, noise_src))
    x_in = x
    nfe_start = model.nfe
    trajectory = [x] if return_trajectory else None
    total = plan.steps + (1 if final_denoise else 0)
    sigmas = [p.sigma_edm for p in plan.points] + [0.0]
    bar = tqdm(total=total, disable=progress is False, delay=1.0 if progress is None else 0.0,
               desc=solver_obj.name, leave=False)

    def after_step(i: int, x_i: Tensor, denoised: Tensor) -> None:
        final = i == plan.steps
        if guard.per_step is not None:
            guard.per_step(i, x_i, "the final denoised sample" if final else "the state")
        if trajectory is not None and (not final or grid.to_zero):
            trajectory.append(x_i)
        if callback is not None:
            p = plan.points[min(i, plan.steps)]
            callback({"i": i, "step": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "sigma_next": sigmas[i + 1], "lam": p.lam, "x": x_i,
                      "denoised": denoised})
        bar.update(1)

    quiet = guard.per_step is None and trajectory is None and callback is None and bar.disable
    try:
        x = integrate(solver_obj, plan, model, noise_src, x, final_denoise=final_denoise,
                      after_step=None if quiet else after_step)
    finally:
        bar.close()
    nfe = model.nfe - nfe_start

    def replay() -> None:  # the error path of "final": same input and noise, per-step checks
        try:
            solve(model, x_in, grid, solver_obj, noise=noise_src, progress=False,
                  denoise_final=denoise_final, check_finite="step")
        finally:
            model.nfe = nfe_start + nfe
    guard.finish(x, plan.steps if final_denoise else plan.steps - 1, replay)
    return SampleResult(x=x, nfe=nfe, grid=grid, trajectory=trajectory)


def initial_noise(shape: Sequence[int], *, seed: int = 0, offset: int = 0,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                  ) -> Tensor:
    """Standard-normal initial noise, one stream per sample keyed by (seed, offset + index)."""
    from ..core.noise import PerSampleStreams

    like = torch.empty(tuple(shape), dtype=dtype, device=device)
    streams = PerSampleStreams.from_seed(seed, like.shape[0], offset=offset)
    return streams.normal(like, step=-1, draw=0, lam_from=-math.inf, lam_to=math.inf)


def sample(
    model: Denoiser,
    shape_or_noise: Sequence[int] | Tensor,
    *,
    solver: str | Solver = "dpmpp_2m",
    steps: int | None = None,
    nfe: int | None = None,
    grid: str | Grid | Sequence[float] | Tensor = "karras",
    seed: int = 0,
    offset: int = 0,
    noise: NoiseSource | int | str | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    grid_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> SampleResult:
    """Draw samples from ``model``.

    Args:
        model: a :class:`Denoiser`.
        shape_or_noise: the batch shape (B, ...) to draw initial noise for, or a standard-normal
            tensor to start from (it is scaled by sigma at the first node).
        solver: solver name or instance (default DPM-Solver++(2M)).
        steps: number of grid intervals; or give ``nfe`` and the steps are derived from it.
        nfe: model-evaluation budget (exclusive with ``steps``).
        grid: grid name ("karras", "uniform_lambda", "uniform_t", "quadratic_t",
            "polyexponential"), a :class:`Grid`, EDM sigmas (decreasing, may end in 0), or a
            tuned artefact (:mod:`diffsolve.drivers.tuned`; object or JSON path): then ``nfe`` picks
            its entry, which sets the grid, the solver (unless ``solver`` has its own entry
            at that budget) and the solver's options.
            Named grids end at sigma = 0 unless grid_options={"to_zero": False}.
        seed, offset: the initial noise of sample b is keyed by (seed, offset + b); stochastic
            solvers draw from the same per-sample streams unless ``noise`` says otherwise.
        noise: noise source for stochastic solvers (see :func:`solve`).
        dtype, device: of the state when drawing noise (ignored for a given noise tensor).
        grid_options: options of the named grid (e.g. rho, sigma_min, to_zero).
        **kwargs: passed to :func:`solve` (callback, progress, return_trajectory,
            denoise_final, check_finite) and the solver's options.
    """
    tuned = resolve_tuned(grid, model, solver, nfe, steps)  # grid=<tuned artefact or file>
    if tuned is not None:
        solver, grid, kwargs = tuned[0], tuned[1], {**tuned[2], **kwargs}
    check_sample_args(locals())
    solver_obj = get_solver(solver, **{k: v for k, v in kwargs.items() if k not in SOLVE_KEYS})
    solve_kwargs = {k: v for k, v in kwargs.items() if k in SOLVE_KEYS}
    if (steps is None) == (nfe is None) and not isinstance(grid, Grid) and isinstance(grid, str):
        raise SolverOptionError("give exactly one of `steps` and `nfe`")
    options = dict(grid_options or {})
    if nfe is not None:
        steps = steps_for_nfe(solver_obj, nfe, to_zero=bool(options.get("to_zero", True)))
    the_grid = resolve_grid(grid, model, steps, **options)
    if isinstance(shape_or_noise, Tensor):
        n = shape_or_noise
    else:
        n = initial_noise(shape_or_noise, seed=seed, offset=offset, dtype=dtype,
                          device=device or "cpu")
    first = model.schedule.point(float(the_grid.lams[0]))
    x = first.sigma * n
    return solve(model, x, the_grid, solver_obj, noise=noise, seed=seed, offset=offset,
                 **solve_kwargs)


"""Drive any diffsolve solver one model evaluation at a time (inverted control).

:func:`diffsolve.solve` calls the model itself. Frameworks such as diffusers own the loop
instead: they evaluate the network and hand the output to a scheduler, one evaluation per
call. :class:`Stepper` bridges the two for *every* registered solver, multi-stage ones
included, without re-deriving any solver:

* ``stepper.query`` is the next (state, EvalPoint) the model must be evaluated at;
* ``stepper.feed(D)`` gives the data prediction there and advances the solver until it needs
  the next evaluation (or finishes).

How: a solver step is re-run ("replayed") with a model stand-in that returns the data
predictions already fed for this step and interrupts the step at the first one it does not
have. Solver steps are deterministic functions of (x_i, state, fed predictions, noise), so the
replay reproduces the uninterrupted step exactly (tested to be bitwise equal to
:func:`diffsolve.solve`). A step with s stages is replayed s times, which costs O(s^2) cheap
tensor operations and no extra model evaluation. Noise drawn during a step is cached by
(step, draw), so a generator-backed source is consumed exactly once per draw.

The evaluation points of every solver depend on the grid only, never on x, so the full list
of points (diffusers' ``timesteps``) is known before sampling: :func:`evaluation_points`.

Why not the sampling loop (:func:`diffsolve.drivers.loop.integrate`): control is inverted (the
caller evaluates the model), so a step cannot run to completion in one call; the Stepper
replays the solver's own ``step`` instead, and is tested bitwise equal to the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.grids import Grid
from ..core.noise import NoiseSource, ZeroNoise, make_noise
from ..core.schedules import EvalPoint, NoiseSchedule
from ..solvers import Solver, get_solver

if TYPE_CHECKING:
    from ..solvers.base import GridPlan


class _ModelRequest(Exception):
    """Raised inside a replayed step at the first model evaluation not yet fed."""

    def __init__(self, x: Tensor, point: EvalPoint) -> None:
        super().__init__("model evaluation requested")
        self.x = x
        self.point = point


class _ReplayModel:
    """Stands in for a :class:`~diffsolve.Denoiser` inside one replayed solver step."""

    def __init__(self, schedule: NoiseSchedule, fed: list[Tensor]) -> None:
        self.schedule = schedule
        self._fed = fed
        self.used = 0
        self.nfe = 0

    def data(self, x: Tensor, point: EvalPoint) -> Tensor:
        if self.used < len(self._fed):
            d = self._fed[self.used]
            self.used += 1
            return d
        raise _ModelRequest(x, point)

    __call__ = data


class _StepCachedNoise:
    """Caches the noise of the current step by (step, draw) so replays reuse it."""

    def __init__(self, inner: NoiseSource) -> None:
        self.inner = inner
        self._cache: dict[tuple[int, int], Tensor] = {}

    def normal(self, like: Tensor, *, step: int, draw: int, lam_from: float, lam_to: float,
               ) -> Tensor:
        key = (step, draw)
        if key not in self._cache:
            self._cache[key] = self.inner.normal(like, step=step, draw=draw, lam_from=lam_from,
                                                 lam_to=lam_to)
        return self._cache[key]

    def clear(self) -> None:
        self._cache.clear()


class Stepper:
    """One solver run on ``grid`` from state ``x``, advanced one model evaluation at a time.

    Args:
        solver: a registered name or a Solver instance.
        schedule: the model's noise schedule.
        grid: the sampling grid (a final sigma = 0 makes the last update x <- D(x)).
        x: the state at the grid's first node (schedule scaling x = alpha x0 + sigma n).
        noise: noise for stochastic solvers, as :func:`diffsolve.solve` takes it.
        seed, offset: per-sample stream keys when ``noise`` is None.
        denoise_final: as in :func:`diffsolve.solve`.
        **solver_options: the solver's options.
    """

    def __init__(self, solver: str | Solver, schedule: NoiseSchedule, grid: Grid, x: Tensor, *,
                 noise: Any = None, seed: int | None = None, offset: int = 0,
                 denoise_final: bool | None = None, **solver_options: Any) -> None:
        self.solver = get_solver(solver, **solver_options)
        self.schedule = schedule
        grid.check_range(schedule)
        finite = grid.finite_lams()
        self.final_denoise = grid.to_zero or bool(denoise_final)
        self.plan: GridPlan = self.solver.plan(schedule, finite, denoise_final=self.final_denoise)
        inner = make_noise(noise, x, seed=seed, offset=offset,
                           lam_range=(float(finite[0]), float(finite[-1])))
        self._noise = _StepCachedNoise(inner)
        self._x = x
        self._state = self.solver.init_state(x, self.plan)
        self._step = 0
        self._fed: list[Tensor] = []
        self._query: tuple[Tensor, EvalPoint] | None = None
        self.last_denoised: Tensor | None = None
        self.nfe = 0
        self._advance()

    # public surface -------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._query is None

    @property
    def query(self) -> tuple[Tensor, EvalPoint]:
        """(state, point) at which the model must be evaluated next."""
        if self._query is None:
            raise SolverOptionError("the sampler has finished: there is no further evaluation")
        return self._query

    @property
    def step_index(self) -> int:
        """Index of the solver step in progress (== number of steps finished)."""
        return self._step

    @property
    def x(self) -> Tensor:
        """The latest state at a grid node (the result once :attr:`done`)."""
        return self._x

    def replace_state(self, x: Tensor) -> None:
        """Replace the state at the current grid node (before any evaluation of this step),
        e.g. when a pipeline edits its latents between steps (inpainting)."""
        if self._fed or self._query is None:
            raise SolverOptionError("the state can only be replaced at the start of a step")
        self._x = x
        self._advance()

    def feed(self, denoised: Tensor) -> None:
        """Give the data prediction D at :attr:`query` and advance to the next request."""
        x_query, _ = self.query
        if denoised.shape != x_query.shape:
            raise SolverOptionError(
                f"the prediction has shape {tuple(denoised.shape)} but the state has "
                f"{tuple(x_query.shape)}")
        self._fed.append(denoised.to(x_query.dtype))
        self.last_denoised = self._fed[-1]
        self.nfe += 1
        self._advance()

    # engine ---------------------------------------------------------------------------------
    def _advance(self) -> None:
        plan = self.plan
        while self._step < plan.steps:
            model = _ReplayModel(self.schedule, self._fed)
            try:
                out = self.solver.step(self._step, self._x, self._state, plan, model,
                                       self._noise)
            except _ModelRequest as request:
                self._query = (request.x, request.point)
                return
            if model.used != len(self._fed):  # pragma: no cover - solver contract violation
                raise RuntimeError(f"{self.solver.name} used {model.used} of {len(self._fed)} "
                                   "evaluations on replay; its step is not deterministic")
            self._x, self._state = out.x, out.state
            self._step += 1
            self._fed = []
            self._noise.clear()
        if self.final_denoise:
            if not self._fed:
                self._query = (self._x, plan.points[-1])
                return
            self._x = self.solver.final_data(self._x, self._state, plan, self._fed[0])
            self._fed = []
            self.final_denoise = False
        self._query = None


def evaluation_plan(solver: str | Solver, schedule: NoiseSchedule, grid: Grid, *,
                    denoise_final: bool | None = None, **solver_options: Any,
                    ) -> list[tuple[int, EvalPoint]]:
    """(solver step index, point) of every model evaluation on ``grid``, in order: a dry run on
    a 1-element state with a stand-in model (evaluation points never depend on x). The final
    denoising evaluation has step index = number of finite steps."""
    solver = get_solver(solver, **solver_options)
    x = torch.zeros(1, *(solver.feature_shape or (1,)), dtype=torch.float64)
    stepper = Stepper(solver, schedule, grid, x, noise=ZeroNoise(), denoise_final=denoise_final)
    plan = []
    while not stepper.done:
        xq, point = stepper.query
        plan.append((stepper.step_index, point))
        stepper.feed(0.5 * xq)
    return plan


def evaluation_points(solver: str | Solver, schedule: NoiseSchedule, grid: Grid, *,
                      denoise_final: bool | None = None, **solver_options: Any,
                      ) -> list[EvalPoint]:
    """Every point the solver evaluates the model at on ``grid``, in order."""
    return [p for _, p in evaluation_plan(solver, schedule, grid, denoise_final=denoise_final,
                                          **solver_options)]

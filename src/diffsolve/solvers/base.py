"""Solver contract, the solver registry and shared step helpers.

A solver is a frozen dataclass of options with class-level capabilities (``order``,
``stochastic``, ``nfe_per_step``). It never holds run state: :meth:`Solver.plan` turns a grid
into host-side float64 coefficients once per run, :meth:`Solver.init_state` makes the initial
state (e.g. an empty multistep history), and :meth:`Solver.step` maps (x_i, state) to
(x_{i+1}, state) using only tensor arithmetic with those precomputed Python floats, so the
loop performs no host synchronisation.

Grids reaching a solver are finite: a final sigma = 0 node is handled by the sampling loop as
the denoising step x <- D(x), the h -> inf limit of every data-prediction exponential
integrator (see :mod:`diffsolve.grids`).
"""

from __future__ import annotations

import abc
import difflib
import itertools
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..errors import SolverOptionError
from ..schedules import EvalPoint, NoiseSchedule

if TYPE_CHECKING:
    from ..models import Denoiser
    from ..noise import NoiseSource


@dataclass(frozen=True)
class GridPlan:
    """What every plan carries: the grid's evaluation points and step sizes.

    Attributes:
        points: EvalPoint at each finite grid node (len = steps + 1).
        h: lambda step sizes h_i = lam_{i+1} - lam_i (len = steps).
        extra: solver-specific precomputed coefficients, one entry per step.
    """

    points: tuple[EvalPoint, ...]
    h: tuple[float, ...]
    extra: tuple[Any, ...] = ()

    @property
    def steps(self) -> int:
        return len(self.h)


@dataclass(frozen=True)
class StepOutput:
    """Result of one solver step: the new state, the solver state and the latest D."""

    x: Tensor
    state: Any
    denoised: Tensor


@dataclass(frozen=True)
class Solver(abc.ABC):
    """Base class of every solver. Subclasses are frozen dataclasses registered by name.

    Class attributes (capabilities read by the tests):
        name: registry key.
        order: convergence order of the deterministic (eta = 0) method on smooth problems.
        stochastic: whether the solver injects noise (with its default options).
        nfe_per_step: model evaluations per full step.
        reference: paper and equations implemented.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    nfe_per_step: ClassVar[int] = 1
    reference: ClassVar[str] = ""

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        """Precompute evaluation points and per-step coefficients (float64, on the host).

        Args:
            schedule: the model's noise schedule.
            lams: finite, strictly increasing lambdas (steps + 1 nodes).
            denoise_final: whether the loop appends the denoising step x <- D(x) after the
                last node (multistep solvers count it when lowering their final orders).
        """
        lam_list = [float(v) for v in lams]
        points = tuple(schedule.point(v) for v in lam_list)
        h = tuple(b - a for a, b in itertools.pairwise(lam_list))
        extra = tuple(self.step_coefficients(schedule, points, i, denoise_final)
                      for i in range(len(h)))
        return GridPlan(points=points, h=h, extra=extra)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> Any:
        """Per-step coefficients for step i, from nodes ``points`` (override; default none)."""
        return None

    def init_state(self, x: Tensor, plan: GridPlan) -> Any:
        """Initial solver state (e.g. empty history)."""
        return None

    @abc.abstractmethod
    def step(self, i: int, x: Tensor, state: Any, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        """Advance from grid node i to node i + 1."""

    def nfe(self, steps: int) -> int:
        """Model evaluations for ``steps`` finite steps (the final denoise is counted apart)."""
        return self.nfe_per_step * steps

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_REGISTRY: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator adding a solver to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise TypeError(f"solver name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def list_solvers() -> list[str]:
    """Names of every registered solver, sorted."""
    return sorted(_REGISTRY)


def solver_class(name: str) -> type[Solver]:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise SolverOptionError(
            f"unknown solver {name!r}.{hint} Available: {', '.join(list_solvers())}") from None


def get_solver(name: str | Solver, **options: Any) -> Solver:
    """Build a solver by name with keyword options (unknown options raise)."""
    if isinstance(name, Solver):
        if options:
            raise SolverOptionError("options were given together with a solver instance")
        return name
    cls = solver_class(name)
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise SolverOptionError(
            f"solver {name!r} has no option(s) {unknown}; valid options: {sorted(valid) or 'none'}")
    return cls(**options)


def check_range(solver: str, option: str, value: float, lo: float, hi: float) -> None:
    """Raise :class:`SolverOptionError` unless lo <= value <= hi."""
    if not (lo <= value <= hi):
        raise SolverOptionError(
            f"{solver}: option {option}={value!r} is out of range [{lo}, {hi}]")


def check_choice(solver: str, option: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise SolverOptionError(
            f"{solver}: option {option}={value!r} must be one of {list(choices)}")


MAX_ETA = 100.0
MAX_S_NOISE = 10.0


def check_sde_options(solver: str, eta: float, s_noise: float) -> None:
    """Validate the stochasticity eta in [0, 100] and the noise scale s_noise in [0, 10]."""
    check_range(solver, "eta", eta, 0.0, MAX_ETA)
    check_range(solver, "s_noise", s_noise, 0.0, MAX_S_NOISE)

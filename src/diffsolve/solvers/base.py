"""The solver contract, the registry and the option checks shared by every solver.

**The implementer's contract** (read this before writing a solver; ``docs/adding_a_solver.md``
walks through one):

A solver is a frozen dataclass of *options* with class-level ``name`` and ``reference``. It
never holds run state. Everything a driver needs to know about it is declared once, on the
configured instance, and every driver and test reads it from there:

* ``order`` -- global convergence order of the configured method (its eta = 0 limit for
  stochastic solvers) as the step size h -> 0 on smooth problems, derived from the options
  (e.g. a multistep method of order 3 started with lower-order steps is globally O(h^2), so it
  declares 2). ``tests/test_convergence.py`` measures it for every solver.
* ``weak_order`` -- for a configured solver that injects noise, the weak order of its
  distribution error (measured exactly on Gaussian data in ``tests/test_weak_order.py``);
  None for a deterministic configuration. ``stochastic`` is ``weak_order is not None``.
* ``step_evaluations(steps, denoise_final)`` -- the model evaluations of each finite step
  (warm-up steps included). It is THE cost declaration: :meth:`nfe` (the whole run's count,
  the final denoise included) and :meth:`steps_for_nfe` (the largest grid that fits a budget)
  are derived from it and never overridden. A test runs every solver and option set through
  every driver and asserts counted == declared.

The methods a solver implements:

* ``plan(schedule, lams, denoise_final=...) -> GridPlan``: host-side, float64, once per run.
  Turns the grid into evaluation points, step sizes and per-step coefficients
  (``GridPlan.extra``), and records ``step_evaluations`` in ``GridPlan.evaluations``. The
  default implementation calls :meth:`step_coefficients` for every step.
* ``init_state(x, plan)``: the initial solver state (e.g. an empty history).
* (optional) ``final_data(x, state, plan, denoised)``: the final step into sigma = 0 from
  the evaluation the loop made there; default x <- D(x).
* ``step(i, x, state, plan, model, noise) -> StepOutput``: grid node i -> i + 1. Tensor
  arithmetic with the plan's Python floats only: no ``.item()``, no Python ``if`` on a device
  tensor (no host synchronisation, tested in ``tests/test_no_host_sync.py``), exactly
  ``plan.evaluations[i]`` calls of ``model.data``, and all randomness from
  ``noise.normal(x, step=i, draw=j, lam_from=..., lam_to=...)``, keyed by (step, draw) so
  that a sample's noise depends only on its seed, never on the batch (``diffsolve.noise``).

Grids reaching a solver are finite: a final sigma = 0 node is handled by the sampling loop as
the denoising step x <- D(x), the h -> inf limit of every data-prediction exponential
integrator (see :mod:`diffsolve.core.grids`). Shared machinery lives in
:mod:`diffsolve.solvers.engines`; a solver file imports engines and this module only.
"""

from __future__ import annotations

import abc
import difflib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, final

from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.schedules import EvalPoint, NoiseSchedule
from ..core.validation import MAX_NFE

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource


@dataclass(frozen=True)
class GridPlan:
    """What every plan carries: the grid's evaluation points and step sizes.

    Attributes:
        points: EvalPoint at each finite grid node (len = steps + 1).
        h: lambda step sizes h_i = lam_{i+1} - lam_i (len = steps).
        extra: solver-specific precomputed coefficients, one entry per step.
        evaluations: model evaluations of each step (the solver's ``step_evaluations``).
    """

    points: tuple[EvalPoint, ...]
    h: tuple[float, ...]
    extra: tuple[Any, ...] = ()
    evaluations: tuple[int, ...] = ()

    @property
    def steps(self) -> int:
        return len(self.h)

    def with_extra(self, extra: Sequence[Any]) -> GridPlan:
        """This plan with solver-specific per-step coefficients."""
        return replace(self, extra=tuple(extra))


@dataclass(frozen=True)
class StepOutput:
    """Result of one solver step: the new state, the solver state and the latest D."""

    x: Tensor
    state: Any
    denoised: Tensor


@dataclass(frozen=True)
class Solver(abc.ABC):
    """Base class of every solver (the module docstring is the implementer's contract).

    Class attributes:
        name: registry key.
        title: the method in a few words (the solver tables).
        reference: paper and equations implemented.
        renamed_options: old option name -> current name, accepted by :func:`get_solver`.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    renamed_options: ClassVar[dict[str, str]] = {}

    # -- declared once, on the configured instance --------------------------------------------
    @property
    @abc.abstractmethod
    def order(self) -> int:
        """Global convergence order of the configured method (eta = 0 limit), h -> 0."""

    @property
    def weak_order(self) -> float | None:
        """Weak order when the configured solver injects noise; None when it does not."""
        return None

    @property
    def stochastic(self) -> bool:
        """Whether the configured solver injects noise."""
        return self.weak_order is not None

    @abc.abstractmethod
    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        """Model evaluations of each of ``steps`` finite steps (the cost declaration).

        Args:
            steps: number of finite grid steps.
            denoise_final: whether the loop's denoising step x <- D(x) follows the last node
                (multistep solvers lower their final orders with it; it is not one of the
                ``steps`` and is counted by :meth:`nfe`).
        """

    # -- derived, never overridden --------------------------------------------------------------
    @final
    def nfe(self, steps: int, *, denoise_final: bool) -> int:
        """Model evaluations of a whole run: ``steps`` finite steps, plus 1 for the final
        denoise when ``denoise_final`` (a grid ending at sigma = 0 always has it)."""
        if steps < 0:
            raise SolverOptionError(f"{self.name}: steps must be >= 0, got {steps}")
        return sum(self.step_evaluations(steps, denoise_final)) + (1 if denoise_final else 0)

    @property
    @final
    def steady_evaluations(self) -> int:
        """Evaluations of one step past the warm-up and before the final steps (the
        "NFE per step" of the solver tables), from :meth:`step_evaluations`."""
        return self.step_evaluations(2 * STEADY_PROBE, False)[STEADY_PROBE]

    @final
    def steps_for_nfe(self, budget: int, *, to_zero: bool = True) -> int:
        """The largest grid (number of intervals) whose run costs at most ``budget`` evaluations.

        With ``to_zero`` the grid ends at sigma = 0 and its last interval is the 1-NFE
        denoising step (counted). Raises :class:`SolverOptionError` when not even one finite
        step fits. Search by bisection on :meth:`nfe` (monotone in the step count).
        """
        def cost(finite: int) -> int:
            return self.nfe(finite, denoise_final=to_zero)

        if budget > MAX_NFE:
            raise SolverOptionError(f"an NFE budget of {budget} is over the limit of {MAX_NFE}")
        if cost(1) > budget:
            raise SolverOptionError(
                f"{self.name} needs at least {cost(1)} NFE with these options, got {budget}")
        lo, hi = 1, 2
        while cost(hi) <= budget:  # cost grows at least by 1 per step
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
        return lo + (1 if to_zero else 0)

    # -- the three methods of a solver ---------------------------------------------------------
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
        return GridPlan(points=points, h=h, extra=extra,
                        evaluations=self.step_evaluations(len(h), denoise_final))

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> Any:
        """Per-step coefficients for step i, from nodes ``points`` (override; default none)."""
        return None

    def init_state(self, x: Tensor, plan: GridPlan) -> Any:
        """Initial solver state (e.g. empty history)."""
        return None

    @property
    def feature_shape(self) -> tuple[int, ...] | None:
        """The one sample shape this configured solver accepts (e.g. per-feature model
        statistics), or None if any; dry runs (:func:`~diffsolve.stepper.evaluation_plan`)
        use it for their stand-in state."""
        return None

    @abc.abstractmethod
    def step(self, i: int, x: Tensor, state: Any, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        """Advance from grid node i to node i + 1."""

    def final_data(self, x: Tensor, state: Any, plan: GridPlan, denoised: Tensor) -> Tensor:
        """The result of the loop's final step into sigma = 0 from the last state ``x`` and
        ``denoised`` = D(x) at the last node (its one evaluation, counted by :meth:`nfe`).
        Default: x <- D(x), the h -> inf limit of every data-prediction exponential
        integrator; a solver whose own last step differs (PNDM's PLMS step) overrides it."""
        return denoised

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def uniform_evaluations(per_step: int, steps: int) -> tuple[int, ...]:
    """``per_step`` evaluations in each of ``steps`` steps (the usual declaration)."""
    return (per_step,) * steps


#: a step index past every warm-up, used to read the steady per-step cost
STEADY_PROBE = 8

_REGISTRY: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator adding a solver to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise TypeError(f"solver name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def list_solvers(*, sort: bool = True) -> list[str]:
    """Names of every registered solver, sorted (or in registration order: by family)."""
    return sorted(_REGISTRY) if sort else list(_REGISTRY)


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
    options = {cls.renamed_options.get(k, k): v for k, v in options.items()}
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

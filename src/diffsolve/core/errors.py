"""Named errors raised at the library's boundary.

Every error says what was received, what is allowed and, where there is one, the likely fix.
All subclass :class:`DiffsolveError`, itself a :class:`ValueError`, so ``except ValueError``
keeps working for callers who do not care about the distinction.
"""

from __future__ import annotations


class DiffsolveError(ValueError):
    """Base class of every error diffsolve raises on bad input."""


class ScheduleError(DiffsolveError):
    """A noise schedule was built with, or asked for, values outside its domain."""


class GridError(DiffsolveError):
    """A time-step grid is not strictly monotone, not finite, too short or out of range."""


class SolverOptionError(DiffsolveError):
    """A solver name is unknown or one of its options is out of range."""


class IncompatibleModelError(DiffsolveError):
    """A model's parameterization, output shape or dtype does not fit the request."""


class NonFiniteError(DiffsolveError, FloatingPointError):
    """The state or a model output became NaN or infinite during sampling.

    Attributes:
        step: index of the solver step where the non-finite value appeared.
        sigma: the (EDM-scaled) noise level sigma/alpha at that step.
    """

    def __init__(self, message: str, *, step: int, sigma: float) -> None:
        super().__init__(message)
        self.step = step
        self.sigma = sigma

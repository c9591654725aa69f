"""diffsolve: fast, training-free samplers for pretrained diffusion models.

Quick start::

    import diffsolve
    from diffsolve.zoo import GaussianMixture
    from diffsolve.schedules import EDM

    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM())
    result = diffsolve.sample(model, (1000, 2), solver="dpmpp_2m", nfe=10)
"""

from . import _aliases  # noqa: F401  (old module paths keep working)
from .core import VERSION, grids, schedules
from .core.errors import (
    DiffsolveError,
    GridError,
    IncompatibleModelError,
    NonFiniteError,
    ScheduleError,
    SolverOptionError,
)
from .core.grids import Grid, make_grid
from .core.models import Denoiser
from .drivers.loop import SampleResult, initial_noise, sample, solve, steps_for_nfe
from .solvers import get_solver, list_solvers

__version__ = VERSION

__all__ = [
    "Denoiser",
    "DiffsolveError",
    "Grid",
    "GridError",
    "IncompatibleModelError",
    "NonFiniteError",
    "SampleResult",
    "ScheduleError",
    "SolverOptionError",
    "__version__",
    "get_solver",
    "grids",
    "initial_noise",
    "list_solvers",
    "make_grid",
    "sample",
    "schedules",
    "solve",
    "steps_for_nfe",
]

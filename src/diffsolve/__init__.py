"""diffsolve: fast, training-free samplers for pretrained diffusion models.

Quick start::

    import diffsolve
    from diffsolve.zoo import GaussianMixture
    from diffsolve.schedules import EDM

    gmm = GaussianMixture.default_2d()
    model = gmm.denoiser(EDM())
    result = diffsolve.sample(model, (1000, 2), solver="dpmpp_2m", nfe=10)
"""

from . import grids, schedules
from .errors import (
    DiffsolveError,
    GridError,
    IncompatibleModelError,
    NonFiniteError,
    ScheduleError,
    SolverOptionError,
)
from .grids import Grid, make_grid
from .models import Denoiser
from .sample import SampleResult, initial_noise, sample, solve, steps_for_nfe
from .solvers import get_solver, list_solvers

__version__ = "0.1.0"

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

"""Solvers. Importing this package registers every solver: this import list is the registry,
in the order of the generated solver tables (by family).

One file per family; shared machinery in :mod:`.engines`; the contract in :mod:`.base`.
"""

# isort: off
from . import euler_heun  # noqa: F401
from . import dpm_solver  # noqa: F401
from . import dpmpp_multistep  # noqa: F401
from . import unipc  # noqa: F401
from . import deis  # noqa: F401
from . import lms_ipndm  # noqa: F401
from . import dpm_solver_v3  # noqa: F401
from . import momentum  # noqa: F401
from . import forward_value  # noqa: F401
from . import seeds  # noqa: F401
from . import sa_solver  # noqa: F401
from . import er_sde  # noqa: F401
from . import ancestral  # noqa: F401
from . import edm_stochastic  # noqa: F401
from . import kdiffusion_samplers  # noqa: F401
from . import dpm_multistep  # noqa: F401
from . import pndm  # noqa: F401
# isort: on
from .base import GridPlan, Solver, StepOutput, get_solver, list_solvers, register, solver_class

__all__ = ["GridPlan", "Solver", "StepOutput", "get_solver", "list_solvers", "register",
           "solver_class"]

"""Solvers. Importing this package registers every solver; this import list is the registry."""

from . import (  # noqa: F401
    deis,
    dpm_multistep,
    dpm_solver_v3,
    euler_heun,
    forward_value,
    linear_multistep,
    momentum,
    multistep,
    pndm,
    sa_solver,
    seeds,
    singlestep,
    stochastic,
    unipc,
)
from .base import GridPlan, Solver, StepOutput, get_solver, list_solvers, register, solver_class

__all__ = ["GridPlan", "Solver", "StepOutput", "get_solver", "list_solvers", "register",
           "solver_class"]

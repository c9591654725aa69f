"""Solvers. Importing this package registers every solver; this import list is the registry."""

from . import euler_heun, multistep, sa_solver, seeds, singlestep, stochastic  # noqa: F401
from .base import GridPlan, Solver, StepOutput, get_solver, list_solvers, register, solver_class

__all__ = ["GridPlan", "Solver", "StepOutput", "get_solver", "list_solvers", "register",
           "solver_class"]

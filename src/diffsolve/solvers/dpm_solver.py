r"""Single-step exponential RK solvers: DDIM, DPM-Solver-1/2/3, DPM-Solver++(2S/3S).

Each is a stage table (:class:`~diffsolve.solvers.engines.stages.StageTable`) run by the
single-step engine (:mod:`diffsolve.solvers.engines.stages`, where the stage update is written
out with its sources); this file holds the tables, the options and their checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import check_choice, check_range, register
from .engines.stages import Form, StageSolver, StageTable


@register
@dataclass(frozen=True)
class DDIM(StageSolver):
    """DDIM (Song et al. 2021, eq. 12 with eta = 0) = DPM-Solver-1 = DPM-Solver++(1).

    x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) D(x_s). Order 1; 1 NFE per step.
    """

    name = "ddim"
    title = "DDIM = DPM-Solver++(1)"
    order = 1
    reference = "Song et al. 2021 (arXiv 2010.02502) eq. 12; Lu et al. 2022 eq. 3.7"

    def table(self) -> StageTable:
        return StageTable.first_order()


@dataclass(frozen=True)
class _DPMSolverK(StageSolver):
    """DPM-Solver-k in noise (original) or data prediction form (not registered)."""

    prediction: Form = "noise"

    def __post_init__(self) -> None:
        check_choice(self.name, "prediction", self.prediction, ("noise", "data"))

    @property
    def form(self) -> Form:
        return self.prediction


@register
@dataclass(frozen=True)
class DPMSolver1(_DPMSolverK):
    """DPM-Solver-1 (Lu et al. 2022, eq. 3.7): x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps.

    ``prediction="data"`` gives DPM-Solver++(1) = DDIM. Order 1; 1 NFE per step.
    """

    name = "dpm_solver_1"
    title = "DPM-Solver-1 (noise or data form)"
    order = 1
    reference = "Lu et al. 2022 (arXiv 2206.00927) eq. 3.7"

    def table(self) -> StageTable:
        return StageTable.first_order()


@register
@dataclass(frozen=True)
class DPMSolver2(_DPMSolverK):
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1): midpoint stage at lambda_s + r1 h.

    Order 2; 2 NFE per step. ``prediction="data"`` gives DPM-Solver++(2S).

    Args:
        prediction: "noise" (the paper's form) or "data".
        r1: stage fraction in (0, 1]; 0.5 by default.
    """

    name = "dpm_solver_2"
    title = "DPM-Solver-2 (noise or data form)"
    order = 2
    reference = "Lu et al. 2022 (arXiv 2206.00927) Alg. 1 and eq. 3.8"
    r1: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "r1", self.r1, 1e-3, 1.0)

    def table(self) -> StageTable:
        return StageTable.second_order(self.r1, "phi_1")


@register
@dataclass(frozen=True)
class DPMSolver3(_DPMSolverK):
    """DPM-Solver-3 (Lu et al. 2022, Alg. 2): stages at r1 = 1/3 and r2 = 2/3 of the step.

    Order 3; 3 NFE per step. ``prediction="data"`` gives DPM-Solver++(3S).
    """

    name = "dpm_solver_3"
    title = "DPM-Solver-3 (noise or data form)"
    order = 3
    reference = "Lu et al. 2022 (arXiv 2206.00927) Alg. 2 and eq. 3.9"
    r1: float = 1.0 / 3.0
    r2: float = 2.0 / 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "r2", self.r2, 2e-3, 1.0)
        if not (0 < self.r1 < self.r2 <= 1):
            check_range(self.name, "r1 < r2", self.r1, 1e-3, self.r2 - 1e-3)

    def table(self) -> StageTable:
        return StageTable.third_order(self.r1, self.r2)


@register
@dataclass(frozen=True)
class DPMSolverPP2S(StageSolver):
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1): data prediction, midpoint stage at r h.

    x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1)((1 - 1/(2r)) D_s + 1/(2r) D_r).
    Order 2; 2 NFE per step.
    """

    name = "dpmpp_2s"
    title = "DPM-Solver++(2S)"
    order = 2
    reference = "Lu et al. 2022b (arXiv 2211.01095) Alg. 1"
    r: float = 0.5

    def __post_init__(self) -> None:
        check_range(self.name, "r", self.r, 1e-3, 1.0)

    def table(self) -> StageTable:
        return StageTable.second_order(self.r, "phi_1")


@register
@dataclass(frozen=True)
class DPMSolverPP3S(StageSolver):
    """DPM-Solver++(3S): data-prediction DPM-Solver-3, stages at 1/3 and 2/3.

    Order 3; 3 NFE per step (Lu et al. 2022b, App. B "singlestep third order").
    """

    name = "dpmpp_3s"
    title = "DPM-Solver++(3S)"
    order = 3
    reference = "Lu et al. 2022b (arXiv 2211.01095) App. B; Lu et al. 2022 Alg. 2"

    def table(self) -> StageTable:
        return StageTable.of_order(3)

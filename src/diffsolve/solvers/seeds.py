r"""SEEDS-1/2/3: exponential SDE solvers (Gonzalez et al. 2023, arXiv 2305.14267).

They integrate the variance-controlled reverse SDE in lambda (research note
seeds_sa_solver.md Sec. 1.2)

    dx = [(d log sigma/d lambda - eta) x + (1 + eta) alpha D(x, lambda)] d lambda
         + sqrt(2 eta) sigma dW_lambda,

eta = 1 being the paper's SDE and eta = 0 the probability-flow ODE, with the linear part and
the noise variance exact (SEEDS abstract; note Sec. 1.3). Each solver is a stage table run by
the single-step exponential RK engine (:mod:`.engines.stages`) with k = 1 + eta in every
weight and the exact Ornstein-Uhlenbeck split of the Brownian increment between stages
(note Sec. 2.2): a stage reuses the noise of the sub-intervals before it, damped by
e^{-eta dl}, and adds fresh noise only for its own sub-interval. This is correct for every
stage fraction r (the official code's split is exact only for equal sub-intervals, note
Sec. 2.2 / defect 4b).

* SEEDS-1 (1 NFE):  x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t (1 - e^{-kh}) D_s
  + sigma_t sqrt(1 - e^{-2 eta h}) xi  (note Sec. 2.1; = DDIM at eta = 0, the DDPM posterior
  step at eta = 1, note Sec. 1.4).
* SEEDS-2 (2 NFE, stage at r): "phi_1" (official 2a; DPM-Solver++(2S) at eta = 0) or "phi_2"
  (official 2b, the paper's eq. 53 per ComfyUI PR #11309).
* SEEDS-3 (3 NFE, stages r1 < r2): phi_2-type stages; DPM-Solver++(3S) at eta = 0. The
  official repository's data-prediction stage-3 coefficient is wrong (note defect 4a); this
  is the corrected form. Its weak order is 2, not 3 (note Appendix B; our measurement in
  docs/sde_solvers.md).

The noise-prediction form (``prediction="noise"``; the official code's default for SEEDS-3) is
offered for SEEDS-1/2/3 (at eta = 0 SEEDS-3 noise form is DPM-Solver-3) and is not recommended:
it injects sigma_t sqrt(eta (e^{2h} - 1)) noise and relies on the eps-integral to cancel it
(note Sec. 1.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .base import check_choice, check_range, check_sde_options, register
from .engines.stages import Form, StageSolver, StageTable


@dataclass(frozen=True)
class _SEEDS(StageSolver):
    """Options shared by SEEDS-1/2/3 (not registered itself).

    Weak order (with noise): 1 for SEEDS-1, 2 for SEEDS-2 and SEEDS-3 in data form (the
    paper's Thm. for SEEDS-3 assumes noise that resolves the iterated integrals; with Brownian
    increments it is 2, research note Appendix B); measured in tests/test_weak_order.py.
    """

    eta: float = 1.0
    s_noise: float = 1.0
    prediction: Form = "data"

    @property
    def weak_order(self) -> float | None:
        """min(order, 2), in both forms (the noise form reaches it only at small steps: SEEDS-2
        measures 1.0 on N <= 512 over sigma~ 10 -> 0.1 and 1.96 at N = 1024 -> 2048)."""
        return float(min(self.order, 2)) if self.eta > 0 else None

    def __post_init__(self) -> None:
        check_sde_options(self.name, self.eta, self.s_noise)
        check_choice(self.name, "prediction", self.prediction, self._predictions())

    def _predictions(self) -> tuple[str, ...]:
        return ("data", "noise")

    @property
    def form(self) -> Form:
        return self.prediction


@register
@dataclass(frozen=True)
class SEEDS1(_SEEDS):
    """SEEDS-1 (Gonzalez et al. 2023, Alg. 1 / research note Sec. 2.1).

    Weak order 1 (eta > 0), order 1 at eta = 0; 1 NFE per step.

    Args:
        eta: stochasticity (1: the paper's reverse SDE; 0: the probability-flow ODE = DDIM).
        s_noise: multiplies the injected noise (1 keeps the variance exact; heuristic, P8).
        prediction: "data" (recommended) or "noise".
    """

    name = "seeds_1"
    title = "SEEDS-1 (= DDPM posterior step at η = 1)"
    order = 1
    reference = "Gonzalez et al. 2023 (arXiv 2305.14267) SEEDS-1; research note Sec. 2.1"

    def table(self) -> StageTable:
        return StageTable.first_order()


@register
@dataclass(frozen=True)
class SEEDS2(_SEEDS):
    """SEEDS-2 (Gonzalez et al. 2023; research note Sec. 2.1), stage at lambda_s + r h.

    Weak order 2 (measured, any r), order 2 at eta = 0; 2 NFE per step.

    Args:
        eta, s_noise, prediction: as SEEDS-1.
        r: stage fraction in (0, 1] (default 1/2).
        solver_type: "phi_1" (default; DPM-Solver++(2S) at eta = 0) or "phi_2" (with r = 1
            an exponential Heun in x0).
    """

    name = "seeds_2"
    title = "SEEDS-2 (φ₁ / φ₂, any r, exact OU noise split)"
    order = 2
    reference = "Gonzalez et al. 2023 (arXiv 2305.14267) SEEDS-2 (Butcher 2a/2b, eq. 53)"
    r: float = 0.5
    solver_type: Literal["phi_1", "phi_2"] = "phi_1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "r", self.r, 1e-3, 1.0)
        check_choice(self.name, "solver_type", self.solver_type, ("phi_1", "phi_2"))

    def table(self) -> StageTable:
        return StageTable.second_order(self.r, self.solver_type)


@register
@dataclass(frozen=True)
class SEEDS3(_SEEDS):
    """SEEDS-3 (Gonzalez et al. 2023; research note Sec. 2.1), stages at r1 < r2.

    Weak order 2 (measured; not 3 with Brownian-increment noise), order 3 at eta = 0;
    3 NFE per step.

    Args:
        eta, s_noise, prediction: as SEEDS-1 ("noise": the official code's default form,
            through the same stage engine and exact noise chain).
        r1, r2: stage fractions, 0 < r1 < r2 <= 1 (default 1/3, 2/3).
    """

    name = "seeds_3"
    title = "SEEDS-3 (corrected stage-3 coefficient)"
    order = 3
    reference = "Gonzalez et al. 2023 (arXiv 2305.14267) SEEDS-3 (Butcher 3a, corrected)"
    r1: float = 1.0 / 3.0
    r2: float = 2.0 / 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "r1", self.r1, 1e-3, 1.0)
        check_range(self.name, "r2", self.r2, self.r1 + 1e-3, 1.0)

    def table(self) -> StageTable:
        return StageTable.third_order(self.r1, self.r2)

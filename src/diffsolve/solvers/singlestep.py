r"""Single-step exponential Runge-Kutta solvers: DDIM, DPM-Solver-1/2/3, DPM-Solver++(2S/3S).

All share one engine. A step from lambda_s to lambda_t = lambda_s + h evaluates the model at
stages placed uniformly in lambda (lambda_s + c h, research note pitfall P11), and every
stage, like the final point, is an exact exponential-integrator update
(:func:`diffsolve.expint.stage_coefficients`):

    u_c = lin_c x_s + w0_c F_s + w_c S_c [+ sigma_c n_c]

where F is the data prediction D (data form) or the noise prediction eps (noise form),
S_c = (F_r - F_s)/r is the normalised difference with one earlier stage r, and w_c is either
the phi_2 weight w1_c ("phi_2": a first-order Taylor term, DPM-Solver "dpmsolver" type for
the third order) or w0_c/2 ("phi_1": the midpoint rule, DPM-Solver-2 / DPM-Solver++(2S)).
The bracketed noise is used by the stochastic SEEDS solvers (:mod:`.seeds`).

Stage tables (r_1 = 1/2 for order 2; r_1 = 1/3, r_2 = 2/3 for order 3):

* order 1: x_t from F_s                                      (DPM-Solver eq. 3.7 / DDIM eq. 12)
* order 2: u = stage(r_1); x_t = F_s + "phi_1" slope(u)       (DPM-Solver Alg. 1;
  DPM-Solver++ Alg. 1 "2S")
* order 3: u_1 = stage(r_1); u_2 = stage(r_2) + phi_2 slope(u_1); x_t = F_s + phi_2 slope(u_2)
  (DPM-Solver Alg. 2, "dpmsolver" type, and its data-prediction analogue "3S")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from ..expint import StageCoefficients, ou_decay, ou_std, stage_coefficients
from ..models import eps_from_data
from ..schedules import EvalPoint, NoiseSchedule
from .base import GridPlan, Solver, StepOutput, check_choice, check_range, register

if TYPE_CHECKING:
    from ..models import Denoiser
    from ..noise import NoiseSource

Form = Literal["data", "noise"]
SlopeRule = Literal["phi_1", "phi_2"]


@dataclass(frozen=True)
class Stage:
    """One stage (or the final point) of a single-step method, precomputed for one step.

    Attributes:
        point: where the stage lands (the model is evaluated there unless it is the final one).
        coeffs: exact update coefficients from the step's start to ``point``.
        ref: index of the earlier stage whose difference enters the update (None: no slope).
        r: that stage's lambda offset in units of this stage's offset (normalises the slope).
        rule: "phi_1" (midpoint, weight w0/2) or "phi_2" (weight w1).
        lam_from: start of the lambda sub-interval that this stage's fresh noise covers.
        decay, fresh: the accumulated noise N propagates as N_c = decay N_prev + fresh xi over
            that sub-interval: data form decay = (sigma_c/sigma_prev) e^{-eta dl},
            fresh = sigma_c sqrt(1 - e^{-2 eta dl}) (the exact OU chain, research note Sec. 2.2);
            noise form decay = alpha_c/alpha_prev, fresh = sigma_c sqrt(eta (e^{2 dl} - 1)).
    """

    point: EvalPoint
    coeffs: StageCoefficients
    ref: int | None
    r: float
    rule: SlopeRule
    lam_from: float
    decay: float = 1.0
    fresh: float = 0.0


def build_stages(schedule: NoiseSchedule, p_s: EvalPoint, p_t: EvalPoint,
                 table: tuple[tuple[float, int | None, SlopeRule], ...], *, eta: float,
                 form: Form) -> tuple[Stage, ...]:
    """Precompute the stages of one step from a table of (fraction c, ref stage, rule).

    Fractions are increasing and the last is 1 (the final point). ``ref`` indexes the
    evaluated stages: 1 is the first intermediate stage (0 would be the start itself).
    """
    h = p_t.lam - p_s.lam
    fractions = [0.0] + [c for c, _, _ in table]
    stages = []
    prev = p_s
    for c, ref, rule in table:
        point = p_t if c == 1.0 else schedule.point(p_s.lam + c * h)
        r = fractions[ref] / c if ref is not None else 1.0
        dl = point.lam - prev.lam
        if form == "data":
            decay = (point.sigma / prev.sigma) * ou_decay(eta, dl)
            fresh = point.sigma * ou_std(eta, dl)
        else:
            decay = point.alpha / prev.alpha
            fresh = point.sigma * math.sqrt(eta * math.expm1(2.0 * dl))
        stages.append(Stage(point=point, coeffs=stage_coefficients(p_s, point, eta=eta, form=form),
                            ref=ref, r=r, rule=rule, lam_from=prev.lam, decay=decay, fresh=fresh))
        prev = point
    return tuple(stages)


def run_stages(i: int, x: Tensor, stages: tuple[Stage, ...], p_s: EvalPoint, model: Denoiser,
               noise: NoiseSource | None, *, eta: float, form: Form,
               s_noise: float = 1.0) -> StepOutput:
    """Apply precomputed stages. The accumulated noise N is carried between stages by the
    exact chain N_c = decay N_prev + fresh xi (research note Sec. 2.2), so every stage sees
    the noise of the sub-intervals before it, damped as the exact solution damps it, and
    fresh noise only for its own sub-interval. ``s_noise`` scales every xi (heuristic, P8)."""
    d_s = model.data(x, p_s)
    f_s = d_s if form == "data" else eps_from_data(x, d_s, p_s)
    evals = [f_s]
    acc = None
    for j, st in enumerate(stages):
        c = st.coeffs
        u = torch.mul(x, c.lin).add_(f_s, alpha=c.w0)  # fused, in place on the fresh product
        if st.ref is not None:  # + w (f_ref - f_s)/r
            w = c.w1 if st.rule == "phi_2" else 0.5 * c.w0
            u.add_(evals[st.ref] - f_s, alpha=w / st.r)
        if eta > 0 and noise is not None:
            xi = noise.normal(x, step=i, draw=j, lam_from=st.lam_from, lam_to=st.point.lam)
            if s_noise != 1.0:
                xi = s_noise * xi
            acc = st.fresh * xi if acc is None else st.decay * acc + st.fresh * xi
            u.add_(acc)
        if j == len(stages) - 1:
            return StepOutput(x=u, state=None, denoised=d_s)
        d_u = model.data(u, st.point)
        evals.append(d_u if form == "data" else eps_from_data(u, d_u, st.point))
    raise AssertionError("unreachable: the stage table is empty")


@dataclass(frozen=True)
class SinglestepSolver(Solver):
    """Shared engine of the single-step exponential RK family (not registered itself)."""

    def table(self) -> tuple[tuple[float, int | None, SlopeRule], ...]:
        raise NotImplementedError

    @property
    def form(self) -> Form:
        return "data"

    @property
    def eta(self) -> float:
        return 0.0

    @property
    def s_noise(self) -> float:
        return 1.0

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> tuple[Stage, ...]:
        return build_stages(schedule, points[i], points[i + 1], self.table(), eta=self.eta,
                            form=self.form)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        return run_stages(i, x, plan.extra[i], plan.points[i], model, noise, eta=self.eta,
                          form=self.form, s_noise=self.s_noise)


def _order2(r1: float, rule: SlopeRule) -> tuple[tuple[float, int | None, SlopeRule], ...]:
    return ((r1, None, "phi_2"), (1.0, 1, rule))


def _order3(r1: float, r2: float) -> tuple[tuple[float, int | None, SlopeRule], ...]:
    return ((r1, None, "phi_2"), (r2, 1, "phi_2"), (1.0, 2, "phi_2"))


def stage_table(order: int) -> tuple[tuple[float, int | None, SlopeRule], ...]:
    """Default stage table of the order-1/2/3 method: DDIM, 2S (r = 1/2), 3S (1/3, 2/3)."""
    if order == 1:
        return ((1.0, None, "phi_1"),)
    if order == 2:
        return _order2(0.5, "phi_1")
    if order == 3:
        return _order3(1.0 / 3.0, 2.0 / 3.0)
    raise ValueError(f"no single-step table of order {order}")


@register
@dataclass(frozen=True)
class DDIM(SinglestepSolver):
    """DDIM (Song et al. 2021, eq. 12 with eta = 0) = DPM-Solver-1 = DPM-Solver++(1).

    x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) D(x_s). Order 1; 1 NFE per step.
    """

    name = "ddim"
    order = 1
    reference = "Song et al. 2021 (arXiv 2010.02502) eq. 12; Lu et al. 2022 eq. 3.7"

    def table(self) -> tuple[tuple[float, int | None, SlopeRule], ...]:
        return ((1.0, None, "phi_1"),)


@dataclass(frozen=True)
class _DPMSolverK(SinglestepSolver):
    """DPM-Solver-k in noise (original) or data prediction form."""

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
    order = 1
    reference = "Lu et al. 2022 (arXiv 2206.00927) eq. 3.7"

    def table(self) -> tuple[tuple[float, int | None, SlopeRule], ...]:
        return ((1.0, None, "phi_1"),)


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
    order = 2
    nfe_per_step = 2
    reference = "Lu et al. 2022 (arXiv 2206.00927) Alg. 1 and eq. 3.8"
    r1: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "r1", self.r1, 1e-3, 1.0)

    def table(self) -> tuple[tuple[float, int | None, SlopeRule], ...]:
        return _order2(self.r1, "phi_1")


@register
@dataclass(frozen=True)
class DPMSolver3(_DPMSolverK):
    """DPM-Solver-3 (Lu et al. 2022, Alg. 2): stages at r1 = 1/3 and r2 = 2/3 of the step.

    Order 3; 3 NFE per step. ``prediction="data"`` gives DPM-Solver++(3S).
    """

    name = "dpm_solver_3"
    order = 3
    nfe_per_step = 3
    reference = "Lu et al. 2022 (arXiv 2206.00927) Alg. 2 and eq. 3.9"
    r1: float = 1.0 / 3.0
    r2: float = 2.0 / 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "r2", self.r2, 2e-3, 1.0)
        if not (0 < self.r1 < self.r2 <= 1):
            check_range(self.name, "r1 < r2", self.r1, 1e-3, self.r2 - 1e-3)

    def table(self) -> tuple[tuple[float, int | None, SlopeRule], ...]:
        return _order3(self.r1, self.r2)


@register
@dataclass(frozen=True)
class DPMSolverPP2S(SinglestepSolver):
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1): data prediction, midpoint stage at r h.

    x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1)((1 - 1/(2r)) D_s + 1/(2r) D_r).
    Order 2; 2 NFE per step.
    """

    name = "dpmpp_2s"
    order = 2
    nfe_per_step = 2
    reference = "Lu et al. 2022b (arXiv 2211.01095) Alg. 1"
    r: float = 0.5

    def __post_init__(self) -> None:
        check_range(self.name, "r", self.r, 1e-3, 1.0)

    def table(self) -> tuple[tuple[float, int | None, SlopeRule], ...]:
        return _order2(self.r, "phi_1")


@register
@dataclass(frozen=True)
class DPMSolverPP3S(SinglestepSolver):
    """DPM-Solver++(3S): data-prediction DPM-Solver-3, stages at 1/3 and 2/3.

    Order 3; 3 NFE per step (Lu et al. 2022b, App. B "singlestep third order").
    """

    name = "dpmpp_3s"
    order = 3
    nfe_per_step = 3
    reference = "Lu et al. 2022b (arXiv 2211.01095) App. B; Lu et al. 2022 Alg. 2"

    def table(self) -> tuple[tuple[float, int | None, SlopeRule], ...]:
        return _order3(1.0 / 3.0, 2.0 / 3.0)

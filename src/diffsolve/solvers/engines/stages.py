r"""Single-step exponential Runge-Kutta engine: stage tables and their exact stage updates.

A step from lambda_s to lambda_t = lambda_s + h evaluates the model at stages placed uniformly
in lambda (lambda_s + c h, research note pitfall P11), and every stage, like the final point,
is an exact exponential-integrator update (:func:`diffsolve.core.expint.stage_coefficients`):

    u_c = lin_c x_s + w0_c F_s + w_c S_c [+ N_c]

where F is the data prediction D (data form) or the noise prediction eps (noise form),
S_c = (F_r - F_s)/r is the normalised difference with one earlier stage r, and w_c is either
the phi_2 weight w1_c ("phi_2": a first-order Taylor term, DPM-Solver's "dpmsolver" type for
the third order) or w0_c/2 ("phi_1": the midpoint rule, DPM-Solver-2 / DPM-Solver++(2S)).
N_c is the accumulated Ornstein-Uhlenbeck noise of the stochastic (SEEDS) variants: each stage
reuses the noise of the sub-intervals before it, damped as the exact solution damps it, and
adds fresh noise only for its own sub-interval (research note seeds_sa_solver.md Sec. 2.2).

The standard tables (:meth:`StageTable.of_order`):

* order 1: x_t from F_s                                   (DPM-Solver eq. 3.7 / DDIM eq. 12)
* order 2: u = stage(r); x_t = F_s + "phi_1" slope(u)      (DPM-Solver Alg. 1, r = 1/2;
  DPM-Solver++ Alg. 1 "2S")
* order 3: u_1 = stage(r_1); u_2 = stage(r_2) + phi_2 slope(u_1); x_t = F_s + phi_2 slope(u_2)
  (DPM-Solver Alg. 2, r_1 = 1/3, r_2 = 2/3, "dpmsolver" type; its data-prediction analogue 3S)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from ...core.expint import StageCoefficients, ou_decay, ou_std, stage_coefficients
from ...core.models import eps_from_data
from ...core.schedules import EvalPoint, NoiseSchedule
from ..base import GridPlan, Solver, StepOutput, uniform_evaluations

if TYPE_CHECKING:
    from ...core.models import Denoiser
    from ...core.noise import NoiseSource

Form = Literal["data", "noise"]
SlopeRule = Literal["phi_1", "phi_2"]
MAX_TABLE_ORDER = 3


class StageTableError(ValueError):
    """A stage table that is not a valid single-step method (raised at construction)."""


@dataclass(frozen=True)
class StageRow:
    """One row of a stage table.

    Attributes:
        c: where the row lands, as a fraction of the step in lambda (1 = the step's end).
        ref: the earlier evaluated stage whose normalised difference enters (1 = the first
            intermediate stage; the step's start is stage 0 and has no difference); None for
            no slope term.
        rule: "phi_1" (weight w0/2, the midpoint rule) or "phi_2" (weight w1).
    """

    c: float
    ref: int | None
    rule: SlopeRule


@dataclass(frozen=True)
class StageTable:
    """The stages of a single-step exponential RK method; checks its own consistency.

    Rows are the intermediate stages followed by the step's end (c = 1); an intermediate stage
    may sit at the end too (c = 1: e.g. exponential Heun, r = 1). The model is
    evaluated at the step's start and at every intermediate stage, so a step costs
    ``len(rows)`` evaluations (:attr:`evaluations`).
    """

    rows: tuple[StageRow, ...]

    def __post_init__(self) -> None:
        rows = tuple(StageRow(*r) if not isinstance(r, StageRow) else r for r in self.rows)
        object.__setattr__(self, "rows", rows)
        if not rows:
            raise StageTableError("a stage table needs at least the final row (c = 1)")
        cs = [r.c for r in rows]
        inner = cs[:-1]
        if any(not (0.0 < c <= 1.0) for c in inner) or any(
                b <= a for a, b in itertools.pairwise(inner)):
            raise StageTableError(f"intermediate stage fractions must increase strictly in "
                                  f"(0, 1]: {inner}")
        if cs[-1] != 1.0:
            raise StageTableError(f"the last row must be the step's end (c = 1), got {cs[-1]}")
        for j, r in enumerate(rows):
            if r.ref is not None and not (1 <= r.ref <= j):
                raise StageTableError(f"row {j} refers to stage {r.ref}; only stages 1..{j} "
                                      "are evaluated before it")
            if r.rule not in ("phi_1", "phi_2"):
                raise StageTableError(f"row {j}: unknown slope rule {r.rule!r}")

    @property
    def evaluations(self) -> int:
        """Model evaluations per step: the start plus every intermediate stage."""
        return len(self.rows)

    @classmethod
    def first_order(cls) -> StageTable:
        """DDIM / DPM-Solver-1 (DPM-Solver eq. 3.7; DDIM eq. 12)."""
        return cls(((1.0, None, "phi_1"),))

    @classmethod
    def second_order(cls, r: float, rule: SlopeRule = "phi_1") -> StageTable:
        """One stage at r, then the end with its slope (DPM-Solver Alg. 1; 2S; SEEDS-2)."""
        return cls(((r, None, "phi_2"), (1.0, 1, rule)))

    @classmethod
    def third_order(cls, r1: float, r2: float) -> StageTable:
        """Stages at r1 < r2 with phi_2 slopes (DPM-Solver Alg. 2; 3S; SEEDS-3)."""
        return cls(((r1, None, "phi_2"), (r2, 1, "phi_2"), (1.0, 2, "phi_2")))

    @classmethod
    def of_order(cls, order: int) -> StageTable:
        """The default table of order 1, 2 (r = 1/2) or 3 (1/3, 2/3)."""
        if order == 1:
            return cls.first_order()
        if order == 2:
            return cls.second_order(0.5, "phi_1")
        if order == 3:
            return cls.third_order(1.0 / 3.0, 2.0 / 3.0)
        raise StageTableError(f"no single-step table of order {order} (1..{MAX_TABLE_ORDER})")


@dataclass(frozen=True)
class Stage:
    """One row of a stage table, precomputed for one step.

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


def build_stages(schedule: NoiseSchedule, p_s: EvalPoint, p_t: EvalPoint, table: StageTable, *,
                 eta: float, form: Form) -> tuple[Stage, ...]:
    """Precompute the stages of one step p_s -> p_t from ``table`` (float64, on the host)."""
    h = p_t.lam - p_s.lam
    fractions = [0.0] + [row.c for row in table.rows]
    stages = []
    prev = p_s
    for row in table.rows:
        point = p_t if row.c == 1.0 else schedule.point(p_s.lam + row.c * h)
        r = fractions[row.ref] / row.c if row.ref is not None else 1.0
        dl = point.lam - prev.lam
        if form == "data":
            decay = (point.sigma / prev.sigma) * ou_decay(eta, dl)
            fresh = point.sigma * ou_std(eta, dl)
        else:
            decay = point.alpha / prev.alpha
            fresh = point.sigma * math.sqrt(eta * math.expm1(2.0 * dl))
        stages.append(Stage(point=point, coeffs=stage_coefficients(p_s, point, eta=eta, form=form),
                            ref=row.ref, r=r, rule=row.rule, lam_from=prev.lam, decay=decay,
                            fresh=fresh))
        prev = point
    return tuple(stages)


def run_stages(i: int, x: Tensor, stages: tuple[Stage, ...], p_s: EvalPoint, model: Denoiser,
               noise: NoiseSource | None, *, eta: float, form: Form,
               s_noise: float = 1.0) -> StepOutput:
    """Apply precomputed stages (one model evaluation per stage but the last).

    The accumulated noise N is carried between stages by the exact chain
    N_c = decay N_prev + fresh xi (research note Sec. 2.2); ``s_noise`` scales every xi
    (heuristic, pitfall P8). Noise draws are keyed (step=i, draw=stage index).
    """
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
    raise StageTableError("unreachable: the stage table is empty")


@dataclass(frozen=True)
class StageSolver(Solver):
    """Engine of the single-step families (not registered): a solver file supplies
    :meth:`table` (and ``form`` / ``eta`` / ``s_noise`` where it has them as options).

    Cost: ``table().evaluations`` model evaluations in every step.
    """

    def table(self) -> StageTable:
        """The method's stage table (built from the options)."""
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

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(self.table().evaluations, steps)

    def step_coefficients(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...],
                          i: int, denoise_final: bool) -> tuple[Stage, ...]:
        return build_stages(schedule, points[i], points[i + 1], self.table(), eta=self.eta,
                            form=self.form)

    def step(self, i: int, x: Tensor, state: object, plan: GridPlan, model: Denoiser,
             noise: NoiseSource) -> StepOutput:
        return run_stages(i, x, plan.extra[i], plan.points[i], model, noise, eta=self.eta,
                          form=self.form, s_noise=self.s_noise)

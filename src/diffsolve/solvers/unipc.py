r"""UniPC: unified predictor-corrector in data prediction (Zhao et al. 2023, arXiv 2302.04867).

Step i goes from lambda_i to lambda_{i+1} = lambda_i + h (notation of docs/notation.md). With
hh = -h (the data-prediction form of the paper's algorithms; h -> -h in the noise form), D_m the
data predictions at the previous nodes lambda_{i-m}, r_m = (lambda_{i-m} - lambda_i)/h and
the normalised differences D1_m = (D_m - D_i)/r_m, both parts of UniPC have the same form

    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (1 - e^{-h}) D_i
              - alpha_{i+1} B(hh) sum_m rho_m D1_m,

* UniP-p (predictor, Sec. 3.2, Corollary 3.2): m = 1..p-1 over the past nodes; order p.
* UniC-p (corrector, Sec. 3.1, Theorem 3.1): the same p - 1 past nodes plus the new point
  (r_p = 1, D_p = D(x~_{i+1}) at the *uncorrected* predictor output, which is the model
  evaluation the next step needs anyway, so the corrector costs no NFE); order p + 1.

The rho_m solve the order conditions  sum_m rho_m r_m^{n-1} = hh n! phi_{n+1}(hh)/B(hh),
n = 1..K (K unknowns; this is the paper's a_p = R_p^{-1}(h) g_p(h)/B(h) with the rows of
R_p divided by h^{n-1}), B(hh) = hh ("bh1") or e^{hh} - 1 ("bh2"). When K = 1 (UniP-2 and
UniC-1) the paper's reference implementation uses rho_1 = 1/2 instead of the exact b_1
(they differ by O(h), which does not change the order); we do the same. Only these two
cases depend on B: when the system is solved exactly, B cancels, so bh1 and bh2 differ
only through the K = 1 rules. Consequences (tests/test_unipc_deis_lms.py): UniP-1 is DDIM;
UniP-2 with bh2 is DPM-Solver++(2M) exactly (rho = 1/2, B = e^{-h} - 1 gives its weights).

The corrected x_{i+1} replaces the predictor's output as the start of step i + 1, but the
model output at the uncorrected point is reused in the history (as in the paper). The last
finite step is not corrected (no evaluation follows it inside the solver; with a grid ending
at sigma = 0 the loop's denoising step evaluates D there, as the paper's final step).

Warm-up: predictor orders min(order, i + 1) and corrector orders equal to the predictor
order of the step they correct (as the paper); the first step's local error is then O(h^3)
with the corrector, so UniPC-p is globally O(h^min(p+1, 3)) with this start and
O(h^{p+1}) once the first steps are single-step ("singlestep" warm-up: DPM-Solver++(2S/3S)
for the first p - 1 steps, not corrected). Without the corrector UniP-3 with the
lower-order start is globally O(h^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.expint import lagrange_weights, phi
from ..core.schedules import EvalPoint, NoiseSchedule
from .base import GridPlan, Solver, StepOutput, check_choice, register
from .engines.history import WARMUPS, HistorySolver, StepKind, warmup_stages
from .engines.stages import Stage, run_stages

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource

Variant = Literal["bh1", "bh2"]


@dataclass(frozen=True)
class UniUpdate:
    """x' = lin x + sum_j weights[j] F_j, with F = (D_new,) + history (corrector) or history."""

    lin: float
    weights: tuple[float, ...]


@dataclass(frozen=True)
class UniPCStep:
    """Coefficients used in step i: the predictor of step i and the corrector of step i - 1."""

    predictor: UniUpdate | tuple[Stage, ...]
    corrector: UniUpdate | None
    compensation: tuple[float, ...] | None = None  # DC-Solver's Lagrange weights (DCSolver)


def unipc_rhos(rs: list[float], hh: float, variant: Variant) -> tuple[float, list[float]]:
    """B(hh) and rho_1..rho_K solving sum_m rho_m r_m^{n-1} = hh n! phi_{n+1}(hh)/B(hh)."""
    big_b = hh if variant == "bh1" else math.expm1(hh)
    k = len(rs)
    if k == 0:
        return big_b, []
    if k == 1:
        return big_b, [0.5]  # the K = 1 rule of UniP-2 / UniC-1 (module docstring)
    b = [hh * math.factorial(n) * phi(n + 1, hh) / big_b for n in range(1, k + 1)]
    mat = np.array([[r ** (n - 1) for r in rs] for n in range(1, k + 1)], dtype=np.float64)
    return big_b, [float(v) for v in np.linalg.solve(mat, np.array(b, dtype=np.float64))]


def unipc_update(points: tuple[EvalPoint, ...], i: int, past: int, with_new: bool,
                 variant: Variant) -> UniUpdate:
    """Weights of UniP (``with_new=False``) or UniC (``with_new=True``) for step i.

    ``past`` = number of nodes before i used (p - 1). Weights are ordered
    (D_{i+1} if with_new,) D_i, D_{i-1}, ..., D_{i-past}.
    """
    p_s, p_t = points[i], points[i + 1]
    h = p_t.lam - p_s.lam
    hh = -h
    rs = [(points[i - m].lam - p_s.lam) / h for m in range(1, past + 1)]
    if with_new:
        rs.append(1.0)
    big_b, rhos = unipc_rhos(rs, hh, variant)
    w_past = [-p_t.alpha * big_b * rho / r for rho, r in zip(rhos, rs, strict=True)]
    w_i = -p_t.alpha * math.expm1(hh) - sum(w_past)  # alpha (1 - e^{-h}) D_i - sum of D_i terms
    if with_new:
        weights = (w_past[-1], w_i, *w_past[:-1])
    else:
        weights = (w_i, *w_past)
    return UniUpdate(lin=p_t.sigma / p_s.sigma, weights=weights)


@register
@dataclass(frozen=True)
class UniPC(HistorySolver):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC-p corrector, data prediction.

    1 NFE per step (the corrector reuses the next step's model evaluation; +1-2 NFE per
    warm-up step with ``warmup="singlestep"``). Order p + 1 = 4 with the single-step warm-up;
    3 asymptotically with the paper's lower-order start (docs/multistep_family.md).

    Args:
        solver_order: predictor order p, 1..3 (default 3).
        variant: B(h) = h ("bh1") or e^h - 1 ("bh2", default, as diffusers).
        use_corrector: apply UniC after every step but the last (default True).
        lower_order_final: lower the order of the last steps on grids of fewer than 15 steps.
        lower_order_final_always: with ``lower_order_final``, lower them on every grid
            (diffusers' UniPCMultistepScheduler; its ``from_config`` choice).
        warmup: "lower_order" (the paper) or "singlestep".

    Declared order: p + 1 with the corrector (p without), min(p + 1, 3) with the paper's
    lower-order start (module docstring).
    """

    name = "unipc"
    title = "UniPC: UniP-1..3 + UniC corrector, bh1 / bh2"
    reference = "Zhao et al. 2023 (arXiv 2302.04867) Sec. 3.1-3.2, Thm 3.1, Cor. 3.2"
    solver_order: int = 3
    variant: Variant = "bh2"
    use_corrector: bool = True
    lower_order_final_always: bool = False

    def __post_init__(self) -> None:
        check_choice(self.name, "solver_order", self.solver_order, (1, 2, 3))
        check_choice(self.name, "lower_order_final_always", self.lower_order_final_always,
                     (True, False))
        check_choice(self.name, "variant", self.variant, ("bh1", "bh2"))
        check_choice(self.name, "use_corrector", self.use_corrector, (True, False))
        check_choice(self.name, "warmup", self.warmup, WARMUPS)

    @property
    def history_order(self) -> int:
        return int(self.solver_order)

    @property
    def final_lowering(self) -> bool | str:
        return "always" if self.lower_order_final and self.lower_order_final_always \
            else self.lower_order_final

    @property
    def order(self) -> int:
        # lowering the final orders on every grid (diffusers): the last step is UniP-1 without
        # a corrector, local error O(h^2) on every grid, so the global order is at most 2
        o = super().order
        return min(o, 2) if self.final_lowering == "always" else o

    @property
    def nominal_order(self) -> int:  # UniC-p raises UniP-p by one (Thm. 3.1)
        return self.history_order + (1 if self.use_corrector else 0)

    def warmup_step_order(self, kind: StepKind) -> int:
        # a lower-order multistep start is corrected too; single-step warm-up steps are not
        return kind.order + (1 if self.use_corrector and not kind.singlestep else 0)

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = Solver.plan(self, schedule, lams, denoise_final=denoise_final)
        kinds = self.step_kinds(base.steps, denoise_final)
        extra = []
        for i, kind in enumerate(kinds):
            if kind.singlestep:
                pred: UniUpdate | tuple[Stage, ...] = warmup_stages(schedule, base.points, i,
                                                                    kind)
            else:
                pred = unipc_update(base.points, i, kind.order - 1, False, self.variant)
            corr = None
            if self.use_corrector and i > 0 and not kinds[i - 1].singlestep:
                corr = unipc_update(base.points, i - 1, kinds[i - 1].order - 1, True,
                                    self.variant)
            extra.append(UniPCStep(predictor=pred, corrector=corr))
        return base.with_extra(extra)

    def init_state(self, x: Tensor, plan: GridPlan) -> tuple[tuple[Tensor, ...], Tensor | None]:
        return ((), None)

    def step(self, i: int, x: Tensor, state: tuple[tuple[Tensor, ...], Tensor | None],
             plan: GridPlan, model: Denoiser, noise: NoiseSource) -> StepOutput:
        history = state[0]
        coeffs: UniPCStep = plan.extra[i]
        p = plan.points[i]
        keep = self.history_keep
        if isinstance(coeffs.predictor, tuple):  # single-step warm-up (a prefix, uncorrected)
            out = run_stages(i, x, coeffs.predictor, p, model, noise, eta=0.0, form="data")
            return StepOutput(x=out.x, state=((out.denoised, *history)[:keep], None),
                              denoised=out.denoised)
        d = model.data(x, p)
        x, hist = self.correct(coeffs, x, state, d)
        x_next = self.predict(coeffs, x, hist)
        return StepOutput(x=x_next, state=(hist, x), denoised=d)

    def correct(self, coeffs: UniPCStep, x: Tensor,
                state: tuple[tuple[Tensor, ...], Tensor | None], d: Tensor,
                ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The corrected x_i (UniC of step i - 1 with D at the uncorrected x_i) and the
        history (D_i, D_{i-1}, ...) the predictor of step i uses."""
        history, x_prev = state
        if coeffs.corrector is not None and x_prev is not None:
            c = coeffs.corrector
            x = torch.mul(x_prev, c.lin)  # fresh tensor: accumulate in place
            for w, f in zip(c.weights, (d, *history), strict=False):
                x.add_(f, alpha=w)
        hist = (d, *history)[:self.history_keep]
        if coeffs.compensation is not None:  # DC-Solver: D_i -> its Lagrange value at tau_i
            comp = torch.mul(hist[0], coeffs.compensation[0])
            for w, f in zip(coeffs.compensation[1:], hist[1:], strict=False):
                comp.add_(f, alpha=w)
            hist = (comp, *hist[1:])
        return x, hist

    def predict(self, coeffs: UniPCStep, x: Tensor, hist: tuple[Tensor, ...]) -> Tensor:
        """UniP of step i from the corrected x_i and the history."""
        assert isinstance(coeffs.predictor, UniUpdate)
        x_next = torch.mul(x, coeffs.predictor.lin)
        for w, f in zip(coeffs.predictor.weights, hist, strict=False):
            x_next.add_(f, alpha=w)
        return x_next

    @property
    def history_keep(self) -> int:
        """Model outputs kept in the state (the predictor's order)."""
        return int(self.solver_order)


def dc_weights(points: tuple[EvalPoint, ...], i: int, ratio: float, dc_order: int,
               ) -> tuple[float, ...] | None:
    """DC-Solver's compensation of step i (Zhao et al. 2024, arXiv 2409.03755, Sec. 4.1;
    research note C.2): the Lagrange weights, on the nodes t_i, t_{i-1}, ..., t_{i-K}, of the
    point tau_i = ratio t_i + (1 - ratio) t_{i-1} (the schedule's own time t). None where
    the step has fewer than K + 1 outputs (i < K) or ratio == 1 (no compensation)."""
    if i < dc_order or ratio == 1.0:
        return None
    nodes = [points[i - k].t for k in range(dc_order + 1)]
    tau = ratio * points[i].t + (1.0 - ratio) * points[i - 1].t
    return tuple(lagrange_weights(nodes, tau))


@register
@dataclass(frozen=True)
class DCSolver(UniPC):
    """DC-Solver (Zhao et al. 2024): UniPC whose newest model output is replaced, before each
    predictor, by its Lagrange inter/extrapolation in t through the last K + 1 outputs at
    tau_i = rho_i t_i + (1 - rho_i) t_{i-1} (dynamic compensation of the misalignment between
    the corrected x_i and D evaluated at the uncorrected point; Sec. 4.1).

    The ratios rho_i come from a calibration against a reference trajectory
    (:mod:`diffsolve.drivers.dc_solver`); rho = 1 is no compensation, so without
    ``dc_ratios`` this is UniPC exactly. Cost and order are UniPC's (1 NFE per step; the
    ratios are fitted per grid, so the declared order is UniPC's; with rho = 1 it is UniPC).

    Args (besides UniPC's; defaults of the paper's code: order 3 UniPC, K = 2):
        dc_ratios: rho_i per finite step (None: all 1); steps 0..K-1 are never compensated.
        dc_order: K, the degree of the Lagrange polynomial (1..3).
    """

    name = "dc_solver"
    title = "DC-Solver: UniPC with dynamic compensation (calibrated ratios)"
    reference = "Zhao et al. 2024 (arXiv 2409.03755) Sec. 4.1-4.2"
    dc_ratios: tuple[float, ...] | None = None
    dc_order: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "dc_order", self.dc_order, (1, 2, 3))
        if self.dc_ratios is not None:
            ratios = tuple(float(r) for r in self.dc_ratios)
            if not all(math.isfinite(r) for r in ratios):
                raise SolverOptionError(f"{self.name}: dc_ratios must be finite, got {ratios}")
            object.__setattr__(self, "dc_ratios", ratios)

    @property
    def history_keep(self) -> int:
        return max(int(self.solver_order), int(self.dc_order) + 1)

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = UniPC.plan(self, schedule, lams, denoise_final=denoise_final)
        ratios = self.dc_ratios
        if ratios is None:
            return base
        if len(ratios) != base.steps:
            raise SolverOptionError(
                f"{self.name}: dc_ratios has {len(ratios)} entries for a grid of {base.steps} "
                "finite steps (calibrate for this grid, or predict the ratios with "
                "diffsolve.drivers.dc_solver.predict_ratios)")
        extra = []
        for i, e in enumerate(base.extra):
            comp = None if isinstance(e.predictor, tuple) else dc_weights(
                base.points, i, ratios[i], int(self.dc_order))
            extra.append(replace(e, compensation=comp))
        return base.with_extra(extra)

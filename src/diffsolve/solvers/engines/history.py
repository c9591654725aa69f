r"""Multistep engine: per-step orders, the one warm-up schedule, and the linear update.

Every multistep method here applies, at step i, one linear combination with weights
precomputed on the grid (float64, at plan time):

    x_{i+1} = lin_i x_i + sum_j w_ij F_{i-j} [+ noise_std_i s_noise xi_i],             (1)

with F the history of data or noise predictions (newest first) and the order of step i set by

* the warm-up ramp (the papers): order min(p, i + 1) while the history is short;
* ``lower_order_final`` (DPM-Solver++ and diffusers, for grids of fewer than 15 steps): order
  min(p, total - i), so the final update (the denoising step when the grid ends at sigma = 0)
  is first order and the one before at most second order;
* per-step caps (``step_order_caps``), e.g. as searched by :mod:`diffsolve.tools.grid_search`.

Warm-up (:func:`warmup_schedule`, the ONE implementation every multistep family uses):
``"lower_order"`` is the ramp above. A single first-order step has local error O(h^2), so a
multistep method of order p >= 3 started this way is globally O(h^2) asymptotically.
``"singlestep"`` runs each of the first p - 1 steps with the single-step exponential RK of the
order that step would have without the ramp (DPM-Solver++(2S)/(3S), at most third order,
:mod:`.stages`), which restores global order min(p, 4) at the price of extra evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import Tensor

from ...core.errors import SolverOptionError
from ...core.models import eps_from_data
from ...core.schedules import EvalPoint, NoiseSchedule
from ..base import GridPlan, Solver, StepOutput
from .stages import MAX_TABLE_ORDER, Form, Stage, StageTable, build_stages, run_stages

if TYPE_CHECKING:
    from ...core.models import Denoiser
    from ...core.noise import NoiseSource

#: classical Adams-Bashforth weights for equal steps, newest first (Bashforth & Adams 1883;
#: PNDM/PLMS, Liu et al. 2022 eq. 12; iPNDM, Zhang & Chen 2023 App.)
ADAMS_BASHFORTH: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3.0 / 2.0, -1.0 / 2.0),
    3: (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    4: (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
}

Warmup = Literal["lower_order", "singlestep"]
WARMUPS: tuple[Warmup, ...] = ("lower_order", "singlestep")
LOWER_ORDER_FINAL_BELOW = 15


def step_orders(order: int, steps: int, denoise_final: bool, lower_order_final: bool | str, *,
                ramp: bool = True, caps: Sequence[int] | None = None) -> list[int]:
    """Order of each step: the warm-up ramp min(order, i + 1) (if ``ramp``), the final-step
    caps min(order, total - i) of ``lower_order_final`` (True: on grids of fewer than 15
    steps; "always": on every grid, as diffusers' UniPC), and the per-step ``caps``."""
    total = steps + (1 if denoise_final else 0)
    orders = []
    for i in range(steps):
        o = min(order, i + 1) if ramp else order
        if lower_order_final and (lower_order_final == "always"
                                  or total < LOWER_ORDER_FINAL_BELOW):
            o = min(o, total - i)
        orders.append(max(o, 1))
    if caps is not None:
        if len(caps) != len(orders):
            raise SolverOptionError(
                f"step_order_caps has {len(caps)} entries for {len(orders)} steps")
        orders = [min(o, c) for o, c in zip(orders, caps, strict=True)]
    return orders


@dataclass(frozen=True)
class StepKind:
    """How step i is taken: a multistep update of ``order``, or (warm-up) a single-step
    exponential RK step of ``order``."""

    singlestep: bool
    order: int

    @property
    def evaluations(self) -> int:
        return StageTable.of_order(self.order).evaluations if self.singlestep else 1


def warmup_schedule(order: int, steps: int, denoise_final: bool, lower_order_final: bool | str,
                    warmup: Warmup, caps: Sequence[int] | None = None) -> tuple[StepKind, ...]:
    """The kind and order of every step (module docstring): THE warm-up of every multistep
    family. Its evaluation counts are the family's cost declaration."""
    ramped = step_orders(order, steps, denoise_final, lower_order_final, caps=caps)
    unramped = step_orders(order, steps, denoise_final, lower_order_final, ramp=False, caps=caps)
    kinds = []
    for i, o in enumerate(ramped):
        if warmup == "singlestep" and i < order - 1 and unramped[i] > 1:
            kinds.append(StepKind(True, min(unramped[i], MAX_TABLE_ORDER)))
        else:
            kinds.append(StepKind(False, o))
    return tuple(kinds)


def warmup_stages(schedule: NoiseSchedule, points: Sequence[EvalPoint], i: int, kind: StepKind,
                  *, eta: float = 0.0) -> tuple[Stage, ...]:
    """Data-form stages of the single-step warm-up step i (DPM-Solver++(kS))."""
    return build_stages(schedule, points[i], points[i + 1], StageTable.of_order(kind.order),
                        eta=eta, form="data")


def check_order_caps(solver: str, caps: object, max_order: int) -> tuple[int, ...] | None:
    """Validate ``step_order_caps`` (None, or a sequence of ints in 1..max_order)."""
    if caps is None:
        return None
    if isinstance(caps, str | bytes) or not hasattr(caps, "__iter__"):
        raise SolverOptionError(f"{solver}: step_order_caps must be a sequence of ints, "
                                f"got {caps!r}")
    out = []
    for c in caps:
        if isinstance(c, bool) or not hasattr(c, "__index__"):
            raise SolverOptionError(f"{solver}: step_order_caps entries must be ints, got {c!r}")
        if not (1 <= int(c) <= max_order):
            raise SolverOptionError(f"{solver}: option step_order_caps entry={int(c)!r} is out "
                                    f"of range [1, {max_order}]")
        out.append(int(c))
    return tuple(out)


@dataclass(frozen=True)
class LinearStep:
    """One multistep update (1): x' = lin x + sum_j weights[j] F_{i-j} + noise_std xi."""

    lin: float
    weights: tuple[float, ...]
    noise_std: float = 0.0


def accumulate(base: Tensor, weights: Sequence[float], tensors: Sequence[Tensor], *,
               fresh: bool = False) -> Tensor:
    """base + sum_j weights[j] tensors[j] with fused multiply-adds (one pass per term).

    ``base`` is modified in place only when ``fresh`` (the caller's own temporary); extra
    weights or tensors beyond the shorter sequence are ignored (warm-up histories).
    """
    out = base
    for w, t in zip(weights, tensors, strict=False):
        if fresh:
            out.add_(t, alpha=w)
        else:
            out, fresh = torch.add(out, t, alpha=w), True
    return out


def weighted_sum(weights: Sequence[float], tensors: Sequence[Tensor]) -> Tensor:
    """sum_j weights[j] tensors[j] (unfused products; the momentum samplers' form)."""
    out = weights[0] * tensors[0]
    for w, t in zip(weights[1:], tensors[1:], strict=True):
        out = out + w * t
    return out


def linear_update(i: int, x: Tensor, step: LinearStep, history: Sequence[Tensor],
                  points: Sequence[EvalPoint], noise: NoiseSource | None,
                  s_noise: float = 1.0) -> Tensor:
    """Apply (1): a fresh tensor, fused in place; noise keyed (step=i, draw=0) over the step's
    lambda interval (so a Brownian path can serve it)."""
    out = accumulate(torch.mul(x, step.lin), step.weights, history, fresh=True)
    if step.noise_std != 0.0 and s_noise != 0.0 and noise is not None:
        xi = noise.normal(x, step=i, draw=0, lam_from=points[i].lam, lam_to=points[i + 1].lam)
        out.add_(xi, alpha=s_noise * step.noise_std)
    return out


@dataclass(frozen=True)
class HistorySolver(Solver):
    """Engine of the multistep families (not registered itself).

    A family declares ``history_order`` (its multistep order option p), ``nominal_order``
    (the order with a full-order start; default p) and :meth:`multistep_step` (the weights
    of a multistep step of a given order, a :class:`LinearStep` for families that use the
    default :meth:`step`). The engine supplies the warm-up (:func:`warmup_schedule`), the
    cost (one evaluation per multistep step, the stage count per single-step warm-up step),
    the declared ``order`` and a :meth:`step` for the linear update (1) over a history of
    data (``history_form = "data"``) or noise (``"noise"``) predictions, newest first.

    Declared order: min(nominal order, q + 1 over the warm-up steps), q the order of a
    warm-up step's method (its local error is O(h^{q+1}) and is not divided by h), and
    min(caps) + 1 with per-step caps.
    """

    lower_order_final: bool = True
    warmup: Warmup = "lower_order"

    history_form: ClassVar[Form] = "data"

    # -- what a family declares ------------------------------------------------------------
    @property
    def history_order(self) -> int:
        raise NotImplementedError

    @property
    def nominal_order(self) -> int:
        return self.history_order

    @property
    def order_caps(self) -> tuple[int, ...] | None:
        return None

    @property
    def final_lowering(self) -> bool | str:
        """``lower_order_final`` as :func:`step_orders` takes it (a family may say "always")."""
        return self.lower_order_final

    @property
    def eta(self) -> float:
        return 0.0

    @property
    def s_noise(self) -> float:
        return 1.0

    def warmup_step_order(self, kind: StepKind) -> int:
        """Order of the method a warm-up step uses (a corrector may raise it)."""
        return kind.order

    def multistep_step(self, schedule: NoiseSchedule, points: tuple[EvalPoint, ...], i: int,
                       order: int) -> LinearStep:
        raise NotImplementedError

    # -- derived ------------------------------------------------------------------------------
    def step_kinds(self, steps: int, denoise_final: bool) -> tuple[StepKind, ...]:
        return warmup_schedule(self.history_order, steps, denoise_final, self.final_lowering,
                               self.warmup, self.order_caps)

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        """From the warm-up schedule. Per-step caps belong to the grid of len(caps) steps
        (``plan`` refuses any other); the cost of another step count, e.g. while
        :meth:`steps_for_nfe` searches, is that of the uncapped solver."""
        caps = self.order_caps
        if caps is not None and len(caps) != steps:
            caps = None
        kinds = warmup_schedule(self.history_order, steps, denoise_final, self.final_lowering,
                                self.warmup, caps)
        return tuple(k.evaluations for k in kinds)

    @property
    def order(self) -> int:
        p = self.history_order
        start = warmup_schedule(p, 4 * p + 16, False, False, self.warmup)[: p - 1]
        bounds = [self.nominal_order] + [self.warmup_step_order(k) + 1 for k in start]
        if self.order_caps:
            bounds.append(min(self.order_caps) + 1)
        return min(bounds)

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = Solver.plan(self, schedule, lams, denoise_final=denoise_final)
        extra: list[LinearStep | tuple[Stage, ...]] = []
        for i, kind in enumerate(self.step_kinds(base.steps, denoise_final)):
            if kind.singlestep:
                extra.append(warmup_stages(schedule, base.points, i, kind, eta=self.eta))
            else:
                extra.append(self.multistep_step(schedule, base.points, i, kind.order))
        return base.with_extra(extra)

    def init_state(self, x: Tensor, plan: GridPlan) -> tuple[Tensor, ...]:
        return ()

    def step(self, i: int, x: Tensor, state: tuple[Tensor, ...], plan: GridPlan,
             model: Denoiser, noise: NoiseSource) -> StepOutput:
        coeffs = plan.extra[i]
        p = plan.points[i]
        keep = self.history_order
        if isinstance(coeffs, tuple):  # single-step warm-up
            out = run_stages(i, x, coeffs, p, model, noise, eta=self.eta, form="data",
                             s_noise=self.s_noise)
            f = out.denoised if self.history_form == "data" else eps_from_data(x, out.denoised, p)
            return StepOutput(x=out.x, state=(f, *state)[:keep], denoised=out.denoised)
        d = model.data(x, p)
        f = d if self.history_form == "data" else eps_from_data(x, d, p)
        history = (f, *state)[:keep]
        x_next = linear_update(i, x, coeffs, history, plan.points, noise, self.s_noise)
        return StepOutput(x=x_next, state=history, denoised=d)

r"""Momentum samplers of Wizadwongsa et al. 2023 (arXiv 2307.11118, ICLR 2024).

Heavy-ball (HB) momentum, eq. 13-14 / Alg. 1: a base multistep method x_{n+1} = x_n + delta
sum_j b_j f_{n-j} becomes

    v_{n+1} = (1 - beta) v_n + beta sum_j b_j f_{n-j},      x_{n+1} = x_n + delta v_{n+1},

beta in (0, 1] (beta = 1 is the base method). Theorem 1 (App. F): first order for beta < 1.
We write "x_n + delta v" as the exact DDIM update with v in place of the model output,
x_{n+1} = lin_n x_n + w0_n v_{n+1}, which is the paper's update in its own variables
(x/alpha, sigma/alpha, eps) for the noise form, and the DPM-Solver++ analogue for the data
form (the paper applies HB to DPM-Solver++(2M) in its Sec. 5.1-5.2).

* ``dpmpp_2m_hb``: f = D, b = (1 + 1/(2r), -1/(2r)) of DPM-Solver++(2M) (Lu et al. 2022b Alg. 2),
  w0 = alpha_{n+1}(1 - e^{-h}).
* ``plms_hb``: f = eps, b = the constant Adams-Bashforth weights of PLMS (Alg. 1; eq. 9 for
  order 2), w0 = -sigma_{n+1}(e^h - 1) (the DDIM step x/alpha += (sigma~' - sigma~) v).

Generalized heavy ball (GHVB), Sec. 4.2 eq. 15-19 / Alg. 2: the moving average is taken of
the model outputs themselves, v_{n+1} = (1 - beta) v_n + beta f_n, i.e. (1 + g nabla) v_{n+1}
= f_n with g = (1 - beta)/beta and nabla the backward difference. Multiplying the
backward-difference form of Adams-Bashforth, Delta x_{n+1} = delta P(nabla) f_n (eq. 15), by
(1 + g nabla) and truncating after k terms gives the order-k method (eq. 16-19)

    x_{n+1} = x_n + delta sum_{j<k} q_j nabla^j v_{n+1},  q_0 = p_0, q_j = p_j + g p_{j-1}.

With the classical p = (1, 1/2, 5/12, 3/8) this reproduces Alg. 2's weights, e.g. order 2:
((2 + beta) v_{n+1} - (2 - beta) v_n)/(2 beta) (eq. 19). Our ``ghvb`` is the exponential-
integrator (data prediction) version: p_j(h) = int_0^1 e^{-h(1-theta)} binom(theta+j-1, j)
d theta (the exponential Adams weights in backward-difference form, -> the classical p_j as
h -> 0) and delta = alpha_{n+1} h, so beta = 1 is the exponential Adams method of order k on
uniform-lambda grids (DPM-Solver++(kM)). The backward differences assume locally uniform
steps, like the paper's constant coefficients; on non-uniform grids the coefficients use the
current step h (measured orders in docs/momentum_inversion_adaptive.md). The momentum number
of the paper is (k - 1) + beta (e.g. GHVB 1.8 = order 2, beta 0.8).

Momentum start: v is initialised with the first combined output (v_1 = f_0-combination),
i.e. the first step is the base method's; the paper's algorithms leave v_0 unspecified. With
this start and Alg. 2's lower-order warm-up, GHVB of order 3/4 is globally ~O(h^2.1-2.8);
``warmup="singlestep"`` (our addition) runs k - 1 single-step steps of order k and starts v at
the smooth moving average of the interpolated D history, which restores order k = 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.expint import lagrange_monomials, phi, stage_coefficients
from ..core.schedules import EvalPoint, NoiseSchedule
from .base import (
    GridPlan,
    Solver,
    StepOutput,
    check_choice,
    check_range,
    register,
    uniform_evaluations,
)
from .engines.history import (
    ADAMS_BASHFORTH,
    WARMUPS,
    HistorySolver,
    step_orders,
    warmup_stages,
    weighted_sum,
)
from .engines.stages import Stage, run_stages

if TYPE_CHECKING:
    from ..core.models import Denoiser
    from ..core.noise import NoiseSource

def rising_factorial_monomials(j: int) -> list[float]:
    """Monomial coefficients of binom(theta + j - 1, j) = theta (theta+1)...(theta+j-1)/j!."""
    poly = [1.0]
    for m in range(j):
        new = [0.0] * (len(poly) + 1)
        for p, c in enumerate(poly):
            new[p] += m * c        # (theta + m) * c theta^p
            new[p + 1] += c
        poly = new
    return [c / math.factorial(j) for c in poly]


def exp_adams_backward_weights(order: int, h: float) -> list[float]:
    """p_j(h) = int_0^1 e^{-h(1-theta)} binom(theta + j - 1, j) d theta, j < order.

    Newton's backward form D(lam_n + theta h) = sum_j binom(theta+j-1, j) nabla^j D_n with
    int_0^1 e^{-h(1-theta)} theta^p d theta = p! phi_{p+1}(-h). At h = 0 these are the
    classical (1, 1/2, 5/12, 3/8) of Wizadwongsa et al. eq. 15.
    """
    moments = [math.factorial(p) * phi(p + 1, -h) for p in range(order)]
    return [sum(c * moments[p] for p, c in enumerate(rising_factorial_monomials(j)))
            for j in range(order)]


def ghvb_weights(order: int, beta: float, h: float) -> list[float]:
    """Weights of v_{n+1}, v_n, ... (newest first) in sum_{j<k} q_j nabla^j v_{n+1}, per unit h.

    q_0 = p_0, q_j = p_j + g p_{j-1}, g = (1 - beta)/beta (Wizadwongsa et al. eq. 16-17).
    """
    p = exp_adams_backward_weights(order, h)
    g = (1.0 - beta) / beta
    q = [p[0]] + [p[j] + g * p[j - 1] for j in range(1, order)]
    w = [0.0] * order
    for j, qj in enumerate(q):
        for m in range(j + 1):  # nabla^j v_{n+1} = sum_m (-1)^m C(j, m) v_{n+1-m}
            w[m] += qj * (-1) ** m * math.comb(j, m)
    return w


def smooth_start_weights(order: int, beta: float) -> tuple[tuple[float, ...], ...]:
    """Weights giving the smooth moving averages V_k, ..., V_1 from D_{k-1}, ..., D_0.

    V solves (1 + g nabla) V_{n+1} = D_n; for D a polynomial P of degree < k in the step
    index, V_{n+1} = sum_{j<k} (-g)^j nabla^j P(n) exactly (the series of (1 + g nabla)^{-1}
    terminates), with P the interpolant through D_0..D_{k-1} (extrapolated below index 0).
    Rows: V_{k-r} for r = 0..k-1 (newest first); columns: D_{k-1-l} (newest first).
    """
    g = (1.0 - beta) / beta
    mono = lagrange_monomials([float(t) for t in range(order)])

    def basis_at(t: float) -> list[float]:  # L_l(t), l = 0..k-1
        return [sum(c * t**p for p, c in enumerate(row)) for row in mono]

    rows = []
    for r in range(order):
        n = order - 1 - r  # V_{n+1}
        acc = [0.0] * order
        for j in range(order):
            for m in range(j + 1):
                coef = (-g) ** j * (-1) ** m * math.comb(j, m)
                for idx, b in enumerate(basis_at(float(n - m))):
                    acc[idx] += coef * b
        rows.append(tuple(reversed(acc)))  # newest first
    return tuple(rows)


@dataclass(frozen=True)
class MomentumCoefficients:
    """x_{n+1} = lin x_n + w0 v_{n+1}; ``combo`` combines the history (newest first);
    ``start`` (GHVB single-step warm-up) turns the D history into the first v history."""

    lin: float
    w0: float
    combo: tuple[float, ...]
    start: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class _HeavyBall(Solver):
    """HB engine (not registered): v <- (1 - beta) v + beta sum_j b_j F_{n-j}; x <- lin x + w0 v."""

    beta: float = 0.8

    def __post_init__(self) -> None:
        check_range(self.name, "beta", self.beta, 1e-3, 1.0)

    @property
    def order(self) -> int:
        """1 for beta < 1 (Theorem 1); the base method's order at beta = 1."""
        return 1 if self.beta < 1.0 else self.base_order

    @property
    def base_order(self) -> int:
        return 2

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    @property
    def form(self) -> Literal["data", "noise"]:
        return "data"

    @property
    def history(self) -> int:
        return 2

    def base_weights(self, points: tuple[EvalPoint, ...], i: int, order: int,
                     ) -> tuple[float, ...]:
        raise NotImplementedError

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        extra = []
        for i, o in enumerate(step_orders(self.history, base.steps, False, False)):
            c = stage_coefficients(base.points[i], base.points[i + 1], form=self.form)
            combo = self.base_weights(base.points, i, o)
            extra.append(MomentumCoefficients(lin=c.lin, w0=c.w0, combo=combo))
        return base.with_extra(extra)

    def init_state(self, x: Tensor, plan: GridPlan) -> tuple[tuple[Tensor, ...], Tensor | None]:
        return (), None

    def step(self, i: int, x: Tensor, state: tuple[tuple[Tensor, ...], Tensor | None],
             plan: GridPlan, model: Denoiser, noise: NoiseSource) -> StepOutput:
        c = plan.extra[i]
        p = plan.points[i]
        d = model.data(x, p)
        f = d if self.form == "data" else (x - p.alpha * d) / p.sigma
        hist = (f, *state[0])[: self.history]
        combined = weighted_sum(c.combo, hist[: len(c.combo)])
        v_prev = state[1]
        # Wizadwongsa et al. eq. 14: v_{n+1} = (1 - beta) v_n + beta sum_j b_j f_{n-j}
        v = combined if v_prev is None else (1.0 - self.beta) * v_prev + self.beta * combined
        return StepOutput(x=c.lin * x + c.w0 * v, state=(hist, v), denoised=d)


@register
@dataclass(frozen=True)
class DPMSolverPP2MHB(_HeavyBall):
    """DPM-Solver++(2M) with heavy-ball momentum (Wizadwongsa et al. 2023, eq. 14, Sec. 5.2).

    v <- (1 - beta) v + beta ((1 + 1/(2r)) D_n - D_{n-1}/(2r)); x <- (sigma'/sigma) x
    + alpha'(1 - e^{-h}) v. First order for beta < 1 (Theorem 1); beta = 1 is DPM-Solver++(2M)
    (without its lower-order final step). 1 NFE per step.

    Args:
        beta: damping coefficient in [0.001, 1] (paper: "HB 0.8" is beta = 0.8).
    """

    name = "dpmpp_2m_hb"
    title = "heavy-ball momentum on DPM-Solver++(2M)"
    reference = "Wizadwongsa et al. 2023 (arXiv 2307.11118) eq. 14 on Lu et al. 2022b Alg. 2"

    def base_weights(self, points: tuple[EvalPoint, ...], i: int, order: int,
                     ) -> tuple[float, ...]:
        if order == 1:
            return (1.0,)
        r = (points[i].lam - points[i - 1].lam) / (points[i + 1].lam - points[i].lam)
        return (1.0 + 0.5 / r, -0.5 / r)  # DPM-Solver++ Alg. 2 divided by w0


@register
@dataclass(frozen=True)
class PLMSHB(_HeavyBall):
    """PLMS (constant-coefficient Adams-Bashforth on eps) with heavy-ball momentum.

    Wizadwongsa et al. 2023 Alg. 1: e^ = sum_j b_j eps_{n-j} (PLMS weights, warm-up with lower
    orders), v <- (1 - beta) v + beta e^, x/alpha <- x/alpha + (sigma~_{n+1} - sigma~_n) v.
    First order for beta < 1 (Theorem 1). With beta = 1 this is PLMS, whose constant weights
    assume equal steps in sigma~ (order <= 2 on other grids). 1 NFE per step.

    Args:
        beta: damping coefficient in [0.001, 1].
        plms_order: order of the base PLMS method, 1-4 (the paper uses 4).
    """

    name = "plms_hb"
    title = "heavy-ball momentum on PLMS"
    reference = "Wizadwongsa et al. 2023 (arXiv 2307.11118) Alg. 1; Liu et al. 2022 (PLMS)"
    plms_order: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "plms_order", self.plms_order, (1, 2, 3, 4))

    @property
    def form(self) -> Literal["data", "noise"]:
        return "noise"

    @property
    def history(self) -> int:
        return self.plms_order

    @property
    def base_order(self) -> int:  # constant weights: at most 2 off sigma~-uniform grids
        return min(self.plms_order, 2)

    def base_weights(self, points: tuple[EvalPoint, ...], i: int, order: int,
                     ) -> tuple[float, ...]:
        return ADAMS_BASHFORTH[order]


@register
@dataclass(frozen=True)
class GHVB(HistorySolver):
    """Generalized heavy ball of order k (Wizadwongsa et al. 2023, Sec. 4.2, eq. 16-19, Alg. 2),
    in data prediction with exponential-integrator weights (module docstring).

    v_{n+1} = (1 - beta) v_n + beta D_n;  x_{n+1} = (sigma'/sigma) x_n
    + alpha' h sum_{j<k} q_j(h, beta) nabla^j v_{n+1}. Order k (Theorem 2); beta = 1 is the
    exponential Adams method of order k; the momentum number is k - 1 + beta. 1 NFE per step.

    Args:
        ghvb_order: k in 1..4 (default 2; GHVB 1.8 = ghvb_order 2, beta 0.8).
        beta: damping coefficient in [0.001, 1].
        lower_order_final: lower the order of the final steps (as DPM-Solver++ for < 15 steps).
        warmup: "lower_order" (Alg. 2: orders 1, 2, ... at the start; globally ~O(h^2) for
            k >= 3) or "singlestep": the first k - 1 steps use the single-step exponential RK
            of order k (DPM-Solver++(2S)/(3S); k - 1 extra NFE each) and v starts at the
            smooth moving average of the interpolated D history (:func:`smooth_start_weights`),
            which restores global order k on uniform-lambda grids.
    """

    name = "ghvb"
    title = "generalized heavy ball, orders 1–4"
    reference = "Wizadwongsa et al. 2023 (arXiv 2307.11118) eq. 16-19, Alg. 2, Theorem 2"
    ghvb_order: int = 2
    beta: float = 0.8

    def __post_init__(self) -> None:
        check_choice(self.name, "ghvb_order", self.ghvb_order, (1, 2, 3, 4))
        check_range(self.name, "beta", self.beta, 1e-3, 1.0)
        check_choice(self.name, "warmup", self.warmup, WARMUPS)
        if self.warmup == "singlestep" and self.ghvb_order == 4:
            raise SolverOptionError(f"{self.name}: warmup='singlestep' needs ghvb_order <= 3 "
                                    "(no single-step method of order 4)")

    @property
    def history_order(self) -> int:
        return int(self.ghvb_order)

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = Solver.plan(self, schedule, lams, denoise_final=denoise_final)
        k = self.ghvb_order
        kinds = self.step_kinds(base.steps, denoise_final)
        n_warm = sum(1 for kind in kinds if kind.singlestep)
        extra: list[MomentumCoefficients | tuple[Stage, ...]] = []
        for i, kind in enumerate(kinds):
            p_s, p_t = base.points[i], base.points[i + 1]
            if kind.singlestep:
                extra.append(warmup_stages(schedule, base.points, i, kind))
                continue
            c = stage_coefficients(p_s, p_t)
            h = p_t.lam - p_s.lam
            w = ghvb_weights(kind.order, self.beta, h)
            start = smooth_start_weights(k, self.beta) if n_warm > 0 and i == n_warm else None
            extra.append(MomentumCoefficients(lin=c.lin, w0=p_t.alpha * h,
                                              combo=tuple(w), start=start))
        return base.with_extra(extra)

    def step(self, i: int, x: Tensor, state: tuple[Tensor, ...], plan: GridPlan,
             model: Denoiser, noise: NoiseSource) -> StepOutput:
        c = plan.extra[i]
        if isinstance(c, tuple):  # single-step warm-up; the state collects D_0, D_1, ...
            out = run_stages(i, x, c, plan.points[i], model, noise, eta=0.0, form="data")
            return StepOutput(x=out.x, state=(out.denoised, *state), denoised=out.denoised)
        d = model.data(x, plan.points[i])
        if c.start is not None:  # v history = smooth moving averages of the D history
            ds = (d, *state)
            hist = tuple(weighted_sum(row, ds) for row in c.start)
        else:
            # Alg. 2: v_{n+1} = (1 - beta) v_n + beta D_n  (v_1 = D_0)
            v = d if not state else (1.0 - self.beta) * state[0] + self.beta * d
            hist = (v, *state)[: self.ghvb_order]
        combined = weighted_sum(c.combo, hist[: len(c.combo)])
        return StepOutput(x=c.lin * x + c.w0 * combined, state=hist, denoised=d)


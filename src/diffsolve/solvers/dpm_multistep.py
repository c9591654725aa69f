r"""DPM-Solver multistep in all four parameterisations, orders 1-3 (``dpm_multistep``).

The family of diffusers' ``DPMSolverMultistepScheduler``, one solver with its options, written
from the papers. Step from node s = s_0 (history s_1, s_2) to t, h = lambda_t - lambda_s,
r_0 = h_0/h, r_1 = h_1/h with h_k = lambda_{s_k} - lambda_{s_{k+1}}, and m_k the model output
at s_k in the algorithm's parameterisation (data prediction D for ``dpmsolver++``, noise
prediction eps = (x - alpha D)/sigma for ``dpmsolver``). Backward differences

    order 2:  D_1 = (m_0 - m_1)/r_0
    order 3:  D1_0 = (m_0 - m_1)/r_0, D1_1 = (m_1 - m_2)/r_1,
              D_1 = D1_0 + r_0/(r_0 + r_1) (D1_0 - D1_1),  D_2 = (D1_0 - D1_1)/(r_0 + r_1).

Updates (Lu et al. 2022a, arXiv 2206.00927, eq. 3.7 and Alg. 1-2 for ``dpmsolver``;
Lu et al. 2022b, arXiv 2211.01095, eq. 9 and App. B for ``dpmsolver++``; its Sec. 5 / App. C
for the SDE variants, x_t carrying the exact Gaussian of the linear part):

* dpmsolver++:  x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) m_0 + c_1 D_1 + c_2 D_2,
  midpoint c_1 = -alpha_t (e^{-h} - 1)/2; heun / order 3 c_1 = alpha_t ((e^{-h} - 1)/h + 1),
  c_2 = -alpha_t ((e^{-h} - 1 + h)/h^2 - 1/2).
* dpmsolver:    x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) m_0 + c_1 D_1 + c_2 D_2,
  midpoint c_1 = -sigma_t (e^h - 1)/2; heun / order 3 c_1 = -sigma_t ((e^h - 1)/h - 1),
  c_2 = -sigma_t ((e^h - 1 - h)/h^2 - 1/2).
* sde-dpmsolver++ (eta = 1): x_t = (sigma_t/sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) m_0
  + c_1 D_1 + c_2 D_2 + sigma_t sqrt(1 - e^{-2h}) xi, midpoint c_1 = alpha_t (1 - e^{-2h})/2;
  heun / order 3 c_1 = alpha_t ((1 - e^{-2h})/(-2h) + 1),
  c_2 = alpha_t ((1 - e^{-2h} - 2h)/(4h^2) - 1/2) (the weights diffusers uses).
* sde-dpmsolver: x_t = (alpha_t/alpha_s) x - 2 sigma_t (e^h - 1) m_0 + c_1 D_1
  + sigma_t sqrt(e^{2h} - 1) xi, midpoint c_1 = -sigma_t (e^h - 1); heun
  c_1 = -2 sigma_t ((e^h - 1)/h - 1) (orders 1-2).

Orders per step as the scheduler chooses them: warm-up min(order, i + 1); the last step first
order when ``euler_at_final``, or ``lower_order_final`` on grids of fewer than 15 steps, or
when the grid ends with the denoising step (counted as a step); the one before at most second
order under ``lower_order_final`` on fewer than 15 steps. The final denoising step x <- D(x) is
the h -> inf limit of every data-prediction update above.

NFE: one evaluation per step (multistep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..core.errors import SolverOptionError
from ..core.schedules import EvalPoint, NoiseSchedule
from .base import (
    GridPlan,
    Solver,
    StepOutput,
    check_choice,
    register,
    uniform_evaluations,
)
from .engines.history import check_order_caps

Algorithm = Literal["dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"]
_FEW_STEPS = 15  # diffusers lowers the final orders only on grids shorter than this


@dataclass(frozen=True)
class _Step:
    order: int
    lin: float            # coefficient of x
    weights: tuple[float, ...]  # coefficients of m_0, m_1, m_2 (history, newest first)
    noise_std: float
    noise_pred: bool      # whether m is the noise prediction


def _sde_pp_weights(h: float, alpha_t: float, order: int, kind: str) -> tuple[float, float,
                                                                             float]:
    """(m_0, D_1, D_2) weights of sde-dpmsolver++ (Lu et al. 2022b, App. C; eta = 1)."""
    one = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
    w0 = alpha_t * one
    if order == 1:
        return w0, 0.0, 0.0
    if order == 2 and kind == "midpoint":
        return w0, 0.5 * alpha_t * one, 0.0
    w1 = alpha_t * (one / (-2.0 * h) + 1.0)
    if order == 2:
        return w0, w1, 0.0
    w2 = alpha_t * ((one - 2.0 * h) / (4.0 * h * h) - 0.5)
    return w0, w1, w2


def _weights(algo: str, kind: str, order: int, p: EvalPoint, q: EvalPoint,
             ) -> tuple[float, tuple[float, float, float], float]:
    """(lin, (m_0, D_1, D_2) weights, noise std) of one step s -> t."""
    h = q.lam - p.lam
    if algo == "dpmsolver++":
        em = math.expm1(-h)  # e^{-h} - 1
        w0 = -q.alpha * em
        if order == 1:
            return q.sigma / p.sigma, (w0, 0.0, 0.0), 0.0
        if order == 2 and kind == "midpoint":
            return q.sigma / p.sigma, (w0, -0.5 * q.alpha * em, 0.0), 0.0
        w1 = q.alpha * (em / h + 1.0)
        w2 = -q.alpha * ((em + h) / (h * h) - 0.5)
        return q.sigma / p.sigma, (w0, w1, w2 if order == 3 else 0.0), 0.0
    if algo == "dpmsolver":
        ep = math.expm1(h)  # e^h - 1
        w0 = -q.sigma * ep
        if order == 1:
            return q.alpha / p.alpha, (w0, 0.0, 0.0), 0.0
        if order == 2 and kind == "midpoint":
            return q.alpha / p.alpha, (w0, -0.5 * q.sigma * ep, 0.0), 0.0
        w1 = -q.sigma * (ep / h - 1.0)
        w2 = -q.sigma * ((ep - h) / (h * h) - 0.5)
        return q.alpha / p.alpha, (w0, w1, w2 if order == 3 else 0.0), 0.0
    if algo == "sde-dpmsolver++":
        lin = q.sigma / p.sigma * math.exp(-h)
        std = q.sigma * math.sqrt(-math.expm1(-2.0 * h))
        return lin, _sde_pp_weights(h, q.alpha, order, kind), std
    # sde-dpmsolver
    ep = math.expm1(h)
    std = q.sigma * math.sqrt(math.expm1(2.0 * h))
    w0 = -2.0 * q.sigma * ep
    if order == 1:
        return q.alpha / p.alpha, (w0, 0.0, 0.0), std
    w1 = -q.sigma * ep if kind == "midpoint" else -2.0 * q.sigma * (ep / h - 1.0)
    return q.alpha / p.alpha, (w0, w1, 0.0), std


def diffusers_step_orders(order: int, total: int, steps: int, lower_order_final: bool,
                euler_at_final: bool, ends_at_zero: bool, full: int | None = None) -> list[int]:
    """Order of each of ``steps`` finite steps, ``total`` counting a final denoising step
    (``full``: the whole schedule's count, for the fewer-than-15 test)."""
    out = []
    few = lower_order_final and (total if full is None else full) < _FEW_STEPS
    for i in range(steps):
        last = i == total - 1
        second = i == total - 2
        if order == 1 or i < 1 or (last and (euler_at_final or few or ends_at_zero)):
            out.append(1)
        elif order == 2 or i < 2 or (second and few):
            out.append(2)
        else:
            out.append(3)
    return out


def _evaluate(model: Any, x: Tensor, p: EvalPoint, noise_pred: bool) -> tuple[Tensor, Tensor]:
    """D(x) at p and the algorithm's model output m (D, or eps = (x - alpha D)/sigma)."""
    d = model.data(x, p)
    return d, ((x - p.alpha * d) / p.sigma if noise_pred else d)


def _linear_update(i: int, start: Tensor, lin: float, weights: tuple[float, ...],
                   outputs: Any, noise_std: float, plan: GridPlan, noise: Any) -> Tensor:
    """lin * start + sum_j w_j m_j (+ noise_std xi on [lambda_i, lambda_{i+1}]): the update
    of every step below, from the state ``start`` (node i, or a singlestep group's first)."""
    out = torch.mul(start, lin)
    for w, mj in zip(weights, outputs, strict=False):
        if w != 0.0:
            out = out.add(mj, alpha=w)
    if noise_std != 0.0:
        p, q = plan.points[i], plan.points[i + 1]
        xi = noise.normal(start, step=i, draw=0, lam_from=p.lam, lam_to=q.lam)
        out = out.add(xi, alpha=noise_std)
    return out


@register
@dataclass(frozen=True)
class DPMMultistep(Solver):
    r"""DPM-Solver / DPM-Solver++ multistep, ODE or SDE, orders 1-3 (module docstring).
    1 NFE per step. Declared order min(solver_order, 2): the lower-order start makes order 3
    globally second order (measured, tests/test_convergence.py); weak order the same for the
    SDE types.

    Args:
        algorithm_type: "dpmsolver++" (data prediction, default), "dpmsolver" (noise
            prediction), "sde-dpmsolver++" or "sde-dpmsolver" (stochastic, eta = 1).
        solver_order: 1, 2 (default) or 3 ("sde-dpmsolver": 1 or 2).
        solver_type: "midpoint" (default) or "heun": the second-order weight of D_1.
        lower_order_final: lower the last orders on grids of fewer than 15 steps.
        euler_at_final: first-order last step on every grid.
        full_steps: the step count of the whole schedule when sampling starts part-way
            through it (img2img): the "fewer than 15 steps" test uses it, as diffusers does.
    """

    name = "dpm_multistep"
    title = "DPM-Solver(++) multistep, 4 algorithm types (diffusers `DPMSolverMultistep`)"
    reference = ("Lu et al. 2022a (arXiv 2206.00927) eq. 3.7, Alg. 1-2; Lu et al. 2022b "
                 "(arXiv 2211.01095) eq. 9, App. B-C")
    algorithm_type: Algorithm = "dpmsolver++"
    solver_order: int = 2
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    full_steps: int | None = None

    def __post_init__(self) -> None:
        check_choice(self.name, "algorithm_type", self.algorithm_type,
                     ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"))
        check_choice(self.name, "solver_order", self.solver_order,
                     (1, 2) if self.algorithm_type == "sde-dpmsolver" else (1, 2, 3))
        check_choice(self.name, "solver_type", self.solver_type, ("midpoint", "heun"))
        check_choice(self.name, "lower_order_final", self.lower_order_final, (True, False))
        check_choice(self.name, "euler_at_final", self.euler_at_final, (True, False))

    @property
    def order(self) -> int:
        return min(int(self.solver_order), 2)

    @property
    def weak_order(self) -> float | None:
        return float(self.order) if self.algorithm_type.startswith("sde") else None

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        total = base.steps + (1 if denoise_final else 0)
        orders = diffusers_step_orders(int(self.solver_order), total, base.steps,
                                       self.lower_order_final, self.euler_at_final,
                                       denoise_final, self.full_steps)
        pts, extra = base.points, []
        for i, k in enumerate(orders):
            lin, (w0, w1, w2), std = _weights(self.algorithm_type, self.solver_type, k,
                                              pts[i], pts[i + 1])
            h = pts[i + 1].lam - pts[i].lam
            if k == 1:
                weights: tuple[float, ...] = (w0,)
            elif k == 2:
                r0 = (pts[i].lam - pts[i - 1].lam) / h
                weights = (w0 + w1 / r0, -w1 / r0)  # D_1 = (m_0 - m_1)/r_0
            else:
                r0 = (pts[i].lam - pts[i - 1].lam) / h
                r1 = (pts[i - 1].lam - pts[i - 2].lam) / h
                # D1_0 = (m0 - m1)/r0, D1_1 = (m1 - m2)/r1; D_1 = D1_0 + r0/(r0+r1)(D1_0-D1_1)
                # D_2 = (D1_0 - D1_1)/(r0 + r1): expand both in m0, m1, m2
                a = 1.0 / (r0 + r1)
                d1 = (1.0 / r0 * (1 + r0 * a), -1.0 / r0 * (1 + r0 * a) - r0 * a / r1,
                      r0 * a / r1)
                d2 = (a / r0, -a / r0 - a / r1, a / r1)
                weights = tuple(([w0, 0.0, 0.0][j] + w1 * d1[j] + w2 * d2[j])
                                for j in range(3))
            extra.append(_Step(order=k, lin=lin, weights=weights, noise_std=std,
                               noise_pred=self.algorithm_type in ("dpmsolver", "sde-dpmsolver")))
        return base.with_extra(extra)

    def init_state(self, x: Tensor, plan: GridPlan) -> Any:
        return ()

    def step(self, i: int, x: Tensor, state: Any, plan: GridPlan, model: Any,
             noise: Any) -> StepOutput:
        c: _Step = plan.extra[i]
        d, m = _evaluate(model, x, plan.points[i], c.noise_pred)
        hist = (m, *state)[: max(int(self.solver_order), 1)]
        out = _linear_update(i, x, c.lin, c.weights, hist, c.noise_std, plan, noise)
        return StepOutput(x=out, state=hist, denoised=d)


# -- singlestep: diffusers' DPMSolverSinglestepScheduler --------------------------------------
def singlestep_orders(order: int, total: int, lower_order_final: bool, ends_at_zero: bool,
                      ) -> list[int]:
    """The order of each of ``total`` steps (a final denoising step counted): groups
    1, 2, .., p, each group one single-step DPM-Solver-p step whose stages are the group's
    grid nodes; with ``lower_order_final`` (forced when p does not divide ``total`` or the
    grid ends at sigma = 0) the last group is cut short, and a final step into sigma = 0 is
    first order (diffusers' ``get_order_list``)."""
    if order == 1:
        return [1] * total
    group = list(range(1, order + 1))
    full, rest = divmod(total, order)
    if lower_order_final or rest or ends_at_zero:
        if rest == 0:  # the last group becomes 1 .. p - 1, then a first-order step
            out = group * (full - 1) + group[:-1] + [1]
        else:
            out = group * full + group[:rest]
    else:
        out = group * full
    out = out[:total]
    if ends_at_zero and out:
        out[-1] = 1
    return out


@dataclass(frozen=True)
class _SingleStep:
    order: int
    lin: float                  # coefficient of x at the group's first node
    weights: tuple[float, ...]  # coefficients of m at the group's nodes, newest first
    noise_std: float


def _singlestep_coefficients(algo: str, kind: str, k: int, pts: tuple[EvalPoint, ...], i: int,
                             ) -> _SingleStep:
    """Step i of order k: from node g = i - k + 1 to i + 1, with the model outputs at nodes
    g .. i (Lu et al. 2022a Alg. 1-2 / 2022b Alg. 1 with stage positions r at the nodes).
    Order 2: D_1 = (m_0 - m_1)/r_0; order 3: D1_0 = (m_1 - m_2)/r_1, D1_1 = (m_0 - m_2)/r_0,
    "midpoint" uses D1_1 alone (DPM-Solver-3's last stage), "heun" D_1 = (r_0 D1_0 -
    r_1 D1_1)/(r_0 - r_1) and D_2 = 2 (D1_1 - D1_0)/(r_0 - r_1)."""
    g = i - k + 1
    p, q = pts[g], pts[i + 1]
    h = q.lam - p.lam
    lin, (w0, w1, w2), std = _weights(algo, kind if k < 3 else "heun", k, p, q)
    if k == 1:
        return _SingleStep(1, lin, (w0,), std)
    r0 = (pts[i].lam - p.lam) / h
    if k == 2:
        return _SingleStep(2, lin, (w1 / r0, w0 - w1 / r0), std)
    r1 = (pts[i - 1].lam - p.lam) / h
    if kind == "midpoint":
        return _SingleStep(3, lin, (w1 / r0, 0.0, w0 - w1 / r0), std)
    a = 1.0 / (r0 - r1)
    d1 = (-a * r1 / r0, a * r0 / r1, a * (r1 / r0 - r0 / r1))  # D_1 in (m_0, m_1, m_2)
    d2 = (2.0 * a / r0, -2.0 * a / r1, 2.0 * a * (1.0 / r1 - 1.0 / r0))  # D_2
    return _SingleStep(3, lin, tuple((w0 if j == 2 else 0.0) + w1 * d1[j] + w2 * d2[j]
                                     for j in range(3)), std)


@register
@dataclass(frozen=True)
class DPMSinglestep(Solver):
    r"""DPM-Solver(++) singlestep with its stages at the grid's own nodes (diffusers'
    ``DPMSolverSinglestepScheduler``).

    The grid's steps are taken in groups of p (:func:`singlestep_orders`): the j-th step of a
    group (order j) goes from the group's first node to the next node with the model outputs
    at the group's nodes so far, so the group is one single-step DPM-Solver-p step from its
    first to its last node whose intermediate stages (orders 1, .., p - 1) are the group's
    nodes (:func:`_singlestep_coefficients`; the weights of the module docstring with h the
    group's span). 1 NFE per step. Declared order p (measured 2.93 for p = 3 in
    tests/test_convergence.py); a last group that ``lower_order_final`` cuts to one
    first-order step (step counts of 1 mod p) adds a local error O(h^2).

    Args:
        algorithm_type: "dpmsolver++" (default), "dpmsolver" or "sde-dpmsolver++".
        solver_order: 1, 2 (default) or 3.
        solver_type: "midpoint" (default) or "heun".
        lower_order_final: cut the last group short (diffusers forces it when p does not
            divide the step count or the grid ends at sigma = 0).
        step_orders: explicit orders of the steps (None: the rule above); step i uses at most
            i + 1 (the outputs it has: img2img runs start part-way through a group).
    """

    name = "dpm_singlestep"
    title = "DPM-Solver(++) singlestep, stages at the grid nodes (diffusers `DPMSolverSinglestep`)"
    reference = ("Lu et al. 2022a (arXiv 2206.00927) Alg. 1-2; Lu et al. 2022b "
                 "(arXiv 2211.01095) Alg. 1, App. C")
    algorithm_type: Literal["dpmsolver++", "dpmsolver", "sde-dpmsolver++"] = "dpmsolver++"
    solver_order: int = 2
    solver_type: Literal["midpoint", "heun"] = "midpoint"
    lower_order_final: bool = True
    step_orders: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_choice(self.name, "algorithm_type", self.algorithm_type,
                     ("dpmsolver++", "dpmsolver", "sde-dpmsolver++"))
        check_choice(self.name, "solver_order", self.solver_order, (1, 2, 3))
        check_choice(self.name, "solver_type", self.solver_type, ("midpoint", "heun"))
        check_choice(self.name, "lower_order_final", self.lower_order_final, (True, False))
        object.__setattr__(self, "step_orders",
                           check_order_caps(self.name, self.step_orders, 3))

    @property
    def order(self) -> int:
        return int(self.solver_order)

    @property
    def weak_order(self) -> float | None:
        return 1.0 if self.algorithm_type == "sde-dpmsolver++" else None

    def step_evaluations(self, steps: int, denoise_final: bool) -> tuple[int, ...]:
        return uniform_evaluations(1, steps)

    def orders(self, steps: int, denoise_final: bool) -> list[int]:
        """The order of each finite step: ``step_orders`` or the grouping rule, at most
        i + 1 at step i."""
        if self.step_orders is not None:
            if len(self.step_orders) < steps:
                raise SolverOptionError(f"{self.name}: step_orders has {len(self.step_orders)} "
                                        f"entries for {steps} steps")
            base = list(self.step_orders[:steps])
        else:
            total = steps + (1 if denoise_final else 0)
            base = singlestep_orders(int(self.solver_order), total, self.lower_order_final,
                                     denoise_final)[:steps]
        return [min(o, i + 1) for i, o in enumerate(base)]

    def plan(self, schedule: NoiseSchedule, lams: Tensor, *, denoise_final: bool = False,
             ) -> GridPlan:
        base = super().plan(schedule, lams, denoise_final=denoise_final)
        ks = self.orders(base.steps, denoise_final)
        return base.with_extra([_singlestep_coefficients(self.algorithm_type, self.solver_type,
                                                         k, base.points, i)
                                for i, k in enumerate(ks)])

    def step(self, i: int, x: Tensor, state: Any, plan: GridPlan, model: Any,
             noise: Any) -> StepOutput:
        c: _SingleStep = plan.extra[i]
        d, m = _evaluate(model, x, plan.points[i], self.algorithm_type == "dpmsolver")
        # (state, output) at the last nodes, newest first (the initial state is None)
        hist = ((x, m), *(state or ()))[:3]
        out = _linear_update(i, hist[c.order - 1][0], c.lin, c.weights,
                             [mj for _, mj in hist], c.noise_std, plan, noise)
        return StepOutput(x=out, state=hist, denoised=d)
